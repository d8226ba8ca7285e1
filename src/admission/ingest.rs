//! Group commit: concurrent requests' events are written in shared transactions, and each
//! request is answered with its own outcomes once the commit is done.
//!
//! Every HTTP worker thread has its own writer and its own Postgres connections, made on that
//! thread: a request, its writer and the connections' sockets are all driven by one
//! single-threaded runtime, so handing an event to the writer and waking the request costs no
//! thread switch (going through a shared writer cost about a fifth of the CPU per event). The
//! writer commits everything queued when it is free (up to a cap): under light load a batch is
//! one request and nothing waits; under heavy load, the requests that arrived during the
//! previous commit. Workers commit independently, so their commits overlap; within a worker a
//! second commit overlaps the first only when a large backlog waits (see `COMMITTERS`).
//!
//! Requests with enforced events (`enforce`) go to one more writer, on a thread of its own that
//! `startup` starts (see [`Ingest::new`]): its commits judge them under their customers' locks.
//! Both kinds write through `db::group` (the connection, time limit, retries, and each request
//! alone when a shared commit fails).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, oneshot};

use crate::db::group::{self, Committing, Dedicated, Group, GroupCommit};
use crate::db::{FailureKind, StorageError};
use crate::enforce::Gate;
use crate::enforce::Rules;
use crate::enforce::store::{self as enforce, Outcome};
use crate::entitlements::EntitlementSettings;
use crate::outbox::IncomingEvent;
use crate::outbox::store::{self, Accepted};
use crate::policy::PolicySettings;

/// One request's events, with their gates: one per event when any is enforced (`None`: stored
/// as it is), empty when none is.
pub struct Submitted {
    events: Vec<IncomingEvent>,
    gates: Vec<Option<Gate>>,
}

/// Events one transaction holds at most.
const MAX_EVENTS_PER_COMMIT: usize = 5000;
/// How long a commit may take before its requests get 503. The events may still have been
/// stored; a client's retry then finds them as duplicates, which is the safe side.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's writer for each `Ingest` (tests run several apps in one process).
    static WRITERS: RefCell<HashMap<u64, Rc<Writer>>> = RefCell::new(HashMap::new());
}

/// Events written together: through `enforce` when any is enforced, else one plain statement.
pub struct Ingesting {
    rules: Arc<Rules>,
}

impl Group for Ingesting {
    type Request = Submitted;
    type Answer = Vec<Outcome>;

    fn weight(request: &Submitted) -> usize {
        request.events.len()
    }

    async fn write(
        &self,
        conn: &mut PgConnection,
        requests: &[Submitted],
    ) -> Result<Vec<Vec<Outcome>>, sqlx::Error> {
        let events: Vec<&IncomingEvent> = requests.iter().flat_map(|r| &r.events).collect();
        metrics::histogram!("usage_gate_ingest_commit_events").record(events.len() as f64);
        let outcomes = if requests.iter().any(|r| !r.gates.is_empty()) {
            // Each event numbered by its request: `enforce` keeps a request's refusals in order.
            let mut gates = Vec::with_capacity(events.len());
            let mut numbers = Vec::with_capacity(events.len());
            for (number, request) in requests.iter().enumerate() {
                numbers.extend(std::iter::repeat_n(number as u64, request.events.len()));
                if request.gates.is_empty() {
                    gates.extend(std::iter::repeat_n(None, request.events.len()));
                } else {
                    gates.extend(request.gates.iter().cloned());
                }
            }
            enforce::accept(conn, &events, &gates, &numbers, &self.rules).await?
        } else {
            let accepted = store::accept(conn, &events, &self.rules.entitlements).await?;
            accepted.into_iter().map(|accepted| Outcome { accepted: Some(accepted), judged: None }).collect()
        };
        let mut outcomes = outcomes.into_iter();
        Ok(requests.iter().map(|r| outcomes.by_ref().take(r.events.len()).collect()).collect())
    }

    /// A request alone; if Postgres refuses a value in it, each of its events alone (see
    /// [`Ingesting::write_each`]). A request that was alone already goes straight to that.
    async fn write_alone(
        &self,
        db: &mut Dedicated,
        request: &Submitted,
        failed: &StorageError,
        shared: usize,
    ) -> Result<Vec<Outcome>, StorageError> {
        if shared == 1 && failed.kind == FailureKind::Data {
            return self.write_each(db, request).await;
        }
        match group::write(self, db, std::slice::from_ref(request)).await {
            Err(e) if e.kind == FailureKind::Data && request.events.len() > 1 => {
                self.write_each(db, request).await
            }
            other => other.map(|mut answers| answers.pop().unwrap_or_default()),
        }
    }
}

impl Ingesting {
    /// Writes each event alone and answers `Refused` for those Postgres refuses, so the rest of
    /// a request is stored. Events stored before another kind of failure stay stored: the
    /// client's retry finds them as duplicates, the safe side.
    async fn write_each(
        &self,
        db: &mut Dedicated,
        request: &Submitted,
    ) -> Result<Vec<Outcome>, StorageError> {
        let mut outcomes = Vec::with_capacity(request.events.len());
        for (i, event) in request.events.iter().enumerate() {
            let one = Submitted {
                events: vec![event.clone()],
                gates: request.gates.get(i).cloned().into_iter().collect(),
            };
            match group::write(self, db, std::slice::from_ref(&one)).await {
                Ok(mut answers) => outcomes.extend(answers.pop().unwrap_or_default()),
                Err(e) if e.kind == FailureKind::Data && request.events.len() > 1 => {
                    tracing::warn!(event_id = %event.event_id.as_str(), error = %e, "ingest: Postgres refused an event");
                    outcomes.push(Outcome { accepted: Some(Accepted::Refused), judged: None });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcomes)
    }
}

/// The handle requests use; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    id: u64,
    pool: PgPool,
    connect_timeout: Duration,
    /// What enforced events are judged by, and what events count towards.
    rules: Arc<Rules>,
    /// The enforced writer's queue (see [`Ingest::new`]).
    enforced: GroupCommit<Ingesting>,
}

impl Ingest {
    /// Writers connect with the pool's options, waiting at most `connect_timeout`.
    ///
    /// Requests with enforced events go to one writer of their own, returned to be run on a
    /// thread of its own. An enforced commit holds its customers' locks across its round trips
    /// to Postgres, and on an HTTP worker each reply waited for the worker to finish the
    /// requests ahead of it: the next commit for the customer waited 1.7 ms on average for the
    /// lock (one customer, `bench/enforce.py`), and enforced events ran at 34% of plain ones. On
    /// its own thread the writer reads each reply as it comes, and one writer per replica never
    /// waits on itself.
    pub fn new(
        pool: PgPool,
        connect_timeout: Duration,
        policy: PolicySettings,
        entitlements: EntitlementSettings,
    ) -> (Self, Committing<Ingesting>) {
        let rules = Arc::new(Rules { policy, entitlements });
        let db = Dedicated::new(pool.clone(), connect_timeout, COMMIT_TIMEOUT);
        let (enforced, committing) =
            GroupCommit::new(Ingesting { rules: rules.clone() }, db, MAX_EVENTS_PER_COMMIT);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        (Self { id, pool, connect_timeout, rules, enforced }, committing)
    }

    /// Starts this thread's writer. Call on each HTTP worker thread as it starts (the app
    /// factory runs there), where tasks may be spawned locally.
    pub fn attach_worker(&self) {
        WRITERS.with_borrow_mut(|writers| {
            writers.entry(self.id).or_insert_with(|| {
                Writer::start(self.pool.clone(), self.connect_timeout, self.rules.clone())
            });
        });
    }

    /// Stores the events (in a transaction shared with other requests on this thread) and
    /// answers for each, in order, once committed.
    /// (Without a gate nothing is refused for the limit: every event has the outbox's answer.)
    pub async fn accept(&self, events: Vec<IncomingEvent>) -> Result<Vec<Accepted>, StorageError> {
        let outcomes = self.commit(Submitted { events, gates: vec![] }).await?;
        outcomes
            .into_iter()
            .map(|o| {
                o.accepted.ok_or_else(|| StorageError::impossible("ingest: an event without a gate refused"))
            })
            .collect()
    }

    /// As [`Ingest::accept`], storing each event with a gate only if it fits under its
    /// customer's limit (`enforce`); `gates` has one entry per event. Without any gate the
    /// events are stored as [`Ingest::accept`] stores them.
    pub async fn accept_enforced(
        &self,
        events: Vec<IncomingEvent>,
        gates: Vec<Option<Gate>>,
    ) -> Result<Vec<Outcome>, StorageError> {
        debug_assert_eq!(events.len(), gates.len());
        let gates = if gates.iter().any(Option::is_some) { gates } else { vec![] };
        self.commit(Submitted { events, gates }).await
    }

    async fn commit(&self, request: Submitted) -> Result<Vec<Outcome>, StorageError> {
        if !request.gates.is_empty() {
            return self.enforced.submit(request).await;
        }
        let writer = WRITERS.with_borrow(|writers| writers.get(&self.id).filter(|w| w.alive()).cloned());
        let Some(writer) = writer else {
            // No writer here (not a worker thread, or its writer has stopped): one commit per call,
            // on a connection from the pool.
            let mut conn = self.pool.acquire().await?;
            let ingesting = Ingesting { rules: self.rules.clone() };
            let mut answers = ingesting.write(&mut conn, std::slice::from_ref(&request)).await?;
            return Ok(answers.pop().unwrap_or_default());
        };
        let (reply, answer) = oneshot::channel();
        writer.push(Job { request, reply });
        answer.await.map_err(|_| StorageError::from(sqlx::Error::PoolClosed))?
    }
}

struct Job {
    request: Submitted,
    reply: oneshot::Sender<Result<Vec<Outcome>, StorageError>>,
}

/// One HTTP worker's writer: its queue and the tasks that commit it. (Not a `GroupCommit`: a
/// request, its writer and the connections' sockets are all driven by the worker's runtime, and
/// the queue is the worker's own, so handing an event in costs no atomic or thread switch;
/// going through a shared writer cost about a fifth of the CPU per event.)
struct Writer {
    queue: RefCell<Vec<Job>>,
    /// Events in `queue`.
    queued: Cell<usize>,
    /// Commits under way.
    in_flight: Cell<usize>,
    wake: Notify,
    /// Committing tasks still running; at 0 (the worker is stopping) callers commit on their own.
    tasks: Cell<usize>,
}

/// Counts a committing task out when it ends, however it ends; the last one fails what is left
/// queued.
struct Ended(Rc<Writer>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.tasks.set(self.0.tasks.get() - 1);
        if self.0.tasks.get() == 0 {
            self.0.queue.borrow_mut().clear();
            self.0.queued.set(0);
        }
    }
}

/// Committing tasks per worker, each with its own connection. The second commits only while
/// a backlog of [`SECOND_COMMIT_MIN_EVENTS`] waits (batch requests): for single events one
/// commit at a time gathers bigger batches, which costs Postgres less per event.
const COMMITTERS: usize = 2;
const SECOND_COMMIT_MIN_EVENTS: usize = 1000;

impl Writer {
    fn start(pool: PgPool, connect_timeout: Duration, rules: Arc<Rules>) -> Rc<Self> {
        let writer = Rc::new(Writer {
            queue: RefCell::new(Vec::new()),
            queued: Cell::new(0),
            in_flight: Cell::new(0),
            wake: Notify::new(),
            tasks: Cell::new(COMMITTERS),
        });
        for _ in 0..COMMITTERS {
            let db = Dedicated::new(pool.clone(), connect_timeout, COMMIT_TIMEOUT);
            actix_rt::spawn(writer.clone().run(db, Ingesting { rules: rules.clone() }));
        }
        writer
    }

    fn alive(&self) -> bool {
        self.tasks.get() > 0
    }

    fn push(&self, job: Job) {
        self.queued.set(self.queued.get() + job.request.events.len());
        self.queue.borrow_mut().push(job);
        self.wake.notify_one();
    }

    async fn run(self: Rc<Self>, mut db: Dedicated, ingesting: Ingesting) {
        let _ended = Ended(self.clone());
        loop {
            let may_commit = self.in_flight.get() == 0 || self.queued.get() >= SECOND_COMMIT_MIN_EVENTS;
            let jobs = if may_commit { self.take() } else { vec![] };
            if jobs.is_empty() {
                self.wake.notified().await;
                continue;
            }
            self.in_flight.set(self.in_flight.get() + 1);
            let (requests, replies): (Vec<Submitted>, Vec<_>) =
                jobs.into_iter().map(|j| (j.request, j.reply)).unzip();
            let answers = group::commit(&ingesting, &mut db, &requests).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            self.in_flight.set(self.in_flight.get() - 1);
            // The other task may be waiting for this commit to end.
            self.wake.notify_one();
        }
    }

    /// Queued jobs, up to the cap on events per commit (one job may pass it alone).
    fn take(&self) -> Vec<Job> {
        let mut queue = self.queue.borrow_mut();
        let mut count = 0;
        let mut taken = 0;
        for job in queue.iter() {
            if taken > 0 && count + job.request.events.len() > MAX_EVENTS_PER_COMMIT {
                break;
            }
            count += job.request.events.len();
            taken += 1;
        }
        if taken < queue.len() {
            // More than one commit's worth: run again without waiting for a wake-up.
            self.wake.notify_one();
        }
        self.queued.set(self.queued.get() - count);
        queue.drain(..taken).collect()
    }
}
