//! The `[webhooks]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    #[serde(serialize_with = "super::redact")]
    pub secret: SecretString,
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The last path segment of `/v1/webhooks/billabear/{secret}`; None: webhooks are off.
    pub secret: Option<SecretString>,
}

pub(super) fn validate(v: &mut Validator, raw: &RawWebhooks) -> WebhookSettings {
    WebhookSettings {
        secret: {
            let secret = raw.secret.expose_secret();
            v.check("webhooks.secret", secret.is_empty() || secret.len() >= 16, || {
                "must be empty (webhooks off) or at least 16 characters".into()
            });
            v.check(
                "webhooks.secret",
                secret.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c)),
                || "may hold only letters, digits and -_.~ (it is a URL path segment)".into(),
            );
            (!secret.is_empty()).then(|| raw.secret.clone())
        },
    }
}
