//! Reservations (holds): money set aside under a customer's DISABLE limit for work whose cost
//! comes later (README, "Enforcement at the point of use").
//!
//! - **Postgres holds them** (`store`): granted under the customer's lock like enforced events
//!   (`enforce`), committed (the real usage stored and the hold closed in one transaction),
//!   released, or expired, each audited in the transaction that makes it.
//! - **Memory holds a copy** of the open ones per customer, for the check's `estimate.reserved`:
//!   reloaded for the customers each notification names, in full when listening (re)starts. A
//!   check skips holds past their `expires_at` by itself, so an expired hold stops counting on
//!   every replica at once; the expiry task closes it in Postgres within [`EXPIRE_EVERY`].

pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::db;
use crate::domain::CustomerId;

/// How often holds past their `expires_at` are closed in Postgres (and audited).
pub const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// An open hold as a check counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub amount: i64,
    /// Unix ms; the hold stops counting then.
    pub expires_at_ms: i64,
}

/// What [`Holds::start`] started.
pub struct Started {
    pub holds: Holds,
    /// Stop the listening and expiring tasks.
    pub tasks: [tokio::task::AbortHandle; 2],
    /// True once the copy is loaded and kept up to date.
    pub listening: watch::Receiver<bool>,
}

/// Cheap to clone; clones share one copy.
#[derive(Clone)]
pub struct Holds {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    open: DashMap<CustomerId, Box<[Hold]>, foldhash::fast::RandomState>,
    /// Customers in `open`: a check skips the lookup while there are none.
    customers: AtomicUsize,
    /// One reload at a time, so a read that began earlier never overwrites a later one.
    reloading: tokio::sync::Mutex<()>,
}

impl Holds {
    /// Starts keeping the copy up to date and expiring holds in Postgres.
    pub fn start(pool: PgPool) -> Started {
        let inner = Arc::new(Inner {
            pool: pool.clone(),
            open: DashMap::default(),
            customers: AtomicUsize::new(0),
            reloading: tokio::sync::Mutex::new(()),
        });
        let (ready, listening) = watch::channel(false);
        let following = tokio::spawn(db::follow(pool.clone(), store::NOTIFY_CHANNEL, inner.clone(), ready))
            .abort_handle();
        let expiring = tokio::spawn(db::every(EXPIRE_EVERY, "close expired holds", move || {
            let pool = pool.clone();
            async move { store::expire(&pool).await }
        }))
        .abort_handle();
        Started { holds: Self { inner }, tasks: [following, expiring], listening }
    }

    /// What the customer's open holds set aside at `now_ms` (Unix ms).
    pub fn reserved(&self, customer: CustomerId, now_ms: u64) -> i64 {
        if self.inner.customers.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        self.inner.open.get(&customer).map_or(0, |holds| {
            holds.iter().filter(|h| h.expires_at_ms > now).fold(0i64, |sum, h| sum.saturating_add(h.amount))
        })
    }
}

impl Holds {
    /// Reads the customer's open holds now, after a change this replica made: its next check
    /// counts it without waiting for the notification (other replicas get that within
    /// milliseconds). A failure is only logged: the notification still comes.
    pub async fn reload(&self, customer: CustomerId) {
        if let Err(e) = self.inner.reload(Some(&[customer])).await {
            tracing::warn!(%customer, error = %e, "reservations: cannot reload a customer's holds");
        }
    }
}

impl Inner {
    /// Replaces the copy of `customers` (all when None) with what Postgres holds now.
    async fn reload(&self, customers: Option<&[CustomerId]>) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut loaded = store::open_holds(&self.pool, customers).await?;
        let stale: Vec<CustomerId> = match customers {
            Some(customers) => customers.to_vec(),
            None => self.open.iter().map(|e| *e.key()).collect(),
        };
        for customer in stale {
            if !loaded.contains_key(&customer) && self.open.remove(&customer).is_some() {
                self.customers.fetch_sub(1, Ordering::Relaxed);
            }
        }
        for (customer, holds) in loaded.drain() {
            if self.open.insert(customer, holds.into_boxed_slice()).is_none() {
                self.customers.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl db::Follower for Inner {
    fn reload_all(&self, _first: bool) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        self.reload(None).boxed()
    }

    fn reload(&self, payloads: Vec<String>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        let customers = db::notified_customers(&payloads);
        async move { Inner::reload(self, Some(&customers)).await }.boxed()
    }
}
