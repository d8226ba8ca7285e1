//! The `[pending]` section and its `validate`.

use super::*;

/// Pending usage: what usage-gate accepted that BillaBear's counter has not counted yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingSettings {
    /// A delivered event no counter growth matched stops counting this long after delivery.
    #[serde(rename = "max_age_s", with = "secs")]
    pub max_age: Duration,
    /// How long a fetch may spend retiring what BillaBear counted before it is cached anyway.
    #[serde(rename = "settle_timeout_ms", with = "ms")]
    pub settle_timeout: Duration,
}

embedded_default!(PendingSettings, "pending");

impl PendingSettings {
    pub(super) fn validate(&self, v: &mut Validator) {
        v.range("pending.max_age_s", self.max_age.as_secs(), 60, 7 * 86_400);
        v.range_ms("pending.settle_timeout_ms", self.settle_timeout, 1, 60_000);
    }
}
