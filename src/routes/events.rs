//! Usage events in (scope `events`): stored durably before they are acknowledged, then forwarded
//! to BillaBear by the outbox.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::Value;

use crate::check::Decision;
use crate::error::ApiError;
use crate::outbox::store::{self, Accepted};
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
    let outcome = store::accept(&state.pool, std::slice::from_ref(&event)).await?;
    let decision = match event.target {
        Target::Customer(customer) => state.checker.cached_decision(customer),
        Target::Subscription(_) => None,
    };
    let answer = |status| EventAnswer { status, event_id: event.event_id.to_string(), decision };
    match outcome.first() {
        Some(Accepted::New) => Ok(HttpResponse::Accepted().json(answer("accepted"))),
        Some(Accepted::Duplicate) => Ok(HttpResponse::Ok().json(answer("duplicate"))),
        _ => Err(ApiError::Conflict(format!(
            "event_id {:?} was stored before with other content; nothing was changed",
            event.event_id.as_str()
        ))),
    }
}
