//! usage-gate's own limit rules, as operators write them (`rules` keeps them): a limit on a
//! measure (money, or a metric's units) over a window, for one customer, the customers on a
//! plan, or all, optionally per subject (a user, a workspace, an API key of the customer's),
//! hard or soft, with a ladder of thresholds told as they are crossed.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::domain::{CustomerId, MetricCode, PlanId, Subject};
use crate::entitlements::{TimeZone, Window};

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: Uuid,
    pub spec: RuleSpec,
}

/// What an operator writes of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub scope: Scope,
    pub measure: Measure,
    /// Minor units for `cost`, units for a metric; more than 0.
    pub limit: i64,
    pub window: RuleWindow,
    pub mode: Mode,
    /// Each subject is limited separately (to `limit`, or its own in `subject_limits`).
    pub per_subject: bool,
    pub subject_limits: BTreeMap<Subject, i64>,
    /// Percent of the limit, ascending, each told once per window when crossed.
    pub thresholds: Vec<u16>,
}

/// Whom a rule applies to (also what a replica's copy of the rules is keyed by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Customer(CustomerId),
    /// Every customer with an active subscription on the plan.
    Plan(PlanId),
    All,
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Customer(_) => "customer",
            Scope::Plan(_) => "plan",
            Scope::All => "all",
        }
    }
}

/// What a rule counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Measure {
    /// Money, priced as the projection prices usage (the metric's price, tax): minor units.
    Cost,
    /// The `value` of the events of a metric: units.
    Metric(MetricCode),
}

/// The window a rule counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleWindow {
    /// An hour, a day, an ISO week or a month, from its boundary in `zone`.
    Calendar { unit: Window, zone: TimeZone },
    /// The last `seconds`, exact to a sixtieth of them.
    Rolling { seconds: u32 },
    /// The customer's billing period, as BillaBear's subscription sets it.
    BillingPeriod,
}

/// The longest rolling window: 31 days.
pub const MAX_ROLLING_S: u32 = 31 * 86_400;

/// What a rule does at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Refuses.
    Hard,
    /// Allows, with status `warning`.
    Soft,
}

crate::written_as!(Mode { "hard" => Hard, "soft" => Soft });

/// The ladder a rule has unless it says otherwise.
pub const DEFAULT_THRESHOLDS: [u16; 2] = [80, 100];

/// Thresholds are percents of the limit from 1 to this.
pub const MAX_THRESHOLD: u16 = 1000;

impl RuleSpec {
    /// What the rule allows `subject`: its own limit in `subject_limits`, else the rule's.
    pub fn limit_for(&self, subject: Option<&Subject>) -> i64 {
        subject
            .filter(|_| self.per_subject)
            .and_then(|s| self.subject_limits.get(s))
            .copied()
            .unwrap_or(self.limit)
    }

    /// Rules that stand for the same limit at different scopes: one measure, one window, per
    /// subject or for the whole customer.
    fn same_limit(&self, other: &RuleSpec) -> bool {
        self.measure == other.measure && self.window == other.window && self.per_subject == other.per_subject
    }

    fn rank(&self) -> u8 {
        match self.scope {
            Scope::Customer(_) => 2,
            Scope::Plan(_) => 1,
            Scope::All => 0,
        }
    }

    fn applies_to(&self, customer: CustomerId, plans: &[PlanId]) -> bool {
        match &self.scope {
            Scope::Customer(c) => *c == customer,
            Scope::Plan(p) => plans.contains(p),
            Scope::All => true,
        }
    }
}

/// The rules that bind `customer`, on `plans` (its active subscriptions'): of each limit (one
/// measure, one window, per subject or not), the customer's own rules replace its plans', and a
/// plan's replace the `all` rules. Every rule left applies: the most restrictive binds.
pub fn applicable<'a>(rules: &'a [Rule], customer: CustomerId, plans: &[PlanId]) -> Vec<&'a Rule> {
    let scoped: Vec<&Rule> = rules.iter().filter(|r| r.spec.applies_to(customer, plans)).collect();
    let replaced = |rule: &Rule| {
        scoped.iter().any(|o| o.spec.same_limit(&rule.spec) && o.spec.rank() > rule.spec.rank())
    };
    scoped.iter().copied().filter(|rule| !replaced(rule)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(scope: Scope, measure: Measure, window: RuleWindow, per_subject: bool, limit: i64) -> Rule {
        let spec = RuleSpec {
            scope,
            measure,
            limit,
            window,
            mode: Mode::Hard,
            per_subject,
            subject_limits: BTreeMap::new(),
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
        };
        Rule { id: Uuid::new_v4(), spec }
    }

    const DAY: RuleWindow = RuleWindow::Calendar { unit: Window::Day, zone: TimeZone(chrono_tz::Tz::UTC) };
    const HOUR: RuleWindow = RuleWindow::Rolling { seconds: 3600 };

    #[test]
    fn a_customers_rule_replaces_its_plans_which_replaces_alls_of_the_same_limit_only() {
        let (acme, globex) = (CustomerId::new_v4(), CustomerId::new_v4());
        let (pro, free) = (PlanId::new_v4(), PlanId::new_v4());
        let calls = Measure::Metric(MetricCode::parse("api_calls").unwrap());
        let rules = [
            rule(Scope::All, Measure::Cost, DAY, false, 10_000), // 0
            rule(Scope::Plan(pro), Measure::Cost, DAY, false, 20_000), // 1
            rule(Scope::Customer(acme), Measure::Cost, DAY, false, 5_000), // 2
            rule(Scope::All, Measure::Cost, DAY, true, 500),     // 3: per member
            rule(Scope::All, calls.clone(), HOUR, false, 1_000), // 4
            rule(Scope::Plan(free), calls, HOUR, false, 100),    // 5
            rule(Scope::Customer(globex), Measure::Cost, HOUR, false, 50), // 6
        ];
        let applied = |customer, plans: &[PlanId]| -> Vec<i64> {
            applicable(&rules, customer, plans).iter().map(|r| r.spec.limit).collect()
        };
        assert_eq!(
            applied(acme, &[pro]),
            [5_000, 500, 1_000],
            "its own day rule; per member and calls stand"
        );
        assert_eq!(applied(globex, &[pro, free]), [20_000, 500, 100, 50], "the plans' replace all's");
        assert_eq!(applied(CustomerId::new_v4(), &[]), [10_000, 500, 1_000]);
    }

    #[test]
    fn a_subject_has_its_own_limit_on_a_per_subject_rule_only() {
        let alice = Subject::parse("alice").unwrap();
        let mut members = rule(Scope::All, Measure::Cost, DAY, true, 500).spec;
        members.subject_limits.insert(alice.clone(), 2_000);
        assert_eq!(members.limit_for(Some(&alice)), 2_000);
        assert_eq!(members.limit_for(Some(&Subject::parse("bob").unwrap())), 500);
        assert_eq!(members.limit_for(None), 500);
        let mut total = members.clone();
        total.per_subject = false;
        assert_eq!(total.limit_for(Some(&alice)), 500);
    }
}
