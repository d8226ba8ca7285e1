//! Configuration: layered sources (embedded `config/default.toml`, an optional file, environment
//! variables, `DATABASE_URL`) deserialized into [`RawSettings`], then validated once into typed
//! [`Settings`]. Every problem names its key, and all problems are reported together.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use actix_web::http::header::HeaderName;

use crate::auth::{ApiKey, ApiKeys, KeyDigest, Scope, Scopes, digest};
use crate::policy::{FailMode, Mode, PolicySettings, UnknownCustomer};

/// The defaults, embedded so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
pub const ENV_PREFIX: &str = "USAGE_GATE";

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

// ---------------------------------------------------------------------------------------------
// Raw, as written in the sources. Unknown keys are rejected so a typo does not pass silently.

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub server: RawServer,
    pub database: RawDatabase,
    pub billabear: RawBillaBear,
    pub cache: RawCache,
    pub policy: RawPolicy,
    pub gate: RawGate,
    pub outbox: RawOutbox,
    pub pending: RawPending,
    pub auth: RawAuth,
    pub webhooks: RawWebhooks,
    pub outbound_webhooks: RawOutboundWebhooks,
    pub console: RawConsole,
    pub secrets: RawSecrets,
    pub retention: RawRetention,
    pub log: RawLog,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub interval_s: u64,
    pub vacuum: bool,
    pub reservations_days: f64,
    pub overrides_days: f64,
    pub billabear_counters_days: f64,
    pub customer_decisions_days: f64,
    pub audit_days: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    #[serde(serialize_with = "redact")]
    pub key: SecretString,
    #[serde(serialize_with = "redact")]
    pub previous_key: SecretString,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    pub enabled: bool,
    pub session_idle_minutes: u64,
    pub history_days: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutboundWebhooks {
    pub retry_schedule_ms: Vec<u64>,
    pub timeout_ms: u64,
    pub poll_interval_ms: u64,
    pub concurrency: u32,
    pub max_attempts_per_endpoint: u32,
    pub allowed_subnets: Vec<String>,
    pub retention_days: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPending {
    pub max_age_s: u64,
    pub settle_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    #[serde(serialize_with = "redact")]
    pub secret: SecretString,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub ttl_ms: u64,
    pub max_stale_ms: u64,
    pub min_refresh_interval_ms: u64,
    pub negative_ttl_ms: u64,
    pub max_customers: u64,
    pub max_unknown_customers: u64,
    pub fetch_concurrency: u32,
    pub max_concurrent_fetches: u32,
    pub cold_fetches_per_second: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub mode: String,
    pub fail_mode: String,
    pub unknown_customer: String,
    pub near_limit_ratio: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    pub concurrency: u32,
    pub lease_ms: u64,
    pub timeout_ms: u64,
    pub poll_interval_ms: u64,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub max_attempts: u32,
    pub max_age_s: u64,
    pub retention_days: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub customer_header: String,
    pub blocked_status: u16,
    pub jwt: RawJwt,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub jwks_url: String,
    pub jwks_refresh_s: u64,
    pub jwks_file: String,
    #[serde(serialize_with = "redact")]
    pub hs256_secret: SecretString,
    pub algorithms: Vec<String>,
    pub issuer: String,
    pub audience: String,
    pub leeway_s: u64,
    pub customer_claim: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub address: String,
    pub max_body_bytes: u64,
    pub workers: u32,
    pub shutdown_timeout_s: u64,
    pub metrics_address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    #[serde(serialize_with = "redact_url")]
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBillaBear {
    pub base_url: String,
    #[serde(serialize_with = "redact")]
    pub api_key: SecretString,
    pub timeout_ms: u64,
    pub admin_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub keys: Vec<RawApiKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub name: String,
    #[serde(default, serialize_with = "redact_opt", skip_serializing_if = "Option::is_none")]
    pub key: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: String,
    pub level: String,
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

impl RawSettings {
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

    /// Checks every value; on failure lists every problem with its key.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let mut v = Validator::default();
        let mut settings = Settings {
            server: ServerSettings {
                address: v.parse(
                    "server.address",
                    &self.server.address,
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    |s| {
                        s.parse::<SocketAddr>().map_err(|_| {
                            format!("must be IP:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080), got {s:?}")
                        })
                    },
                ),
                max_body_bytes: v.range("server.max_body_bytes", self.server.max_body_bytes, 1024, 64 << 20)
                    as usize,
                workers: v.range("server.workers", self.server.workers.into(), 0, 256) as usize,
                shutdown_timeout: Duration::from_secs(v.range(
                    "server.shutdown_timeout_s",
                    self.server.shutdown_timeout_s,
                    0,
                    3600,
                )),
                metrics_address: match self.server.metrics_address.as_str() {
                    "" => None,
                    raw => Some(v.parse(
                        "server.metrics_address",
                        raw,
                        SocketAddr::from(([127, 0, 0, 1], 0)),
                        |s| {
                            s.parse::<SocketAddr>()
                                .map_err(|_| format!("must be IP:PORT or empty, got {s:?}"))
                        },
                    )),
                },
            },
            database: DatabaseSettings {
                url: {
                    let url = self.database.url.expose_secret();
                    // The value is not echoed: it may hold a password.
                    v.check(
                        "database.url",
                        url.starts_with("postgres://") || url.starts_with("postgresql://"),
                        || "must be a postgres:// or postgresql:// URL".into(),
                    );
                    self.database.url.clone()
                },
                max_connections: v.range(
                    "database.max_connections",
                    self.database.max_connections.into(),
                    1,
                    1000,
                ) as u32,
                acquire_timeout: Duration::from_millis(v.range(
                    "database.acquire_timeout_ms",
                    self.database.acquire_timeout_ms,
                    1,
                    60_000,
                )),
            },
            billabear: BillaBearSettings {
                base_url: v.parse(
                    "billabear.base_url",
                    &self.billabear.base_url,
                    Url::parse("http://invalid").expect("static URL"),
                    parse_base_url,
                ),
                api_key: {
                    v.check("billabear.api_key", !self.billabear.api_key.expose_secret().is_empty(), || {
                        "must be set: the BillaBear API key, sent as X-API-Key".into()
                    });
                    self.billabear.api_key.clone()
                },
                timeout: Duration::from_millis(v.range(
                    "billabear.timeout_ms",
                    self.billabear.timeout_ms,
                    1,
                    60_000,
                )),
                admin_timeout: Duration::from_millis(v.range(
                    "billabear.admin_timeout_ms",
                    self.billabear.admin_timeout_ms,
                    1,
                    120_000,
                )),
                connect_timeout: Duration::from_millis(v.range(
                    "billabear.connect_timeout_ms",
                    self.billabear.connect_timeout_ms,
                    1,
                    60_000,
                )),
            },
            cache: validate_cache(&mut v, &self.cache),
            policy: validate_policy(&mut v, &self.policy),
            gate: GateSettings {
                customer_header: v.parse(
                    "gate.customer_header",
                    &self.gate.customer_header,
                    HeaderName::from_static("x-customer-id"),
                    |s| {
                        HeaderName::from_bytes(s.as_bytes())
                            .map_err(|_| format!("must be an HTTP header name, got {s:?}"))
                    },
                ),
                blocked_status: {
                    let status = self.gate.blocked_status;
                    v.check("gate.blocked_status", matches!(status, 402 | 403 | 429), || {
                        format!("must be 402, 403 or 429, got {status}")
                    });
                    status
                },
                jwt: validate_jwt(&mut v, &self.gate.jwt),
            },
            outbox: validate_outbox(&mut v, &self.outbox),
            pending: PendingSettings {
                max_age: Duration::from_secs(v.range(
                    "pending.max_age_s",
                    self.pending.max_age_s,
                    60,
                    7 * 86_400,
                )),
                settle_timeout: Duration::from_millis(v.range(
                    "pending.settle_timeout_ms",
                    self.pending.settle_timeout_ms,
                    1,
                    60_000,
                )),
            },
            auth: AuthSettings { keys: validate_keys(&mut v, &self.auth.keys) },
            webhooks: WebhookSettings {
                secret: {
                    let secret = self.webhooks.secret.expose_secret();
                    v.check("webhooks.secret", secret.is_empty() || secret.len() >= 16, || {
                        "must be empty (webhooks off) or at least 16 characters".into()
                    });
                    v.check(
                        "webhooks.secret",
                        secret.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c)),
                        || "may hold only letters, digits and -_.~ (it is a URL path segment)".into(),
                    );
                    (!secret.is_empty()).then(|| self.webhooks.secret.clone())
                },
            },
            outbound_webhooks: validate_outbound_webhooks(&mut v, &self.outbound_webhooks),
            console: ConsoleSettings {
                enabled: self.console.enabled,
                session_idle: Duration::from_secs(
                    60 * v.range(
                        "console.session_idle_minutes",
                        self.console.session_idle_minutes,
                        1,
                        7 * 1440,
                    ),
                ),
                history: days(&mut v, "console.history_days", self.console.history_days),
            },
            secrets: validate_secrets(&mut v, &self.secrets),
            retention: validate_retention(&mut v, &self.retention),
            log: LogSettings {
                format: v.parse("log.format", &self.log.format, LogFormat::Auto, |s| match s {
                    "auto" => Ok(LogFormat::Auto),
                    "json" => Ok(LogFormat::Json),
                    "pretty" => Ok(LogFormat::Pretty),
                    _ => Err(format!("must be auto, json or pretty, got {s:?}")),
                }),
                level: {
                    v.check(
                        "log.level",
                        tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
                        || format!("is not a tracing filter directive (e.g. info or usage_gate=debug,info), got {:?}", self.log.level),
                    );
                    self.log.level.clone()
                },
            },
        };
        // The retention chore prunes the webhooks' and the console's rows by their own sections'
        // windows.
        settings.retention.webhook_messages = Some(settings.outbound_webhooks.retention);
        settings.retention.console_sessions = Some(settings.console.session_idle);
        settings.retention.usage_samples = Some(settings.console.history);
        v.finish(settings)
    }

    /// The outbox section alone, validated (for tests of the forwarder's decisions).
    pub fn outbox_settings(&self) -> OutboxSettings {
        validate_outbox(&mut Validator::default(), &self.outbox)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(self).expect("settings serialize")
    }
}

fn parse_base_url(s: &str) -> Result<Url, String> {
    let url =
        Url::parse(s).map_err(|e| format!("must be an http(s) URL such as https://HOST/api/v1 ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.cannot_be_a_base() {
        return Err(format!("must be an http(s) URL such as https://HOST/api/v1, got {s:?}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; set billabear.api_key".into());
    }
    Ok(url)
}

fn validate_jwt(v: &mut Validator, raw: &RawJwt) -> Option<JwtSettings> {
    use jsonwebtoken::Algorithm;
    let secret = raw.hs256_secret.expose_secret();
    let sources = [!raw.jwks_url.is_empty(), !raw.jwks_file.is_empty(), !secret.is_empty()];
    match sources.iter().filter(|set| **set).count() {
        0 => return None,
        1 => {}
        _ => v.problem("gate.jwt", "set one of jwks_url, jwks_file and hs256_secret, not several"),
    }
    let keys = if !raw.jwks_url.is_empty() {
        let url =
            v.parse("gate.jwt.jwks_url", &raw.jwks_url, Url::parse("https://invalid").expect("a URL"), |s| {
                Url::parse(s)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .ok_or_else(|| format!("must be an http(s) URL, got {s:?}"))
            });
        let every = Duration::from_secs(v.range("gate.jwt.jwks_refresh_s", raw.jwks_refresh_s, 10, 86_400));
        JwtKeys::JwksUrl { url, every }
    } else if !raw.jwks_file.is_empty() {
        JwtKeys::JwksFile(PathBuf::from(&raw.jwks_file))
    } else {
        v.check("gate.jwt.hs256_secret", secret.len() >= 32, || "must be at least 32 characters".into());
        JwtKeys::Hs(raw.hs256_secret.clone())
    };
    let symmetric = matches!(keys, JwtKeys::Hs(_));
    let names: Vec<String> = match (raw.algorithms.is_empty(), symmetric) {
        (false, _) => raw.algorithms.clone(),
        (true, false) => vec!["RS256".into(), "ES256".into()],
        (true, true) => vec!["HS256".into()],
    };
    let mut algorithms = Vec::new();
    for name in &names {
        match name.parse::<Algorithm>() {
            Ok(alg) if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) != symmetric => {
                v.problem(
                    "gate.jwt.algorithms",
                    if symmetric {
                        format!("{name} needs a public key: with hs256_secret only HS256, HS384 or HS512")
                    } else {
                        format!("{name} is an HMAC algorithm: with a JWKS only RS*, PS*, ES* or EdDSA")
                    },
                )
            }
            Ok(alg) => algorithms.push(alg),
            Err(_) => v.problem(
                "gate.jwt.algorithms",
                format!("{name:?} is not a JWS algorithm (e.g. RS256, ES256)"),
            ),
        }
    }
    v.check("gate.jwt.issuer", !raw.issuer.is_empty(), || {
        "required with a key source: the tokens' iss".into()
    });
    v.check("gate.jwt.audience", !raw.audience.is_empty(), || {
        "required with a key source: the tokens' aud".into()
    });
    v.check("gate.jwt.customer_claim", !raw.customer_claim.is_empty(), || "must name a claim".into());
    Some(JwtSettings {
        keys,
        algorithms,
        issuer: raw.issuer.clone(),
        audience: raw.audience.clone(),
        leeway: Duration::from_secs(v.range("gate.jwt.leeway_s", raw.leeway_s, 0, 3600)),
        customer_claim: raw.customer_claim.clone(),
    })
}

fn validate_cache(v: &mut Validator, raw: &RawCache) -> CacheSettings {
    const DAY_MS: u64 = 86_400_000;
    let ttl = v.range("cache.ttl_ms", raw.ttl_ms, 1, DAY_MS);
    let max_stale = v.range("cache.max_stale_ms", raw.max_stale_ms, 0, 7 * DAY_MS);
    v.check("cache.max_stale_ms", max_stale >= ttl, || {
        format!("must be at least cache.ttl_ms ({ttl}), got {max_stale}")
    });
    CacheSettings {
        ttl: Duration::from_millis(ttl),
        max_stale: Duration::from_millis(max_stale),
        min_refresh_interval: Duration::from_millis(v.range(
            "cache.min_refresh_interval_ms",
            raw.min_refresh_interval_ms,
            0,
            DAY_MS,
        )),
        negative_ttl: Duration::from_millis(v.range("cache.negative_ttl_ms", raw.negative_ttl_ms, 0, DAY_MS)),
        max_customers: v.range("cache.max_customers", raw.max_customers, 1, 100_000_000),
        max_unknown_customers: v.range(
            "cache.max_unknown_customers",
            raw.max_unknown_customers,
            1,
            100_000_000,
        ),
        fetch_concurrency: v.range("cache.fetch_concurrency", raw.fetch_concurrency.into(), 1, 1000) as usize,
        max_concurrent_fetches: v.range(
            "cache.max_concurrent_fetches",
            raw.max_concurrent_fetches.into(),
            1,
            10_000,
        ) as usize,
        cold_fetches_per_second: v.range(
            "cache.cold_fetches_per_second",
            raw.cold_fetches_per_second.into(),
            1,
            1_000_000,
        ) as u32,
    }
}

fn validate_outbox(v: &mut Validator, raw: &RawOutbox) -> OutboxSettings {
    const HOUR_MS: u64 = 3_600_000;
    let timeout = v.range("outbox.timeout_ms", raw.timeout_ms, 1, 600_000);
    let lease = v.range("outbox.lease_ms", raw.lease_ms, 1000, HOUR_MS);
    // One delivery may resolve a customer's subscription, post the event and then retry
    // recording the outcome, each for up to timeout_ms: the lease must outlast all three, or a
    // live delivery's event is claimed and sent again by another replica.
    v.check("outbox.lease_ms", lease > 3 * timeout, || {
        format!(
            "must be greater than 3 × outbox.timeout_ms ({}: resolving the subscription, posting the event and recording the outcome), got {lease}",
            3 * timeout
        )
    });
    let base = v.range("outbox.retry_base_ms", raw.retry_base_ms, 1, HOUR_MS);
    let max = v.range("outbox.retry_max_ms", raw.retry_max_ms, 1, 24 * HOUR_MS);
    v.check("outbox.retry_max_ms", max >= base, || {
        format!("must be at least outbox.retry_base_ms ({base}), got {max}")
    });
    OutboxSettings {
        concurrency: v.range("outbox.concurrency", raw.concurrency.into(), 1, 1024) as usize,
        lease: Duration::from_millis(lease),
        timeout: Duration::from_millis(timeout),
        poll_interval: Duration::from_millis(v.range(
            "outbox.poll_interval_ms",
            raw.poll_interval_ms,
            10,
            HOUR_MS,
        )),
        retry_base: Duration::from_millis(base),
        retry_max: Duration::from_millis(max),
        max_attempts: v.range("outbox.max_attempts", raw.max_attempts.into(), 1, 1_000_000) as u32,
        max_age: Duration::from_secs(v.range("outbox.max_age_s", raw.max_age_s, 60, 365 * 86_400)),
        retention: days(v, "outbox.retention_days", raw.retention_days),
    }
}

/// A window in days, fractions allowed (so that a test or a soak can shorten it), at most 10
/// years; where `keep` allows it, 0 keeps every row (None).
fn window(v: &mut Validator, key: &str, days: f64, keep: bool) -> Option<Duration> {
    let keeps = keep && days == 0.0;
    let valid = days.is_finite() && days <= 3650.0 && (days > 0.0 || keeps);
    v.check(key, valid, || match keep {
        true => format!("must be a number of days from 0 (keep every row) to 3650, got {days}"),
        false => format!("must be a number of days above 0 and at most 3650, got {days}"),
    });
    (valid && !keeps).then(|| Duration::from_secs_f64(days * 86_400.0))
}

/// A window in days that must end (more than 0).
fn days(v: &mut Validator, key: &str, days: f64) -> Duration {
    window(v, key, days, false).unwrap_or(Duration::from_secs(86_400))
}

fn validate_retention(v: &mut Validator, raw: &RawRetention) -> RetentionSettings {
    let mut window = |key: &str, days: f64| window(v, key, days, true);
    RetentionSettings {
        reservations: window("retention.reservations_days", raw.reservations_days),
        overrides: window("retention.overrides_days", raw.overrides_days),
        billabear_counters: window("retention.billabear_counters_days", raw.billabear_counters_days),
        customer_decisions: window("retention.customer_decisions_days", raw.customer_decisions_days),
        audit: window("retention.audit_days", raw.audit_days),
        // Set in `validate` from their own sections.
        webhook_messages: None,
        console_sessions: None,
        usage_samples: None,
        interval: Duration::from_secs(v.range("retention.interval_s", raw.interval_s, 1, 86_400)),
        vacuum: raw.vacuum,
    }
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

fn validate_secrets(v: &mut Validator, raw: &RawSecrets) -> SecretsSettings {
    let mut key = |name: &str, secret: &SecretString| {
        let text = secret.expose_secret();
        if text.is_empty() {
            return None;
        }
        // The message never holds the value.
        crate::seal::parse_key(text).map_err(|message| v.problem(name, message)).ok()
    };
    let settings = SecretsSettings {
        key: key("secrets.key", &raw.key),
        previous_key: key("secrets.previous_key", &raw.previous_key),
    };
    v.check("secrets.previous_key", settings.key.is_some() || settings.previous_key.is_none(), || {
        "needs secrets.key (the key it is rotated to)".into()
    });
    settings
}

fn validate_outbound_webhooks(v: &mut Validator, raw: &RawOutboundWebhooks) -> OutboundWebhookSettings {
    const DAY_MS: u64 = 86_400_000;
    let schedule = &raw.retry_schedule_ms;
    v.check("outbound_webhooks.retry_schedule_ms", (1..=30).contains(&schedule.len()), || {
        format!("must list 1 to 30 waits (ms), got {}", schedule.len())
    });
    v.check(
        "outbound_webhooks.retry_schedule_ms",
        schedule.iter().all(|ms| (1..=7 * DAY_MS).contains(ms)),
        || "every wait must be 1 ms to 7 days".into(),
    );
    let concurrency = v.range("outbound_webhooks.concurrency", raw.concurrency.into(), 1, 1024) as usize;
    let mut allowed_subnets = Vec::new();
    for (i, cidr) in raw.allowed_subnets.iter().enumerate() {
        match cidr.trim().parse::<ipnet::IpNet>() {
            Ok(net) => allowed_subnets.push(net.trunc()),
            Err(_) => v.problem(
                format!("outbound_webhooks.allowed_subnets[{i}]"),
                format!("must be a subnet in CIDR notation (e.g. 10.0.0.0/8, fd00::/8), got {cidr:?}"),
            ),
        }
    }
    OutboundWebhookSettings {
        retry_schedule: schedule.iter().map(|ms| Duration::from_millis(*ms)).collect(),
        timeout: Duration::from_millis(v.range("outbound_webhooks.timeout_ms", raw.timeout_ms, 1, 60_000)),
        poll_interval: Duration::from_millis(v.range(
            "outbound_webhooks.poll_interval_ms",
            raw.poll_interval_ms,
            10,
            60_000,
        )),
        concurrency,
        max_attempts_per_endpoint: v.range(
            "outbound_webhooks.max_attempts_per_endpoint",
            raw.max_attempts_per_endpoint.into(),
            1,
            concurrency as u64,
        ) as usize,
        allowed_subnets,
        retention: days(v, "outbound_webhooks.retention_days", raw.retention_days),
    }
}

fn validate_policy(v: &mut Validator, raw: &RawPolicy) -> PolicySettings {
    let ratio = raw.near_limit_ratio;
    v.check("policy.near_limit_ratio", ratio.is_finite() && ratio > 0.0 && ratio <= 1.0, || {
        format!("must be greater than 0 and at most 1, got {ratio}")
    });
    PolicySettings {
        mode: v.parse("policy.mode", &raw.mode, Mode::Enforce, |s| match s {
            "enforce" => Ok(Mode::Enforce),
            "shadow" => Ok(Mode::Shadow),
            _ => Err(format!("must be enforce or shadow, got {s:?}")),
        }),
        fail_mode: v.parse("policy.fail_mode", &raw.fail_mode, FailMode::Open, |s| match s {
            "open" => Ok(FailMode::Open),
            "closed" => Ok(FailMode::Closed),
            _ => Err(format!("must be open or closed, got {s:?}")),
        }),
        unknown_customer: v.parse(
            "policy.unknown_customer",
            &raw.unknown_customer,
            UnknownCustomer::Deny,
            |s| match s {
                "deny" => Ok(UnknownCustomer::Deny),
                "allow" => Ok(UnknownCustomer::Allow),
                _ => Err(format!("must be deny or allow, got {s:?}")),
            },
        ),
        near_limit_ratio: ratio,
    }
}

fn validate_keys(v: &mut Validator, raw: &[RawApiKey]) -> ApiKeys {
    if raw.is_empty() {
        v.problem(
            "auth.keys",
            "at least one key is required ([[auth.keys]] with name, key or sha256, scopes)",
        );
    }
    let mut keys: Vec<ApiKey> = Vec::new();
    let mut seen: Vec<(KeyDigest, usize)> = Vec::new();
    for (i, k) in raw.iter().enumerate() {
        let at = format!("auth.keys[{i}]");
        let name = k.name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            v.problem(
                format!("{at}.name"),
                "must be 1 to 64 printable characters (the actor in audit records)",
            );
        }
        let key_digest = match (&k.key, &k.sha256) {
            (Some(_), Some(_)) => {
                v.problem(&at, "set either key or sha256, not both");
                None
            }
            (None, None) => {
                v.problem(&at, "set key (the secret) or sha256 (its hex SHA-256 digest)");
                None
            }
            (Some(key), None) => {
                let key = key.expose_secret();
                if key.chars().count() < 16 {
                    v.problem(format!("{at}.key"), "must be at least 16 characters");
                    None
                } else {
                    Some(digest(key.as_bytes()))
                }
            }
            (None, Some(hex_digest)) => match hex::decode(hex_digest.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
            {
                Some(d) => Some(d),
                None => {
                    v.problem(format!("{at}.sha256"), "must be 64 hex characters (the SHA-256 of the key)");
                    None
                }
            },
        };
        let mut scopes = Scopes::default();
        if k.scopes.is_empty() {
            v.problem(format!("{at}.scopes"), "must list at least one of check, events, admin");
        }
        for s in &k.scopes {
            match Scope::parse(s) {
                Some(scope) => scopes.insert(scope),
                None => v.problem(
                    format!("{at}.scopes"),
                    format!("unknown scope {s:?} (expected check, events or admin)"),
                ),
            }
        }
        if let Some(d) = key_digest {
            if let Some((_, first)) = seen.iter().find(|(other, _)| *other == d) {
                v.problem(&at, format!("same key as auth.keys[{first}]"));
            }
            seen.push((d, i));
            keys.push(ApiKey { name: name.into(), digest: d, scopes });
        }
    }
    ApiKeys::new(keys)
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

    /// Parses `raw`; on failure records the problem and returns `fallback` (never used, since
    /// `finish` then fails), so building can go on and find the other problems.
    fn parse<T>(
        &mut self,
        key: &str,
        raw: &str,
        fallback: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        parse(raw).unwrap_or_else(|message| {
            self.problem(key, message);
            fallback
        })
    }

    fn finish(self, settings: Settings) -> Result<Settings, ConfigError> {
        if self.problems.is_empty() { Ok(settings) } else { Err(ConfigError::Invalid(self.problems)) }
    }
}

// ---------------------------------------------------------------------------------------------
// Typed, validated.

#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub billabear: BillaBearSettings,
    pub cache: CacheSettings,
    pub policy: PolicySettings,
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

/// How long rows no other chore removes are kept (`retention`); None keeps every row.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// How often a replica prunes (one at a time).
    pub interval: Duration,
    /// Whether the pruning replica then vacuums usage-gate's churning tables.
    pub vacuum: bool,
    /// Closed holds, after they closed.
    pub reservations: Option<Duration>,
    /// Ended (or expired) overrides, after they ended.
    pub overrides: Option<Duration>,
    /// BillaBear's counter of a subscription, after it was last seen.
    pub billabear_counters: Option<Duration>,
    /// A customer's last decision, after the customer was last seen.
    pub customer_decisions: Option<Duration>,
    /// Audit records (by default kept).
    pub audit: Option<Duration>,
    /// Webhook messages delivered or failed (`outbound_webhooks.retention_days`), idle console
    /// sessions (`console.session_idle_minutes`) and usage samples (`console.history_days`).
    pub webhook_messages: Option<Duration>,
    pub console_sessions: Option<Duration>,
    pub usage_samples: Option<Duration>,
}

/// The keys secrets are sealed with at rest (`seal`); none: stored as they are.
#[derive(Clone, Default)]
pub struct SecretsSettings {
    pub key: Option<[u8; 32]>,
    /// The key before a rotation: values under it are read, and sealed again under `key`.
    pub previous_key: Option<[u8; 32]>,
}

impl std::fmt::Debug for SecretsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |k: &Option<[u8; 32]>| if k.is_some() { REDACTED } else { "" };
        f.debug_struct("SecretsSettings")
            .field("key", &shown(&self.key))
            .field("previous_key", &shown(&self.previous_key))
            .finish()
    }
}

/// The operator console (docs/console.md).
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// Whether `/console/` is served.
    pub enabled: bool,
    /// A session ends after this long without a request.
    pub session_idle: Duration,
    /// How long the observations behind the usage plots are kept.
    pub history: Duration,
}

/// usage-gate's own webhooks (docs/webhooks.md).
#[derive(Debug, Clone)]
pub struct OutboundWebhookSettings {
    /// The wait before each retry: after the first failed attempt, the first entry, and so on;
    /// when they are spent, the message has failed.
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    /// How often each replica looks for due messages.
    pub poll_interval: Duration,
    /// Attempts under way at once (per replica).
    pub concurrency: usize,
    /// Of those, at most this many to one endpoint (a receiver that hangs holds no more).
    pub max_attempts_per_endpoint: usize,
    /// Where endpoints may point besides public addresses (`webhooks::destination`).
    pub allowed_subnets: Vec<ipnet::IpNet>,
    /// Delivered and failed messages are kept this long (with their attempts), then deleted.
    pub retention: Duration,
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The last path segment of `/v1/webhooks/billabear/{secret}`; None: webhooks are off.
    pub secret: Option<SecretString>,
}

/// Pending usage: what usage-gate accepted that BillaBear's counter has not counted yet.
#[derive(Debug, Clone)]
pub struct PendingSettings {
    /// A delivered event no counter growth matched stops counting this long after delivery.
    pub max_age: Duration,
    /// How long a fetch may spend retiring what BillaBear counted before it is cached anyway.
    pub settle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub concurrency: usize,
    pub lease: Duration,
    pub timeout: Duration,
    pub poll_interval: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// A transiently failing event is made dead after this many attempts...
    pub max_attempts: u32,
    /// ...or this long after its attempts began, whichever comes first.
    pub max_age: Duration,
    pub retention: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub max_stale: Duration,
    pub min_refresh_interval: Duration,
    pub negative_ttl: Duration,
    pub max_customers: u64,
    pub max_unknown_customers: u64,
    pub fetch_concurrency: usize,
    pub max_concurrent_fetches: usize,
    pub cold_fetches_per_second: u32,
}

#[derive(Debug, Clone)]
pub struct GateSettings {
    pub customer_header: HeaderName,
    pub blocked_status: u16,
    /// End users' tokens verified by usage-gate; `None`: the customer id comes from
    /// `customer_header`.
    pub jwt: Option<JwtSettings>,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub keys: JwtKeys,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub customer_claim: String,
}

/// Where the keys that sign end users' tokens come from.
#[derive(Debug, Clone)]
pub enum JwtKeys {
    JwksUrl { url: Url, every: Duration },
    JwksFile(PathBuf),
    Hs(SecretString),
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub address: SocketAddr,
    pub max_body_bytes: usize,
    /// 0: one per core.
    pub workers: usize,
    pub shutdown_timeout: Duration,
    /// Serve `/metrics` here instead of on `address`.
    pub metrics_address: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct BillaBearSettings {
    pub base_url: Url,
    pub api_key: SecretString,
    /// For calls a check waits on.
    pub timeout: Duration,
    /// For operators' changes (usage limits), which may wait longer than a check.
    pub admin_timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub keys: ApiKeys,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
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
        let raw = RawSettings::from_layers(Some(file.path()), Some(env), None).expect("loads");
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
        let raw = RawSettings::from_layers(Some(file.path()), Some(Default::default()), None).unwrap();
        raw.validate().expect("valid, placeholders aside");
        let problems = raw.refuse_placeholders().unwrap_err().problems().to_vec();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["billabear.api_key", "webhooks.secret", "auth.keys[1].key", "secrets.key"]);
        let text = format!("{problems:?}");
        assert!(!text.contains("demo-key-change-me") && !text.contains(zero), "{text}");

        let own = valid(&format!("[secrets]\nkey = \"{}\"", "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="));
        let file = write(&own);
        let raw = RawSettings::from_layers(Some(file.path()), Some(Default::default()), None).unwrap();
        raw.refuse_placeholders().expect("secrets of one's own pass");
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
        let settings = RawSettings::from_layers(Some(file.path()), Some(Default::default()), None)
            .unwrap()
            .validate()
            .unwrap();
        let caller = settings.auth.keys.authenticate(b"the-real-secret-key").unwrap();
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
        let raw =
            RawSettings::from_layers(Some(file.path()), Some(env), Some("postgres://override/db".into()))
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
        let raw = RawSettings::from_files(files, Some(Default::default()), None).unwrap();
        let settings = raw.validate().unwrap();
        assert_eq!(settings.server.address.to_string(), "0.0.0.0:9000");
        assert_eq!(settings.server.workers, 2);
        assert_eq!(settings.billabear.api_key.expose_secret(), "bb-secret");
        assert!(!raw.auth.keys.is_empty());
        // Either file alone: the keys are missing, or the settings are the defaults.
        let alone = RawSettings::from_files([settings_file.path()], Some(Default::default()), None).unwrap();
        assert!(alone.validate().is_err());
    }

    #[test]
    fn an_environment_value_of_the_wrong_type_names_the_key() {
        let file = write(&valid(""));
        let env =
            [("USAGE_GATE__DATABASE__MAX_CONNECTIONS".to_string(), "many".to_string())].into_iter().collect();
        let err = RawSettings::from_layers(Some(file.path()), Some(env), None).unwrap_err().to_string();
        assert!(err.contains("database.max_connections"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_rejected() {
        let file = write(&format!("[server]\nadress = \"x\"\n{}", valid("")));
        let err = RawSettings::from_layers(Some(file.path()), Some(Default::default()), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("adress"), "{err}");
    }

    #[test]
    fn printed_configuration_redacts_secrets() {
        let file = write(&format!(
            "[database]\nurl = \"postgres://app:hunter2@db/ug\"\n[billabear]\napi_key = \"bb-secret-value\"\n\
             [secrets]\nkey = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n{KEYS}"
        ));
        let raw = RawSettings::from_layers(Some(file.path()), Some(Default::default()), None).unwrap();
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
