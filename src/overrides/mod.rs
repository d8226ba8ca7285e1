//! Overrides: an operator's bounded exception to a customer's decision, `allow`, `block` or
//! `raise` (the DISABLE threshold), until `expires_at` (README, "Overrides").
//!
//! - **Postgres holds them** (`store`): a customer has at most one open override (a new one
//!   supersedes it); created, ended and expired are each audited once, in the transaction that
//!   makes the change.
//! - **Memory holds a copy** of the open ones, for checks, enforced events and holds: reloaded
//!   for the customers each notification names, in full when listening (re)starts. A check
//!   ignores an override past its `expires_at` by itself, so expiry is exact on every replica;
//!   the expiry task closes it in Postgres within [`EXPIRE_EVERY`].
//! - **Changes are told** ([`Changed`]) to whoever audits decision transitions: an override
//!   can change a customer's status without a fetch.

pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::db;
use crate::domain::{CustomerId, Timestamp};
use crate::policy::Effect;

/// How often overrides past their `expires_at` are closed in Postgres (and audited).
pub const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// An open override as a check applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override {
    pub id: Uuid,
    pub effect: Effect,
    /// Unix ms; it stops applying then.
    pub expires_at_ms: i64,
}

impl Override {
    pub fn applies_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms > i64::try_from(now_ms).unwrap_or(i64::MAX)
    }

    /// How a decision shows it.
    pub fn view(&self) -> OverrideView {
        OverrideView {
            id: self.id,
            effect: self.effect.as_str(),
            amount: match self.effect {
                Effect::Raise(amount) => Some(amount),
                _ => None,
            },
            expires_at: Timestamp(self.expires_at_ms.max(0) as u64),
        }
    }
}

/// The override a decision was made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OverrideView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// `allow`, `block` or `raise`.
    #[schema(value_type = String)]
    pub effect: &'static str,
    /// For `raise`: the DISABLE threshold judged instead (minor units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
}

/// A customer's open override changed in this replica's copy.
#[derive(Debug, Clone, Copy)]
pub struct Changed {
    pub customer: CustomerId,
    pub before: Option<Override>,
    pub after: Option<Override>,
}

/// What [`Overrides::start`] started.
pub struct Started {
    pub overrides: Overrides,
    /// Every change to the copy (dropped, and counted, if nobody keeps up).
    pub changes: mpsc::Receiver<Changed>,
    /// Stop the listening and expiring tasks.
    pub tasks: [tokio::task::AbortHandle; 2],
    /// True once the copy is loaded and kept up to date.
    pub listening: watch::Receiver<bool>,
}

/// Cheap to clone; clones share one copy.
#[derive(Clone)]
pub struct Overrides {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    open: DashMap<CustomerId, Override, foldhash::fast::RandomState>,
    /// Customers in `open`: a check skips the lookup while there are none.
    customers: AtomicUsize,
    /// One reload at a time, so a read that began earlier never overwrites a later one.
    reloading: tokio::sync::Mutex<()>,
    changes: mpsc::Sender<Changed>,
}

const CHANGES_QUEUE: usize = 10_000;

impl Overrides {
    /// Starts keeping the copy up to date and expiring overrides in Postgres.
    pub fn start(pool: PgPool) -> Started {
        let (changes, receiver) = mpsc::channel(CHANGES_QUEUE);
        let inner = Arc::new(Inner {
            pool: pool.clone(),
            open: DashMap::default(),
            customers: AtomicUsize::new(0),
            reloading: tokio::sync::Mutex::new(()),
            changes,
        });
        let (ready, listening) = watch::channel(false);
        let following = tokio::spawn(db::follow(pool.clone(), store::NOTIFY_CHANNEL, inner.clone(), ready))
            .abort_handle();
        let expiring = tokio::spawn(db::every(EXPIRE_EVERY, "close expired overrides", move || {
            let pool = pool.clone();
            async move { store::expire(&pool).await }
        }))
        .abort_handle();
        Started { overrides: Self { inner }, changes: receiver, tasks: [following, expiring], listening }
    }

    /// The customer's override in force at `now_ms` (Unix ms), if any.
    pub fn active(&self, customer: CustomerId, now_ms: u64) -> Option<Override> {
        if self.inner.customers.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.inner.open.get(&customer).map(|o| *o).filter(|o| o.applies_at(now_ms))
    }

    /// Reads the customer's open override now, after a change this replica made: its next check
    /// applies it without waiting for the notification. A failure is only logged: the
    /// notification still comes.
    pub async fn reload(&self, customer: CustomerId) {
        if let Err(e) = self.inner.reload(Some(&[customer])).await {
            tracing::warn!(%customer, error = %e, "overrides: cannot reload a customer's override");
        }
    }
}

impl Inner {
    /// Replaces the copy of `customers` (all when None) with what Postgres holds now.
    async fn reload(&self, customers: Option<&[CustomerId]>) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut loaded = store::open_overrides(&self.pool, customers).await?;
        let concerned: Vec<CustomerId> = match customers {
            Some(customers) => customers.to_vec(),
            None => {
                let mut all: Vec<CustomerId> =
                    self.open.iter().map(|e| *e.key()).chain(loaded.keys().copied()).collect();
                all.sort_unstable();
                all.dedup();
                all
            }
        };
        for customer in concerned {
            let after = loaded.remove(&customer);
            let before = match after {
                Some(after) => self.open.insert(customer, after),
                None => self.open.remove(&customer).map(|(_, o)| o),
            };
            match (before.is_some(), after.is_some()) {
                (false, true) => self.customers.fetch_add(1, Ordering::Relaxed),
                (true, false) => self.customers.fetch_sub(1, Ordering::Relaxed),
                _ => 0,
            };
            if before != after && self.changes.try_send(Changed { customer, before, after }).is_err() {
                metrics::counter!("usage_gate_override_changes_dropped_total").increment(1);
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
