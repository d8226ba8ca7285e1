//! The simulator's control API (`/_sim/...`, no key): set up customers, inject faults, run the
//! counter job, and read what "BillaBear" received. Not part of BillaBear's API.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::seed::{SeedCustomer, SeedMetric, SeedSubscription};
use super::state::Estimate;
use super::{Faults, Requests, SimShared};
use crate::domain::{CustomerId, LimitAction, LimitId};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }))
        .route("/metrics", web::post().to(add_metric))
        .route("/customers", web::post().to(add_customer))
        .route("/customers/{id}", web::get().to(show_customer))
        .route("/customers/{id}/status", web::put().to(set_status))
        .route("/customers/{id}/usage", web::put().to(set_usage))
        .route("/customers/{id}/subscriptions", web::post().to(add_subscription))
        .route("/customers/{id}/limits", web::post().to(add_limit))
        .service(
            web::resource("/faults")
                .route(
                    web::get().to(|sim: web::Data<SimShared>| async move {
                        HttpResponse::Ok().json(&*sim.faults())
                    }),
                )
                .route(web::put().to(set_faults))
                .route(web::delete().to(|sim: web::Data<SimShared>| async move {
                    *sim.faults() = Faults::default();
                    HttpResponse::NoContent().finish()
                })),
        )
        .route(
            "/tick",
            web::post().to(|sim: web::Data<SimShared>| async move {
                HttpResponse::Ok().json(json!({"fired": sim.tick()}))
            }),
        )
        .route(
            "/period",
            // An optional `{"length_ms": N}`: how long the new period lasts (30 days by default).
            web::post().to(|sim: web::Data<SimShared>, body: web::Bytes| async move {
                let length = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|b| b.get("length_ms").and_then(Value::as_i64))
                    .map(chrono::Duration::milliseconds);
                sim.state().new_period(length);
                HttpResponse::NoContent().finish()
            }),
        )
        .route("/events", web::get().to(events))
        .route("/events/{event_id}", web::get().to(event))
        .service(
            web::resource("/requests")
                .route(
                    web::get().to(|sim: web::Data<SimShared>| async move {
                        HttpResponse::Ok().json(&*sim.requests())
                    }),
                )
                .route(web::delete().to(|sim: web::Data<SimShared>| async move {
                    *sim.requests() = Requests::default();
                    HttpResponse::NoContent().finish()
                })),
        )
        .route(
            "/webhooks",
            web::get().to(|sim: web::Data<SimShared>| async move {
                HttpResponse::Ok().json(&sim.state().webhooks)
            }),
        )
        .service(web::resource("/webhooks/endpoint").route(web::put().to(set_webhook_endpoint)).route(
            web::delete().to(|sim: web::Data<SimShared>| async move {
                *sim.webhook_url() = None;
                HttpResponse::NoContent().finish()
            }),
        ));
}

#[derive(Debug, Deserialize)]
struct WebhookEndpoint {
    url: String,
}

/// Where webhooks recorded from now on are POSTed.
async fn set_webhook_endpoint(
    sim: web::Data<SimShared>,
    body: web::Json<WebhookEndpoint>,
) -> Result<HttpResponse, ControlError> {
    let url = url::Url::parse(&body.url).map_err(|e| ControlError::BadRequest(format!("url: {e}")))?;
    *sim.webhook_url() = Some(url.to_string());
    Ok(HttpResponse::NoContent().finish())
}

/// A control request that cannot be done: 400 or 404 with `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
enum ControlError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no such customer")]
    NoSuchCustomer,
}

impl actix_web::ResponseError for ControlError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        match self {
            ControlError::BadRequest(_) => actix_web::http::StatusCode::BAD_REQUEST,
            ControlError::NoSuchCustomer => actix_web::http::StatusCode::NOT_FOUND,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(json!({"error": self.to_string()}))
    }
}

fn bad_request(message: impl std::fmt::Display) -> ControlError {
    ControlError::BadRequest(message.to_string())
}

type Answer = Result<HttpResponse, ControlError>;

fn customer_id(raw: &str) -> Result<CustomerId, ControlError> {
    CustomerId::parse(raw).map_err(|e| bad_request(format!("customer id {e}")))
}

async fn add_customer(sim: web::Data<SimShared>, body: web::Json<SeedCustomer>) -> Answer {
    let id = sim.state().add_customer(&body).map_err(bad_request)?;
    customer_view(&sim, id, true)
}

async fn show_customer(sim: web::Data<SimShared>, path: web::Path<String>) -> Answer {
    customer_view(&sim, customer_id(&path)?, false)
}

fn customer_view(sim: &SimShared, id: CustomerId, created: bool) -> Answer {
    let state = sim.state();
    let customer = state.customers.get(&id).ok_or(ControlError::NoSuchCustomer)?;
    let subscriptions: Vec<_> = customer
        .subscriptions
        .iter()
        .filter_map(|s| state.subscriptions.get(s))
        .map(|s| {
            json!({"id": s.id, "metric": s.metric, "unit_price": s.unit_price, "tiers": s.tiers,
                   "tax_rate": s.tax_rate, "including_tax": s.including_tax, "currency": s.currency,
                   "active": s.active, "usage": state.usage(s.id)})
        })
        .collect();
    let limits: Vec<_> = state
        .customer_limits(id)
        .into_iter()
        .map(|l| json!({"id": l.id, "amount": l.amount, "action": l.action}))
        .collect();
    let estimate = match state.estimate(id) {
        Estimate::Priced { total, currency, .. } => json!({"amount": total, "currency": currency}),
        Estimate::MixedCurrencies => json!(null),
    };
    let body = json!({"id": id, "name": customer.name, "email": customer.email, "status": customer.status,
                      "subscriptions": subscriptions, "limits": limits, "estimate": estimate});
    let mut response = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(response.json(body))
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
}

async fn set_status(
    sim: web::Data<SimShared>,
    path: web::Path<String>,
    body: web::Json<StatusBody>,
) -> Answer {
    let id = customer_id(&path)?;
    sim.state().customers.get_mut(&id).ok_or(ControlError::NoSuchCustomer)?.status = body.into_inner().status;
    customer_view(&sim, id, false)
}

/// Sets the usage counter of the customer's subscription for `metric` (skips events and ticks).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageBody {
    metric: String,
    value: f64,
}

async fn set_usage(sim: web::Data<SimShared>, path: web::Path<String>, body: web::Json<UsageBody>) -> Answer {
    let id = customer_id(&path)?;
    {
        let mut state = sim.state();
        let subscription = state
            .active_subscriptions(id)
            .into_iter()
            .find(|s| s.metric.as_deref() == Some(&body.metric))
            .map(|s| s.id)
            .ok_or_else(|| {
                bad_request(format!("customer {id} has no active subscription for metric {:?}", body.metric))
            })?;
        state.set_usage(subscription, body.value);
    }
    customer_view(&sim, id, false)
}

/// Defines a metric (how its events aggregate) before subscriptions bill it.
async fn add_metric(sim: web::Data<SimShared>, body: web::Json<SeedMetric>) -> Answer {
    let metric = body.into_inner();
    sim.state().add_metric(&metric.code, metric.name.as_deref(), metric.aggregation).map_err(bad_request)?;
    Ok(HttpResponse::Created().json(json!({"code": metric.code})))
}

async fn add_subscription(
    sim: web::Data<SimShared>,
    path: web::Path<String>,
    body: web::Json<SeedSubscription>,
) -> Answer {
    let id = customer_id(&path)?;
    sim.state().add_subscription(id, &body).map_err(bad_request)?;
    customer_view(&sim, id, true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitBody {
    amount: i64,
    action: LimitAction,
}

async fn add_limit(sim: web::Data<SimShared>, path: web::Path<String>, body: web::Json<LimitBody>) -> Answer {
    let id = customer_id(&path)?;
    let limit =
        sim.state().add_limit(id, LimitId::new_v4(), body.amount, body.action).map_err(bad_request)?;
    Ok(HttpResponse::Created().json(json!({"id": limit.id, "amount": limit.amount, "action": limit.action})))
}

async fn set_faults(sim: web::Data<SimShared>, body: web::Json<Faults>) -> Answer {
    let faults = body.into_inner();
    if !(0.0..=1.0).contains(&faults.error_rate) {
        return Err(bad_request("error_rate must be between 0 and 1"));
    }
    *sim.faults() = faults.clone();
    Ok(HttpResponse::Ok().json(faults))
}

/// Every received event_id with how many times it arrived.
async fn events(sim: web::Data<SimShared>) -> HttpResponse {
    let state = sim.state();
    HttpResponse::Ok().json(json!({"total": state.events.len(), "by_event_id": state.event_counts()}))
}

async fn event(sim: web::Data<SimShared>, path: web::Path<String>) -> HttpResponse {
    let state = sim.state();
    let matching: Vec<_> = state.events.iter().filter(|e| e.event_id == *path).collect();
    HttpResponse::Ok().json(json!({"count": matching.len(), "events": matching}))
}
