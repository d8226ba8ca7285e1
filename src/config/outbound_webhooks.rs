//! The `[outbound_webhooks]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutboundWebhooks {
    pub retry_schedule_ms: Vec<u64>,
    pub timeout_ms: u64,
    pub poll_interval_ms: u64,
    pub concurrency: u32,
    pub max_attempts_per_endpoint: u32,
    pub allowed_subnets: Vec<String>,
    pub retention_days: f64,
}

/// usage-gate's own webhooks (docs/webhooks.md).
#[derive(Debug, Clone)]
pub struct OutboundWebhookSettings {
    /// The wait before each retry: after the first failed attempt, the first entry, and so on;
    /// when they are spent, the message has failed.
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    /// How often each replica looks for due messages.
    pub poll_interval: Duration,
    /// Attempts under way at once (per replica).
    pub concurrency: usize,
    /// Of those, at most this many to one endpoint (a receiver that hangs holds no more).
    pub max_attempts_per_endpoint: usize,
    /// Where endpoints may point besides public addresses (`webhooks::destination`).
    pub allowed_subnets: Vec<ipnet::IpNet>,
    /// Delivered and failed messages are kept this long (with their attempts), then deleted.
    pub retention: Duration,
}

pub(super) fn validate(v: &mut Validator, raw: &RawOutboundWebhooks) -> OutboundWebhookSettings {
    const DAY_MS: u64 = 86_400_000;
    let schedule = &raw.retry_schedule_ms;
    v.check("outbound_webhooks.retry_schedule_ms", (1..=30).contains(&schedule.len()), || {
        format!("must list 1 to 30 waits (ms), got {}", schedule.len())
    });
    v.check(
        "outbound_webhooks.retry_schedule_ms",
        schedule.iter().all(|ms| (1..=7 * DAY_MS).contains(ms)),
        || "every wait must be 1 ms to 7 days".into(),
    );
    let concurrency = v.range("outbound_webhooks.concurrency", raw.concurrency.into(), 1, 1024) as usize;
    let mut allowed_subnets = Vec::new();
    for (i, cidr) in raw.allowed_subnets.iter().enumerate() {
        match cidr.trim().parse::<ipnet::IpNet>() {
            Ok(net) => allowed_subnets.push(net.trunc()),
            Err(_) => v.problem(
                format!("outbound_webhooks.allowed_subnets[{i}]"),
                format!("must be a subnet in CIDR notation (e.g. 10.0.0.0/8, fd00::/8), got {cidr:?}"),
            ),
        }
    }
    OutboundWebhookSettings {
        retry_schedule: schedule.iter().map(|ms| Duration::from_millis(*ms)).collect(),
        timeout: Duration::from_millis(v.range("outbound_webhooks.timeout_ms", raw.timeout_ms, 1, 60_000)),
        poll_interval: Duration::from_millis(v.range(
            "outbound_webhooks.poll_interval_ms",
            raw.poll_interval_ms,
            10,
            60_000,
        )),
        concurrency,
        max_attempts_per_endpoint: v.range(
            "outbound_webhooks.max_attempts_per_endpoint",
            raw.max_attempts_per_endpoint.into(),
            1,
            concurrency as u64,
        ) as usize,
        allowed_subnets,
        retention: days(v, "outbound_webhooks.retention_days", raw.retention_days),
    }
}
