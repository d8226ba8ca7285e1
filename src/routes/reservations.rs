//! Reservations (holds) for work whose cost comes later: create (scope `events`), commit the
//! real usage, release; list a customer's open holds (scope `admin`).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{actor, customer_id};
use crate::admission::{Admission, Held};
use crate::auth::{Caller, Scope};
use crate::check::Decision;
use crate::domain::{CustomerId, FieldError, Target};
use crate::error::ApiError;
use crate::outbox::IncomingEvent;
use crate::reservations::{Committed, Holds, IDEMPOTENCY_KEY, NewHold, Reservation};
use crate::telemetry::RequestId;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Granted {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    #[schema(value_type = String, format = Uuid)]
    pub customer_id: Uuid,
    /// Minor units set aside.
    pub amount: i64,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The customer's decision with this hold counted (`estimate.reserved` includes it).
    pub decision: Decision,
}

/// The longest idempotency key taken (as Stripe's).
const MAX_KEY_LEN: usize = 255;

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters, as is or as a
/// quoted string (the IETF draft's form; the quotes are not part of the key).
fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, FieldError> {
    let Some(raw) = request.headers().get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let invalid =
        || FieldError::new(IDEMPOTENCY_KEY, "must be 1 to 255 visible ASCII characters, e.g. a UUID");
    let text = raw.to_str().map_err(|_| invalid())?;
    let key = text.strip_prefix('"').and_then(|k| k.strip_suffix('"')).unwrap_or(text);
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

fn require(caller: &Caller, scope: Scope) -> Result<(), ApiError> {
    if caller.has(scope) { Ok(()) } else { Err(ApiError::Forbidden(scope)) }
}

/// Sets money aside under the customer's lowest DISABLE limit: 201 if the projected estimate
/// plus its open holds plus this one is not over it, 402 otherwise (nothing held). Asked again
/// with the same `Idempotency-Key` (an answer lost), the hold the key made answers, nothing new
/// held, with `Idempotent-Replayed: true`.
#[utoipa::path(post, path = "/v1/customers/{customer_id}/reservations", tag = "reservations", operation_id = "create_reservation", security(("bearer" = [])),
    params(
        ("customer_id" = uuid::Uuid, Path, description = "BillaBear customer id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 257, pattern = "^(\"[!-~]{1,255}\"|[!-~]|[!#-~][!-~]{1,254}|\"[!#-~]|\"[!-~]{2,254})$", description = "1 to 255 visible ASCII characters (a UUID, say), unique per hold: a request with a key that made one of the customer's open holds is answered with that hold, nothing new held. Kept as long as the hold's row (retention.reservations_days after it closes)"),
    ),
    request_body(content = Value, description = "{\"amount\": minor units} or {\"code\", \"value\"} (priced like an event), and ttl_ms (optional, default 60000, at most 86400000)"),
    responses(
        (status = 201, description = "Granted, or (with `Idempotent-Replayed: true`) the hold this `Idempotency-Key` made before", body = Granted,
            headers(("Idempotent-Replayed" = String, description = "`true` when the hold was made by an earlier request with this key"))),
        (status = 400, description = "Invalid: every invalid field (or the Idempotency-Key header) is named", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 402, description = "Does not fit (code usage_limit_exceeded, with the decision): nothing held", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key's hold is closed (committed, released or expired): nothing held", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The Idempotency-Key made a hold asked for otherwise (field Idempotency-Key): nothing held", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable: nothing held", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    admission: web::Data<Admission>,
    caller: Caller,
    request_id: RequestId,
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    require(&caller, Scope::Events)?;
    let customer = customer_id(&path, "customer_id")?;
    let hold = NewHold::from_json(&body).map_err(ApiError::invalid_fields)?;
    let key = idempotency_key(&request).map_err(|e| ApiError::invalid_fields(vec![e]))?;
    let Held { reservation, decision, replayed } =
        admission.hold(customer, &hold, &actor(&caller, &request_id), key).await?;
    let mut answer = HttpResponse::Created();
    if replayed {
        answer.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(answer.json(Granted {
        id: reservation.id,
        customer_id: reservation.customer_id,
        amount: reservation.amount,
        expires_at: reservation.expires_at,
        decision,
    }))
}

fn reservation_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid_field("reservation_id", "must be a UUID"))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommitAnswer {
    #[schema(value_type = String, format = Uuid)]
    pub reservation_id: Uuid,
    #[schema(value_type = String, format = Uuid)]
    pub customer_id: Uuid,
    /// The hold had expired (its events were stored all the same).
    pub expired: bool,
    /// One per event, in order.
    pub results: Vec<CommitResult>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommitResult {
    pub event_id: String,
    /// `accepted`, `duplicate`, `conflict` or `dead`, as for `/v1/events/batch`.
    pub status: &'static str,
}

/// Stores the work's real usage (events as for `/v1/events`, all for the reservation's
/// customer) and closes the hold, in one transaction. Never refused for the limit: the work
/// was done.
#[utoipa::path(post, path = "/v1/reservations/{reservation_id}/commit", tag = "reservations", security(("bearer" = [])),
    params(("reservation_id" = uuid::Uuid, Path)),
    request_body(content = Value, description = "{\"events\": [event, ...]}, 0 to 1000"),
    responses(
        (status = 200, description = "Stored and closed", body = CommitAnswer),
        (status = 400, description = "Invalid events: every invalid field is named; nothing stored", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such reservation, or it was released", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Committed before: nothing stored this time", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "An event is for another customer than the reservation's: nothing stored", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn commit(
    admission: web::Data<Admission>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = reservation_id(&path)?;
    let items = match body.get("events") {
        Some(Value::Array(items)) if items.len() <= super::MAX_BATCH => items.as_slice(),
        _ => {
            return Err(ApiError::invalid_field(
                "events",
                format!("required: a list of 0 to {} events", super::MAX_BATCH),
            ));
        }
    };
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match IncomingEvent::parse(item, &format!("events[{i}].")) {
            Ok(event) => events.push(event),
            Err(invalid) => errors.extend(invalid),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    let not_found = || ApiError::NotFound(format!("no open or expired reservation {id}"));
    match admission.commit(id, events.clone(), actor(&caller, &request_id)).await? {
        Committed::Done { reservation, outcomes, expired } => Ok(HttpResponse::Ok().json(CommitAnswer {
            reservation_id: reservation.id,
            customer_id: reservation.customer_id,
            expired,
            results: events
                .iter()
                .zip(outcomes)
                .map(|(event, outcome)| CommitResult {
                    event_id: event.event_id.to_string(),
                    status: outcome.as_str(),
                })
                .collect(),
        })),
        Committed::Foreign { customer, events: foreign } => {
            Err(ApiError::unprocessable(foreign_events(&events, &foreign, customer)))
        }
        Committed::NotFound | Committed::Released => Err(not_found()),
        Committed::AlreadyCommitted => Err(ApiError::Conflict(format!(
            "reservation {id} was committed before; nothing was stored this time"
        ))),
    }
}

/// What is wrong with each event of `foreign` (positions in `events`): it is not the
/// reservation's customer's, or usage-gate cannot tell that it is.
fn foreign_events(events: &[IncomingEvent], foreign: &[usize], owner: CustomerId) -> Vec<FieldError> {
    foreign
        .iter()
        .filter_map(|&i| events.get(i).map(|event| (i, event)))
        .map(|(i, event)| match event.target {
            Target::Customer(_) => FieldError::new(
                format!("events[{i}].customer"),
                format!("is not the reservation's customer ({owner})"),
            ),
            Target::Subscription(_) => FieldError::new(
                format!("events[{i}].subscription"),
                format!(
                    "is not known to belong to the reservation's customer ({owner}); send `customer` instead"
                ),
            ),
        })
        .collect()
}

/// Releases an open hold (the work was not done): 204; 404 if there is none (unknown, or
/// closed before: committed, released or expired).
#[utoipa::path(delete, path = "/v1/reservations/{reservation_id}", tag = "reservations", security(("bearer" = [])),
    params(("reservation_id" = uuid::Uuid, Path)),
    responses(
        (status = 204, description = "Released"),
        (status = 404, description = "No open reservation with this id", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn release(
    admission: web::Data<Admission>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = reservation_id(&path)?;
    match admission.release(id, actor(&caller, &request_id)).await? {
        true => Ok(HttpResponse::NoContent().finish()),
        false => Err(ApiError::NotFound(format!("no open reservation {id} (unknown, or already closed)"))),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReservationList {
    /// Open and not expired, newest first.
    pub reservations: Vec<Reservation>,
}

/// The customer's open holds.
#[utoipa::path(get, path = "/v1/customers/{customer_id}/reservations", tag = "reservations", operation_id = "list_reservations", security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path, description = "BillaBear customer id (UUID)")),
    responses((status = 200, body = ReservationList)))]
pub async fn list(
    holds: web::Data<Holds>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<web::Json<ReservationList>, ApiError> {
    require(&caller, Scope::Admin)?;
    let customer = customer_id(&path, "customer_id")?;
    Ok(web::Json(ReservationList { reservations: holds.list_open(customer).await? }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idempotency_key_is_visible_ascii_up_to_255_characters_quoted_or_not() {
        let none = actix_web::test::TestRequest::default().to_http_request();
        assert_eq!(idempotency_key(&none), Ok(None));
        let key = |value: &[u8]| {
            let value = actix_web::http::header::HeaderValue::from_bytes(value).unwrap();
            let request = actix_web::test::TestRequest::default().insert_header((IDEMPOTENCY_KEY, value));
            idempotency_key(&request.to_http_request())
        };
        assert_eq!(key(b"job-42"), Ok(Some("job-42".into())));
        assert_eq!(key(b"\"job-42\""), Ok(Some("job-42".into())));
        let longest = "k".repeat(255);
        assert_eq!(key(longest.as_bytes()), Ok(Some(longest.clone())));
        let too_long = "k".repeat(256);
        let bad: [&[u8]; 5] = [b"", b"\"\"", too_long.as_bytes(), b"two words", "caf\u{e9}".as_bytes()];
        for bad in bad {
            assert_eq!(key(bad).unwrap_err().field, IDEMPOTENCY_KEY, "{bad:?}");
        }
    }
}
