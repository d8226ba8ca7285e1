//! Admission: the one owner of what comes in and may be refused. Usage events (one, or a batch)
//! and holds are judged here: events sent plainly are stored as they are; enforced ones, and
//! holds, are admitted only if they fit under the customer's lowest DISABLE limit, judged under
//! the customer's lock (`enforce`), and a refusal is explained with the decision it was judged
//! by. `POST /v1/events`, its batch, and holds (made, committed, released) all go through here.
//!
//! `ingest` commits concurrent requests' events together (group commit).

pub mod ingest;

use std::collections::HashMap;
use std::sync::Arc;

use crate::audit::Actor;
use crate::check::{Checker, Decision, Enforcement};
use crate::db::StorageError;
use crate::domain::{CustomerId, FieldError, Target};
use crate::enforce::{Gate, Judged};
use crate::outbox::IncomingEvent;
use crate::outbox::store::Accepted;
use crate::projection::{Code, PendingUsage, Projection};
use crate::reservations::NewHold;
use crate::reservations::{Committed, HoldError, Judgement, Reservation, Reuse};
use crate::snapshot::Lookup;
use crate::subscriptions::Subscriptions;
use ingest::Ingest;
use uuid::Uuid;

/// Why an event or a hold was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// Enforced, with a subscription whose customer usage-gate has not seen listed.
    #[error("{}: {}", .0.field, .0.message)]
    Unresolved(FieldError),
    /// It does not fit under the customer's limit: the decision it was judged by (`cost`:
    /// what it would have added). Nothing was stored.
    #[error("customer {} is over its usage limit with this", .0.customer_id)]
    OverLimit(Box<Decision>),
    /// A hold's idempotency key made another hold, or one that holds nothing now: nothing held.
    #[error("{message}")]
    KeyReused { why: Reuse, message: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A state admission's own code should never reach (an event left unanswered, a refusal
    /// without the judgement behind it): a fault of usage-gate, answered 500 with this logged.
    #[error("admission: {0}")]
    Impossible(&'static str),
}

impl From<HoldError> for AdmissionError {
    fn from(e: HoldError) -> Self {
        match e {
            HoldError::KeyReused(why, _) => AdmissionError::KeyReused { why, message: e.to_string() },
            HoldError::Storage(e) => AdmissionError::Storage(e),
        }
    }
}

/// A hold granted, with the decision that counts it; `replayed`: made by an earlier request
/// with the same idempotency key (nothing new held).
#[derive(Debug)]
pub struct Held {
    pub reservation: Reservation,
    pub decision: Decision,
    pub replayed: bool,
}

impl From<sqlx::Error> for AdmissionError {
    fn from(e: sqlx::Error) -> Self {
        AdmissionError::Storage(e.into())
    }
}

/// The outbox's answer for an event the enforcement passed; none (refused for the limit, not
/// stored) is an error here: only an event judged against its customer's gate is refused, and
/// that is answered before this.
fn answered(accepted: Option<Accepted>) -> Result<Accepted, AdmissionError> {
    accepted.ok_or(AdmissionError::Impossible("an event refused without a judgement"))
}

/// What became of one event handed in.
#[derive(Debug, Clone)]
pub enum Admitted {
    /// Stored, or answered as the repeat it is (duplicate, conflict, dead), or refused by
    /// Postgres (`Accepted::Refused`).
    Stored(Accepted),
    /// Enforced and over the limit: not stored. The decision it was judged by.
    Refused(Box<Decision>),
}

/// An event judged against its customer's gate: the lookup the gate came from and the
/// judgement made under the customer's lock.
#[derive(Debug, Clone)]
struct For {
    customer: CustomerId,
    lookup: Lookup,
    judged: Judged,
}

const UNANSWERED: &str = "an event handed in was not answered";

/// One event admitted: what became of it, and the customer's decision counting it (when it
/// names a customer whose snapshot is cached; never fetched for this answer).
#[derive(Debug)]
pub struct EventAdmitted {
    pub stored: Accepted,
    pub decision: Option<Decision>,
}

/// The admission service: the check (snapshots, overrides, holds, and the holds' writer), group
/// commit, and who owns which subscription.
pub struct Admission {
    checker: Arc<Checker>,
    ingest: Ingest,
    subscriptions: Subscriptions,
}

impl Admission {
    pub fn new(checker: Arc<Checker>, ingest: Ingest, subscriptions: Subscriptions) -> Self {
        Self { checker, ingest, subscriptions }
    }

    /// Starts this thread's event writer (see [`Ingest::attach_worker`]).
    pub fn attach_worker(&self) {
        self.ingest.attach_worker();
    }

    /// The customer an enforced event is judged for: the one it names, or its subscription's
    /// owner as a listing showed it (BillaBear has no lookup the other way). `prefix` goes
    /// before the field's name (`events[3].`).
    pub fn owner(&self, event: &IncomingEvent, prefix: &str) -> Result<CustomerId, FieldError> {
        event.target.customer(|s| self.subscriptions.owner(s)).ok_or_else(|| {
            FieldError::new(
                format!("{prefix}subscription"),
                "enforce=true needs the subscription's customer, and usage-gate has not seen it in a \
                 listing of its customer's subscriptions: send `customer` instead, or check the customer first",
            )
        })
    }

    /// One event: stored, with the customer's decision counting it, or (enforced) refused
    /// with the decision it was judged by. Events by subscription carry no decision.
    pub async fn event(&self, event: IncomingEvent, enforce: bool) -> Result<EventAdmitted, AdmissionError> {
        let target = event.target;
        let customers = if enforce {
            vec![Some(self.owner(&event, "").map_err(AdmissionError::Unresolved)?)]
        } else {
            vec![None]
        };
        // Not enforced: the customer's pending usage as this replica's copy holds it before the
        // commit, and this event, so a caller that reads the decision to decide whether to go on
        // is not told "allowed" by the estimate from before it. (The copy learns of the commit
        // a moment later; reading Postgres instead cost by-customer ingest 80% of its rate,
        // `bench/events.py`.) A code no price lists is priced by nothing: not counted, and not
        // interned (clients' codes must not grow the table).
        let before = match target {
            Target::Customer(customer) if !enforce => {
                let this = Code::known(event.code.as_str()).map(|code| PendingUsage {
                    code,
                    units: event.value,
                    events: 1,
                });
                Some((customer, self.checker.pending.entries(target), this))
            }
            _ => None,
        };
        let (admitted, judged) =
            self.admit(vec![event], customers).await?.pop().ok_or(AdmissionError::Impossible(UNANSWERED))?;
        let stored = match admitted {
            Admitted::Stored(stored) => stored,
            Admitted::Refused(decision) => return Err(AdmissionError::OverLimit(decision)),
        };
        let decision = match (judged, before) {
            // Enforced: what was judged under the customer's lock is the truth, a retry's included
            // (its first copy is in the projection); this event is added if it was stored now.
            (Some(For { customer, lookup, judged }), _) if matches!(target, Target::Customer(_)) => {
                let mut projection = judged.projection;
                if stored == Accepted::New {
                    projection.pending = projection.pending.saturating_add(judged.cost);
                    projection.pending_events += 1;
                }
                Some(self.checker.explain_with(customer, None, lookup, projection))
            }
            // Not enforced, nothing was judged: a retry (rare) may come before this replica's
            // copy holds its first copy, so Postgres says what is pending.
            (None, Some((customer, mut pending, this))) => {
                match stored {
                    Accepted::New => pending.extend(this),
                    _ => pending = self.checker.pending.current(target).await.unwrap_or(pending),
                }
                self.checker.decision_with_pending(customer, &pending)
            }
            _ => None,
        };
        Ok(EventAdmitted { stored, decision })
    }

    /// Events in one commit, answered in order. An event with a customer (see [`Admission::owner`])
    /// is enforced: a customer's events are admitted in order while they fit, and from the first
    /// that does not, its later ones are refused too; one BillaBear does not know, or cannot be
    /// asked about, is admitted or refused whole by the fallback policy.
    pub async fn events(
        &self,
        events: Vec<IncomingEvent>,
        customers: Vec<Option<CustomerId>>,
    ) -> Result<Vec<Admitted>, AdmissionError> {
        Ok(self.admit(events, customers).await?.into_iter().map(|(admitted, _)| admitted).collect())
    }

    /// As [`Admission::events`], each stored event judged against its customer's gate with
    /// what it was judged on.
    async fn admit(
        &self,
        events: Vec<IncomingEvent>,
        customers: Vec<Option<CustomerId>>,
    ) -> Result<Vec<(Admitted, Option<For>)>, AdmissionError> {
        debug_assert_eq!(events.len(), customers.len());
        let events = self.tallied(events, &customers);
        if customers.iter().all(Option::is_none) {
            let count = events.len();
            let accepted = self.ingest.accept(events).await?;
            if accepted.len() != count {
                return Err(AdmissionError::Impossible(UNANSWERED));
            }
            return Ok(accepted.into_iter().map(|a| (Admitted::Stored(a), None)).collect());
        }
        // One lookup per customer; a fallback decision refuses or admits all its events. foldhash,
        // as for the other maps on a request's path.
        let mut decided: HashMap<CustomerId, Enforcement, foldhash::fast::RandomState> = HashMap::default();
        for customer in customers.iter().flatten() {
            if !decided.contains_key(customer) {
                decided.insert(*customer, self.checker.enforcement(*customer).await);
            }
        }
        let mut answers: Vec<Option<(Admitted, Option<For>)>> = vec![None; events.len()];
        let mut kept = Vec::with_capacity(events.len());
        let mut gates: Vec<Option<Gate>> = Vec::with_capacity(events.len());
        for (i, (event, customer)) in events.into_iter().zip(&customers).enumerate() {
            match customer.and_then(|c| decided.get(&c)) {
                Some(Enforcement::Gate { gate, .. }) => {
                    gates.push(Some(gate.clone()));
                    kept.push((i, event));
                }
                Some(Enforcement::Decided(decision)) if !decision.allowed => {
                    answers[i] = Some((Admitted::Refused(Box::new(decision.clone())), None));
                }
                _ => {
                    gates.push(None);
                    kept.push((i, event));
                }
            }
        }
        let (indices, events): (Vec<usize>, Vec<IncomingEvent>) = kept.into_iter().unzip();
        let outcomes = self.ingest.accept_enforced(events, gates).await?;
        for (i, outcome) in indices.into_iter().zip(outcomes) {
            let gate = customers[i].and_then(|customer| match decided.get(&customer) {
                Some(Enforcement::Gate { lookup, .. }) => Some((customer, lookup)),
                _ => None,
            });
            answers[i] = Some(match (outcome.accepted, outcome.judged, gate) {
                // Only an event judged against its customer's gate is refused for the limit.
                (None, Some(judged), Some((customer, lookup))) if !judged.admitted => {
                    let decision = self.checker.explain_judged(customer, lookup.clone(), &judged);
                    (Admitted::Refused(Box::new(decision)), None)
                }
                (accepted, Some(judged), Some((customer, lookup))) => {
                    let judged = For { customer, lookup: lookup.clone(), judged };
                    (Admitted::Stored(answered(accepted)?), Some(judged))
                }
                (accepted, ..) => (Admitted::Stored(answered(accepted)?), None),
            });
        }
        answers.into_iter().map(|a| a.ok_or(AdmissionError::Impossible(UNANSWERED))).collect()
    }

    /// The events, each plain one carrying what it adds to the rules that bind its customer.
    /// An enforced one (a customer in `enforced`, by position) is counted as it is judged,
    /// under the customer's lock (`enforce::store::accept`), so it is not priced here too.
    fn tallied(&self, mut events: Vec<IncomingEvent>, enforced: &[Option<CustomerId>]) -> Vec<IncomingEvent> {
        if !self.checker.rules.any() {
            return events;
        }
        for (i, event) in events.iter_mut().enumerate() {
            if enforced.get(i).is_some_and(Option::is_some) {
                continue;
            }
            if let Some(customer) = event.target.customer(|s| self.subscriptions.owner(s)) {
                event.tallies = self.checker.tallies(customer, event);
            }
        }
        events
    }

    /// A hold of `hold.ask` for the customer (by `hold.subject`), for `hold.ttl`: granted if it fits under its lowest DISABLE
    /// limit with its pending usage and open holds (judged under its lock), with the decision
    /// that counts it; refused with the decision it was judged by otherwise. With a `key` that
    /// made one of the customer's holds before, that hold (see `reservations::store::write`).
    pub async fn hold(
        &self,
        customer: CustomerId,
        hold: &NewHold,
        actor: &Actor,
        key: Option<String>,
    ) -> Result<Held, AdmissionError> {
        let checker = &self.checker;
        let (hold, actor) = (hold.clone(), actor.clone());
        match checker.enforcement(customer).await {
            Enforcement::Gate { gate, lookup } => {
                let Judgement { reservation, judged, replayed } =
                    checker.holds.create(gate, hold, actor, key).await?;
                let Some(reservation) = reservation else {
                    let decision = checker.explain_judged(customer, lookup, &judged);
                    return Err(AdmissionError::OverLimit(Box::new(decision)));
                };
                let with_hold = Projection {
                    reserved: judged.projection.reserved.saturating_add(reservation.amount),
                    ..judged.projection
                };
                let decision = checker.explain_with(customer, None, lookup, with_hold);
                Ok(Held { reservation: reservation.into(), decision, replayed })
            }
            Enforcement::Decided(decision) if !decision.allowed => {
                Err(AdmissionError::OverLimit(Box::new(decision)))
            }
            // Unknown to BillaBear, or BillaBear unreachable with nothing cached, and the policy
            // allows: held as asked (an event's price is unknown: 0), the decision says why.
            Enforcement::Decided(decision) => {
                let (reservation, replayed) = checker.holds.grant(customer, hold, actor, key).await?;
                Ok(Held { reservation: reservation.into(), decision, replayed })
            }
        }
    }

    /// A hold's real usage: stored, and the hold closed, in one transaction (see
    /// `reservations::store::write`). Each event must be the reservation's customer's, as far as
    /// usage-gate can tell (a subscription's owner as a listing showed it).
    pub async fn commit(
        &self,
        id: Uuid,
        events: Vec<IncomingEvent>,
        actor: Actor,
    ) -> Result<Committed, AdmissionError> {
        let events = self.tallied(events, &[]);
        let owners =
            events.iter().map(|event| event.target.customer(|s| self.subscriptions.owner(s))).collect();
        Ok(self.checker.holds.commit(id, events, owners, actor).await?)
    }

    /// Releases an open hold: true, or false when there is none with this id (unknown, or
    /// closed before).
    pub async fn release(&self, id: Uuid, actor: Actor) -> Result<bool, AdmissionError> {
        Ok(self.checker.holds.release(id, actor).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_without_its_judgement_is_an_error_not_a_stored_outcome() {
        assert!(matches!(answered(None), Err(AdmissionError::Impossible(_))));
        let statuses =
            [Accepted::New, Accepted::Duplicate, Accepted::Conflict, Accepted::Dead, Accepted::Refused]
                .map(|a| answered(Some(a)).map(Accepted::as_str).unwrap());
        assert_eq!(statuses, ["accepted", "duplicate", "conflict", "dead", "invalid"]);
    }
}
