//! The `[auth]` section and its `validate`.

use super::*;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub keys: Vec<KeySettings>,
}

/// One `[[auth.keys]]` entry: the secret or its digest, and what it may do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub name: String,
    #[serde(default, serialize_with = "super::redact_opt", skip_serializing_if = "Option::is_none")]
    pub key: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub scopes: Vec<String>,
}

impl KeySettings {
    /// The digest callers' keys are compared with; None when neither form is valid.
    fn digest(&self) -> Option<KeyDigest> {
        match (&self.key, &self.sha256) {
            (Some(key), None) if key.expose_secret().chars().count() >= 16 => {
                Some(digest(key.expose_secret().as_bytes()))
            }
            (None, Some(hex_digest)) => hex::decode(hex_digest.trim()).ok()?.try_into().ok(),
            _ => None,
        }
    }

    fn scopes(&self) -> Scopes {
        let mut scopes = Scopes::default();
        self.scopes.iter().filter_map(|s| Scope::parse(s)).for_each(|scope| scopes.insert(scope));
        scopes
    }
}

impl AuthSettings {
    /// The keys callers authenticate with (once validated, every entry).
    pub fn api_keys(&self) -> ApiKeys {
        ApiKeys::new(
            self.keys
                .iter()
                .filter_map(|k| {
                    Some(ApiKey { name: k.name.trim().into(), digest: k.digest()?, scopes: k.scopes() })
                })
                .collect(),
        )
    }

    pub(super) fn validate(&self, v: &mut Validator) {
        if self.keys.is_empty() {
            v.problem(
                "auth.keys",
                "at least one key is required ([[auth.keys]] with name, key or sha256, scopes)",
            );
        }
        let mut seen: Vec<(KeyDigest, usize)> = Vec::new();
        for (i, k) in self.keys.iter().enumerate() {
            let at = format!("auth.keys[{i}]");
            let name = k.name.trim();
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                v.problem(
                    format!("{at}.name"),
                    "must be 1 to 64 printable characters (the actor in audit records)",
                );
            }
            let digest = k.digest();
            match (&k.key, &k.sha256) {
                (Some(_), Some(_)) => v.problem(&at, "set either key or sha256, not both"),
                (None, None) => v.problem(&at, "set key (the secret) or sha256 (its hex SHA-256 digest)"),
                (Some(_), None) if digest.is_none() => {
                    v.problem(format!("{at}.key"), "must be at least 16 characters")
                }
                (None, Some(_)) if digest.is_none() => {
                    v.problem(format!("{at}.sha256"), "must be 64 hex characters (the SHA-256 of the key)")
                }
                _ => {}
            }
            if k.scopes.is_empty() {
                v.problem(format!("{at}.scopes"), "must list at least one of check, events, admin");
            }
            for s in k.scopes.iter().filter(|s| Scope::parse(s).is_none()) {
                v.problem(
                    format!("{at}.scopes"),
                    format!("unknown scope {s:?} (expected check, events or admin)"),
                );
            }
            if let Some(d) = digest {
                if let Some((_, first)) = seen.iter().find(|(other, _)| *other == d) {
                    v.problem(&at, format!("same key as auth.keys[{first}]"));
                }
                seen.push((d, i));
            }
        }
    }
}
