//! Outbound webhooks in Postgres: endpoints (each change audited), the messages queued for
//! them (by `queue_webhooks`, in the transaction of the change they tell of), their delivery
//! claims and every attempt.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::Attempted;
use super::{EndpointCounts, NewEndpoint};
use crate::audit::{self, Actor};
use crate::seal::{SealError, Sealer};

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// A row of `webhook_endpoints` as read (never its secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRow {
    pub id: Uuid,
    pub url: String,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
}

const ENDPOINT_COLUMNS: &str = "id, url, event_types, description, created_at, created_by,
     CASE WHEN previous_secret_until > now() THEN previous_secret_until END AS previous_secret_until,
     disabled_at, disabled_reason";

fn endpoint_entry(actor: &Actor, action: &str, endpoint: &EndpointRow) -> audit::Entry {
    actor.entry(
        action,
        None,
        endpoint.id.to_string(),
        serde_json::json!({"url": endpoint.url, "event_types": endpoint.event_types}),
    )
}

/// Stores the endpoint with its `secret` (a [`super::new_secret`]), sealed by `sealer`.
pub async fn create(
    pool: &PgPool,
    sealer: &Sealer,
    new: &NewEndpoint,
    secret: &str,
    actor: &Actor,
) -> Result<EndpointRow, sqlx::Error> {
    let types: Option<Vec<&str>> = new.event_types.as_ref().map(|t| t.iter().map(|t| t.as_str()).collect());
    let id = Uuid::new_v4();
    let mut tx = pool.begin().await?;
    let endpoint: EndpointRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhook_endpoints (id, url, event_types, description, secret, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(id)
    .bind(&new.url)
    .bind(types)
    .bind(&new.description)
    .bind(sealer.seal(id, secret))
    .bind(&actor.name)
    .fetch_one(&mut *tx)
    .await?;
    audit::record_in(&mut tx, &endpoint_entry(actor, "webhook_endpoint.create", &endpoint)).await?;
    tx.commit().await?;
    Ok(endpoint)
}

/// Every endpoint, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"
    )))
    .fetch_all(pool)
    .await
}

/// How many endpoints are enabled and how many disabled (for `/metrics`).
pub async fn endpoint_counts(pool: &PgPool) -> Result<EndpointCounts, sqlx::Error> {
    let (enabled, disabled): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE disabled_at IS NULL), count(*) FILTER (WHERE disabled_at IS NOT NULL)
         FROM webhook_endpoints",
    )
    .fetch_one(pool)
    .await?;
    Ok(EndpointCounts { enabled, disabled })
}

pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Changes one endpoint with `set` (an SQL assignment list; `$2` is bound to `value`) and audits
/// it as `action`; None when there is no such endpoint.
async fn change(
    pool: &PgPool,
    id: Uuid,
    set: &'static str,
    value: Option<String>,
    action: &str,
    actor: &Actor,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let changed: Option<EndpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_endpoints SET {set} WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(id)
    .bind(value)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(endpoint) = changed else { return Ok(None) };
    audit::record_in(&mut tx, &endpoint_entry(actor, action, &endpoint)).await?;
    tx.commit().await?;
    Ok(Some(endpoint))
}

/// Gives the endpoint a new `secret` (sealed by `sealer`); the old one keeps signing beside it
/// for [`ROTATION_OVERLAP`]. None when there is no such endpoint.
pub async fn rotate(
    pool: &PgPool,
    sealer: &Sealer,
    id: Uuid,
    secret: &str,
    actor: &Actor,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    let set = "previous_secret = secret, previous_secret_until = now() + interval '24 hours', secret = $2";
    change(pool, id, set, Some(sealer.seal(id, secret)), "webhook_endpoint.rotate_secret", actor).await
}

#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error(transparent)]
    Storage(#[from] sqlx::Error),
    #[error("webhook endpoint {0}'s signing secret cannot be read: {1}")]
    Key(Uuid, SealError),
}

/// Seals again every endpoint secret stored plain while a key is set, or sealed under the
/// previous key; returns how many endpoints changed. Each row is written only if it still
/// holds what was read (a replica starting beside this one, or a rotation meanwhile, wins).
pub async fn reseal(pool: &PgPool, sealer: &Sealer) -> Result<u64, ResealError> {
    let rows: Vec<(Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT id, secret, previous_secret FROM webhook_endpoints").fetch_all(pool).await?;
    let mut changed = 0;
    for (id, secret, previous) in rows {
        let open = |stored: &str| sealer.open(id, stored).map_err(|e| ResealError::Key(id, e));
        // Every stored value must open, stale or not: one that cannot would fail its deliveries.
        let (plain, previous_plain) = (open(&secret)?, previous.as_deref().map(open).transpose()?);
        if !sealer.stale(&secret) && !previous.as_deref().is_some_and(|p| sealer.stale(p)) {
            continue;
        }
        let result = sqlx::query(
            "UPDATE webhook_endpoints SET secret = $2, previous_secret = $3
             WHERE id = $1 AND secret = $4 AND previous_secret IS NOT DISTINCT FROM $5",
        )
        .bind(id)
        .bind(sealer.seal(id, &plain))
        .bind(previous_plain.map(|p| sealer.seal(id, &p)))
        .bind(&secret)
        .bind(&previous)
        .execute(pool)
        .await?;
        changed += result.rows_affected();
    }
    Ok(changed)
}

/// Sends to a disabled endpoint again (its pending messages too).
pub async fn enable(pool: &PgPool, id: Uuid, actor: &Actor) -> Result<Option<EndpointRow>, sqlx::Error> {
    let set = "disabled_at = NULL, disabled_reason = $2";
    change(pool, id, set, None, "webhook_endpoint.enable", actor).await
}

/// Deletes the endpoint and its messages; false when there is no such endpoint.
pub async fn delete(pool: &PgPool, id: Uuid, actor: &Actor) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let deleted: Option<EndpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM webhook_endpoints WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(endpoint) = deleted else { return Ok(false) };
    audit::record_in(&mut tx, &endpoint_entry(actor, "webhook_endpoint.delete", &endpoint)).await?;
    tx.commit().await?;
    Ok(true)
}

/// A row of `webhook_messages` with its attempts (a JSON list built by the query).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: String,
    pub event_type: String,
    pub customer_id: Option<Uuid>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub payload: serde_json::Value,
    pub attempts: serde_json::Value,
}

/// The endpoint's messages, newest first, of one status when given.
pub async fn messages(
    pool: &PgPool,
    endpoint: Uuid,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.id, m.event_type, m.customer_id, m.status, m.created_at,
                CASE WHEN m.status = 'pending' THEN m.next_attempt_at END AS next_attempt_at,
                m.delivered_at, m.body::jsonb AS payload,
                (SELECT coalesce(jsonb_agg(jsonb_build_object(
                            'attempted_at', a.attempted_at, 'status_code', a.status_code,
                            'error', a.error, 'duration_ms', a.duration_ms) ORDER BY a.id), '[]'::jsonb)
                 FROM webhook_attempts a WHERE a.message_id = m.id) AS attempts
         FROM webhook_messages m
         WHERE m.endpoint_id = $1 AND ($2::text IS NULL OR m.status = $2)
         ORDER BY m.created_at DESC, m.id
         LIMIT $3",
    )
    .bind(endpoint)
    .bind(status)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Queues the message again, due now, with a fresh schedule (same `webhook-id`); false when the
/// endpoint has no such message.
pub async fn resend(
    pool: &PgPool,
    endpoint: Uuid,
    message: &str,
    actor: &Actor,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE webhook_messages SET status = 'pending', attempts = 0, next_attempt_at = now(), delivered_at = NULL
         WHERE id = $1 AND endpoint_id = $2",
    )
    .bind(message)
    .bind(endpoint)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    let entry = actor.entry(
        "webhook_message.resend",
        None,
        message.to_owned(),
        serde_json::json!({"endpoint_id": endpoint}),
    );
    audit::record_in(&mut tx, &entry).await?;
    tx.commit().await?;
    Ok(true)
}

/// A message claimed for one attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub body: String,
    /// Attempts made, this one included (fences the outcome: see [`finish`]).
    pub attempts: i32,
    pub endpoint_id: Uuid,
    pub url: String,
    pub secret: String,
    /// The rotated-out secret, while it still signs.
    pub previous_secret: Option<String>,
}

/// Claims up to `limit` due messages of enabled endpoints, oldest due first, skipping those
/// another replica is claiming: each is due again only after `lease` (so if this replica dies
/// mid-attempt, another sends it then). At most `per_endpoint` attempts go to one endpoint at
/// once on this replica: `under_way` lists the endpoints with attempts under way and how many.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
    per_endpoint: i64,
    under_way: &[(Uuid, i64)],
) -> Result<Vec<Claimed>, sqlx::Error> {
    let (endpoints, counts): (Vec<Uuid>, Vec<i64>) = under_way.iter().copied().unzip();
    // The window function picks each endpoint's oldest due messages up to its room; the rows
    // are then locked apart (FOR UPDATE cannot go with a window function).
    sqlx::query_as(
        "WITH busy AS (SELECT * FROM unnest($4::uuid[], $5::bigint[]) AS b(endpoint_id, n)),
         candidates AS (
             SELECT id FROM (
                 SELECT m.id, m.next_attempt_at, m.endpoint_id,
                        row_number() OVER (PARTITION BY m.endpoint_id ORDER BY m.next_attempt_at) AS nth
                 FROM webhook_messages m JOIN webhook_endpoints e ON e.id = m.endpoint_id
                 WHERE m.status = 'pending' AND m.next_attempt_at <= now() AND e.disabled_at IS NULL) ranked
             LEFT JOIN busy USING (endpoint_id)
             WHERE nth <= $3 - coalesce(busy.n, 0)
             ORDER BY next_attempt_at
             LIMIT $1)
         UPDATE webhook_messages m
         SET attempts = m.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
         FROM (SELECT m.id, m.endpoint_id, e.url, e.secret,
                      CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END AS previous_secret
               FROM webhook_messages m JOIN webhook_endpoints e ON e.id = m.endpoint_id
               WHERE m.id IN (SELECT id FROM candidates) AND m.status = 'pending' AND m.next_attempt_at <= now()
               FOR UPDATE OF m SKIP LOCKED) due
         WHERE m.id = due.id
         RETURNING m.id, m.body, m.attempts, due.endpoint_id, due.url, due.secret, due.previous_secret",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(per_endpoint)
    .bind(&endpoints)
    .bind(&counts)
    .fetch_all(pool)
    .await
}

/// What one attempt got.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

/// Records the attempt and what follows from it: delivered; failed for good (the schedule is
/// spent: `retry_after` None) ; due again after `retry_after`; or, on 410, the endpoint
/// disabled. Fenced by the claim's attempt count: if the lease ran out and another replica
/// claimed the message since, only the attempt is recorded (and not even that if the endpoint
/// was deleted meanwhile).
pub async fn finish(
    pool: &PgPool,
    claimed: &Claimed,
    attempt: &Attempt,
    outcome: Attempted,
    retry_after: Option<Duration>,
) -> Result<(), sqlx::Error> {
    let (status, gone) = match (outcome, retry_after) {
        (Attempted::Delivered, _) => ("delivered", None),
        (Attempted::Gone, _) => ("failed", Some("the receiver answered 410 Gone")),
        (Attempted::Failed, Some(_)) => ("pending", None),
        (Attempted::Failed, None) => ("failed", None),
    };
    sqlx::query(
        "WITH attempt AS (
             INSERT INTO webhook_attempts (message_id, status_code, error, duration_ms)
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM webhook_messages WHERE id = $1)),
         message AS (
             UPDATE webhook_messages
             SET status = $5,
                 next_attempt_at = now() + make_interval(secs => coalesce($6, 0)),
                 delivered_at = CASE WHEN $5 = 'delivered' THEN now() END
             WHERE id = $1 AND attempts = $7 AND status = 'pending'
             RETURNING endpoint_id)
         UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = $8
         WHERE $8::text IS NOT NULL AND id IN (SELECT endpoint_id FROM message) AND disabled_at IS NULL",
    )
    .bind(&claimed.id)
    .bind(attempt.status_code.map(|s| s as i16))
    .bind(&attempt.error)
    .bind(i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX))
    .bind(status)
    .bind(retry_after.map(|d| d.as_secs_f64()))
    .bind(claimed.attempts)
    .bind(gone)
    .execute(pool)
    .await?;
    Ok(())
}

/// Messages waiting to be delivered, and how long the oldest has waited (seconds).
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at))::float8, 0)
         FROM webhook_messages WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await
}
