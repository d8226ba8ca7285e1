//! `/healthz` (the process is alive) and `/readyz` (it can do its job: Postgres reachable and
//! migrated; BillaBear's reachability is reported but does not fail readiness, since checks keep
//! answering from the cache and events wait in the outbox while BillaBear is down). `/readyz`
//! needs no key, so its answer is reused for a couple of seconds rather than asking Postgres and
//! BillaBear on every request.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::db;
use crate::startup::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health { status: "ok" })
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub checks: Checks,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Checks {
    pub postgres: Check,
    pub migrations: Check,
    pub billabear: Check,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub ok: bool,
    /// Whether a failure makes the service not ready.
    pub required: bool,
    pub detail: String,
}

impl Check {
    fn new(ok: bool, required: bool, detail: impl Into<String>) -> Self {
        Self { ok, required, detail: detail.into() }
    }
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Postgres reachable and migrated", body = Readiness),
    (status = 503, description = "A required dependency failed; `checks` says which", body = Readiness),
))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let body = state.readiness.get(|| readiness(&state), |_| true).await;
    let ready = body.status == "ready";
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

/// Asks Postgres and BillaBear (at most every `startup::READINESS_EVERY`, see `readyz`).
pub(crate) async fn readiness(state: &AppState) -> Readiness {
    let probe = state.billabear.with_timeout(state.settings.billabear.timeout);
    let (migrations, billabear) = tokio::join!(db::migration_status(&state.pool), probe.probe());
    let (postgres, migrations) = match migrations {
        Ok(status) if status.missing.is_empty() => (
            Check::new(true, true, "reachable"),
            Check::new(true, true, format!("{} of {} applied", status.expected, status.expected)),
        ),
        Ok(status) => (
            Check::new(true, true, "reachable"),
            Check::new(false, true, format!("not applied: {:?} (run `usage-gate migrate`)", status.missing)),
        ),
        Err(e) => (
            Check::new(false, true, format!("unreachable: {e}")),
            Check::new(false, true, "unknown: Postgres unreachable"),
        ),
    };
    let billabear = match billabear {
        Ok(()) => Check::new(true, false, "reachable"),
        Err(e) => Check::new(false, false, e.to_string()),
    };
    let ready = postgres.ok && migrations.ok;
    Readiness {
        status: if ready { "ready" } else { "not_ready" },
        checks: Checks { postgres, migrations, billabear },
    }
}
