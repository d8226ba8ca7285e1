//! Console sessions: the rules (cookies, CSRF tokens, where to go after signing in) as pure
//! functions, and the sessions themselves in Postgres, shared by replicas.
//!
//! The browser holds a random session id in an `HttpOnly`, `SameSite=Strict` cookie scoped to
//! `/console`; never the API key. Postgres holds the id's SHA-256, the digest of the key that
//! signed in (looked up in the configuration on every request) and the session's CSRF token.

use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::auth::{KeyDigest, digest};

/// The session id's cookie.
pub const SESSION_COOKIE: &str = "ug_console";
/// The sign-in form's CSRF token, before there is a session (double-submit: the form carries
/// the same value, which a cross-site page can neither read nor set).
pub const LOGIN_COOKIE: &str = "ug_console_login";
/// Every console cookie is sent only under this path.
pub const PATH: &str = "/console";

/// A fresh random token: 32 bytes from the operating system, hex.
pub fn token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// A console cookie: `HttpOnly`, `SameSite=Strict`, `Path=/console`, and `Secure` when the
/// console is served over TLS. No expiry: the browser drops it when it closes, and the server
/// ends the session when it is idle.
pub fn cookie(name: &'static str, value: String, secure: bool) -> Cookie<'static> {
    Cookie::build(name, value).path(PATH).http_only(true).same_site(SameSite::Strict).secure(secure).finish()
}

/// What tells the browser to drop the cookie `name`.
pub fn removal(name: &'static str, secure: bool) -> Cookie<'static> {
    let mut cookie = cookie(name, String::new(), secure);
    cookie.make_removal();
    cookie
}

/// Whether a form's CSRF token is the expected one, compared in constant time; an empty token
/// never matches.
pub fn csrf_matches(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// Where to go after signing in: a console page (a path under `/console/`, with its query), or
/// the overview. Anything that could leave the console (another host, a scheme, `//`, a
/// backslash, a control character) is refused, so the sign-in form cannot be made to redirect
/// elsewhere.
pub fn next_page(raw: Option<&str>) -> String {
    const HOME: &str = "/console/";
    match raw {
        Some(path)
            if path.starts_with(HOME)
                && !path.contains("//")
                && !path.contains('\\')
                && !path.contains("/..")
                && !path.chars().any(char::is_control)
                && path.len() <= 2000 =>
        {
            path.to_owned()
        }
        _ => HOME.to_owned(),
    }
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

/// What Postgres keys a session by: its id's SHA-256 (the id itself is only in the cookie).
fn id_digest(id: &str) -> KeyDigest {
    digest(id.as_bytes())
}

/// A session in force, as [`resume`] finds it.
#[derive(Debug)]
pub struct Resumed {
    pub key_digest: Vec<u8>,
    pub csrf: String,
    /// The message left for this page, now cleared.
    pub flash: Option<Flash>,
}

/// Starts a session for the key with `key_digest`; returns its id (for the cookie).
pub async fn start(pool: &PgPool, key_digest: &[u8]) -> anyhow::Result<String> {
    let id = token()?;
    sqlx::query("INSERT INTO console_sessions (id_digest, key_digest, csrf_token) VALUES ($1, $2, $3)")
        .bind(id_digest(&id))
        .bind(key_digest)
        .bind(token()?)
        .execute(pool)
        .await?;
    Ok(id)
}

/// The session `id` if it was used within `idle`: marks it used now and takes its flash.
pub async fn resume(pool: &PgPool, id: &str, idle: Duration) -> Result<Option<Resumed>, sqlx::Error> {
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
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(key_digest, csrf, flash)| Resumed { key_digest, csrf, flash: flash.map(|f| f.0) }))
}

/// Leaves a message for the session's next page.
pub async fn flash(pool: &PgPool, id: &str, flash: &Flash) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE console_sessions SET flash = $2 WHERE id_digest = $1")
        .bind(id_digest(id))
        .bind(sqlx::types::Json(flash))
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends the session `id` (signing out, or its key is no longer accepted).
pub async fn end(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM console_sessions WHERE id_digest = $1")
        .bind(id_digest(id))
        .execute(pool)
        .await?;
    Ok(())
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

    #[test]
    fn cookies_are_http_only_strict_and_scoped_to_the_console() {
        let plain = cookie(SESSION_COOKIE, "abc".into(), false).to_string();
        assert_eq!(plain, "ug_console=abc; HttpOnly; SameSite=Strict; Path=/console");
        let tls = cookie(SESSION_COOKIE, "abc".into(), true).to_string();
        assert!(tls.contains("; Secure"), "{tls}");
        let gone = removal(SESSION_COOKIE, false).to_string();
        assert!(gone.starts_with("ug_console=;") && gone.contains("Max-Age=0"), "{gone}");
    }

    #[test]
    fn a_csrf_token_must_match_exactly() {
        let expected = token().unwrap();
        assert!(csrf_matches(&expected, &expected.clone()));
        assert!(!csrf_matches(&expected, ""));
        assert!(!csrf_matches(&expected, &expected[..63]));
        assert!(!csrf_matches(&expected, &expected.to_uppercase()));
        assert!(!csrf_matches("", ""), "no token is never a match");
    }

    #[test]
    fn after_signing_in_only_a_console_page_is_a_destination() {
        assert_eq!(next_page(Some("/console/customers?status=blocked")), "/console/customers?status=blocked");
        for away in [
            None,
            Some(""),
            Some("https://evil.example/console/"),
            Some("//evil.example/console/"),
            Some("/console//evil.example"),
            Some("/console/\\evil"),
            Some("/console/../v1/audit"),
            Some("/v1/audit"),
            Some("/console/\r\nSet-Cookie: x=y"),
        ] {
            assert_eq!(next_page(away), "/console/", "{away:?}");
        }
    }
}
