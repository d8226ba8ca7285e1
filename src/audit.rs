//! The audit log: every admin change (recorded before BillaBear is called, then given its
//! outcome), every webhook, and every decision transition (`transitions` writes those), in
//! Postgres.
//!
//! Records are inserted under a transaction-scoped advisory lock, so ids are handed out in
//! commit order: a reader paging newest-first by id never skips a record that committed after a
//! newer one. Most writes are rare (operator actions, transitions); the busy ones, holds and
//! their commits, come in group commits that insert all their records with one statement
//! ([`record_all_in`]), so the lock is taken once per group, not once per hold.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::CustomerId;

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
pub(crate) async fn lock_inserts(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(INSERT_LOCK).execute(&mut *conn).await?;
    Ok(())
}

/// The audit log's one door for what is not part of another change's transaction: recording
/// on its own, concluding, listing. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    pool: PgPool,
}

impl Audit {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Inserts one record; returns its id.
    pub async fn record(&self, entry: &Entry) -> Result<i64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let id = record_in(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Gives a pending record its outcome; `details` are merged into what it holds.
    pub async fn conclude(
        &self,
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Newest first: up to `limit` records with ids below `before` (all when none).
    pub async fn list(
        &self,
        filter: &Filter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, sqlx::Error> {
        let rows: Vec<AuditRow> = sqlx::query_as(
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
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(AuditRecord::from).collect())
    }
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

/// Inserts records in the caller's transaction with one statement, in order, taking the insert
/// lock as [`record_in`] does (call it last): a group commit of many changes holds the lock for
/// one round trip and the commit, not one per record.
pub async fn record_all_in(conn: &mut sqlx::PgConnection, entries: &[Entry]) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Entry) -> Option<String>| entries.iter().map(f).collect::<Vec<_>>();
    let actors = column(|e| Some(storable(&e.actor).into_owned()));
    let actions = column(|e| Some(storable(&e.action).into_owned()));
    let targets = column(|e| e.target.as_deref().map(|t| storable(t).into_owned()));
    let outcomes = column(|e| Some(e.outcome.as_str().to_owned()));
    let request_ids = column(|e| e.request_id.clone());
    let customers: Vec<Option<Uuid>> = entries.iter().map(|e| e.customer.map(|c| c.as_uuid())).collect();
    let statuses: Vec<Option<i16>> = entries.iter().map(|e| e.upstream_status.map(|s| s as i16)).collect();
    let details: Vec<serde_json::Value> = entries.iter().map(|e| storable_json(&e.details)).collect();
    sqlx::query(
        "WITH locked AS (SELECT pg_advisory_xact_lock($9))
         INSERT INTO audit_log (actor, action, customer_id, target_id, outcome, upstream_status, request_id, details)
         SELECT r.actor, r.action, r.customer_id, r.target_id, r.outcome, r.upstream_status, r.request_id, r.details
         FROM locked, unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::int2[], $7::text[], $8::jsonb[])
              WITH ORDINALITY AS r(actor, action, customer_id, target_id, outcome, upstream_status, request_id, details, n)
         ORDER BY r.n",
    )
    .bind(actors)
    .bind(actions)
    .bind(customers)
    .bind(targets)
    .bind(outcomes)
    .bind(statuses)
    .bind(request_ids)
    .bind(details)
    .bind(INSERT_LOCK)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A row of `audit_log` as read.
#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    occurred_at: chrono::DateTime<chrono::Utc>,
    actor: String,
    action: String,
    customer_id: Option<Uuid>,
    target_id: Option<String>,
    outcome: String,
    upstream_status: Option<i16>,
    request_id: Option<String>,
    details: serde_json::Value,
}

crate::domain::moved_fields!(AuditRow => AuditRecord {
    id, occurred_at, actor, action, customer_id, target_id, outcome, upstream_status, request_id,
    details
});

/// One record as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_wherever_a_record_quotes_input() {
        let details = serde_json::json!({"type": "a\u{0}b", "k\u{0}": [1, "\u{0}"]});
        assert_eq!(
            storable_json(&details),
            serde_json::json!({"type": "a\u{FFFD}b", "k\u{FFFD}": [1, "\u{FFFD}"]})
        );
        assert_eq!(storable("plain"), "plain");
    }
}
