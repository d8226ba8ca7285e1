//! A replica's mirror of what Postgres holds per customer (the open holds, the open overrides),
//! for checks that must not wait for Postgres: loaded in full whenever listening (re)starts,
//! reloaded for the customers each notification names ([`db::follow`]), and, if asked, telling
//! each change to whoever audits what it changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use crate::db;
use crate::domain::CustomerId;

/// Reads what Postgres holds for `customers` (for every customer that has any when None).
pub type Loader<V> = for<'a> fn(
    &'a PgPool,
    Option<&'a [CustomerId]>,
) -> BoxFuture<'a, Result<HashMap<CustomerId, V>, sqlx::Error>>;

/// A customer's entry changed in this replica's mirror.
#[derive(Debug, Clone, Copy)]
pub struct Change<V> {
    pub customer: CustomerId,
    pub before: Option<V>,
    pub after: Option<V>,
}

/// Cheap to clone; clones share one mirror.
pub struct Mirror<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for Mirror<V> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

struct Inner<V> {
    pool: PgPool,
    load: Loader<V>,
    /// What is mirrored, for the log.
    what: &'static str,
    entries: DashMap<CustomerId, V, foldhash::fast::RandomState>,
    /// Customers in `entries`: a lookup is one atomic load while there are none.
    customers: AtomicUsize,
    /// One reload at a time, so a read that began earlier never overwrites a later one.
    reloading: tokio::sync::Mutex<()>,
    changes: Option<mpsc::Sender<Change<V>>>,
}

/// What [`Mirror::start`] started.
pub struct Started<V> {
    pub mirror: Mirror<V>,
    /// Stops following.
    pub task: tokio::task::AbortHandle,
    /// True once the mirror is loaded and kept up to date.
    pub listening: watch::Receiver<bool>,
}

impl<V: Clone + PartialEq + Send + Sync + 'static> Mirror<V> {
    /// Starts following `channel` (whose payloads list customer ids: the `notify_customers`
    /// trigger's); `changes`, if given, is told of every change (dropped, and counted, if it
    /// does not keep up).
    pub fn start(
        pool: PgPool,
        channel: &'static str,
        what: &'static str,
        load: Loader<V>,
        changes: Option<mpsc::Sender<Change<V>>>,
    ) -> Started<V> {
        let inner = Arc::new(Inner {
            pool: pool.clone(),
            load,
            what,
            entries: DashMap::default(),
            customers: AtomicUsize::new(0),
            reloading: tokio::sync::Mutex::new(()),
            changes,
        });
        let (ready, listening) = watch::channel(false);
        let task = tokio::spawn(db::follow(pool, channel, inner.clone(), ready)).abort_handle();
        Started { mirror: Self { inner }, task, listening }
    }

    /// `read` of the customer's entry, if it has one.
    pub fn with<T>(&self, customer: CustomerId, read: impl FnOnce(&V) -> T) -> Option<T> {
        if self.inner.customers.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.inner.entries.get(&customer).map(|entry| read(&entry))
    }

    /// Reads the customer's entry now, after a change this replica made: its next check sees it
    /// without waiting for the notification (other replicas get that within milliseconds). A
    /// failure is only logged: the notification still comes.
    pub async fn reload(&self, customer: CustomerId) {
        if let Err(e) = self.inner.reload(Some(&[customer])).await {
            tracing::warn!(%customer, error = %e, what = self.inner.what, "cannot reload a customer's mirror");
        }
    }
}

impl<V: Clone + PartialEq + Send + Sync + 'static> Inner<V> {
    /// Replaces the mirror of `customers` (all when None) with what Postgres holds now.
    async fn reload(&self, customers: Option<&[CustomerId]>) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut loaded = (self.load)(&self.pool, customers).await?;
        let concerned: Vec<CustomerId> = match customers {
            Some(customers) => customers.to_vec(),
            None => {
                let mut all: Vec<CustomerId> =
                    self.entries.iter().map(|e| *e.key()).chain(loaded.keys().copied()).collect();
                all.sort_unstable();
                all.dedup();
                all
            }
        };
        for customer in concerned {
            let after = loaded.remove(&customer);
            let before = match &after {
                Some(after) => self.entries.insert(customer, after.clone()),
                None => self.entries.remove(&customer).map(|(_, entry)| entry),
            };
            match (before.is_some(), after.is_some()) {
                (false, true) => self.customers.fetch_add(1, Ordering::Relaxed),
                (true, false) => self.customers.fetch_sub(1, Ordering::Relaxed),
                _ => 0,
            };
            if let Some(changes) = &self.changes
                && before != after
                && changes.try_send(Change { customer, before, after }).is_err()
            {
                metrics::counter!("usage_gate_mirror_changes_dropped_total", "what" => self.what)
                    .increment(1);
            }
        }
        Ok(())
    }
}

impl<V: Clone + PartialEq + Send + Sync + 'static> db::Follower for Inner<V> {
    fn reload_all(&self, _first: bool) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        self.reload(None).boxed()
    }

    fn reload(&self, payloads: Vec<String>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        let customers = db::notified_customers(&payloads);
        async move { Inner::reload(self, Some(&customers)).await }.boxed()
    }
}
