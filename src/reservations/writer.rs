//! Group commit for holds: every hold of a replica goes through one writer, and every commit
//! and release through another; each writes whatever waits in one transaction
//! ([`store::write`]) on a connection of its own, then reloads the changed customers' holds in
//! the mirror and answers.
//!
//! One at a time, a hold took its customer's lock for five round trips and the audit log's
//! insert lock until its commit: 289 hold → commit pairs a second on one customer
//! (`bench/enforce.py`), whatever the plan allowed. Written together, a batch takes each lock
//! once for all of its changes, so the rate grows with the load instead of queueing.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::store::{self, Change, Committed, Done};
use crate::db::{FailureKind, StorageError};
use crate::domain::CustomerId;
use crate::mirror::Mirror;
use crate::policy::PolicySettings;

use super::Hold;

/// Changes one transaction holds at most (each commit may carry up to 1,000 events).
const MAX_CHANGES: usize = 256;
/// How long a batch may take before its callers get 503; its changes may still have been
/// made (a retried commit then answers 409, a retried hold holds twice until it expires).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a batch that lost a race (deadlock with the expiry, serialization) is tried again.
const CONTENTION_RETRIES: usize = 3;

type Reply = oneshot::Sender<Result<Done, StorageError>>;

/// The writers' queues; cheap to clone. New holds go to one writer, commits and releases to
/// another, on connections of their own: a hold → commit pair then takes two Postgres backends
/// at once, not one (with one writer its backend was the bottleneck, at 2,833 pairs a second
/// on one customer, `bench/enforce.py`). Commits take no customer's lock, so the two never
/// wait on each other but for the audit log's insert lock, held for one statement each.
#[derive(Clone)]
pub struct Writer {
    holds: mpsc::UnboundedSender<(Change, Reply)>,
    closes: mpsc::UnboundedSender<(Change, Reply)>,
}

impl Writer {
    /// Starts the writer as a task of the current runtime; it stops when every handle is gone.
    pub fn start(
        pool: PgPool,
        connect_timeout: Duration,
        policy: PolicySettings,
        open: Mirror<CustomerId, Box<[Hold]>>,
    ) -> (Self, [tokio::task::AbortHandle; 2]) {
        let start = || {
            let (queue, jobs) = mpsc::unbounded_channel();
            let writing = Writing {
                pool: pool.clone(),
                connect_timeout,
                policy: policy.clone(),
                open: open.clone(),
                conn: None,
            };
            (queue, tokio::spawn(writing.run(jobs)).abort_handle())
        };
        let (holds, holding) = start();
        let (closes, closing) = start();
        (Self { holds, closes }, [holding, closing])
    }

    /// Writes the change with whatever else waits, and answers once committed (and mirrored).
    pub async fn write(&self, change: Change) -> Result<Done, StorageError> {
        let closed = || StorageError::from(sqlx::Error::PoolClosed);
        let (reply, answer) = oneshot::channel();
        let queue = if matches!(change, Change::Hold { .. }) { &self.holds } else { &self.closes };
        queue.send((change, reply)).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

struct Writing {
    pool: PgPool,
    connect_timeout: Duration,
    policy: PolicySettings,
    open: Mirror<CustomerId, Box<[Hold]>>,
    /// Dropped after a failure other than a refused value: its state is unknown.
    conn: Option<PgConnection>,
}

impl Writing {
    async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<(Change, Reply)>) {
        let mut batch = Vec::with_capacity(MAX_CHANGES);
        while jobs.recv_many(&mut batch, MAX_CHANGES).await > 0 {
            let (changes, replies): (Vec<Change>, Vec<Reply>) = batch.drain(..).unzip();
            metrics::histogram!("usage_gate_reservation_commit_changes").record(changes.len() as f64);
            let answers = match self.write(&changes).await {
                Ok(done) => done.into_iter().map(Ok).collect(),
                Err(error) if changes.len() > 1 && error.kind != FailureKind::Unavailable => {
                    // One change failed the shared statements: each alone, so a failure stays
                    // with the change that caused it.
                    tracing::warn!(error = %error, changes = changes.len(), "reservations: a shared commit failed; writing its changes one by one");
                    let mut answers = Vec::with_capacity(changes.len());
                    for change in changes.chunks(1) {
                        answers.push(self.write(change).await.and_then(|mut done| {
                            done.pop().ok_or_else(|| StorageError::from(sqlx::Error::RowNotFound))
                        }));
                    }
                    answers
                }
                Err(error) => changes.iter().map(|_| Err(error.clone())).collect(),
            };
            self.mirror(&changes, &answers).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
    }

    /// Writes the changes in one transaction, again if it lost a race.
    async fn write(&mut self, changes: &[Change]) -> Result<Vec<Done>, StorageError> {
        let mut attempt = 0;
        loop {
            let result = self.write_once(changes).await;
            if let Err(e) = &result
                && e.kind != FailureKind::Data
            {
                self.conn = None;
            }
            match result {
                Err(e) if e.kind == FailureKind::Contention && attempt < CONTENTION_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    async fn write_once(&mut self, changes: &[Change]) -> Result<Vec<Done>, StorageError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let options = self.pool.connect_options();
                let connecting = PgConnection::connect_with(&options);
                self.conn.insert(
                    tokio::time::timeout(self.connect_timeout, connecting)
                        .await
                        .map_err(|_| StorageError::timed_out())??,
                )
            }
        };
        let written = tokio::time::timeout(WRITE_TIMEOUT, store::write(conn, changes, &self.policy))
            .await
            .map_err(|_| StorageError::timed_out())??;
        count(&written);
        Ok(written)
    }

    /// Reloads the changed customers' holds, so this replica's next check counts them
    /// without waiting for the notification (one statement for the batch).
    async fn mirror(&self, changes: &[Change], answers: &[Result<Done, StorageError>]) {
        let mut customers: Vec<CustomerId> = changes
            .iter()
            .zip(answers)
            .filter_map(|(change, answer)| match (change, answer) {
                (Change::Hold { customer, .. }, Ok(Done::Hold(created)))
                    if created.reservation.is_some() && !created.replayed =>
                {
                    Some(*customer)
                }
                (
                    _,
                    Ok(Done::Commit(Committed::Done { reservation, .. }) | Done::Release(Some(reservation))),
                ) => Some(CustomerId::from(reservation.customer_id)),
                _ => None,
            })
            .collect();
        if customers.is_empty() {
            return;
        }
        customers.sort_unstable();
        customers.dedup();
        if let Err(e) = self.open.reload_keys(&customers).await {
            tracing::warn!(error = %e, "reservations: cannot reload the changed holds; the notification will");
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
