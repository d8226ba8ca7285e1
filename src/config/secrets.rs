//! The `[secrets]` section and its `validate`.

use super::*;

/// The keys secrets are sealed with at rest (`seal`); empty: stored as they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSettings {
    #[serde(serialize_with = "super::redact")]
    pub key: SecretString,
    /// The key before a rotation: values under it are read, and sealed again under `key`.
    #[serde(serialize_with = "super::redact")]
    pub previous_key: SecretString,
}

embedded_default!(SecretsSettings, "secrets");

/// The 32 bytes of a key as written (base64); None when empty (or, before validation, invalid).
fn bytes(secret: &SecretString) -> Option<[u8; 32]> {
    let text = secret.expose_secret();
    (!text.is_empty()).then(|| crate::seal::parse_key(text).ok()).flatten()
}

impl SecretsSettings {
    pub fn key(&self) -> Option<[u8; 32]> {
        bytes(&self.key)
    }

    pub fn previous_key(&self) -> Option<[u8; 32]> {
        bytes(&self.previous_key)
    }

    pub(super) fn validate(&self, v: &mut Validator) {
        for (name, secret) in [("secrets.key", &self.key), ("secrets.previous_key", &self.previous_key)] {
            let text = secret.expose_secret();
            if !text.is_empty() {
                // The message never holds the value.
                if let Err(message) = crate::seal::parse_key(text) {
                    v.problem(name, message);
                }
            }
        }
        v.check(
            "secrets.previous_key",
            !self.key.expose_secret().is_empty() || self.previous_key.expose_secret().is_empty(),
            || "needs secrets.key (the key it is rotated to)".into(),
        );
    }
}
