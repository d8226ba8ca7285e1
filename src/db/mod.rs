//! Postgres: the pool, creating the database when it is missing, and the embedded migrations.

pub mod group;

use std::collections::HashSet;
use std::str::FromStr;

use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::{DatabaseSettings, redacted_url};

/// `migrations/`, embedded at compile time (build.rs re-runs when they change).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot reach Postgres at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot create database at {url}: {source}")]
    Create { url: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn options(settings: &DatabaseSettings) -> Result<PgConnectOptions, DbError> {
    let url = settings.url.expose_secret();
    PgConnectOptions::from_str(url)
        .map(|o| o.application_name("usage-gate"))
        .map_err(|source| DbError::Connect { url: redacted_url(url), source })
}

fn pool_options(settings: &DatabaseSettings) -> PgPoolOptions {
    PgPoolOptions::new().max_connections(settings.max_connections).acquire_timeout(settings.acquire_timeout)
}

/// Creates the database if it does not exist, then connects.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let url = settings.url.expose_secret();
    let shown = redacted_url(url);
    let exists = Postgres::database_exists(url)
        .await
        .map_err(|source| DbError::Connect { url: shown.clone(), source })?;
    if !exists {
        match Postgres::create_database(url).await {
            Ok(()) => tracing::info!(url = %shown, "created database"),
            // Another replica created it first.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(source) => return Err(DbError::Create { url: shown, source }),
        }
    }
    pool_options(settings)
        .connect_with(options(settings)?)
        .await
        .map_err(|source| DbError::Connect { url: shown, source })
}

/// A pool that connects on first use: the service starts (and reports not-ready) without Postgres.
pub fn connect_lazy(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    Ok(pool_options(settings).connect_lazy_with(options(settings)?))
}

pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// How far the database is migrated, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub expected: usize,
    pub missing: Vec<i64>,
}

pub async fn migration_status(pool: &PgPool) -> Result<MigrationStatus, sqlx::Error> {
    let applied: HashSet<i64> = match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
    {
        Ok(versions) => versions.into_iter().collect(),
        // 42P01: no migrations table yet, so none applied.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => HashSet::new(),
        Err(e) => return Err(e),
    };
    let missing = MIGRATOR.iter().map(|m| m.version).filter(|v| !applied.contains(v)).collect();
    Ok(MigrationStatus { expected: MIGRATOR.iter().count(), missing })
}

/// What a Postgres failure means for the caller, decided from the error's kind (SQLSTATE class
/// for database errors), so a bad value is not mistaken for an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Postgres could not be reached or is overloaded (connection, pool, I/O, shutdown):
    /// nothing was done, and the same request may succeed later.
    Unavailable,
    /// The transaction lost a race (deadlock, serialization failure): retrying it may succeed.
    Contention,
    /// Postgres refused a value (SQLSTATE classes 22 and 23): the input, not the database.
    Data,
    /// Anything else (a bad query, a decoding bug): a defect to log, not the caller's fault.
    Internal,
}

/// A Postgres failure with its kind; the cause is kept for the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source}")]
pub struct StorageError {
    pub kind: FailureKind,
    #[source]
    pub source: std::sync::Arc<sqlx::Error>,
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        Self { kind: classify(&e), source: std::sync::Arc::new(e) }
    }
}

impl StorageError {
    /// A wait for Postgres that ran out (it did not answer in time).
    pub fn timed_out() -> Self {
        sqlx::Error::PoolTimedOut.into()
    }

    /// A state usage-gate's own code should never reach (a writer's answer missing or of the
    /// wrong kind): a defect, answered 500 with `what` in the log, never taken for Postgres
    /// being away.
    pub fn impossible(what: &'static str) -> Self {
        Self { kind: FailureKind::Internal, source: std::sync::Arc::new(sqlx::Error::Protocol(what.into())) }
    }
}

/// Sorts a sqlx error by what the caller can do about it.
pub fn classify(e: &sqlx::Error) -> FailureKind {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => FailureKind::Unavailable,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(code) => classify_sqlstate(code),
            None => FailureKind::Internal,
        },
        _ => FailureKind::Internal,
    }
}

/// By SQLSTATE (Postgres appendix A).
fn classify_sqlstate(code: &str) -> FailureKind {
    match code {
        "40001" | "40P01" => FailureKind::Contention,
        // 57P01-57P03: the server is shutting down or starting; 57014: statement cancelled (a
        // timeout), 55P03: lock not available.
        "57P01" | "57P02" | "57P03" | "57014" | "55P03" => FailureKind::Unavailable,
        _ => match &code[..code.len().min(2)] {
            // 08: connection exception; 53: insufficient resources (too many connections, disk
            // full); 58: system error (I/O).
            "08" | "53" | "58" => FailureKind::Unavailable,
            "22" | "23" => FailureKind::Data,
            _ => FailureKind::Internal,
        },
    }
}

/// What keeps a copy of something in Postgres up to date from a NOTIFY channel (see [`follow`]).
pub trait Follower: Send + Sync + 'static {
    /// Listening (re)started, so anything may have changed unnoticed: read it all anew.
    /// `first`: the copy is empty (nothing to tell of changes).
    fn reload_all(&self, first: bool) -> BoxFuture<'_, Result<(), sqlx::Error>>;
    /// The payloads of the notifications that arrived while the last reload ran.
    fn reload(&self, payloads: Vec<String>) -> BoxFuture<'_, Result<(), sqlx::Error>>;
    /// Whether a notification from this backend tells of a change the copy already holds (one
    /// of this replica's writers, which puts what it commits in the copy itself): not reloaded.
    fn own(&self, _process_id: u32) -> bool {
        false
    }
}

/// The Postgres backends of this replica's writers that edit a copy themselves (see
/// [`Follower::own`]); cheap to clone. A writer's connection is listed while it is open.
#[derive(Clone, Default)]
pub struct Backends(std::sync::Arc<std::sync::RwLock<Vec<u32>>>);

impl Backends {
    pub fn contains(&self, process_id: u32) -> bool {
        self.0.read().expect("backends lock").contains(&process_id)
    }

    fn add(&self, process_id: u32) {
        self.0.write().expect("backends lock").push(process_id);
    }

    fn remove(&self, process_id: u32) {
        self.0.write().expect("backends lock").retain(|pid| *pid != process_id);
    }
}

/// The customers named by notifications whose payloads list customer ids, comma-separated
/// (the `notify_customers` trigger's), sorted and once each.
pub fn notified_customers(payloads: &[String]) -> Vec<crate::domain::CustomerId> {
    let mut customers: Vec<crate::domain::CustomerId> = payloads
        .iter()
        .flat_map(|p| p.split(','))
        .filter_map(|id| crate::domain::CustomerId::parse(id).ok())
        .collect();
    customers.sort_unstable();
    customers.dedup();
    customers
}

/// Vacuums those of `tables` holding more than [`VACUUM_AT`] dead rows; a table another
/// replica is vacuuming is skipped. For small tables whose rows are rewritten or deleted
/// thousands of times a second, where reads on a hot path step over every dead row until
/// autovacuum (once a minute at most) comes. Returns the tables vacuumed.
pub async fn vacuum_busy(pool: &PgPool, tables: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    let busy: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_user_tables WHERE relname = ANY($1) AND n_dead_tup > $2",
    )
    .bind(tables)
    .bind(VACUUM_AT)
    .fetch_all(pool)
    .await?;
    for table in &busy {
        // The name is one of `tables` (our own constants), and quoted all the same.
        let statement = format!("VACUUM (SKIP_LOCKED) \"{}\"", table.replace('"', "\"\""));
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(pool).await?;
    }
    Ok(busy)
}

/// Runs `work` on one connection while it holds the session advisory lock `lock`: None at once
/// when another session holds it (another replica is doing this work now). The connection is
/// closed afterwards, never returned to the pool, which is what releases the lock: also when
/// this future is dropped half-way (a shutdown aborting the round), where an unlock statement
/// would never run and a pooled connection would keep the lock, so no replica sharing the
/// database would do this work again (seen in tests/api/retention.rs). A connection per round:
/// these rounds run minutes apart.
pub async fn with_session_lock<T>(
    pool: &PgPool,
    lock: i64,
    work: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
) -> Result<Option<T>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    conn.close_on_drop();
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(lock).fetch_one(&mut *conn).await?;
    if !locked {
        return Ok(None);
    }
    work(&mut conn).await.map(Some)
}

/// Runs `delete` (rows older than `$1` seconds, at most `$2` of them) until a round removes
/// fewer than `chunk`, so that no statement holds many row locks or runs long; the rows removed.
/// `delete` is built from the caller's constants.
pub async fn delete_in_chunks(
    conn: &mut sqlx::PgConnection,
    delete: &str,
    window: std::time::Duration,
    chunk: i64,
) -> Result<u64, sqlx::Error> {
    let mut removed = 0;
    loop {
        let done = sqlx::query(sqlx::AssertSqlSafe(delete))
            .bind(window.as_secs_f64())
            .bind(chunk)
            .execute(&mut *conn)
            .await?;
        removed += done.rows_affected();
        if done.rows_affected() < chunk as u64 {
            return Ok(removed);
        }
    }
}

/// Dead rows that make a busy table worth vacuuming: a fraction of a second of a busy
/// customer's writes, and none at all while nothing is written.
const VACUUM_AT: i64 = 1_000;

/// Runs `work` at once and then every `period` until aborted (at once: an hourly chore must
/// not wait an hour after each start, or a service restarted more often would never do it); a
/// failure is logged (as `what`) and tried again at the next turn.
pub async fn every<F, Fut, T>(period: std::time::Duration, what: &'static str, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    loop {
        if let Err(e) = work().await {
            tracing::warn!(error = %e, "cannot {what}");
        }
        tokio::time::sleep(period).await;
    }
}

/// How soon listening is tried again after it failed.
const RELISTEN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps `follower`'s copy equal to Postgres: LISTEN on `channel`, a full reload whenever
/// listening (re)starts (then `ready` turns true), and a reload for each batch of notifications.
/// Runs until aborted.
pub async fn follow(
    pool: PgPool,
    channel: &'static str,
    follower: std::sync::Arc<dyn Follower>,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let mut first = true;
    loop {
        let connected = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match connected.await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(channel, error = %e, "cannot LISTEN; retrying");
                tokio::time::sleep(RELISTEN_AFTER).await;
                continue;
            }
        };
        // Listening first, then reading everything: nothing changed in between is missed.
        if let Err(e) = follower.reload_all(first).await {
            tracing::warn!(channel, error = %e, "cannot load what this channel follows; retrying");
            tokio::time::sleep(RELISTEN_AFTER).await;
            continue;
        }
        first = false;
        ready.send_replace(true);
        // Ok(None) or an error: the connection was lost, and what was notified meanwhile is
        // missed; listen again and reload all.
        while let Ok(Some(notification)) = listener.try_recv().await {
            let mut payloads = Vec::new();
            let mut take = |n: sqlx::postgres::PgNotification| {
                if !follower.own(n.process_id()) {
                    payloads.push(n.payload().to_owned());
                }
            };
            take(notification);
            // Under load every commit notifies: one reload for all that have arrived (while the
            // last reload ran), not one per commit. A zero timeout takes only what is already
            // there; giving up on a `try_recv` loses nothing (sqlx takes a message off the
            // socket only once it is whole).
            while let Ok(Ok(Some(more))) =
                tokio::time::timeout(std::time::Duration::ZERO, listener.try_recv()).await
            {
                take(more);
            }
            if payloads.is_empty() {
                continue;
            }
            if let Err(e) = follower.reload(payloads).await {
                tracing::warn!(channel, error = %e, "cannot reload what changed; reloading all");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_sorted_by_what_the_caller_can_do() {
        let cases = [
            ("08006", FailureKind::Unavailable),
            ("53300", FailureKind::Unavailable),
            ("57P01", FailureKind::Unavailable),
            ("40P01", FailureKind::Contention),
            ("40001", FailureKind::Contention),
            ("22P05", FailureKind::Data),
            ("22021", FailureKind::Data),
            ("23505", FailureKind::Data),
            ("42601", FailureKind::Internal),
            ("XX000", FailureKind::Internal),
        ];
        for (code, kind) in cases {
            assert_eq!(classify_sqlstate(code), kind, "{code}");
        }
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), FailureKind::Unavailable);
        assert_eq!(classify(&sqlx::Error::RowNotFound), FailureKind::Internal);
    }
}
