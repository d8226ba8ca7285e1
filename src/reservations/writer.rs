//! Group commit for holds: every hold of a replica goes through one writer, and every commit
//! and release through another; each writes whatever waits in one transaction
//! ([`store::write`]) on a connection of its own, then reloads the changed customers' holds in
//! the mirror and answers.
//!
//! One at a time, a hold took its customer's lock for five round trips and the audit log's
//! insert lock until its commit: 289 hold → commit pairs a second on one customer
//! (`bench/enforce.py`), whatever the plan allowed. Written together, a batch takes each lock
//! once for all of its changes, so the rate grows with the load instead of queueing.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::Hold;
use super::store::{self, Change, Committed, Created, Done};
use crate::db::group::{Dedicated, Group, GroupCommit};
use crate::db::{Backends, FailureKind, StorageError};
use crate::domain::CustomerId;
use crate::enforce::Rules;
use crate::mirror::Mirror;
use uuid::Uuid;

/// Changes one transaction holds at most (each commit may carry up to 1,000 events).
const MAX_CHANGES: usize = 256;
/// How long a batch may take before its callers get 503; its changes may still have been
/// made (a retried commit then answers 409, a retried hold holds twice until it expires).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The writers' queues; cheap to clone. New holds go to one writer, commits and releases to
/// another, on connections of their own: a hold → commit pair then takes two Postgres backends
/// at once, not one (with one writer its backend was the bottleneck, at 2,833 pairs a second
/// on one customer, `bench/enforce.py`). Commits take no customer's lock, so the two never
/// wait on each other but for the audit log's insert lock, held for one statement each.
#[derive(Clone)]
pub struct Writer {
    holds: GroupCommit<Holding>,
    closes: GroupCommit<Holding>,
}

impl Writer {
    /// Starts both writers as tasks of the current runtime; they stop when every handle is gone.
    pub fn start(
        pool: PgPool,
        connect_timeout: Duration,
        rules: Rules,
        open: Mirror<CustomerId, Box<[Hold]>>,
        backends: Backends,
    ) -> (Self, [tokio::task::AbortHandle; 2]) {
        let start = || {
            let holding = Holding { rules: rules.clone(), open: open.clone() };
            let db = Dedicated::new(pool.clone(), connect_timeout, WRITE_TIMEOUT).listed_in(backends.clone());
            let (queue, committing) = GroupCommit::new(holding, db, MAX_CHANGES);
            (queue, tokio::spawn(committing.run()).abort_handle())
        };
        let (holds, holding) = start();
        let (closes, closing) = start();
        (Self { holds, closes }, [holding, closing])
    }

    /// Writes the change with whatever else waits, and answers once committed (and mirrored).
    pub async fn write(&self, change: Change) -> Result<Done, StorageError> {
        let queue = if matches!(change, Change::Hold { .. }) { &self.holds } else { &self.closes };
        queue.submit(change).await
    }
}

/// Changes to the holds, written together ([`store::write`]).
struct Holding {
    rules: Rules,
    open: Mirror<CustomerId, Box<[Hold]>>,
}

impl Group for Holding {
    type Request = Change;
    type Answer = Done;

    async fn write(&self, conn: &mut PgConnection, changes: &[Change]) -> Result<Vec<Done>, sqlx::Error> {
        metrics::histogram!("usage_gate_reservation_commit_changes").record(changes.len() as f64);
        let written = store::write(conn, changes, &self.rules).await?;
        count(&written);
        Ok(written)
    }

    /// Puts what the batch committed in this replica's copy of the open holds, so the callers'
    /// next checks count it without waiting for the notification: the holds it made added, those
    /// it closed removed, with no read of Postgres.
    async fn written(&self, changes: &[Change], answers: &[Result<Done, StorageError>]) {
        let mut edits: HashMap<CustomerId, (Vec<Hold>, Vec<Uuid>)> = HashMap::new();
        for (change, answer) in changes.iter().zip(answers) {
            match (change, answer) {
                (
                    Change::Hold { customer, .. },
                    Ok(Done::Hold(Created { reservation: Some(made), replayed, .. })),
                ) if !replayed => {
                    edits.entry(*customer).or_default().0.push(Hold::of(
                        made.id,
                        made.amount,
                        made.expires_at,
                    ));
                }
                (
                    _,
                    Ok(Done::Commit(Committed::Done { reservation, .. }) | Done::Release(Some(reservation))),
                ) => {
                    edits.entry(CustomerId::from(reservation.customer_id)).or_default().1.push(reservation.id)
                }
                _ => {}
            }
        }
        self.open
            .apply(edits.into_iter().collect(), |holds, (made, closed)| {
                // A reload (another replica's notification) may have read the batch's commit
                // already: a hold it made is then in the copy once, not twice.
                let kept = holds
                    .into_iter()
                    .flatten()
                    .filter(|hold| !closed.contains(&hold.id) && !made.iter().any(|m| m.id == hold.id));
                let after: Box<[Hold]> = kept.chain(&made).copied().collect();
                (!after.is_empty()).then_some(after)
            })
            .await;
        // A write that failed other than on a refused value (a timeout, a lost connection) may
        // have committed all the same, and its notification been taken for one already in the
        // copy: read every open hold again (rare, and cheap beside an outage).
        if answers.iter().any(|a| a.as_ref().is_err_and(|e| e.kind != FailureKind::Data))
            && let Err(e) = self.open.reload_all().await
        {
            tracing::warn!(error = %e, "reservations: cannot reload the holds after a failed write; the next notification will");
        }
    }
}

/// The outcomes `usage_gate_reservations_total` counts here (expiry counts `expired`);
/// `replayed`: a hold answered by the one its idempotency key made (a client's retry).
pub(super) const OUTCOMES: [&str; 5] = ["granted", "refused", "committed", "released", "replayed"];

fn count(written: &[Done]) {
    let mut counts = [0u64; 5];
    for done in written {
        match done {
            Done::Hold(created) if created.replayed => counts[4] += 1,
            Done::Hold(created) if created.reservation.is_some() => counts[0] += 1,
            Done::Hold(_) => counts[1] += 1,
            Done::Commit(Committed::Done { .. }) => counts[2] += 1,
            Done::Release(Some(_)) => counts[3] += 1,
            _ => {}
        }
    }
    for (outcome, n) in OUTCOMES.into_iter().zip(counts) {
        if n > 0 {
            metrics::counter!("usage_gate_reservations_total", "outcome" => outcome).increment(n);
        }
    }
}
