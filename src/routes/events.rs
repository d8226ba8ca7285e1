//! Usage events in (scope `events`): stored durably before they are acknowledged, then forwarded
//! to BillaBear by the outbox.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::batch_items;
use crate::admission::{Admission, Admitted, EventAdmitted};
use crate::check::Decision;
use crate::domain::FieldError;
use crate::error::ApiError;
use crate::outbox::{Accepted, IncomingEvent};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct EventQuery {
    /// Store each event only if, with its cost added, the customer's projected estimate (with
    /// its holds) is not over its lowest DISABLE limit and the customer is not disabled.
    #[serde(default)]
    pub enforce: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventAnswer {
    /// `accepted` (stored now) or `duplicate` (stored before with the same content).
    pub status: &'static str,
    pub event_id: String,
    /// The customer's decision, counting this event, when the event names a customer whose
    /// snapshot is cached (never fetched for this answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// One usage event. 202 once it is committed to Postgres; the same `event_id` again is 200
/// `duplicate` with the same content and 409 with other content. With `enforce=true`, 402 and
/// nothing stored when it does not fit under the customer's limit.
#[utoipa::path(post, path = "/v1/events", tag = "events", security(("bearer" = [])),
    params(EventQuery),
    request_body(content = Value, description = "event_id (1-255 chars), code, value (number), properties (object, optional), and subscription or customer"),
    responses(
        (status = 202, description = "Stored; it will be forwarded to BillaBear", body = EventAnswer),
        (status = 200, description = "Stored before with the same content", body = EventAnswer),
        (status = 400, description = "Invalid: every invalid field is named", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 402, description = "enforce=true and it does not fit (code usage_limit_exceeded, with the decision): nothing stored", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "enforce=true with a subscription usage-gate has not seen its customer's listing of", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "event_id stored before with other content (code conflict), or stored before and dead, so not delivered (code event_dead)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable: nothing stored, retry (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_event(
    admission: web::Data<Admission>,
    query: web::Query<EventQuery>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let event = IncomingEvent::parse(&body, "").map_err(ApiError::invalid_fields)?;
    let event_id = event.event_id.to_string();
    let EventAdmitted { stored, decision } = admission.event(event, query.enforce).await?;
    match stored {
        Accepted::New => {
            Ok(HttpResponse::Accepted().json(EventAnswer { status: "accepted", event_id, decision }))
        }
        Accepted::Duplicate => {
            Ok(HttpResponse::Ok().json(EventAnswer { status: "duplicate", event_id, decision }))
        }
        Accepted::Dead => Err(dead(&event_id)),
        Accepted::Refused => Err(ApiError::invalid_field("body", REFUSED)),
        Accepted::Conflict => Err(conflict(&event_id)),
    }
}

/// Postgres refused a value that validation let through; nothing of the event was stored.
const REFUSED: &str =
    "a value in this event cannot be stored (Postgres refused it); nothing of it was stored";

/// A repeat of an event that will not reach BillaBear: the sender must not take it as done.
fn dead(event_id: &str) -> ApiError {
    ApiError::EventDead(format!(
        "event_id {event_id:?} was stored before and is dead: BillaBear refused it or its retries ran out, \
         so it was not delivered; an operator can put it back in the queue (POST /v1/outbox/{{id}}/retry)"
    ))
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
    /// `accepted`, `duplicate`, `conflict`, `dead` (stored before and not delivered),
    /// `invalid`, or `refused` (enforce=true: it did not fit; nothing stored).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// `refused` only: `usage_limit_exceeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// `refused` only: the decision it was judged by (`cost`: what it would have added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Box<Decision>>,
}

impl BatchItemResult {
    fn new(event_id: Option<Value>, status: &'static str, errors: Vec<FieldError>) -> Self {
        Self { event_id, status, errors, reason: None, decision: None }
    }

    fn refused(event_id: Option<Value>, decision: Decision) -> Self {
        Self {
            reason: Some("usage_limit_exceeded"),
            decision: Some(Box::new(decision)),
            ..Self::new(event_id, "refused", vec![])
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventBatchAnswer {
    /// One per event, in order.
    pub results: Vec<BatchItemResult>,
}

/// 1 to 1000 events; the valid ones are stored together (one transaction) even when others are
/// invalid, and each gets its own result. With `enforce=true` a customer's events are admitted
/// in order while they fit; from the first that does not, its later ones in the batch are
/// `refused` too.
#[utoipa::path(post, path = "/v1/events/batch", tag = "events", security(("bearer" = [])),
    params(EventQuery),
    request_body(content = Value, description = "{\"events\": [event, ...]}, 1 to 1000"),
    responses(
        (status = 200, description = "A result per event, in order", body = EventBatchAnswer),
        (status = 400, description = "Body not JSON, or events missing, empty or over 1000", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable: nothing stored, retry", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_batch(
    admission: web::Data<Admission>,
    query: web::Query<EventQuery>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let items = batch_items(&body, "events", "events")?;
    // Each item's result, once known; the valid events go to admission together.
    let mut results: Vec<Option<BatchItemResult>> = Vec::with_capacity(items.len());
    let mut valid = Vec::with_capacity(items.len());
    let mut events = Vec::with_capacity(items.len());
    let mut customers = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("events[{i}].");
        let parsed = IncomingEvent::parse(item, &prefix).and_then(|event| {
            let customer = if query.enforce {
                Some(admission.owner(&event, &prefix).map_err(|e| vec![e])?)
            } else {
                None
            };
            Ok((event, customer))
        });
        match parsed {
            Ok((event, customer)) => {
                valid.push(i);
                events.push(event);
                customers.push(customer);
                results.push(None);
            }
            Err(errors) => {
                results.push(Some(BatchItemResult::new(item.get("event_id").cloned(), "invalid", errors)))
            }
        }
    }
    let admitted = admission.events(events, customers).await?;
    for (i, admitted) in valid.into_iter().zip(admitted) {
        let event_id = items[i].get("event_id").cloned();
        results[i] = Some(match admitted {
            Admitted::Refused(decision) => BatchItemResult::refused(event_id, *decision),
            Admitted::Stored(Accepted::Refused) => BatchItemResult::new(
                event_id,
                "invalid",
                vec![FieldError::new(format!("events[{i}]"), REFUSED)],
            ),
            Admitted::Stored(accepted) => BatchItemResult::new(event_id, accepted.as_str(), vec![]),
        });
    }
    let results = results
        .into_iter()
        .map(|r| {
            r.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("events: a batch item was not answered")))
        })
        .collect::<Result<_, _>>()?;
    Ok(HttpResponse::Ok().json(EventBatchAnswer { results }))
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
        (status = 409, description = "event_id stored before with other content (conflict), or stored before and dead (event_dead)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable: nothing stored, retry", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_billabear_event(
    admission: web::Data<Admission>,
    keys: web::Data<crate::auth::ApiKeys>,
    req: actix_web::HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let caller = req.headers().get("x-api-key").and_then(|key| keys.authenticate(key.as_bytes()));
    if !caller.is_some_and(|c| c.has(crate::auth::Scope::Events)) {
        return Ok(HttpResponse::Unauthorized().json(serde_json::json!([])));
    }
    let billabear_errors = |errors: Vec<FieldError>| {
        let map: serde_json::Map<String, Value> =
            errors.into_iter().map(|e| (e.field, Value::String(e.message))).collect();
        HttpResponse::BadRequest().json(serde_json::json!({ "errors": map }))
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&body) else {
        return Ok(billabear_errors(vec![FieldError::new("body", "must be JSON")]));
    };
    if let Err(error) = as_billabear_reads_it(&mut value) {
        return Ok(billabear_errors(vec![error]));
    }
    let event = match IncomingEvent::parse(&value, "") {
        Ok(event) => event,
        Err(errors) => return Ok(billabear_errors(errors)),
    };
    let event_id = event.event_id.to_string();
    match admission.event(event, false).await?.stored {
        Accepted::New | Accepted::Duplicate => Ok(HttpResponse::Created().finish()),
        Accepted::Dead => Err(dead(&event_id)),
        Accepted::Refused => Ok(billabear_errors(vec![FieldError::new("body", REFUSED)])),
        Accepted::Conflict => Err(conflict(&event_id)),
    }
}

/// Reads an event as BillaBear's `POST /events` does (API.md §1, §2): `customer` is not one of
/// its fields and is ignored (older SDKs and BillaBear's own tests send it beside
/// `subscription`); `subscription` is required; `properties` may be a JSON array, which PHP
/// decodes to the same array as an object keyed by index. Extra fields are ignored.
fn as_billabear_reads_it(value: &mut Value) -> Result<(), FieldError> {
    let Some(object) = value.as_object_mut() else {
        return Err(FieldError::new("body", "must be a JSON object"));
    };
    object.remove("customer");
    if object.get("subscription").is_none_or(Value::is_null) {
        return Err(FieldError::new("subscription", "This value should not be blank."));
    }
    if let Some(Value::Array(items)) = object.get("properties") {
        let keyed = items.iter().enumerate().map(|(i, item)| (i.to_string(), item.clone())).collect();
        object.insert("properties".into(), Value::Object(keyed));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn billabears_route_ignores_customer_and_takes_properties_as_an_array() {
        let sub = "0b0f1f7e-2f3c-4a53-8b8e-8f8f3c7a1d22";
        let mut both =
            json!({"event_id": "e", "subscription": sub, "customer": "c", "code": "x", "value": 1});
        as_billabear_reads_it(&mut both).unwrap();
        assert_eq!(both, json!({"event_id": "e", "subscription": sub, "code": "x", "value": 1}));
        let mut listed = json!({"subscription": sub, "properties": ["a", {"b": 1}]});
        as_billabear_reads_it(&mut listed).unwrap();
        assert_eq!(listed["properties"], json!({"0": "a", "1": {"b": 1}}));
        let mut empty = json!({"subscription": sub, "properties": []});
        as_billabear_reads_it(&mut empty).unwrap();
        assert_eq!(empty["properties"], json!({}));
        for body in [json!({"customer": sub}), json!({"subscription": null}), json!([1])] {
            let mut body = body;
            assert!(as_billabear_reads_it(&mut body).is_err(), "{body}");
        }
    }
}
