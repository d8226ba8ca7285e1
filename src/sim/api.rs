//! BillaBear's public API as its server behaves (API.md): routes, auth, validation messages and
//! each route's own odd error body.

use std::collections::BTreeMap;
use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use super::SimShared;
use super::state::{Estimate, SimState, StoredEvent};
use crate::domain::{CustomerId, LimitAction, LimitId, SubscriptionId};

/// The error answers, each with the body BillaBear sends for it.
#[derive(Debug)]
pub enum Reply {
    /// 401 `[]`.
    Unauthorized,
    /// 404 with the route's own body.
    NotFound(NotFoundBody),
    /// 400 `{"errors":{field: message}}`.
    Invalid(BTreeMap<String, String>),
    /// 500, Symfony's error page (e.g. a body that is not JSON).
    ServerError,
}

#[derive(Debug, Clone, Copy)]
pub enum NotFoundBody {
    Empty,
    EmptyArray,
    SuccessFalse,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Symfony's default error body for `Accept: application/json` (API.md §5).
pub fn symfony_error(status: StatusCode) -> HttpResponse {
    HttpResponse::build(status).content_type("application/problem+json").json(json!({
        "type": "https://tools.ietf.org/html/rfc2616#section-10",
        "title": "An error occurred",
        "status": status.as_u16(),
        "detail": status.canonical_reason().unwrap_or("Error"),
    }))
}

impl ResponseError for Reply {
    fn status_code(&self) -> StatusCode {
        match self {
            Reply::Unauthorized => StatusCode::UNAUTHORIZED,
            Reply::NotFound(_) => StatusCode::NOT_FOUND,
            Reply::Invalid(_) => StatusCode::BAD_REQUEST,
            Reply::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Reply::Unauthorized => HttpResponse::Unauthorized().json(json!([])),
            Reply::NotFound(NotFoundBody::Empty) => HttpResponse::NotFound().finish(),
            Reply::NotFound(NotFoundBody::EmptyArray) => HttpResponse::NotFound().json(json!([])),
            Reply::NotFound(NotFoundBody::SuccessFalse) => {
                HttpResponse::NotFound().json(json!({"success": false}))
            }
            Reply::Invalid(errors) => HttpResponse::BadRequest().json(json!({ "errors": errors })),
            Reply::ServerError => symfony_error(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

type Answer = Result<HttpResponse, Reply>;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/customer/{id}", web::get().to(get_customer))
        .route("/customer/{id}/costs", web::get().to(get_costs))
        .service(
            web::resource("/customer/{id}/usage-limits")
                .route(web::get().to(list_limits))
                .route(web::post().to(create_limit)),
        )
        .route("/customer/{id}/usage-limit/{limit}", web::delete().to(delete_limit))
        .route("/customer/{id}/subscription/active", web::get().to(active_subscriptions))
        .route("/customer/{id}/limits", web::get().to(customer_limits))
        .route("/customer/{id}/disable", web::post().to(disable))
        .route("/customer/{id}/enable", web::post().to(enable))
        .route("/events", web::post().to(create_event));
}

/// Auth runs after routing (an unknown path is 404 even without a key), as in Symfony.
fn authenticate(req: &HttpRequest, sim: &SimShared) -> Result<(), Reply> {
    let presented = req.headers().get("x-api-key").map(|v| v.as_bytes());
    if presented == Some(sim.api_key.as_bytes()) { Ok(()) } else { Err(Reply::Unauthorized) }
}

/// A known customer, or the route's 404 (a non-UUID id is "not found" too, as in BillaBear).
fn customer(state: &SimState, id: &str, missing: NotFoundBody) -> Result<CustomerId, Reply> {
    CustomerId::parse(id).ok().filter(|id| state.customers.contains_key(id)).ok_or(Reply::NotFound(missing))
}

/// The controllers deserialize whatever body arrives; what is not JSON throws (500).
fn json_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, Reply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Array(items)) if items.is_empty() => Ok(Default::default()),
        _ => Err(Reply::ServerError),
    }
}

const BLANK: &str = "This value should not be blank.";

/// Symfony's NotBlank: null, missing, "" and [] are blank; 0 and false are not.
fn is_blank(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

async fn get_customer(req: HttpRequest, sim: web::Data<SimShared>, path: web::Path<String>) -> Answer {
    authenticate(&req, &sim)?;
    let state = sim.state();
    let id = customer(&state, &path, NotFoundBody::EmptyArray)?;
    let c = &state.customers[&id];
    Ok(HttpResponse::Ok().json(json!({
        "id": c.id,
        "name": c.name,
        "email": c.email,
        "reference": c.name,
        "external_reference": format!("cus_{}", c.id.as_uuid().simple()),
        "address": {"company_name": c.name, "street_line_one": null, "street_line_two": null, "city": null,
                    "region": null, "country": "US", "postcode": null},
        "status": c.status,
        "brand": "default",
        "locale": "en",
        "billing_type": "card",
        "tax_number": null,
        "standard_tax_rate": null,
        "invoice_format": null,
        "marketing_opt_in": false,
        "metadata": {},
    })))
}

async fn get_costs(req: HttpRequest, sim: web::Data<SimShared>, path: web::Path<String>) -> Answer {
    authenticate(&req, &sim)?;
    let state = sim.state();
    let id = customer(&state, &path, NotFoundBody::Empty)?;
    match state.estimate(id) {
        Estimate::Priced { total, currency, costs } => Ok(HttpResponse::Ok()
            .json(json!({"total": {"amount": total, "currency": currency}, "costs": costs}))),
        // brick/money's MoneyMismatchException is not caught: an empty 500.
        Estimate::MixedCurrencies => Ok(HttpResponse::InternalServerError().finish()),
    }
}

async fn list_limits(req: HttpRequest, sim: web::Data<SimShared>, path: web::Path<String>) -> Answer {
    authenticate(&req, &sim)?;
    let state = sim.state();
    let id = customer(&state, &path, NotFoundBody::Empty)?;
    let data: Vec<Value> = state
        .customer_limits(id)
        .into_iter()
        .map(|l| json!({"id": l.id, "amount": l.amount, "action": l.action}))
        .collect();
    // `last_key` is left out: the server's serializer drops the uninitialized property.
    Ok(HttpResponse::Ok().json(json!({"data": data, "has_more": false})))
}

async fn create_limit(
    req: HttpRequest,
    sim: web::Data<SimShared>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Answer {
    authenticate(&req, &sim)?;
    // The customer is looked up before the body is read.
    let id = customer(&sim.state(), &path, NotFoundBody::Empty)?;
    let body = json_body(&body)?;
    let mut errors = BTreeMap::new();
    let amount = match body.get("amount") {
        v if is_blank(v) => {
            errors.insert("amount".into(), BLANK.into());
            None
        }
        Some(Value::Number(n)) if n.as_i64().is_some() => {
            let amount = n.as_i64().unwrap_or_default();
            if amount <= 0 {
                errors.insert("amount".into(), "This value should be positive.".into());
            }
            Some(amount)
        }
        _ => {
            errors.insert("amount".into(), "This value should be of type integer.".into());
            None
        }
    };
    let action = match body.get("action") {
        v if is_blank(v) => {
            errors.insert("action".into(), BLANK.into());
            None
        }
        Some(Value::String(s)) => LimitAction::parse(s).ok().or_else(|| {
            errors.insert("action".into(), "The value you selected is not a valid choice.".into());
            None
        }),
        _ => {
            errors.insert("action".into(), "The value you selected is not a valid choice.".into());
            None
        }
    };
    let (Some(amount), Some(action), true) = (amount, action, errors.is_empty()) else {
        return Err(Reply::Invalid(errors));
    };
    let limit =
        sim.state().add_limit(id, LimitId::new_v4(), amount, action).map_err(|_| Reply::ServerError)?;
    Ok(HttpResponse::Created().json(json!({"id": limit.id, "amount": limit.amount, "action": limit.action})))
}

async fn delete_limit(
    req: HttpRequest,
    sim: web::Data<SimShared>,
    path: web::Path<(String, String)>,
) -> Answer {
    authenticate(&req, &sim)?;
    let (customer_id, limit_id) = path.into_inner();
    // Unlike the other routes, delete uses getById, whose UUID conversion error is not caught.
    if CustomerId::parse(&customer_id).is_err() {
        return Err(Reply::ServerError);
    }
    let mut state = sim.state();
    customer(&state, &customer_id, NotFoundBody::SuccessFalse)?;
    // The limit is found by id alone: BillaBear does not check it belongs to the customer.
    let limit = LimitId::parse(&limit_id)
        .ok()
        .filter(|id| state.limits.contains_key(id))
        .ok_or(Reply::NotFound(NotFoundBody::SuccessFalse))?;
    state.remove_limit(limit);
    Ok(HttpResponse::Ok().finish())
}

/// The plan's side (API.md §6.1): `userCount`, as the server's serializer writes the DTO's
/// property (the published spec says `user_count`).
async fn customer_limits(req: HttpRequest, sim: web::Data<SimShared>, path: web::Path<String>) -> Answer {
    authenticate(&req, &sim)?;
    let state = sim.state();
    let id = customer(&state, &path, NotFoundBody::EmptyArray)?;
    let plan = state.plan(id);
    let feature = |code: &str| json!({"code": code, "name": code.replace('_', " "), "description": null});
    Ok(HttpResponse::Ok().json(json!({
        "limits": plan.limits.iter().map(|(code, limit)| json!({"feature": feature(code), "limit": limit})).collect::<Vec<_>>(),
        "features": plan.features.iter().map(|code| feature(code)).collect::<Vec<_>>(),
        "userCount": plan.user_count,
    })))
}

async fn active_subscriptions(
    req: HttpRequest,
    sim: web::Data<SimShared>,
    path: web::Path<String>,
) -> Answer {
    authenticate(&req, &sim)?;
    let state = sim.state();
    let id = customer(&state, &path, NotFoundBody::EmptyArray)?;
    let now = Utc::now();
    let (_, valid_until) = state.period();
    let data: Vec<Value> = state
        .active_subscriptions(id)
        .into_iter()
        .map(|s| {
            let metric = s.metric.as_ref().and_then(|code| state.metrics.get(code)).map(|m| {
                json!({"id": m.id, "name": m.name, "code": m.code, "aggregation_method": m.aggregation,
                       "aggregation_property": null, "filters": [], "createdAt": now})
            });
            json!({
                "id": s.id,
                "schedule": "month",
                "created_at": now,
                "updated_at": now,
                "ended_at": null,
                "valid_until": valid_until,
                "main_external_reference": null,
                "child_external_reference": null,
                // A plan of its own, the same on every answer, unless the seed names one.
                "plan": {"id": s.plan.id.unwrap_or_else(|| Uuid::from_u128(s.id.as_uuid().as_u128().rotate_left(64))),
                         "name": "Simulated plan"},
                "price": {
                    "id": Uuid::new_v4(),
                    // A tiered price has no single amount.
                    "amount": match (&s.metric, s.tiers.is_empty()) {
                        (Some(_), true) => json!((s.unit_price).round() as i64),
                        (Some(_), false) => Value::Null,
                        (None, _) => json!(s.price_amount),
                    },
                    "currency": s.currency,
                    "external_reference": null,
                    "recurring": true,
                    "schedule": "month",
                    "including_tax": s.including_tax,
                    "public": true,
                    "usage": s.metric.is_some(),
                    "metric": metric,
                    "metric_type": "resettable",
                },
                "seat_number": 1,
                "metadata": {},
                "status": "active",
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"data": data, "has_more": false})))
}

async fn disable(req: HttpRequest, sim: web::Data<SimShared>, path: web::Path<String>) -> Answer {
    set_status(req, sim, path, "disabled", "customer_disabled")
}

async fn enable(req: HttpRequest, sim: web::Data<SimShared>, path: web::Path<String>) -> Answer {
    set_status(req, sim, path, "active", "customer_enabled")
}

fn set_status(
    req: HttpRequest,
    sim: web::Data<SimShared>,
    path: web::Path<String>,
    status: &str,
    webhook: &str,
) -> Answer {
    authenticate(&req, &sim)?;
    let mut state = sim.state();
    let id = customer(&state, &path, NotFoundBody::SuccessFalse)?;
    let c = state.customers.get_mut(&id).expect("checked above");
    c.status = status.into();
    let payload = json!({"type": webhook, "customer": {"id": c.id, "email": c.email, "brand": "default",
                         "is_disabled": status == "disabled"}});
    state.webhooks.push(payload);
    drop(state);
    sim.webhooks_recorded();
    Ok(HttpResponse::Accepted().json(json!({})))
}

async fn create_event(req: HttpRequest, sim: web::Data<SimShared>, body: web::Bytes) -> Answer {
    authenticate(&req, &sim)?;
    let body = json_body(&body)?;
    let mut state = sim.state();
    let event = validate_event(&body, &state).map_err(Reply::Invalid)?;
    if event.event_id.len() > 255 {
        // event_id is VARCHAR(255): the insert fails and nothing catches it.
        return Err(Reply::ServerError);
    }
    // Stored every time, repeated event_id or not: BillaBear does not dedupe on ingest.
    state.store_event(event);
    Ok(HttpResponse::Created().finish())
}

/// `CreateEvent`'s constraints, with Symfony's messages; one message per field.
fn validate_event(
    body: &serde_json::Map<String, Value>,
    state: &SimState,
) -> Result<StoredEvent, BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    let mut string_field = |name: &str| -> Option<String> {
        match body.get(name) {
            v if is_blank(v) => {
                errors.insert(name.to_owned(), BLANK.to_owned());
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            _ => {
                errors.insert(name.to_owned(), "This value should be of type string.".to_owned());
                None
            }
        }
    };
    let event_id = string_field("event_id");
    let subscription = string_field("subscription");
    let code = string_field("code");
    let subscription = subscription.and_then(|s| match SubscriptionId::parse(&s) {
        Err(_) => {
            errors.insert("subscription".into(), "This is not a valid UUID.".into());
            None
        }
        Ok(id) if !state.subscriptions.contains_key(&id) => {
            errors.insert("subscription".into(), "Subscription plan does not exist".into());
            None
        }
        Ok(id) => Some(id),
    });
    let code = code.filter(|c| {
        let known = state.metrics.contains_key(c);
        if !known {
            errors.insert("code".into(), format!("The code \"{c}\" does not exist."));
        }
        known
    });
    let value = match body.get("value") {
        v if is_blank(v) => {
            errors.insert("value".into(), BLANK.into());
            None
        }
        Some(Value::Number(n)) => n.as_f64(),
        _ => {
            errors.insert("value".into(), "This value should be of type integer|float.".into());
            None
        }
    };
    let properties = match body.get("properties") {
        None | Some(Value::Null) => json!({}),
        Some(v @ (Value::Object(_) | Value::Array(_))) => v.clone(),
        Some(_) => {
            errors.insert("properties".into(), "This value should be of type array.".into());
            Value::Null
        }
    };
    match (event_id, subscription, code, value) {
        (Some(event_id), Some(subscription), Some(code), Some(value)) if errors.is_empty() => {
            Ok(StoredEvent {
                id: Uuid::new_v4(),
                event_id,
                subscription,
                code,
                value,
                properties,
                received_at: Utc::now(),
            })
        }
        _ => Err(errors),
    }
}
