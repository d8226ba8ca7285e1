//! The `[outbound_webhooks]` section and its `validate`.

use super::*;

/// usage-gate's own webhooks (docs/webhooks.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundWebhookSettings {
    /// The wait before each retry, in ms: after the first failed attempt, the first entry, and so
    /// on; when they are spent, the message has failed ([`Self::retry_schedule`]).
    pub retry_schedule_ms: Vec<u64>,
    #[serde(rename = "timeout_ms", with = "ms")]
    pub timeout: Duration,
    /// How often each replica looks for due messages.
    #[serde(rename = "poll_interval_ms", with = "ms")]
    pub poll_interval: Duration,
    /// Attempts under way at once (per replica).
    pub concurrency: usize,
    /// Of those, at most this many to one endpoint (a receiver that hangs holds no more).
    pub max_attempts_per_endpoint: usize,
    /// Where endpoints may point besides public addresses (`webhooks::destination`).
    pub allowed_subnets: Vec<Parsed<ipnet::IpNet>>,
    /// Delivered and failed messages are kept this long (with their attempts), then deleted.
    #[serde(rename = "retention_days")]
    pub retention: Days,
}

embedded_default!(OutboundWebhookSettings, "outbound_webhooks");

impl FromText for ipnet::IpNet {
    fn from_text(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<ipnet::IpNet>()
            .map(|net| net.trunc())
            .map_err(|_| format!("must be a subnet in CIDR notation (e.g. 10.0.0.0/8, fd00::/8), got {s:?}"))
    }
    fn stand_in() -> Self {
        ipnet::IpNet::default()
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
}

impl OutboundWebhookSettings {
    pub fn retry_schedule(&self) -> Vec<Duration> {
        self.retry_schedule_ms.iter().map(|ms| Duration::from_millis(*ms)).collect()
    }

    pub fn allowed_subnets(&self) -> Vec<ipnet::IpNet> {
        self.allowed_subnets.iter().map(|net| **net).collect()
    }

    pub(super) fn validate(&self, v: &mut Validator) {
        const DAY_MS: u64 = 86_400_000;
        let schedule = &self.retry_schedule_ms;
        v.check("outbound_webhooks.retry_schedule_ms", (1..=30).contains(&schedule.len()), || {
            format!("must list 1 to 30 waits (ms), got {}", schedule.len())
        });
        v.check(
            "outbound_webhooks.retry_schedule_ms",
            schedule.iter().all(|ms| (1..=7 * DAY_MS).contains(ms)),
            || "every wait must be 1 ms to 7 days".into(),
        );
        let concurrency = v.range("outbound_webhooks.concurrency", self.concurrency as u64, 1, 1024);
        for (i, net) in self.allowed_subnets.iter().enumerate() {
            v.parsed(&format!("outbound_webhooks.allowed_subnets[{i}]"), net);
        }
        v.range_ms("outbound_webhooks.timeout_ms", self.timeout, 1, 60_000);
        v.range_ms("outbound_webhooks.poll_interval_ms", self.poll_interval, 10, 60_000);
        v.range(
            "outbound_webhooks.max_attempts_per_endpoint",
            self.max_attempts_per_endpoint as u64,
            1,
            concurrency,
        );
        days(v, "outbound_webhooks.retention_days", self.retention);
    }
}
