//! The outbox table's operations. Accepting is one statement per call, however many events it
//! holds (so concurrent requests can share one, see `ingest`); claiming uses `FOR UPDATE SKIP LOCKED` and
//! a lease, so several replicas can share the table and a dead replica's claims are taken over.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use chrono::{DateTime, Utc};

use super::Stats;
use super::event::IncomingEvent;
use crate::audit::{self, Actor};
use crate::domain::Target;
use crate::domain::{CustomerId, SubscriptionId};
use crate::entitlements::{EntitlementSettings, Window};

/// Woken on every accepted batch, so forwarders need not poll.
pub const NOTIFY_CHANNEL: &str = "usage_gate_outbox";

/// What became of one event handed to [`accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored now.
    New,
    /// Already stored with the same content: nothing was written.
    Duplicate,
    /// Already stored with other content under this `event_id`: nothing was written.
    Conflict,
    /// Already stored with the same content, and dead: BillaBear refused it or its retries ran
    /// out, so it was not delivered (an operator may retry it).
    Dead,
    /// Postgres refused a value in it (one validation let through): nothing of it was stored.
    /// Given by `ingest`, which commits the rest of a batch without it.
    Refused,
}

impl Accepted {
    pub fn as_str(self) -> &'static str {
        match self {
            Accepted::New => "accepted",
            Accepted::Duplicate => "duplicate",
            Accepted::Conflict => "conflict",
            Accepted::Dead => "dead",
            Accepted::Refused => "invalid",
        }
    }
}

/// Registers `usage_gate_events_total` for every outcome `accept` counts, so `/metrics` shows
/// zeros (and alerts see a series) before the first event.
pub fn register_metrics() {
    for kind in [Accepted::New, Accepted::Duplicate, Accepted::Conflict, Accepted::Dead] {
        metrics::counter!("usage_gate_events_total", "outcome" => kind.as_str()).increment(0);
    }
}

/// Stores the events with one statement (atomic: all or none) and answers for each, in order.
/// An `event_id` already stored, or repeated earlier in `events`, is a duplicate or a conflict.
/// Nothing is acknowledged unless the commit succeeded. The same statement counts the events
/// stored now towards the feature limits `counting` says they count for (`feature_usage`).
pub async fn accept<E: Borrow<IncomingEvent>>(
    conn: &mut PgConnection,
    events: &[E],
    counting: &EntitlementSettings,
) -> Result<Vec<Accepted>, sqlx::Error> {
    let events: Vec<&IncomingEvent> = events.iter().map(Borrow::borrow).collect();
    let outcomes = insert(conn, &events, counting).await?;
    for kind in [Accepted::New, Accepted::Duplicate, Accepted::Conflict, Accepted::Dead] {
        let count = outcomes.iter().filter(|o| **o == kind).count() as u64;
        if count > 0 {
            metrics::counter!("usage_gate_events_total", "outcome" => kind.as_str()).increment(count);
        }
    }
    Ok(outcomes)
}

/// Where each event counts towards a feature limit: the feature, and its window's start (none
/// for the billing period, which the statement reads from `billing_periods`). Each window's
/// start is computed once per call, not once per event.
fn placements<'a>(
    events: &[&'a IncomingEvent],
    counting: &'a EntitlementSettings,
    now: DateTime<Utc>,
) -> (Vec<Option<&'a str>>, Vec<Option<DateTime<Utc>>>) {
    let mut starts: Vec<(Window, Option<DateTime<Utc>>)> = Vec::new();
    let mut start_of = |window: Window| {
        if let Some((_, start)) = starts.iter().find(|(w, _)| *w == window) {
            return *start;
        }
        let start = match window {
            Window::BillingPeriod => None,
            window => DateTime::from_timestamp(window.bounds(now, counting.zone(), None).start, 0),
        };
        starts.push((window, start));
        start
    };
    events
        .iter()
        .map(|event| match counting.counted_code(event.code.as_str()) {
            Some(feature) => (Some(feature), start_of(counting.window_of(feature))),
            None => (None, None),
        })
        .unzip()
}

/// Stores the events, adds the `value` of each one stored now (the first of an `event_id` given
/// twice) to its feature's count in its window, and tells every replica which targets' counts
/// changed (`feature_counts`). A billing-period window is the target's recorded period while it
/// lasts, then the one after it (`entitlements::Period::current`); a target whose period is not
/// recorded yet counts provisionally in the calendar month starting at `$11`. The counts are
/// written in one order, so two commits never wait on each other's rows.
const INSERT: &str = "WITH input AS MATERIALIZED (
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::float8[], $6::text[],
                              $7::bytea[], $9::text[], $10::timestamptz[], $12::text[])
              WITH ORDINALITY AS t(e, s, c, code, v, p, f, feature, start, sub, n)),
     inserted AS (
         INSERT INTO outbox (event_id, subscription_id, customer_id, code, value, properties, fingerprint, subject)
         SELECT e, s, c, code, v, p::jsonb, f, sub FROM input
         ORDER BY e COLLATE \"C\", n
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id),
     counted AS (
         INSERT INTO feature_usage AS u (kind, target, code, window_start, provisional, units)
         SELECT CASE WHEN i.s IS NULL THEN 'c' ELSE 's' END, coalesce(i.s, i.c), i.feature,
                coalesce(i.start, CASE WHEN b.target IS NULL THEN $11
                                       WHEN now() < b.ends_at THEN b.starts_at
                                       ELSE b.ends_at END),
                i.start IS NULL AND b.target IS NULL,
                sum(i.v::numeric)
         FROM (SELECT DISTINCT ON (e) * FROM input WHERE feature IS NOT NULL ORDER BY e, n) AS i
         JOIN inserted ON inserted.event_id = i.e
         LEFT JOIN billing_periods AS b ON b.target = coalesce(i.s, i.c)
         GROUP BY 1, 2, 3, 4, 5
         ORDER BY 2, 1, 3, 4, 5
         ON CONFLICT (target, kind, code, window_start, provisional) DO UPDATE SET units = u.units + EXCLUDED.units
         RETURNING kind, target),
     tallied AS (
         SELECT x.c, x.r, x.s, x.b, max(x.x) AS x, min(x.since) AS since, sum(x.a::numeric) AS a
         FROM UNNEST($13::int8[], $14::uuid[], $15::uuid[], $16::text[], $17::timestamptz[],
                     $18::timestamptz[], $19::float8[], $20::timestamptz[]) AS x(n, c, r, s, b, x, a, since)
         JOIN (SELECT DISTINCT ON (e) e, n FROM input ORDER BY e, n) AS i ON i.n = x.n
         JOIN inserted ON inserted.event_id = i.e
         GROUP BY 1, 2, 3, 4),
     ruled AS (
         INSERT INTO rule_usage AS r (customer_id, rule_id, subject, bucket_start, expires_at, amount)
         SELECT c, r, s, b, x, a FROM tallied
         ORDER BY 1, 2, 3, 4
         ON CONFLICT (customer_id, rule_id, subject, bucket_start)
         DO UPDATE SET amount = r.amount + EXCLUDED.amount, expires_at = greatest(r.expires_at, EXCLUDED.expires_at)
         RETURNING customer_id, rule_id, subject, bucket_start, expires_at, amount),
     crossed AS (
         INSERT INTO rule_crossings AS k (rule_id, customer_id, subject, window_start, threshold, window_end, used, \"limit\")
         SELECT u.rule_id, u.customer_id, u.subject, u.bucket_start, th.t, u.expires_at, w.after, w.lim
         FROM ruled AS u
         JOIN tallied AS t ON (t.c, t.r, t.s, t.b) = (u.customer_id, u.rule_id, u.subject, u.bucket_start)
         JOIN rules AS rl ON rl.id = u.rule_id
         CROSS JOIN LATERAL (
             SELECT u.amount + coalesce((SELECT sum(o.amount) FROM rule_usage AS o
                                         WHERE (o.customer_id, o.rule_id, o.subject) = (u.customer_id, u.rule_id, u.subject)
                                           AND o.bucket_start >= t.since AND o.bucket_start <> u.bucket_start
                                           AND o.expires_at > now()), 0) AS after,
                    CASE WHEN u.subject <> '' THEN coalesce((rl.subject_limits ->> u.subject)::bigint, rl.\"limit\")
                         ELSE rl.\"limit\" END AS lim) AS w
         CROSS JOIN LATERAL unnest(rl.thresholds) AS th(t)
         WHERE (w.after - t.a) * 100 < th.t * w.lim AND w.after * 100 >= th.t * w.lim
         ORDER BY 1, 2, 3, 4, 5
         ON CONFLICT DO NOTHING
         RETURNING k.*)
     SELECT event_id FROM inserted
     UNION ALL
     SELECT NULL::text FROM (SELECT pg_notify($8, '')) AS notified WHERE EXISTS (SELECT 1 FROM inserted)
     UNION ALL
     SELECT NULL::text FROM (SELECT feature_usage_notify(array_agg(DISTINCT kind || target::text)) AS sent
                             FROM counted) AS told
     WHERE told.sent < 0
     UNION ALL
     SELECT NULL::text FROM (SELECT rule_usage_notify(array_agg(DISTINCT customer_id::text)) AS sent
                             FROM ruled) AS told
     WHERE told.sent < 0
     UNION ALL
     SELECT NULL::text FROM (
         SELECT queue_webhooks('limit.threshold_crossed', c.customer_id, jsonb_build_object(
                    'rule_id', c.rule_id, 'customer_id', c.customer_id, 'subject', nullif(c.subject, ''),
                    'threshold', c.threshold, 'used', c.used, 'limit', c.\"limit\",
                    'measure', CASE WHEN rl.metric IS NULL THEN jsonb_build_object('cost', '{}'::jsonb)
                                    ELSE jsonb_build_object('metric', rl.metric) END,
                    'window', rule_window_json(rl), 'window_start', c.window_start,
                    'resets_at', CASE WHEN rl.window_kind = 'rolling' THEN NULL ELSE c.window_end END)) AS queued
         FROM crossed AS c JOIN rules AS rl ON rl.id = c.rule_id) AS told
     WHERE told.queued < 0";

/// The rows the events add to rules' counters (`rule_usage`), as the statement's arrays: each
/// with its event's ordinal (from 1), so only an event stored now counts.
#[derive(Default)]
struct Tallies {
    event: Vec<i64>,
    customer: Vec<Uuid>,
    rule: Vec<Uuid>,
    /// "" for a rule that counts the whole customer.
    subject: Vec<String>,
    bucket: Vec<DateTime<Utc>>,
    expires: Vec<DateTime<Utc>>,
    amount: Vec<f64>,
    since: Vec<DateTime<Utc>>,
}

impl Tallies {
    fn of(events: &[&IncomingEvent]) -> Self {
        let mut t = Tallies::default();
        let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
        for (n, event) in events.iter().enumerate() {
            for row in &event.tallies {
                t.event.push(n as i64 + 1);
                t.customer.push(row.customer.as_uuid());
                t.rule.push(row.rule);
                t.subject.push(row.subject.as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default());
                t.bucket.push(at(row.bucket_ms));
                t.expires.push(at(row.expires_ms));
                t.amount.push(row.amount);
                t.since.push(at(row.since_ms));
            }
        }
        t
    }
}

/// [`accept`] without the metrics, so an event inserted again (see below) is counted once.
async fn insert(
    conn: &mut PgConnection,
    events: &[&IncomingEvent],
    counting: &EntitlementSettings,
) -> Result<Vec<Accepted>, sqlx::Error> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    let fingerprints: Vec<Vec<u8>> = events.iter().map(|e| e.fingerprint().to_vec()).collect();
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let subscriptions: Vec<Option<Uuid>> = events
        .iter()
        .map(|e| match e.target {
            Target::Subscription(s) => Some(s.as_uuid()),
            Target::Customer(_) => None,
        })
        .collect();
    let customers: Vec<Option<Uuid>> = events
        .iter()
        .map(|e| match e.target {
            Target::Customer(c) => Some(c.as_uuid()),
            Target::Subscription(_) => None,
        })
        .collect();
    let codes: Vec<&str> = events.iter().map(|e| e.code.as_str()).collect();
    let values: Vec<f64> = events.iter().map(|e| e.value).collect();
    let properties: Vec<String> =
        events.iter().map(|e| serde_json::to_string(&e.properties).unwrap_or_else(|_| "{}".into())).collect();

    // One statement, so one round trip and atomic without BEGIN/COMMIT: the insert, the feature
    // counts, and the NOTIFY that wakes forwarders (delivered when it commits). Rows go in
    // event_id order (the unique index's own "C" order, cheap to sort), so two commits
    // inserting the same ids wait for each other instead of deadlocking; within an id,
    // WITH ORDINALITY keeps the request's order, so the first of two rows with one event_id wins.
    let now = Utc::now();
    let (features, starts) = placements(events, counting, now);
    let month = DateTime::from_timestamp(Window::Month.bounds(now, counting.zone(), None).start, 0);
    let subjects: Vec<Option<&str>> = events.iter().map(|e| e.subject.as_ref().map(|s| s.as_str())).collect();
    let tallies = Tallies::of(events);
    let query = sqlx::query_scalar::<_, Option<String>>(INSERT)
        .bind(&ids)
        .bind(&subscriptions)
        .bind(&customers)
        .bind(&codes)
        .bind(&values)
        .bind(&properties)
        .bind(&fingerprints)
        .bind(NOTIFY_CHANNEL)
        .bind(features)
        .bind(starts)
        .bind(month)
        .bind(subjects)
        .bind(&tallies.event)
        .bind(&tallies.customer)
        .bind(&tallies.rule)
        .bind(&tallies.subject)
        .bind(&tallies.bucket)
        .bind(&tallies.expires)
        .bind(&tallies.amount)
        .bind(&tallies.since);
    let inserted: Vec<String> = query.fetch_all(&mut *conn).await?.into_iter().flatten().collect();
    let mut fresh: HashSet<String> = inserted.into_iter().collect();
    let stored = if fresh.len() < events.len() {
        // Rows another request stored: committed by now (ON CONFLICT waited for them).
        stored(conn, &ids).await?
    } else {
        HashMap::new()
    };
    let mut outcomes = Vec::with_capacity(events.len());
    let mut vanished = Vec::new();
    for (i, (event, fingerprint)) in events.iter().zip(&fingerprints).enumerate() {
        let id = event.event_id.as_str();
        // `remove`: a second item with the id of one inserted by this call is a repeat.
        let outcome = if fresh.remove(id) {
            Accepted::New
        } else {
            match repeat(stored.get(id), fingerprint) {
                Some(outcome) => outcome,
                None => {
                    // The row the insert ran into was deleted (pruned) before it could be read:
                    // the answer must match what is stored, so insert it again.
                    vanished.push(i);
                    Accepted::Conflict
                }
            }
        };
        outcomes.push(outcome);
    }
    if !vanished.is_empty() {
        let again: Vec<&IncomingEvent> = vanished.iter().map(|&i| events[i]).collect();
        // Pruning deletes only old delivered rows, so the second try inserts the event or
        // finds the row another request just stored.
        let retried = Box::pin(insert(conn, &again, counting)).await?;
        for (i, outcome) in vanished.into_iter().zip(retried) {
            outcomes[i] = outcome;
        }
    }
    Ok(outcomes)
}

/// The fingerprint and status of each of `ids` stored.
pub async fn stored(
    conn: &mut PgConnection,
    ids: &[&str],
) -> Result<HashMap<String, (Vec<u8>, String)>, sqlx::Error> {
    let rows = sqlx::query("SELECT event_id, fingerprint, status FROM outbox WHERE event_id = ANY($1)")
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in rows {
        stored.insert(row.try_get("event_id")?, (row.try_get("fingerprint")?, row.try_get("status")?));
    }
    Ok(stored)
}

/// What an event is to the row stored under its `event_id` (`stored`: fingerprint and status),
/// if there is one.
pub fn repeat(stored: Option<&(Vec<u8>, String)>, fingerprint: &[u8]) -> Option<Accepted> {
    match stored? {
        (stored, status) if stored == fingerprint && status == "dead" => Some(Accepted::Dead),
        (stored, _) if stored == fingerprint => Some(Accepted::Duplicate),
        _ => Some(Accepted::Conflict),
    }
}

/// A pending event claimed for delivery.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub event_id: String,
    pub subscription_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub code: String,
    pub value: f64,
    /// As stored (JSON text): read when it is sent, so a row that cannot be read fails alone
    /// instead of failing the claim of every row with it.
    pub properties: String,
    /// Including this one.
    pub attempts: i32,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// When this run of attempts began (acceptance, or an operator's retry).
    pub attempts_since: chrono::DateTime<chrono::Utc>,
    /// This claim's fence: outcomes are recorded only while the row still carries it.
    pub claim_token: Uuid,
}

/// Claims up to `limit` due events for `lease`. Rows another forwarder holds are skipped; an
/// expired lease (its forwarder died) is taken over.
pub async fn claim(pool: &PgPool, limit: i64, lease: Duration) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut claimed: Vec<Claimed> = sqlx::query_as(
        "UPDATE outbox SET lease_until = now() + make_interval(secs => $2), attempts = attempts + 1,
                           claim_token = gen_random_uuid()
         WHERE id IN (
             SELECT id FROM outbox
             WHERE status = 'pending' AND next_attempt_at <= now()
               AND (lease_until IS NULL OR lease_until < now())
             ORDER BY next_attempt_at, id
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         RETURNING id, event_id, subscription_id, customer_id, code, value, properties::text AS properties,
                   attempts, received_at,
                   attempts_since, claim_token",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// BillaBear took the event, for `subscription`. Recorded whoever holds the claim now: the
/// event was delivered, and a later claim must not send it again. False if the row was no
/// longer pending.
pub async fn mark_delivered(
    pool: &PgPool,
    id: i64,
    subscription: SubscriptionId,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE outbox SET status = 'delivered', delivered_at = now(), delivered_to = $2, lease_until = NULL,
                           last_error = NULL, claim_token = NULL
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(subscription.as_uuid())
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// A transient failure: try again after `delay`. Only under the claim's own token, so a late
/// outcome from a replica whose lease ran out changes nothing. False if it changed nothing.
pub async fn mark_retry(
    pool: &PgPool,
    claim: &Claimed,
    delay: Duration,
    error: &str,
    upstream_status: Option<u16>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $3), lease_until = NULL,
                           claim_token = NULL, last_error = $4, upstream_status = $5
         WHERE id = $1 AND claim_token = $2 AND status = 'pending'",
    )
    .bind(claim.id)
    .bind(claim.claim_token)
    .bind(delay.as_secs_f64())
    .bind(error)
    .bind(upstream_status.map(|s| s as i16))
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// A failure that retrying will not fix (BillaBear's 400, no usage subscription), or retries
/// that ran out: kept, with the reason, until an operator retries it; an `event.dead` webhook
/// is queued in the same statement. Fenced like [`mark_retry`].
pub async fn mark_dead(
    pool: &PgPool,
    claim: &Claimed,
    error: &str,
    upstream_status: Option<u16>,
) -> Result<bool, sqlx::Error> {
    let (dead, _queued): (i64, i64) = sqlx::query_as(
        "WITH dead AS (
             UPDATE outbox SET status = 'dead', lease_until = NULL, claim_token = NULL, last_error = $3,
                               upstream_status = $4
             WHERE id = $1 AND claim_token = $2 AND status = 'pending'
             RETURNING event_id, customer_id, subscription_id, code, value, attempts, received_at),
         queued AS (
             SELECT queue_webhooks('event.dead', customer_id, jsonb_build_object(
                        'event_id', event_id, 'customer_id', customer_id, 'subscription_id', subscription_id,
                        'code', code, 'value', value, 'attempts', attempts, 'received_at', received_at,
                        'error', $3, 'upstream_status', $4)) AS n
             FROM dead)
         SELECT (SELECT count(*) FROM dead), (SELECT coalesce(sum(n), 0) FROM queued)",
    )
    .bind(claim.id)
    .bind(claim.claim_token)
    .bind(error)
    .bind(upstream_status.map(|s| s as i16))
    .fetch_one(pool)
    .await?;
    Ok(dead == 1)
}

/// An outbox row as listed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: String,
    pub subscription_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub code: String,
    pub value: f64,
    pub properties: serde_json::Value,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: chrono::DateTime<chrono::Utc>,
    pub last_error: Option<String>,
    pub upstream_status: Option<i16>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub delivered_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The `SELECT … FROM outbox` of an [`OutboxRow`] (a macro so `concat!` can build each
/// listing's static query from it).
macro_rules! listed_event {
    () => {
        "SELECT id, event_id, subscription_id, customer_id, code, value, properties, status, attempts,
                next_attempt_at, last_error, upstream_status, received_at, delivered_at
         FROM outbox"
    };
}

/// Up to `limit` events in id order after `after` (keyset pagination), filtered.
pub async fn list(
    pool: &PgPool,
    status: Option<&str>,
    customer: Option<Uuid>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        listed_event!(),
        " WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR customer_id = $2) AND id > $3
         ORDER BY id
         LIMIT $4",
    ))
    .bind(status)
    .bind(customer)
    .bind(after.unwrap_or(0))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A customer's undelivered events (pending and dead), oldest first: those sent with
/// `customer`, and those sent with one of its `subscriptions`.
pub async fn undelivered_of(
    pool: &PgPool,
    customer: CustomerId,
    subscriptions: &[SubscriptionId],
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let subscriptions: Vec<Uuid> = subscriptions.iter().map(|s| s.as_uuid()).collect();
    sqlx::query_as(concat!(
        listed_event!(),
        " WHERE status IN ('pending', 'dead') AND (customer_id = $1 OR subscription_id = ANY($2))
         ORDER BY id
         LIMIT $3",
    ))
    .bind(customer.as_uuid())
    .bind(&subscriptions)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many of the customer's events are not delivered: pending, and dead. Those sent with
/// `customer`, and those sent with one of its `subscriptions`.
pub async fn undelivered_counts(
    pool: &PgPool,
    customer: CustomerId,
    subscriptions: &[SubscriptionId],
) -> Result<(i64, i64), sqlx::Error> {
    let subscriptions: Vec<Uuid> = subscriptions.iter().map(|s| s.as_uuid()).collect();
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead')
         FROM outbox
         WHERE status IN ('pending', 'dead') AND (customer_id = $1 OR subscription_id = ANY($2))",
    )
    .bind(customer.as_uuid())
    .bind(&subscriptions)
    .fetch_one(pool)
    .await
}

/// The customer id and subscription id of events delivered within `within`, at most `limit`
/// distinct pairs.
pub async fn delivered_within(
    pool: &PgPool,
    within: Duration,
    limit: i64,
) -> Result<Vec<(Option<Uuid>, Option<Uuid>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT customer_id, subscription_id FROM outbox
         WHERE status = 'delivered' AND delivered_at > now() - make_interval(secs => $1)
         LIMIT $2",
    )
    .bind(within.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The mean time from acceptance to delivery of the events delivered in the last five minutes
/// (seconds); none when none was.
pub async fn delivery_lag(pool: &PgPool) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT avg(EXTRACT(EPOCH FROM delivered_at - received_at))::float8 FROM outbox
         WHERE status = 'delivered' AND delivered_at > now() - interval '5 minutes'",
    )
    .fetch_one(pool)
    .await
}

/// Puts dead events back in the queue, due now: one by id, or all (optionally one customer's).
/// Returns how many; a retry that found some is audited as `actor`'s `outbox.retry`, in the same
/// transaction.
pub async fn retry_dead(
    pool: &PgPool,
    id: Option<i64>,
    customer: Option<CustomerId>,
    actor: &Actor,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let retried = sqlx::query(
        "UPDATE outbox SET status = 'pending', next_attempt_at = now(), lease_until = NULL, attempts = 0,
                           attempts_since = now()
         WHERE status = 'dead' AND ($1::bigint IS NULL OR id = $1) AND ($2::uuid IS NULL OR customer_id = $2)",
    )
    .bind(id)
    .bind(customer.map(|c| c.as_uuid()))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if retried > 0 {
        sqlx::query("SELECT pg_notify($1, '')").bind(NOTIFY_CHANNEL).execute(&mut *tx).await?;
        let target = id.map_or_else(|| "all".to_owned(), |id| id.to_string());
        let details = serde_json::json!({"retried": retried});
        audit::record_in(&mut tx, &actor.entry("outbox.retry", customer, target, details)).await?;
    }
    tx.commit().await?;
    Ok(retried)
}

/// Counts by status and the age of the oldest pending event.
pub async fn stats(pool: &PgPool) -> Result<Stats, sqlx::Error> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                count(*) FILTER (WHERE status = 'delivered') AS delivered,
                count(*) FILTER (WHERE status = 'dead') AS dead,
                COALESCE(EXTRACT(EPOCH FROM now() - min(received_at) FILTER (WHERE status = 'pending')), 0)::float8
                    AS oldest
         FROM outbox",
    )
    .fetch_one(pool)
    .await?;
    Ok(Stats {
        pending: row.try_get("pending")?,
        delivered: row.try_get("delivered")?,
        dead: row.try_get("dead")?,
        oldest_pending_age_seconds: row.try_get("oldest")?,
    })
}

/// Any constant: the advisory lock that lets one replica at a time prune.
const PRUNE_LOCK: i64 = 0x7573_6167_6570_726e; // "usageprn"

/// Deletes delivered events older than `retention` (their `event_id`s are no longer caught as
/// duplicates after that), `chunk` rows per statement so no statement holds many row locks or
/// runs long, on one replica at a time (another replica pruning now: returns 0 at once).
/// Returns how many.
pub async fn prune(pool: &PgPool, retention: Duration, chunk: i64) -> Result<u64, sqlx::Error> {
    const DELETE: &str = "DELETE FROM outbox WHERE id IN (
                              SELECT id FROM outbox
                              WHERE status = 'delivered' AND delivered_at < now() - make_interval(secs => $1)
                              LIMIT $2
                              FOR UPDATE SKIP LOCKED)";
    let pruned = crate::db::with_session_lock(pool, PRUNE_LOCK, async |conn| {
        crate::db::delete_in_chunks(conn, DELETE, retention, chunk).await
    })
    .await?;
    Ok(pruned.unwrap_or(0))
}
