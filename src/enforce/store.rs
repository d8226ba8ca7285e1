//! Enforcement in Postgres: the customers' locks, what their figures are made of, and enforced
//! events judged and stored in one transaction.

use std::borrow::{Borrow, Cow};
use std::collections::{HashMap, HashSet};

use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

use super::{Gate, Judged, Ledger, OpenHold, Rules};
use crate::domain::Target;
use crate::domain::{CustomerId, Subject, SubscriptionId};
use crate::entitlements::{FeatureCode, Period};
use crate::outbox::IncomingEvent;
use crate::outbox::store::{self as outbox, Accepted};
use crate::pending::store as pending;

/// Registers `usage_gate_enforced_events_total` for both outcomes, so `/metrics` shows zeros
/// before the first enforced event.
pub fn register_metrics() {
    for outcome in ["admitted", "refused"] {
        metrics::counter!("usage_gate_enforced_events_total", "outcome" => outcome).increment(0);
    }
}

/// The class of the customers' advisory locks. Two-key locks never collide with the one-key
/// locks usage-gate takes elsewhere; two customers whose ids hash alike only wait on each other.
const CUSTOMER_LOCK_CLASS: i32 = 0x7567_656e; // "ugen"

fn lock_key(customer: CustomerId) -> i32 {
    let bits = customer.as_uuid().as_u128();
    (bits ^ (bits >> 64) ^ (bits >> 32)) as i32
}

/// Takes the customers' locks for the rest of the transaction, in one order (so two
/// transactions never wait on each other), then reads what their figures are made of in one
/// statement: each round trip while the locks are held lengthens the wait of the customer's
/// next write. Open holds are read once, by subject and event code, for every kind to read;
/// feature counts and billing periods only for customers whose plan has a feature limit, rules'
/// counts only for customers under rules.
pub async fn lock_and_load(conn: &mut PgConnection, gates: &[&Gate]) -> Result<Ledger, sqlx::Error> {
    if gates.is_empty() {
        return Ok(Ledger::default());
    }
    let mut keys: Vec<i32> = gates.iter().map(|g| lock_key(g.customer)).collect();
    keys.sort_unstable();
    keys.dedup();
    // unnest yields the keys in the array's order, and each lock is taken as its row is.
    sqlx::query("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k")
        .bind(CUSTOMER_LOCK_CLASS)
        .bind(&keys)
        .execute(&mut *conn)
        .await?;
    let mut targets: Vec<Target> = gates.iter().flat_map(|g| g.targets()).collect();
    targets.sort_by_key(|t| pending::target_key(*t));
    targets.dedup();
    let targets: Vec<Uuid> = targets.iter().map(|t| pending::target_key(*t).1).collect();
    let customers: Vec<Uuid> = gates.iter().map(|g| g.customer.as_uuid()).collect();
    let subscriptions: Vec<Uuid> =
        gates.iter().flat_map(|g| g.known().metered.iter().map(|m| m.subscription.as_uuid())).collect();
    // The targets of customers with a feature limit (none: the feature parts read nothing).
    let limited: Vec<Uuid> = gates
        .iter()
        .filter(|g| g.known().plan.features().iter().any(|f| f.limit().is_some()))
        .flat_map(|g| g.targets())
        .map(|t| pending::target_key(t).1)
        .collect();
    let features: Vec<&str> = gates
        .iter()
        .flat_map(|g| {
            g.known().plan.features().iter().filter(|f| f.limit().is_some()).map(|f| f.code.as_str())
        })
        .collect();
    // Customers under rules (none: the rule parts read nothing).
    let ruled: Vec<Uuid> =
        gates.iter().filter(|g| !g.rules().is_empty()).map(|g| g.customer.as_uuid()).collect();
    // Folding the targets' deltas keeps what is read a few rows however fast the customer's
    // events come; the read shares the fold's snapshot, so it sums the same rows either way.
    // clock_timestamp(), not now(): the transaction may have waited for the locks.
    let rows = sqlx::query(concat!(
        "WITH ",
        pending::fold_ctes!(
            "SELECT id FROM pending_usage_deltas WHERE target = ANY($1) FOR UPDATE SKIP LOCKED"
        ),
        "
         SELECT 'p' AS part, kind::text AS kind, target AS id, code, sum(units)::float8 AS units,
                sum(events)::bigint AS events
         FROM (SELECT kind, target, code, units, events FROM pending_usage WHERE target = ANY($1)
               UNION ALL
               SELECT kind, target, code, units, events FROM pending_usage_deltas WHERE target = ANY($1)) AS p
         GROUP BY kind, target, code HAVING sum(events) <> 0
         UNION ALL
         SELECT 's', NULL, subscription_id, NULL, usage, NULL
         FROM billabear_counters WHERE subscription_id = ANY($2)
         UNION ALL
         SELECT 'r', subject, customer_id, code, coalesce(sum(value), 0), sum(amount)::bigint FROM reservations
         WHERE customer_id = ANY($3) AND closed_at IS NULL AND expires_at > clock_timestamp()
         GROUP BY customer_id, subject, code
         UNION ALL
         SELECT 'f', kind::text, target, code, units::float8, extract(epoch FROM window_start)::int8
         FROM feature_usage WHERE target = ANY($4) AND code = ANY($5) AND NOT provisional
           AND window_start > clock_timestamp() - interval '400 days'
         UNION ALL
         SELECT 'b', NULL, target, NULL, extract(epoch FROM starts_at)::float8, extract(epoch FROM ends_at)::int8
         FROM billing_periods WHERE target = ANY($4) AND target = ANY($3)

         UNION ALL
         SELECT 'u', subject, customer_id, rule_id::text, amount::float8,
                (extract(epoch FROM bucket_start) * 1000)::int8
         FROM rule_usage WHERE customer_id = ANY($6) AND expires_at > clock_timestamp()
"
    ))
    .bind(&targets)
    .bind(&subscriptions)
    .bind(&customers)
    .bind(&limited)
    .bind(&features)
    .bind(&ruled)
    .fetch_all(&mut *conn)
    .await?;
    let mut ledger = Ledger::default();
    for row in rows {
        let part: String = row.try_get("part")?;
        let id: Uuid = row.try_get("id")?;
        match part.as_str() {
            "p" => {
                let kind: String = row.try_get("kind")?;
                let code: String = row.try_get("code")?;
                let events: i64 = row.try_get("events")?;
                if let Some((target, usage)) = pending::entry(&kind, id, &code, row.try_get("units")?, events)
                {
                    ledger.pending.entry(target).or_default().push(usage);
                }
            }
            "s" => {
                ledger.counters.insert(SubscriptionId::from(id), row.try_get("units")?);
            }
            "f" => {
                let kind: String = row.try_get("kind")?;
                let code: String = row.try_get("code")?;
                let target = pending::target_of(&kind, id);
                let Some(feature) = FeatureCode::known(&code) else { continue };
                let start: i64 = row.try_get("events")?;
                ledger.features.insert((target, feature, start), row.try_get("units")?);
            }
            "b" => {
                // Recorded under the customer's id and its subscriptions' alike: read by the customer's.
                let (start, end): (f64, i64) = (row.try_get("units")?, row.try_get("events")?);
                ledger.periods.insert(CustomerId::from(id), Period::new(start as i64, end));
            }
            "u" => {
                let subject: String = row.try_get("kind")?;
                let subject = (!subject.is_empty()).then(|| Subject::parse(&subject).ok()).flatten();
                let rule: String = row.try_get("code")?;
                let Ok(rule) = Uuid::parse_str(&rule) else { continue };
                let bucket = (row.try_get::<i64, _>("events")?, row.try_get::<f64, _>("units")?);
                ledger.rule_counts.entry((CustomerId::from(id), rule, subject)).or_default().push(bucket);
            }
            _ => {
                let subject: Option<String> = row.try_get("kind")?;
                ledger.holds.entry(CustomerId::from(id)).or_default().push(OpenHold {
                    subject: subject.and_then(|s| Subject::parse(&s).ok()),
                    code: row.try_get("code")?,
                    units: row.try_get("units")?,
                    amount: row.try_get("events")?,
                });
            }
        }
    }
    Ok(ledger)
}

/// What became of one event handed to [`accept`]: the outbox's answer, none when it was refused
/// for the limit (not stored); and how it was judged if it was enforced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub accepted: Option<Accepted>,
    pub judged: Option<Judged>,
}

/// Stores `events` in one transaction: each with a gate only if it fits (judged in order, under
/// its customer's lock), the others as they are. `request` numbers each event's request: once
/// one of a request's events for a customer is refused, its later ones for that customer are
/// too, so a request's events are never stored out of order. A refused event already stored
/// answers as the repeat it is (duplicate, dead or conflict), not as refused.
pub async fn accept<E: Borrow<IncomingEvent>>(
    conn: &mut PgConnection,
    events: &[E],
    gates: &[Option<Gate>],
    requests: &[u64],
    rules: &Rules,
) -> Result<Vec<Outcome>, sqlx::Error> {
    let events: Vec<&IncomingEvent> = events.iter().map(Borrow::borrow).collect();
    let mut tx = conn.begin().await?;
    let gated: Vec<&Gate> = gates.iter().flatten().collect();
    let mut ledger = lock_and_load(&mut tx, &gated).await?;
    let mut stopped: HashSet<(u64, CustomerId)> = HashSet::new();
    let mut judged = Vec::with_capacity(events.len());
    // An admitted event carries what it added to rules' counters (stored with it).
    let mut tallied: Vec<Cow<IncomingEvent>> = Vec::with_capacity(events.len());
    for ((event, gate), request) in events.iter().zip(gates).zip(requests) {
        let Some(gate) = gate else {
            ledger.add_event(event.target, event.code.as_str(), event.value);
            judged.push(None);
            tallied.push(Cow::Borrowed(*event));
            continue;
        };
        let (target, code, value) = (event.target, event.code.as_str(), event.value);
        let verdict = if stopped.contains(&(*request, gate.customer)) {
            ledger.refuse_event(gate, target, code, value)
        } else {
            ledger.judge_event(gate, target, (code, value), event.subject.as_ref(), rules)
        };
        if !verdict.admitted {
            stopped.insert((*request, gate.customer));
        }
        judged.push(Some(verdict));
        let tallies = ledger.take_tallies();
        tallied.push(if tallies.is_empty() {
            Cow::Borrowed(*event)
        } else {
            Cow::Owned(IncomingEvent { tallies, ..(*event).clone() })
        });
    }
    let events: Vec<&IncomingEvent> = tallied.iter().map(|e| e.as_ref()).collect();
    let refused = |j: &Option<Judged>| j.as_ref().is_some_and(|j| !j.admitted);
    let stored = if judged.iter().any(refused) {
        let admitted: Vec<&IncomingEvent> =
            events.iter().zip(&judged).filter(|(_, j)| !refused(j)).map(|(e, _)| *e).collect();
        outbox::accept(&mut tx, &admitted, &rules.entitlements).await?
    } else {
        outbox::accept(&mut tx, &events, &rules.entitlements).await?
    };
    let refused_ids: Vec<&str> =
        events.iter().zip(&judged).filter(|(_, j)| refused(j)).map(|(e, _)| e.event_id.as_str()).collect();
    let repeats =
        if refused_ids.is_empty() { HashMap::new() } else { outbox::stored(&mut tx, &refused_ids).await? };
    tx.commit().await?;
    let mut stored = stored.into_iter();
    Ok(events
        .iter()
        .zip(judged)
        .map(|(event, judged)| {
            // A refused event already stored is answered as the repeat it is.
            let accepted = if refused(&judged) {
                outbox::repeat(repeats.get(event.event_id.as_str()), &event.fingerprint())
            } else {
                stored.next()
            };
            if judged.is_some() {
                let outcome = if accepted.is_none() { "refused" } else { "admitted" };
                metrics::counter!("usage_gate_enforced_events_total", "outcome" => outcome).increment(1);
            }
            Outcome { accepted, judged }
        })
        .collect())
}
