//! The `[database]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    #[serde(serialize_with = "super::redact_url")]
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

pub(super) fn validate(v: &mut Validator, raw: &RawDatabase) -> DatabaseSettings {
    DatabaseSettings {
        url: {
            let url = raw.url.expose_secret();
            // The value is not echoed: it may hold a password.
            v.check(
                "database.url",
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                || "must be a postgres:// or postgresql:// URL".into(),
            );
            raw.url.clone()
        },
        max_connections: v.range("database.max_connections", raw.max_connections.into(), 1, 1000) as u32,
        acquire_timeout: Duration::from_millis(v.range(
            "database.acquire_timeout_ms",
            raw.acquire_timeout_ms,
            1,
            60_000,
        )),
    }
}
