//! The snapshot model: what a decision is made from. Per customer, what BillaBear said (status,
//! usage limits, cost estimate, the usage-priced subscriptions and their figures) and when, and
//! where an answer's snapshot came from. The cache (`cache`) keeps snapshots; the check, the
//! transitions and enforcement decide on them. Also the clock every decision is timed by.
//!
//! Snapshots are compact (UUID keys, a fixed currency, a boxed slice of limits) because the
//! cache is sized for a million customers.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::domain::{Currency, CustomerId, CustomerStatus, Target};
use crate::entitlements::{Period, Plan};
use crate::policy::{Limit, Reasons, Usage};
use crate::projection::{Metered, Projection};

/// What BillaBear said about a known customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub status: CustomerStatus,
    /// BillaBear's estimate, minor units.
    pub estimate: i64,
    pub currency: Currency,
    pub limits: Box<[Limit]>,
    /// Its usage-priced subscriptions, priced as BillaBear prices them: how pending usage is
    /// projected.
    pub metered: Box<[Metered]>,
    /// Its plan's features, feature limits and user count.
    pub plan: Plan,
    /// Its billing period (none: no active subscription says when it ends).
    pub period: Option<Period>,
}

impl Known {
    /// What the policy decides on, with the estimate `projection` makes of it.
    pub fn usage(&self, projection: &Projection) -> Usage<'_> {
        Usage {
            disabled: self.status.is_disabled(),
            estimate: projection.amount(),
            counted: projection.billabear,
            limits: &self.limits,
            others: Reasons::default(),
        }
    }

    /// What an event of `value` units of `code` sent to `target` adds to the figure of the
    /// subscription it goes to, on BillaBear's counter (not on top of pending usage: see
    /// `enforce::Ledger::price_event` for that); 0 when no price bills the code.
    pub fn price(&self, target: Target, code: &str, value: f64) -> i64 {
        let Some(code) = crate::projection::Code::known(code) else { return 0 };
        self.metered
            .iter()
            .find(|m| {
                m.code == code
                    && match target {
                        Target::Subscription(s) => m.subscription == s,
                        Target::Customer(_) => m.takes_customer_events,
                    }
            })
            .and_then(|m| Some(m.cost_of(m.usage_of(value, 1)?)))
            .unwrap_or(0)
    }

    /// The targets usage of the customer `id` is sent to: itself and its usage subscriptions.
    pub fn targets(&self, id: CustomerId) -> impl Iterator<Item = Target> + '_ {
        std::iter::once(Target::Customer(id))
            .chain(self.metered.iter().map(|m| Target::Subscription(m.subscription)))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotData {
    Known(Known),
    /// BillaBear answered 404.
    NotFound,
    /// BillaBear could not be asked and there was nothing usable to fall back on.
    Unavailable,
}

#[derive(Debug)]
pub struct Snapshot {
    /// When BillaBear answered (Unix ms); for `Unavailable`, when it failed to.
    pub fetched_at_ms: u64,
    /// The last refresh attempt (Unix ms), successful or not; bounds refreshes per customer.
    pub(crate) last_attempt_ms: AtomicU64,
    /// When the fetch that made it started, in the cache's own order (see `cache`):
    /// a snapshot never replaces one with a higher generation, so a slow fetch that began
    /// before a change cannot overwrite what was fetched after it.
    pub(crate) generation: u64,
    pub data: SnapshotData,
}

impl Snapshot {
    pub(crate) fn new(data: SnapshotData, now: u64, generation: u64) -> Self {
        Self { fetched_at_ms: now, last_attempt_ms: AtomicU64::new(now), generation, data }
    }

    /// A snapshot as fetched at `at` (Unix ms): for tests and tools that build decisions.
    pub fn fetched_at(data: SnapshotData, at: u64) -> Self {
        Self::new(data, at, 0)
    }

    /// Left by an invalidation: never usable (an `Unavailable` marker from the epoch), it only
    /// holds the invalidation's generation, so fetches that started before it are not cached.
    pub(crate) fn tombstone(generation: u64) -> Self {
        Self::new(SnapshotData::Unavailable, 0, generation)
    }

    pub fn age_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.fetched_at_ms)
    }
}

/// Where an answer's data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A fresh cached snapshot.
    Cache,
    /// Fetched from BillaBear for this answer.
    Upstream,
    /// Older than `cache.ttl`, served while a refresh runs.
    Stale,
    /// Nothing usable: the fallback policy answered.
    Fallback,
}

impl Source {
    /// The wire form (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Upstream => "upstream",
            Source::Stale => "stale",
            Source::Fallback => "fallback",
        }
    }
}

/// The result of a lookup: a snapshot to decide on (none: use the fallback policy).
#[derive(Debug, Clone)]
pub struct Lookup {
    pub snapshot: Option<Arc<Snapshot>>,
    pub source: Source,
    /// No snapshot because usage-gate's own bound on BillaBear calls was reached (BillaBear was
    /// not asked), rather than because BillaBear failed.
    pub budget_exhausted: bool,
}

impl Lookup {
    pub fn found(snapshot: Arc<Snapshot>, source: Source) -> Self {
        Self { snapshot: Some(snapshot), source, budget_exhausted: false }
    }

    pub fn fallback(budget_exhausted: bool) -> Self {
        Self { snapshot: None, source: Source::Fallback, budget_exhausted }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_stay_compact() {
        // The cache holds a million of these; growing them is a decision, not an accident.
        // 96: the metered subscriptions (a boxed slice) joined the limits for pending usage;
        // 104: the plan (a pointer to a copy its customers share); 112: the billing period
        // feature limits are counted over (two u32, not two i64: 128).
        assert!(std::mem::size_of::<Snapshot>() <= 112, "{}", std::mem::size_of::<Snapshot>());
        assert_eq!(std::mem::size_of::<Limit>(), 32);
        assert!(std::mem::size_of::<Metered>() <= 40, "{}", std::mem::size_of::<Metered>());
    }
}
