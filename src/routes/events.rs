//! Usage events in (scope `events`): stored durably before they are acknowledged, then forwarded
//! to BillaBear by the outbox.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::Value;

use super::batch_items;
use crate::check::Decision;
use crate::error::ApiError;
use crate::outbox::store::Accepted;
use crate::outbox::{IncomingEvent, Target};
use crate::startup::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventAnswer {
    /// `accepted` (stored now) or `duplicate` (stored before with the same content).
    pub status: &'static str,
    pub event_id: String,
    /// The customer's current decision when the event names a customer whose snapshot is
    /// cached (never fetched for this answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// One usage event. 202 once it is committed to Postgres; the same `event_id` again is 200
/// `duplicate` with the same content and 409 with other content.
#[utoipa::path(post, path = "/v1/events", tag = "events", security(("bearer" = [])),
    request_body(content = Value, description = "event_id (1-255 chars), code, value (number), properties (object, optional), and subscription or customer"),
    responses(
        (status = 202, description = "Stored; it will be forwarded to BillaBear", body = EventAnswer),
        (status = 200, description = "Stored before with the same content", body = EventAnswer),
        (status = 400, description = "Invalid: every invalid field is named", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "event_id stored before with other content", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable: nothing stored, retry (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_event(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let event = IncomingEvent::parse(&body, "").map_err(ApiError::invalid_fields)?;
    let (event_id, target) = (event.event_id.to_string(), event.target);
    let outcome = state.ingest.accept(vec![event]).await?;
    let decision = match target {
        Target::Customer(customer) => state.checker.cached_decision(customer),
        Target::Subscription(_) => None,
    };
    match outcome.first() {
        Some(Accepted::New) => {
            Ok(HttpResponse::Accepted().json(EventAnswer { status: "accepted", event_id, decision }))
        }
        Some(Accepted::Duplicate) => {
            Ok(HttpResponse::Ok().json(EventAnswer { status: "duplicate", event_id, decision }))
        }
        _ => Err(conflict(&event_id)),
    }
}

fn conflict(event_id: &str) -> ApiError {
    ApiError::Conflict(format!(
        "event_id {event_id:?} was stored before with other content; nothing was changed"
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchItemResult {
    /// The item's `event_id` as sent, when it had one.
    pub event_id: Option<Value>,
    /// `accepted`, `duplicate`, `conflict` or `invalid`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<crate::error::FieldError>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchAnswer {
    /// One per event, in order.
    pub results: Vec<BatchItemResult>,
}

/// 1 to 1000 events; the valid ones are stored together (one transaction) even when others are
/// invalid, and each gets its own result.
#[utoipa::path(post, path = "/v1/events/batch", tag = "events", security(("bearer" = [])),
    request_body(content = Value, description = "{\"events\": [event, ...]}, 1 to 1000"),
    responses(
        (status = 200, description = "A result per event, in order", body = BatchAnswer),
        (status = 400, description = "Body not JSON, or events missing, empty or over 1000", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable: nothing stored, retry", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_batch(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let items = batch_items(&body, "events", "events")?;
    // The valid events go to storage together; each invalid one keeps its errors in its place.
    let mut valid = Vec::with_capacity(items.len());
    let mut invalid = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match IncomingEvent::parse(item, &format!("events[{i}].")) {
            Ok(event) => {
                valid.push(event);
                invalid.push(None);
            }
            Err(errors) => invalid.push(Some(errors)),
        }
    }
    let mut outcomes = state.ingest.accept(valid).await?.into_iter();
    let results = items
        .iter()
        .zip(invalid)
        .map(|(item, invalid)| {
            let event_id = item.get("event_id").cloned();
            match invalid {
                None => {
                    let status = outcomes.next().unwrap_or(Accepted::Conflict).as_str();
                    BatchItemResult { event_id, status, errors: vec![] }
                }
                Some(errors) => BatchItemResult { event_id, status: "invalid", errors },
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(BatchAnswer { results }))
}

/// BillaBear's own `POST /api/v1/events`, so services already on a BillaBear SDK can point its
/// base URL at usage-gate: the same body (`subscription` required), 201 with an empty body, 400
/// `{"errors":{field: message}}` and 401 `[]` as BillaBear answers. `X-API-Key` carries a
/// usage-gate key with the `events` scope.
#[utoipa::path(post, path = "/api/v1/events", tag = "events",
    params(("X-API-Key" = String, Header, description = "A usage-gate API key with the events scope")),
    request_body(content = Value, description = "BillaBear's event: event_id, subscription, code, value, properties"),
    responses(
        (status = 201, description = "Stored (or stored before with the same content); empty body"),
        (status = 400, description = "BillaBear's shape: {\"errors\": {field: message}}"),
        (status = 401, description = "No usage-gate key with the events scope: [] as BillaBear answers"),
        (status = 409, description = "event_id stored before with other content", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable: nothing stored, retry", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_billabear_event(
    state: web::Data<AppState>,
    keys: web::Data<crate::auth::ApiKeys>,
    req: actix_web::HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let caller = req.headers().get("x-api-key").and_then(|key| keys.authenticate(key.as_bytes()));
    if !caller.is_some_and(|c| c.has(crate::auth::Scope::Events)) {
        return Ok(HttpResponse::Unauthorized().json(serde_json::json!([])));
    }
    let billabear_errors = |errors: Vec<crate::error::FieldError>| {
        let map: serde_json::Map<String, Value> =
            errors.into_iter().map(|e| (e.field, Value::String(e.message))).collect();
        HttpResponse::BadRequest().json(serde_json::json!({ "errors": map }))
    };
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return Ok(billabear_errors(vec![crate::error::FieldError::new("body", "must be JSON")]));
    };
    if value.get("customer").is_some() && value.get("subscription").is_none() {
        // BillaBear's route has no customer field: keep its contract.
        return Ok(billabear_errors(vec![crate::error::FieldError::new("subscription", "required")]));
    }
    let event = match IncomingEvent::parse(&value, "") {
        Ok(event) => event,
        Err(errors) => return Ok(billabear_errors(errors)),
    };
    let event_id = event.event_id.to_string();
    match state.ingest.accept(vec![event]).await?.first() {
        Some(Accepted::New | Accepted::Duplicate) => Ok(HttpResponse::Created().finish()),
        _ => Err(conflict(&event_id)),
    }
}
