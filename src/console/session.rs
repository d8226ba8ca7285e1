//! Console sessions' rules (cookies, CSRF tokens, where to go after signing in) as pure
//! functions; the sessions themselves are in Postgres (`crate::sessions`), shared by replicas.
//!
//! The browser holds a random session id in an `HttpOnly`, `SameSite=Strict` cookie scoped to
//! `/console`; never the API key. Postgres holds the id's SHA-256, the digest of the key that
//! signed in (looked up in the configuration on every request) and the session's CSRF token.

use actix_web::cookie::{Cookie, SameSite};
use subtle::ConstantTimeEq;

pub use crate::sessions::{Flash, token};

/// The session id's cookie.
pub const SESSION_COOKIE: &str = "ug_console";
/// The sign-in form's CSRF token, before there is a session (double-submit: the form carries
/// the same value, which a cross-site page can neither read nor set).
pub const LOGIN_COOKIE: &str = "ug_console_login";
/// Every console cookie is sent only under this path.
pub const PATH: &str = "/console";

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

#[cfg(test)]
mod tests {
    use super::*;

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
