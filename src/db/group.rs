//! Group commit: callers' requests are written together, in one transaction on a connection of
//! the writer's own, and each caller is answered with its own outcome once it is committed.
//! Event ingest (`admission::ingest`) and the holds (`reservations`) write this way.
//!
//! What every writer shares is here: the connection outside the pool, made when needed and
//! dropped after a failure that leaves its state unknown; a time limit; a few more tries for a
//! commit that lost a race; and, when a shared commit fails, each request written alone, so one
//! caller's bad input never fails another's (a [`Group`] may write a request's parts alone in
//! turn). [`GroupCommit`] is the queue in front of it, run by a task `startup` starts.

use std::future::Future;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::{FailureKind, StorageError};

/// How often a commit that lost a race (deadlock, serialization failure) is tried again.
const CONTENTION_RETRIES: usize = 3;

/// What a writer writes: requests from many callers, together.
pub trait Group: Sized + Send + Sync + 'static {
    type Request: Send + Sync + 'static;
    type Answer: Send + 'static;

    /// Writes the requests in one transaction of its own on `conn`: one answer per request, in
    /// order.
    fn write(
        &self,
        conn: &mut PgConnection,
        requests: &[Self::Request],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, sqlx::Error>> + Send;

    /// How much of a commit's cap a request takes (by default 1).
    fn weight(_request: &Self::Request) -> usize {
        1
    }

    /// A request whose shared commit failed with `failed` (`shared`: how many requests it held),
    /// written alone; by default as a group of one.
    fn write_alone(
        &self,
        db: &mut Dedicated,
        request: &Self::Request,
        failed: &StorageError,
        shared: usize,
    ) -> impl Future<Output = Result<Self::Answer, StorageError>> + Send {
        let _ = (failed, shared);
        async move {
            let mut answers = write(self, db, std::slice::from_ref(request)).await?;
            answers.pop().ok_or_else(unanswered)
        }
    }

    /// Runs once a commit's answers are known, before the callers get them (the holds reload
    /// this replica's copy, so the callers' next checks count what they wrote).
    fn written(
        &self,
        _requests: &[Self::Request],
        _answers: &[Result<Self::Answer, StorageError>],
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A writer's own connection to Postgres, outside the pool (a group commit holds it for every
/// batch; taking it from the pool each time competed with the requests for it).
pub struct Dedicated {
    pool: PgPool,
    connect_timeout: Duration,
    /// How long one write may take before its callers get 503. It may still commit; a retry
    /// then finds what it wrote (a duplicate, a committed hold), the safe side.
    timeout: Duration,
    conn: Option<Connected>,
    /// Where the connection's backend is listed while it is open, if anywhere.
    backends: Option<super::Backends>,
}

/// The writer's connection and its backend's process id, listed in the writer's
/// [`super::Backends`] until it is dropped.
struct Connected {
    conn: PgConnection,
    listed: Option<(super::Backends, u32)>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        if let Some((backends, pid)) = &self.listed {
            backends.remove(*pid);
        }
    }
}

impl Dedicated {
    /// Connects with the pool's options when first needed, waiting at most `connect_timeout`.
    pub fn new(pool: PgPool, connect_timeout: Duration, timeout: Duration) -> Self {
        Self { pool, connect_timeout, timeout, conn: None, backends: None }
    }

    /// Lists the connection's backend in `backends` while it is open: a copy that follows
    /// what this writer writes knows its notifications (see [`super::Follower::own`]).
    pub fn listed_in(mut self, backends: super::Backends) -> Self {
        self.backends = Some(backends);
        self
    }

    /// The connection, made first if there is none.
    async fn connection(&mut self) -> Result<&mut PgConnection, StorageError> {
        if self.conn.is_none() {
            let options = self.pool.connect_options();
            // Connected, and its backend known when it is to be listed, within the one limit.
            let connecting = async {
                let mut conn = PgConnection::connect_with(&options).await?;
                let pid: Option<i32> = match &self.backends {
                    Some(_) => {
                        Some(sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await?)
                    }
                    None => None,
                };
                Ok::<_, sqlx::Error>((conn, pid))
            };
            let (conn, pid) = tokio::time::timeout(self.connect_timeout, connecting)
                .await
                .map_err(|_| StorageError::timed_out())??;
            let listed = match (&self.backends, pid) {
                (Some(backends), Some(pid)) => {
                    let pid =
                        u32::try_from(pid).map_err(|_| StorageError::impossible("a negative backend pid"))?;
                    backends.add(pid);
                    Some((backends.clone(), pid))
                }
                _ => None,
            };
            self.conn = Some(Connected { conn, listed });
        }
        // Always Some here; matching on `&mut self.conn` and inserting in the None arm is what
        // the borrow checker refuses.
        self.conn.as_mut().map(|c| &mut c.conn).ok_or_else(StorageError::timed_out)
    }
}

/// Writes the requests in one transaction on the writer's connection, within its time limit,
/// again if it lost a race. After a failure other than a refused value the connection is
/// dropped: its state is unknown (a timeout may have left a statement running), so the next
/// write starts over.
pub async fn write<G: Group>(
    group: &G,
    db: &mut Dedicated,
    requests: &[G::Request],
) -> Result<Vec<G::Answer>, StorageError> {
    let mut attempt = 0;
    loop {
        let timeout = db.timeout;
        let result = match db.connection().await {
            Ok(conn) => match tokio::time::timeout(timeout, group.write(conn, requests)).await {
                Ok(written) => written.map_err(StorageError::from),
                Err(_) => Err(StorageError::timed_out()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = &result
            && e.kind != FailureKind::Data
        {
            db.conn = None;
        }
        match result {
            Ok(answers) if answers.len() != requests.len() => return Err(unanswered()),
            Err(e) if e.kind == FailureKind::Contention && attempt < CONTENTION_RETRIES => attempt += 1,
            other => return other,
        }
    }
}

/// A write answered fewer requests than it was given: a fault of ours, never a caller's.
fn unanswered() -> StorageError {
    StorageError::impossible("group commit: a request went unanswered")
}

/// Writes `requests` together; if that fails while Postgres is reachable, each alone (see
/// [`Group::write_alone`]). One answer per request, in order.
pub async fn commit<G: Group>(
    group: &G,
    db: &mut Dedicated,
    requests: &[G::Request],
) -> Vec<Result<G::Answer, StorageError>> {
    match write(group, db, requests).await {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        // One request may hold many parts (a batch of events), which its Group writes alone.
        Err(error)
            if error.kind != FailureKind::Unavailable
                && (requests.len() > 1 || requests.first().is_some_and(|r| G::weight(r) > 1)) =>
        {
            tracing::warn!(error = %error, requests = requests.len(), "group commit: a shared commit failed; writing its requests one by one");
            let mut answers = Vec::with_capacity(requests.len());
            for request in requests {
                answers.push(group.write_alone(db, request, &error, requests.len()).await);
            }
            answers
        }
        Err(error) => requests.iter().map(|_| Err(error.clone())).collect(),
    }
}

type Reply<A> = oneshot::Sender<Result<A, StorageError>>;

/// The queue in front of a group-commit writer; cheap to clone. The writer ([`Committing`])
/// commits everything queued when it is free, up to a cap: under light load a commit is one
/// request and nothing waits; under heavy load, what arrived during the previous commit.
pub struct GroupCommit<G: Group> {
    queue: mpsc::UnboundedSender<(G::Request, Reply<G::Answer>)>,
}

impl<G: Group> Clone for GroupCommit<G> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone() }
    }
}

/// A group-commit writer, to be run as a task (`startup` starts it); it ends when every
/// [`GroupCommit`] handle is gone.
pub struct Committing<G: Group> {
    group: G,
    db: Dedicated,
    /// The most a commit holds, by [`Group::weight`] (a request heavier alone still goes).
    cap: usize,
    jobs: mpsc::UnboundedReceiver<(G::Request, Reply<G::Answer>)>,
}

impl<G: Group> GroupCommit<G> {
    pub fn new(group: G, db: Dedicated, cap: usize) -> (Self, Committing<G>) {
        let (queue, jobs) = mpsc::unbounded_channel();
        (Self { queue }, Committing { group, db, cap, jobs })
    }

    /// Writes the request with whatever else waits, and answers once committed. Without a
    /// writer (stopped), 503.
    pub async fn submit(&self, request: G::Request) -> Result<G::Answer, StorageError> {
        let closed = || StorageError::from(sqlx::Error::PoolClosed);
        let (reply, answer) = oneshot::channel();
        self.queue.send((request, reply)).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

impl<G: Group> Committing<G> {
    pub async fn run(mut self) {
        let mut carried: Option<(G::Request, Reply<G::Answer>)> = None;
        loop {
            let first = match carried.take() {
                Some(job) => job,
                None => match self.jobs.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            let mut weight = G::weight(&first.0);
            let (mut requests, mut replies) = (vec![first.0], vec![first.1]);
            while weight < self.cap {
                let Ok(job) = self.jobs.try_recv() else { break };
                if weight + G::weight(&job.0) > self.cap {
                    carried = Some(job);
                    break;
                }
                weight += G::weight(&job.0);
                requests.push(job.0);
                replies.push(job.1);
            }
            let answers = commit(&self.group, &mut self.db, &requests).await;
            self.group.written(&requests, &answers).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
    }
}
