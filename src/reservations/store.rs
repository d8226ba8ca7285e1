//! Reservations in Postgres: granted under the customer's lock, committed, released and
//! expired, each audited in the transaction that makes it.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::{Ask, Hold};
use crate::audit::{self, Actor};
use crate::domain::Target;
use crate::domain::{CustomerId, Subject};
use crate::enforce::Rules;
use crate::enforce::{Gate, Judged, store as enforce};
use crate::outbox::IncomingEvent;
use crate::outbox::store::{self as outbox, Accepted};

/// Sent (by the triggers) at the commit of every change; the payload lists the customers.
pub const NOTIFY_CHANNEL: &str = "usage_gate_reservations";

/// One reservation as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReservationRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub amount: i64,
    pub code: Option<String>,
    pub value: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_as: Option<String>,
}

/// A change to the holds, as [`write`] takes it.
#[derive(Debug)]
pub enum Change {
    /// A new hold for `customer`: judged against `gate` under the customer's lock, or, without
    /// a gate (the policy's fallback allowed it), granted as asked (an event's price unknown: 0).
    /// With an idempotency `key` that made one of the customer's holds before, that hold answers.
    Hold {
        customer: CustomerId,
        gate: Option<Gate>,
        ask: Ask,
        ttl: Duration,
        subject: Option<Subject>,
        actor: Actor,
        key: Option<String>,
    },
    /// The work's real usage: stored, and the hold closed. `owners` has each event's customer
    /// as far as usage-gate can tell; all must be the reservation's.
    Commit { id: Uuid, events: Vec<IncomingEvent>, owners: Vec<Option<CustomerId>>, actor: Actor },
    /// The work was not done: the hold closed, nothing stored.
    Release { id: Uuid, actor: Actor },
}

impl Change {
    fn events(&self) -> &[IncomingEvent] {
        match self {
            Change::Commit { events, .. } => events,
            _ => &[],
        }
    }
}

/// What became of a [`Change`], in its variant's order.
#[derive(Debug)]
pub enum Done {
    Hold(Created),
    /// The hold's idempotency key made another hold, or one that holds nothing any more: nothing
    /// held (that hold is given).
    KeyReused(Reuse, ReservationRow),
    Commit(Committed),
    /// None when there was no open hold with this id (unknown, or closed before).
    Release(Option<ReservationRow>),
}

/// How a request for a hold was judged: granted (stored) or refused (nothing stored). `judged`
/// is None for a hold granted without a gate.
#[derive(Debug)]
pub struct Created {
    pub reservation: Option<ReservationRow>,
    pub judged: Option<Judged>,
    /// Made by an earlier request with the same idempotency key: nothing new held (`judged`:
    /// the projection without it, as when it was made).
    pub replayed: bool,
}

/// Why a hold's idempotency key cannot answer a request for a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// The key made a hold asked for otherwise (another amount, or code and value).
    OtherAsk,
    /// The key's hold is closed (committed, released or expired): it holds nothing now.
    Closed,
}

/// What an earlier hold made with the same idempotency key answers to `ask`: that hold, if it
/// was asked for the same way and still holds.
fn replay(ask: &Ask, earlier: &ReservationRow, open: bool, judged: Option<Judged>) -> Done {
    let same = match ask {
        Ask::Amount(amount) => earlier.code.is_none() && earlier.amount == *amount,
        Ask::Event { code, value } => earlier.code.as_deref() == Some(code) && earlier.value == Some(*value),
    };
    match (same, open) {
        (true, true) => Done::Hold(Created { reservation: Some(earlier.clone()), judged, replayed: true }),
        (false, _) => Done::KeyReused(Reuse::OtherAsk, earlier.clone()),
        (true, false) => Done::KeyReused(Reuse::Closed, earlier.clone()),
    }
}

/// What became of a commit.
#[derive(Debug)]
pub enum Committed {
    /// The events were stored (or found stored) and the hold closed; `expired`: it had expired.
    Done {
        reservation: ReservationRow,
        outcomes: Vec<Accepted>,
        expired: bool,
    },
    NotFound,
    /// These events (by position) are not known to be the reservation's customer's: nothing
    /// stored.
    Foreign {
        customer: CustomerId,
        events: Vec<usize>,
    },
    /// Released before (nothing stored).
    Released,
    /// Committed before (nothing stored this time).
    AlreadyCommitted,
}

const COLUMNS: &str =
    "id, customer_id, amount, code, value, created_at, expires_at, created_by, closed_at, closed_as";

/// Writes `changes` in one transaction, each answered in order, with one statement per kind
/// of work however many changes there are (group commit: a busy customer's holds and commits
/// share round trips and its lock, instead of queueing for it one by one).
///
/// New holds are judged in order under their customers' locks with their pending usage and
/// open holds (as enforced events are); commits are checked against their reservations (the
/// events all the customer's, the hold not closed by a release or a commit before), then store
/// their events and close their holds; releases close open holds. A hold that expired is
/// committed all the same (the work was done; its `expired` record stays in the audit log).
/// Every change is audited in the transaction. Commits come before releases: a commit and a
/// release of one hold in one batch leave it committed.
///
/// A hold asked for with an idempotency key that made one of the customer's holds (before, or
/// earlier in this batch) is answered with that hold ([`replay`]), nothing new held or audited.
/// The earlier ones are read under the customers' locks, so a gated hold of another replica
/// with the same key is either committed or not begun; the unique index catches the rest (holds
/// granted by the fallback take no lock), and those are answered the same way.
pub async fn write(
    conn: &mut PgConnection,
    changes: &[Change],
    rules: &Rules,
) -> Result<Vec<Done>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut answers: Vec<Option<Done>> = changes.iter().map(|_| None).collect();
    let mut audit = Vec::new();

    // New holds: judged in order, then inserted together.
    let gates: Vec<&Gate> = changes
        .iter()
        .filter_map(|c| if let Change::Hold { gate, .. } = c { gate.as_ref() } else { None })
        .collect();
    let mut ledger = enforce::lock_and_load(&mut tx, &gates).await?;
    let keyed: Vec<(CustomerId, &str)> = changes.iter().filter_map(hold_key).collect();
    let earlier = held_with(&mut tx, &keyed).await?;
    let mut rows = NewRows::default();
    let mut granted = Vec::new();
    let mut granted_keys: HashMap<(CustomerId, &str), usize> = HashMap::new();
    let mut repeats = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        let Change::Hold { customer, gate, ask, ttl, subject, actor, key } = change else { continue };
        if let Some(key) = key.as_deref() {
            if let Some((reservation, open)) = earlier.get(&(*customer, key.to_owned())) {
                let judged = gate.as_ref().map(|gate| ledger.stored_hold(gate, reservation.amount));
                answers[i] = Some(replay(ask, reservation, *open, judged));
                continue;
            }
            if let Some(&first) = granted_keys.get(&(*customer, key)) {
                repeats.push((i, first));
                continue;
            }
        }
        let (amount, judged) = match gate {
            Some(gate) => {
                let (amount, event) = match ask {
                    Ask::Amount(amount) => (*amount, None),
                    Ask::Event { code, value } => (
                        ledger.price_event(gate, Target::Customer(gate.customer), code, *value),
                        Some((code.as_str(), *value)),
                    ),
                };
                let judged = ledger.judge_hold(gate, amount, event, subject.as_ref(), rules);
                (amount, Some(judged))
            }
            None => (if let Ask::Amount(amount) = ask { *amount } else { 0 }, None),
        };
        if judged.as_ref().is_some_and(|j| !j.admitted) {
            answers[i] = Some(Done::Hold(Created { reservation: None, judged, replayed: false }));
            continue;
        }
        if let Some(key) = key.as_deref() {
            granted_keys.insert((*customer, key), i);
        }
        granted.push((
            i,
            rows.push(*customer, (amount, ask, subject.as_ref()), *ttl, &actor.name, key.as_deref()),
            judged,
        ));
    }
    let mut inserted = rows.insert(&mut tx).await?;
    let mut raced = Vec::new();
    for (i, id, judged) in granted {
        let Change::Hold { ask, actor, .. } = &changes[i] else { continue };
        let Some(reservation) = inserted.remove(&id) else {
            // Its key's hold was made meanwhile (the insert skipped it): answered below.
            raced.push((i, judged));
            continue;
        };
        let (code, value) = asked(ask);
        audit.push(entry(
            actor,
            "reservation.create",
            &reservation,
            serde_json::json!({
                "amount": reservation.amount, "code": code, "value": value, "expires_at": reservation.expires_at,
            }),
        ));
        answers[i] = Some(Done::Hold(Created { reservation: Some(reservation), judged, replayed: false }));
    }
    if !raced.is_empty() {
        let keys: Vec<(CustomerId, &str)> =
            raced.iter().filter_map(|(i, _)| hold_key(&changes[*i])).collect();
        let made = held_with(&mut tx, &keys).await?;
        for (i, judged) in raced {
            let Change::Hold { ask, .. } = &changes[i] else { continue };
            if let Some((reservation, open)) =
                hold_key(&changes[i]).and_then(|(c, k)| made.get(&(c, k.to_owned())))
            {
                answers[i] = Some(replay(ask, reservation, *open, judged));
            }
        }
    }
    for (i, first) in repeats {
        let Change::Hold { ask, .. } = &changes[i] else { continue };
        if let Some(Done::Hold(Created { reservation: Some(reservation), judged, .. })) = &answers[first] {
            let (reservation, judged) = (reservation.clone(), judged.clone());
            answers[i] = Some(replay(ask, &reservation, true, judged));
        }
    }

    // Commits: each checked against its reservation, then every event stored in one statement.
    let ids: Vec<Uuid> = changes
        .iter()
        .filter_map(|c| if let Change::Commit { id, .. } = c { Some(*id) } else { None })
        .collect();
    let mut found: HashMap<Uuid, (ReservationRow, bool)> = if ids.is_empty() {
        HashMap::new()
    } else {
        // Locked in one order, so two transactions closing the same holds never deadlock.
        let rows: Vec<ReservationAnd> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS}, expires_at <= now() AS lapsed FROM reservations
             WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        )))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        rows.into_iter().map(|row| (row.reservation.id, (row.reservation, row.lapsed))).collect()
    };
    let mut committing = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        let Change::Commit { id, owners, .. } = change else { continue };
        let Some((reservation, lapsed)) = found.get_mut(id) else {
            answers[i] = Some(Done::Commit(Committed::NotFound));
            continue;
        };
        let customer = CustomerId::from(reservation.customer_id);
        let foreign: Vec<usize> =
            owners.iter().enumerate().filter(|(_, o)| **o != Some(customer)).map(|(e, _)| e).collect();
        let refused = match reservation.closed_as.as_deref() {
            _ if !foreign.is_empty() => Some(Committed::Foreign { customer, events: foreign }),
            Some("committed") => Some(Committed::AlreadyCommitted),
            Some("released") => Some(Committed::Released),
            _ => None,
        };
        if let Some(refused) = refused {
            answers[i] = Some(Done::Commit(refused));
            continue;
        }
        let expired = *lapsed || reservation.closed_as.as_deref() == Some("expired");
        // A second commit of it in this batch finds it committed.
        reservation.closed_as = Some("committed".into());
        committing.push((i, *id, expired));
    }
    let events: Vec<IncomingEvent> =
        committing.iter().flat_map(|(i, ..)| changes[*i].events().iter().cloned()).collect();
    let mut outcomes = outbox::accept(&mut tx, &events, &rules.entitlements).await?.into_iter();
    let closed = close(&mut tx, committing.iter().map(|(_, id, _)| *id).collect(), "committed").await?;
    for (i, id, expired) in committing {
        let Change::Commit { events, actor, .. } = &changes[i] else { continue };
        let outcomes: Vec<Accepted> = outcomes.by_ref().take(events.len()).collect();
        let Some(reservation) = closed.get(&id).cloned() else { continue };
        let stored = outcomes.iter().filter(|o| **o == Accepted::New).count();
        audit.push(entry(
            actor,
            "reservation.commit",
            &reservation,
            serde_json::json!({
                "amount": reservation.amount, "events": events.len(), "stored": stored, "expired": expired,
            }),
        ));
        answers[i] = Some(Done::Commit(Committed::Done { reservation, outcomes, expired }));
    }

    // Releases: the open ones among them closed.
    let ids: Vec<Uuid> = changes
        .iter()
        .filter_map(|c| if let Change::Release { id, .. } = c { Some(*id) } else { None })
        .collect();
    let mut released = close(&mut tx, ids, "released").await?;
    for (i, change) in changes.iter().enumerate() {
        let Change::Release { id, actor } = change else { continue };
        let reservation = released.remove(id);
        if let Some(reservation) = &reservation {
            audit.push(entry(
                actor,
                "reservation.release",
                reservation,
                serde_json::json!({"amount": reservation.amount}),
            ));
        }
        answers[i] = Some(Done::Release(reservation));
    }

    audit::record_all_in(&mut tx, &audit).await?;
    tx.commit().await?;
    // Every change is answered above (a hold whose row did not come back, which Postgres does
    // not do, would answer as refused).
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or(Done::Hold(Created { reservation: None, judged: None, replayed: false })))
        .collect())
}

/// A hold change's customer and idempotency key, if it has one.
fn hold_key(change: &Change) -> Option<(CustomerId, &str)> {
    match change {
        Change::Hold { customer, key: Some(key), .. } => Some((*customer, key.as_str())),
        _ => None,
    }
}

/// A hold made with an idempotency key, and whether it still holds.
#[derive(sqlx::FromRow)]
struct Keyed {
    #[sqlx(flatten)]
    reservation: ReservationRow,
    idempotency_key: String,
    open: bool,
}

/// The holds these customers' keys made, each with whether it still holds (open and not past
/// its `expires_at`, as enforcement counts holds). No statement when no key is asked with.
async fn held_with(
    tx: &mut PgConnection,
    keys: &[(CustomerId, &str)],
) -> Result<HashMap<(CustomerId, String), (ReservationRow, bool)>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (customers, keys): (Vec<Uuid>, Vec<&str>) = keys.iter().map(|(c, k)| (c.as_uuid(), *k)).unzip();
    let rows: Vec<Keyed> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, idempotency_key, closed_at IS NULL AND expires_at > clock_timestamp() AS open
         FROM reservations
         WHERE (customer_id, idempotency_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"
    )))
    .bind(customers)
    .bind(keys)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let customer = CustomerId::from(row.reservation.customer_id);
            ((customer, row.idempotency_key), (row.reservation, row.open))
        })
        .collect())
}

/// An ask's code and value, if it was asked for as an event.
fn asked(ask: &Ask) -> (Option<&str>, Option<f64>) {
    match ask {
        Ask::Amount(_) => (None, None),
        Ask::Event { code, value } => (Some(code.as_str()), Some(*value)),
    }
}

/// New holds' columns, inserted with one statement.
#[derive(Default)]
struct NewRows {
    ids: Vec<Uuid>,
    customers: Vec<Uuid>,
    amounts: Vec<i64>,
    codes: Vec<Option<String>>,
    values: Vec<Option<f64>>,
    ttls: Vec<f64>,
    created_by: Vec<String>,
    keys: Vec<Option<String>>,
    subjects: Vec<Option<String>>,
}

impl NewRows {
    fn push(
        &mut self,
        customer: CustomerId,
        (amount, ask, subject): (i64, &Ask, Option<&Subject>),
        ttl: Duration,
        by: &str,
        key: Option<&str>,
    ) -> Uuid {
        let id = Uuid::new_v4();
        let (code, value) = asked(ask);
        self.ids.push(id);
        self.customers.push(customer.as_uuid());
        self.amounts.push(amount);
        self.codes.push(code.map(str::to_owned));
        self.values.push(value);
        self.ttls.push(ttl.as_secs_f64());
        self.created_by.push(by.to_owned());
        self.keys.push(key.map(str::to_owned));
        self.subjects.push(subject.map(|s| s.as_str().to_owned()));
        id
    }

    async fn insert(self, tx: &mut PgConnection) -> Result<HashMap<Uuid, ReservationRow>, sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(HashMap::new());
        }
        // A key's hold made meanwhile by another transaction is skipped, not an error; without
        // keys the clause is left out (nothing to conflict on).
        let on_conflict = if self.keys.iter().any(Option::is_some) {
            "ON CONFLICT (customer_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        } else {
            ""
        };
        let rows: Vec<ReservationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO reservations (id, customer_id, amount, code, value, expires_at, created_by, idempotency_key,
                                       subject)
             SELECT id, customer_id, amount, code, value, now() + make_interval(secs => ttl), created_by, key, subject
             FROM unnest($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::float8[], $6::float8[], $7::text[],
                         $8::text[], $9::text[])
                  AS r(id, customer_id, amount, code, value, ttl, created_by, key, subject)
             {on_conflict}
             RETURNING {COLUMNS}"
        )))
        .bind(self.ids)
        .bind(self.customers)
        .bind(self.amounts)
        .bind(self.codes)
        .bind(self.values)
        .bind(self.ttls)
        .bind(self.created_by)
        .bind(self.keys)
        .bind(self.subjects)
        .fetch_all(&mut *tx)
        .await?;
        Ok(rows.into_iter().map(|r| (r.id, r)).collect())
    }
}

/// Closes the open holds among `ids` as `how`; returns those it closed.
async fn close(
    tx: &mut PgConnection,
    ids: Vec<Uuid>,
    how: &str,
) -> Result<HashMap<Uuid, ReservationRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    // A commit (its holds locked and checked) closes one that expired meanwhile too.
    let open = if how == "committed" { "true" } else { "closed_at IS NULL" };
    let rows: Vec<ReservationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE reservations SET closed_at = now(), closed_as = $2
         WHERE id = ANY($1) AND {open} RETURNING {COLUMNS}"
    )))
    .bind(ids)
    .bind(how)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

fn entry(
    actor: &Actor,
    action: &str,
    reservation: &ReservationRow,
    details: serde_json::Value,
) -> audit::Entry {
    actor.entry(action, Some(CustomerId::from(reservation.customer_id)), reservation.id.to_string(), details)
}

/// The reservation, if there is one with this id.
pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<ReservationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM reservations WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// A reservation and whether it is past its `expires_at`.
#[derive(sqlx::FromRow)]
struct ReservationAnd {
    #[sqlx(flatten)]
    reservation: ReservationRow,
    lapsed: bool,
}

/// Closes every open hold past its `expires_at`, each audited once (a replica that finds one
/// another is closing waits, then skips it). Returns how many.
pub async fn expire(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let expired: Vec<ReservationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE reservations SET closed_at = now(), closed_as = 'expired'
         WHERE closed_at IS NULL AND expires_at <= now() RETURNING {COLUMNS}"
    )))
    .fetch_all(&mut *tx)
    .await?;
    if expired.is_empty() {
        return Ok(0);
    }
    let actor = Actor::usage_gate();
    let entries: Vec<audit::Entry> = expired
        .iter()
        .map(|reservation| {
            let details = serde_json::json!({
                "amount": reservation.amount, "expires_at": reservation.expires_at,
            });
            entry(&actor, "reservation.expire", reservation, details)
        })
        .collect();
    audit::record_all_in(&mut tx, &entries).await?;
    tx.commit().await?;
    metrics::counter!("usage_gate_reservations_total", "outcome" => "expired")
        .increment(expired.len() as u64);
    Ok(expired.len())
}

/// The customer's open holds, newest first.
pub async fn list_open(pool: &PgPool, customer: CustomerId) -> Result<Vec<ReservationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM reservations
         WHERE customer_id = $1 AND closed_at IS NULL AND expires_at > now()
         ORDER BY created_at DESC, id"
    )))
    .bind(customer.as_uuid())
    .fetch_all(pool)
    .await
}

/// Open holds per customer: of `customers`, or of every customer with any when None.
pub async fn open_holds(
    pool: &PgPool,
    customers: Option<&[CustomerId]>,
) -> Result<HashMap<CustomerId, Box<[Hold]>>, sqlx::Error> {
    let rows: Vec<(Uuid, Uuid, i64, DateTime<Utc>)> = match customers {
        Some(customers) => {
            let ids: Vec<Uuid> = customers.iter().map(|c| c.as_uuid()).collect();
            sqlx::query_as(
                "SELECT customer_id, id, amount, expires_at FROM reservations
                 WHERE customer_id = ANY($1) AND closed_at IS NULL",
            )
            .bind(ids)
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query_as(
                "SELECT customer_id, id, amount, expires_at FROM reservations WHERE closed_at IS NULL",
            )
            .fetch_all(pool)
            .await?
        }
    };
    let mut holds: HashMap<CustomerId, Vec<Hold>> = HashMap::new();
    for (customer, id, amount, expires_at) in rows {
        holds.entry(CustomerId::from(customer)).or_default().push(Hold::of(id, amount, expires_at));
    }
    Ok(holds.into_iter().map(|(customer, holds)| (customer, holds.into_boxed_slice())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn earlier(amount: i64, event: Option<(&str, f64)>) -> ReservationRow {
        ReservationRow {
            id: Uuid::new_v4(),
            customer_id: Uuid::new_v4(),
            amount,
            code: event.map(|(code, _)| code.to_owned()),
            value: event.map(|(_, value)| value),
            created_at: Utc::now(),
            expires_at: Utc::now(),
            created_by: "test".into(),
            closed_at: None,
            closed_as: None,
        }
    }

    fn outcome(done: Done) -> Result<Uuid, Reuse> {
        match done {
            Done::Hold(Created { reservation: Some(r), replayed: true, .. }) => Ok(r.id),
            Done::KeyReused(why, _) => Err(why),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_key_answers_with_its_hold_when_asked_for_the_same_way_and_the_hold_still_holds() {
        let amount = earlier(250, None);
        assert_eq!(outcome(replay(&Ask::Amount(250), &amount, true, None)), Ok(amount.id));
        assert_eq!(outcome(replay(&Ask::Amount(251), &amount, true, None)), Err(Reuse::OtherAsk));
        assert_eq!(outcome(replay(&Ask::Amount(250), &amount, false, None)), Err(Reuse::Closed));
        let tokens = |value| Ask::Event { code: "tokens".into(), value };
        assert_eq!(outcome(replay(&tokens(1.5), &amount, true, None)), Err(Reuse::OtherAsk));

        // Priced from an event: the same code and value, whatever it was priced at.
        let priced = earlier(40, Some(("tokens", 1.5)));
        assert_eq!(outcome(replay(&tokens(1.5), &priced, true, None)), Ok(priced.id));
        assert_eq!(outcome(replay(&tokens(2.0), &priced, true, None)), Err(Reuse::OtherAsk));
        assert_eq!(outcome(replay(&Ask::Amount(40), &priced, true, None)), Err(Reuse::OtherAsk));
    }
}
