//! Admission: the one owner of what comes in and may be refused. Usage events (one, or a batch)
//! and holds are judged here: events sent plainly are stored as they are; enforced ones, and
//! holds, are admitted only if they fit under the customer's lowest DISABLE limit, judged under
//! the customer's lock (`enforce`), and a refusal is explained with the decision it was judged
//! by. `POST /v1/events`, its batch and `POST …/reservations` all go through here.
//!
//! `ingest` commits concurrent requests' events together (group commit).

pub mod ingest;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::Actor;
use crate::check::{Checker, Decision, Enforcement};
use crate::db::StorageError;
use crate::domain::{CustomerId, FieldError};
use crate::enforce::Gate;
use crate::outbox::IncomingEvent;
use crate::outbox::store::Accepted;
use crate::projection::Projection;
use crate::reservations::Ask;
use crate::reservations::store::{ReservationRow, Reuse};
use crate::reservations::{HoldError, Judgement};
use crate::subscriptions::Subscriptions;
use ingest::Ingest;

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
    pub reservation: ReservationRow,
    pub decision: Decision,
    pub replayed: bool,
}

impl From<sqlx::Error> for AdmissionError {
    fn from(e: sqlx::Error) -> Self {
        AdmissionError::Storage(e.into())
    }
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

    /// One event: stored, or (enforced) refused with the decision it was judged by.
    pub async fn event(&self, event: IncomingEvent, enforce: bool) -> Result<Accepted, AdmissionError> {
        let customers = if enforce {
            vec![Some(self.owner(&event, "").map_err(AdmissionError::Unresolved)?)]
        } else {
            vec![None]
        };
        match self.events(vec![event], customers).await?.pop() {
            Some(Admitted::Stored(accepted)) => Ok(accepted),
            Some(Admitted::Refused(decision)) => Err(AdmissionError::OverLimit(decision)),
            // Not reached: every event handed in is answered.
            None => Ok(Accepted::Conflict),
        }
    }

    /// Events in one commit, answered in order. An event with a customer (see [`Admission::owner`])
    /// is enforced: a customer's events are admitted in order while they fit, and from the first
    /// that does not, its later ones are refused too; one BillaBear does not know, or cannot be
    /// asked about, is admitted or refused whole by the fallback policy.
    pub async fn events(
        &self,
        events: Vec<IncomingEvent>,
        customers: Vec<Option<CustomerId>>,
    ) -> Result<Vec<Admitted>, StorageError> {
        debug_assert_eq!(events.len(), customers.len());
        if customers.iter().all(Option::is_none) {
            let accepted = self.ingest.accept(events).await?;
            return Ok(accepted.into_iter().map(Admitted::Stored).collect());
        }
        // One lookup per customer; a fallback decision refuses or admits all its events. foldhash,
        // as for the other maps on a request's path.
        let mut decided: HashMap<CustomerId, Enforcement, foldhash::fast::RandomState> = HashMap::default();
        for customer in customers.iter().flatten() {
            if !decided.contains_key(customer) {
                decided.insert(*customer, self.checker.enforcement(*customer).await);
            }
        }
        let mut answers: Vec<Option<Admitted>> = vec![None; events.len()];
        let mut kept = Vec::with_capacity(events.len());
        let mut gates: Vec<Option<Gate>> = Vec::with_capacity(events.len());
        for (i, (event, customer)) in events.into_iter().zip(&customers).enumerate() {
            match customer.and_then(|c| decided.get(&c)) {
                Some(Enforcement::Gate { gate, .. }) => {
                    gates.push(Some(gate.clone()));
                    kept.push((i, event));
                }
                Some(Enforcement::Decided(decision)) if !decision.allowed => {
                    answers[i] = Some(Admitted::Refused(Box::new(decision.clone())));
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
                (Accepted::OverLimit, Some(judged), Some((customer, lookup))) => Admitted::Refused(Box::new(
                    self.checker.explain_judged(customer, lookup.clone(), &judged),
                )),
                (accepted, ..) => Admitted::Stored(accepted),
            });
        }
        // Every event is answered above; a missing answer would be a storage fault.
        Ok(answers.into_iter().map(|a| a.unwrap_or(Admitted::Stored(Accepted::Conflict))).collect())
    }

    /// A hold of `ask` for the customer, for `ttl`: granted if it fits under its lowest DISABLE
    /// limit with its pending usage and open holds (judged under its lock), with the decision
    /// that counts it; refused with the decision it was judged by otherwise. With a `key` that
    /// made one of the customer's holds before, that hold (see `reservations::store::write`).
    pub async fn hold(
        &self,
        customer: CustomerId,
        ask: &Ask,
        ttl: Duration,
        actor: &Actor,
        key: Option<String>,
    ) -> Result<Held, AdmissionError> {
        let checker = &self.checker;
        let (ask, actor) = (ask.clone(), actor.clone());
        match checker.enforcement(customer).await {
            Enforcement::Gate { gate, lookup } => {
                let Judgement { reservation, judged, replayed } =
                    checker.holds.create(gate, ask, ttl, actor, key).await?;
                let Some(reservation) = reservation else {
                    let decision = checker.explain_judged(customer, lookup, &judged);
                    return Err(AdmissionError::OverLimit(Box::new(decision)));
                };
                let with_hold = Projection {
                    reserved: judged.projection.reserved.saturating_add(reservation.amount),
                    ..judged.projection
                };
                let decision = checker.explain_with(customer, None, lookup, with_hold);
                Ok(Held { reservation, decision, replayed })
            }
            Enforcement::Decided(decision) if !decision.allowed => {
                Err(AdmissionError::OverLimit(Box::new(decision)))
            }
            // Unknown to BillaBear, or BillaBear unreachable with nothing cached, and the policy
            // allows: held as asked (an event's price is unknown: 0), the decision says why.
            Enforcement::Decided(decision) => {
                let (reservation, replayed) = checker.holds.grant(customer, ask, ttl, actor, key).await?;
                Ok(Held { reservation, decision, replayed })
            }
        }
    }
}
