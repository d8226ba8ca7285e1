//! The pending ledger in Postgres: the outbox rows not yet retired, summed per target by the
//! triggers of migration `20261128000003` into `pending_usage`, and BillaBear's counters as last
//! seen (`billabear_counters`), against which growth is retired once, whichever replica sees it.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::Target;
use crate::domain::{CustomerId, SubscriptionId};
use crate::projection::{self, Aggregation, Code, Figures, PendingUsage, Settle, settle};

/// Sent (by the triggers) at the commit of every change to pending usage; the payload lists the
/// changed targets (`c<uuid>` or `s<uuid>`, comma-separated).
pub const NOTIFY_CHANNEL: &str = "usage_gate_pending";

pub fn target_key(target: Target) -> (&'static str, Uuid) {
    match target {
        Target::Customer(c) => ("c", c.as_uuid()),
        Target::Subscription(s) => ("s", s.as_uuid()),
    }
}

/// The targets a notification names; malformed parts are skipped.
pub fn parse_targets(payload: &str) -> Vec<Target> {
    payload
        .split(',')
        .filter_map(|key| {
            let (kind, id) = key.split_at_checked(1)?;
            let id = Uuid::parse_str(id).ok()?;
            match kind {
                "c" => Some(Target::Customer(CustomerId::from(id))),
                "s" => Some(Target::Subscription(SubscriptionId::from(id))),
                _ => None,
            }
        })
        .collect()
}

/// Pending usage per target: of `targets`, or of every target with any when None.
pub async fn load<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    targets: Option<&[Target]>,
) -> Result<HashMap<Target, Vec<PendingUsage>>, sqlx::Error> {
    // Two statements, not one with `$1 IS NULL OR`: that one scans the whole table. Each reads
    // the folded sums and the deltas not folded yet in one snapshot.
    let rows =
        match targets {
            Some(targets) => {
                let ids: Vec<Uuid> = targets.iter().map(|t| target_key(*t).1).collect();
                sqlx::query(
                "SELECT kind, target, code, sum(units)::float8 AS units, sum(events)::bigint AS events FROM (
                     SELECT kind, target, code, units, events FROM pending_usage WHERE target = ANY($1)
                     UNION ALL
                     SELECT kind, target, code, units, events FROM pending_usage_deltas WHERE target = ANY($1)
                 ) AS p
                 GROUP BY kind, target, code HAVING sum(events) <> 0",
            )
            .bind(ids)
            .fetch_all(conn)
            .await?
            }
            None => sqlx::query(
                "SELECT kind, target, code, sum(units)::float8 AS units, sum(events)::bigint AS events FROM (
                     SELECT kind, target, code, units, events FROM pending_usage
                     UNION ALL
                     SELECT kind, target, code, units, events FROM pending_usage_deltas
                 ) AS p
                 GROUP BY kind, target, code HAVING sum(events) <> 0",
            )
            .fetch_all(conn)
            .await?,
        };
    let mut ledger: HashMap<Target, Vec<PendingUsage>> = HashMap::new();
    for row in rows {
        let kind: String = row.try_get("kind")?;
        let code: String = row.try_get("code")?;
        if let Some((target, usage)) =
            entry(&kind, row.try_get("target")?, &code, row.try_get("units")?, row.try_get("events")?)
        {
            ledger.entry(target).or_default().push(usage);
        }
    }
    Ok(ledger)
}

/// One row of pending usage as the copy keeps it. A code no listed price bills is priced by
/// no subscription: not kept (a customer fetched later with such a price interns the code,
/// then reloads its targets).
pub fn entry(kind: &str, id: Uuid, code: &str, units: f64, events: i64) -> Option<(Target, PendingUsage)> {
    let code = Code::known(code)?;
    Some((target_of(kind, id), PendingUsage { code, units, events: u64::try_from(events).unwrap_or(0) }))
}

/// The target a row's `kind` ('c' a customer, 's' a subscription) and id name.
pub fn target_of(kind: &str, id: Uuid) -> Target {
    if kind == "c" {
        Target::Customer(CustomerId::from(id))
    } else {
        Target::Subscription(SubscriptionId::from(id))
    }
}

/// A subscription's counter as one fetch saw it.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Whose subscription it is (events sent by customer count for it too).
    pub customer: CustomerId,
    pub subscription: SubscriptionId,
    /// Its price's metric: only events of this code count.
    pub code: String,
    pub aggregation: Aggregation,
    pub figures: Figures,
}

/// Records what a fetch that began at `started` saw of a subscription's counter, retiring the
/// delivered events it shows were counted (see [`Settle`]).
pub async fn observe(
    pool: &PgPool,
    observation: &Observation,
    started: DateTime<Utc>,
) -> Result<Observed, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut retired = 0;
    let subscription = observation.subscription.as_uuid();
    let Figures { usage, amount } = observation.figures;
    let inserted = sqlx::query(
        "INSERT INTO billabear_counters (subscription_id, usage, amount, observed_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (subscription_id) DO NOTHING",
    )
    .bind(subscription)
    .bind(usage)
    .bind(amount)
    .bind(started)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    // The figure recorded before this one (none: this is the first), when its fetch began, and
    // the last figures before it that differ from these (for a marginal rate).
    let (recorded, previous) = if inserted {
        (None, None)
    } else {
        let row = sqlx::query(
            "SELECT usage, amount, observed_at, prev_usage, prev_amount FROM billabear_counters
             WHERE subscription_id = $1 FOR UPDATE",
        )
        .bind(subscription)
        .fetch_one(&mut *tx)
        .await?;
        let seen = Figures { usage: row.try_get("usage")?, amount: row.try_get("amount")? };
        let observed: DateTime<Utc> = row.try_get("observed_at")?;
        let older = match (
            row.try_get::<Option<f64>, _>("prev_usage")?,
            row.try_get::<Option<i64>, _>("prev_amount")?,
        ) {
            (Some(usage), Some(amount)) => Some(Figures { usage, amount }),
            _ => None,
        };
        (Some((seen.usage, observed)), if seen.usage == usage { older } else { Some(seen) })
    };
    let decision =
        settle(recorded.map(|(seen, at)| (seen, at.timestamp_millis())), usage, started.timestamp_millis());
    match decision {
        Settle::Stale => return Ok(Observed { previous, retired }),
        Settle::Unchanged => {}
        Settle::First => {
            retire(&mut tx, observation, started, f64::INFINITY, &mut retired).await?;
        }
        Settle::Grew(delta) => {
            let mut left = delta - retire(&mut tx, observation, started, delta, &mut retired).await?;
            // What is left may be events BillaBear counted whose delivery usage-gate recorded
            // only after this fetch began, or is still recording (its 201 came, the row is not
            // marked yet): match it against those too, waiting a moment for deliveries under way.
            for wait in 0..=IN_FLIGHT_WAITS {
                if left < 1e-9 * delta.max(1.0) {
                    break;
                }
                left -= retire(&mut tx, observation, Utc::now(), left, &mut retired).await?;
                if wait == IN_FLIGHT_WAITS || !in_flight(&mut tx, observation).await? {
                    break;
                }
                tokio::time::sleep(IN_FLIGHT_PAUSE).await;
            }
        }
        Settle::Reset(usage) => {
            if let Some((_, observed)) = recorded {
                retire(&mut tx, observation, observed, f64::INFINITY, &mut retired).await?;
            }
            retire(&mut tx, observation, started, usage, &mut retired).await?;
        }
    }
    if !inserted {
        sqlx::query(
            "UPDATE billabear_counters
             SET prev_usage = CASE WHEN usage <> $2 THEN usage ELSE prev_usage END,
                 prev_amount = CASE WHEN usage <> $2 THEN amount ELSE prev_amount END,
                 usage = $2, amount = $3, observed_at = $4
             WHERE subscription_id = $1",
        )
        .bind(subscription)
        .bind(usage)
        .bind(amount)
        .bind(started)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Observed { previous, retired })
}

/// What [`observe_batch`] made of one observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Batched {
    /// Recorded, as [`observe`] would have.
    Done(Observed),
    /// Left for [`observe`] on its own, untouched: its counter grew or went down (retiring
    /// then matches events one by one and may wait for deliveries under way), the fetch is
    /// older than the recorded one, or the batch holds its subscription twice.
    Alone,
}

/// One row of [`observe_batch`]'s statement: what it did (`first`, `counted`, `unchanged`), to
/// which subscription, its previous figures (`unchanged`), and the outbox row (`counted`).
type BatchRow = (String, Uuid, Option<f64>, Option<i64>, Option<i64>);

/// Records many fetches' observations in one transaction of one statement (two if it retires
/// events), each as [`observe`] would, except those it leaves [`Batched::Alone`]: a
/// subscription's first figure (retiring every event delivered to it before its fetch began)
/// and an unchanged one (moving the record on) are the whole of a cold start. Alone, each cost
/// four or five round trips and Postgres's CPU for each statement: 1,000 cold customers spent
/// 0.48 s of Postgres's CPU (`bench/check.py --cold-only`); batched, 0.21–0.24 s.
pub async fn observe_batch(
    pool: &PgPool,
    batch: &[(&Observation, DateTime<Utc>)],
) -> Result<Vec<Batched>, sqlx::Error> {
    // Each subscription once (a second observation of it follows the first, alone: the sort is
    // stable), in key order, so that concurrent batches insert in the same order.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| batch[i].0.subscription.as_uuid());
    order.dedup_by_key(|i| batch[*i].0.subscription);
    let ids: Vec<Uuid> = order.iter().map(|&i| batch[i].0.subscription.as_uuid()).collect();
    let codes: Vec<&str> = order.iter().map(|&i| batch[i].0.code.as_str()).collect();
    let usages: Vec<f64> = order.iter().map(|&i| batch[i].0.figures.usage).collect();
    let amounts: Vec<i64> = order.iter().map(|&i| batch[i].0.figures.amount).collect();
    let starts: Vec<DateTime<Utc>> = order.iter().map(|&i| batch[i].1).collect();

    // The sub-statements share one snapshot: `unchanged` cannot see the rows `first` inserts.
    // `Settle::Unchanged` is the same usage, from a fetch that began no earlier than the
    // recorded one; its previous figures (the last different ones) stay as they are. The
    // events to retire are only read here: an UPDATE of the outbox fires its ledger trigger
    // even when it changes nothing (14 ms on a connection's first call, then 0.1 ms), and
    // a cold start has nothing to retire. They are looked up per subscription (LATERAL):
    // joined as a set, the planner read every unretired delivered event (100,000 after
    // `bench/check.py`'s warm-up, 40 ms a batch) when its statistics still saw a few.
    let mut tx = pool.begin().await?;
    let rows: Vec<BatchRow> = sqlx::query_as(
        "WITH f AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::float8[], $4::int8[], $5::timestamptz[])
                 AS f(subscription, code, usage, amount, started)
         ),
         first AS (
             INSERT INTO billabear_counters (subscription_id, usage, amount, observed_at)
             SELECT subscription, usage, amount, started FROM f ORDER BY subscription
             ON CONFLICT (subscription_id) DO NOTHING
             RETURNING subscription_id
         ),
         counted AS (
             SELECT o.id, o.delivered_to FROM first
             JOIN f ON f.subscription = first.subscription_id
             CROSS JOIN LATERAL (
                 SELECT id, delivered_to FROM outbox
                 WHERE delivered_to = f.subscription AND status = 'delivered' AND retired_at IS NULL
                   AND delivered_at < f.started AND code = f.code
                 FOR UPDATE
             ) AS o
         ),
         unchanged AS (
             UPDATE billabear_counters c SET amount = f.amount, observed_at = f.started
             FROM f
             WHERE c.subscription_id = f.subscription AND c.usage = f.usage AND c.observed_at <= f.started
             RETURNING c.subscription_id, c.prev_usage, c.prev_amount
         )
         SELECT 'first', subscription_id, NULL::float8, NULL::int8, NULL::int8 FROM first
         UNION ALL SELECT 'counted', delivered_to, NULL, NULL, id FROM counted
         UNION ALL SELECT 'unchanged', subscription_id, prev_usage, prev_amount, NULL FROM unchanged",
    )
    .bind(&ids)
    .bind(&codes)
    .bind(&usages)
    .bind(&amounts)
    .bind(&starts)
    .fetch_all(&mut *tx)
    .await?;
    let counted: Vec<i64> = rows.iter().filter_map(|row| row.4).collect();
    mark_counted(&mut tx, &counted).await?;
    tx.commit().await?;

    let mut done: HashMap<Uuid, Observed> = HashMap::with_capacity(rows.len());
    let mut retired: HashMap<Uuid, usize> = HashMap::new();
    for (kind, subscription, prev_usage, prev_amount, _) in rows {
        match kind.as_str() {
            "first" => {
                done.insert(subscription, Observed { previous: None, retired: 0 });
            }
            "counted" => *retired.entry(subscription).or_default() += 1,
            _ => {
                let previous = prev_usage.zip(prev_amount).map(|(usage, amount)| Figures { usage, amount });
                done.insert(subscription, Observed { previous, retired: 0 });
            }
        }
    }
    let mut outcomes = vec![Batched::Alone; batch.len()];
    for &i in &order {
        let id = batch[i].0.subscription.as_uuid();
        if let Some(observed) = done.get(&id) {
            let retired = retired.get(&id).copied().unwrap_or(0);
            outcomes[i] = Batched::Done(Observed { retired, ..*observed });
        }
    }
    Ok(outcomes)
}

/// What [`observe`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    /// BillaBear's last figures before these that differ from them (for a marginal rate), if
    /// any were seen.
    pub previous: Option<Figures>,
    /// Delivered events it retired as counted.
    pub retired: usize,
}

/// How often, and how long apart, a growth not all accounted for waits for deliveries under way.
const IN_FLIGHT_WAITS: usize = 5;
const IN_FLIGHT_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether a delivery of an event for the observed subscription (sent to it, or to its customer
/// with its code) is under way.
async fn in_flight(tx: &mut sqlx::PgConnection, observation: &Observation) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM outbox
                        WHERE status = 'pending' AND claim_token IS NOT NULL AND lease_until > now()
                          AND code = $3 AND (subscription_id = $1 OR customer_id = $2))",
    )
    .bind(observation.subscription.as_uuid())
    .bind(observation.customer.as_uuid())
    .bind(&observation.code)
    .fetch_one(&mut *tx)
    .await
}

/// Retires the events delivered to the observed subscription before `before` (for its metric's
/// code) that a counter growth of `usage` accounts for ([`projection::counted`]): all of them
/// when it is infinite. Returns the usage retired, and counts the events in `events`.
async fn retire(
    tx: &mut sqlx::PgConnection,
    observation: &Observation,
    before: DateTime<Utc>,
    usage: f64,
    events: &mut usize,
) -> Result<f64, sqlx::Error> {
    let delivered: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT id, CASE WHEN $4 THEN 1 ELSE value END FROM outbox
         WHERE delivered_to = $1 AND status = 'delivered' AND retired_at IS NULL
           AND delivered_at < $3 AND code = $2
         ORDER BY delivered_at, id
         FOR UPDATE",
    )
    .bind(observation.subscription.as_uuid())
    .bind(&observation.code)
    .bind(before)
    .bind(observation.aggregation == Aggregation::Count)
    .fetch_all(&mut *tx)
    .await?;
    let (counted, retired) = projection::counted(&delivered, usage);
    mark_counted(tx, &counted).await?;
    *events += counted.len();
    Ok(retired)
}

/// Retires the outbox rows `ids` as counted by BillaBear (none: no statement, since an UPDATE
/// of the outbox fires its ledger trigger even when it changes nothing).
async fn mark_counted(tx: &mut sqlx::PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    if !ids.is_empty() {
        sqlx::query("UPDATE outbox SET retired_at = now(), retired_as = 'counted' WHERE id = ANY($1)")
            .bind(ids)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Two common table expressions that move the deltas the given query picks into the sums, in
/// key order (so two folds never deadlock): `folded` returns the sums they changed.
macro_rules! fold_ctes {
    ($picked:literal) => {
        concat!(
            "moved AS (DELETE FROM pending_usage_deltas WHERE id IN (",
            $picked,
            ") RETURNING kind, target, code, units, events),
             folded AS (
                 INSERT INTO pending_usage AS p (kind, target, code, units, events)
                 SELECT kind, target, code, sum(units), sum(events) FROM moved
                 GROUP BY kind, target, code
                 ORDER BY target, kind, code
                 ON CONFLICT (target, kind, code) DO UPDATE
                     SET units = p.units + excluded.units, events = p.events + excluded.events
                 RETURNING kind, target, code, events)"
        )
    };
}

/// Also for enforced writes, which fold the deltas of the targets they read under their
/// customer's lock (`enforce::store::lock_and_load`): deltas the periodic fold holds are
/// skipped (read as deltas), and both update the sums in key order, so they never deadlock.
pub(crate) use fold_ctes;

/// Any constant: the advisory lock that lets one replica at a time fold.
const FOLD_LOCK: i64 = 0x7573_6167_6570_6664; // "usagepfd"

/// Folds the deltas commits appended into `pending_usage` (one replica at a time; another
/// folding now: nothing). Returns how many deltas were folded.
pub async fn fold(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(FOLD_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    // Deltas an enforced write is folding now (`fold_targets`) are left to it.
    let merged = sqlx::query(concat!(
        "WITH ",
        fold_ctes!("SELECT id FROM pending_usage_deltas FOR UPDATE SKIP LOCKED"),
        " SELECT kind, target, code, events FROM folded"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let folded = merged.len() as u64;
    let mut emptied: (Vec<String>, Vec<Uuid>, Vec<String>) = Default::default();
    for row in merged {
        if row.try_get::<i64, _>("events")? == 0 {
            emptied.0.push(row.try_get("kind")?);
            emptied.1.push(row.try_get("target")?);
            emptied.2.push(row.try_get("code")?);
        }
    }
    if !emptied.1.is_empty() {
        sqlx::query(
            "DELETE FROM pending_usage p USING unnest($1::text[], $2::uuid[], $3::text[]) AS d(k, t, c)
             WHERE p.kind = d.k AND p.target = d.t AND p.code = d.c AND p.events = 0",
        )
        .bind(&emptied.0)
        .bind(&emptied.1)
        .bind(&emptied.2)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(folded)
}

/// The ledger's two small, busy tables, for [`db::vacuum_busy`]: every accepted event appends
/// a delta that a fold deletes within a second, and every fold rewrites its sums. At thousands
/// of events a second their dead rows pile up faster than autovacuum (once a minute at most)
/// clears them, and each enforced write's read of a customer's deltas stepped over all of them
/// (enforced events fell from 88% to 57% of plain ones within a minute of load,
/// `bench/enforce.py`, and came back after a VACUUM).
pub const BUSY_TABLES: &[&str] = &["pending_usage_deltas", "pending_usage"];

/// Retires events delivered longer than `max_age` ago that no counter growth matched (their
/// metric is not their subscription's, or BillaBear never counted them): they stop counting.
/// Returns how many.
pub async fn expire(pool: &PgPool, max_age: Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE outbox SET retired_at = now(), retired_as = 'expired'
         WHERE status = 'delivered' AND retired_at IS NULL AND delivered_at < now() - make_interval(secs => $1)",
    )
    .bind(max_age.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_payloads_name_customers_and_subscriptions() {
        let c = CustomerId::new_v4();
        let s = SubscriptionId::new_v4();
        let payload = format!("c{c},s{s},x{s},cnot-a-uuid,");
        assert_eq!(parse_targets(&payload), vec![Target::Customer(c), Target::Subscription(s)]);
        assert_eq!(target_key(Target::Customer(c)), ("c", c.as_uuid()));
    }
}
