//! What usage-gate keeps, and for how long: closed holds, ended overrides, BillaBear's counters
//! of subscriptions no longer seen, the last decision of customers no longer seen, webhook
//! messages no longer pending, idle console sessions, old usage samples, feature counts and
//! billing periods older than any window (400 days) and (when operators choose a window) audit
//! records. The outbox prunes its delivered events itself, under its own
//! lock (its pruning is part of its deduplication contract).
//!
//! Every `retention.interval_s`, one replica at a time (a session advisory lock; the others skip
//! that round) deletes each table's rows past its window in chunks, so no statement holds many
//! row locks or runs long; the rows removed are counted in `usage_gate_pruned_rows_total{table}`.
//! Then (`retention.vacuum`) it vacuums usage-gate's churning tables, so that their size on disk
//! stays flat whether or not the server's autovacuum keeps up.

use std::time::Duration;

use sqlx::PgPool;

use crate::config::Settings;
use crate::db;

/// Rows per statement.
const CHUNK: i64 = 1000;
/// Any constant: the advisory lock that lets one replica at a time prune these tables.
pub const LOCK: i64 = 0x7573_6167_6572_6574; // "usageret"

/// One table's rule: its rows whose `age` column is older than the window go (`also`: a
/// further condition), found by their `ctid`.
struct Rule {
    table: &'static str,
    age: &'static str,
    also: &'static str,
}

impl Rule {
    /// The statement: rows past the window `$1` (seconds), `$2` at a time (for
    /// [`db::delete_in_chunks`]).
    fn delete(&self) -> String {
        let Rule { table, age, also } = self;
        format!(
            "DELETE FROM {table} WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM {table} WHERE {age} < now() - make_interval(secs => $1) {also}
                 LIMIT $2 FOR UPDATE SKIP LOCKED))"
        )
    }
}

/// Closed holds, by when they closed; ended overrides, by when they ended; counters and
/// decisions, by when usage-gate last saw them; audit records and usage samples, by when they
/// happened; webhook messages no longer pending, by when they were made (their attempts go with
/// them); console sessions, by when they were last used.
const RESERVATIONS: Rule = Rule { table: "reservations", age: "closed_at", also: "" };
const OVERRIDES: Rule = Rule { table: "overrides", age: "ended_at", also: "" };
const COUNTERS: Rule = Rule { table: "billabear_counters", age: "observed_at", also: "" };
const DECISIONS: Rule = Rule { table: "customer_decisions", age: "observed_at", also: "" };
const AUDIT: Rule = Rule { table: "audit_log", age: "occurred_at", also: "" };
const WEBHOOK_MESSAGES: Rule =
    Rule { table: "webhook_messages", age: "created_at", also: "AND status <> 'pending'" };
const CONSOLE_SESSIONS: Rule = Rule { table: "console_sessions", age: "last_seen_at", also: "" };
const USAGE_SAMPLES: Rule = Rule { table: "usage_samples", age: "observed_at", also: "" };
/// Feature counts of ended windows, by their start; billing periods of customers no longer
/// fetched; reached limits whose reset was told, by their window's end.
const FEATURE_USAGE: Rule = Rule { table: "feature_usage", age: "window_start", also: "" };
const BILLING_PERIODS: Rule = Rule { table: "billing_periods", age: "recorded_at", also: "" };
const FEATURE_LIMIT_CROSSINGS: Rule =
    Rule { table: "feature_limit_crossings", age: "window_end", also: "AND reset_at IS NOT NULL" };
/// Rules' buckets that stopped counting (`rules::counts`), as soon as they have.
const RULE_USAGE: Rule = Rule { table: "rule_usage", age: "expires_at", also: "" };
/// Rules' crossings whose reset was told, by their window's end.
const RULE_CROSSINGS: Rule =
    Rule { table: "rule_crossings", age: "window_end", also: "AND reset_at IS NOT NULL" };
/// How long the feature tables keep a row: past the longest window (a yearly billing period),
/// a count or a period can no longer be current.
const FEATURE_WINDOWS_KEPT: Duration = Duration::from_secs(400 * 24 * 3600);

/// Every table a pruner removes rows from, for `usage_gate_pruned_rows_total` (at zero from
/// start-up, so that a dashboard has a line before the first prune).
pub const TABLES: [&str; 14] = [
    "reservations",
    "overrides",
    "billabear_counters",
    "customer_decisions",
    "audit_log",
    "outbox",
    "webhook_messages",
    "console_sessions",
    "usage_samples",
    "feature_usage",
    "billing_periods",
    "feature_limit_crossings",
    "rule_usage",
    "rule_crossings",
];

pub fn register_metrics() {
    for table in TABLES {
        pruned(table, 0);
    }
}

/// Counts rows a pruner removed (this module's, and the outbox's, webhooks' and console's).
pub fn pruned(table: &'static str, rows: u64) {
    metrics::counter!("usage_gate_pruned_rows_total", "table" => table).increment(rows);
}

/// What a round prunes: the rules in force and their windows (a window of None keeps every
/// row), from `[retention]` and, for the webhooks' messages and the console's rows, their own
/// sections.
#[derive(Clone)]
pub struct Plan {
    rules: [(&'static Rule, Option<Duration>); 13],
    interval: Duration,
    vacuum: bool,
}

impl Plan {
    pub fn new(settings: &Settings) -> Self {
        let kept = &settings.retention;
        Self {
            rules: [
                (&RESERVATIONS, kept.reservations.window()),
                (&OVERRIDES, kept.overrides.window()),
                (&COUNTERS, kept.billabear_counters.window()),
                (&DECISIONS, kept.customer_decisions.window()),
                (&AUDIT, kept.audit.window()),
                (&WEBHOOK_MESSAGES, Some(settings.outbound_webhooks.retention.duration())),
                (&CONSOLE_SESSIONS, Some(settings.console.session_idle)),
                (&USAGE_SAMPLES, Some(settings.console.history.duration())),
                (&FEATURE_USAGE, Some(FEATURE_WINDOWS_KEPT)),
                (&BILLING_PERIODS, Some(FEATURE_WINDOWS_KEPT)),
                (&FEATURE_LIMIT_CROSSINGS, Some(FEATURE_WINDOWS_KEPT)),
                (&RULE_USAGE, Some(Duration::ZERO)),
                (&RULE_CROSSINGS, Some(FEATURE_WINDOWS_KEPT)),
            ],
            interval: kept.interval,
            vacuum: kept.vacuum,
        }
    }
}

/// Starts pruning on this replica, the first round one interval after start-up (replicas
/// started together by a rollout do not all prune and vacuum at once); runs until aborted.
pub fn spawn(pool: PgPool, settings: Plan) -> tokio::task::AbortHandle {
    let period = settings.interval;
    tokio::spawn(async move {
        tokio::time::sleep(period).await;
        db::every(period, "prune rows past their retention", move || {
            let (pool, settings) = (pool.clone(), settings.clone());
            async move { prune(&pool, &settings).await }
        })
        .await
    })
    .abort_handle()
}

/// One round: every table's rows past its window, unless another replica is pruning now.
/// Returns the rows removed per table.
pub async fn prune(pool: &PgPool, settings: &Plan) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
    let removed = db::with_session_lock(pool, LOCK, async |conn| {
        let mut removed = Vec::new();
        for (rule, window) in settings.rules {
            let Some(window) = window else { continue };
            let rows = db::delete_in_chunks(conn, &rule.delete(), window, CHUNK).await?;
            pruned(rule.table, rows);
            if rows > 0 {
                tracing::info!(table = rule.table, rows, "retention: pruned rows past their window");
            }
            removed.push((rule.table, rows));
        }
        if settings.vacuum {
            vacuum(conn).await?;
        }
        Ok(removed)
    })
    .await?;
    Ok(removed.unwrap_or_default())
}

/// The tables whose rows are updated or deleted as usage-gate works (the audit log only grows
/// unless pruned, so it is here too).
const CHURNING: [&str; 18] = [
    "outbox",
    "pending_usage",
    "pending_usage_deltas",
    "billabear_counters",
    "reservations",
    "overrides",
    "customer_decisions",
    "webhook_messages",
    "webhook_attempts",
    "usage_samples",
    "console_sessions",
    "audit_log",
    "webhook_endpoints",
    "feature_usage",
    "billing_periods",
    "feature_limit_crossings",
    "rule_usage",
    "rule_crossings",
];

/// Makes the space of deleted and updated rows reusable, so that tables stay their size where
/// autovacuum is off or behind (measured: with it off, `bench/soak.py`'s outbox tripled on disk in
/// ten minutes while its rows stayed flat). Plain VACUUM: no lock that blocks reads or writes.
async fn vacuum(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    for table in CHURNING {
        // A statement built from the constants above; VACUUM cannot run in a transaction, so
        // it goes by the simple protocol.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {table}"))).execute(&mut *conn).await?;
    }
    Ok(())
}
