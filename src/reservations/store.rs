//! Reservations in Postgres: granted under the customer's lock, committed, released and
//! expired, each audited in the transaction that makes it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Hold;
use crate::audit::{self, Actor};
use crate::domain::CustomerId;
use crate::domain::Target;
use crate::enforce::{Gate, Judged, store as enforce};
use crate::outbox::IncomingEvent;
use crate::outbox::store::{self as outbox, Accepted};
use crate::policy::PolicySettings;

/// Sent (by the triggers) at the commit of every change; the payload lists the customers.
pub const NOTIFY_CHANNEL: &str = "usage_gate_reservations";

/// One reservation as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Reservation {
    pub id: Uuid,
    pub customer_id: Uuid,
    /// Minor units set aside.
    pub amount: i64,
    /// The event's code and value it was priced from, if it was asked for that way.
    pub code: Option<String>,
    pub value: Option<f64>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: DateTime<Utc>,
    /// The API key's name.
    pub created_by: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub closed_at: Option<DateTime<Utc>>,
    /// `committed`, `released` or `expired`; null while open.
    pub closed_as: Option<String>,
}

/// What a hold is asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// Minor units.
    Amount(i64),
    /// What an event with this code and value would cost now.
    Event { code: String, value: f64 },
}

/// How a request for a hold was judged: granted (stored) or refused (nothing stored).
#[derive(Debug)]
pub struct Created {
    pub reservation: Option<Reservation>,
    pub judged: Judged,
}

const COLUMNS: &str =
    "id, customer_id, amount, code, value, created_at, expires_at, created_by, closed_at, closed_as";

/// Grants a hold for the gate's customer if it fits (judged under the customer's lock, with
/// its pending usage and open holds), expiring `ttl` from now.
pub async fn create(
    pool: &PgPool,
    gate: &Gate,
    ask: &Ask,
    ttl: std::time::Duration,
    actor: &Actor,
    policy: &PolicySettings,
) -> Result<Created, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut ledger = enforce::lock_and_load(&mut tx, &[gate]).await?;
    let amount = match ask {
        Ask::Amount(amount) => *amount,
        Ask::Event { code, value } => ledger.price_event(gate, Target::Customer(gate.customer), code, *value),
    };
    let judged = ledger.judge_hold(gate, amount, policy);
    if !judged.admitted {
        metrics::counter!("usage_gate_reservations_total", "outcome" => "refused").increment(1);
        return Ok(Created { reservation: None, judged });
    }
    let reservation = insert(&mut tx, gate.customer, amount, ask, ttl, actor).await?;
    tx.commit().await?;
    Ok(Created { reservation: Some(reservation), judged })
}

/// Stores a hold without judging it (the policy's fallback allowed it).
pub async fn grant(
    pool: &PgPool,
    customer: CustomerId,
    amount: i64,
    ask: &Ask,
    ttl: std::time::Duration,
    actor: &Actor,
) -> Result<Reservation, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let reservation = insert(&mut tx, customer, amount, ask, ttl, actor).await?;
    tx.commit().await?;
    Ok(reservation)
}

/// Stores a hold (and its audit record) in the caller's transaction.
async fn insert(
    tx: &mut PgConnection,
    customer: CustomerId,
    amount: i64,
    ask: &Ask,
    ttl: std::time::Duration,
    actor: &Actor,
) -> Result<Reservation, sqlx::Error> {
    let (code, value) = match ask {
        Ask::Amount(_) => (None, None),
        Ask::Event { code, value } => (Some(code.as_str()), Some(*value)),
    };
    let reservation: Reservation = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO reservations (id, customer_id, amount, code, value, expires_at, created_by)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7)
         RETURNING {COLUMNS}"
    )))
    .bind(Uuid::new_v4())
    .bind(customer.as_uuid())
    .bind(amount)
    .bind(code)
    .bind(value)
    .bind(ttl.as_secs_f64())
    .bind(&actor.name)
    .fetch_one(&mut *tx)
    .await?;
    record(
        tx,
        "reservation.create",
        &reservation,
        actor,
        serde_json::json!({
            "amount": amount, "code": code, "value": value, "expires_at": reservation.expires_at,
        }),
    )
    .await?;
    metrics::counter!("usage_gate_reservations_total", "outcome" => "granted").increment(1);
    Ok(reservation)
}

async fn record(
    tx: &mut PgConnection,
    action: &str,
    reservation: &Reservation,
    actor: &Actor,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    let entry = actor.entry(
        action,
        Some(CustomerId::from(reservation.customer_id)),
        reservation.id.to_string(),
        details,
    );
    audit::record_in(tx, &entry).await.map(|_| ())
}

/// The reservation, if there is one with this id.
pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<Reservation>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM reservations WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// What became of a commit.
#[derive(Debug)]
pub enum Committed {
    /// The events were stored (or found stored) and the hold closed; `expired`: it had expired.
    Done {
        reservation: Reservation,
        outcomes: Vec<Accepted>,
        expired: bool,
    },
    NotFound,
    /// Released before (nothing stored).
    Released,
    /// Committed before (nothing stored this time).
    AlreadyCommitted,
}

/// Stores the real usage and closes the hold, in one transaction. The work was done, so the
/// events are never judged against the limit; a hold that expired meanwhile is committed all
/// the same (its `expired` record stays in the audit log).
pub async fn commit(
    pool: &PgPool,
    id: Uuid,
    events: &[IncomingEvent],
    actor: &Actor,
) -> Result<Committed, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<(Reservation, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, expires_at <= now() AS lapsed FROM reservations WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .map(|row: ReservationAnd| (row.reservation, row.lapsed));
    let Some((reservation, lapsed)) = found else { return Ok(Committed::NotFound) };
    match reservation.closed_as.as_deref() {
        Some("committed") => return Ok(Committed::AlreadyCommitted),
        Some("released") => return Ok(Committed::Released),
        _ => {}
    }
    let expired = lapsed || reservation.closed_as.as_deref() == Some("expired");
    let outcomes = outbox::accept(&mut tx, events).await?;
    let reservation: Reservation = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE reservations SET closed_at = now(), closed_as = 'committed' WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let stored = outcomes.iter().filter(|o| **o == Accepted::New).count();
    record(
        &mut tx,
        "reservation.commit",
        &reservation,
        actor,
        serde_json::json!({
            "amount": reservation.amount, "events": events.len(), "stored": stored, "expired": expired,
        }),
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("usage_gate_reservations_total", "outcome" => "committed").increment(1);
    Ok(Committed::Done { reservation, outcomes, expired })
}

/// A reservation and whether it is past its `expires_at`.
#[derive(sqlx::FromRow)]
struct ReservationAnd {
    #[sqlx(flatten)]
    reservation: Reservation,
    lapsed: bool,
}

/// Releases an open hold; None when there is none with this id (unknown, or closed before).
pub async fn release(pool: &PgPool, id: Uuid, actor: &Actor) -> Result<Option<Reservation>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let released: Option<Reservation> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE reservations SET closed_at = now(), closed_as = 'released'
         WHERE id = $1 AND closed_at IS NULL RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(reservation) = released else { return Ok(None) };
    record(
        &mut tx,
        "reservation.release",
        &reservation,
        actor,
        serde_json::json!({"amount": reservation.amount}),
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("usage_gate_reservations_total", "outcome" => "released").increment(1);
    Ok(Some(reservation))
}

/// Closes every open hold past its `expires_at`, each audited once (a replica that finds one
/// another is closing waits, then skips it). Returns how many.
pub async fn expire(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let expired: Vec<Reservation> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE reservations SET closed_at = now(), closed_as = 'expired'
         WHERE closed_at IS NULL AND expires_at <= now() RETURNING {COLUMNS}"
    )))
    .fetch_all(&mut *tx)
    .await?;
    if expired.is_empty() {
        return Ok(0);
    }
    let actor = Actor::usage_gate();
    for reservation in &expired {
        record(
            &mut tx,
            "reservation.expire",
            reservation,
            &actor,
            serde_json::json!({
                "amount": reservation.amount, "expires_at": reservation.expires_at,
            }),
        )
        .await?;
    }
    tx.commit().await?;
    metrics::counter!("usage_gate_reservations_total", "outcome" => "expired")
        .increment(expired.len() as u64);
    Ok(expired.len())
}

/// The customer's open holds, newest first.
pub async fn list_open(pool: &PgPool, customer: CustomerId) -> Result<Vec<Reservation>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM reservations
         WHERE customer_id = $1 AND closed_at IS NULL AND expires_at > now()
         ORDER BY created_at DESC, id"
    )))
    .bind(customer.as_uuid())
    .fetch_all(pool)
    .await
}

/// Open holds per customer: of `customers`, or of every customer with any when None.
pub async fn open_holds(
    pool: &PgPool,
    customers: Option<&[CustomerId]>,
) -> Result<HashMap<CustomerId, Box<[Hold]>>, sqlx::Error> {
    let rows: Vec<(Uuid, i64, DateTime<Utc>)> = match customers {
        Some(customers) => {
            let ids: Vec<Uuid> = customers.iter().map(|c| c.as_uuid()).collect();
            sqlx::query_as(
                "SELECT customer_id, amount, expires_at FROM reservations
                 WHERE customer_id = ANY($1) AND closed_at IS NULL",
            )
            .bind(ids)
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query_as("SELECT customer_id, amount, expires_at FROM reservations WHERE closed_at IS NULL")
                .fetch_all(pool)
                .await?
        }
    };
    let mut holds: HashMap<CustomerId, Vec<Hold>> = HashMap::new();
    for (customer, amount, expires_at) in rows {
        holds
            .entry(CustomerId::from(customer))
            .or_default()
            .push(Hold { amount, expires_at_ms: expires_at.timestamp_millis() });
    }
    Ok(holds.into_iter().map(|(customer, holds)| (customer, holds.into_boxed_slice())).collect())
}
