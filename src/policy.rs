//! The decision: pure functions of what is known about a customer, the cost asked about and the
//! policy settings. No I/O; `routes::check` turns a [`Verdict`] into the HTTP answer.
//!
//! The rules follow BillaBear's own: a limit is over when the estimate is *strictly greater*
//! than its amount (an estimate equal to a limit is not over it).

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

use crate::domain::{LimitAction, LimitId, Parsed};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Everyone is allowed; `would_block` tells what enforcing would have done.
    Shadow,
}

/// What to answer when BillaBear cannot be reached and nothing usable is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownCustomer {
    Deny,
    Allow,
}

// How the policy's words are written (in `[policy]`).
crate::written_as!(Mode { "enforce" => Enforce, "shadow" => Shadow });
crate::written_as!(FailMode { "open" => Open, "closed" => Closed });
crate::written_as!(UnknownCustomer { "deny" => Deny, "allow" => Allow });

/// The `[policy]` section (its words and checks: `config::policy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub mode: Parsed<Mode>,
    pub fail_mode: Parsed<FailMode>,
    pub unknown_customer: Parsed<UnknownCustomer>,
    /// `near_limit` from this share of the lowest DISABLE limit.
    pub near_limit_ratio: f64,
}

/// The same as `config/default.toml`'s (a config test holds them together).
impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce.into(),
            fail_mode: FailMode::Open.into(),
            unknown_customer: UnknownCustomer::Deny.into(),
            near_limit_ratio: 0.9,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Allowed, nothing to say.
    Ok,
    /// Allowed, but over a WARNING limit or near a DISABLE limit: worth telling the customer.
    Warning,
    /// Denied (in enforce mode).
    Blocked,
    /// BillaBear does not know the customer, or could not be asked.
    Unknown,
}

impl Status {
    pub const ALL: [Status; 4] = [Status::Ok, Status::Warning, Status::Blocked, Status::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Blocked => "blocked",
            Status::Unknown => "unknown",
        }
    }
}

/// Why a decision is what it is. The codes are part of the API and do not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// BillaBear's customer status is `disabled`.
    CustomerDisabled,
    /// The estimate is strictly greater than a DISABLE limit.
    DisableLimitExceeded,
    /// The estimate plus the requested `cost` would be strictly greater than a DISABLE limit.
    WouldExceedDisableLimit,
    /// The estimate is strictly greater than a WARNING limit.
    WarningLimitExceeded,
    /// The estimate has reached `policy.near_limit_ratio` of the lowest DISABLE limit.
    NearLimit,
    /// BillaBear answered 404 for the customer.
    CustomerNotFound,
    /// BillaBear could not be reached and nothing usable was cached.
    UpstreamUnavailable,
    /// Nothing usable was cached and usage-gate's own bound on calls to BillaBear
    /// (`cache.max_concurrent_fetches`, `cache.cold_fetches_per_second`) was reached.
    UpstreamBudgetExhausted,
    /// A DISABLE limit is exceeded only with what BillaBear has not counted yet: pending usage
    /// or open holds (its own estimate is not over the limit; the projected estimate is).
    PendingUsageExceedsLimit,
    /// An operator's `allow` override lets the customer through.
    OverrideAllow,
    /// An operator's `block` override stops the customer.
    OverrideBlock,
    /// An operator's `raise` override sets the DISABLE threshold judged.
    OverrideRaise,
    /// The feature asked about is not in the customer's plan (`entitlements`).
    FeatureNotInPlan,
    /// The feature's limit would be passed: what is in use plus the quantity asked for.
    FeatureLimitReached,
    /// More seats asked for than the plan's user count.
    SeatsExceeded,
    /// A hard rule of usage-gate's own has reached its limit in its window.
    RuleLimitExceeded,
    /// What is asked would take a hard rule of usage-gate's own past its limit.
    WouldExceedRuleLimit,
    /// A soft rule of usage-gate's own is at or past its limit: allowed, with status `warning`.
    SoftLimitExceeded,
}

impl Reason {
    pub const ALL: [Reason; 18] = [
        Reason::CustomerDisabled,
        Reason::DisableLimitExceeded,
        Reason::WouldExceedDisableLimit,
        Reason::WarningLimitExceeded,
        Reason::NearLimit,
        Reason::CustomerNotFound,
        Reason::UpstreamUnavailable,
        Reason::UpstreamBudgetExhausted,
        Reason::PendingUsageExceedsLimit,
        Reason::OverrideAllow,
        Reason::OverrideBlock,
        Reason::OverrideRaise,
        Reason::FeatureNotInPlan,
        Reason::FeatureLimitReached,
        Reason::SeatsExceeded,
        Reason::RuleLimitExceeded,
        Reason::WouldExceedRuleLimit,
        Reason::SoftLimitExceeded,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::CustomerDisabled => "customer_disabled",
            Reason::DisableLimitExceeded => "disable_limit_exceeded",
            Reason::WouldExceedDisableLimit => "would_exceed_disable_limit",
            Reason::WarningLimitExceeded => "warning_limit_exceeded",
            Reason::NearLimit => "near_limit",
            Reason::CustomerNotFound => "customer_not_found",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamBudgetExhausted => "upstream_budget_exhausted",
            Reason::PendingUsageExceedsLimit => "pending_usage_exceeds_limit",
            Reason::OverrideAllow => "override_allow",
            Reason::OverrideBlock => "override_block",
            Reason::OverrideRaise => "override_raise",
            Reason::FeatureNotInPlan => "feature_not_in_plan",
            Reason::FeatureLimitReached => "feature_limit_reached",
            Reason::SeatsExceeded => "seats_exceeded",
            Reason::RuleLimitExceeded => "rule_limit_exceeded",
            Reason::WouldExceedRuleLimit => "would_exceed_rule_limit",
            Reason::SoftLimitExceeded => "soft_limit_exceeded",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u8)
    }

    fn blocks(self) -> bool {
        matches!(
            self,
            Reason::CustomerDisabled
                | Reason::DisableLimitExceeded
                | Reason::WouldExceedDisableLimit
                | Reason::FeatureNotInPlan
                | Reason::FeatureLimitReached
                | Reason::SeatsExceeded
                | Reason::RuleLimitExceeded
                | Reason::WouldExceedRuleLimit
        )
    }
}

/// What an operator's override does to a decision while it lasts (`overrides`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Allowed whatever the usage says.
    Allow,
    /// Denied whatever the usage says.
    Block,
    /// Every DISABLE limit judged at this amount instead (minor units); BillaBear's own
    /// `disabled` status still blocks.
    Raise(i64),
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Block => "block",
            Effect::Raise(_) => "raise",
        }
    }

    fn reason(self) -> Reason {
        match self {
            Effect::Allow => Reason::OverrideAllow,
            Effect::Block => Reason::OverrideBlock,
            Effect::Raise(_) => Reason::OverrideRaise,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A small set of reasons, in the order of [`Reason::ALL`]; serialized as a list of codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reasons(u32);

impl Reasons {
    pub fn insert(&mut self, reason: Reason) {
        self.0 |= reason.bit();
    }

    pub fn contains(self, reason: Reason) -> bool {
        self.0 & reason.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Reason> {
        Reason::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl<const N: usize> From<[Reason; N]> for Reasons {
    fn from(reasons: [Reason; N]) -> Self {
        let mut set = Reasons::default();
        reasons.into_iter().for_each(|r| set.insert(r));
        set
    }
}

impl Serialize for Reasons {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Reason::code))
    }
}

/// A usage limit as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub id: LimitId,
    /// Minor units.
    pub amount: i64,
    pub action: LimitAction,
}

impl Limit {
    /// BillaBear's rule: over only when strictly greater.
    pub fn exceeded_by(&self, estimate: i64) -> bool {
        estimate > self.amount
    }

    /// How much more can be spent before the limit is exceeded (never negative).
    pub fn remaining(&self, estimate: i64) -> i64 {
        self.amount.saturating_sub(estimate).max(0)
    }
}

/// What is known about a customer that BillaBear answered for.
#[derive(Debug, Clone, Copy)]
pub struct Usage<'a> {
    pub disabled: bool,
    /// The projected estimate every rule judges: BillaBear's plus the pending usage (minor units).
    pub estimate: i64,
    /// BillaBear's own estimate alone: tells a block by pending usage apart.
    pub counted: i64,
    pub limits: &'a [Limit],
    /// What the other kinds of limit refused (`judgement::KINDS`: the plan's features and
    /// seats, ...); empty when they allow it.
    pub others: Reasons,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub status: Status,
    pub reasons: Reasons,
    /// Shadow mode only: whether enforcing would have denied.
    pub would_block: Option<bool>,
}

/// The amount of the lowest DISABLE limit among `limits` (amount, action): the one that blocks
/// first.
pub fn lowest_disable_limit(limits: impl IntoIterator<Item = (i64, LimitAction)>) -> Option<i64> {
    limits.into_iter().filter(|(_, action)| *action == LimitAction::Disable).map(|(amount, _)| amount).min()
}

/// How far `estimate` has come towards `limit`, in steps of 5% (0 below 5%, 20 at the limit),
/// at most 40 (twice it); none without a limit. A customer's observation is recorded each time
/// its band (or status) changes, so its usage plot gets a point every 5% of the way without a
/// write per event.
pub fn band(estimate: i64, limit: Option<i64>) -> Option<u8> {
    let limit = limit.filter(|l| *l > 0)?;
    Some((i128::from(estimate.max(0)) * 20 / i128::from(limit)).min(40) as u8)
}

/// The decision for a known customer; `cost` (minor units, not negative) asks whether that much
/// more may be spent.
pub fn decide(usage: &Usage<'_>, cost: Option<i64>, settings: &PolicySettings) -> Verdict {
    decide_with(usage, cost, None, settings)
}

/// [`decide`] under an operator's override, if one is active.
pub fn decide_with(
    usage: &Usage<'_>,
    cost: Option<i64>,
    effect: Option<Effect>,
    settings: &PolicySettings,
) -> Verdict {
    let truth = judge(usage, cost, settings);
    let raised = match effect {
        Some(Effect::Raise(amount)) => {
            let limits: Vec<Limit> = usage
                .limits
                .iter()
                .filter(|l| l.action != LimitAction::Disable)
                .copied()
                .chain([Limit { id: LimitId::from(uuid::Uuid::nil()), amount, action: LimitAction::Disable }])
                .collect();
            Some(judge(&Usage { limits: &limits, ..*usage }, cost, settings))
        }
        _ => None,
    };
    settle(truth, effect, raised, settings)
}

/// A decision before the mode and any override are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Raw {
    allowed: bool,
    status: Status,
    reasons: Reasons,
}

fn judge(usage: &Usage<'_>, cost: Option<i64>, settings: &PolicySettings) -> Raw {
    let mut reasons = usage.others;
    if usage.disabled {
        reasons.insert(Reason::CustomerDisabled);
    }
    let disable_limits = || usage.limits.iter().filter(|l| l.action == LimitAction::Disable);
    let warning_limits = || usage.limits.iter().filter(|l| l.action == LimitAction::Warning);
    if disable_limits().any(|l| l.exceeded_by(usage.estimate)) {
        reasons.insert(Reason::DisableLimitExceeded);
        if !disable_limits().any(|l| l.exceeded_by(usage.counted)) {
            reasons.insert(Reason::PendingUsageExceedsLimit);
        }
    } else if let Some(cost) = cost.filter(|c| *c > 0)
        && disable_limits().any(|l| l.exceeded_by(usage.estimate.saturating_add(cost)))
    {
        reasons.insert(Reason::WouldExceedDisableLimit);
    }
    if warning_limits().any(|l| l.exceeded_by(usage.estimate)) {
        reasons.insert(Reason::WarningLimitExceeded);
    }
    if !reasons.contains(Reason::DisableLimitExceeded)
        && let Some(lowest) = lowest_disable_limit(usage.limits.iter().map(|l| (l.amount, l.action)))
        && usage.estimate as f64 >= settings.near_limit_ratio * lowest as f64
    {
        reasons.insert(Reason::NearLimit);
    }
    let status = if reasons.iter().any(Reason::blocks) {
        Status::Blocked
    } else if [Reason::WarningLimitExceeded, Reason::NearLimit, Reason::SoftLimitExceeded]
        .iter()
        .any(|r| reasons.contains(*r))
    {
        Status::Warning
    } else {
        Status::Ok
    };
    Raw { allowed: status != Status::Blocked, status, reasons }
}

/// BillaBear answered 404 for the customer.
pub fn unknown_customer(effect: Option<Effect>, settings: &PolicySettings) -> Verdict {
    let allowed = *settings.unknown_customer == UnknownCustomer::Allow;
    let truth = Raw { allowed, status: Status::Unknown, reasons: [Reason::CustomerNotFound].into() };
    settle(truth, effect, None, settings)
}

/// BillaBear unreachable (or not asked, `why` says) and nothing usable cached.
pub fn upstream_unavailable(why: Reason, effect: Option<Effect>, settings: &PolicySettings) -> Verdict {
    let allowed = *settings.fail_mode == FailMode::Open;
    settle(Raw { allowed, status: Status::Unknown, reasons: [why].into() }, effect, None, settings)
}

/// Applies an override, then the mode. Under an override, `would_block` tells what the decision
/// would have been without it (as shadow mode tells what enforcing would have done). `allow`
/// turns a block into `warning` (allowed, worth telling); `raise` is `raised`, the decision on
/// the raised threshold (no limits to raise when the usage is unknown: the truth stands).
fn settle(truth: Raw, effect: Option<Effect>, raised: Option<Raw>, settings: &PolicySettings) -> Verdict {
    let Some(effect) = effect else {
        return apply_mode(truth.allowed, truth.status, truth.reasons, settings);
    };
    let mut applied = match effect {
        Effect::Allow => Raw {
            allowed: true,
            status: if truth.status == Status::Blocked { Status::Warning } else { truth.status },
            reasons: truth.reasons,
        },
        Effect::Block => Raw { allowed: false, status: Status::Blocked, reasons: truth.reasons },
        Effect::Raise(_) => raised.unwrap_or(truth),
    };
    applied.reasons.insert(effect.reason());
    let verdict = apply_mode(applied.allowed, applied.status, applied.reasons, settings);
    Verdict { would_block: Some(!truth.allowed), ..verdict }
}

fn apply_mode(allowed: bool, status: Status, reasons: Reasons, settings: &PolicySettings) -> Verdict {
    match *settings.mode {
        Mode::Enforce => Verdict { allowed, status, reasons, would_block: None },
        Mode::Shadow => Verdict { allowed: true, status, reasons, would_block: Some(!allowed) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_band_is_five_percent_of_the_lowest_disable_limit_up_to_twice_it() {
        assert_eq!(band(0, Some(1000)), Some(0));
        assert_eq!(band(49, Some(1000)), Some(0));
        assert_eq!(band(50, Some(1000)), Some(1));
        assert_eq!(band(1000, Some(1000)), Some(20));
        assert_eq!(band(1001, Some(1000)), Some(20), "just over is still the limit's band");
        assert_eq!(band(i64::MAX, Some(1)), Some(40));
        assert_eq!(band(-5, Some(1000)), Some(0), "a credit is no usage");
        assert_eq!(band(500, None), None);
        assert_eq!(band(500, Some(0)), None, "a zero limit has no bands");
    }
    use LimitAction::{Disable, Warning};
    use Reason::*;

    fn limits(spec: &[(i64, LimitAction)]) -> Vec<Limit> {
        spec.iter().map(|&(amount, action)| Limit { id: LimitId::new_v4(), amount, action }).collect()
    }

    struct Row {
        name: &'static str,
        disabled: bool,
        estimate: i64,
        limits: &'static [(i64, LimitAction)],
        cost: Option<i64>,
        allowed: bool,
        status: Status,
        reasons: &'static [Reason],
    }

    #[rustfmt::skip]
    const ROWS: &[Row] = &[
        Row { name: "no limits", disabled: false, estimate: 500, limits: &[], cost: None, allowed: true, status: Status::Ok, reasons: &[] },
        Row { name: "under disable", disabled: false, estimate: 100, limits: &[(1000, Disable)], cost: None, allowed: true, status: Status::Ok, reasons: &[] },
        Row { name: "equal to disable is not over", disabled: false, estimate: 1000, limits: &[(1000, Disable)], cost: None, allowed: true, status: Status::Warning, reasons: &[NearLimit] },
        Row { name: "one over disable", disabled: false, estimate: 1001, limits: &[(1000, Disable)], cost: None, allowed: false, status: Status::Blocked, reasons: &[DisableLimitExceeded] },
        Row { name: "disabled customer without limits", disabled: true, estimate: 0, limits: &[], cost: None, allowed: false, status: Status::Blocked, reasons: &[CustomerDisabled] },
        Row { name: "disabled and over", disabled: true, estimate: 2000, limits: &[(1000, Disable)], cost: None, allowed: false, status: Status::Blocked, reasons: &[CustomerDisabled, DisableLimitExceeded] },
        Row { name: "equal to warning is not over", disabled: false, estimate: 500, limits: &[(500, Warning)], cost: None, allowed: true, status: Status::Ok, reasons: &[] },
        Row { name: "over warning", disabled: false, estimate: 501, limits: &[(500, Warning)], cost: None, allowed: true, status: Status::Warning, reasons: &[WarningLimitExceeded] },
        Row { name: "over warning and disable", disabled: false, estimate: 2000, limits: &[(500, Warning), (1000, Disable)], cost: None, allowed: false, status: Status::Blocked, reasons: &[DisableLimitExceeded, WarningLimitExceeded] },
        Row { name: "cost up to the limit fits", disabled: false, estimate: 900, limits: &[(1000, Disable)], cost: Some(100), allowed: true, status: Status::Warning, reasons: &[NearLimit] },
        Row { name: "cost one past the limit", disabled: false, estimate: 900, limits: &[(1000, Disable)], cost: Some(101), allowed: false, status: Status::Blocked, reasons: &[WouldExceedDisableLimit, NearLimit] },
        Row { name: "cost zero is no cost", disabled: false, estimate: 10, limits: &[(1000, Disable)], cost: Some(0), allowed: true, status: Status::Ok, reasons: &[] },
        Row { name: "already over: no would_exceed", disabled: false, estimate: 1500, limits: &[(1000, Disable)], cost: Some(5), allowed: false, status: Status::Blocked, reasons: &[DisableLimitExceeded] },
        Row { name: "huge cost does not overflow", disabled: false, estimate: 10, limits: &[(1000, Disable)], cost: Some(i64::MAX), allowed: false, status: Status::Blocked, reasons: &[WouldExceedDisableLimit] },
        Row { name: "cost against a warning limit only", disabled: false, estimate: 10, limits: &[(20, Warning)], cost: Some(100), allowed: true, status: Status::Ok, reasons: &[] },
        Row { name: "near: at 90% of lowest disable", disabled: false, estimate: 900, limits: &[(1000, Disable), (5000, Disable)], cost: None, allowed: true, status: Status::Warning, reasons: &[NearLimit] },
        Row { name: "just under 90%", disabled: false, estimate: 899, limits: &[(1000, Disable)], cost: None, allowed: true, status: Status::Ok, reasons: &[] },
        Row { name: "near ignores warning limits", disabled: false, estimate: 95, limits: &[(100, Warning)], cost: None, allowed: true, status: Status::Ok, reasons: &[] },
        Row { name: "over the lower of two disables", disabled: false, estimate: 1200, limits: &[(1000, Disable), (5000, Disable)], cost: None, allowed: false, status: Status::Blocked, reasons: &[DisableLimitExceeded] },
    ];

    #[test]
    fn every_policy_row() {
        let settings = PolicySettings::default();
        for row in ROWS {
            let limits = limits(row.limits);
            let usage = Usage {
                disabled: row.disabled,
                estimate: row.estimate,
                counted: row.estimate,
                limits: &limits,
                others: Reasons::default(),
            };
            let verdict = decide(&usage, row.cost, &settings);
            let reasons: Vec<Reason> = verdict.reasons.iter().collect();
            assert_eq!(
                (verdict.allowed, verdict.status, reasons.as_slice(), verdict.would_block),
                (row.allowed, row.status, row.reasons, None),
                "{}",
                row.name
            );
        }
    }

    #[test]
    fn what_other_kinds_refuse_blocks_beside_every_other_reason_and_an_override_or_shadow_mode_still_rule() {
        let limits = limits(&[(1000, Disable)]);
        let usage = |disabled, estimate, plan: &[Reason]| Usage {
            disabled,
            estimate,
            counted: estimate,
            limits: &limits,
            others: plan.iter().fold(Reasons::default(), |mut set, r| {
                set.insert(*r);
                set
            }),
        };
        let settings = PolicySettings::default();
        let verdict = decide(&usage(false, 10, &[FeatureNotInPlan]), None, &settings);
        assert_eq!((verdict.allowed, verdict.status), (false, Status::Blocked));
        let both = decide(&usage(true, 2000, &[FeatureNotInPlan]), None, &settings);
        assert_eq!(
            both.reasons.iter().collect::<Vec<_>>(),
            [CustomerDisabled, DisableLimitExceeded, FeatureNotInPlan],
            "a blocked customer stays blocked, with both reasons"
        );
        let near = decide(&usage(false, 950, &[SeatsExceeded]), None, &settings);
        assert_eq!(
            (near.status, near.reasons.iter().collect::<Vec<_>>()),
            (Status::Blocked, vec![NearLimit, SeatsExceeded])
        );
        let allowed =
            decide_with(&usage(false, 10, &[FeatureLimitReached]), None, Some(Effect::Allow), &settings);
        assert_eq!(
            (allowed.allowed, allowed.would_block),
            (true, Some(true)),
            "an allow override lets it through"
        );
        let shadow = PolicySettings { mode: Mode::Shadow.into(), ..PolicySettings::default() };
        let told = decide(&usage(false, 10, &[FeatureNotInPlan]), None, &shadow);
        assert_eq!((told.allowed, told.would_block), (true, Some(true)));
    }

    #[test]
    fn shadow_mode_allows_everything_and_tells_the_truth() {
        let settings = PolicySettings { mode: Mode::Shadow.into(), ..PolicySettings::default() };
        for row in ROWS {
            let limits = limits(row.limits);
            let usage = Usage {
                disabled: row.disabled,
                estimate: row.estimate,
                counted: row.estimate,
                limits: &limits,
                others: Reasons::default(),
            };
            let verdict = decide(&usage, row.cost, &settings);
            assert!(verdict.allowed, "{}", row.name);
            assert_eq!(verdict.status, row.status, "{}", row.name);
            assert_eq!(verdict.would_block, Some(!row.allowed), "{}", row.name);
        }
    }

    #[test]
    fn unknown_customers_follow_the_unknown_customer_setting() {
        let deny = PolicySettings::default();
        let allow = PolicySettings { unknown_customer: UnknownCustomer::Allow.into(), ..deny.clone() };
        for (settings, allowed) in [(deny, false), (allow, true)] {
            let v = unknown_customer(None, &settings);
            assert_eq!((v.allowed, v.status), (allowed, Status::Unknown));
            assert_eq!(v.reasons.iter().collect::<Vec<_>>(), [CustomerNotFound]);
        }
    }

    #[test]
    fn fallback_follows_the_fail_mode() {
        let open = PolicySettings::default();
        let closed = PolicySettings { fail_mode: FailMode::Closed.into(), ..open.clone() };
        for (settings, allowed) in [(open, true), (closed, false)] {
            for why in [UpstreamUnavailable, UpstreamBudgetExhausted] {
                let v = upstream_unavailable(why, None, &settings);
                assert_eq!((v.allowed, v.status), (allowed, Status::Unknown));
                assert_eq!(v.reasons.iter().collect::<Vec<_>>(), [why]);
            }
        }
        let shadow = PolicySettings {
            mode: Mode::Shadow.into(),
            fail_mode: FailMode::Closed.into(),
            ..PolicySettings::default()
        };
        assert_eq!(upstream_unavailable(UpstreamUnavailable, None, &shadow).would_block, Some(true));
        assert!(upstream_unavailable(UpstreamUnavailable, None, &shadow).allowed);
    }

    #[test]
    fn a_block_by_usage_billabear_has_not_counted_says_so() {
        let limits = limits(&[(500, Warning), (1000, Disable)]);
        let usage = |estimate, counted| Usage {
            disabled: false,
            estimate,
            counted,
            limits: &limits,
            others: Reasons::default(),
        };
        let settings = PolicySettings::default();
        let pending = decide(&usage(1001, 200), None, &settings);
        assert_eq!((pending.allowed, pending.status), (false, Status::Blocked));
        assert_eq!(
            pending.reasons.iter().collect::<Vec<_>>(),
            [DisableLimitExceeded, WarningLimitExceeded, PendingUsageExceedsLimit]
        );
        let counted = decide(&usage(1500, 1001), None, &settings);
        assert_eq!(counted.reasons.iter().collect::<Vec<_>>(), [DisableLimitExceeded, WarningLimitExceeded]);
    }

    #[test]
    fn an_override_decides_and_the_truth_stays_in_would_block() {
        let limits = limits(&[(500, Warning), (1000, Disable)]);
        let usage = |estimate, disabled| Usage {
            disabled,
            estimate,
            counted: estimate,
            limits: &limits,
            others: Reasons::default(),
        };
        let settings = PolicySettings::default();
        let codes = |v: Verdict| v.reasons.iter().collect::<Vec<_>>();
        // (usage, effect, cost) -> (allowed, status, would_block, reasons)
        let over = usage(1200, false);
        let under = usage(100, false);
        let v = decide_with(&over, None, Some(Effect::Allow), &settings);
        assert_eq!((v.allowed, v.status, v.would_block), (true, Status::Warning, Some(true)));
        assert_eq!(codes(v), [DisableLimitExceeded, WarningLimitExceeded, OverrideAllow]);
        let v = decide_with(&under, None, Some(Effect::Block), &settings);
        assert_eq!((v.allowed, v.status, v.would_block), (false, Status::Blocked, Some(false)));
        assert_eq!(codes(v), [OverrideBlock]);
        let v = decide_with(&over, None, Some(Effect::Raise(2000)), &settings);
        assert_eq!((v.allowed, v.status, v.would_block), (true, Status::Warning, Some(true)));
        assert_eq!(codes(v), [WarningLimitExceeded, OverrideRaise]);
        let v = decide_with(&over, Some(801), Some(Effect::Raise(2000)), &settings);
        assert_eq!(
            (v.allowed, v.status),
            (false, Status::Blocked),
            "the cost is judged on the raised threshold"
        );
        assert_eq!(codes(v), [WouldExceedDisableLimit, WarningLimitExceeded, OverrideRaise]);
        let v = decide_with(&usage(2001, false), None, Some(Effect::Raise(2000)), &settings);
        assert_eq!((v.allowed, v.status), (false, Status::Blocked), "over the raised threshold");
        let v = decide_with(&usage(10, true), None, Some(Effect::Raise(2000)), &settings);
        assert_eq!(
            (v.allowed, codes(v)),
            (false, vec![CustomerDisabled, OverrideRaise]),
            "raise does not lift disabled"
        );
        let v = decide_with(&usage(10, true), None, Some(Effect::Allow), &settings);
        assert!(v.allowed, "allow does");
        assert_eq!(decide_with(&under, None, None, &settings), decide(&under, None, &settings));
        let v = unknown_customer(Some(Effect::Allow), &settings);
        assert_eq!((v.allowed, v.status, v.would_block), (true, Status::Unknown, Some(true)));
        let v = upstream_unavailable(UpstreamUnavailable, Some(Effect::Block), &settings);
        assert_eq!((v.allowed, v.status, v.would_block), (false, Status::Blocked, Some(false)));
        let v = unknown_customer(Some(Effect::Raise(5)), &settings);
        assert_eq!((v.allowed, codes(v)), (false, vec![CustomerNotFound, OverrideRaise]));
    }

    #[test]
    fn limit_arithmetic() {
        let limit = Limit { id: LimitId::new_v4(), amount: 1000, action: Disable };
        assert_eq!((limit.exceeded_by(1000), limit.remaining(1000)), (false, 0));
        assert_eq!((limit.exceeded_by(1001), limit.remaining(1001)), (true, 0));
        assert_eq!(limit.remaining(250), 750);
    }

    #[test]
    fn reasons_serialize_as_codes_in_a_stable_order() {
        let reasons: Reasons = [NearLimit, CustomerDisabled].into();
        assert_eq!(serde_json::to_string(&reasons).unwrap(), r#"["customer_disabled","near_limit"]"#);
    }
}
