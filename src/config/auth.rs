//! The `[auth]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub keys: Vec<RawApiKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub name: String,
    #[serde(default, serialize_with = "super::redact_opt", skip_serializing_if = "Option::is_none")]
    pub key: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub keys: ApiKeys,
}

pub(super) fn validate(v: &mut Validator, raw: &RawAuth) -> AuthSettings {
    AuthSettings { keys: validate_keys(v, &raw.keys) }
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
