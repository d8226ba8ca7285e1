//! usage-gate's own outbound webhooks (scope `admin`): endpoints, their secrets, and the
//! messages sent to them with every attempt.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{actor, page_limit};
use crate::auth::Caller;
use crate::domain::FieldError;
use crate::error::ApiError;
use crate::seal::Sealer;
use crate::telemetry::RequestId;
use crate::webhooks::destination::Destinations;
use crate::webhooks::store::{self, Endpoint, Message, NewEndpoint};
use crate::webhooks::{self, EventType};

const MAX_URL: usize = 2048;
const MAX_DESCRIPTION_CHARS: usize = 500;

/// Reads `{"url", "event_types"?, "description"?}`; every invalid field is named.
fn parse_endpoint(body: &Value) -> Result<NewEndpoint, Vec<FieldError>> {
    let Some(object) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let field = |name: &str| object.get(name).filter(|v| !v.is_null());
    let url = match field("url").and_then(Value::as_str) {
        Some(raw) if raw.len() <= MAX_URL => match url::Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url.to_string())
            }
            _ => {
                errors.push(FieldError::new("url", "must be an absolute http or https URL"));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("url", format!("must be at most {MAX_URL} characters")));
            None
        }
        None => {
            errors.push(FieldError::new("url", "required: where to POST the messages"));
            None
        }
    };
    let event_types = match field("event_types") {
        None => None,
        Some(Value::Array(names)) if !names.is_empty() => {
            let mut types = Vec::new();
            for (i, name) in names.iter().enumerate() {
                match name.as_str().and_then(EventType::parse) {
                    Some(t) if !types.contains(&t) => types.push(t),
                    Some(_) => {}
                    None => errors.push(FieldError::new(
                        format!("event_types[{i}]"),
                        format!("unknown; one of {}", EventType::ALL.map(EventType::as_str).join(", ")),
                    )),
                }
            }
            Some(types)
        }
        Some(_) => {
            errors.push(FieldError::new(
                "event_types",
                "must be a non-empty list of event types (or absent: all)",
            ));
            None
        }
    };
    let description = match field("description") {
        None => None,
        Some(Value::String(text))
            if text.chars().count() <= MAX_DESCRIPTION_CHARS && !text.contains('\0') =>
        {
            Some(text.clone())
        }
        Some(_) => {
            errors.push(FieldError::new(
                "description",
                "must be a string of at most 500 characters, without NUL",
            ));
            None
        }
    };
    match url {
        Some(url) if errors.is_empty() => Ok(NewEndpoint { url, event_types, description }),
        _ => Err(errors),
    }
}

fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid_field("endpoint_id", "must be a UUID"))
}

fn new_secret() -> Result<String, ApiError> {
    webhooks::new_secret()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("cannot draw a webhook secret: {e}")))
}

fn no_endpoint(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no webhook endpoint {id}"))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Created {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `whsec_<base64>`: shown once, here. Verify each message's `webhook-signature` with it.
    pub secret: String,
}

/// Registers an endpoint; messages of its types are queued for it from now on.
#[utoipa::path(post, path = "/v1/webhook-endpoints", tag = "webhook-endpoints", operation_id = "create_webhook_endpoint", security(("bearer" = [])),
    request_body(content = Value, description = "{\"url\": http(s) URL, \"event_types\": [...] (optional; all when absent), \"description\": optional}"),
    responses(
        (status = 201, description = "Created, with its secret (shown once)", body = Created),
        (status = 422, description = "Invalid: every invalid field is named; a URL whose address is loopback, link-local, unspecified, multicast, broadcast or private (and not in outbound_webhooks.allowed_subnets) is refused naming that rule", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    pool: web::Data<PgPool>,
    sealer: web::Data<Sealer>,
    settings: web::Data<crate::config::Settings>,
    caller: Caller,
    request_id: RequestId,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let new = parse_endpoint(&body).map_err(ApiError::unprocessable)?;
    // Not a way in: the URL must not reach loopback, link-local or private addresses unless
    // outbound_webhooks.allowed_subnets opens them (each attempt is judged again).
    let destinations = Destinations::new(settings.outbound_webhooks.allowed_subnets.clone());
    if let Some(refused) = destinations.refusal(&new.url).await {
        let rule = refused.rule.as_str();
        return Err(ApiError::unprocessable(vec![FieldError::new("url", format!("{rule}: {refused}"))]));
    }
    let secret = new_secret()?;
    let endpoint =
        store::create(pool.get_ref(), &sealer, &new, &secret, &actor(&caller, &request_id)).await?;
    Ok(HttpResponse::Created().json(Created { endpoint, secret }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    /// Oldest first.
    pub endpoints: Vec<Endpoint>,
}

#[utoipa::path(get, path = "/v1/webhook-endpoints", tag = "webhook-endpoints", operation_id = "list_webhook_endpoints", security(("bearer" = [])),
    responses((status = 200, body = EndpointList)))]
pub async fn list(pool: web::Data<PgPool>) -> Result<web::Json<EndpointList>, ApiError> {
    Ok(web::Json(EndpointList { endpoints: store::list(pool.get_ref()).await? }))
}

#[utoipa::path(get, path = "/v1/webhook-endpoints/{endpoint_id}", tag = "webhook-endpoints", security(("bearer" = [])),
    params(("endpoint_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Endpoint), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn show(pool: web::Data<PgPool>, path: web::Path<String>) -> Result<web::Json<Endpoint>, ApiError> {
    let id = endpoint_id(&path)?;
    store::find(pool.get_ref(), id).await?.map(web::Json).ok_or_else(|| no_endpoint(id))
}

/// Deletes the endpoint and its messages (none is sent after).
#[utoipa::path(delete, path = "/v1/webhook-endpoints/{endpoint_id}", tag = "webhook-endpoints", security(("bearer" = [])),
    params(("endpoint_id" = uuid::Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn delete(
    pool: web::Data<PgPool>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path)?;
    match store::delete(pool.get_ref(), id, &actor(&caller, &request_id)).await? {
        true => Ok(HttpResponse::NoContent().finish()),
        false => Err(no_endpoint(id)),
    }
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
    pool: web::Data<PgPool>,
    sealer: web::Data<Sealer>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<web::Json<Rotated>, ApiError> {
    let id = endpoint_id(&path)?;
    let secret = new_secret()?;
    store::rotate(pool.get_ref(), &sealer, id, &secret, &actor(&caller, &request_id))
        .await?
        .ok_or_else(|| no_endpoint(id))?;
    Ok(web::Json(Rotated { secret }))
}

/// Sends to an endpoint disabled by a 410 again, its pending messages included.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{endpoint_id}/enable", tag = "webhook-endpoints", security(("bearer" = [])),
    params(("endpoint_id" = uuid::Uuid, Path)),
    responses((status = 200, body = Endpoint), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn enable(
    pool: web::Data<PgPool>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<web::Json<Endpoint>, ApiError> {
    let id = endpoint_id(&path)?;
    let endpoint = store::enable(pool.get_ref(), id, &actor(&caller, &request_id)).await?;
    endpoint.map(web::Json).ok_or_else(|| no_endpoint(id))
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
    pool: web::Data<PgPool>,
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
    if store::find(pool.get_ref(), id).await?.is_none() {
        return Err(no_endpoint(id));
    }
    Ok(web::Json(MessageList { messages: store::messages(pool.get_ref(), id, status, limit).await? }))
}

/// Sends the message again (same `webhook-id`), due now, with a fresh retry schedule.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{endpoint_id}/messages/{message_id}/resend", tag = "webhook-endpoints", security(("bearer" = [])),
    params(("endpoint_id" = uuid::Uuid, Path), ("message_id" = String, Path)),
    responses((status = 202, description = "Queued"), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn resend(
    pool: web::Data<PgPool>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path.0)?;
    let message = &path.1;
    match store::resend(pool.get_ref(), id, message, &actor(&caller, &request_id)).await? {
        true => Ok(HttpResponse::Accepted().finish()),
        false => Err(ApiError::NotFound(format!("no message {message} for webhook endpoint {id}"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_endpoint_names_every_invalid_field() {
        let ok = parse_endpoint(
            &json!({"url": "https://hooks.example.com/in", "event_types": ["event.dead", "event.dead"]}),
        );
        assert_eq!(
            ok.unwrap(),
            NewEndpoint {
                url: "https://hooks.example.com/in".into(),
                event_types: Some(vec![EventType::EventDead]),
                description: None
            }
        );
        let fields = |body: Value| -> Vec<String> {
            parse_endpoint(&body).unwrap_err().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(fields(json!({})), ["url"]);
        assert_eq!(fields(json!({"url": "ftp://example.com"})), ["url"]);
        assert_eq!(fields(json!({"url": "/relative"})), ["url"]);
        assert_eq!(fields(json!({"url": format!("https://e.com/{}", "a".repeat(2048))})), ["url"]);
        assert_eq!(fields(json!({"url": "http://e.com", "event_types": []})), ["event_types"]);
        assert_eq!(
            fields(json!({"url": "http://e.com", "event_types": ["customer.usage.blocked", "nope"]})),
            ["event_types[1]"]
        );
        assert_eq!(fields(json!({"url": "http://e.com", "description": "d".repeat(501)})), ["description"]);
        assert_eq!(fields(json!("x")), ["body"]);
    }
}
