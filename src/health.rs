//! Whether this replica can do its job: Postgres reachable and migrated; BillaBear's
//! reachability is reported but does not fail readiness, since checks keep answering from the
//! cache and events wait in the outbox while BillaBear is down. Anyone may ask (`/readyz` needs
//! no key), so the answer is reused for [`READINESS_EVERY`] rather than asking Postgres and
//! BillaBear on every request.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use crate::billabear::BillaBearClient;
use crate::db;
use crate::memo::Memo;

/// How stale the readiness answer may be.
pub const READINESS_EVERY: Duration = Duration::from_secs(2);

/// The readiness service: what it asks, and its last answer.
pub struct Health {
    pool: PgPool,
    /// With the checks' timeout (`billabear.timeout`).
    probe: BillaBearClient,
    readiness: Memo<Readiness>,
}

impl Health {
    pub fn new(pool: PgPool, probe: BillaBearClient) -> Self {
        Self { pool, probe, readiness: Memo::new(READINESS_EVERY) }
    }

    /// Readiness, asked at most every [`READINESS_EVERY`].
    pub async fn readiness(&self) -> Readiness {
        self.readiness.get(|| ask(&self.pool, &self.probe), |_| true).await
    }
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

/// Asks Postgres and BillaBear.
async fn ask(pool: &PgPool, probe: &BillaBearClient) -> Readiness {
    let (migrations, billabear) = tokio::join!(db::migration_status(pool), probe.probe());
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
