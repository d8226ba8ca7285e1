//! The judgement over every kind of limit, one entry each in [`KINDS`], for a check and for an
//! enforced write alike: each kind finds its reasons to refuse (and what the answer shows of
//! it), and the policy decides over all of them with BillaBear's usage limits in money, under
//! its mode and the operator's override: all or nothing. An admitted write is then counted by
//! every kind. Pure: what usage-gate counted comes in through [`Counts`] (the check's copy, or
//! what was read under the customer's lock), and an admitted write goes out through [`Tally`].
//!
//! A new kind is a module here implementing [`Kind`] and its entry in [`KINDS`]
//! (docs/architecture.md, "A new limit kind").

mod feature;
pub mod rule;
mod seats;
mod usage;

use chrono::{DateTime, Utc};

use crate::domain::{CustomerId, Subject, Target};
use crate::entitlements::{Bounds, Counted, EntitlementSettings, FeatureCode, PlanAsk, Window};
use crate::policy::{self, Effect, PolicySettings, Reasons, Verdict};
use crate::projection::Projection;
use crate::snapshot::Known;
pub use feature::FeatureJudged;
pub use rule::{Rule, RuleJudged, RuleTally};
pub use seats::SeatsJudged;

/// What is judged: a known customer, what it is asked, and with what.
pub struct Case<'a> {
    pub customer: CustomerId,
    pub known: &'a Known,
    /// Its projected estimate before what is asked (the money limits judge it).
    pub projection: &'a Projection,
    /// What is asked adds this much to the estimate (minor units): a check's `cost`, an
    /// event's price, a hold's amount.
    pub cost: Option<i64>,
    pub question: Question<'a>,
    pub settings: &'a EntitlementSettings,
    /// Unix ms: which window is current.
    pub now_ms: u64,
    /// usage-gate's rules that bind the customer (precedence applied, `rule::applicable`).
    pub rules: &'a [Rule],
    /// Who inside the customer the usage is for, when the caller said.
    pub subject: Option<&'a Subject>,
}

/// What a case asks.
#[derive(Debug, Clone, Copy)]
pub enum Question<'a> {
    /// A check: may the customer go on, with what it asks of the plan (none: nothing).
    Check(&'a PlanAsk),
    /// An enforced write.
    Write(Write<'a>),
}

/// What is being written.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// An event, sent to `target`.
    Event { target: Target, code: &'a str, value: f64 },
    /// A hold of `amount` (minor units), and of an event's units when it was asked as one.
    Hold { amount: i64, event: Option<(&'a str, f64)> },
}

/// What usage-gate counted, as a kind reads it.
pub trait Counts {
    /// The window `feature` is counted over at the case's time, placed by the customer's
    /// billing period as the snapshot has it.
    fn window(&self, case: &Case, feature: FeatureCode) -> (Window, Bounds) {
        case.settings.placed(feature, at(case.now_ms), case.known.period)
    }

    /// What the customer used of `feature` in the window starting at `start` (Unix s): events,
    /// and open holds' units when read under the lock.
    fn used(&self, case: &Case, feature: FeatureCode, start: i64) -> f64;

    /// What the customer used of `feature` in its current window.
    fn counted(&self, case: &Case, feature: FeatureCode) -> Counted {
        let (window, bounds) = self.window(case, feature);
        Counted { used: self.used(case, feature, bounds.start), window, bounds }
    }

    /// What each ask's rule counted of the customer (of the ask's subject alone, for a
    /// per-subject rule) in its buckets from the ask's start on, with open holds when read under
    /// the lock: into each ask's `used`, all at once (a check reads its copy once for them all).
    fn rules_used(&self, case: &Case, asks: &mut [rule::RuleAsk]);
}

/// What an admitted write adds, as each kind counts it (where it is counted is read as
/// [`Counts`] reads it).
pub trait Tally: Counts {
    /// An event's usage, pending until BillaBear counts it.
    fn event(&mut self, target: Target, code: &str, value: f64);
    /// A hold of the customer's (by `subject`): its money, and an event's units when it was
    /// asked as one. Open, it counts for every kind that reads holds (the estimate, the
    /// feature its code counts towards, the rules), so it is told once, not per kind.
    fn hold(
        &mut self,
        customer: CustomerId,
        subject: Option<&Subject>,
        amount: i64,
        event: Option<(&str, f64)>,
    );
    /// Units of `feature` in the window starting at `start` (Unix s): an event's, to `target`.
    fn feature(&mut self, target: Target, feature: FeatureCode, start: i64, units: f64);
    /// What an event adds to a rule's counter.
    fn rule(&mut self, row: RuleTally);
}

/// The case's time as a date (Unix ms).
pub fn at(now_ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(now_ms as i64).unwrap_or_default()
}

/// What the kinds found of a case: the reasons they refuse it with (none: they allow it), and
/// what the answer shows of each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Findings {
    pub reasons: Reasons,
    /// The feature asked about (a check), or the feature limit that refused (a write), with
    /// its code.
    pub feature: Option<(String, FeatureJudged)>,
    /// The seats asked for.
    pub seats: Option<SeatsJudged>,
    /// usage-gate's rules: a check's every rule, a write's rules that refuse it.
    pub rules: Vec<RuleJudged>,
}

/// One kind of limit.
pub trait Kind: Sync {
    /// Adds what this kind finds of the case to `found`: its reasons to refuse, and its view.
    fn judge(&self, case: &Case, counts: &dyn Counts, found: &mut Findings);
    /// Counts an admitted write.
    fn count(&self, case: &Case, tally: &mut dyn Tally);
}

/// Every kind. BillaBear's usage limits in money are judged by the policy itself, with what
/// the others found ([`verdict`]); their entry counts a write's money.
pub static KINDS: &[&dyn Kind] =
    &[&usage::UsageInMoney, &feature::FeatureLimit, &seats::Seats, &rule::RuleLimit];

/// What every kind finds of the case.
pub fn find(case: &Case, counts: &dyn Counts) -> Findings {
    let mut found = Findings::default();
    for kind in KINDS {
        kind.judge(case, counts, &mut found);
    }
    found
}

/// The policy's verdict on the case's money limits and status, with the other kinds' reasons
/// (`found`), under the operator's override `effect`: allowed only if nothing refuses.
pub fn verdict(case: &Case, found: Reasons, effect: Option<Effect>, policy: &PolicySettings) -> Verdict {
    let usage = policy::Usage { others: found, ..case.known.usage(case.projection) };
    policy::decide_with(&usage, case.cost, effect, policy)
}

/// Judges a write: every kind's findings and the verdict over them; when admitted, every kind
/// counts it into `tally`.
pub fn judge_write(
    case: &Case,
    ledger: &mut dyn Tally,
    effect: Option<Effect>,
    policy: &PolicySettings,
) -> (Verdict, Findings) {
    let found = find(case, &*ledger);
    let verdict = verdict(case, found.reasons, effect, policy);
    if verdict.allowed {
        for kind in KINDS {
            kind.count(case, ledger);
        }
    }
    (verdict, found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::{Currency, CustomerStatus};
    use crate::entitlements::{FeatureAsk, Plan};
    use crate::policy::{Reason, Status};

    /// 2027-03-10T12:00:00Z.
    pub const NOW_MS: u64 = 1_805_371_200_000;

    /// Nothing counted.
    pub struct Uncounted;

    impl Counts for Uncounted {
        fn used(&self, _: &Case, _: FeatureCode, _: i64) -> f64 {
            0.0
        }

        fn rules_used(&self, _: &Case, _: &mut [rule::RuleAsk]) {}
    }

    pub fn plan() -> Plan {
        Plan::new([("projects", 25), ("api_calls", 10_000)], ["sso", "projects"], 10, [])
    }

    pub fn feature(code: &str, in_use: Option<u64>, quantity: u64) -> PlanAsk {
        PlanAsk {
            feature: Some(FeatureAsk { code: code.into(), quantity, in_use }),
            seats: None,
            subject: None,
        }
    }

    pub fn seats(n: u64) -> PlanAsk {
        PlanAsk { feature: None, seats: Some(n), subject: None }
    }

    /// Runs `f` on a check of a customer on `plan`, with no usage, asking `ask`.
    pub fn case<R>(
        plan: Plan,
        status: CustomerStatus,
        ask: &PlanAsk,
        settings: &EntitlementSettings,
        f: impl FnOnce(&Case) -> R,
    ) -> R {
        let known = Known {
            status,
            estimate: 0,
            currency: Currency::parse("EUR"),
            limits: Box::new([]),
            metered: Box::new([]),
            plan,
            period: None,
        };
        let projection = Projection::counted(0);
        f(&Case {
            customer: CustomerId::new_v4(),
            known: &known,
            projection: &projection,
            cost: None,
            question: Question::Check(ask),
            settings,
            now_ms: NOW_MS,
            rules: &[],
            subject: None,
        })
    }

    #[test]
    fn a_check_is_allowed_only_if_every_kind_allows_it_and_each_refusal_is_named() {
        let settings = EntitlementSettings::default();
        let policy = PolicySettings::default();
        let mut both = feature("audit_log", None, 1);
        both.seats = Some(11);
        let judged = |ask: &PlanAsk| {
            case(plan(), CustomerStatus::Active, ask, &settings, |case| {
                let found = find(case, &Uncounted);
                (verdict(case, found.reasons, None, &policy), found)
            })
        };
        let (refused, found) = judged(&both);
        assert_eq!((refused.allowed, refused.status), (false, Status::Blocked));
        assert_eq!(
            refused.reasons.iter().collect::<Vec<_>>(),
            [Reason::FeatureNotInPlan, Reason::SeatsExceeded],
            "every kind that refuses is named"
        );
        assert_eq!((found.feature.unwrap().0.as_str(), found.seats.unwrap().limit), ("audit_log", Some(10)));
        let mut fits = feature("sso", None, 1);
        fits.seats = Some(10);
        assert!(judged(&fits).0.allowed);
        let (plain, found) = judged(&PlanAsk::default());
        assert_eq!((plain.allowed, found), (true, Findings::default()), "nothing asked, nothing found");
    }
}
