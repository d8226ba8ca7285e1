//! usage-gate's own outbound webhooks (docs/webhooks.md): signed by the Standard
//! Webhooks spec, queued in Postgres in the transaction that makes the change they tell of,
//! and delivered at least once, with retries, by every replica (`delivery`).
//!
//! This module holds the pure parts: event types, which type a decision transition is, secrets,
//! signatures and the retry schedule. `store` is the endpoints and messages in Postgres,
//! `endpoints` the service operators reach them through.

pub mod delivery;
pub mod destination;
pub mod endpoints;
pub mod store;

use std::time::Duration;

use base64::Engine;

use crate::policy::{Reason, Reasons, Status};

/// What a message tells of. The names are part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A customer's status became `warning` only by nearing its lowest DISABLE limit.
    NearLimit,
    /// A customer's status became `warning` over a WARNING limit (or let through by an override).
    Warning,
    /// A customer's status became `blocked`.
    Blocked,
    /// A customer's status went back to `ok`.
    Recovered,
    /// An override reached its `expires_at`.
    OverrideExpired,
    /// An event in the outbox became dead (BillaBear refused it, or its retries ran out).
    EventDead,
    /// A feature limit usage-gate counts was reached in its window (once per window).
    FeatureLimitReached,
    /// The window of a feature limit that was reached ended: the count restarted.
    FeatureLimitReset,
    /// A rule's usage crossed one of its thresholds (once per rule, customer, subject, window
    /// and threshold).
    LimitThresholdCrossed,
    /// The window of a rule that crossed a threshold ended.
    LimitWindowReset,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::NearLimit,
        EventType::Warning,
        EventType::Blocked,
        EventType::Recovered,
        EventType::OverrideExpired,
        EventType::EventDead,
        EventType::FeatureLimitReached,
        EventType::FeatureLimitReset,
        EventType::LimitThresholdCrossed,
        EventType::LimitWindowReset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::NearLimit => "customer.usage.near_limit",
            EventType::Warning => "customer.usage.warning",
            EventType::Blocked => "customer.usage.blocked",
            EventType::Recovered => "customer.usage.recovered",
            EventType::OverrideExpired => "customer.override.expired",
            EventType::EventDead => "event.dead",
            EventType::FeatureLimitReached => "feature_limit.reached",
            EventType::FeatureLimitReset => "feature_limit.reset",
            EventType::LimitThresholdCrossed => "limit.threshold_crossed",
            EventType::LimitWindowReset => "limit.window_reset",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The type of a transition to `status` (decided with `reasons`); None for `unknown`,
    /// which is not a decision about usage.
    pub fn of_transition(status: Status, reasons: Reasons) -> Option<Self> {
        match status {
            Status::Ok => Some(EventType::Recovered),
            Status::Blocked => Some(EventType::Blocked),
            Status::Warning
                if reasons.contains(Reason::NearLimit) && !reasons.contains(Reason::WarningLimitExceeded) =>
            {
                Some(EventType::NearLimit)
            }
            Status::Warning => Some(EventType::Warning),
            Status::Unknown => None,
        }
    }
}

/// How many endpoints are enabled and how many disabled (for `/metrics`).
#[derive(Debug, Clone, Copy)]
pub struct EndpointCounts {
    pub enabled: i64,
    pub disabled: i64,
}

/// A new endpoint, parsed from the API's body.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Option<Vec<EventType>>,
    pub description: Option<String>,
}

/// A new signing secret: `whsec_` and the base64 of 32 bytes from the operating system's
/// random source (which can fail only if the system has none to give).
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)?;
    Ok(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key)))
}

/// The `webhook-signature` header: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` for
/// each secret, space-separated (two during a rotation). A secret that is not `whsec_<base64>`
/// signs nothing (usage-gate makes every secret, so that is a defect, logged).
pub fn signature(message_id: &str, timestamp: i64, body: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter_map(|secret| {
            let signed = standardwebhooks::Webhook::new(secret)
                .and_then(|webhook| webhook.sign(message_id, timestamp, body.as_bytes()));
            signed.map_err(|e| tracing::error!(message_id, error = %e, "webhooks: cannot sign")).ok()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What became of one attempt, from the receiver's status (None: no answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted {
    Delivered,
    /// 410 Gone: the receiver asks for nothing more; the endpoint is disabled.
    Gone,
    /// Anything else: tried again on the schedule.
    Failed,
}

pub fn attempted(status: Option<u16>) -> Attempted {
    match status {
        Some(200..=299) => Attempted::Delivered,
        Some(410) => Attempted::Gone,
        _ => Attempted::Failed,
    }
}

/// After `attempts` failed attempts, how long until the next (None: the schedule is spent and
/// the message has failed).
pub fn retry_after(attempts: u32, schedule: &[Duration]) -> Option<Duration> {
    attempts.checked_sub(1).and_then(|i| schedule.get(i as usize)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transition_is_typed_by_its_new_status_and_why() {
        let of = |status, reasons: &[Reason]| {
            let mut set = Reasons::default();
            reasons.iter().for_each(|r| set.insert(*r));
            EventType::of_transition(status, set).map(EventType::as_str)
        };
        assert_eq!(of(Status::Blocked, &[Reason::DisableLimitExceeded]), Some("customer.usage.blocked"));
        assert_eq!(of(Status::Ok, &[]), Some("customer.usage.recovered"));
        assert_eq!(of(Status::Warning, &[Reason::NearLimit]), Some("customer.usage.near_limit"));
        assert_eq!(
            of(Status::Warning, &[Reason::WarningLimitExceeded, Reason::NearLimit]),
            Some("customer.usage.warning")
        );
        assert_eq!(
            of(Status::Warning, &[Reason::DisableLimitExceeded, Reason::OverrideAllow]),
            Some("customer.usage.warning")
        );
        assert_eq!(of(Status::Unknown, &[Reason::CustomerNotFound]), None);
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("customer.usage"), None);
    }

    #[test]
    fn secrets_are_whsec_and_32_random_bytes() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        let key =
            base64::engine::general_purpose::STANDARD.decode(a.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(key.len(), 32);
    }

    #[test]
    fn the_signature_is_the_standard_webhooks_one_for_each_secret() {
        // The Standard Webhooks reference vector.
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let body = r#"{"email":"test@example.com","username":"test_user"}"#;
        let expected = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        assert_eq!(signature("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body, &[secret]), expected);
        let other = new_secret().unwrap();
        let both = signature("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body, &[&other, secret]);
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!((parts.len(), parts[1]), (2, expected));
    }

    #[test]
    fn attempts_follow_the_schedule_then_fail() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        assert_eq!(retry_after(1, &schedule), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(2, &schedule), Some(Duration::from_secs(300)));
        assert_eq!(retry_after(3, &schedule), None);
        assert_eq!(
            [Some(204), Some(299), Some(410), Some(500), Some(301), None].map(attempted),
            [
                Attempted::Delivered,
                Attempted::Delivered,
                Attempted::Gone,
                Attempted::Failed,
                Attempted::Failed,
                Attempted::Failed
            ]
        );
    }
}
