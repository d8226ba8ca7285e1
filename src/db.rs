//! Postgres: the pool, creating the database when it is missing, and the embedded migrations.

use std::collections::HashSet;
use std::str::FromStr;

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
