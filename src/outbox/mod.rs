//! The event outbox: usage events are stored in Postgres before they are acknowledged, then
//! forwarded to BillaBear with retries. The outbox row is also the dedupe record (`event_id` is
//! unique), so a write that fails leaves nothing behind and a retry is never swallowed.
//!
//! `event` parses what callers send; `store` holds the table's operations; `forwarder` delivers
//! to BillaBear on the schedule `retry` sets; [`retry_dead`] puts dead events back for an
//! operator. Events come in through `admission`; the HTTP routes are in `routes::events` and
//! `routes::outbox`.

pub mod event;
pub mod forwarder;
pub mod retry;
pub mod store;

pub use event::IncomingEvent;

use sqlx::PgPool;

use crate::audit::Actor;
use crate::db::StorageError;
use crate::domain::CustomerId;

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

/// Puts dead events back in the queue for `actor` (the API and the console): the one with
/// outbox id `id`, or every one (of `customer`'s). Audited as `outbox.retry` with the change.
/// Naming one that is not dead is an error.
pub async fn retry_dead(
    pool: &PgPool,
    actor: &Actor,
    id: Option<i64>,
    customer: Option<CustomerId>,
) -> Result<u64, RetryError> {
    match (store::retry_dead(pool, id, customer, actor).await?, id) {
        (0, Some(id)) => Err(RetryError::NotDead(id)),
        (retried, _) => Ok(retried),
    }
}
