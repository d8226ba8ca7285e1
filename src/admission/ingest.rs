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
//! Requests with enforced events (`enforce`) go to one more writer, on a thread of its own (see
//! [`Ingest::new`]): its commits judge them under their customers' locks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::db::{FailureKind, StorageError};
use crate::enforce::Gate;
use crate::enforce::store::{self as enforce, Outcome};
use crate::outbox::IncomingEvent;
use crate::outbox::store::{self, Accepted};
use crate::policy::PolicySettings;

type Reply = oneshot::Sender<Result<Vec<Outcome>, StorageError>>;

struct Job {
    events: Vec<IncomingEvent>,
    /// One per event when any is enforced (`None`: stored as it is); empty when none is.
    gates: Vec<Option<Gate>>,
    reply: Reply,
}

/// Events to commit together, with their gates (empty when none is enforced) and the request
/// each came in (`enforce::store::accept` keeps a request's refusals in order).
#[derive(Clone, Copy)]
struct Batch<'a> {
    events: &'a [IncomingEvent],
    gates: &'a [Option<Gate>],
    requests: &'a [u64],
}

impl<'a> Batch<'a> {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn range(&self, range: std::ops::Range<usize>) -> Batch<'a> {
        Batch {
            events: &self.events[range.clone()],
            gates: if self.gates.is_empty() { &[] } else { &self.gates[range.clone()] },
            requests: &self.requests[range],
        }
    }

    fn event_id(&self, i: usize) -> &str {
        self.events[i].event_id.as_str()
    }
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

/// The handle requests use; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    id: u64,
    pool: PgPool,
    connect_timeout: Duration,
    /// What enforced events are judged by.
    policy: Arc<PolicySettings>,
    /// The enforced writer's queue (see [`Ingest::new`]).
    enforced: mpsc::UnboundedSender<Job>,
}

impl Ingest {
    /// Writers connect with the pool's options, waiting at most `connect_timeout`.
    ///
    /// Requests with enforced events go to one writer of their own, on a thread of its own.
    /// An enforced commit holds its customers' locks across its round trips to Postgres, and on
    /// an HTTP worker each reply waited for the worker to finish the requests ahead of it: the
    /// next commit for the customer waited 1.7 ms on average for the lock (one customer,
    /// `bench/enforce.py`), and enforced events ran at 34% of plain ones. On its own thread the
    /// writer reads each reply as it comes, and one writer per replica never waits on itself.
    pub fn new(pool: PgPool, connect_timeout: Duration, policy: PolicySettings) -> Self {
        let policy = Arc::new(policy);
        let (enforced, queue) = mpsc::unbounded_channel();
        let writer = (pool.clone(), connect_timeout, policy.clone());
        let started = std::thread::Builder::new().name("enforced-writer".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return tracing::error!(error = %e, "ingest: cannot start the enforced writer"),
            };
            tokio::task::LocalSet::new().block_on(&runtime, enforced_writer(writer, queue));
        });
        if let Err(e) = started {
            // Enforced requests then get 503 (their replies are dropped with the queue).
            tracing::error!(error = %e, "ingest: cannot start the enforced writer's thread");
        }
        Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), pool, connect_timeout, policy, enforced }
    }

    /// Starts this thread's writer. Call on each HTTP worker thread as it starts (the app
    /// factory runs there), where tasks may be spawned locally.
    pub fn attach_worker(&self) {
        WRITERS.with_borrow_mut(|writers| {
            writers.entry(self.id).or_insert_with(|| {
                Writer::start(self.pool.clone(), self.connect_timeout, self.policy.clone())
            });
        });
    }

    /// Stores the events (in a transaction shared with other requests on this thread) and
    /// answers for each, in order, once committed.
    /// (Without a gate nothing is refused for the limit: every event has the outbox's answer.)
    pub async fn accept(&self, events: Vec<IncomingEvent>) -> Result<Vec<Accepted>, StorageError> {
        let outcomes = self.commit(events, vec![]).await?;
        Ok(outcomes.into_iter().filter_map(|o| o.accepted).collect())
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
        self.commit(events, gates).await
    }

    async fn commit(
        &self,
        events: Vec<IncomingEvent>,
        gates: Vec<Option<Gate>>,
    ) -> Result<Vec<Outcome>, StorageError> {
        let closed = || StorageError::from(sqlx::Error::PoolClosed);
        let (reply, answer) = oneshot::channel();
        let job = Job { events, gates, reply };
        if !job.gates.is_empty() {
            self.enforced.send(job).map_err(|_| closed())?;
            return answer.await.map_err(|_| closed())?;
        }
        let writer = WRITERS.with_borrow(|writers| writers.get(&self.id).filter(|w| w.alive()).cloned());
        let Some(writer) = writer else {
            // No writer here (not a worker thread, or its writer has stopped): one commit per call.
            let mut conn = self.pool.acquire().await?;
            let accepted = store::accept(&mut conn, &job.events).await?;
            return Ok(accepted
                .into_iter()
                .map(|accepted| Outcome { accepted: Some(accepted), judged: None })
                .collect());
        };
        writer.push(job);
        answer.await.map_err(|_| closed())?
    }
}

/// The enforced writer: a [`Writer`] on its own thread, fed from every HTTP worker. It stops
/// when every `Ingest` handle is gone.
async fn enforced_writer(
    (pool, connect_timeout, policy): (PgPool, Duration, Arc<PolicySettings>),
    mut queue: mpsc::UnboundedReceiver<Job>,
) {
    let writer = Writer::start(pool, connect_timeout, policy);
    while let Some(job) = queue.recv().await {
        writer.push(job);
    }
}

/// Commits a batch: through `enforce` when any event is enforced, else one plain statement.
async fn commit_batch(
    conn: &mut PgConnection,
    batch: Batch<'_>,
    policy: &PolicySettings,
) -> Result<Vec<Outcome>, sqlx::Error> {
    if batch.gates.iter().any(Option::is_some) {
        return enforce::accept(conn, batch.events, batch.gates, batch.requests, policy).await;
    }
    let accepted = store::accept(conn, batch.events).await?;
    Ok(accepted.into_iter().map(|accepted| Outcome { accepted: Some(accepted), judged: None }).collect())
}

/// One thread's writer: its queue and the tasks that commit it.
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
    fn start(pool: PgPool, connect_timeout: Duration, policy: Arc<PolicySettings>) -> Rc<Self> {
        let writer = Rc::new(Writer {
            queue: RefCell::new(Vec::new()),
            queued: Cell::new(0),
            in_flight: Cell::new(0),
            wake: Notify::new(),
            tasks: Cell::new(COMMITTERS),
        });
        for _ in 0..COMMITTERS {
            actix_rt::spawn(writer.clone().run(pool.clone(), connect_timeout, policy.clone()));
        }
        writer
    }

    fn alive(&self) -> bool {
        self.tasks.get() > 0
    }

    fn push(&self, job: Job) {
        self.queued.set(self.queued.get() + job.events.len());
        self.queue.borrow_mut().push(job);
        self.wake.notify_one();
    }

    async fn run(self: Rc<Self>, pool: PgPool, connect_timeout: Duration, policy: Arc<PolicySettings>) {
        let _ended = Ended(self.clone());
        let mut conn: Option<PgConnection> = None;
        let committer = Committer { pool: &pool, connect_timeout, policy: &policy };
        loop {
            let may_commit = self.in_flight.get() == 0 || self.queued.get() >= SECOND_COMMIT_MIN_EVENTS;
            let jobs = if may_commit { self.take() } else { vec![] };
            if jobs.is_empty() {
                self.wake.notified().await;
                continue;
            }
            self.in_flight.set(self.in_flight.get() + 1);
            let mut sizes = Vec::with_capacity(jobs.len());
            let mut replies = Vec::with_capacity(jobs.len());
            let mut events = Vec::new();
            let mut gates = Vec::new();
            let mut requests = Vec::new();
            let enforced = jobs.iter().any(|job| !job.gates.is_empty());
            for (request, job) in jobs.into_iter().enumerate() {
                sizes.push(job.events.len());
                requests.extend(std::iter::repeat_n(request as u64, job.events.len()));
                if enforced {
                    if job.gates.is_empty() {
                        gates.extend(std::iter::repeat_n(None, job.events.len()));
                    } else {
                        gates.extend(job.gates);
                    }
                }
                replies.push(job.reply);
                events.extend(job.events);
            }
            metrics::histogram!("usage_gate_ingest_commit_events").record(events.len() as f64);
            let all = Batch { events: &events, gates: &gates, requests: &requests };
            let result = committer.commit(&mut conn, all).await;
            match result {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    for (size, reply) in sizes.into_iter().zip(replies) {
                        let _ = reply.send(Ok(outcomes.by_ref().take(size).collect()));
                    }
                }
                Err(error) if events.len() > 1 && error.kind != FailureKind::Unavailable => {
                    // One event failed the shared statement (or it lost a race): commit each
                    // request alone, and within a request each event, so a failure stays with
                    // the event that caused it.
                    tracing::warn!(error = %error, requests = sizes.len(), "ingest: a shared commit failed; committing its requests one by one");
                    let alone = sizes.len() == 1;
                    let mut start = 0;
                    for (size, reply) in sizes.into_iter().zip(replies) {
                        let own = all.range(start..start + size);
                        start += size;
                        let answer = if alone && error.kind == FailureKind::Data {
                            // That was this request's own commit: go straight to its events.
                            committer.commit_each(&mut conn, own).await
                        } else {
                            committer.commit_isolating(&mut conn, own).await
                        };
                        let _ = reply.send(answer);
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
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
            if taken > 0 && count + job.events.len() > MAX_EVENTS_PER_COMMIT {
                break;
            }
            count += job.events.len();
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

/// What a writer's commits need besides the connection.
struct Committer<'a> {
    pool: &'a PgPool,
    connect_timeout: Duration,
    policy: &'a PolicySettings,
}

impl Committer<'_> {
    /// Commits one request's events; if Postgres refuses a value in them, see
    /// [`Committer::commit_each`].
    async fn commit_isolating(
        &self,
        conn: &mut Option<PgConnection>,
        batch: Batch<'_>,
    ) -> Result<Vec<Outcome>, StorageError> {
        match self.commit(conn, batch).await {
            Err(e) if e.kind == FailureKind::Data && batch.len() > 1 => self.commit_each(conn, batch).await,
            other => other,
        }
    }

    /// Commits each event alone and answers `Refused` for those Postgres refuses, so the rest
    /// of a batch is stored. Events stored before another kind of failure stay stored: the
    /// client's retry finds them as duplicates, the safe side.
    async fn commit_each(
        &self,
        conn: &mut Option<PgConnection>,
        batch: Batch<'_>,
    ) -> Result<Vec<Outcome>, StorageError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for i in 0..batch.len() {
            match self.commit(conn, batch.range(i..i + 1)).await {
                Ok(outcome) => outcomes.extend(outcome),
                Err(e) if e.kind == FailureKind::Data && batch.len() > 1 => {
                    tracing::warn!(event_id = %batch.event_id(i), error = %e, "ingest: Postgres refused an event");
                    outcomes.push(Outcome { accepted: Some(Accepted::Refused), judged: None });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcomes)
    }

    /// Commits the batch on this writer's connection (made first if there is none). After a
    /// failure other than a refused value the connection is dropped: its state is unknown (a
    /// timeout may have left a statement running), so the next commit starts over.
    async fn commit(
        &self,
        conn: &mut Option<PgConnection>,
        batch: Batch<'_>,
    ) -> Result<Vec<Outcome>, StorageError> {
        let mut attempt = 0;
        loop {
            let result = self.commit_once(conn, batch).await;
            match &result {
                Err(e) if e.kind != FailureKind::Data => *conn = None,
                _ => {}
            }
            match result {
                Err(e) if e.kind == FailureKind::Contention && attempt < CONTENTION_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    async fn commit_once(
        &self,
        conn: &mut Option<PgConnection>,
        batch: Batch<'_>,
    ) -> Result<Vec<Outcome>, StorageError> {
        let conn = match conn {
            Some(conn) => conn,
            None => {
                let options = self.pool.connect_options();
                let connecting = PgConnection::connect_with(&options);
                conn.insert(
                    tokio::time::timeout(self.connect_timeout, connecting)
                        .await
                        .map_err(|_| StorageError::timed_out())??,
                )
            }
        };
        Ok(tokio::time::timeout(COMMIT_TIMEOUT, commit_batch(conn, batch, self.policy))
            .await
            .map_err(|_| StorageError::timed_out())??)
    }
}

/// How often a commit that lost a race (deadlock, serialization failure) is tried again.
const CONTENTION_RETRIES: usize = 3;
