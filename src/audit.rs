//! The audit log: every admin change (recorded before BillaBear is called, then given its
//! outcome), every webhook, and every decision transition, in Postgres.
//!
//! Records are inserted one at a time under a transaction-scoped advisory lock, so ids are
//! handed out in commit order: a reader paging newest-first by id never skips a record that
//! committed after a newer one. Audit writes are rare (operator actions and transitions), so
//! the lock costs nothing that matters.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::check::{Decision, Mark};
use crate::domain::CustomerId;
use crate::policy::Status;
use crate::webhooks::EventType;

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
    /// BillaBear's answer never came (timeout, dropped connection) and looking afterwards did
    /// not tell whether the change was made.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Success => "success",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Who makes a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The API key's name, or `usage-gate` for its own work (expiries).
    pub name: String,
    pub request_id: Option<String>,
}

impl Actor {
    /// usage-gate itself.
    pub fn usage_gate() -> Self {
        Self { name: "usage-gate".into(), request_id: None }
    }

    /// A record of `action` on `target` by this actor, succeeded.
    pub fn entry(
        &self,
        action: &str,
        customer: Option<CustomerId>,
        target: String,
        details: serde_json::Value,
    ) -> Entry {
        Entry {
            actor: self.name.clone(),
            action: action.into(),
            customer,
            target: Some(target),
            outcome: Outcome::Success,
            upstream_status: None,
            request_id: self.request_id.clone(),
            details,
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

/// Postgres stores no NUL in `text` or `jsonb`. Audit records quote what callers sent (a
/// webhook's type, a rejected amount), so NUL is replaced rather than letting the record fail.
fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') { text.replace('\0', "\u{FFFD}").into() } else { text.into() }
}

fn storable_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(storable(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(storable_json).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (storable(k).into_owned(), storable_json(v))).collect())
        }
        other => other.clone(),
    }
}

/// Takes the audit insert lock (see the module doc) until the transaction ends.
async fn lock_inserts(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(INSERT_LOCK).execute(&mut *conn).await?;
    Ok(())
}

/// Inserts one record; returns its id.
pub async fn record(pool: &PgPool, entry: &Entry) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = record_in(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(id)
}

/// Inserts one record in the caller's transaction, so it commits with the change it records.
/// The insert lock is taken by the same statement (the id is drawn once it is held) and held
/// until that transaction ends: call it last.
pub async fn record_in(conn: &mut sqlx::PgConnection, entry: &Entry) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH locked AS (SELECT pg_advisory_xact_lock($9))
         INSERT INTO audit_log (actor, action, customer_id, target_id, outcome, upstream_status, request_id, details)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM locked RETURNING id",
    )
    .bind(storable(&entry.actor))
    .bind(storable(&entry.action))
    .bind(entry.customer.map(|c| c.as_uuid()))
    .bind(entry.target.as_deref().map(storable))
    .bind(entry.outcome.as_str())
    .bind(entry.upstream_status.map(|s| s as i16))
    .bind(&entry.request_id)
    .bind(storable_json(&entry.details))
    .bind(INSERT_LOCK)
    .fetch_one(&mut *conn)
    .await
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
    .bind(target.map(storable))
    .bind(storable_json(&details))
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

/// Newest first: up to `limit` records with ids below `before` (all when none).
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    before: Option<i64>,
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
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Records decision transitions (`ok`, `warning`, `blocked`) seen when snapshots are fetched
/// (or pending usage or an override changes a cached customer's decision), once per transition
/// across replicas, and queues the outbound webhook that tells of each in the same transaction.
/// Observing is cheap and never waits: a task writes batches.
#[derive(Clone)]
pub struct Transitions {
    sender: mpsc::Sender<Observation>,
}

/// A customer's status as a snapshot fetched at `at_ms` (Unix ms) decides it, and what its
/// webhook tells if it is a transition.
#[derive(Debug, Clone, PartialEq)]
struct Observation {
    customer: CustomerId,
    status: Status,
    at_ms: u64,
    /// The webhook's event type.
    kind: Option<&'static str>,
    /// The webhook's `data`: the decision.
    data: serde_json::Value,
    /// What the console lists and plots: the projected estimate, its currency, the lowest
    /// DISABLE limit, the reason codes (comma-separated).
    estimate: i64,
    currency: String,
    disable_limit: Option<i64>,
    reasons: String,
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

    /// `before`: the mark of the snapshot this replica held (None if it held none); only a
    /// change (of status, or of the estimate's band), or a first sight, goes to Postgres, where
    /// the newest status seen by any replica decides whether it is a transition. `after`: the
    /// decision now. `at_ms`: when the new snapshot was fetched (or the change seen).
    pub fn observe(&self, customer: CustomerId, before: Option<Mark>, after: &Decision, at_ms: u64) {
        let (Some(mark), Some(estimate)) = (after.mark(), after.estimate) else { return };
        if !is_tracked(mark.status) || before == Some(mark) {
            return;
        }
        let reasons: Vec<&str> = after.reasons.iter().map(|r| r.code()).collect();
        let observation = Observation {
            customer,
            status: after.status,
            at_ms,
            kind: EventType::of_transition(after.status, after.reasons).map(EventType::as_str),
            data: serde_json::to_value(after).unwrap_or_default(),
            estimate: estimate.amount,
            currency: estimate.currency.as_str().to_owned(),
            disable_limit: after.lowest_disable_limit(),
            reasons: reasons.join(","),
        };
        if self.sender.try_send(observation).is_err() {
            metrics::counter!("usage_gate_audit_transitions_dropped_total").increment(1);
        }
    }
}

/// Statuses between which transitions are audited (`unknown` is not a decision about usage).
fn is_tracked(status: Status) -> bool {
    matches!(status, Status::Ok | Status::Warning | Status::Blocked)
}

/// Splits a batch into rounds holding each customer at most once (an upsert may not touch a
/// row twice), keeping each customer's observations in order across rounds, so a quick
/// `blocked` then `ok` is two transitions, not none.
fn rounds(batch: Vec<Observation>) -> Vec<Vec<Observation>> {
    let mut rounds: Vec<Vec<Observation>> = vec![];
    let mut next: HashMap<CustomerId, usize> = HashMap::new();
    for observation in batch {
        let round = next.entry(observation.customer).or_insert(0);
        if *round == rounds.len() {
            rounds.push(vec![]);
        }
        rounds[*round].push(observation);
        *round += 1;
    }
    rounds
}

async fn write_transitions(pool: PgPool, mut receiver: mpsc::Receiver<Observation>) {
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, 1000).await > 0 {
        for round in rounds(std::mem::take(&mut batch)) {
            let mut attempt = 0;
            while let Err(e) = store_transitions(&pool, &round).await {
                attempt += 1;
                if attempt == 3 {
                    tracing::warn!(error = %e, customers = round.len(), "audit: cannot record decision transitions");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}

/// Upserts the observations, each only over an older one; an update that changes the status is
/// a transition, audited, and its webhooks queued, in the same transaction. `previous_status`
/// comes from the row as the update found it (after waiting for another replica's update of
/// it), so two replicas recording one change audit and tell it once.
async fn store_transitions(pool: &PgPool, round: &[Observation]) -> Result<(), sqlx::Error> {
    let customers: Vec<Uuid> = round.iter().map(|o| o.customer.as_uuid()).collect();
    let statuses: Vec<&str> = round.iter().map(|o| o.status.as_str()).collect();
    let observed: Vec<chrono::DateTime<chrono::Utc>> = round
        .iter()
        .map(|o| chrono::DateTime::from_timestamp_millis(o.at_ms as i64).unwrap_or_default())
        .collect();
    let kinds: Vec<Option<&str>> = round.iter().map(|o| o.kind).collect();
    let data: Vec<&serde_json::Value> = round.iter().map(|o| &o.data).collect();
    let estimates: Vec<i64> = round.iter().map(|o| o.estimate).collect();
    let currencies: Vec<&str> = round.iter().map(|o| o.currency.as_str()).collect();
    let disable_limits: Vec<Option<i64>> = round.iter().map(|o| o.disable_limit).collect();
    let reasons: Vec<&str> = round.iter().map(|o| o.reasons.as_str()).collect();
    let mut tx = pool.begin().await?;
    lock_inserts(&mut tx).await?;
    sqlx::query(
        "WITH seen AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::jsonb[],
                                  $6::bigint[], $7::text[], $8::bigint[], $9::text[])
                 AS s (customer_id, status, observed_at, kind, data, estimate, currency, disable_limit, reasons)),
         sampled AS (
             INSERT INTO usage_samples (customer_id, observed_at, status, estimate, currency, disable_limit)
             SELECT customer_id, observed_at, status, estimate, currency, disable_limit FROM seen
             ON CONFLICT DO NOTHING),
         changed AS (
             INSERT INTO customer_decisions (customer_id, status, observed_at, estimate, currency, disable_limit, reasons)
             SELECT customer_id, status, observed_at, estimate, currency, disable_limit,
                    string_to_array(reasons, ',')
             FROM seen
             ON CONFLICT (customer_id) DO UPDATE
                 SET previous_status = customer_decisions.status,
                     status = EXCLUDED.status,
                     observed_at = EXCLUDED.observed_at,
                     estimate = EXCLUDED.estimate,
                     currency = EXCLUDED.currency,
                     disable_limit = EXCLUDED.disable_limit,
                     reasons = EXCLUDED.reasons,
                     changed_at = CASE WHEN customer_decisions.status <> EXCLUDED.status
                                       THEN now() ELSE customer_decisions.changed_at END
                 WHERE customer_decisions.observed_at < EXCLUDED.observed_at
             RETURNING customer_id, previous_status, status),
         transitions AS (
             SELECT c.customer_id, c.previous_status, c.status, s.kind, s.data
             FROM changed c JOIN seen s USING (customer_id)
             WHERE c.previous_status IS NOT NULL AND c.previous_status <> c.status),
         audited AS (
             INSERT INTO audit_log (actor, action, customer_id, outcome, details)
             SELECT 'usage-gate', 'decision.transition', customer_id, 'success',
                    jsonb_build_object('from', previous_status, 'to', status)
             FROM transitions ORDER BY customer_id
             RETURNING 1),
         queued AS (
             SELECT queue_webhooks(kind, customer_id, data || jsonb_build_object('previous_status', previous_status)) AS n
             FROM transitions WHERE kind IS NOT NULL)
         SELECT (SELECT count(*) FROM audited), (SELECT coalesce(sum(n), 0) FROM queued)",
    )
    .bind(&customers)
    .bind(&statuses)
    .bind(&observed)
    .bind(&kinds)
    .bind(&data)
    .bind(&estimates)
    .bind(&currencies)
    .bind(&disable_limits)
    .bind(&reasons)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_each_customers_observations_in_order_across_rounds() {
        let (a, b) = (CustomerId::new_v4(), CustomerId::new_v4());
        let seen = |customer, status, at_ms| Observation {
            customer,
            status,
            at_ms,
            kind: None,
            data: serde_json::Value::Null,
            estimate: 0,
            currency: String::new(),
            disable_limit: None,
            reasons: String::new(),
        };
        let batch = vec![
            seen(a, Status::Blocked, 1),
            seen(b, Status::Warning, 2),
            seen(a, Status::Ok, 3),
            seen(a, Status::Blocked, 4),
        ];
        assert_eq!(
            rounds(batch),
            [
                vec![seen(a, Status::Blocked, 1), seen(b, Status::Warning, 2)],
                vec![seen(a, Status::Ok, 3)],
                vec![seen(a, Status::Blocked, 4)],
            ]
        );
    }

    #[test]
    fn nul_is_replaced_wherever_a_record_quotes_input() {
        let details = serde_json::json!({"type": "a\u{0}b", "k\u{0}": [1, "\u{0}"]});
        assert_eq!(
            storable_json(&details),
            serde_json::json!({"type": "a\u{FFFD}b", "k\u{FFFD}": [1, "\u{FFFD}"]})
        );
        assert_eq!(storable("plain"), "plain");
    }

    #[test]
    fn only_usage_decisions_are_tracked() {
        assert!(is_tracked(Status::Ok) && is_tracked(Status::Warning) && is_tracked(Status::Blocked));
        assert!(!is_tracked(Status::Unknown));
    }
}
