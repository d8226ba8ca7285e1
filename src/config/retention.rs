//! The `[retention]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub interval_s: u64,
    pub vacuum: bool,
    pub reservations_days: f64,
    pub overrides_days: f64,
    pub billabear_counters_days: f64,
    pub customer_decisions_days: f64,
    pub audit_days: f64,
}

/// How long rows no other chore removes are kept (`retention`); None keeps every row.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// How often a replica prunes (one at a time).
    pub interval: Duration,
    /// Whether the pruning replica then vacuums usage-gate's churning tables.
    pub vacuum: bool,
    /// Closed holds, after they closed.
    pub reservations: Option<Duration>,
    /// Ended (or expired) overrides, after they ended.
    pub overrides: Option<Duration>,
    /// BillaBear's counter of a subscription, after it was last seen.
    pub billabear_counters: Option<Duration>,
    /// A customer's last decision, after the customer was last seen.
    pub customer_decisions: Option<Duration>,
    /// Audit records (by default kept).
    pub audit: Option<Duration>,
    /// Webhook messages delivered or failed (`outbound_webhooks.retention_days`), idle console
    /// sessions (`console.session_idle_minutes`) and usage samples (`console.history_days`).
    pub webhook_messages: Option<Duration>,
    pub console_sessions: Option<Duration>,
    pub usage_samples: Option<Duration>,
}

pub(super) fn validate(v: &mut Validator, raw: &RawRetention) -> RetentionSettings {
    let mut window = |key: &str, days: f64| window(v, key, days, true);
    RetentionSettings {
        reservations: window("retention.reservations_days", raw.reservations_days),
        overrides: window("retention.overrides_days", raw.overrides_days),
        billabear_counters: window("retention.billabear_counters_days", raw.billabear_counters_days),
        customer_decisions: window("retention.customer_decisions_days", raw.customer_decisions_days),
        audit: window("retention.audit_days", raw.audit_days),
        // Set in `validate` from their own sections.
        webhook_messages: None,
        console_sessions: None,
        usage_samples: None,
        interval: Duration::from_secs(v.range("retention.interval_s", raw.interval_s, 1, 86_400)),
        vacuum: raw.vacuum,
    }
}
