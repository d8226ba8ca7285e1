//! The snapshot cache: per customer, what BillaBear says (status, usage limits, cost estimate,
//! the usage-priced subscriptions and their figures), kept fresh with stale-while-revalidate and
//! fetched at most once at a time per customer, from a [`Fetch`] source.
//!
//! Ages, per snapshot:
//! - known customer: fresh for `cache.ttl`, then served as `stale` while one background refresh
//!   runs, until `cache.max_stale` after the fetch; then refetched before answering;
//! - customer BillaBear answered 404 for: fresh for `cache.negative_ttl`, in a cache of its own
//!   (`cache.max_unknown_customers`), so made-up ids cannot evict real customers;
//! - BillaBear unreachable with nothing usable cached: a marker that answers the fallback policy
//!   for `cache.min_refresh_interval`, so an outage does not make every check wait on a timeout.
//!
//! Calls to BillaBear are bounded: `cache.max_concurrent_fetches` at once, and
//! `cache.cold_fetches_per_second` for customers with nothing usable cached; past either a cold
//! customer gets the fallback policy (`upstream_budget_exhausted`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use metrics::{Counter, Histogram};
use moka::ops::compute::Op;
use std::num::NonZeroU32;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::Instrument;

use crate::billabear::{self, BillaBearClient, BillaBearError};
use crate::config::CacheSettings;
use crate::domain::CustomerId;
use crate::snapshot::{Lookup, Snapshot, SnapshotData, Source, now_ms};

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Why a fetch gave no snapshot.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    BillaBear(#[from] BillaBearError),
    /// `cache.max_concurrent_fetches` or `cache.cold_fetches_per_second` reached: not asked.
    #[error("usage-gate's budget of calls to BillaBear is spent for now")]
    BudgetExhausted,
}

type FetchResult = Result<Arc<Snapshot>, FetchError>;
type Flight = Shared<BoxFuture<'static, FetchResult>>;

/// Handles on the cache's metrics, registered once so the hot path does no lookups.
struct CacheMetrics {
    hit: Counter,
    miss: Counter,
    stale: Counter,
    fallback: Counter,
    budget_exhausted: Counter,
    refresh_ok: Histogram,
    refresh_failed: Histogram,
    fetched_dropped: Counter,
}

impl CacheMetrics {
    fn new() -> Self {
        let lookup =
            |result: &'static str| metrics::counter!("usage_gate_cache_lookups_total", "result" => result);
        let refresh = |outcome: &'static str| metrics::histogram!("usage_gate_cache_refresh_seconds", "outcome" => outcome);
        Self {
            hit: lookup("hit"),
            miss: lookup("miss"),
            stale: lookup("stale"),
            fallback: lookup("fallback"),
            budget_exhausted: metrics::counter!("usage_gate_cache_fetch_budget_exhausted_total"),
            refresh_ok: refresh("ok"),
            refresh_failed: refresh("failed"),
            fetched_dropped: metrics::counter!("usage_gate_cache_fetched_dropped_total"),
        }
    }
}

/// The customer ids hashed with foldhash under a per-process random seed, not moka's default
/// SipHash: a warm check's lookup spent ~130 instructions hashing its 16 bytes
/// (`bench/check_instructions.py`). The ids come from callers holding a `check` key.
type KeyHasher = foldhash::quality::RandomState;
type Snapshots = moka::sync::Cache<CustomerId, Arc<Snapshot>, KeyHasher>;

struct Inner {
    /// Known customers, and the `Unavailable` markers and tombstones that stand in for them.
    snapshots: Snapshots,
    /// Customers BillaBear answered 404 for, bounded on their own (`cache.max_unknown_customers`)
    /// so that checks of made-up ids cannot evict real customers.
    unknown: Snapshots,
    /// Fetches under way, one per customer, each with its generation (see `start_fetch`).
    inflight: Mutex<HashMap<CustomerId, (u64, Flight)>>,
    /// Hands out generations: to each fetch as it starts, and to each invalidation.
    generation: AtomicU64,
    /// Fetches under way at once, all customers together (`cache.max_concurrent_fetches`).
    fetch_slots: Arc<Semaphore>,
    /// Fetches for customers with nothing usable cached (`cache.cold_fetches_per_second`).
    cold_fetches: DefaultDirectRateLimiter,
    source: Arc<dyn Fetch>,
    /// Where fetches run: the runtime the cache was made on (the process's multi-threaded one),
    /// not the HTTP worker that asked. A batch check of 1,000 cold customers ran all 4,000
    /// BillaBear calls and their settling on its one worker thread, which was then the
    /// bottleneck (73% of the process's CPU samples, 0.8–1.1 s, `bench/check.py --cold-only`).
    runtime: Option<tokio::runtime::Handle>,
    ttl_ms: u64,
    max_stale_ms: u64,
    negative_ttl_ms: u64,
    min_refresh_interval_ms: u64,
    metrics: CacheMetrics,
    /// Told of every snapshot fetched from BillaBear (`transitions` reads it).
    fetched: Option<mpsc::Sender<Fetched>>,
}

/// Where snapshots come from: BillaBear, asked by [`fetch`], and whatever must happen before a
/// fetched snapshot is used (`pending` retires the usage it shows was counted).
pub trait Fetch: Send + Sync + 'static {
    fn fetch(&self, id: CustomerId) -> BoxFuture<'static, Result<SnapshotData, BillaBearError>>;
}

/// BillaBear alone, with no pending ledger (benchmarks and tools).
pub struct FromBillaBear(pub BillaBearClient);

impl Fetch for FromBillaBear {
    fn fetch(&self, id: CustomerId) -> BoxFuture<'static, Result<SnapshotData, BillaBearError>> {
        let client = self.0.clone();
        async move {
            Ok(match billabear::fetch(&client, id).await? {
                Some(answers) => SnapshotData::Known(answers.known(&answers.usage_subscriptions(), |_| None)),
                None => SnapshotData::NotFound,
            })
        }
        .boxed()
    }
}

/// A snapshot fetched from BillaBear and cached, with the one it replaced (if any was cached).
#[derive(Debug)]
pub struct Fetched {
    pub customer: CustomerId,
    pub before: Option<Arc<Snapshot>>,
    pub after: Arc<Snapshot>,
}

/// Cheap to clone; all clones share one cache.
#[derive(Clone)]
pub struct SnapshotCache {
    inner: Arc<Inner>,
}

impl SnapshotCache {
    /// Snapshots straight from BillaBear.
    pub fn new(client: BillaBearClient, settings: &CacheSettings) -> Self {
        Self::with_source(Arc::new(FromBillaBear(client)), settings, None)
    }

    /// Snapshots from `source`; `fetched`, if given, is told of each one fetched (dropped, and
    /// counted, if it does not keep up: a fetch never waits for it).
    pub fn with_source(
        source: Arc<dyn Fetch>,
        settings: &CacheSettings,
        fetched: Option<mpsc::Sender<Fetched>>,
    ) -> Self {
        let snapshots = moka::sync::Cache::builder()
            .max_capacity(settings.max_customers)
            // LRU, not TinyLFU: a snapshot just fetched must be kept, or the next check refetches.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            // Past max_stale a snapshot is never served; let moka reclaim it.
            .time_to_live(settings.max_stale.max(Duration::from_millis(1)))
            .build_with_hasher(KeyHasher::default());
        let unknown = moka::sync::Cache::builder()
            .max_capacity(settings.max_unknown_customers)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_live(settings.negative_ttl.max(Duration::from_millis(1)))
            .build_with_hasher(KeyHasher::default());
        let per_second = NonZeroU32::new(settings.cold_fetches_per_second).unwrap_or(NonZeroU32::MIN);
        Self {
            inner: Arc::new(Inner {
                snapshots,
                unknown,
                inflight: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(1),
                fetch_slots: Arc::new(Semaphore::new(settings.max_concurrent_fetches)),
                cold_fetches: RateLimiter::direct(Quota::per_second(per_second)),
                source,
                runtime: tokio::runtime::Handle::try_current().ok(),
                ttl_ms: millis(settings.ttl),
                max_stale_ms: millis(settings.max_stale),
                negative_ttl_ms: millis(settings.negative_ttl),
                min_refresh_interval_ms: millis(settings.min_refresh_interval),
                metrics: CacheMetrics::new(),
                fetched,
            }),
        }
    }

    /// The snapshot to answer a check with, fetching it first when nothing usable is cached.
    pub async fn lookup(&self, id: CustomerId) -> Lookup {
        let inner = &self.inner;
        let now = now_ms();
        match self.cached_at(id, now) {
            Some((snapshot, Source::Stale)) => {
                inner.metrics.stale.increment(1);
                self.refresh_in_background(id, &snapshot, now);
                return Lookup::found(snapshot, Source::Stale);
            }
            Some((_, Source::Fallback)) => {
                inner.metrics.fallback.increment(1);
                return Lookup::fallback(false);
            }
            Some((snapshot, source)) => {
                inner.metrics.hit.increment(1);
                return Lookup::found(snapshot, source);
            }
            None => {}
        }
        inner.metrics.miss.increment(1);
        match self.join_or_start_cold_fetch(id).await {
            Ok(snapshot) => Lookup::found(snapshot, Source::Upstream),
            Err(e) => {
                inner.metrics.fallback.increment(1);
                let budget_exhausted = e == FetchError::BudgetExhausted;
                if budget_exhausted {
                    inner.metrics.budget_exhausted.increment(1);
                }
                Lookup::fallback(budget_exhausted)
            }
        }
    }

    /// Fetches the customer now, not joining a fetch that started earlier (it may predate a
    /// change the caller just made), and returns the new snapshot. Waits for a fetch slot
    /// rather than failing: an operator's change must be reflected.
    pub async fn refresh(&self, id: CustomerId) -> Result<Arc<Snapshot>, BillaBearError> {
        let slot = self.inner.fetch_slots.clone().acquire_owned().await.ok();
        match self.start_fetch(id, slot).await {
            Ok(snapshot) => Ok(snapshot),
            Err(FetchError::BillaBear(e)) => Err(e),
            // Not reached: a refresh waited for its slot and is not counted as a cold fetch.
            Err(FetchError::BudgetExhausted) => {
                Err(BillaBearError::Connect("usage-gate's budget of calls to BillaBear is spent".into()))
            }
        }
    }

    /// About how many customers BillaBear does not know are cached here (moka's count, which
    /// may still include a few expired entries).
    pub fn unknown_count(&self) -> u64 {
        self.inner.unknown.entry_count()
    }

    /// Refreshes a cached customer in the background (nothing if it is not cached), at most once
    /// per `cache.min_refresh_interval` and joining a refresh under way, so a burst of calls
    /// (e.g. a customer's events delivered one after another) makes one refresh.
    pub fn refresh_soon(&self, id: CustomerId) {
        if let Some(snapshot) = self.inner.snapshots.get(&id) {
            self.refresh_in_background(id, &snapshot, now_ms());
        }
    }

    /// Drops the customer's snapshot: the next check fetches it, and a fetch that started
    /// before this call is not cached when it ends (it may predate the change that caused it).
    pub fn invalidate(&self, id: CustomerId) {
        let inner = &self.inner;
        let generation = inner.generation.fetch_add(1, Ordering::Relaxed);
        inner.unknown.invalidate(&id);
        let inflight = inner.inflight.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&id);
        if inflight || inner.snapshots.contains_key(&id) {
            let tombstone = Arc::new(Snapshot::tombstone(generation));
            let _ = store_if_newer(&inner.snapshots, id, tombstone);
        }
    }

    /// A lookup from the cache alone: never fetches or refreshes. None when nothing usable is
    /// cached.
    pub fn cached(&self, id: CustomerId) -> Option<Lookup> {
        match self.cached_at(id, now_ms())? {
            (_, Source::Fallback) => None,
            (snapshot, source) => Some(Lookup::found(snapshot, source)),
        }
    }

    /// What the cache holds for `id` that may still be used at `now`, and how: a known customer
    /// (`Cache` while fresh, then `Stale`), one BillaBear does not know (`Cache`), or the marker
    /// of a failed fetch that is too recent to try again (`Fallback`).
    fn cached_at(&self, id: CustomerId, now: u64) -> Option<(Arc<Snapshot>, Source)> {
        let inner = &self.inner;
        if let Some(snapshot) = inner.snapshots.get(&id) {
            let age = snapshot.age_ms(now);
            let source = match snapshot.data {
                SnapshotData::Known(_) if age <= inner.ttl_ms => Some(Source::Cache),
                SnapshotData::Known(_) if age <= inner.max_stale_ms => Some(Source::Stale),
                SnapshotData::Unavailable if age <= inner.min_refresh_interval_ms => Some(Source::Fallback),
                _ => None,
            };
            if let Some(source) = source {
                return Some((snapshot, source));
            }
        }
        let snapshot = inner.unknown.get(&id)?;
        (snapshot.age_ms(now) <= inner.negative_ttl_ms).then_some((snapshot, Source::Cache))
    }

    /// Customers cached, known and unknown (approximate: moka counts lazily).
    pub fn len(&self) -> u64 {
        self.inner.snapshots.run_pending_tasks();
        self.inner.unknown.run_pending_tasks();
        self.inner.snapshots.entry_count() + self.inner.unknown.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts a snapshot in directly (benchmarks and tests that need a warm cache).
    pub fn insert(&self, id: CustomerId, data: SnapshotData) {
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        self.inner.snapshots.insert(id, Arc::new(Snapshot::new(data, now_ms(), generation)));
    }

    /// Starts one background refresh for a stale snapshot, unless one ran too recently or every
    /// fetch slot is taken (the stale snapshot keeps being served; a later check tries again).
    fn refresh_in_background(&self, id: CustomerId, snapshot: &Snapshot, now: u64) {
        let last = snapshot.last_attempt_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.inner.min_refresh_interval_ms {
            return;
        }
        // Only the check that wins this swap starts the refresh.
        if snapshot.last_attempt_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let mut inflight = self.inner.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            if inflight.contains_key(&id) {
                return;
            }
            match self.inner.fetch_slots.clone().try_acquire_owned() {
                Ok(slot) => drop(self.spawn_fetch(id, Some(slot), &mut inflight)),
                Err(_) => self.inner.metrics.budget_exhausted.increment(1),
            }
        }
    }

    /// The fetch already under way for this customer, or a new one if the budget allows: one
    /// of `cache.cold_fetches_per_second` and a free fetch slot.
    fn join_or_start_cold_fetch(&self, id: CustomerId) -> Flight {
        let mut inflight = self.inner.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, flight)) = inflight.get(&id) {
            return flight.clone();
        }
        let slot = self.inner.fetch_slots.clone().try_acquire_owned().ok();
        match slot {
            Some(slot) if self.inner.cold_fetches.check().is_ok() => {
                self.spawn_fetch(id, Some(slot), &mut inflight)
            }
            _ => futures_util::future::ready(Err(FetchError::BudgetExhausted)).boxed().shared(),
        }
    }

    fn start_fetch(&self, id: CustomerId, slot: Option<OwnedSemaphorePermit>) -> Flight {
        let mut inflight = self.inner.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        self.spawn_fetch(id, slot, &mut inflight)
    }

    /// Spawns the fetch as its own task, so it completes (and is cached) even when every caller
    /// waiting on it has gone away; checks that arrive meanwhile join it. It holds its fetch
    /// slot until it ends.
    fn spawn_fetch(
        &self,
        id: CustomerId,
        slot: Option<OwnedSemaphorePermit>,
        inflight: &mut HashMap<CustomerId, (u64, Flight)>,
    ) -> Flight {
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        let runtime = self.inner.runtime.clone();
        let fetching = async move {
            let result = inner.fetch_and_store(id, generation).await;
            drop(slot);
            let mut inflight = inner.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            // A newer fetch (from `refresh`) may have replaced this one; leave that in place.
            if inflight.get(&id).is_some_and(|(g, _)| *g == generation) {
                inflight.remove(&id);
            }
            result
        }
        .in_current_span();
        let task = match runtime {
            Some(runtime) => runtime.spawn(fetching),
            None => tokio::spawn(fetching),
        };
        let flight = async move {
            task.await.unwrap_or_else(|e| {
                Err(FetchError::BillaBear(BillaBearError::Connect(format!("refresh task failed: {e}"))))
            })
        }
        .boxed()
        .shared();
        inflight.insert(id, (generation, flight.clone()));
        flight
    }
}

/// Stores `snapshot` unless the cache holds one of a higher generation; returns what it
/// replaced (`Ok`), or the newer snapshot it left in place (`Err`).
fn store_if_newer(
    cache: &Snapshots,
    id: CustomerId,
    snapshot: Arc<Snapshot>,
) -> Result<Option<Arc<Snapshot>>, Arc<Snapshot>> {
    let mut outcome = Ok(None);
    cache.entry(id).and_compute_with(|current| match current {
        Some(current) if current.value().generation > snapshot.generation => {
            outcome = Err(current.into_value());
            Op::Nop
        }
        current => {
            outcome = Ok(current.map(|c| c.into_value()));
            Op::Put(snapshot)
        }
    });
    outcome
}

impl Inner {
    /// Asks the source (BillaBear: four calls at once) and caches the answer unless a newer one
    /// (or an invalidation) came first. A failure keeps a usable stale snapshot in place; with
    /// nothing usable, it caches the `Unavailable` marker.
    async fn fetch_and_store(&self, id: CustomerId, generation: u64) -> FetchResult {
        let started = Instant::now();
        let result = self.source.fetch(id).await;
        let now = now_ms();
        match result {
            Ok(SnapshotData::NotFound) => {
                self.metrics.refresh_ok.record(started.elapsed().as_secs_f64());
                let snapshot = Arc::new(Snapshot::new(SnapshotData::NotFound, now, generation));
                if self.snapshots.get(&id).is_none_or(|current| current.generation < generation) {
                    self.snapshots.invalidate(&id);
                    self.unknown.insert(id, snapshot.clone());
                }
                Ok(snapshot)
            }
            Ok(data) => {
                self.metrics.refresh_ok.record(started.elapsed().as_secs_f64());
                let snapshot = Arc::new(Snapshot::new(data, now, generation));
                match store_if_newer(&self.snapshots, id, snapshot.clone()) {
                    Ok(before) => {
                        self.unknown.invalidate(&id);
                        if let Some(fetched) = &self.fetched {
                            let told = Fetched { customer: id, before, after: snapshot.clone() };
                            if fetched.try_send(told).is_err() {
                                self.metrics.fetched_dropped.increment(1);
                            }
                        }
                        Ok(snapshot)
                    }
                    // Fetched after this one started: newer data, or an invalidation (then
                    // this answer still serves its callers, who asked before the change).
                    Err(newer) if matches!(newer.data, SnapshotData::Known(_)) => Ok(newer),
                    Err(_) => Ok(snapshot),
                }
            }
            Err(e) => {
                self.metrics.refresh_failed.record(started.elapsed().as_secs_f64());
                tracing::debug!(customer = %id, error = %e, "refresh from BillaBear failed");
                let usable = self.snapshots.get(&id).is_some_and(|s| {
                    matches!(s.data, SnapshotData::Known(_)) && s.age_ms(now) <= self.max_stale_ms
                });
                if !usable {
                    let marker = Arc::new(Snapshot::new(SnapshotData::Unavailable, now, generation));
                    let _ = store_if_newer(&self.snapshots, id, marker);
                }
                Err(e.into())
            }
        }
    }
}
