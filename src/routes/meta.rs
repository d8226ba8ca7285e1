//! Routes about the service itself: metrics and "who am I".

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::auth::{Caller, Scope};
use crate::startup::AppState;

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // The queue's size comes from Postgres (shared by every replica), read at most every few
    // seconds however often this is scraped.
    let stats = state
        .outbox_stats
        .get(|| async { crate::outbox::store::stats(&state.pool).await.ok() }, Option::is_some)
        .await;
    if let Some(stats) = stats {
        for (status, count) in
            [("pending", stats.pending), ("delivered", stats.delivered), ("dead", stats.dead)]
        {
            metrics::gauge!("usage_gate_outbox_events", "status" => status).set(count as f64);
        }
        metrics::gauge!("usage_gate_outbox_oldest_pending_age_seconds").set(stats.oldest_pending_age_seconds);
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The key's name: the actor recorded in audit records.
    pub name: String,
    pub scopes: Vec<Scope>,
}

/// Which key this is and what it may do (any valid key).
#[utoipa::path(get, path = "/v1/whoami", tag = "meta", security(("bearer" = [])),
    responses(
        (status = 200, body = WhoAmI),
        (status = 401, description = "No or unknown API key", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn whoami(caller: Caller) -> web::Json<WhoAmI> {
    web::Json(WhoAmI { name: caller.name.to_string(), scopes: caller.scopes.iter().collect() })
}
