//! The feature counts' tables: reading them, the billing periods events are placed by, pruning.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::Count;
use crate::domain::Target;
use crate::entitlements::{FeatureCode, Period};
use crate::pending::store::{target_key, target_of};

/// Named by the statement that counts (`feature_usage_notify`, in the migration).
pub const NOTIFY_CHANNEL: &str = "usage_gate_feature_usage";

/// Each target's newest window per feature: of `targets`, or of every target when None.
pub async fn load(
    pool: &PgPool,
    targets: Option<&[Target]>,
) -> Result<HashMap<Target, Box<[Count]>>, sqlx::Error> {
    let ids: Option<Vec<Uuid>> = targets.map(|t| t.iter().map(|t| target_key(*t).1).collect());
    let rows = sqlx::query(
        "SELECT DISTINCT ON (target, kind, code) kind::text AS kind, target, code,
                extract(epoch FROM window_start)::int8 AS start, units::float8 AS units
         FROM feature_usage WHERE NOT provisional AND ($1::uuid[] IS NULL OR target = ANY($1))
         ORDER BY target, kind, code, window_start DESC",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut counts: HashMap<Target, Vec<Count>> = HashMap::new();
    for row in rows {
        let kind: String = row.try_get("kind")?;
        let id: Uuid = row.try_get("target")?;
        let target = target_of(&kind, id);
        // Every code is counted; the copy keeps those a plan has limited (see `FeatureCounts`).
        let code: String = row.try_get("code")?;
        let Some(feature) = FeatureCode::known(&code) else { continue };
        counts.entry(target).or_default().push(Count {
            feature,
            start: row.try_get("start")?,
            units: row.try_get("units")?,
        });
    }
    // A target asked about with no counts left is dropped from the copy.
    Ok(counts.into_iter().map(|(target, counts)| (target, counts.into_boxed_slice())).collect())
}

/// A billing period as Postgres stores it.
fn period_times(period: Period) -> (DateTime<Utc>, DateTime<Utc>) {
    let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap_or_default();
    (at(period.start()), at(period.end()))
}

/// Records `period` for each target (skipping rows that hold it already), and moves what was
/// counted for them before any period was recorded (`provisional`, `outbox::store`) into the
/// period's window starting at `current`: an event stored while the first period was being
/// recorded is moved by the next fetch.
pub async fn record_period(
    pool: &PgPool,
    targets: &[Target],
    period: Period,
    current: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = targets.iter().map(|t| target_key(*t).1).collect();
    let (starts, ends) = period_times(period);
    sqlx::query(
        "WITH recorded AS (
             INSERT INTO billing_periods (target, starts_at, ends_at)
             SELECT t, $2, $3 FROM unnest($1::uuid[]) AS t ORDER BY t
             ON CONFLICT (target) DO UPDATE SET starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
                                                recorded_at = now()
             WHERE (billing_periods.starts_at, billing_periods.ends_at)
                   IS DISTINCT FROM (EXCLUDED.starts_at, EXCLUDED.ends_at)),
         moved AS (
             DELETE FROM feature_usage WHERE target = ANY($1) AND provisional
             RETURNING kind, target, code, units),
         merged AS (
             INSERT INTO feature_usage AS u (kind, target, code, window_start, units)
             SELECT kind, target, code, $4, sum(units) FROM moved GROUP BY 1, 2, 3 ORDER BY 2, 1, 3
             ON CONFLICT (target, kind, code, window_start, provisional) DO UPDATE SET units = u.units + EXCLUDED.units
             RETURNING kind, target)
         SELECT feature_usage_notify(array_agg(DISTINCT kind || target::text)) FROM merged",
    )
    .bind(ids)
    .bind(starts)
    .bind(ends)
    .bind(current)
    .execute(pool)
    .await?;
    Ok(())
}
