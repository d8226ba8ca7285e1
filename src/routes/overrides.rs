//! Overrides (scope `admin`): let a customer through, stop one, or raise its DISABLE threshold,
//! until a set time; list them; end one now.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{actor, customer_id, page_limit, text_param};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::overrides::{NewOverride, OverrideError, OverrideRecord, Overrides};
use crate::telemetry::RequestId;

/// Creates an override; the customer's open one, if any, ends (`superseded`). Checks,
/// enforced events and holds follow it at once on this replica, within a second on the others.
#[utoipa::path(post, path = "/v1/customers/{customer_id}/overrides", tag = "overrides", security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path, description = "BillaBear customer id (UUID)")),
    request_body(content = Value, description = "{\"effect\": \"allow\" | \"block\" | \"raise\", \"amount\": minor units (raise only), \"reason\": 1-500 chars, \"expires_at\": RFC 3339, at most 90 days ahead}"),
    responses(
        (status = 201, description = "Created", body = OverrideRecord),
        (status = 422, description = "Invalid: every invalid field is named", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    overrides: web::Data<Overrides>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let customer = customer_id(&path, "customer_id")?;
    let new = NewOverride::from_json(&body, chrono::Utc::now()).map_err(OverrideError::Invalid)?;
    let created = overrides.create(&actor(&caller, &request_id), customer, &new).await?;
    Ok(HttpResponse::Created().json(created))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only those in force now.
    pub active: Option<bool>,
    /// 1 to 500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OverrideList {
    /// Newest first.
    pub overrides: Vec<OverrideRecord>,
}

/// The customer's overrides, newest first (ended and expired ones too, unless `active=true`).
#[utoipa::path(get, path = "/v1/customers/{customer_id}/overrides", tag = "overrides", security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path, description = "BillaBear customer id (UUID)"), ListQuery),
    responses((status = 200, body = OverrideList)))]
pub async fn list_customer(
    overrides: web::Data<Overrides>,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<OverrideList>, ApiError> {
    let customer = customer_id(&path, "customer_id")?;
    let limit = page_limit(query.limit)?;
    let overrides = overrides.list(Some(customer), query.active.unwrap_or(false), limit).await?;
    Ok(web::Json(OverrideList { overrides }))
}

/// Every customer's overrides, newest first (`active=true`: those in force now).
#[utoipa::path(get, path = "/v1/overrides", tag = "overrides", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = OverrideList)))]
pub async fn list_all(
    overrides: web::Data<Overrides>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<OverrideList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let overrides = overrides.list(None, query.active.unwrap_or(false), limit).await?;
    Ok(web::Json(OverrideList { overrides }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EndQuery {
    /// Why it ends early (for the audit log), at most 255 characters.
    pub reason: Option<String>,
}

/// Ends an override now: 204; 404 if it is not in force (unknown, another customer's, ended or
/// expired).
#[utoipa::path(delete, path = "/v1/customers/{customer_id}/overrides/{override_id}", tag = "overrides", security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path), ("override_id" = uuid::Uuid, Path), EndQuery),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "No override in force with this id for this customer", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn end(
    overrides: web::Data<Overrides>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<(String, String)>,
    query: web::Query<EndQuery>,
) -> Result<HttpResponse, ApiError> {
    let customer = customer_id(&path.0, "customer_id")?;
    let id =
        Uuid::parse_str(&path.1).map_err(|_| ApiError::invalid_field("override_id", "must be a UUID"))?;
    let reason = text_param(query.reason.as_deref(), "reason")?;
    overrides.end(&actor(&caller, &request_id), customer, id, reason.as_deref()).await?;
    Ok(HttpResponse::NoContent().finish())
}
