//! The `[outbox]` section and its `validate`.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    pub concurrency: usize,
    #[serde(rename = "lease_ms", with = "ms")]
    pub lease: Duration,
    #[serde(rename = "timeout_ms", with = "ms")]
    pub timeout: Duration,
    #[serde(rename = "poll_interval_ms", with = "ms")]
    pub poll_interval: Duration,
    #[serde(rename = "retry_base_ms", with = "ms")]
    pub retry_base: Duration,
    #[serde(rename = "retry_max_ms", with = "ms")]
    pub retry_max: Duration,
    /// A transiently failing event is made dead after this many attempts...
    pub max_attempts: u32,
    /// ...or this long after its attempts began, whichever comes first.
    #[serde(rename = "max_age_s", with = "secs")]
    pub max_age: Duration,
    #[serde(rename = "retention_days")]
    pub retention: Days,
}

embedded_default!(OutboxSettings, "outbox");

impl OutboxSettings {
    pub(super) fn validate(&self, v: &mut Validator) {
        const HOUR_MS: u64 = 3_600_000;
        let timeout = v.range_ms("outbox.timeout_ms", self.timeout, 1, 600_000);
        let lease = v.range_ms("outbox.lease_ms", self.lease, 1000, HOUR_MS);
        // One delivery may resolve a customer's subscription, post the event and then retry
        // recording the outcome, each for up to timeout_ms: the lease must outlast all three, or a
        // live delivery's event is claimed and sent again by another replica.
        v.check("outbox.lease_ms", lease > 3 * timeout, || {
            format!(
                "must be greater than 3 × outbox.timeout_ms ({}: resolving the subscription, posting the event and recording the outcome), got {lease}",
                3 * timeout
            )
        });
        let base = v.range_ms("outbox.retry_base_ms", self.retry_base, 1, HOUR_MS);
        let max = v.range_ms("outbox.retry_max_ms", self.retry_max, 1, 24 * HOUR_MS);
        v.check("outbox.retry_max_ms", max >= base, || {
            format!("must be at least outbox.retry_base_ms ({base}), got {max}")
        });
        v.range("outbox.concurrency", self.concurrency as u64, 1, 1024);
        v.range_ms("outbox.poll_interval_ms", self.poll_interval, 10, HOUR_MS);
        v.range("outbox.max_attempts", self.max_attempts.into(), 1, 1_000_000);
        v.range("outbox.max_age_s", self.max_age.as_secs(), 60, 365 * 86_400);
        days(v, "outbox.retention_days", self.retention);
    }
}
