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

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Notify, oneshot};

use super::event::IncomingEvent;
use super::store::{self, Accepted};
use crate::db::{FailureKind, StorageError};

type Reply = oneshot::Sender<Result<Vec<Accepted>, StorageError>>;

struct Job {
    events: Vec<IncomingEvent>,
    reply: Reply,
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
}

impl Ingest {
    /// Writers connect with the pool's options, waiting at most `connect_timeout`.
    pub fn new(pool: PgPool, connect_timeout: Duration) -> Self {
        Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), pool, connect_timeout }
    }

    /// Starts this thread's writer. Call on each HTTP worker thread as it starts (the app
    /// factory runs there), where tasks may be spawned locally.
    pub fn attach_worker(&self) {
        WRITERS.with_borrow_mut(|writers| {
            writers.entry(self.id).or_insert_with(|| Writer::start(self.pool.clone(), self.connect_timeout));
        });
    }

    /// Stores the events (in a transaction shared with other requests on this thread) and
    /// answers for each, in order, once committed.
    pub async fn accept(&self, events: Vec<IncomingEvent>) -> Result<Vec<Accepted>, StorageError> {
        let writer = WRITERS.with_borrow(|writers| writers.get(&self.id).filter(|w| w.alive()).cloned());
        let Some(writer) = writer else {
            // No writer here (not a worker thread, or its writer has stopped): one commit per call.
            let mut conn = self.pool.acquire().await?;
            return Ok(store::accept(&mut conn, &events).await?);
        };
        let (reply, answer) = oneshot::channel();
        writer.push(Job { events, reply });
        answer.await.map_err(|_| StorageError::from(sqlx::Error::PoolClosed))?
    }
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
    fn start(pool: PgPool, connect_timeout: Duration) -> Rc<Self> {
        let writer = Rc::new(Writer {
            queue: RefCell::new(Vec::new()),
            queued: Cell::new(0),
            in_flight: Cell::new(0),
            wake: Notify::new(),
            tasks: Cell::new(COMMITTERS),
        });
        for _ in 0..COMMITTERS {
            actix_rt::spawn(writer.clone().run(pool.clone(), connect_timeout));
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

    async fn run(self: Rc<Self>, pool: PgPool, connect_timeout: Duration) {
        let _ended = Ended(self.clone());
        let mut conn: Option<PgConnection> = None;
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
            for job in jobs {
                sizes.push(job.events.len());
                replies.push(job.reply);
                events.extend(job.events);
            }
            metrics::histogram!("usage_gate_ingest_commit_events").record(events.len() as f64);
            let result = commit(&mut conn, &pool, connect_timeout, &events).await;
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
                    let mut rest = events.as_slice();
                    for (size, reply) in sizes.into_iter().zip(replies) {
                        let (own, after) = rest.split_at(size);
                        rest = after;
                        let answer = if alone && error.kind == FailureKind::Data {
                            // That was this request's own commit: go straight to its events.
                            commit_each(&mut conn, &pool, connect_timeout, own).await
                        } else {
                            commit_isolating(&mut conn, &pool, connect_timeout, own).await
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

/// Commits one request's events; if Postgres refuses a value in them, see [`commit_each`].
async fn commit_isolating(
    conn: &mut Option<PgConnection>,
    pool: &PgPool,
    connect_timeout: Duration,
    events: &[IncomingEvent],
) -> Result<Vec<Accepted>, StorageError> {
    match commit(conn, pool, connect_timeout, events).await {
        Err(e) if e.kind == FailureKind::Data && events.len() > 1 => {
            commit_each(conn, pool, connect_timeout, events).await
        }
        other => other,
    }
}

/// Commits each event alone and answers `Refused` for those Postgres refuses, so the rest of a
/// batch is stored. Events stored before another kind of failure stay stored: the client's
/// retry finds them as duplicates, the safe side.
async fn commit_each(
    conn: &mut Option<PgConnection>,
    pool: &PgPool,
    connect_timeout: Duration,
    events: &[IncomingEvent],
) -> Result<Vec<Accepted>, StorageError> {
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        match commit(conn, pool, connect_timeout, std::slice::from_ref(event)).await {
            Ok(outcome) => outcomes.extend(outcome),
            Err(e) if e.kind == FailureKind::Data && events.len() > 1 => {
                tracing::warn!(event_id = %event.event_id, error = %e, "ingest: Postgres refused an event");
                outcomes.push(Accepted::Refused);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(outcomes)
}

/// How often a commit that lost a race (deadlock, serialization failure) is tried again.
const CONTENTION_RETRIES: usize = 3;

/// Commits `events` on this writer's connection (made first if there is none). After a failure
/// other than a refused value the connection is dropped: its state is unknown (a timeout may
/// have left a statement running), so the next commit starts over.
async fn commit(
    conn: &mut Option<PgConnection>,
    pool: &PgPool,
    connect_timeout: Duration,
    events: &[IncomingEvent],
) -> Result<Vec<Accepted>, StorageError> {
    let mut attempt = 0;
    loop {
        let result = commit_once(conn, pool, connect_timeout, events).await;
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
    conn: &mut Option<PgConnection>,
    pool: &PgPool,
    connect_timeout: Duration,
    events: &[IncomingEvent],
) -> Result<Vec<Accepted>, StorageError> {
    let conn = match conn {
        Some(conn) => conn,
        None => {
            let options = pool.connect_options();
            let connecting = PgConnection::connect_with(&options);
            conn.insert(
                tokio::time::timeout(connect_timeout, connecting)
                    .await
                    .map_err(|_| StorageError::timed_out())??,
            )
        }
    };
    Ok(tokio::time::timeout(COMMIT_TIMEOUT, store::accept(conn, events))
        .await
        .map_err(|_| StorageError::timed_out())??)
}
