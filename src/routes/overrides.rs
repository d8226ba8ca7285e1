//! Overrides (scope `admin`): let a customer through, stop one, or raise its DISABLE threshold,
//! until a set time; list them; end one now.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing_actix_web::RequestId;
use uuid::Uuid;

use super::{actor, customer_id, page_limit, text_param};
use crate::audit::Actor;
use crate::auth::Caller;
use crate::domain::CustomerId;
use crate::domain::FieldError;
use crate::error::ApiError;
use crate::overrides::store::{self, NewOverride, OverrideRecord};
use crate::policy::Effect;
use crate::startup::AppState;

/// The furthest ahead an override may end: it is an exception, not a setting.
const MAX_AHEAD: chrono::TimeDelta = chrono::TimeDelta::days(90);
const MAX_REASON_CHARS: usize = 500;

/// Reads `{"effect", "amount" (raise only), "reason", "expires_at"}` as of `now`; every invalid
/// field is named.
fn parse_override(body: &Value, now: DateTime<Utc>) -> Result<NewOverride, Vec<FieldError>> {
    let Some(object) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let field = |name: &str| object.get(name).filter(|v| !v.is_null());
    let amount = match field("amount") {
        None => None,
        Some(amount) => match amount.as_i64().filter(|a| *a >= 0) {
            Some(amount) => Some(amount),
            None => {
                errors.push(FieldError::new("amount", "must be a whole number of minor units, 0 or more"));
                None
            }
        },
    };
    let effect = match field("effect").and_then(Value::as_str) {
        Some("allow") | Some("block") if field("amount").is_some() => {
            errors.push(FieldError::new("amount", "only for effect \"raise\""));
            None
        }
        Some("allow") => Some(Effect::Allow),
        Some("block") => Some(Effect::Block),
        Some("raise") => match (field("amount"), amount) {
            (None, _) => {
                errors
                    .push(FieldError::new("amount", "required for effect \"raise\": the DISABLE threshold"));
                None
            }
            (Some(_), amount) => amount.map(Effect::Raise),
        },
        _ => {
            errors.push(FieldError::new("effect", "required: \"allow\", \"block\" or \"raise\""));
            None
        }
    };
    let reason = match field("reason").and_then(Value::as_str) {
        Some(reason) if reason.trim().is_empty() || reason.chars().count() > MAX_REASON_CHARS => {
            errors.push(FieldError::new("reason", "must be 1 to 500 characters, not only blanks"));
            None
        }
        Some(reason) if reason.contains('\0') => {
            errors.push(FieldError::new("reason", "must not contain the NUL character"));
            None
        }
        Some(reason) => Some(reason.to_owned()),
        None => {
            errors.push(FieldError::new("reason", "required: why, 1 to 500 characters"));
            None
        }
    };
    let expires_at = match field("expires_at").and_then(Value::as_str).map(DateTime::parse_from_rfc3339) {
        Some(Ok(at)) if at.to_utc() <= now => {
            errors.push(FieldError::new("expires_at", "must be in the future"));
            None
        }
        Some(Ok(at)) if at.to_utc() > now + MAX_AHEAD => {
            errors.push(FieldError::new("expires_at", "must be at most 90 days ahead"));
            None
        }
        Some(Ok(at)) => Some(at.to_utc()),
        Some(Err(_)) | None => {
            errors
                .push(FieldError::new("expires_at", "required: an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"));
            None
        }
    };
    match (effect, reason, expires_at) {
        (Some(effect), Some(reason), Some(expires_at)) if errors.is_empty() => {
            Ok(NewOverride { effect, reason, expires_at })
        }
        _ => Err(errors),
    }
}

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
    state: web::Data<AppState>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let customer = customer_id(&path, "customer_id")?;
    let created = create_as(&state, &actor(&caller, &request_id), customer, &body).await?;
    Ok(HttpResponse::Created().json(created))
}

/// Creates an override for `actor` (the API and the console); this replica applies it at once.
pub(crate) async fn create_as(
    state: &AppState,
    actor: &Actor,
    customer: CustomerId,
    body: &Value,
) -> Result<OverrideRecord, ApiError> {
    let new = parse_override(body, Utc::now()).map_err(ApiError::unprocessable)?;
    let created = store::create(&state.pool, customer, &new, actor).await?;
    state.checker.overrides.reload(customer).await;
    Ok(created)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only those in force now.
    pub active: Option<bool>,
    /// 1 to 500, default 100.
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
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<OverrideList>, ApiError> {
    let customer = customer_id(&path, "customer_id")?;
    let limit = page_limit(query.limit)?;
    let overrides = store::list(&state.pool, Some(customer), query.active.unwrap_or(false), limit).await?;
    Ok(web::Json(OverrideList { overrides }))
}

/// Every customer's overrides, newest first (`active=true`: those in force now).
#[utoipa::path(get, path = "/v1/overrides", tag = "overrides", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = OverrideList)))]
pub async fn list_all(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<OverrideList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let overrides = store::list(&state.pool, None, query.active.unwrap_or(false), limit).await?;
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
    state: web::Data<AppState>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<(String, String)>,
    query: web::Query<EndQuery>,
) -> Result<HttpResponse, ApiError> {
    let customer = customer_id(&path.0, "customer_id")?;
    let id =
        Uuid::parse_str(&path.1).map_err(|_| ApiError::invalid_field("override_id", "must be a UUID"))?;
    let reason = text_param(query.reason.as_deref(), "reason")?;
    end_as(&state, &actor(&caller, &request_id), customer, id, reason.as_deref()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Ends the override `id` in force for `actor` (the API and the console), or a 404.
pub(crate) async fn end_as(
    state: &AppState,
    actor: &Actor,
    customer: CustomerId,
    id: Uuid,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    match store::end(&state.pool, customer, id, actor, reason).await? {
        Some(_) => {
            state.checker.overrides.reload(customer).await;
            Ok(())
        }
        None => Err(ApiError::NotFound(format!("no override {id} in force for customer {customer}"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_override_names_every_invalid_field() {
        let now = DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z").unwrap().to_utc();
        let at = "2026-11-30T12:00:00Z";
        let ok = parse_override(
            &json!({"effect": "raise", "amount": 5000, "reason": "deal", "expires_at": at}),
            now,
        );
        assert_eq!(
            ok.unwrap(),
            NewOverride {
                effect: Effect::Raise(5000),
                reason: "deal".into(),
                expires_at: DateTime::parse_from_rfc3339(at).unwrap().to_utc()
            }
        );
        let fields = |body: Value| -> Vec<String> {
            parse_override(&body, now).unwrap_err().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(fields(json!({})), ["effect", "reason", "expires_at"]);
        assert_eq!(fields(json!({"effect": "allow", "reason": "", "expires_at": at})), ["reason"]);
        assert_eq!(
            fields(json!({"effect": "allow", "reason": "x".repeat(501), "expires_at": at})),
            ["reason"]
        );
        assert!(
            parse_override(&json!({"effect": "allow", "reason": "x".repeat(500), "expires_at": at}), now)
                .is_ok()
        );
        assert_eq!(
            fields(json!({"effect": "block", "reason": "r", "expires_at": "2026-11-29T11:59:59Z"})),
            ["expires_at"]
        );
        assert_eq!(
            fields(json!({"effect": "block", "reason": "r", "expires_at": "2027-02-28T12:00:01Z"})),
            ["expires_at"]
        );
        assert_eq!(
            fields(json!({"effect": "block", "reason": "r", "expires_at": "tomorrow"})),
            ["expires_at"]
        );
        assert_eq!(fields(json!({"effect": "raise", "reason": "r", "expires_at": at})), ["amount"]);
        assert_eq!(
            fields(json!({"effect": "raise", "amount": -1, "reason": "r", "expires_at": at})),
            ["amount"]
        );
        assert_eq!(
            fields(json!({"effect": "allow", "amount": 5, "reason": "r", "expires_at": at})),
            ["amount"]
        );
        assert_eq!(fields(json!({"effect": "pause", "reason": "r", "expires_at": at})), ["effect"]);
        assert_eq!(fields(json!([1])), ["body"]);
    }
}
