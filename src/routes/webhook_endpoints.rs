//! usage-gate's own outbound webhooks (scope `admin`): endpoints, their secrets, and the
//! messages sent to them with every attempt.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{actor, page_limit};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::telemetry::RequestId;
use crate::webhooks::endpoints::{Created, Endpoint, EndpointError, Endpoints, Message, NewEndpoint};

fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid_field("endpoint_id", "must be a UUID"))
}

/// Registers an endpoint; messages of its types are queued for it from now on.
#[utoipa::path(post, path = "/v1/webhook-endpoints", tag = "webhook-endpoints", operation_id = "create_webhook_endpoint", security(("bearer" = [])),
    request_body(content = Value, description = "{\"url\": http(s) URL, \"event_types\": [...] (optional; all when absent), \"description\": optional}"),
    responses(
        (status = 201, description = "Created, with its secret (shown once)", body = Created),
        (status = 422, description = "Invalid: every invalid field is named; a URL whose address is loopback, link-local, unspecified, multicast, broadcast or private (and not in outbound_webhooks.allowed_subnets) is refused naming that rule", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    endpoints: web::Data<Endpoints>,
    caller: Caller,
    request_id: RequestId,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let new = NewEndpoint::from_json(&body).map_err(EndpointError::Invalid)?;
    let created = endpoints.create(&actor(&caller, &request_id), &new).await?;
    Ok(HttpResponse::Created().json(created))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    /// Oldest first.
    pub endpoints: Vec<Endpoint>,
}

#[utoipa::path(get, path = "/v1/webhook-endpoints", tag = "webhook-endpoints", operation_id = "list_webhook_endpoints", security(("bearer" = [])),
    responses((status = 200, body = EndpointList)))]
pub async fn list(endpoints: web::Data<Endpoints>) -> Result<web::Json<EndpointList>, ApiError> {
    Ok(web::Json(EndpointList { endpoints: endpoints.list().await? }))
}

#[utoipa::path(get, path = "/v1/webhook-endpoints/{endpoint_id}", tag = "webhook-endpoints", security(("bearer" = [])),
    params(("endpoint_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Endpoint), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn show(
    endpoints: web::Data<Endpoints>,
    path: web::Path<String>,
) -> Result<web::Json<Endpoint>, ApiError> {
    Ok(web::Json(endpoints.find(endpoint_id(&path)?).await?))
}

/// Deletes the endpoint and its messages (none is sent after).
#[utoipa::path(delete, path = "/v1/webhook-endpoints/{endpoint_id}", tag = "webhook-endpoints", security(("bearer" = [])),
    params(("endpoint_id" = uuid::Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn delete(
    endpoints: web::Data<Endpoints>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path)?;
    endpoints.delete(&actor(&caller, &request_id), id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rotated {
    /// The new `whsec_<base64>` secret, shown once; the previous one keeps signing beside it
    /// for 24 hours (the `webhook-signature` header then holds both signatures).
    pub secret: String,
}

#[utoipa::path(post, path = "/v1/webhook-endpoints/{endpoint_id}/rotate-secret", tag = "webhook-endpoints", security(("bearer" = [])),
    params(("endpoint_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Rotated), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn rotate_secret(
    endpoints: web::Data<Endpoints>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<web::Json<Rotated>, ApiError> {
    let id = endpoint_id(&path)?;
    let secret = endpoints.rotate_secret(&actor(&caller, &request_id), id).await?;
    Ok(web::Json(Rotated { secret }))
}

/// Sends to an endpoint disabled by a 410 again, its pending messages included.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{endpoint_id}/enable", tag = "webhook-endpoints", security(("bearer" = [])),
    params(("endpoint_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Endpoint), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn enable(
    endpoints: web::Data<Endpoints>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<web::Json<Endpoint>, ApiError> {
    let id = endpoint_id(&path)?;
    Ok(web::Json(endpoints.enable(&actor(&caller, &request_id), id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct MessagesQuery {
    /// `pending`, `delivered` or `failed`; all when absent (or empty).
    #[param(pattern = "^(pending|delivered|failed)?$")]
    pub status: Option<String>,
    /// 1 to 500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageList {
    /// Newest first.
    pub messages: Vec<Message>,
}

/// The endpoint's messages with every attempt (status code, time, error).
#[utoipa::path(get, path = "/v1/webhook-endpoints/{endpoint_id}/messages", tag = "webhook-endpoints", security(("bearer" = [])),
    params(("endpoint_id" = uuid::Uuid, Path), MessagesQuery),
    responses((status = 200, body = MessageList), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn messages(
    endpoints: web::Data<Endpoints>,
    path: web::Path<String>,
    query: web::Query<MessagesQuery>,
) -> Result<web::Json<MessageList>, ApiError> {
    let id = endpoint_id(&path)?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(status @ ("pending" | "delivered" | "failed")) => Some(status),
        Some(_) => return Err(ApiError::invalid_field("status", "must be pending, delivered or failed")),
    };
    let limit = page_limit(query.limit)?;
    Ok(web::Json(MessageList { messages: endpoints.messages(id, status, limit).await? }))
}

/// Sends the message again (same `webhook-id`), due now, with a fresh retry schedule.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{endpoint_id}/messages/{message_id}/resend", tag = "webhook-endpoints", security(("bearer" = [])),
    params(("endpoint_id" = uuid::Uuid, Path), ("message_id" = String, Path)),
    responses((status = 202, description = "Queued"), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn resend(
    endpoints: web::Data<Endpoints>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path.0)?;
    let message = &path.1;
    endpoints.resend(&actor(&caller, &request_id), id, message).await?;
    Ok(HttpResponse::Accepted().finish())
}
