//! The `[retention]` section and its `validate`.

use super::*;

/// How long rows no other chore removes are kept (`retention`); 0 days keeps every row.
/// Webhook messages, console sessions and usage samples are kept by their own sections'
/// windows (`outbound_webhooks.retention_days`, `console.session_idle_minutes`,
/// `console.history_days`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// How often a replica prunes (one at a time).
    #[serde(rename = "interval_s", with = "secs")]
    pub interval: Duration,
    /// Whether the pruning replica then vacuums usage-gate's churning tables.
    pub vacuum: bool,
    /// Closed holds, after they closed.
    #[serde(rename = "reservations_days")]
    pub reservations: Days,
    /// Ended (or expired) overrides, after they ended.
    #[serde(rename = "overrides_days")]
    pub overrides: Days,
    /// BillaBear's counter of a subscription, after it was last seen.
    #[serde(rename = "billabear_counters_days")]
    pub billabear_counters: Days,
    /// A customer's last decision, after the customer was last seen.
    #[serde(rename = "customer_decisions_days")]
    pub customer_decisions: Days,
    /// Audit records (by default kept).
    #[serde(rename = "audit_days")]
    pub audit: Days,
}

embedded_default!(RetentionSettings, "retention");

impl RetentionSettings {
    pub(super) fn validate(&self, v: &mut Validator) {
        for (key, days) in [
            ("retention.reservations_days", self.reservations),
            ("retention.overrides_days", self.overrides),
            ("retention.billabear_counters_days", self.billabear_counters),
            ("retention.customer_decisions_days", self.customer_decisions),
            ("retention.audit_days", self.audit),
        ] {
            window(v, key, days, true);
        }
        v.range("retention.interval_s", self.interval.as_secs(), 1, 86_400);
    }
}
