//! The `[database]` section and its `validate`.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    #[serde(serialize_with = "super::redact_url")]
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(rename = "acquire_timeout_ms", with = "ms")]
    pub acquire_timeout: Duration,
}

embedded_default!(DatabaseSettings, "database");

impl DatabaseSettings {
    pub(super) fn validate(&self, v: &mut Validator) {
        let url = self.url.expose_secret();
        // The value is not echoed: it may hold a password.
        v.check("database.url", url.starts_with("postgres://") || url.starts_with("postgresql://"), || {
            "must be a postgres:// or postgresql:// URL".into()
        });
        v.range("database.max_connections", self.max_connections.into(), 1, 1000);
        v.range_ms("database.acquire_timeout_ms", self.acquire_timeout, 1, 60_000);
    }
}
