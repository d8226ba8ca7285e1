//! Configuration: layered sources (embedded `config/default.toml`, optional files, environment
//! variables, `DATABASE_URL`) deserialized into [`Settings`], then validated once. Every problem
//! names its key, and all problems are reported together.
//!
//! Each section has a file of its own: its one type (the section as written, with typed values:
//! durations named by their unit (`units`), text parsed as it is read (`domain::Parsed`)), and
//! its `validate`.
//! The defaults are the embedded file's, the one place they are written down (each section's
//! `Default` reads it). This file holds the layering, the whole settings, the validator the
//! sections share, and the redaction and placeholder rules.

mod auth;
mod billabear;
mod cache;
mod console;
mod database;
mod entitlements;
mod gate;
mod log;
mod outbound_webhooks;
mod outbox;
mod pending;
mod policy;
mod retention;
mod secrets;
mod server;
mod units;
mod webhooks;

pub use crate::domain::{FromText, Parsed};
pub use auth::{AuthSettings, KeySettings};
pub use billabear::{BaseUrl, BillaBearSettings};
pub use cache::CacheSettings;
pub use console::ConsoleSettings;
pub use database::DatabaseSettings;
pub use gate::{GateSettings, JwtKeys, JwtSettings};
pub use log::{LogFormat, LogSettings};
pub use outbound_webhooks::OutboundWebhookSettings;
pub use outbox::OutboxSettings;
pub use pending::PendingSettings;
pub use retention::RetentionSettings;
pub use secrets::SecretsSettings;
pub use server::ServerSettings;
pub use units::Days;
pub use webhooks::WebhookSettings;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use actix_web::http::header::HeaderName;

use crate::auth::{ApiKey, ApiKeys, KeyDigest, Scope, Scopes, digest};
use crate::entitlements::EntitlementSettings;
use crate::policy::PolicySettings;
use units::{minutes, ms, secs};

/// The defaults, embedded so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
pub const ENV_PREFIX: &str = "USAGE_GATE";

/// The embedded defaults' table at `path` (`"gate.jwt"`), as `T`.
pub fn embedded<T: DeserializeOwned>(path: &str) -> T {
    let mut value = toml::Value::Table(DEFAULT_TOML.parse().expect("the embedded defaults parse"));
    for part in path.split('.') {
        value = value.get(part).cloned().unwrap_or_else(|| panic!("the embedded defaults have [{path}]"));
    }
    value.try_into().unwrap_or_else(|e| panic!("the embedded defaults' [{path}]: {e}"))
}

/// A section's `Default`: its table in the embedded defaults.
macro_rules! embedded_default {
    ($section:ty, $path:literal) => {
        impl Default for $section {
            fn default() -> Self {
                super::embedded($path)
            }
        }
    };
}
use embedded_default;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    /// The problems found by validation (empty for a load error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            ConfigError::Load(_) => &[],
        }
    }
}

/// The whole configuration. Unknown keys are rejected (in every section) so a typo does not
/// pass silently; [`Settings::validate`] checks every value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub billabear: BillaBearSettings,
    pub cache: CacheSettings,
    pub policy: PolicySettings,
    pub entitlements: EntitlementSettings,
    pub gate: GateSettings,
    pub outbox: OutboxSettings,
    pub pending: PendingSettings,
    pub auth: AuthSettings,
    pub webhooks: WebhookSettings,
    pub outbound_webhooks: OutboundWebhookSettings,
    pub console: ConsoleSettings,
    pub secrets: SecretsSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
}

const REDACTED: &str = "[redacted]";

fn redact<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.expose_secret().is_empty() { "" } else { REDACTED })
}

fn redact_opt<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => redact(secret, s),
        None => s.serialize_none(),
    }
}

/// A database URL with its password (if any) replaced, so the effective config can be shown.
fn redact_url<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(secret.expose_secret()))
}

pub fn redacted_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("redacted"));
            }
            parsed.to_string()
        }
        Err(_) => REDACTED.to_owned(),
    }
}

impl Settings {
    /// The embedded defaults alone.
    pub fn defaults() -> Self {
        Self::from_layers(None, Some(Default::default()), None).expect("embedded defaults load")
    }

    /// Layers the sources: defaults, `files` in order (a later one's keys win; Kubernetes mounts
    /// the settings from a ConfigMap and the keys from a Secret as two files), the process
    /// environment, `DATABASE_URL`.
    pub fn load(files: &[PathBuf]) -> Result<Self, ConfigError> {
        Self::from_files(files.iter().map(PathBuf::as_path), None, std::env::var("DATABASE_URL").ok())
    }

    /// `env`: `None` reads the process environment; tests pass a map instead.
    pub fn from_layers(
        file: Option<&Path>,
        env: Option<config::Map<String, String>>,
        database_url: Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::from_files(file, env, database_url)
    }

    /// Like [`Self::from_layers`], with any number of files (a later one's keys win).
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = &'a Path>,
        env: Option<config::Map<String, String>>,
        database_url: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        for file in files {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let env = config::Environment::with_prefix(ENV_PREFIX).separator("__").source(env);
        builder = builder
            .add_source(env)
            .set_override_option("database.url", database_url.filter(|url| !url.is_empty()))?;
        Ok(builder.build()?.try_deserialize()?)
    }

    /// Refuses every secret that is a placeholder or demo value this project ships (in
    /// `deploy/`, `config/`, the demo): copied as they are, they would let anyone who has read
    /// this repository in. `usage-gate demo` does not ask; `serve --allow-placeholder-secrets`
    /// (the laptop's docker-compose) skips it.
    pub fn refuse_placeholders(&self) -> Result<(), ConfigError> {
        let mut v = Validator::default();
        let mut judge = |key: String, secret: &SecretString| {
            if let Some(why) = placeholder(secret.expose_secret()) {
                v.problem(key, format!("{why}: replace it with a secret of your own"));
            }
        };
        judge("billabear.api_key".into(), &self.billabear.api_key);
        judge("webhooks.secret".into(), &self.webhooks.secret);
        for (i, key) in self.auth.keys.iter().enumerate() {
            if let Some(secret) = &key.key {
                judge(format!("auth.keys[{i}].key"), secret);
            }
        }
        for (name, key) in
            [("secrets.key", &self.secrets.key), ("secrets.previous_key", &self.secrets.previous_key)]
        {
            let weak = crate::seal::parse_key(key.expose_secret())
                .is_ok_and(|bytes| bytes.iter().all(|b| *b == bytes[0]));
            v.check(name, !weak, || {
                "is one byte repeated (the placeholder is 32 zero bytes): use `openssl rand -base64 32`"
                    .into()
            });
        }
        if v.problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(v.problems)) }
    }

    /// Checks every value; on failure lists every problem with its key. The settings are
    /// answered as they are (a copy), to be used from here on.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let mut v = Validator::default();
        self.server.validate(&mut v);
        self.database.validate(&mut v);
        self.billabear.validate(&mut v);
        self.cache.validate(&mut v);
        policy::validate(&self.policy, &mut v);
        entitlements::validate(&self.entitlements, &mut v);
        self.gate.validate(&mut v);
        self.outbox.validate(&mut v);
        self.pending.validate(&mut v);
        self.auth.validate(&mut v);
        self.webhooks.validate(&mut v);
        self.outbound_webhooks.validate(&mut v);
        self.console.validate(&mut v);
        self.secrets.validate(&mut v);
        self.retention.validate(&mut v);
        self.log.validate(&mut v);
        if v.problems.is_empty() { Ok(self.clone()) } else { Err(ConfigError::Invalid(v.problems)) }
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(self).expect("settings serialize")
    }
}

/// A window in days, fractions allowed (so that a test or a soak can shorten it), at most 10
/// years; where `keep` allows it, 0 keeps every row (None).
fn window(v: &mut Validator, key: &str, Days(days): Days, keep: bool) {
    let keeps = keep && days == 0.0;
    let valid = days.is_finite() && days <= 3650.0 && (days > 0.0 || keeps);
    v.check(key, valid, || match keep {
        true => format!("must be a number of days from 0 (keep every row) to 3650, got {days}"),
        false => format!("must be a number of days above 0 and at most 3650, got {days}"),
    });
}

/// A window in days that must end (more than 0).
fn days(v: &mut Validator, key: &str, days: Days) {
    window(v, key, days, false)
}

/// Why `secret` is a value this project ships as a placeholder or for its demo, if it is one.
/// The message never holds the value.
fn placeholder(secret: &str) -> Option<&'static str> {
    // Values the demo and the simulator's examples use that do not say "change-me".
    const DEMO: [&str; 3] = ["demo-webhook-secret", "demo-billabear-key", "compose-billabear-key"];
    if secret.to_ascii_lowercase().contains("change-me") {
        Some("is a placeholder this project ships (it says \"change-me\")")
    } else if DEMO.contains(&secret) {
        Some("is a demo value this project ships")
    } else {
        None
    }
}

/// Collects problems while building the typed settings, so all are reported at once.
#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { key: key.into(), message: message.into() });
    }

    fn check(&mut self, key: &str, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.problem(key, message());
        }
    }

    fn range(&mut self, key: &str, value: u64, min: u64, max: u64) -> u64 {
        self.check(key, (min..=max).contains(&value), || {
            format!("must be between {min} and {max}, got {value}")
        });
        value.clamp(min, max)
    }

    /// Text that is not a value of its kind.
    fn parsed<T>(&mut self, key: &str, value: &Parsed<T>) {
        if let Some(problem) = value.problem() {
            self.problem(key, problem);
        }
    }

    /// A duration written in milliseconds, checked as written.
    fn range_ms(&mut self, key: &str, value: Duration, min: u64, max: u64) -> u64 {
        self.range(key, u64::try_from(value.as_millis()).unwrap_or(u64::MAX), min, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = r#"
        [[auth.keys]]
        name = "ops"
        key = "0123456789abcdef"
        scopes = ["admin"]
    "#;

    fn write(toml: &str) -> tempfile_path::TempToml {
        tempfile_path::TempToml::new(toml)
    }

    /// Loads defaults + `toml` + `env` and validates, returning the problems (empty if valid).
    fn problems(toml: &str, env: &[(&str, &str)]) -> Vec<Problem> {
        let file = write(toml);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let raw = Settings::from_layers(Some(file.path()), Some(env), None).expect("loads");
        match raw.validate() {
            Ok(_) => vec![],
            Err(e) => e.problems().to_vec(),
        }
    }

    fn valid(extra: &str) -> String {
        format!("[billabear]\napi_key = \"bb-key\"\n{extra}\n{KEYS}")
    }

    fn one(key: &str, contains: &str, toml: &str) {
        let found = problems(toml, &[]);
        assert!(
            found.iter().any(|p| p.key == key && p.message.contains(contains)),
            "expected {key}: ..{contains}.. in {found:?}"
        );
    }

    #[test]
    fn placeholders_this_project_ships_are_refused_by_key_and_never_echoed() {
        let zero = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let toml = format!(
            "[billabear]\napi_key = \"change-me-billabear-api-key\"\n[webhooks]\nsecret = \"demo-webhook-secret\"\n\
             [secrets]\nkey = \"{zero}\"\n[[auth.keys]]\nname = \"a\"\nkey = \"fine-key-0123456789\"\nscopes = [\"check\"]\n\
             [[auth.keys]]\nname = \"b\"\nkey = \"demo-key-change-me\"\nscopes = [\"admin\"]\n"
        );
        let file = write(&toml);
        let raw = Settings::from_layers(Some(file.path()), Some(Default::default()), None).unwrap();
        raw.validate().expect("valid, placeholders aside");
        let problems = raw.refuse_placeholders().unwrap_err().problems().to_vec();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["billabear.api_key", "webhooks.secret", "auth.keys[1].key", "secrets.key"]);
        let text = format!("{problems:?}");
        assert!(!text.contains("demo-key-change-me") && !text.contains(zero), "{text}");

        let own = valid(&format!("[secrets]\nkey = \"{}\"", "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="));
        let file = write(&own);
        let raw = Settings::from_layers(Some(file.path()), Some(Default::default()), None).unwrap();
        raw.refuse_placeholders().expect("secrets of one's own pass");
    }

    #[test]
    fn every_value_that_is_not_its_kind_is_reported_with_the_others() {
        let toml = valid(
            "[server]\naddress = \"localhost\"\nworkers = 1000\n[log]\nformat = \"xml\"\n\
             [policy]\nmode = \"audit\"\n[outbound_webhooks]\nallowed_subnets = [\"10.0.0.0/8\", \"x\"]",
        );
        let found = problems(&toml, &[]);
        let keys: Vec<_> = found.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "server.address",
            "server.workers",
            "log.format",
            "policy.mode",
            "outbound_webhooks.allowed_subnets[1]",
        ] {
            assert!(keys.contains(&key), "{key} missing from {found:?}");
        }
    }

    #[test]
    fn each_sections_default_is_the_embedded_files() {
        let loaded = Settings::defaults();
        assert_eq!(loaded.policy, PolicySettings::default());
        assert_eq!(loaded.entitlements, EntitlementSettings::default());
        assert_eq!(
            toml::to_string(&loaded.server).unwrap(),
            toml::to_string(&ServerSettings::default()).unwrap()
        );
        assert_eq!(loaded.cache.ttl, CacheSettings::default().ttl);
        assert_eq!(loaded.gate.jwt.leeway, JwtSettings::default().leeway);
    }

    #[test]
    fn a_minimal_file_is_valid() {
        assert_eq!(problems(&valid(""), &[]), vec![]);
    }

    #[test]
    fn defaults_alone_name_the_two_missing_keys() {
        let found = problems("", &[]);
        let keys: Vec<_> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["billabear.api_key", "auth.keys"]);
    }

    #[test]
    fn each_validation_error_names_its_key() {
        let with = |section: &str, line: &str| format!("[{section}]\n{line}\n");
        let cases: Vec<(&str, &str, String)> = vec![
            (
                "entitlements.time_zone",
                "an IANA time zone",
                format!("{}\n{}", with("entitlements", "time_zone = \"Mars/Olympus\""), valid("")),
            ),
            (
                "entitlements.windows.api_calls",
                "must be billing_period, hour, day, week or month, got \"fortnight\"",
                format!("{}\n{}", with("entitlements.windows", "api_calls = \"fortnight\""), valid("")),
            ),
            (
                "entitlements.metrics.calls",
                "named for \"api_calls\" too",
                format!(
                    "{}\n{}",
                    with("entitlements.metrics", "api_calls = \"requests\"\ncalls = \"requests\""),
                    valid("")
                ),
            ),
            (
                "retention.overrides_days",
                "from 0 (keep every row) to 3650, got -1",
                format!("{}\n{}", with("retention", "overrides_days = -1.0"), valid("")),
            ),
            (
                "secrets.key",
                "base64 of 32 bytes, got 16",
                format!("{}\n{}", with("secrets", "key = \"MDEyMzQ1Njc4OWFiY2RlZg==\""), valid("")),
            ),
            (
                "secrets.previous_key",
                "needs secrets.key",
                format!(
                    "{}\n{}",
                    with("secrets", "previous_key = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\""),
                    valid("")
                ),
            ),
            (
                "outbound_webhooks.allowed_subnets[1]",
                "CIDR notation",
                format!(
                    "{}\n{}",
                    with("outbound_webhooks", "allowed_subnets = [\"10.0.0.0/8\", \"10.0.0.300/8\"]"),
                    valid("")
                ),
            ),
            (
                "outbound_webhooks.max_attempts_per_endpoint",
                "between 1 and 16",
                format!("{}\n{}", with("outbound_webhooks", "max_attempts_per_endpoint = 17"), valid("")),
            ),
            (
                "server.address",
                "must be IP:PORT",
                format!("{}\n{}", with("server", "address = \"localhost\""), valid("")),
            ),
            (
                "server.max_body_bytes",
                "between 1024",
                format!("{}\n{}", with("server", "max_body_bytes = 10"), valid("")),
            ),
            (
                "server.workers",
                "between 0 and 256",
                format!("{}\n{}", with("server", "workers = 1000"), valid("")),
            ),
            (
                "server.metrics_address",
                "IP:PORT or empty",
                format!("{}\n{}", with("server", "metrics_address = \"localhost\""), valid("")),
            ),
            (
                "webhooks.secret",
                "at least 16",
                format!("{}\n{}", with("webhooks", "secret = \"short\""), valid("")),
            ),
            (
                "webhooks.secret",
                "URL path segment",
                format!("{}\n{}", with("webhooks", "secret = \"has/a/slash/in/it/0123\""), valid("")),
            ),
            (
                "database.url",
                "postgres://",
                format!("{}\n{}", with("database", "url = \"mysql://x\""), valid("")),
            ),
            (
                "database.max_connections",
                "between 1",
                format!("{}\n{}", with("database", "max_connections = 0"), valid("")),
            ),
            (
                "database.acquire_timeout_ms",
                "between 1",
                format!("{}\n{}", with("database", "acquire_timeout_ms = 0"), valid("")),
            ),
            (
                "billabear.base_url",
                "http(s) URL",
                format!("{KEYS}\n[billabear]\napi_key=\"k\"\nbase_url = \"ftp://x/api/v1\""),
            ),
            (
                "billabear.base_url",
                "query",
                format!("{KEYS}\n[billabear]\napi_key=\"k\"\nbase_url = \"http://x/api/v1?a=b\""),
            ),
            (
                "billabear.base_url",
                "credentials",
                format!("{KEYS}\n[billabear]\napi_key=\"k\"\nbase_url = \"http://u:p@x/api/v1\""),
            ),
            (
                "billabear.timeout_ms",
                "between 1 and 60000, got 0",
                format!("{KEYS}\n[billabear]\napi_key=\"k\"\ntimeout_ms = 0"),
            ),
            (
                "billabear.connect_timeout_ms",
                "between 1",
                format!("{KEYS}\n[billabear]\napi_key=\"k\"\nconnect_timeout_ms = 0"),
            ),
            ("cache.ttl_ms", "between 1", format!("{}\n{}", with("cache", "ttl_ms = 0"), valid(""))),
            (
                "cache.max_stale_ms",
                "at least cache.ttl_ms",
                format!("{}\n{}", with("cache", "ttl_ms = 5000\nmax_stale_ms = 1000"), valid("")),
            ),
            (
                "cache.max_customers",
                "between 1",
                format!("{}\n{}", with("cache", "max_customers = 0"), valid("")),
            ),
            (
                "cache.fetch_concurrency",
                "between 1",
                format!("{}\n{}", with("cache", "fetch_concurrency = 0"), valid("")),
            ),
            (
                "policy.mode",
                "enforce or shadow",
                format!("{}\n{}", with("policy", "mode = \"audit\""), valid("")),
            ),
            (
                "policy.fail_mode",
                "open or closed",
                format!("{}\n{}", with("policy", "fail_mode = \"x\""), valid("")),
            ),
            (
                "policy.unknown_customer",
                "deny or allow",
                format!("{}\n{}", with("policy", "unknown_customer = \"x\""), valid("")),
            ),
            (
                "policy.near_limit_ratio",
                "greater than 0 and at most 1",
                format!("{}\n{}", with("policy", "near_limit_ratio = 1.5"), valid("")),
            ),
            (
                "gate.customer_header",
                "header name",
                format!("{}\n{}", with("gate", "customer_header = \"bad header\""), valid("")),
            ),
            (
                "outbox.lease_ms",
                "greater than 3 × outbox.timeout_ms",
                format!("{}\n{}", with("outbox", "timeout_ms = 12000\nlease_ms = 30000"), valid("")),
            ),
            (
                "outbox.retry_max_ms",
                "at least outbox.retry_base_ms",
                format!("{}\n{}", with("outbox", "retry_base_ms = 1000\nretry_max_ms = 10"), valid("")),
            ),
            (
                "outbox.concurrency",
                "between 1",
                format!("{}\n{}", with("outbox", "concurrency = 0"), valid("")),
            ),
            (
                "pending.max_age_s",
                "between 60",
                format!("{}\n{}", with("pending", "max_age_s = 5"), valid("")),
            ),
            (
                "gate.blocked_status",
                "402, 403 or 429",
                format!("{}\n{}", with("gate", "blocked_status = 500"), valid("")),
            ),
            (
                "log.format",
                "auto, json or pretty",
                format!("{}\n{}", with("log", "format = \"xml\""), valid("")),
            ),
            ("log.level", "filter directive", format!("{}\n{}", with("log", "level = \"=[\""), valid(""))),
        ];
        for (key, contains, toml) in cases {
            one(key, contains, &toml);
        }
    }

    #[test]
    fn api_key_problems_name_the_entry() {
        let base = "[billabear]\napi_key = \"bb\"\n";
        let key = |body: &str| format!("{base}[[auth.keys]]\n{body}");
        one("auth.keys[0].key", "at least 16", &key("name = \"a\"\nkey = \"short\"\nscopes = [\"check\"]"));
        one("auth.keys[0].sha256", "64 hex", &key("name = \"a\"\nsha256 = \"abc\"\nscopes = [\"check\"]"));
        one(
            "auth.keys[0]",
            "not both",
            &key(&format!(
                "name = \"a\"\nkey = \"0123456789abcdef\"\nsha256 = \"{}\"\nscopes = [\"check\"]",
                "a".repeat(64)
            )),
        );
        one("auth.keys[0]", "set key", &key("name = \"a\"\nscopes = [\"check\"]"));
        one(
            "auth.keys[0].name",
            "printable",
            &key("name = \"\"\nkey = \"0123456789abcdef\"\nscopes = [\"check\"]"),
        );
        one(
            "auth.keys[0].scopes",
            "unknown scope \"root\"",
            &key("name = \"a\"\nkey = \"0123456789abcdef\"\nscopes = [\"root\"]"),
        );
        one(
            "auth.keys[0].scopes",
            "at least one",
            &key("name = \"a\"\nkey = \"0123456789abcdef\"\nscopes = []"),
        );
        let twice = format!(
            "{}\n[[auth.keys]]\nname = \"b\"\nsha256 = \"{}\"\nscopes = [\"check\"]",
            key("name = \"a\"\nkey = \"0123456789abcdef\"\nscopes = [\"check\"]"),
            hex::encode(digest(b"0123456789abcdef"))
        );
        one("auth.keys[1]", "same key as auth.keys[0]", &twice);
    }

    #[test]
    fn a_sha256_key_authenticates_the_plain_key() {
        let file = write(&format!(
            "[billabear]\napi_key = \"bb\"\n[[auth.keys]]\nname = \"ci\"\nsha256 = \"{}\"\nscopes = [\"events\"]",
            hex::encode(digest(b"the-real-secret-key"))
        ));
        let settings = Settings::from_layers(Some(file.path()), Some(Default::default()), None)
            .unwrap()
            .validate()
            .unwrap();
        let caller = settings.auth.api_keys().authenticate(b"the-real-secret-key").unwrap();
        assert_eq!(&*caller.name, "ci");
        assert_eq!(caller.scopes.iter().collect::<Vec<_>>(), vec![Scope::Events]);
    }

    #[test]
    fn environment_overrides_file_and_database_url_overrides_both() {
        let file = write(&valid("[server]\naddress = \"127.0.0.1:9000\""));
        let env = [
            ("USAGE_GATE__SERVER__ADDRESS".to_string(), "0.0.0.0:9100".to_string()),
            ("USAGE_GATE__BILLABEAR__TIMEOUT_MS".to_string(), "400".to_string()),
            ("USAGE_GATE__DATABASE__URL".to_string(), "postgres://env/db".to_string()),
        ]
        .into_iter()
        .collect();
        let raw = Settings::from_layers(Some(file.path()), Some(env), Some("postgres://override/db".into()))
            .unwrap();
        let settings = raw.validate().unwrap();
        assert_eq!(settings.server.address.to_string(), "0.0.0.0:9100");
        assert_eq!(settings.billabear.timeout, Duration::from_millis(400));
        assert_eq!(settings.database.url.expose_secret(), "postgres://override/db");
    }

    #[test]
    fn a_later_config_file_wins_and_keys_may_come_from_their_own_file() {
        // As Kubernetes mounts them: the settings from a ConfigMap, the keys from a Secret.
        let settings_file = write(
            "[server]\naddress = \"0.0.0.0:9000\"\nworkers = 2\n[billabear]\napi_key = \"placeholder\"",
        );
        let secrets_file = write(&format!("[billabear]\napi_key = \"bb-secret\"\n{KEYS}"));
        let files = [settings_file.path(), secrets_file.path()];
        let raw = Settings::from_files(files, Some(Default::default()), None).unwrap();
        let settings = raw.validate().unwrap();
        assert_eq!(settings.server.address.to_string(), "0.0.0.0:9000");
        assert_eq!(settings.server.workers, 2);
        assert_eq!(settings.billabear.api_key.expose_secret(), "bb-secret");
        assert!(!raw.auth.keys.is_empty());
        // Either file alone: the keys are missing, or the settings are the defaults.
        let alone = Settings::from_files([settings_file.path()], Some(Default::default()), None).unwrap();
        assert!(alone.validate().is_err());
    }

    #[test]
    fn an_environment_value_of_the_wrong_type_names_the_key() {
        let file = write(&valid(""));
        let env =
            [("USAGE_GATE__DATABASE__MAX_CONNECTIONS".to_string(), "many".to_string())].into_iter().collect();
        let err = Settings::from_layers(Some(file.path()), Some(env), None).unwrap_err().to_string();
        assert!(err.contains("database.max_connections"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_rejected() {
        let file = write(&format!("[server]\nadress = \"x\"\n{}", valid("")));
        let err =
            Settings::from_layers(Some(file.path()), Some(Default::default()), None).unwrap_err().to_string();
        assert!(err.contains("adress"), "{err}");
    }

    #[test]
    fn printed_configuration_redacts_secrets() {
        let file = write(&format!(
            "[database]\nurl = \"postgres://app:hunter2@db/ug\"\n[billabear]\napi_key = \"bb-secret-value\"\n\
             [secrets]\nkey = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n{KEYS}"
        ));
        let raw = Settings::from_layers(Some(file.path()), Some(Default::default()), None).unwrap();
        let shown = raw.to_redacted_toml();
        for secret in ["hunter2", "bb-secret-value", "0123456789abcdef", "MDEyMzQ1Njc4OWFiY2RlZjAx"] {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
        assert!(shown.contains("postgres://app:redacted@db/ug"), "{shown}");
        let debug = format!("{:?}", raw.validate().unwrap());
        for secret in
            ["hunter2", "bb-secret-value", "0123456789abcdef", "MDEyMzQ1Njc4OWFiY2RlZjAx", "48, 49, 50"]
        {
            assert!(!debug.contains(secret), "{secret} leaked in Debug");
        }
    }

    /// A TOML file in the temp dir, removed on drop.
    mod tempfile_path {
        use std::path::{Path, PathBuf};

        pub struct TempToml(PathBuf);

        impl TempToml {
            pub fn new(contents: &str) -> Self {
                let path =
                    std::env::temp_dir().join(format!("usage-gate-test-{}.toml", uuid::Uuid::new_v4()));
                std::fs::write(&path, contents).unwrap();
                Self(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for TempToml {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}
