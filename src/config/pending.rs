//! The `[pending]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPending {
    pub max_age_s: u64,
    pub settle_timeout_ms: u64,
}

/// Pending usage: what usage-gate accepted that BillaBear's counter has not counted yet.
#[derive(Debug, Clone)]
pub struct PendingSettings {
    /// A delivered event no counter growth matched stops counting this long after delivery.
    pub max_age: Duration,
    /// How long a fetch may spend retiring what BillaBear counted before it is cached anyway.
    pub settle_timeout: Duration,
}

pub(super) fn validate(v: &mut Validator, raw: &RawPending) -> PendingSettings {
    PendingSettings {
        max_age: Duration::from_secs(v.range("pending.max_age_s", raw.max_age_s, 60, 7 * 86_400)),
        settle_timeout: Duration::from_millis(v.range(
            "pending.settle_timeout_ms",
            raw.settle_timeout_ms,
            1,
            60_000,
        )),
    }
}
