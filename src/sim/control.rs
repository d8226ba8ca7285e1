//! The simulator's control API (`/_sim/...`, no key): set up customers, inject faults, run the
//! counter job, and read what "BillaBear" received. Not part of BillaBear's API.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::seed::{SeedCustomer, SeedSubscription};
use super::state::Estimate;
use super::{Faults, Requests, SimShared};
use crate::domain::{CustomerId, LimitAction, LimitId};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }))
        .route("/customers", web::post().to(add_customer))
        .route("/customers/{id}", web::get().to(show_customer))
        .route("/customers/{id}/status", web::put().to(set_status))
        .route("/customers/{id}/usage", web::put().to(set_usage))
        .route("/customers/{id}/subscriptions", web::post().to(add_subscription))
        .route("/customers/{id}/limits", web::post().to(add_limit))
        .service(
            web::resource("/faults")
                .route(web::get().to(|sim: web::Data<SimShared>| async move {
                    HttpResponse::Ok().json(&*sim.faults())
                }))
                .route(web::put().to(set_faults))
                .route(web::delete().to(|sim: web::Data<SimShared>| async move {
                    *sim.faults() = Faults::default();
                    HttpResponse::NoContent().finish()
                })),
        )
        .route("/tick", web::post().to(|sim: web::Data<SimShared>| async move {
            HttpResponse::Ok().json(json!({"fired": sim.tick()}))
        }))
        .route("/period", web::post().to(|sim: web::Data<SimShared>| async move {
            sim.state().new_period();
            HttpResponse::NoContent().finish()
        }))
        .route("/events", web::get().to(events))
        .route("/events/{event_id}", web::get().to(event))
        .service(
            web::resource("/requests")
                .route(web::get().to(|sim: web::Data<SimShared>| async move {
                    HttpResponse::Ok().json(&*sim.requests())
                }))
                .route(web::delete().to(|sim: web::Data<SimShared>| async move {
                    *sim.requests() = Requests::default();
                    HttpResponse::NoContent().finish()
                })),
        )
        .route("/webhooks", web::get().to(|sim: web::Data<SimShared>| async move {
            HttpResponse::Ok().json(&sim.state().webhooks)
        }));
}

fn bad_request(message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": message.to_string()}))
}

fn customer_id(raw: &str) -> Result<CustomerId, HttpResponse> {
    CustomerId::parse(raw).map_err(|e| bad_request(format!("customer id {e}")))
}

async fn add_customer(sim: web::Data<SimShared>, body: web::Json<SeedCustomer>) -> HttpResponse {
    let id = match sim.state().add_customer(&body) {
        Ok(id) => id,
        Err(e) => return bad_request(e),
    };
    customer_view(&sim, id, true)
}

async fn show_customer(sim: web::Data<SimShared>, path: web::Path<String>) -> HttpResponse {
    match customer_id(&path) {
        Ok(id) => customer_view(&sim, id, false),
        Err(response) => response,
    }
}

fn customer_view(sim: &SimShared, id: CustomerId, created: bool) -> HttpResponse {
    let state = sim.state();
    let Some(customer) = state.customers.get(&id) else {
        return HttpResponse::NotFound().json(json!({"error": "no such customer"}));
    };
    let subscriptions: Vec<_> = customer
        .subscriptions
        .iter()
        .filter_map(|s| state.subscriptions.get(s))
        .map(|s| json!({"id": s.id, "metric": s.metric, "unit_price": s.unit_price, "currency": s.currency,
                        "active": s.active, "usage": state.usage(s.id)}))
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
    if created { HttpResponse::Created().json(body) } else { HttpResponse::Ok().json(body) }
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
}

async fn set_status(sim: web::Data<SimShared>, path: web::Path<String>, body: web::Json<StatusBody>) -> HttpResponse {
    let id = match customer_id(&path) {
        Ok(id) => id,
        Err(response) => return response,
    };
    match sim.state().customers.get_mut(&id) {
        Some(customer) => customer.status = body.into_inner().status,
        None => return HttpResponse::NotFound().json(json!({"error": "no such customer"})),
    }
    customer_view(&sim, id, false)
}

/// Sets the usage counter of the customer's subscription for `metric` (skips events and ticks).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageBody {
    metric: String,
    value: f64,
}

async fn set_usage(sim: web::Data<SimShared>, path: web::Path<String>, body: web::Json<UsageBody>) -> HttpResponse {
    let id = match customer_id(&path) {
        Ok(id) => id,
        Err(response) => return response,
    };
    {
        let mut state = sim.state();
        let found = state.active_subscriptions(id).into_iter().find(|s| s.metric.as_deref() == Some(&body.metric)).map(|s| s.id);
        match found {
            Some(sub) => state.set_usage(sub, body.value),
            None => return bad_request(format!("customer {id} has no active subscription for metric {:?}", body.metric)),
        }
    }
    customer_view(&sim, id, false)
}

async fn add_subscription(sim: web::Data<SimShared>, path: web::Path<String>, body: web::Json<SeedSubscription>) -> HttpResponse {
    let id = match customer_id(&path) {
        Ok(id) => id,
        Err(response) => return response,
    };
    if let Err(e) = sim.state().add_subscription(id, &body) {
        return bad_request(e);
    }
    customer_view(&sim, id, true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitBody {
    amount: i64,
    action: LimitAction,
}

async fn add_limit(sim: web::Data<SimShared>, path: web::Path<String>, body: web::Json<LimitBody>) -> HttpResponse {
    let id = match customer_id(&path) {
        Ok(id) => id,
        Err(response) => return response,
    };
    match sim.state().add_limit(id, LimitId::new_v4(), body.amount, body.action) {
        Ok(limit) => HttpResponse::Created().json(json!({"id": limit.id, "amount": limit.amount, "action": limit.action})),
        Err(e) => bad_request(e),
    }
}

async fn set_faults(sim: web::Data<SimShared>, body: web::Json<Faults>) -> HttpResponse {
    let faults = body.into_inner();
    if !(0.0..=1.0).contains(&faults.error_rate) {
        return bad_request("error_rate must be between 0 and 1");
    }
    *sim.faults() = faults.clone();
    HttpResponse::Ok().json(faults)
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
