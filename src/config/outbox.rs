//! The `[outbox]` section: as written, typed, and the `validate` between them.

use super::*;

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

pub(super) fn validate(v: &mut Validator, raw: &RawOutbox) -> OutboxSettings {
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
