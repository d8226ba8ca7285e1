//! Routes about the service itself: metrics and "who am I".

use std::time::Duration;

use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::auth::{Caller, Scope};
use crate::health::Health;
use crate::memo::Memo;
use crate::outbox::{Outbox, Stats};
use crate::webhooks::endpoints::{EndpointCounts, Endpoints};

/// How stale the outbox figures in `/metrics` may be: anyone may scrape, and each answer costs a
/// count over the outbox.
pub const OUTBOX_STATS_EVERY: Duration = Duration::from_secs(5);

/// What `/metrics` renders: the recorder's handle; the outbox's and the webhook endpoints'
/// counts from Postgres; and readiness, so an alert can name a replica that is up but not ready.
pub struct Exposition {
    handle: PrometheusHandle,
    outbox: Outbox,
    endpoints: Endpoints,
    health: web::Data<Health>,
    outbox_stats: Memo<Option<Stats>>,
    endpoint_counts: Memo<Option<EndpointCounts>>,
}

impl Exposition {
    pub fn new(
        handle: PrometheusHandle,
        outbox: Outbox,
        endpoints: Endpoints,
        health: web::Data<Health>,
    ) -> Self {
        Self {
            handle,
            outbox,
            endpoints,
            health,
            outbox_stats: Memo::new(OUTBOX_STATS_EVERY),
            endpoint_counts: Memo::new(OUTBOX_STATS_EVERY),
        }
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics(exposition: web::Data<Exposition>) -> HttpResponse {
    // The queue's size comes from Postgres (shared by every replica), read at most every few
    // seconds however often this is scraped.
    let stats =
        exposition.outbox_stats.get(|| async { exposition.outbox.stats().await.ok() }, Option::is_some).await;
    if let Some(stats) = stats {
        for (status, count) in
            [("pending", stats.pending), ("delivered", stats.delivered), ("dead", stats.dead)]
        {
            metrics::gauge!("usage_gate_outbox_events", "status" => status).set(count as f64);
        }
        metrics::gauge!("usage_gate_outbox_oldest_pending_age_seconds").set(stats.oldest_pending_age_seconds);
    }
    let endpoints = exposition
        .endpoint_counts
        .get(|| async { exposition.endpoints.counts().await.ok() }, Option::is_some)
        .await;
    if let Some(counts) = endpoints {
        metrics::gauge!("usage_gate_webhook_endpoints", "state" => "enabled").set(counts.enabled as f64);
        metrics::gauge!("usage_gate_webhook_endpoints", "state" => "disabled").set(counts.disabled as f64);
    }
    // Readiness as `/readyz` answers it (reused for a couple of seconds, as there): ready while
    // it answers checks, degraded included; which dependency failed is the per-check gauge.
    let readiness = exposition.health.readiness(false).await;
    metrics::gauge!("usage_gate_ready").set(if readiness.status.serving() { 1.0 } else { 0.0 });
    let checks = &readiness.checks;
    for (check, ok) in [
        ("postgres", checks.postgres.ok),
        ("migrations", checks.migrations.ok),
        ("billabear", checks.billabear.ok),
    ] {
        metrics::gauge!("usage_gate_readiness_check", "check" => check).set(if ok { 1.0 } else { 0.0 });
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(exposition.handle.render())
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
