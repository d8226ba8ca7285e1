//! Operator sessions of the console, in Postgres (`console_sessions`), shared by replicas. A
//! session is keyed by its id's SHA-256 (the id itself is only in the browser's cookie) and
//! holds the digest of the key that signed in, its CSRF token, and a message for the next page.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::auth::{KeyDigest, digest};

/// A fresh random token: 32 bytes from the operating system, hex.
pub fn token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// A one-time message shown on the next page: the outcome of a form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flash {
    /// `ok` or `error`.
    pub kind: String,
    pub text: String,
}

impl Flash {
    pub fn ok(text: impl Into<String>) -> Self {
        Self { kind: "ok".into(), text: text.into() }
    }

    pub fn error(text: impl Into<String>) -> Self {
        Self { kind: "error".into(), text: text.into() }
    }
}

/// What Postgres keys a session by: its id's SHA-256.
fn id_digest(id: &str) -> KeyDigest {
    digest(id.as_bytes())
}

/// A session in force, as [`Sessions::resume`] finds it.
#[derive(Debug)]
pub struct Resumed {
    pub key_digest: Vec<u8>,
    pub csrf: String,
    /// The message left for this page, now cleared.
    pub flash: Option<Flash>,
}

/// The sessions table's one door. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    pool: PgPool,
}

impl Sessions {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Starts a session for the key with `key_digest`; returns its id (for the cookie).
    pub async fn start(&self, key_digest: &[u8]) -> anyhow::Result<String> {
        let id = token()?;
        sqlx::query("INSERT INTO console_sessions (id_digest, key_digest, csrf_token) VALUES ($1, $2, $3)")
            .bind(id_digest(&id))
            .bind(key_digest)
            .bind(token()?)
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    /// The session `id` if it was used within `idle`: marks it used now and takes its flash.
    pub async fn resume(&self, id: &str, idle: Duration) -> Result<Option<Resumed>, sqlx::Error> {
        let row: Option<(Vec<u8>, String, Option<sqlx::types::Json<Flash>>)> = sqlx::query_as(
            "WITH found AS (
                 SELECT id_digest, flash FROM console_sessions
                 WHERE id_digest = $1 AND last_seen_at > now() - make_interval(secs => $2)
                 FOR UPDATE)
             UPDATE console_sessions s SET last_seen_at = now(), flash = NULL
             FROM found WHERE s.id_digest = found.id_digest
             RETURNING s.key_digest, s.csrf_token, found.flash",
        )
        .bind(id_digest(id))
        .bind(idle.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(key_digest, csrf, flash)| Resumed { key_digest, csrf, flash: flash.map(|f| f.0) }))
    }

    /// Leaves a message for the session's next page.
    pub async fn flash(&self, id: &str, flash: &Flash) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE console_sessions SET flash = $2 WHERE id_digest = $1")
            .bind(id_digest(id))
            .bind(sqlx::types::Json(flash))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends the session `id` (signing out, or its key is no longer accepted).
    pub async fn end(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM console_sessions WHERE id_digest = $1")
            .bind(id_digest(id))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (token().unwrap(), token().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
