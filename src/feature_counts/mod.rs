//! Feature limits usage-gate counts (`entitlements`): the `value` of accepted events summed per
//! target, feature and window.
//!
//! - **Postgres holds the counts** (`feature_usage`), written by the statement that stores the
//!   events (`outbox::store`), so replicas share them, they survive restarts and a duplicate
//!   `event_id` counts once. A billing-period window is placed by the customer's period as
//!   its last fetch recorded it ([`FeatureCounts::record_period`]).
//! - **Memory holds a copy** per target (a [`Mirror`]: each target's newest window per
//!   feature some plan names), read by the check without I/O, reloaded for the targets each
//!   commit names, and in full when a fetch meets a feature no plan named before.
//!   Which window is current is the clock's to say, so a window's end restarts its count on
//!   every replica as soon as it passes, with no message to wait for.

pub mod crossings;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::domain::{CustomerId, Target};
use crate::entitlements::{Counted, EntitlementSettings, FeatureCode};
use crate::mirror::{self, Mirror, Started};
use crate::snapshot::Known;

/// A target's count of one feature in one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    pub feature: FeatureCode,
    /// The window's start, Unix seconds.
    pub start: i64,
    pub units: f64,
}

/// A target's counts changed in this replica's copy.
pub type Changed = mirror::Change<Target, Box<[Count]>>;

/// Cheap to clone; clones share one copy.
#[derive(Clone)]
pub struct FeatureCounts {
    counts: Mirror<Target, Box<[Count]>>,
    pool: PgPool,
    /// Feature codes interned when the copy was last loaded in full.
    features: Arc<AtomicUsize>,
}

impl FeatureCounts {
    /// Starts keeping the copy up to date; `changes` tells of every change to it (for
    /// [`crossings`]).
    pub fn start(pool: PgPool) -> Started<Self, mpsc::Receiver<Changed>> {
        let load: mirror::Loader<Target, Box<[Count]>> = |pool, targets| store::load(pool, targets).boxed();
        let Started { service: counts, changes, tasks, listening } =
            Mirror::start_telling(pool.clone(), store::NOTIFY_CHANNEL, "feature counts", load);
        let features = Arc::new(AtomicUsize::new(FeatureCode::interned()));
        Started { service: Self { counts, pool, features }, changes, tasks, listening }
    }

    /// What the customer used of `feature` in its current window at `now`: the counts of its
    /// targets (itself and its usage subscriptions) in that window.
    pub fn counted(
        &self,
        customer: CustomerId,
        known: &Known,
        feature: FeatureCode,
        settings: &EntitlementSettings,
        now: DateTime<Utc>,
    ) -> Counted {
        let (window, bounds) = settings.placed(feature, now, known.period);
        Counted { used: self.used(customer, known, feature, bounds.start), window, bounds }
    }

    /// What the customer's targets counted of `feature` in the window starting at `start`.
    pub fn used(&self, customer: CustomerId, known: &Known, feature: FeatureCode, start: i64) -> f64 {
        known
            .targets(customer)
            .filter_map(|target| self.counts.with(target, |counts| in_window(counts, feature, start)))
            // From 0.0: `sum` of nothing is -0.0, shown as "-0".
            .fold(0.0, |sum, units| sum + units)
    }

    /// Reads the targets' counts now, after this replica stored events for them: its next
    /// check sees them without waiting for the notification.
    pub async fn reload(&self, targets: &[Target]) {
        if let Err(e) = self.counts.reload_keys(targets).await {
            tracing::warn!(error = %e, "feature counts: cannot reload; the notification will");
        }
    }

    /// Records the customer's billing period under its id and its usage subscriptions', where
    /// events counted over it are placed (a period unchanged is not written again), and moves
    /// what was counted before usage-gate knew it into the current period.
    pub async fn record_period(&self, customer: CustomerId, known: &Known) {
        let interned = FeatureCode::interned();
        if self.features.swap(interned, Ordering::Relaxed) != interned
            && let Err(e) = self.counts.reload_all().await
        {
            tracing::warn!(error = %e, "feature counts: cannot reload for a new feature; the next fetch will");
            self.features.store(0, Ordering::Relaxed);
        }
        let Some(period) = known.period else { return };
        let targets: Vec<Target> = known.targets(customer).collect();
        let now = Utc::now();
        let current = DateTime::from_timestamp(period.current(now.timestamp()).start, 0).unwrap_or(now);
        if let Err(e) = store::record_period(&self.pool, &targets, period, current).await {
            tracing::warn!(%customer, error = %e, "feature counts: cannot record the billing period; events are placed by the one recorded before");
        }
    }
}

/// A target's count of `feature` in the window starting at `start`.
pub fn in_window(counts: &[Count], feature: FeatureCode, start: i64) -> f64 {
    counts.iter().filter(|c| c.feature == feature && c.start == start).fold(0.0, |sum, c| sum + c.units)
}
