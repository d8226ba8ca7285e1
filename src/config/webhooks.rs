//! The `[webhooks]` section (BillaBear's webhooks to usage-gate) and its `validate`.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// The last path segment of `/v1/webhooks/billabear/{secret}`; empty: webhooks are off.
    #[serde(serialize_with = "super::redact")]
    pub secret: SecretString,
}

embedded_default!(WebhookSettings, "webhooks");

impl WebhookSettings {
    /// The secret, when webhooks are on.
    pub fn secret(&self) -> Option<&SecretString> {
        (!self.secret.expose_secret().is_empty()).then_some(&self.secret)
    }

    pub(super) fn validate(&self, v: &mut Validator) {
        let secret = self.secret.expose_secret();
        v.check("webhooks.secret", secret.is_empty() || secret.len() >= 16, || {
            "must be empty (webhooks off) or at least 16 characters".into()
        });
        v.check(
            "webhooks.secret",
            secret.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c)),
            || "may hold only letters, digits and -_.~ (it is a URL path segment)".into(),
        );
    }
}
