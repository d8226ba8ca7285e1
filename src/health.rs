//! Whether this replica can do its job, which is answering checks. Once it has reached Postgres
//! (migrated) it answers checks from its cache whatever happens to Postgres, so losing Postgres
//! afterwards makes it `degraded`, not unready: a failover must not take every replica out of
//! the Service at once (writes answer 503 + `Retry-After` meanwhile). A replica that has never
//! reached Postgres is not ready. The strict answer (`?strict=true`) requires Postgres always.
//! BillaBear's reachability is reported but never required: checks answer from the cache and
//! events wait in the outbox. Anyone may ask (`/readyz` needs no key), so the dependencies'
//! answer is reused for [`READINESS_EVERY`] rather than asked on every request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use crate::billabear::BillaBearClient;
use crate::db;
use crate::memo::Memo;

/// How stale the readiness answer may be.
pub const READINESS_EVERY: Duration = Duration::from_secs(2);

/// The readiness service: what it asks, its last answer, and whether Postgres was ever reached.
pub struct Health {
    pool: PgPool,
    /// With the checks' timeout (`billabear.timeout`).
    probe: BillaBearClient,
    checks: Memo<Checks>,
    reached: AtomicBool,
}

impl Health {
    pub fn new(pool: PgPool, probe: BillaBearClient) -> Self {
        Self { pool, probe, checks: Memo::new(READINESS_EVERY), reached: AtomicBool::new(false) }
    }

    /// Readiness, its dependencies asked at most every [`READINESS_EVERY`].
    pub async fn readiness(&self, strict: bool) -> Readiness {
        let checks = self.checks.get(|| ask(&self.pool, &self.probe), |_| true).await;
        if checks.postgres.ok && checks.migrations.ok {
            self.reached.store(true, Ordering::Relaxed);
        }
        judge(checks, self.reached.load(Ordering::Relaxed), strict)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready`; `degraded` (answering checks from the cache, writes refused: a dependency it
    /// had reached is gone); or `not_ready`.
    #[schema(example = "ready")]
    pub status: Status,
    pub checks: Checks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ReadinessStatus)]
pub enum Status {
    Ready,
    Degraded,
    NotReady,
}

impl Status {
    /// Whether a load balancer should send this replica traffic.
    pub fn serving(self) -> bool {
        self != Status::NotReady
    }
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
    /// Whether its failure makes the service not ready, in this answer.
    pub required: bool,
    pub detail: String,
}

impl Check {
    fn new(ok: bool, detail: impl Into<String>) -> Self {
        Self { ok, required: false, detail: detail.into() }
    }
}

/// Asks Postgres and BillaBear.
async fn ask(pool: &PgPool, probe: &BillaBearClient) -> Checks {
    let (migrations, billabear) = tokio::join!(db::migration_status(pool), probe.probe());
    let (postgres, migrations) = match migrations {
        Ok(status) if status.missing.is_empty() => (
            Check::new(true, "reachable"),
            Check::new(true, format!("{} of {} applied", status.expected, status.expected)),
        ),
        Ok(status) => (
            Check::new(true, "reachable"),
            Check::new(false, format!("not applied: {:?} (run `usage-gate migrate`)", status.missing)),
        ),
        Err(e) => (
            Check::new(false, format!("unreachable: {e}")),
            Check::new(false, "unknown: Postgres unreachable"),
        ),
    };
    let billabear = match billabear {
        Ok(()) => Check::new(true, "reachable"),
        Err(e) => Check::new(false, e.to_string()),
    };
    Checks { postgres, migrations, billabear }
}

/// The verdict on what was asked. Postgres unreachable is required only before this replica
/// first reached it, or when strict; a reachable Postgres without this version's migrations is
/// always required (its writes would fail for a reason a restart of Postgres does not mend).
fn judge(mut checks: Checks, reached: bool, strict: bool) -> Readiness {
    checks.postgres.required = strict || !reached;
    checks.migrations.required = checks.postgres.ok || checks.postgres.required;
    let failed = |c: &Check| !c.ok;
    let status = if [&checks.postgres, &checks.migrations].into_iter().any(|c| failed(c) && c.required) {
        Status::NotReady
    } else if failed(&checks.postgres) || failed(&checks.migrations) {
        Status::Degraded
    } else {
        Status::Ready
    };
    Readiness { status, checks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(postgres: bool, migrations: bool) -> Checks {
        Checks {
            postgres: Check::new(postgres, ""),
            migrations: Check::new(migrations, ""),
            billabear: Check::new(false, "down: never required"),
        }
    }

    #[test]
    fn postgres_lost_after_it_was_reached_degrades_unless_strict() {
        use Status::*;
        // (postgres ok, migrations ok, reached before, strict) → status
        const ROWS: &[(bool, bool, bool, bool, Status)] = &[
            (true, true, false, false, Ready),
            (true, true, true, true, Ready),
            (false, false, false, false, NotReady),
            (false, false, true, false, Degraded),
            (false, false, true, true, NotReady),
            (true, false, true, false, NotReady),
            (true, false, false, false, NotReady),
        ];
        for &(postgres, migrations, reached, strict, want) in ROWS {
            let got = judge(checks(postgres, migrations), reached, strict);
            assert_eq!(
                got.status, want,
                "postgres {postgres} migrations {migrations} reached {reached} strict {strict}"
            );
        }
    }

    #[test]
    fn a_degraded_answer_says_postgres_is_not_required_now() {
        let got = judge(checks(false, false), true, false);
        assert!(!got.checks.postgres.required && !got.checks.migrations.required);
        assert!(judge(checks(false, false), true, true).checks.postgres.required);
    }
}
