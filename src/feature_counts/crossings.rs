//! `feature_limit.reached` and `feature_limit.reset`: told once per customer, feature and window,
//! whichever replica sees the count reach the limit first (the row in `feature_limit_crossings`
//! is the dedupe record, and its statement queues the webhook), and once when that window ends.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;

use super::{Changed, FeatureCounts};
use crate::cache::SnapshotCache;
use crate::domain::{CustomerId, Target};
use crate::entitlements::{Counted, EntitlementSettings, FeatureCode};
use crate::snapshot::SnapshotData;
use crate::subscriptions::Subscriptions;

/// How often ended windows are looked for: a reset is told within this of the window's end.
const RESETS_EVERY: Duration = Duration::from_secs(1);

/// What judges each change of the counts' copy against the customer's cached plan.
pub struct Crossings {
    pub pool: PgPool,
    pub counts: FeatureCounts,
    pub cache: SnapshotCache,
    pub subscriptions: Subscriptions,
    pub settings: EntitlementSettings,
}

impl Crossings {
    /// Tells each limit reached as the copy changes, and each reset as windows end. Runs until
    /// aborted.
    pub async fn watch(self, mut changes: mpsc::Receiver<Changed>) {
        // Told already by this replica (skips the statement; the table dedupes across replicas).
        let mut told: HashSet<(CustomerId, FeatureCode, i64)> = HashSet::new();
        let mut resets = tokio::time::interval(RESETS_EVERY);
        loop {
            tokio::select! {
                Some(changed) = changes.recv() => self.changed(changed.key, &mut told).await,
                _ = resets.tick() => {
                    match reset_ended(&self.pool).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(windows = n, "feature limits: windows ended, resets told"),
                        Err(e) => tracing::warn!(error = %e, "feature limits: cannot tell resets"),
                    }
                }
                else => break,
            }
        }
    }

    async fn changed(&self, target: Target, told: &mut HashSet<(CustomerId, FeatureCode, i64)>) {
        let Some(customer) = target.customer(|s| self.subscriptions.owner(s)) else { return };
        let Some(lookup) = self.cache.cached(customer) else { return };
        let Some(snapshot) = lookup.snapshot else { return };
        let SnapshotData::Known(known) = &snapshot.data else { return };
        let now = Utc::now();
        for feature in known.plan.features() {
            let Some(limit) = feature.limit() else { continue };
            let counted = self.counts.counted(customer, known, feature.code, &self.settings, now);
            if counted.used < limit as f64 || !told.insert((customer, feature.code, counted.bounds.start)) {
                continue;
            }
            if let Err(e) = reached(&self.pool, customer, feature.code, limit, &counted).await {
                told.remove(&(customer, feature.code, counted.bounds.start));
                tracing::warn!(%customer, feature = feature.code.as_str(), error = %e, "feature limits: cannot record a limit reached");
            }
        }
        // Bounded: a window's entries are of no use once it ended.
        if told.len() > 100_000 {
            told.clear();
        }
    }
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

/// Records the limit reached in this window and queues `feature_limit.reached`, unless a
/// replica did before.
async fn reached(
    pool: &PgPool,
    customer: CustomerId,
    feature: FeatureCode,
    limit: u64,
    counted: &Counted,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH new AS (
             INSERT INTO feature_limit_crossings (customer_id, code, window_start, window_end, \"limit\")
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
             RETURNING customer_id, code, window_start, window_end, \"limit\")
         SELECT queue_webhooks('feature_limit.reached', customer_id, jsonb_build_object(
                    'customer_id', customer_id, 'code', code, 'limit', \"limit\", 'used', $6::float8,
                    'window', $7::text, 'window_start', window_start, 'resets_at', window_end))
         FROM new",
    )
    .bind(customer.as_uuid())
    .bind(feature.as_str())
    .bind(at(counted.bounds.start))
    .bind(at(counted.bounds.end))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(counted.used)
    .bind(counted.window.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the reached limits whose window ended and queues `feature_limit.reset` for each (one
/// replica's statement takes each row).
async fn reset_ended(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let told: Vec<i32> = sqlx::query_scalar(
        "WITH ended AS (
             UPDATE feature_limit_crossings SET reset_at = now()
             WHERE reset_at IS NULL AND window_end <= now()
             RETURNING customer_id, code, window_start, window_end, \"limit\")
         SELECT queue_webhooks('feature_limit.reset', customer_id, jsonb_build_object(
                    'customer_id', customer_id, 'code', code, 'limit', \"limit\",
                    'window_start', window_start, 'window_end', window_end))
         FROM ended",
    )
    .fetch_all(pool)
    .await?;
    Ok(told.len() as u64)
}
