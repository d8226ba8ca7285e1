//! The event outbox: usage events are stored in Postgres before they are acknowledged, then
//! forwarded to BillaBear with retries. The outbox row is also the dedupe record (`event_id` is
//! unique), so a write that fails leaves nothing behind and a retry is never swallowed.
//!
//! `event` parses what callers send; `store` holds the table's operations; `forwarder` delivers
//! to BillaBear on the schedule `retry` sets; [`Outbox`] lists them and puts dead ones back for
//! an operator. Events come in through `admission`; the HTTP routes are in `routes::events` and
//! `routes::outbox`.

pub mod event;
pub mod forwarder;
pub mod retry;
pub mod store;

pub use event::IncomingEvent;
pub use store::Accepted;

use std::time::Duration;

use sqlx::PgPool;
use store::OutboxRow;
use uuid::Uuid;

use crate::audit::Actor;
use crate::db::StorageError;
use crate::domain::{CustomerId, SubscriptionId};

/// Why dead events were not put back in the queue.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no dead event with id {0}")]
    NotDead(i64),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for RetryError {
    fn from(e: sqlx::Error) -> Self {
        RetryError::Storage(e.into())
    }
}

/// Counts by status and the age of the oldest pending event.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
    /// Seconds since the oldest pending event was accepted; 0 when none is pending.
    pub oldest_pending_age_seconds: f64,
}

/// An outbox row as operators see it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct OutboxEvent {
    pub id: i64,
    pub event_id: String,
    pub subscription_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub code: String,
    pub value: f64,
    pub properties: serde_json::Value,
    /// pending, delivered or dead.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: chrono::DateTime<chrono::Utc>,
    pub last_error: Option<String>,
    pub upstream_status: Option<i16>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub delivered_at: Option<chrono::DateTime<chrono::Utc>>,
}

crate::domain::moved_fields!(OutboxRow => OutboxEvent {
    id, event_id, subscription_id, customer_id, code, value, properties, status, attempts,
    next_attempt_at, last_error, upstream_status, received_at, delivered_at
});

/// A customer's events not yet delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undelivered {
    pub pending: i64,
    pub dead: i64,
}

/// The outbox for operators: listing, counting, and putting dead events back. (Events come in
/// through `admission`, and go out through `forwarder`.) Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    pool: PgPool,
}

impl Outbox {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Up to `limit` events in id order after `after` (keyset pagination), filtered.
    pub async fn list(
        &self,
        status: Option<&str>,
        customer: Option<CustomerId>,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        let rows = store::list(&self.pool, status, customer.map(|c| c.as_uuid()), after, limit).await?;
        Ok(rows.into_iter().map(OutboxEvent::from).collect())
    }

    /// A customer's undelivered events (pending and dead), oldest first: those sent with
    /// `customer`, and those sent with one of its `subscriptions`.
    pub async fn undelivered_of(
        &self,
        customer: CustomerId,
        subscriptions: &[SubscriptionId],
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        let rows = store::undelivered_of(&self.pool, customer, subscriptions, limit).await?;
        Ok(rows.into_iter().map(OutboxEvent::from).collect())
    }

    /// How many of those [`Outbox::undelivered_of`] lists there are.
    pub async fn undelivered_counts(
        &self,
        customer: CustomerId,
        subscriptions: &[SubscriptionId],
    ) -> Result<Undelivered, StorageError> {
        let (pending, dead) = store::undelivered_counts(&self.pool, customer, subscriptions).await?;
        Ok(Undelivered { pending, dead })
    }

    /// The customer id and subscription id of events delivered within `within` (at most
    /// `limit` pairs).
    pub async fn delivered_within(
        &self,
        within: Duration,
        limit: i64,
    ) -> Result<Vec<(Option<Uuid>, Option<Uuid>)>, StorageError> {
        Ok(store::delivered_within(&self.pool, within, limit).await?)
    }

    /// The mean seconds from acceptance to delivery over the last five minutes, if any.
    pub async fn delivery_lag(&self) -> Result<Option<f64>, StorageError> {
        Ok(store::delivery_lag(&self.pool).await?)
    }

    pub async fn stats(&self) -> Result<Stats, StorageError> {
        Ok(store::stats(&self.pool).await?)
    }

    /// Puts dead events back in the queue for `actor` (the API and the console): the one with
    /// outbox id `id`, or every one (of `customer`'s). Audited as `outbox.retry` with the
    /// change. Naming one that is not dead is an error.
    pub async fn retry_dead(
        &self,
        actor: &Actor,
        id: Option<i64>,
        customer: Option<CustomerId>,
    ) -> Result<u64, RetryError> {
        match (store::retry_dead(&self.pool, id, customer, actor).await?, id) {
            (0, Some(id)) => Err(RetryError::NotDead(id)),
            (retried, _) => Ok(retried),
        }
    }
}
