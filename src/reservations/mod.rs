//! Reservations (holds): money set aside under a customer's DISABLE limit for work whose cost
//! comes later (README, "Enforcement at the point of use").
//!
//! - **Postgres holds them** (`store`): granted under the customer's lock like enforced events
//!   (`enforce`), committed (the real usage stored and the hold closed in one transaction),
//!   released, or expired, each audited in the transaction that makes it.
//! - **Memory holds a copy** of the open ones per customer (a [`Mirror`]), for the check's
//!   `estimate.reserved`. A check skips holds past their `expires_at` by itself, so an expired hold stops counting on
//!   every replica at once; the expiry task closes it in Postgres within [`EXPIRE_EVERY`].

pub mod store;

use std::time::Duration;

use futures_util::FutureExt;
use sqlx::PgPool;

use crate::db;
use crate::domain::CustomerId;
use crate::mirror::{self, Mirror, Started};

/// How often holds past their `expires_at` are closed in Postgres (and audited).
pub const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// An open hold as a check counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub amount: i64,
    /// Unix ms; the hold stops counting then.
    pub expires_at_ms: i64,
}

/// Cheap to clone; clones share one copy.
#[derive(Clone)]
pub struct Holds {
    open: Mirror<CustomerId, Box<[Hold]>>,
}

impl Holds {
    /// Starts keeping the copy up to date and expiring holds in Postgres.
    pub fn start(pool: PgPool) -> Started<Self> {
        let load: mirror::Loader<CustomerId, Box<[Hold]>> =
            |pool, customers| store::open_holds(pool, customers).boxed();
        let Started { service: open, mut tasks, listening, .. } =
            Mirror::start(pool.clone(), store::NOTIFY_CHANNEL, "reservations", load);
        let expiring = tokio::spawn(db::every(EXPIRE_EVERY, "close expired holds", move || {
            let pool = pool.clone();
            async move { store::expire(&pool).await }
        }))
        .abort_handle();
        tasks.push(expiring);
        Started { service: Self { open }, changes: (), tasks, listening }
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

    /// Reads the customer's open holds now, after a change this replica made: its next check
    /// counts it without waiting for the notification.
    pub async fn reload(&self, customer: CustomerId) {
        self.open.reload(customer).await
    }
}
