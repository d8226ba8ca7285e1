//! Reservations (holds): money set aside under a customer's DISABLE limit for work whose cost
//! comes later (docs/enforcement.md, "Enforcement at the point of use").
//!
//! - **Postgres holds them** (`store`): granted under the customer's lock like enforced events
//!   (`enforce`), committed (the real usage stored and the hold closed in one transaction),
//!   released, or expired, each audited in the transaction that makes it.
//! - **Two writers per replica** (`writer`), one for new holds and one for commits and
//!   releases, write each change together with whatever else waits (group commit), and reload
//!   the changed customers' copies.
//! - **Memory holds a copy** of the open ones per customer (a [`Mirror`]), for the check's
//!   `estimate.reserved`. A check skips holds past their `expires_at` by itself, so an expired hold stops counting on
//!   every replica at once; the expiry task closes it in Postgres within [`EXPIRE_EVERY`].

pub mod store;
mod writer;

use std::time::Duration;

use futures_util::FutureExt;
use sqlx::PgPool;

use crate::audit::Actor;
use crate::db::{self, StorageError};
use crate::domain::CustomerId;
use crate::enforce::{Gate, Judged};
use crate::mirror::{self, Mirror, Started};
use crate::outbox::IncomingEvent;
use crate::policy::PolicySettings;
use store::{Ask, Change, Committed, Created, Done, Reservation, Reuse};
use uuid::Uuid;

/// The header a hold is asked for again with (the name its errors give as the field).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// How often holds past their `expires_at` are closed in Postgres (and audited).
pub const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// How often the reservations are vacuumed if they need it (see [`db::vacuum_busy`]).
const VACUUM_EVERY: Duration = Duration::from_secs(5);

/// Registers `usage_gate_reservations_total` for every outcome, so `/metrics` shows zeros
/// before the first hold.
pub fn register_metrics() {
    for outcome in writer::OUTCOMES.into_iter().chain(["expired"]) {
        metrics::counter!("usage_gate_reservations_total", "outcome" => outcome).increment(0);
    }
}

/// An open hold as a check counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub amount: i64,
    /// Unix ms; the hold stops counting then.
    pub expires_at_ms: i64,
}

/// A hold not made because its idempotency key made another, or one that holds nothing now.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{}", key_reused(*.0, .1))]
    KeyReused(Reuse, Box<Reservation>),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn key_reused(why: Reuse, earlier: &Reservation) -> String {
    match why {
        Reuse::OtherAsk => format!(
            "this key made hold {} for {} asked for otherwise; a new hold needs a new key",
            earlier.id,
            match (&earlier.code, earlier.value) {
                (Some(code), Some(value)) => format!("{value} of {code}"),
                _ => format!("an amount of {}", earlier.amount),
            }
        ),
        Reuse::Closed => format!(
            "this key made hold {}, which is {} and holds nothing now; a new hold needs a new key",
            earlier.id,
            earlier.closed_as.as_deref().unwrap_or("expired")
        ),
    }
}

/// A request for a hold as judged: granted (`reservation`), or refused with nothing held.
#[derive(Debug)]
pub struct Judgement {
    pub reservation: Option<Reservation>,
    pub judged: Judged,
    /// The hold was made by an earlier request with the same idempotency key.
    pub replayed: bool,
}

/// Cheap to clone; clones share one copy.
#[derive(Clone)]
pub struct Holds {
    open: Mirror<CustomerId, Box<[Hold]>>,
    writer: writer::Writer,
}

impl Holds {
    /// Starts keeping the copy up to date, the writer (which connects with the pool's options,
    /// waiting at most `connect_timeout`, and judges new holds by `policy`), and expiring holds
    /// in Postgres.
    pub fn start(pool: PgPool, connect_timeout: Duration, policy: PolicySettings) -> Started<Self> {
        let load: mirror::Loader<CustomerId, Box<[Hold]>> =
            |pool, customers| store::open_holds(pool, customers).boxed();
        let Started { service: open, mut tasks, listening, .. } =
            Mirror::start(pool.clone(), store::NOTIFY_CHANNEL, "reservations", load);
        let (writer, writing) = writer::Writer::start(pool.clone(), connect_timeout, policy, open.clone());
        tasks.extend(writing);
        let vacuum_pool = pool.clone();
        let expiring = tokio::spawn(db::every(EXPIRE_EVERY, "close expired holds", move || {
            let pool = pool.clone();
            async move { store::expire(&pool).await }
        }))
        .abort_handle();
        tasks.push(expiring);
        // Every close leaves a dead row, and the partial index of open holds that each
        // enforced write and reload reads keeps its entry until a vacuum: at thousands of
        // commits a second, hold → commit pairs fell from 1,638/s to 577/s within half a minute
        // (`bench/enforce.py`) before this.
        let vacuuming = tokio::spawn(db::every(VACUUM_EVERY, "vacuum the reservations", move || {
            let pool = vacuum_pool.clone();
            async move { db::vacuum_busy(&pool, &["reservations"]).await }
        }))
        .abort_handle();
        tasks.push(vacuuming);
        Started { service: Self { open, writer }, changes: (), tasks, listening }
    }

    /// What the customer's open holds set aside at `now_ms` (Unix ms).
    pub fn reserved(&self, customer: CustomerId, now_ms: u64) -> i64 {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        self.open
            .with(customer, |holds| {
                holds
                    .iter()
                    .filter(|h| h.expires_at_ms > now)
                    .fold(0i64, |sum, h| sum.saturating_add(h.amount))
            })
            .unwrap_or(0)
    }

    /// A hold for the gate's customer if it fits (judged under its lock with its pending usage
    /// and open holds): stored, or refused with nothing stored; and how it was judged. With a
    /// `key` that made one of the customer's holds before, that hold, if asked for the same way
    /// and still open.
    pub async fn create(
        &self,
        gate: Gate,
        ask: Ask,
        ttl: Duration,
        actor: Actor,
        key: Option<String>,
    ) -> Result<Judgement, HoldError> {
        let customer = gate.customer;
        let change = Change::Hold { customer, gate: Some(gate), ask, ttl, actor, key };
        match self.writer.write(change).await? {
            Done::Hold(Created { reservation, judged: Some(judged), replayed }) => {
                Ok(Judgement { reservation, judged, replayed })
            }
            Done::KeyReused(why, earlier) => Err(HoldError::KeyReused(why, Box::new(earlier))),
            _ => Err(unanswered().into()),
        }
    }

    /// A hold stored without judging it (the policy's fallback allowed it): of `ask`'s amount,
    /// or 0 for an event (its price is unknown); and whether an earlier request with the same
    /// `key` made it.
    pub async fn grant(
        &self,
        customer: CustomerId,
        ask: Ask,
        ttl: Duration,
        actor: Actor,
        key: Option<String>,
    ) -> Result<(Reservation, bool), HoldError> {
        match self.writer.write(Change::Hold { customer, gate: None, ask, ttl, actor, key }).await? {
            Done::Hold(Created { reservation: Some(reservation), replayed, .. }) => {
                Ok((reservation, replayed))
            }
            Done::KeyReused(why, earlier) => Err(HoldError::KeyReused(why, Box::new(earlier))),
            _ => Err(unanswered().into()),
        }
    }

    /// Stores the work's real usage and closes the hold, in one transaction (see
    /// [`store::write`]). `owners`: each event's customer, as far as usage-gate can tell.
    pub async fn commit(
        &self,
        id: Uuid,
        events: Vec<IncomingEvent>,
        owners: Vec<Option<CustomerId>>,
        actor: Actor,
    ) -> Result<Committed, StorageError> {
        match self.writer.write(Change::Commit { id, events, owners, actor }).await? {
            Done::Commit(committed) => Ok(committed),
            _ => Err(unanswered()),
        }
    }

    /// Releases an open hold; None when there is none with this id (unknown, or closed before).
    pub async fn release(&self, id: Uuid, actor: Actor) -> Result<Option<Reservation>, StorageError> {
        match self.writer.write(Change::Release { id, actor }).await? {
            Done::Release(released) => Ok(released),
            _ => Err(unanswered()),
        }
    }
}

/// The writer answers each change with its own kind; another would be a fault of ours.
fn unanswered() -> StorageError {
    StorageError::from(sqlx::Error::Protocol("reservations: a change was answered as another kind".into()))
}
