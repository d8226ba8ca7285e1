//! The plan's features and feature limits. A check asking about a feature is refused unless the
//! plan includes it, and, for a limited one, unless `quantity` more fit beside what is in use:
//! `in_use` when the caller counts it, else what usage-gate counted in the feature's window. An
//! enforced write is refused when its units would not fit under the limit of the feature its
//! code counts towards (`entitlements.metrics`), and counted in that window when admitted.

use super::{Case, Counts, Findings, Kind, Question, Tally, Write};
use crate::entitlements::{Counted, FeatureCode, Window};
use crate::policy::Reason;

/// What the plan says of a feature (the answer's `feature`, with the code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureJudged {
    /// The plan includes it (listed as a feature, or carrying a limit).
    pub included: bool,
    /// Its limit; none for a feature without a count (or not in the plan).
    pub limit: Option<u64>,
    /// How many are in use when there is a limit: as the caller counted them (`in_use`), or
    /// as usage-gate counted them in the window (rounded up).
    pub used: Option<u64>,
    /// The window usage-gate counts it over, and when it restarts (Unix seconds).
    pub window: Option<(Window, i64)>,
}

impl FeatureJudged {
    /// A limited feature of the plan as counted in its window (`used` rounded up), ending at
    /// `end` (Unix seconds).
    pub fn counted(limit: u64, used: f64, window: Window, end: i64) -> Self {
        Self { included: true, limit: Some(limit), used: Some(rounded_up(used)), window: Some((window, end)) }
    }

    /// `limit - used`, never negative; none unless both are known.
    pub fn remaining(&self) -> Option<u64> {
        self.limit.zip(self.used).map(|(limit, used)| limit.saturating_sub(used))
    }
}

/// A count as the answer shows it: whole units, rounded up.
fn rounded_up(used: f64) -> u64 {
    used.max(0.0).ceil() as u64
}

/// Whether `quantity` more fit beside `used` within `limit`.
fn fits(used: f64, quantity: f64, limit: u64) -> bool {
    used + quantity <= limit as f64
}

pub struct FeatureLimit;

impl FeatureLimit {
    /// A write's limited feature, its limit and units: the feature its code counts towards.
    fn written(case: &Case, write: &Write) -> Option<(FeatureCode, u64, f64)> {
        let (code, units) = match *write {
            Write::Event { code, value, .. } => (code, value),
            Write::Hold { event, .. } => event?,
        };
        let feature = case.settings.counted_as(code)?;
        let limit = case.known.plan.features().iter().find(|f| f.code == feature)?.limit()?;
        Some((feature, limit, units))
    }

    fn judge_check(case: &Case, counts: &dyn Counts, found: &mut Findings) {
        let Question::Check(ask) = case.question else { return };
        let Some(asked) = &ask.feature else { return };
        let listed = case.known.plan.feature(&asked.code);
        let limited = listed.and_then(|f| Some((f.code, f.limit()?)));
        let (used, window) = match (limited, asked.in_use) {
            (Some(_), Some(in_use)) => (Some(in_use as f64), None),
            (Some((code, _)), None) => {
                let c = counts.counted(case, code);
                (Some(c.used), Some((c.window, c.bounds.end)))
            }
            (None, _) => (None, None),
        };
        let limit = limited.map(|(_, limit)| limit);
        if listed.is_none() {
            found.reasons.insert(Reason::FeatureNotInPlan);
        } else if let (Some(limit), Some(used)) = (limit, used)
            && !fits(used, asked.quantity as f64, limit)
        {
            found.reasons.insert(Reason::FeatureLimitReached);
        }
        let judged = FeatureJudged { included: listed.is_some(), limit, used: used.map(rounded_up), window };
        found.feature = Some((asked.code.clone(), judged));
    }
}

impl Kind for FeatureLimit {
    fn judge(&self, case: &Case, counts: &dyn Counts, found: &mut Findings) {
        let Question::Write(write) = &case.question else { return Self::judge_check(case, counts, found) };
        let Some((feature, limit, units)) = Self::written(case, write) else { return };
        let Counted { used, window, bounds } = counts.counted(case, feature);
        if !fits(used, units, limit) {
            found.reasons.insert(Reason::FeatureLimitReached);
            let judged = FeatureJudged::counted(limit, used, window, bounds.end);
            found.feature = Some((feature.as_str().to_owned(), judged));
        }
    }

    fn count(&self, case: &Case, tally: &mut dyn Tally) {
        let Question::Write(write) = &case.question else { return };
        let Some((feature, _, units)) = Self::written(case, write) else { return };
        // A hold's units count while it is open, told once by the money's kind (`Tally::hold`).
        if let Write::Event { target, .. } = *write {
            let (_, bounds) = tally.window(case, feature);
            tally.feature(target, feature, bounds.start, units)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Uncounted;
    use super::super::tests::{NOW_MS, case, feature, plan};
    use super::*;
    use crate::domain::CustomerStatus;
    use crate::entitlements::{EntitlementSettings, Plan, PlanAsk};
    use crate::judgement::rule::RuleAsk;
    use crate::policy::Reasons;

    /// `used` of every feature, in any window.
    struct Used(f64);

    impl Counts for Used {
        fn used(&self, _: &Case, feature: FeatureCode, _: i64) -> f64 {
            assert_eq!(feature.as_str(), "api_calls", "asked only for the feature asked about");
            self.0
        }

        fn rules_used(&self, _: &Case, _: &mut [RuleAsk]) {}
    }

    fn judged(plan: &Plan, ask: &PlanAsk, counts: &dyn Counts, settings: &EntitlementSettings) -> Findings {
        let mut found = Findings::default();
        case(plan.clone(), CustomerStatus::Active, ask, settings, |case| {
            FeatureLimit.judge(case, counts, &mut found)
        });
        found
    }

    fn view(plan: &Plan, ask: &PlanAsk) -> FeatureJudged {
        judged(plan, ask, &Uncounted, &Default::default()).feature.unwrap().1
    }

    fn reasons(plan: &Plan, ask: &PlanAsk) -> Vec<Reason> {
        judged(plan, ask, &Uncounted, &Default::default()).reasons.iter().collect()
    }

    #[test]
    fn a_feature_not_in_the_plan_is_refused_and_one_in_it_allowed() {
        let plan = plan();
        assert_eq!(reasons(&plan, &feature("sso", None, 1)), []);
        assert_eq!(reasons(&plan, &feature("audit_log", None, 1)), [Reason::FeatureNotInPlan]);
        let view = view(&plan, &feature("audit_log", Some(3), 1));
        assert_eq!((view.included, view.limit, view.used, view.remaining()), (false, None, None, None));
        assert_eq!(reasons(&Plan::default(), &feature("sso", None, 1)), [Reason::FeatureNotInPlan]);
    }

    #[test]
    fn what_the_caller_has_in_use_fits_when_it_and_the_quantity_are_within_the_limit() {
        let plan = plan();
        assert_eq!(reasons(&plan, &feature("projects", Some(24), 1)), [], "24 + 1 = 25 fits");
        assert_eq!(reasons(&plan, &feature("projects", Some(25), 1)), [Reason::FeatureLimitReached]);
        assert_eq!(reasons(&plan, &feature("projects", Some(20), 6)), [Reason::FeatureLimitReached]);
        assert_eq!(
            reasons(&plan, &feature("projects", Some(u64::MAX), u64::MAX)),
            [Reason::FeatureLimitReached]
        );
        let view = view(&plan, &feature("projects", Some(30), 1));
        assert_eq!((view.limit, view.used, view.remaining()), (Some(25), Some(30), Some(0)));
        assert_eq!(reasons(&plan, &feature("sso", Some(1_000), 5)), [], "no count: nothing to exceed");
    }

    #[test]
    fn without_in_use_what_usage_gate_counted_in_the_window_is_used() {
        let plan = plan();
        let mut settings = EntitlementSettings::default();
        settings.windows.insert("api_calls".into(), Window::Day.into());
        let ask = feature("api_calls", None, 1);
        let at = |used: f64| judged(&plan, &ask, &Used(used), &settings);
        assert_eq!(at(9_999.0).reasons, Reasons::default(), "9,999 + 1 fits 10,000");
        assert_eq!(at(10_000.0).reasons.iter().collect::<Vec<_>>(), [Reason::FeatureLimitReached]);
        let (code, view) = at(2.5).feature.unwrap();
        let midnight = (NOW_MS / 1000 / 86_400 + 1) as i64 * 86_400;
        assert_eq!(
            (code.as_str(), view.used, view.remaining(), view.window),
            ("api_calls", Some(3), Some(9_997), Some((Window::Day, midnight)))
        );
        let asked_more = feature("api_calls", None, 11);
        assert!(!judged(&plan, &asked_more, &Used(9_990.0), &settings).reasons.is_empty());
        // A feature without a count, or not in the plan, asks nothing of the counts.
        struct Unasked;
        impl Counts for Unasked {
            fn used(&self, _: &Case, _: FeatureCode, _: i64) -> f64 {
                panic!("not counted")
            }

            fn rules_used(&self, _: &Case, _: &mut [RuleAsk]) {
                panic!("not counted")
            }
        }
        assert!(
            judged(&plan, &feature("sso", None, 1), &Unasked, &settings).feature.unwrap().1.window.is_none()
        );
        judged(&plan, &feature("audit_log", None, 1), &Unasked, &settings);
    }
}
