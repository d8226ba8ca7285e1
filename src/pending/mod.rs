//! Pending usage: what usage-gate accepted that BillaBear's counter has not counted yet, so a
//! check can judge the projected estimate (`projection`) instead of a figure a minute old.
//!
//! - **Postgres holds the ledger.** Every outbox row counts from its acceptance until it is
//!   retired; triggers keep `pending_usage` (sums per target and metric code, plus the deltas
//!   commits append, folded in every second) equal to the outbox and NOTIFY every replica of the
//!   targets that changed (`store`).
//! - **Memory holds a copy** per target (a [`Mirror`]), read on the check's path without I/O. It is reloaded
//!   from `pending_usage` for the targets a notification names, in full when listening starts
//!   (so a restarted replica, or one whose LISTEN connection broke, rebuilds it), and for a
//!   customer's targets whenever it is fetched.
//! - **Fetches retire.** Before a fetched snapshot is cached, the growth of each subscription's
//!   counter since the last figure any replica recorded retires that much of the oldest events
//!   delivered to it (`fetch`, [`Pending::settle`]); old delivered events no growth matched expire after
//!   `pending.max_age`.

pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::config::PendingSettings;
use crate::db;
use crate::domain::{CustomerId, SubscriptionId, Target};
use crate::mirror::{self, Mirror, Started};
use crate::projection::{self, Figures, Found, Metered, PendingUsage, Projection};
use crate::snapshot::Known;
use store::Observation;

/// The units and events pending for one of `customer`'s usage subscriptions: those sent to it,
/// plus those sent to the customer when it takes them. `under` gives a target's, for `m`'s code.
pub fn pending_for(
    customer: CustomerId,
    m: &Metered,
    mut under: impl FnMut(Target) -> (f64, u64),
) -> (f64, u64) {
    let (mut units, mut events) = under(Target::Subscription(m.subscription));
    if m.takes_customer_events {
        let (u, e) = under(Target::Customer(customer));
        units += u;
        events += e;
    }
    (units, events)
}

/// A target's pending usage changed in this replica's copy (for decision transitions).
pub type Changed = mirror::Change<Target, Box<[PendingUsage]>>;

/// Targets are counted by kind, so a check skips the lookups of a kind there is none of
/// (events are often sent by one kind only).
impl mirror::Key for Target {
    fn kind(&self) -> usize {
        match self {
            Target::Customer(_) => 0,
            Target::Subscription(_) => 1,
        }
    }

    fn notified(payloads: &[String]) -> Vec<Self> {
        let mut targets: Vec<Target> = payloads.iter().flat_map(|p| store::parse_targets(p)).collect();
        targets.sort_unstable();
        targets.dedup();
        targets
    }
}

const CUSTOMERS: usize = 0;
const SUBSCRIPTIONS: usize = 1;

/// Cheap to clone; clones share one copy of the ledger.
#[derive(Clone)]
pub struct Pending {
    /// Beside `inner`, not in it: a warm check reads it, one pointer fewer.
    ledger: Mirror<Target, Box<[PendingUsage]>>,
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    settings: PendingSettings,
    /// To [`settle_in_batches`]: the fetches that settle meanwhile share one transaction.
    batches: mpsc::UnboundedSender<Batch>,
}

/// One fetch's observations, with when it began, and where their outcomes go.
struct Batch {
    observations: Vec<Observation>,
    started: chrono::DateTime<Utc>,
    reply: oneshot::Sender<Vec<store::Batched>>,
}

impl Pending {
    /// Starts keeping the copy up to date (LISTEN, reloads) and expiring old delivered events.
    /// `changes` tells of every change applied to the copy.
    pub fn start(pool: PgPool, settings: PendingSettings) -> Started<Self, mpsc::Receiver<Changed>> {
        let load: mirror::Loader<Target, Box<[PendingUsage]>> = |pool, targets| {
            async move {
                let loaded = store::load(pool, targets).await?;
                Ok(loaded.into_iter().map(|(target, entries)| (target, entries.into_boxed_slice())).collect())
            }
            .boxed()
        };
        let Started { service: ledger, changes, mut tasks, listening } =
            Mirror::start_telling(pool.clone(), store::NOTIFY_CHANNEL, "pending", load);
        let (batches, batched) = mpsc::unbounded_channel();
        tasks.push(
            tokio::spawn(settle_in_batches(pool.clone(), settings.settle_timeout, batched)).abort_handle(),
        );
        let inner = Arc::new(Inner { pool, settings, batches });
        tasks.push(tokio::spawn(upkeep(inner.clone())).abort_handle());
        Started { service: Self { ledger, inner }, changes, tasks, listening }
    }

    /// What Postgres holds now as pending under `target`, past this replica's copy (which
    /// learns of a commit a moment after it).
    pub async fn current(&self, target: Target) -> Result<Vec<PendingUsage>, sqlx::Error> {
        let mut loaded = store::load(&self.inner.pool, Some(&[target])).await?;
        Ok(loaded.remove(&target).unwrap_or_default())
    }

    /// This replica's copy of what is pending under `target`.
    pub fn entries(&self, target: Target) -> Vec<PendingUsage> {
        self.ledger.with(target, |entries| entries.to_vec()).unwrap_or_default()
    }

    /// The customer's projected estimate: BillaBear's figure plus its pending usage.
    pub fn project(&self, customer: CustomerId, known: &Known) -> Projection {
        self.project_replacing(customer, known, None)
    }

    /// As [`Pending::project`], with `replaced`'s target read as holding its entries instead.
    pub fn project_replacing(
        &self,
        customer: CustomerId,
        known: &Known,
        replaced: Option<(Target, &[PendingUsage])>,
    ) -> Projection {
        let ledger = &self.ledger;
        let any_customers = ledger.any(CUSTOMERS);
        let any_subscriptions = ledger.any(SUBSCRIPTIONS);
        if replaced.is_none() && !any_customers && !any_subscriptions {
            return Projection::counted(known.estimate);
        }
        projection::project(known.estimate, &known.metered, |m: &Metered| {
            let of = |entries: &[PendingUsage]| projection::pending_of(entries, m.code);
            let pending_under = |target: Target| match replaced {
                Some((t, entries)) if t == target => of(entries),
                _ => ledger.with(target, |entries| of(entries)).unwrap_or((0.0, 0)),
            };
            pending_for(customer, m, |target| {
                let any = match target {
                    Target::Customer(_) => any_customers,
                    Target::Subscription(_) => any_subscriptions,
                };
                if any || replaced.is_some() { pending_under(target) } else { (0.0, 0) }
            })
        })
    }

    /// Records what a fetch that began at `started` saw of each metered subscription's counter
    /// (in a batch with other fetches', [`store::observe_batch`]), retiring what it shows was
    /// counted; then, if it retired any, reloads the customer's targets, so the snapshot is
    /// never used with usage it already counts. `new_code`: the fetch interned a metric code,
    /// so pending usage the copy skipped until now is read in full. Gives up after
    /// `pending.settle_timeout` (Postgres slow or down): the fetch is used anyway, and the
    /// retirement happens at a later fetch. Returns the last different figures recorded per
    /// subscription.
    pub async fn settle(
        &self,
        customer: CustomerId,
        found: &[Found<'_>],
        started: chrono::DateTime<Utc>,
        new_code: bool,
    ) -> HashMap<SubscriptionId, Figures> {
        let observations = observations(customer, found);
        let inner = &self.inner;
        let settling = async {
            let observed = self.observe(&observations, started).await?;
            let previous: HashMap<SubscriptionId, Figures> = observations
                .iter()
                .zip(&observed)
                .filter_map(|(o, observed)| observed.previous.map(|figures| (o.subscription, figures)))
                .collect();
            // A new code: the copy skipped every target's pending usage with it (`store::entry`).
            // Otherwise only what this fetch retired could be counted twice (by the snapshot
            // and as pending): with nothing retired the copy is already right, and a cold
            // customer (nothing delivered yet) skips the reload, which runs one at a time.
            if new_code {
                self.ledger.reload_all().await?;
            } else if observed.iter().any(|o| o.retired > 0) {
                let mut targets: Vec<Target> =
                    observations.iter().map(|o| Target::Subscription(o.subscription)).collect();
                targets.push(Target::Customer(customer));
                self.ledger.reload_keys(&targets).await?;
            }
            Ok::<_, sqlx::Error>(previous)
        };
        match tokio::time::timeout(inner.settings.settle_timeout, settling).await {
            Ok(Ok(previous)) => previous,
            Ok(Err(e)) => {
                tracing::warn!(%customer, error = %e, "pending: cannot record BillaBear's counters; pending usage may count twice until the next fetch");
                HashMap::new()
            }
            Err(_) => {
                tracing::warn!(%customer, "pending: recording BillaBear's counters timed out (pending.settle_timeout_ms)");
                HashMap::new()
            }
        }
    }

    /// Records the observations, in a batch with other fetches' where it can, and each of the
    /// rest on its own (all at once).
    async fn observe(
        &self,
        observations: &[Observation],
        started: chrono::DateTime<Utc>,
    ) -> Result<Vec<store::Observed>, sqlx::Error> {
        if observations.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, outcomes) = oneshot::channel();
        let batch = Batch { observations: observations.to_vec(), started, reply };
        let outcomes = match self.inner.batches.send(batch) {
            Ok(()) => outcomes.await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let pool = &self.inner.pool;
        futures_util::future::try_join_all(observations.iter().enumerate().map(|(i, observation)| {
            let batched = outcomes.get(i).copied().unwrap_or(store::Batched::Alone);
            async move {
                match batched {
                    store::Batched::Done(observed) => Ok(observed),
                    store::Batched::Alone => store::observe(pool, observation, started).await,
                }
            }
        }))
        .await
    }
}

/// The most fetches whose observations one settling transaction records.
const MAX_BATCH: usize = 512;

/// Records the observations of the fetches that settle meanwhile in one transaction
/// ([`store::observe_batch`]); while one runs, the next gathers. One at a time: two at once
/// were slower on this 2-core machine (1,000 cold customers in 0.71–1.13 s against
/// 0.60–0.67 s, `bench/check.py --cold-only`), each batch then waiting for a busier Postgres.
/// A failed or timed-out batch leaves its observations to be recorded each on its own (where
/// a failure is that one's).
async fn settle_in_batches(pool: PgPool, timeout: Duration, mut batches: mpsc::UnboundedReceiver<Batch>) {
    let mut waiting = Vec::new();
    while batches.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        settle_batch(&pool, timeout, std::mem::take(&mut waiting)).await;
    }
}

/// Settles one batch and tells each fetch its outcomes.
async fn settle_batch(pool: &PgPool, timeout: Duration, fetches: Vec<Batch>) {
    let observed: Vec<(&Observation, chrono::DateTime<Utc>)> =
        fetches.iter().flat_map(|b| b.observations.iter().map(|o| (o, b.started))).collect();
    metrics::histogram!("usage_gate_pending_settle_batch").record(observed.len() as f64);
    let mut outcomes = match tokio::time::timeout(timeout, store::observe_batch(pool, &observed)).await {
        Ok(Ok(outcomes)) => outcomes.into_iter(),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, observations = observed.len(), "pending: a batch of observations failed; recording each alone");
            Vec::new().into_iter()
        }
        Err(_) => Vec::new().into_iter(),
    };
    for fetch in fetches {
        let mine: Vec<store::Batched> = outcomes.by_ref().take(fetch.observations.len()).collect();
        let _ = fetch.reply.send(mine);
    }
}

/// How often the deltas commits append are folded into the sums.
const FOLD_EVERY: Duration = Duration::from_secs(1);
/// How often the ledger's tables are vacuumed if they need it (see [`db::vacuum_busy`]).
const VACUUM_EVERY: Duration = Duration::from_secs(5);

/// Folds the ledger's deltas every [`FOLD_EVERY`], vacuums its tables every [`VACUUM_EVERY`],
/// and retires delivered events older than `pending.max_age` that no counter growth matched.
async fn upkeep(inner: Arc<Inner>) {
    let expire_every = (inner.settings.max_age / 4).min(Duration::from_secs(60));
    let mut expired_at = tokio::time::Instant::now();
    let mut vacuumed_at = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(FOLD_EVERY).await;
        if let Err(e) = store::fold(&inner.pool).await {
            tracing::warn!(error = %e, "pending: cannot fold the ledger's deltas");
        }
        if vacuumed_at.elapsed() >= VACUUM_EVERY {
            vacuumed_at = tokio::time::Instant::now();
            match db::vacuum_busy(&inner.pool, store::BUSY_TABLES).await {
                Ok(tables) if !tables.is_empty() => tracing::debug!(?tables, "pending: vacuumed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pending: cannot vacuum the ledger's tables"),
            }
        }
        if expired_at.elapsed() < expire_every {
            continue;
        }
        expired_at = tokio::time::Instant::now();
        match store::expire(&inner.pool, inner.settings.max_age).await {
            Ok(0) => {}
            Ok(expired) => {
                tracing::info!(expired, "pending: delivered events no counter growth matched stop counting")
            }
            Err(e) => tracing::warn!(error = %e, "pending: cannot expire old delivered events"),
        }
    }
}

/// What a fetch shows of each usage subscription's counter.
fn observations(customer: CustomerId, found: &[Found<'_>]) -> Vec<Observation> {
    found
        .iter()
        .map(|f| Observation {
            customer,
            subscription: f.subscription,
            code: f.code.to_owned(),
            aggregation: f.aggregation,
            figures: f.figures,
        })
        .collect()
}
