//! A decision written as JSON by hand, for the check routes.
//!
//! serde_json made the same bytes in 12,500 instructions, a quarter of a warm check's 51,000 and
//! half of what the check costs over a bare actix-web handler (`bench/check_instructions.py`):
//! it escapes every field name and reaches each value through several calls. sonic-rs cut only
//! 2,000 of them; this takes 3,200. Here the names are constants and the values are ids, codes,
//! numbers and times that need no escaping; the rare free text (an unknown customer status, an
//! odd currency) falls back to serde_json. The tests hold it to serde_json's bytes for every
//! shape of decision, so a field added to [`Decision`] fails them until it is written here too.

use uuid::Uuid;

use super::{Decision, Estimate, FeatureView, LimitView, SeatsView};
use crate::domain::Timestamp;
use std::ops::Range;

use crate::domain::Subject;
use crate::judgement::RuleJudged;

impl Decision {
    /// The decision as JSON ([`Decision::write_json`]), in a buffer with room for it: one with
    /// two limits is about 600 bytes, a rule about 200 more, and growing the buffer as it is
    /// written cost 5 rules' check ~400 instructions (`bench/check_instructions.py --rules`).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024 + self.rules.len() * 240);
        self.write_json(&mut out);
        out
    }

    /// The decision as JSON, byte for byte what `serde_json::to_writer` makes of it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"customer_id\":");
        uuid(out, self.customer_id.as_uuid());
        out.extend_from_slice(b",\"allowed\":");
        boolean(out, self.allowed);
        out.extend_from_slice(b",\"status\":");
        known(out, self.status.as_str());
        out.extend_from_slice(b",\"reasons\":[");
        for (i, reason) in self.reasons.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            known(out, reason.code());
        }
        // The decision's `as_of` and its estimate's are the snapshot's one instant: formatted once
        // (a timestamp costs ~250 instructions, `bench/check_instructions.py`).
        let as_of = self.as_of.map(|at| (at, at.rfc3339()));
        out.extend_from_slice(b"],\"estimate\":");
        match &self.estimate {
            Some(estimate) => {
                let formatted = as_of.filter(|(at, _)| *at == estimate.as_of).map(|(_, text)| text);
                write_estimate(out, estimate, formatted)
            }
            None => out.extend_from_slice(b"null"),
        }
        if let Some(cost) = self.cost {
            out.extend_from_slice(b",\"cost\":");
            number(out, cost);
        }
        if let Some(feature) = &self.feature {
            out.extend_from_slice(b",\"feature\":");
            write_feature(out, feature);
        }
        if let Some(seats) = &self.seats {
            out.extend_from_slice(b",\"seats\":");
            write_seats(out, seats);
        }
        if !self.rules.is_empty() {
            // A rule is about 200 bytes: room for them all at once, not a buffer grown twice.
            out.reserve(self.rules.len() * 240);
            out.extend_from_slice(b",\"rules\":[");
            // Where the subject the rules share was written: copied from there, not scanned again.
            let mut subject = None;
            for (i, rule) in self.rules.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_rule(out, rule, &mut subject);
            }
            out.push(b']');
        }
        out.extend_from_slice(b",\"limits\":[");
        for (i, limit) in self.limits.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_limit(out, limit);
        }
        out.extend_from_slice(b"],\"customer_status\":");
        match &self.customer_status {
            Some(status) => string(out, status.as_str()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"fallback\":");
        boolean(out, self.fallback);
        out.extend_from_slice(b",\"source\":");
        known(out, self.source.as_str());
        out.extend_from_slice(b",\"as_of\":");
        match as_of {
            Some((_, text)) => timestamp(out, &text),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"age_ms\":");
        match self.age_ms {
            Some(age) => number(out, age),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(would_block) = self.would_block {
            out.extend_from_slice(b",\"would_block\":");
            boolean(out, would_block);
        }
        if let Some(applied) = &self.applied_override {
            out.extend_from_slice(b",\"override\":");
            // Rare (an operator's override in force), so serde's.
            serde_json::to_writer(&mut *out, applied).expect("an override view serializes");
        }
        out.push(b'}');
    }
}

/// `as_of`: the estimate's `as_of` already formatted, if it is.
fn write_estimate(out: &mut Vec<u8>, estimate: &Estimate, as_of: Option<[u8; 24]>) {
    out.extend_from_slice(b"{\"amount\":");
    number(out, estimate.amount);
    out.extend_from_slice(b",\"currency\":");
    string(out, estimate.currency.as_str());
    out.extend_from_slice(b",\"billabear\":");
    number(out, estimate.billabear);
    out.extend_from_slice(b",\"pending\":");
    number(out, estimate.pending);
    out.extend_from_slice(b",\"pending_events\":");
    number(out, estimate.pending_events);
    out.extend_from_slice(b",\"reserved\":");
    number(out, estimate.reserved);
    out.extend_from_slice(b",\"approximate\":");
    boolean(out, estimate.approximate);
    out.extend_from_slice(b",\"as_of\":");
    timestamp(out, &as_of.unwrap_or_else(|| estimate.as_of.rfc3339()));
    out.push(b'}');
}

fn write_limit(out: &mut Vec<u8>, limit: &LimitView) {
    out.extend_from_slice(b"{\"id\":");
    uuid(out, limit.id.as_uuid());
    out.extend_from_slice(b",\"amount\":");
    number(out, limit.amount);
    out.extend_from_slice(b",\"action\":");
    known(out, limit.action.as_str());
    out.extend_from_slice(b",\"exceeded\":");
    boolean(out, limit.exceeded);
    out.extend_from_slice(b",\"remaining\":");
    number(out, limit.remaining);
    out.push(b'}');
}

fn write_feature(out: &mut Vec<u8>, feature: &FeatureView) {
    out.extend_from_slice(b"{\"code\":");
    string(out, &feature.code);
    out.extend_from_slice(b",\"included\":");
    boolean(out, feature.included);
    for (name, value) in [
        (&b",\"limit\":"[..], feature.limit),
        (b",\"used\":", feature.used),
        (b",\"remaining\":", feature.remaining),
    ] {
        if let Some(value) = value {
            out.extend_from_slice(name);
            number(out, value);
        }
    }
    if let Some(window) = feature.window {
        out.extend_from_slice(b",\"window\":");
        known(out, window);
    }
    if let Some(resets_at) = feature.resets_at {
        out.extend_from_slice(b",\"resets_at\":");
        timestamp(out, &resets_at.rfc3339());
    }
    out.push(b'}');
}

/// Five rules written by serde cost a check 17,300 instructions of its 62,000
/// (`bench/check_instructions.py --rules`); the rule's own members are written once
/// (`Shape::written`).
/// `written`: the subject last written, and where in `out`.
fn write_rule<'a>(
    out: &mut Vec<u8>,
    rule: &'a RuleJudged,
    written: &mut Option<(&'a Subject, Range<usize>)>,
) {
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(rule.rule.id.text());
    out.push(b'"');
    out.extend_from_slice(rule.rule.shape().written().as_bytes());
    number(out, rule.limit);
    out.extend_from_slice(b",\"used\":");
    // A whole number as `whole_when_whole` tells it, without `fract` (a call into libm).
    if rule.used.abs() < 9.0e15 && rule.used as i64 as f64 == rule.used {
        number(out, rule.used as i64);
    } else {
        serde_json::to_writer(&mut *out, &rule.used).expect("a number serializes");
    }
    if let Some(subject) = &rule.subject {
        out.extend_from_slice(b",\"subject\":");
        match written {
            Some((same, at)) if *same == subject => out.extend_from_within(at.clone()),
            _ => {
                let start = out.len();
                string(out, subject.as_str());
                *written = Some((subject, start..out.len()));
            }
        }
    }
    if let Some(resets_at) = rule.resets_at {
        out.extend_from_slice(b",\"resets_at\":");
        write_reset(out, resets_at);
    }
    if let Some(reason) = rule.reason {
        out.extend_from_slice(b",\"reason\":");
        known(out, reason.code());
    }
    out.push(b'}');
}

thread_local! {
    /// The windows' ends this thread formatted last: a window's end is the same for every check
    /// until it passes (formatting one is ~320 instructions, `bench/check_instructions.py --rules`).
    /// Borrowed, not copied out of a `Cell`: copying the four cost ~50 instructions a rule.
    static RESETS: std::cell::RefCell<[(Timestamp, [u8; 24]); 4]> =
        const { std::cell::RefCell::new([(Timestamp(u64::MAX), [0; 24]); 4]) };
}

/// A window's end as RFC 3339 text, quoted.
fn write_reset(out: &mut Vec<u8>, at: Timestamp) {
    RESETS.with_borrow_mut(|kept| {
        if let Some((_, text)) = kept.iter().find(|(t, _)| *t == at) {
            return timestamp(out, text);
        }
        let text = at.rfc3339();
        kept.rotate_right(1);
        kept[0] = (at, text);
        timestamp(out, &text)
    })
}

fn write_seats(out: &mut Vec<u8>, seats: &SeatsView) {
    out.extend_from_slice(b"{\"requested\":");
    number(out, seats.requested);
    out.extend_from_slice(b",\"limit\":");
    match seats.limit {
        Some(limit) => number(out, limit),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// A JSON string. What serde_json escapes is `"`, `\` and control characters below 0x20; text
/// without them is written as it is, anything else through serde_json.
fn string(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text).expect("a string serializes");
    }
}

/// One of usage-gate's own names (a status, reason, source or action: ASCII words that need no
/// escaping, which the tests hold to serde_json's bytes), quoted without being scanned: the scan
/// cost a warm check ~40 instructions a name (`bench/check_instructions.py`).
fn known(out: &mut Vec<u8>, name: &'static str) {
    debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{name}");
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn uuid(out: &mut Vec<u8>, id: Uuid) {
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()).as_bytes());
    out.push(b'"');
}

/// A timestamp's RFC 3339 text (`Timestamp::rfc3339`), quoted.
fn timestamp(out: &mut Vec<u8>, text: &[u8; 24]) {
    out.push(b'"');
    out.extend_from_slice(text);
    out.push(b'"');
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::{
        Currency, CustomerId, CustomerStatus, LimitAction, LimitId, MetricCode, Subject, Timestamp,
    };
    use crate::entitlements::{TimeZone, Window};
    use crate::judgement::rule::{Measure, Mode, Rule, RuleSpec, RuleWindow, Scope};
    use crate::overrides::OverrideView;
    use crate::policy::{Reason, Reasons, Status};
    use crate::snapshot::Source;

    fn limit(amount: i64, action: LimitAction, exceeded: bool) -> LimitView {
        LimitView { id: LimitId::new_v4(), amount, action, exceeded, remaining: if exceeded { 0 } else { 7 } }
    }

    fn estimate(currency: &str) -> Estimate {
        Estimate {
            amount: -12,
            currency: Currency::parse(currency),
            billabear: i64::MAX,
            pending: i64::MIN,
            pending_events: u64::MAX,
            reserved: 0,
            approximate: true,
            as_of: Timestamp(1_800_000_000_123),
        }
    }

    /// Rule views of every shape: each window and measure, whole and fractional use, with and
    /// without a subject (one that needs escaping, one met again), a reset and a reason.
    fn rule_views(n: usize) -> Vec<RuleJudged> {
        let rule = |measure, window, mode| {
            let spec = RuleSpec {
                scope: Scope::All,
                measure,
                limit: 5,
                window,
                mode,
                per_subject: true,
                subject_limits: Default::default(),
                thresholds: vec![80, 100],
            };
            Rule::new(Uuid::new_v4(), &spec)
        };
        let paris = TimeZone("Europe/Paris".parse().unwrap());
        let mut views = vec![
            RuleJudged {
                rule: rule(
                    Measure::Metric(MetricCode::parse("api_calls").unwrap()),
                    RuleWindow::Rolling { seconds: 60 },
                    Mode::Hard,
                ),
                limit: 5,
                used: [2.5, 5.0][n % 2],
                subject: Subject::parse("alice").ok(),
                resets_at: None,
                reason: Some(Reason::RuleLimitExceeded),
            },
            RuleJudged {
                rule: rule(
                    Measure::Cost,
                    RuleWindow::Calendar { unit: Window::Day, zone: paris },
                    Mode::Soft,
                ),
                limit: i64::MAX,
                used: 0.0,
                subject: None,
                resets_at: Some(Timestamp(1_800_000_000_000)),
                reason: None,
            },
            RuleJudged {
                rule: rule(Measure::Cost, RuleWindow::BillingPeriod, Mode::Hard),
                limit: 1,
                used: 1e20,
                subject: Subject::parse("we\\ird\"").ok(),
                resets_at: Some(Timestamp(1_800_000_000_000)),
                reason: Some(Reason::SoftLimitExceeded),
            },
        ];
        // The subject just written (copied from where it was), then another.
        views.extend([views[2].clone(), views[0].clone()]);
        views
    }

    /// Decisions of every shape: each optional field present and absent (`as_of` also equal to the
    /// estimate's), every status, source,
    /// customer status and reason, text that needs escaping, and an override with and without
    /// an amount.
    pub(crate) fn decisions() -> Vec<Decision> {
        let statuses = [
            None,
            Some(CustomerStatus::New),
            Some(CustomerStatus::Active),
            Some(CustomerStatus::Disabled),
            Some(CustomerStatus::Churned),
            Some(CustomerStatus::Reactivated),
            Some(CustomerStatus::TrialActive),
            Some(CustomerStatus::TrialEnded),
            Some(CustomerStatus::Unknown),
            Some(CustomerStatus::Other("paused".into())),
            Some(CustomerStatus::Other("we\"ird\\ \n\u{1f} é".into())),
        ];
        let overrides = [
            None,
            Some(OverrideView {
                id: Uuid::new_v4(),
                effect: "raise",
                amount: Some(5000),
                expires_at: Timestamp(1_800_000_000_000),
            }),
            Some(OverrideView {
                id: Uuid::new_v4(),
                effect: "allow",
                amount: None,
                expires_at: Timestamp(0),
            }),
        ];
        let reasons = [Reasons::default(), Reasons::from([Reason::NearLimit]), {
            let mut all = Reasons::default();
            Reason::ALL.into_iter().for_each(|r| all.insert(r));
            all
        }];
        let mut out = Vec::new();
        for (i, customer_status) in statuses.into_iter().enumerate() {
            for (j, applied_override) in overrides.iter().enumerate() {
                let n = i * overrides.len() + j;
                out.push(Decision {
                    customer_id: CustomerId::new_v4(),
                    allowed: n.is_multiple_of(2),
                    status: Status::ALL[n % 4],
                    reasons: reasons[n % 3],
                    estimate: [None, Some(estimate("EUR")), Some(estimate("")), Some(estimate("a\"b"))]
                        [n % 4],
                    cost: [None, Some(0), Some(i64::MAX)][n % 3],
                    rules: match n % 3 {
                        0 => vec![],
                        _ => rule_views(n),
                    },
                    feature: [
                        None,
                        Some(Box::new(FeatureView {
                            code: "projects".into(),
                            included: true,
                            limit: Some(25),
                            used: Some(30),
                            remaining: Some(0),
                            window: None,
                            resets_at: None,
                        })),
                        Some(Box::new(FeatureView {
                            code: "api_calls".into(),
                            included: true,
                            limit: Some(10_000),
                            used: Some(12),
                            remaining: Some(9_988),
                            window: Some("billing_period"),
                            resets_at: Some(Timestamp(1_800_000_000_000)),
                        })),
                        Some(Box::new(FeatureView {
                            code: "s\"s\\o\u{1}".into(),
                            included: false,
                            limit: None,
                            used: None,
                            remaining: None,
                            window: None,
                            resets_at: None,
                        })),
                        Some(Box::new(FeatureView {
                            code: "sso".into(),
                            included: true,
                            limit: Some(u64::MAX),
                            used: None,
                            remaining: None,
                            window: None,
                            resets_at: None,
                        })),
                    ][n % 5]
                        .clone(),
                    seats: [
                        None,
                        Some(Box::new(SeatsView { requested: 3, limit: None })),
                        Some(Box::new(SeatsView { requested: u64::MAX, limit: Some(10) })),
                    ][(n / 2) % 3]
                        .clone(),
                    limits: [
                        vec![],
                        vec![limit(100, LimitAction::Warning, true)],
                        vec![
                            limit(100, LimitAction::Warning, true),
                            limit(i64::MAX, LimitAction::Disable, false),
                        ],
                    ][n % 3]
                        .clone(),
                    customer_status: customer_status.clone(),
                    fallback: n % 3 == 1,
                    source: [Source::Cache, Source::Upstream, Source::Stale, Source::Fallback][n % 4],
                    // Another instant than the estimate's, and the estimate's own (as a check's is).
                    as_of: [None, Some(Timestamp(1_800_000_000_000)), Some(Timestamp(1_800_000_000_123))]
                        [n % 3],
                    age_ms: [None, Some(0), Some(u64::MAX)][n % 3],
                    would_block: [None, Some(true), Some(false)][(n / 3) % 3],
                    applied_override: *applied_override,
                });
            }
        }
        out
    }

    #[test]
    fn a_decision_is_written_exactly_as_serde_json_writes_it() {
        for decision in decisions() {
            let mut ours = Vec::new();
            decision.write_json(&mut ours);
            let serde = serde_json::to_vec(&decision).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(serde).unwrap());
        }
    }
}
