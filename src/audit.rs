//! The audit log: every admin change (recorded before BillaBear is called, then given its
//! outcome), every webhook, and every decision transition, in Postgres.
//!
//! Records are inserted one at a time under a transaction-scoped advisory lock, so ids are
//! handed out in commit order: a reader paging newest-first by id never skips a record that
//! committed after a newer one. Audit writes are rare (operator actions and transitions), so
//! the lock costs nothing that matters.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::CustomerId;
use crate::policy::Status;

/// Any constant: the advisory lock that serializes audit inserts.
const INSERT_LOCK: i64 = 0x7573_6167_6561_7564; // "usageaud"

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Recorded before BillaBear was asked; stays so only if usage-gate could not record the
    /// answer (the change may or may not have been made).
    Pending,
    Success,
    /// Refused before or by BillaBear: invalid input, unknown customer or limit.
    Rejected,
    /// BillaBear failed or could not be reached.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Success => "success",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// What to record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The API key's name, `billabear` for webhooks, `usage-gate` for its own observations.
    pub actor: String,
    /// e.g. `usage_limit.create`, `usage_limit.delete`, `webhook.customer_disabled`,
    /// `decision.transition`.
    pub action: String,
    pub customer: Option<CustomerId>,
    /// What the action was about besides the customer (a limit id).
    pub target: Option<String>,
    pub outcome: Outcome,
    pub upstream_status: Option<u16>,
    pub request_id: Option<String>,
    pub details: serde_json::Value,
}

/// Inserts one record; returns its id.
pub async fn record(pool: &PgPool, entry: &Entry) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(INSERT_LOCK).execute(&mut *tx).await?;
    let id = sqlx::query_scalar(
        "INSERT INTO audit_log (actor, action, customer_id, target_id, outcome, upstream_status, request_id, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(entry.customer.map(|c| c.as_uuid()))
    .bind(&entry.target)
    .bind(entry.outcome.as_str())
    .bind(entry.upstream_status.map(|s| s as i16))
    .bind(&entry.request_id)
    .bind(&entry.details)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Gives a pending record its outcome; `details` are merged into what it holds.
pub async fn conclude(
    pool: &PgPool,
    id: i64,
    outcome: Outcome,
    upstream_status: Option<u16>,
    target: Option<&str>,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE audit_log SET outcome = $2, upstream_status = $3, target_id = coalesce($4, target_id),
                details = details || $5
         WHERE id = $1",
    )
    .bind(id)
    .bind(outcome.as_str())
    .bind(upstream_status.map(|s| s as i16))
    .bind(target)
    .bind(details)
    .execute(pool)
    .await?;
    Ok(())
}

/// One record as operators see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub action: String,
    pub customer_id: Option<Uuid>,
    pub target_id: Option<String>,
    pub outcome: String,
    pub upstream_status: Option<i16>,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// What to list; every part optional.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub customer: Option<CustomerId>,
    pub action: Option<String>,
    pub actor: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Newest first: up to `limit` records older than the cursor (all when none).
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    cursor: Option<Cursor>,
    limit: i64,
) -> Result<Vec<AuditRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, occurred_at, actor, action, customer_id, target_id, outcome, upstream_status, request_id, details
         FROM audit_log
         WHERE ($1::uuid IS NULL OR customer_id = $1)
           AND ($2::text IS NULL OR action = $2)
           AND ($3::text IS NULL OR actor = $3)
           AND ($4::timestamptz IS NULL OR occurred_at >= $4)
           AND ($5::timestamptz IS NULL OR occurred_at < $5)
           AND ($6::bigint IS NULL OR id < $6)
         ORDER BY id DESC
         LIMIT $7",
    )
    .bind(filter.customer.map(|c| c.as_uuid()))
    .bind(&filter.action)
    .bind(&filter.actor)
    .bind(filter.since)
    .bind(filter.until)
    .bind(cursor.map(|c| c.0))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Where the next page starts: opaque to clients (they pass back what they were given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(i64);

impl Cursor {
    /// The page after the one that ended with this record.
    pub fn after(record_id: i64) -> Self {
        Self(record_id)
    }

    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("audit:{}", self.0))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        text.strip_prefix("audit:")?.parse().ok().filter(|id| *id > 0).map(Self)
    }
}

/// Records decision transitions (`ok`, `warning`, `blocked`) seen when snapshots are fetched,
/// once per transition across replicas. Observing is cheap and never waits: a task writes
/// batches.
#[derive(Clone)]
pub struct Transitions {
    sender: mpsc::Sender<(CustomerId, Status)>,
}

/// How many observations may wait for the writer; beyond it they are dropped (and counted),
/// never blocking a fetch.
const TRANSITION_QUEUE: usize = 10_000;

impl Transitions {
    pub fn start(pool: PgPool) -> Self {
        let (sender, receiver) = mpsc::channel(TRANSITION_QUEUE);
        tokio::spawn(write_transitions(pool, receiver));
        Self { sender }
    }

    /// `before`: the status of the snapshot this replica held (None if it held none); only a
    /// change, or a first sight, goes to Postgres, where the last status seen by any replica
    /// decides whether it is a transition.
    pub fn observe(&self, customer: CustomerId, before: Option<Status>, after: Status) {
        if !is_tracked(after) || before == Some(after) {
            return;
        }
        if self.sender.try_send((customer, after)).is_err() {
            metrics::counter!("usage_gate_audit_transitions_dropped_total").increment(1);
        }
    }
}

/// Statuses between which transitions are audited (`unknown` is not a decision about usage).
fn is_tracked(status: Status) -> bool {
    matches!(status, Status::Ok | Status::Warning | Status::Blocked)
}

async fn write_transitions(pool: PgPool, mut receiver: mpsc::Receiver<(CustomerId, Status)>) {
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, 1000).await > 0 {
        // One row per customer per statement (an upsert may not touch a row twice): the latest.
        let latest: HashMap<CustomerId, Status> = batch.drain(..).collect();
        let (customers, statuses): (Vec<Uuid>, Vec<&str>) =
            latest.iter().map(|(c, s)| (c.as_uuid(), s.as_str())).unzip();
        let mut attempt = 0;
        while let Err(e) = store_transitions(&pool, &customers, &statuses).await {
            attempt += 1;
            if attempt == 3 {
                tracing::warn!(error = %e, customers = customers.len(), "audit: cannot record decision transitions");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
        }
    }
}

/// Upserts the statuses; each one that differs from the stored one is a transition, audited
/// in the same transaction. Two replicas upserting one customer at once: the second waits for
/// the first's row and re-checks `status <>` against it, so the change is audited once. (Not
/// `FOR UPDATE` in `previous`: a row locked by the statement itself is skipped by its upsert.)
async fn store_transitions(pool: &PgPool, customers: &[Uuid], statuses: &[&str]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(INSERT_LOCK).execute(&mut *tx).await?;
    sqlx::query(
        "WITH incoming AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[]) AS t(customer_id, status)),
         previous AS (
             SELECT d.customer_id, d.status FROM customer_decisions d JOIN incoming USING (customer_id)),
         changed AS (
             INSERT INTO customer_decisions (customer_id, status)
             SELECT customer_id, status FROM incoming
             ON CONFLICT (customer_id) DO UPDATE SET status = EXCLUDED.status, changed_at = now()
             WHERE customer_decisions.status <> EXCLUDED.status
             RETURNING customer_id, status)
         INSERT INTO audit_log (actor, action, customer_id, outcome, details)
         SELECT 'usage-gate', 'decision.transition', c.customer_id, 'success',
                jsonb_build_object('from', p.status, 'to', c.status)
         FROM changed c JOIN previous p USING (customer_id)
         ORDER BY c.customer_id",
    )
    .bind(customers)
    .bind(statuses)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_foreign_strings_are_refused() {
        let cursor = Cursor::after(12_345);
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in
            ["", "12345", "not base64!", &URL_SAFE_NO_PAD.encode("audit:-3"), &URL_SAFE_NO_PAD.encode("x:1")]
        {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_usage_decisions_are_tracked() {
        assert!(is_tracked(Status::Ok) && is_tracked(Status::Warning) && is_tracked(Status::Blocked));
        assert!(!is_tracked(Status::Unknown));
    }
}
