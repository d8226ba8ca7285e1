//! Overrides in Postgres: created (superseding the customer's open one), ended and expired,
//! each audited in the transaction that makes it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{NewOverride, Override};
use crate::audit::{self, Actor};
use crate::domain::CustomerId;
use crate::policy::Effect;

/// Sent (by the triggers) at the commit of every change; the payload lists the customers.
pub const NOTIFY_CHANNEL: &str = "usage_gate_overrides";

/// The class of the advisory lock that makes creating a customer's override one at a time
/// (two-key locks never collide with the one-key locks taken elsewhere).
const CREATE_LOCK_CLASS: i32 = 0x7567_6f76; // "ugov"

/// A row of `overrides` as read (with `active` computed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OverrideRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub effect: String,
    pub amount: Option<i64>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: DateTime<Utc>,
    pub active: bool,
    pub ended_at: Option<DateTime<Utc>>,
    pub ended_as: Option<String>,
    pub ended_by: Option<String>,
    pub end_reason: Option<String>,
}

const COLUMNS: &str = "id, customer_id, effect, amount, reason, created_at, created_by, expires_at,
     (ended_at IS NULL AND expires_at > now()) AS active, ended_at, ended_as, ended_by, end_reason";

fn effect_columns(effect: Effect) -> (&'static str, Option<i64>) {
    match effect {
        Effect::Raise(amount) => ("raise", Some(amount)),
        other => (other.as_str(), None),
    }
}

/// Stores the override, ending the customer's open one (`superseded`) in the same transaction;
/// both changes are audited. Returns the new one.
pub async fn create(
    pool: &PgPool,
    customer: CustomerId,
    new: &NewOverride,
    actor: &Actor,
) -> Result<OverrideRow, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2::text))")
        .bind(CREATE_LOCK_CLASS)
        .bind(customer.as_uuid())
        .execute(&mut *tx)
        .await?;
    let id = Uuid::new_v4();
    let superseded: Vec<OverrideRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE overrides SET ended_at = now(), ended_as = 'superseded', ended_by = $2, end_reason = $3
         WHERE customer_id = $1 AND ended_at IS NULL RETURNING {COLUMNS}"
    )))
    .bind(customer.as_uuid())
    .bind(&actor.name)
    .bind(format!("superseded by override {id}"))
    .fetch_all(&mut *tx)
    .await?;
    let (effect, amount) = effect_columns(new.effect);
    let created: OverrideRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO overrides (id, customer_id, effect, amount, reason, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(customer.as_uuid())
    .bind(effect)
    .bind(amount)
    .bind(&new.reason)
    .bind(&actor.name)
    .bind(new.expires_at)
    .fetch_one(&mut *tx)
    .await?;
    for ended in &superseded {
        record(&mut tx, "override.end", ended, actor).await?;
    }
    record(&mut tx, "override.create", &created, actor).await?;
    tx.commit().await?;
    metrics::counter!("usage_gate_overrides_total", "outcome" => "created").increment(1);
    Ok(created)
}

/// Ends the customer's override `id` now; None when it is not in force (unknown, another
/// customer's, ended or expired).
pub async fn end(
    pool: &PgPool,
    customer: CustomerId,
    id: Uuid,
    actor: &Actor,
    end_reason: Option<&str>,
) -> Result<Option<OverrideRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ended: Option<OverrideRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE overrides SET ended_at = now(), ended_as = 'ended', ended_by = $3, end_reason = $4
         WHERE id = $1 AND customer_id = $2 AND ended_at IS NULL AND expires_at > now()
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(customer.as_uuid())
    .bind(&actor.name)
    .bind(end_reason)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(ended) = ended else { return Ok(None) };
    record(&mut tx, "override.end", &ended, actor).await?;
    tx.commit().await?;
    metrics::counter!("usage_gate_overrides_total", "outcome" => "ended").increment(1);
    Ok(Some(ended))
}

/// Closes every open override past its `expires_at`, each audited and told
/// (`customer.override.expired`) once: a replica that finds one another is closing waits, then
/// skips it. Returns what was closed.
pub async fn expire(pool: &PgPool) -> Result<Vec<OverrideRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let expired: Vec<OverrideRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE overrides SET ended_at = now(), ended_as = 'expired', ended_by = 'usage-gate'
         WHERE ended_at IS NULL AND expires_at <= now() RETURNING {COLUMNS}"
    )))
    .fetch_all(&mut *tx)
    .await?;
    if expired.is_empty() {
        return Ok(expired);
    }
    let actor = Actor::usage_gate();
    for ended in &expired {
        record(&mut tx, "override.expire", ended, &actor).await?;
    }
    let ids: Vec<Uuid> = expired.iter().map(|o| o.id).collect();
    sqlx::query(
        "SELECT queue_webhooks('customer.override.expired', customer_id, jsonb_build_object(
                    'customer_id', customer_id,
                    'override', jsonb_build_object('id', id, 'effect', effect, 'amount', amount,
                        'reason', reason, 'created_by', created_by, 'created_at', created_at,
                        'expires_at', expires_at)))
         FROM overrides WHERE id = ANY($1) ORDER BY created_at",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("usage_gate_overrides_total", "outcome" => "expired").increment(expired.len() as u64);
    Ok(expired)
}

async fn record(
    tx: &mut PgConnection,
    action: &str,
    record: &OverrideRow,
    actor: &Actor,
) -> Result<(), sqlx::Error> {
    let entry = actor.entry(
        action,
        Some(CustomerId::from(record.customer_id)),
        record.id.to_string(),
        serde_json::json!({
            "effect": record.effect,
            "amount": record.amount,
            "reason": record.reason,
            "expires_at": record.expires_at,
            "ended_as": record.ended_as,
            "end_reason": record.end_reason,
        }),
    );
    audit::record_in(tx, &entry).await.map(|_| ())
}

/// Newest first: the customer's overrides (all customers' when None), only those in force when
/// `active_only`, at most `limit`.
pub async fn list(
    pool: &PgPool,
    customer: Option<CustomerId>,
    active_only: bool,
    limit: i64,
) -> Result<Vec<OverrideRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM overrides
         WHERE ($1::uuid IS NULL OR customer_id = $1)
           AND (NOT $2 OR (ended_at IS NULL AND expires_at > now()))
         ORDER BY created_at DESC, id
         LIMIT $3"
    )))
    .bind(customer.map(|c| c.as_uuid()))
    .bind(active_only)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// id, customer_id, effect, amount, expires_at.
type OpenRow = (Uuid, Uuid, String, Option<i64>, DateTime<Utc>);

/// The open override per customer: of `customers`, or of every customer with one when None.
pub async fn open_overrides(
    pool: &PgPool,
    customers: Option<&[CustomerId]>,
) -> Result<HashMap<CustomerId, Override>, sqlx::Error> {
    let ids: Option<Vec<Uuid>> = customers.map(|c| c.iter().map(|c| c.as_uuid()).collect());
    let rows: Vec<OpenRow> = sqlx::query_as(
        "SELECT id, customer_id, effect, amount, expires_at FROM overrides
         WHERE ended_at IS NULL AND ($1::uuid[] IS NULL OR customer_id = ANY($1))",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, customer, effect, amount, expires_at)| {
            let effect = match (effect.as_str(), amount) {
                ("allow", _) => Effect::Allow,
                ("block", _) => Effect::Block,
                ("raise", Some(amount)) => Effect::Raise(amount),
                _ => return None,
            };
            Some((
                CustomerId::from(customer),
                Override { id, effect, expires_at_ms: expires_at.timestamp_millis() },
            ))
        })
        .collect())
}
