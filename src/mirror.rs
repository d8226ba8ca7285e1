//! A replica's mirror of what Postgres holds per key (the pending usage per target, the open
//! holds and overrides per customer), for checks that must not wait for Postgres: loaded in full
//! whenever listening (re)starts, reloaded for the keys each notification names ([`db::follow`]),
//! and, if asked, telling each change to whoever audits what it changes.
//!
//! Also [`Started`]: what every service that follows Postgres hands back when it starts.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use crate::db;
use crate::domain::CustomerId;

/// What a mirror is keyed by.
pub trait Key: Copy + Eq + Hash + Ord + Debug + Send + Sync + 'static {
    /// Kinds of keys counted apart (at most [`KINDS`]): a lookup of a kind the mirror holds none
    /// of is one atomic load (the pending ledger often holds only one kind of target).
    fn kind(&self) -> usize {
        0
    }

    /// The keys the notifications' payloads name, sorted and once each.
    fn notified(payloads: &[String]) -> Vec<Self>;
}

/// How many kinds of keys a mirror counts apart.
pub const KINDS: usize = 2;

impl Key for CustomerId {
    fn notified(payloads: &[String]) -> Vec<Self> {
        db::notified_customers(payloads)
    }
}

/// Reads what Postgres holds for `keys` (for every key that has any when None).
pub type Loader<K, V> =
    for<'a> fn(&'a PgPool, Option<&'a [K]>) -> BoxFuture<'a, Result<HashMap<K, V>, sqlx::Error>>;

/// A key's entry changed in this replica's mirror.
#[derive(Debug, Clone, Copy)]
pub struct Change<K, V> {
    pub key: K,
    pub before: Option<V>,
    pub after: Option<V>,
}

/// What a service that follows Postgres started: the service, what it tells of its changes (if
/// anything), the tasks that stop with the application, and whether it is loaded and following
/// yet.
pub struct Started<T, C = ()> {
    pub service: T,
    pub changes: C,
    pub tasks: Vec<tokio::task::AbortHandle>,
    pub listening: watch::Receiver<bool>,
}

/// Cheap to clone; clones share one mirror.
pub struct Mirror<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Mirror<K, V> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

struct Inner<K, V> {
    pool: PgPool,
    load: Loader<K, V>,
    /// What is mirrored, for the log.
    what: &'static str,
    /// foldhash, not the default SipHash: every warm check looks a few keys up here.
    entries: DashMap<K, V, foldhash::fast::RandomState>,
    /// Keys in `entries`, per kind (changed only under `reloading`).
    counts: [AtomicUsize; KINDS],
    /// One reload at a time, so a read that began earlier never overwrites a later one.
    reloading: tokio::sync::Mutex<()>,
    changes: Option<mpsc::Sender<Change<K, V>>>,
    /// This replica's writers that put what they commit in the mirror themselves ([`Mirror::apply`]).
    writers: db::Backends,
}

/// How many changes may wait for their reader; beyond it they are dropped (and counted).
const CHANGES_QUEUE: usize = 10_000;

impl<K: Key, V: Clone + PartialEq + Send + Sync + 'static> Mirror<K, V> {
    /// Starts following `channel` (whose payloads name keys, see [`Key::notified`]).
    pub fn start(
        pool: PgPool,
        channel: &'static str,
        what: &'static str,
        load: Loader<K, V>,
    ) -> Started<Self> {
        Self::following(pool, channel, what, load, None, db::Backends::default())
    }

    /// As [`Mirror::start`], for keys this replica's `writers` also change: each puts what it
    /// commits in the mirror itself ([`Mirror::apply`]), so their notifications are not reloaded.
    pub fn start_beside(
        pool: PgPool,
        channel: &'static str,
        what: &'static str,
        load: Loader<K, V>,
        writers: db::Backends,
    ) -> Started<Self> {
        Self::following(pool, channel, what, load, None, writers)
    }

    /// As [`Mirror::start`], and tells of every change after the first load (dropped, and
    /// counted, if the reader does not keep up).
    pub fn start_telling(
        pool: PgPool,
        channel: &'static str,
        what: &'static str,
        load: Loader<K, V>,
    ) -> Started<Self, mpsc::Receiver<Change<K, V>>> {
        let (sender, changes) = mpsc::channel(CHANGES_QUEUE);
        let Started { service, tasks, listening, .. } =
            Self::following(pool, channel, what, load, Some(sender), db::Backends::default());
        Started { service, changes, tasks, listening }
    }

    /// As [`Mirror::start`], with a second mirror of what the same channel tells of (a table
    /// whose keys are of two types): one listener, so one of the pool's connections, for both.
    pub fn start_with<K2: Key, V2: Clone + PartialEq + Send + Sync + 'static>(
        pool: PgPool,
        channel: &'static str,
        (what, load): (&'static str, Loader<K, V>),
        (other_what, other_load): (&'static str, Loader<K2, V2>),
    ) -> Started<(Self, Mirror<K2, V2>)> {
        let first = Self::empty(pool.clone(), what, load, None, db::Backends::default());
        let second = Mirror::empty(pool.clone(), other_what, other_load, None, db::Backends::default());
        let both = Arc::new(Pair(first.inner.clone(), second.inner.clone()));
        let (ready, listening) = watch::channel(false);
        let task = tokio::spawn(db::follow(pool, channel, both, ready)).abort_handle();
        Started { service: (first, second), changes: (), tasks: vec![task], listening }
    }

    fn following(
        pool: PgPool,
        channel: &'static str,
        what: &'static str,
        load: Loader<K, V>,
        changes: Option<mpsc::Sender<Change<K, V>>>,
        writers: db::Backends,
    ) -> Started<Self> {
        let mirror = Self::empty(pool.clone(), what, load, changes, writers);
        let (ready, listening) = watch::channel(false);
        let task = tokio::spawn(db::follow(pool, channel, mirror.inner.clone(), ready)).abort_handle();
        Started { service: mirror, changes: (), tasks: vec![task], listening }
    }

    fn empty(
        pool: PgPool,
        what: &'static str,
        load: Loader<K, V>,
        changes: Option<mpsc::Sender<Change<K, V>>>,
        writers: db::Backends,
    ) -> Self {
        let inner = Arc::new(Inner {
            pool,
            load,
            what,
            entries: DashMap::default(),
            counts: Default::default(),
            reloading: tokio::sync::Mutex::new(()),
            changes,
            writers,
        });
        Self { inner }
    }

    /// Whether the mirror holds any key of `kind`.
    pub fn any(&self, kind: usize) -> bool {
        self.inner.counts[kind].load(Ordering::Relaxed) > 0
    }

    /// `read` of the key's entry, if it has one.
    pub fn with<T>(&self, key: K, read: impl FnOnce(&V) -> T) -> Option<T> {
        if !self.any(key.kind()) {
            return None;
        }
        self.inner.entries.get(&key).map(|entry| read(&entry))
    }

    /// Reads the key's entry now, after a change this replica made: its next check sees it
    /// without waiting for the notification (other replicas get that within milliseconds). A
    /// failure is only logged: the notification still comes.
    pub async fn reload(&self, key: K) {
        if let Err(e) = self.reload_keys(&[key]).await {
            tracing::warn!(?key, error = %e, what = self.inner.what, "cannot reload a mirrored entry");
        }
    }

    /// Reads every entry now, telling of each change.
    pub async fn reload_all(&self) -> Result<(), sqlx::Error> {
        self.inner.reload(None, true).await
    }

    /// Reads the keys' entries now, telling of each change.
    pub async fn reload_keys(&self, keys: &[K]) -> Result<(), sqlx::Error> {
        self.inner.reload(Some(keys), true).await
    }

    /// Applies changes this replica committed itself, without reading Postgres again: `edit`
    /// gets a key's entry (None: none) and its change, and answers the new entry. It waits for a
    /// reload under way, so a read that began before the commit cannot land after the edit
    /// (nothing to apply: no wait). Every change is told of.
    pub async fn apply<E>(&self, changes: Vec<(K, E)>, mut edit: impl FnMut(Option<&V>, E) -> Option<V>) {
        if changes.is_empty() {
            return;
        }
        let _one_at_a_time = self.inner.reloading.lock().await;
        for (key, change) in changes {
            let after = edit(self.inner.entries.get(&key).as_deref(), change);
            self.inner.set(key, after, true);
        }
    }
}

impl<K: Key, V: Clone + PartialEq + Send + Sync + 'static> Inner<K, V> {
    /// Replaces the mirror of `keys` (all when None) with what Postgres holds now, telling of
    /// each change if `announce`.
    async fn reload(&self, keys: Option<&[K]>, announce: bool) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut loaded = (self.load)(&self.pool, keys).await?;
        let concerned: Vec<K> = match keys {
            Some(keys) => keys.to_vec(),
            None => {
                let mut all: Vec<K> =
                    self.entries.iter().map(|e| *e.key()).chain(loaded.keys().copied()).collect();
                all.sort_unstable();
                all.dedup();
                all
            }
        };
        for key in concerned {
            self.set(key, loaded.remove(&key), announce);
        }
        Ok(())
    }

    /// Makes `after` the key's entry (None: no entry); the caller holds `reloading`.
    fn set(&self, key: K, after: Option<V>, announce: bool) {
        if after.is_some() && self.entries.get(&key).is_some_and(|current| Some(&*current) == after.as_ref())
        {
            return;
        }
        let before = match &after {
            Some(after) => self.entries.insert(key, after.clone()),
            None => self.entries.remove(&key).map(|(_, entry)| entry),
        };
        let count = &self.counts[key.kind()];
        match (before.is_some(), after.is_some()) {
            (false, true) => count.fetch_add(1, Ordering::Relaxed),
            (true, false) => count.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
        if let Some(changes) = &self.changes
            && announce
            && before != after
            && changes.try_send(Change { key, before, after }).is_err()
        {
            metrics::counter!("usage_gate_mirror_changes_dropped_total", "what" => self.what).increment(1);
        }
    }
}

/// Keeps the mirror equal to Postgres (`db::follow`): a full reload whenever listening
/// (re)starts, then a reload of the keys each batch of notifications names.
impl<K: Key, V: Clone + PartialEq + Send + Sync + 'static> db::Follower for Inner<K, V> {
    fn reload_all(&self, first: bool) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        // The first load holds nothing a cached decision was made with: no change to tell of.
        self.reload(None, !first).boxed()
    }

    fn reload(&self, payloads: Vec<String>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        let keys = K::notified(&payloads);
        async move { Inner::reload(self, Some(&keys), true).await }.boxed()
    }

    fn own(&self, process_id: u32) -> bool {
        self.writers.contains(process_id)
    }
}

/// Two mirrors following one channel (`Mirror::start_with`): each reads what the notifications
/// name of its own keys.
struct Pair<A, B>(Arc<A>, Arc<B>);

impl<A: db::Follower, B: db::Follower> db::Follower for Pair<A, B> {
    fn reload_all(&self, first: bool) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        async move {
            self.0.reload_all(first).await?;
            self.1.reload_all(first).await
        }
        .boxed()
    }

    fn reload(&self, payloads: Vec<String>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        async move {
            self.0.reload(payloads.clone()).await?;
            self.1.reload(payloads).await
        }
        .boxed()
    }
}
