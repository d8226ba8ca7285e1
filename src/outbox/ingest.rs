//! Group commit: concurrent requests' events are written in shared transactions. Each writer
//! takes everything queued when it is free (up to a cap), stores it with one `store::accept`, and
//! answers every request with its own outcomes once the commit is done. Nothing waits for a
//! batch to fill: under light load a batch is one request; under heavy load, the requests that
//! arrived during the previous commit.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::event::IncomingEvent;
use super::store::{self, Accepted};

/// Postgres failed for the whole transaction: nothing of it was stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct IngestError(Arc<sqlx::Error>);

type Reply = oneshot::Sender<Result<Vec<Accepted>, IngestError>>;

struct Job {
    events: Vec<IncomingEvent>,
    reply: Reply,
}

/// The handle requests use; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    jobs: mpsc::Sender<Job>,
}

/// Events one transaction holds at most.
const MAX_EVENTS_PER_COMMIT: usize = 5000;

impl Ingest {
    /// Starts `writers` writer tasks (each holds one connection while it commits).
    pub fn start(pool: PgPool, writers: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>(10_000);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..writers.max(1) {
            tokio::spawn(write(pool.clone(), queue.clone()));
        }
        Self { jobs }
    }

    /// Stores the events (in a transaction shared with other requests) and answers for each,
    /// in order, once committed.
    pub async fn accept(&self, events: Vec<IncomingEvent>) -> Result<Vec<Accepted>, IngestError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || IngestError(Arc::new(sqlx::Error::PoolClosed));
        self.jobs.send(Job { events, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn write(pool: PgPool, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let jobs = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else { return };
            let mut count = first.events.len();
            let mut jobs = vec![first];
            while count < MAX_EVENTS_PER_COMMIT {
                match queue.try_recv() {
                    Ok(job) => {
                        count += job.events.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            jobs
        };
        let mut sizes = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut events = Vec::new();
        for job in jobs {
            sizes.push(job.events.len());
            replies.push(job.reply);
            events.extend(job.events);
        }
        metrics::histogram!("usage_gate_ingest_commit_events").record(events.len() as f64);
        match store::accept(&pool, &events).await {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (size, reply) in sizes.into_iter().zip(replies) {
                    let _ = reply.send(Ok(outcomes.by_ref().take(size).collect()));
                }
            }
            Err(e) => {
                let error = IngestError(Arc::new(e));
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
