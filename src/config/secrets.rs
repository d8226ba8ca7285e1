//! The `[secrets]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    #[serde(serialize_with = "super::redact")]
    pub key: SecretString,
    #[serde(serialize_with = "super::redact")]
    pub previous_key: SecretString,
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

pub(super) fn validate(v: &mut Validator, raw: &RawSecrets) -> SecretsSettings {
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
