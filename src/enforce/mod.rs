//! Enforcement at the point of use: an enforced event is stored, and a hold granted, only if it
//! fits under the customer's lowest DISABLE limit, judged so that concurrent requests on any
//! replica are judged one after the other (docs/enforcement.md, "Enforcement at the point of use").
//!
//! - **One customer at a time, in Postgres.** An enforced write takes the customer's
//!   transaction-scoped advisory lock, reads what the customer's figure is made of in that same
//!   transaction ([`store::lock_and_load`]), judges, writes and commits. The next writer for the
//!   customer, on any replica, reads after that commit.
//! - **What is read under the lock** ([`Ledger`]): the pending usage of the customer's targets,
//!   BillaBear's counters as last recorded (a replica's cached snapshot may predate a fetch on
//!   another replica that retired pending usage: the counter's growth since the snapshot is
//!   added back, so that usage counts once, not zero times), and the open holds.
//! - **Judging is pure** ([`Ledger::judge_event`], [`Ledger::judge_hold`]): every kind of limit
//!   in `judgement::KINDS` (usage limits in money, with the event's price as `cost` on the
//!   projected estimate; the plan's feature limits, on usage-gate's counts and open holds) must
//!   allow it, under the policy's mode and the operator's override; the ledger is what the
//!   kinds read ([`Counts`]) and count an admitted write into ([`Tally`]).

pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::domain::Target;
use crate::domain::{CustomerId, Subject, SubscriptionId};
use crate::entitlements::{Bounds, EntitlementSettings, FeatureCode, Period, Window};
use crate::judgement::rule::{Measure, RuleAsk};
use crate::judgement::{self, Case, Counts, Findings, Question, Rule, RuleTally, Tally, Write};
use crate::overrides::Override;
use crate::pending;
use crate::policy::PolicySettings;
use crate::projection::{self, Code, Metered, PendingUsage, Projection};
use crate::rules::Applicable;
use crate::snapshot::{Known, Snapshot, SnapshotData, now_ms};

/// What enforced writes are judged by: the policy, and the plan's settings (what events count
/// towards, over which window).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub policy: PolicySettings,
    pub entitlements: EntitlementSettings,
}

/// A customer's cached snapshot an enforced write is judged against, the operator's override
/// in force, and usage-gate's rules that bind the customer.
#[derive(Debug, Clone)]
pub struct Gate {
    pub customer: CustomerId,
    snapshot: Arc<Snapshot>,
    applied: Option<Override>,
    rules: Applicable,
}

impl Gate {
    /// A gate for a customer BillaBear knows (None for the other snapshots: the policy's
    /// fallbacks decide those without a lock).
    pub fn new(
        customer: CustomerId,
        snapshot: Arc<Snapshot>,
        applied: Option<Override>,
        rules: Applicable,
    ) -> Option<Self> {
        matches!(snapshot.data, SnapshotData::Known(_)).then(|| Self { customer, snapshot, applied, rules })
    }

    /// The rules that bind the customer.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn known(&self) -> &Known {
        match &self.snapshot.data {
            SnapshotData::Known(known) => known,
            // `new` takes only known customers.
            _ => unreachable!("a gate holds a known customer"),
        }
    }

    /// The targets whose pending usage the customer's figure includes.
    pub fn targets(&self) -> impl Iterator<Item = Target> + '_ {
        self.known().targets(self.customer)
    }
}

/// How one enforced write was judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub admitted: bool,
    /// The customer's projected estimate before it.
    pub projection: Projection,
    /// What it adds to the estimate (minor units).
    pub cost: i64,
    /// What the kinds of limit other than money found (a feature limit that refused it).
    pub found: Findings,
}

/// What customers' figures are made of, read under their locks, plus what was admitted since.
#[derive(Debug, Default)]
pub struct Ledger {
    pub pending: HashMap<Target, Vec<PendingUsage>>,
    /// BillaBear's counter per subscription (`costs[].usage`) as last recorded by any replica.
    pub counters: HashMap<SubscriptionId, f64>,
    /// The customers' open holds, by subject and the event code asked: every kind of limit
    /// reads them (their money the estimate, their units the features and metric rules).
    pub holds: HashMap<CustomerId, Vec<OpenHold>>,
    /// Feature counts per target, feature and window start (Unix seconds).
    pub features: HashMap<(Target, FeatureCode, i64), f64>,
    /// The billing periods Postgres places events by, per customer.
    pub periods: HashMap<CustomerId, Period>,
    /// Rules' counters per customer, rule and subject (none: the whole customer's): each
    /// bucket's start (Unix ms) and amount.
    pub rule_counts: HashMap<RuleKey, Vec<(i64, f64)>>,
    /// What the writes admitted since the last [`Ledger::take_tallies`] added to rules.
    tallied: Vec<RuleTally>,
}

/// A rule's counter: the customer, the rule, and the subject (none: the whole customer's).
pub type RuleKey = (CustomerId, Uuid, Option<Subject>);

/// A customer's open holds of one subject (or none) and event code (or none: asked as money).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenHold {
    pub subject: Option<Subject>,
    pub code: Option<String>,
    pub units: f64,
    pub amount: i64,
}

impl Ledger {
    /// The customer's projected estimate: its snapshot's figure brought up to the counters
    /// recorded since, plus its pending usage and its holds.
    pub fn project(&self, gate: &Gate) -> Projection {
        let known = gate.known();
        let mut billabear = known.estimate;
        let metered: Vec<Metered> = known
            .metered
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some(&usage) = self.counters.get(&m.subscription)
                    && usage > m.usage
                    && m.aggregation != projection::Aggregation::Other
                {
                    // Counted since the snapshot (and retired from pending usage meanwhile).
                    billabear = billabear.saturating_add(m.cost_of(usage - m.usage));
                    m.usage = usage;
                }
                m
            })
            .collect();
        let mut projected = projection::project(billabear, &metered, |m| {
            pending::pending_for(gate.customer, m, |target| self.pending_of(target, m.code))
        });
        projected.reserved = self.holds(gate.customer).fold(0i64, |sum, h| sum.saturating_add(h.amount));
        projected
    }

    fn holds(&self, customer: CustomerId) -> impl Iterator<Item = &OpenHold> {
        self.holds.get(&customer).into_iter().flatten()
    }

    fn pending_of(&self, target: Target, code: Code) -> (f64, u64) {
        self.pending.get(&target).map_or((0.0, 0), |entries| projection::pending_of(entries, code))
    }

    /// Counts an event as pending (admitted, or stored without enforcement). A code no
    /// listed price bills costs nothing and is not kept.
    pub fn add_event(&mut self, target: Target, code: &str, value: f64) {
        let Some(code) = Code::known(code) else { return };
        let entries = self.pending.entry(target).or_default();
        match entries.iter_mut().find(|e| e.code == code) {
            Some(entry) => {
                entry.units += value;
                entry.events += 1;
            }
            None => entries.push(PendingUsage { code, units: value, events: 1 }),
        }
    }

    /// Judges an event for the gate's customer (by `subject`, when named) under every kind of
    /// limit and, if admitted, counts it in each.
    pub fn judge_event(
        &mut self,
        gate: &Gate,
        target: Target,
        (code, value): (&str, f64),
        subject: Option<&Subject>,
        rules: &Rules,
    ) -> Judged {
        let projection = self.project(gate);
        let cost = self.price_after(gate, projection, target, code, value);
        self.judge_write(gate, rules, projection, cost, Write::Event { target, code, value }, subject)
    }

    /// What the writes admitted since the last call added to rules' counters (stored with
    /// the events, `outbox::store`).
    pub fn take_tallies(&mut self) -> Vec<RuleTally> {
        std::mem::take(&mut self.tallied)
    }

    fn judge_write(
        &mut self,
        gate: &Gate,
        rules: &Rules,
        projection: Projection,
        cost: i64,
        write: Write,
        subject: Option<&Subject>,
    ) -> Judged {
        let case = Case {
            customer: gate.customer,
            known: gate.known(),
            projection: &projection,
            cost: Some(cost),
            question: Question::Write(write),
            settings: &rules.entitlements,
            now_ms: now_ms(),
            rules: gate.rules(),
            subject,
        };
        let effect = gate.applied.map(|o| o.effect);
        let (verdict, found) = judgement::judge_write(&case, self, effect, &rules.policy);
        Judged { admitted: verdict.allowed, projection, cost, found }
    }

    /// An event refused whatever it costs (an earlier event of its request for the customer
    /// was refused): its price and the projection, and it is not counted.
    pub fn refuse_event(&mut self, gate: &Gate, target: Target, code: &str, value: f64) -> Judged {
        let projection = self.project(gate);
        let cost = self.price_after(gate, projection, target, code, value);
        Judged { admitted: false, projection, cost, found: Findings::default() }
    }

    /// What an event would add to the customer's estimate now (priced as BillaBear prices
    /// it on top of what is pending, so the ledger is left as it was).
    pub fn price_event(&mut self, gate: &Gate, target: Target, code: &str, value: f64) -> i64 {
        let before = self.project(gate);
        self.price_after(gate, before, target, code, value)
    }

    /// [`Ledger::price_event`] with the customer's projection as it stands (`before`).
    fn price_after(
        &mut self,
        gate: &Gate,
        before: Projection,
        target: Target,
        code: &str,
        value: f64,
    ) -> i64 {
        let saved = self.pending.get(&target).cloned();
        self.add_event(target, code, value);
        let after = self.project(gate).amount();
        match saved {
            Some(entries) => self.pending.insert(target, entries),
            None => self.pending.remove(&target),
        };
        after.saturating_sub(before.amount())
    }

    /// A hold stored before (asked for again with its idempotency key), as it stands: admitted,
    /// and the projection without it, as a new hold's judgement has it.
    pub fn stored_hold(&self, gate: &Gate, amount: i64) -> Judged {
        let mut projection = self.project(gate);
        projection.reserved = projection.reserved.saturating_sub(amount).max(0);
        Judged { admitted: true, projection, cost: amount, found: Findings::default() }
    }

    /// Judges a hold of `amount` for the gate's customer (and of `event`'s units, asked as an
    /// event) under every kind of limit and, if granted, counts it in each.
    pub fn judge_hold(
        &mut self,
        gate: &Gate,
        amount: i64,
        event: Option<(&str, f64)>,
        subject: Option<&Subject>,
        rules: &Rules,
    ) -> Judged {
        let projection = self.project(gate);
        self.judge_write(gate, rules, projection, amount, Write::Hold { amount, event }, subject)
    }
}

impl Counts for Ledger {
    /// Placed as the statement storing events places them: by the billing period Postgres has
    /// recorded for the customer.
    fn window(&self, case: &Case, feature: FeatureCode) -> (Window, Bounds) {
        let period = self.periods.get(&case.customer).copied().or(case.known.period);
        case.settings.placed(feature, judgement::at(case.now_ms), period)
    }

    /// The customer's targets' counts and its open holds' units.
    fn used(&self, case: &Case, feature: FeatureCode, start: i64) -> f64 {
        let counted = (case.known.targets(case.customer))
            .filter_map(|t| self.features.get(&(t, feature, start)))
            .fold(0.0, |s, u| s + u);
        let held = self
            .holds(case.customer)
            .filter(|h| h.code.as_deref().and_then(|code| case.settings.counted_as(code)) == Some(feature))
            .fold(0.0, |sum, h| sum + h.units);
        counted + held
    }

    /// Each rule's buckets read under the lock plus what was admitted since, and the
    /// customer's open holds (the subject's, for a per-subject rule): their amount for a cost
    /// rule, their units of the metric for a metric rule.
    fn rules_used(&self, case: &Case, asks: &mut [RuleAsk]) {
        for ask in asks {
            let key = (case.customer, ask.rule.id.uuid(), ask.subject.cloned());
            let counted = self.rule_counts.get(&key).map_or(0.0, |buckets| {
                buckets.iter().filter(|(start, _)| *start >= ask.since_ms).fold(0.0, |sum, (_, a)| sum + a)
            });
            let held = self
                .holds(case.customer)
                .filter(|h| ask.subject.is_none() || h.subject.as_ref() == ask.subject)
                .map(|h| match &ask.rule.shape().measure {
                    Measure::Cost => h.amount as f64,
                    Measure::Metric(code) if h.code.as_deref() == Some(code.as_str()) => h.units,
                    Measure::Metric(_) => 0.0,
                })
                .fold(0.0, |sum, a| sum + a);
            ask.used = counted + held;
        }
    }
}

impl Tally for Ledger {
    fn event(&mut self, target: Target, code: &str, value: f64) {
        self.add_event(target, code, value);
    }

    fn feature(&mut self, target: Target, feature: FeatureCode, start: i64, units: f64) {
        *self.features.entry((target, feature, start)).or_default() += units;
    }

    fn rule(&mut self, row: RuleTally) {
        let key = (row.customer, row.rule, row.subject.clone());
        let buckets = self.rule_counts.entry(key).or_default();
        match buckets.iter_mut().find(|(start, _)| *start == row.bucket_ms) {
            Some((_, amount)) => *amount += row.amount,
            None => buckets.push((row.bucket_ms, row.amount)),
        }
        self.tallied.push(row);
    }

    fn hold(
        &mut self,
        customer: CustomerId,
        subject: Option<&Subject>,
        amount: i64,
        event: Option<(&str, f64)>,
    ) {
        let hold = OpenHold {
            subject: subject.cloned(),
            code: event.map(|(code, _)| code.to_owned()),
            units: event.map_or(0.0, |(_, units)| units),
            amount,
        };
        self.holds.entry(customer).or_default().push(hold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Currency;
    use crate::domain::{CustomerStatus, LimitAction, LimitId};
    use crate::entitlements::Plan;
    use crate::policy::{Limit, Mode, Reason};
    use crate::projection::{Aggregation, Figures, Found, Rate};

    /// A customer at `usage` units of `code` at 10 cents a unit (`tax` on top), limited to
    /// `limit` cents.
    fn customer(usage: f64, tax: f64, limit: i64, status: CustomerStatus) -> (Gate, SubscriptionId) {
        customer_on(usage, tax, limit, status, Plan::default())
    }

    fn customer_on(
        usage: f64,
        tax: f64,
        limit: i64,
        status: CustomerStatus,
        plan: Plan,
    ) -> (Gate, SubscriptionId) {
        let subscription = SubscriptionId::new_v4();
        let found = Found {
            subscription,
            code: "enforce_test_calls",
            interned: Code::intern("enforce_test_calls"),
            new_code: false,
            aggregation: Aggregation::Sum,
            unit_price: Some(10),
            including_tax: false,
            figures: Figures { usage, amount: (usage * 10.0 * tax).round() as i64 },
        };
        let known = Known {
            status,
            estimate: (usage * 10.0 * tax).round() as i64,
            currency: Currency::parse("EUR"),
            limits: Box::new([Limit { id: LimitId::new_v4(), amount: limit, action: LimitAction::Disable }]),
            metered: Box::new([Metered::new(&found, Rate::PerUnit { unit_price: 10, tax }, false)]),
            plan,
            period: None,
        };
        let snapshot = Arc::new(Snapshot::fetched_at(SnapshotData::Known(known), 0));
        (Gate::new(CustomerId::new_v4(), snapshot, None, Default::default()).unwrap(), subscription)
    }

    const CODE: &str = "enforce_test_calls";

    #[test]
    fn a_write_is_admitted_only_under_every_kind_of_limit_and_counted_by_each_then() {
        let rules = Rules::default();
        // 35 cents of money at 10 a call, and a feature limit of 2 calls.
        let (gate, _) = customer_on(0.0, 1.0, 35, CustomerStatus::Active, Plan::new([(CODE, 2)], [], 0, []));
        let mut ledger = Ledger::default();
        let to_customer = Target::Customer(gate.customer);
        let judged: Vec<Judged> =
            (0..3).map(|_| ledger.judge_event(&gate, to_customer, (CODE, 1.0), None, &rules)).collect();
        assert_eq!(
            (judged[0].admitted, &judged[0].found, judged[1].admitted),
            (true, &Findings::default(), true)
        );
        let Some((code, refused)) = &judged[2].found.feature else { panic!("{judged:?}") };
        assert_eq!(
            (judged[2].admitted, code.as_str(), refused.limit, refused.used),
            (false, CODE, Some(2), Some(2))
        );
        assert_eq!(judged[2].found.reasons.iter().collect::<Vec<_>>(), [Reason::FeatureLimitReached]);
        assert_eq!(ledger.project(&gate).amount(), 20, "the refused call cost nothing");
        // A hold of units counts against the feature too; one of money alone does not.
        let mut ledger = Ledger::default();
        assert!(ledger.judge_hold(&gate, 10, Some((CODE, 2.0)), None, &rules).admitted);
        assert!(!ledger.judge_event(&gate, to_customer, (CODE, 1.0), None, &rules).admitted);
        assert!(ledger.judge_hold(&gate, 20, None, None, &rules).admitted);
        // Over the money limit, the usage limit is named even when the feature would fit.
        let mut ledger = Ledger::default();
        assert!(ledger.judge_hold(&gate, 35, None, None, &rules).admitted);
        let over = ledger.judge_event(&gate, to_customer, (CODE, 1.0), None, &rules);
        assert_eq!((over.admitted, over.found), (false, Findings::default()));
        // Shadow mode refuses nothing.
        let shadow = Rules {
            policy: PolicySettings { mode: Mode::Shadow.into(), ..PolicySettings::default() },
            ..Rules::default()
        };
        let mut ledger = Ledger::default();
        assert!((0..5).all(|_| ledger.judge_event(&gate, to_customer, (CODE, 1.0), None, &shadow).admitted));
    }

    #[test]
    fn events_are_admitted_while_the_estimate_with_them_is_not_over_the_limit() {
        let rules = Rules::default();
        let (gate, subscription) = customer(0.0, 1.0, 35, CustomerStatus::Active);
        let mut ledger = Ledger::default();
        let to_customer = Target::Customer(gate.customer);
        let judged: Vec<(bool, i64)> = (0..4)
            .map(|_| ledger.judge_event(&gate, to_customer, (CODE, 1.0), None, &rules))
            .map(|j| (j.admitted, j.cost))
            .collect();
        assert_eq!(judged, [(true, 10), (true, 10), (true, 10), (false, 10)]);
        assert_eq!(ledger.project(&gate).amount(), 30, "the refused one is not counted");
        // Sent to the subscription, the same usage counts the same.
        let half = ledger.judge_event(&gate, Target::Subscription(subscription), (CODE, 0.5), None, &rules);
        assert_eq!((half.admitted, half.cost, half.projection.amount()), (true, 5, 30));
        // A code no price bills costs nothing, and fits while the estimate is not over the limit.
        let free = ledger.judge_event(&gate, to_customer, ("unbilled", 100.0), None, &rules);
        assert_eq!((free.admitted, free.cost), (true, 0));
    }

    #[test]
    fn events_are_priced_on_top_of_what_is_pending_with_tax_as_billabear_rounds() {
        let (gate, _) = customer(0.0, 1.19, 10_000, CustomerStatus::Active);
        let mut ledger = Ledger::default();
        let target = Target::Customer(gate.customer);
        // 0.5 units at 11.9 cents: round(5.95) = 6; another 0.5: round(11.9) - 6 = 6.
        assert_eq!(ledger.price_event(&gate, target, CODE, 0.5), 6);
        ledger.add_event(target, CODE, 0.5);
        assert_eq!(ledger.price_event(&gate, target, CODE, 0.5), 6);
        assert_eq!(ledger.project(&gate).pending, 6, "pricing left the ledger as it was");
    }

    #[test]
    fn a_counter_recorded_after_the_snapshot_counts_what_it_retired() {
        let rules = Rules::default();
        let (gate, subscription) = customer(2.0, 1.0, 50, CustomerStatus::Active);
        let mut ledger = Ledger::default();
        assert_eq!(ledger.project(&gate).amount(), 20);
        // Another replica saw the counter at 5 (and retired those 3 units from pending).
        ledger.counters.insert(subscription, 5.0);
        let projected = ledger.project(&gate);
        assert_eq!((projected.billabear, projected.pending), (50, 0));
        assert!(
            !ledger.judge_event(&gate, Target::Customer(gate.customer), (CODE, 0.1), None, &rules).admitted
        );
        // An older figure than the snapshot's changes nothing.
        ledger.counters.insert(subscription, 1.0);
        assert_eq!(ledger.project(&gate).amount(), 20);
    }

    #[test]
    fn holds_count_until_the_limit_and_a_disabled_customer_gets_nothing() {
        let rules = Rules::default();
        let (gate, _) = customer(0.0, 1.0, 100, CustomerStatus::Active);
        let mut ledger = Ledger::default();
        let granted: Vec<bool> =
            [60, 40, 1].iter().map(|a| ledger.judge_hold(&gate, *a, None, None, &rules).admitted).collect();
        assert_eq!(granted, [true, true, false]);
        assert_eq!(ledger.project(&gate).reserved, 100);
        assert!(
            !ledger.judge_event(&gate, Target::Customer(gate.customer), (CODE, 0.1), None, &rules).admitted
        );

        let (disabled, _) = customer(0.0, 1.0, 100, CustomerStatus::Disabled);
        assert!(!Ledger::default().judge_hold(&disabled, 0, None, None, &rules).admitted);
        let shadow = Rules {
            policy: PolicySettings { mode: Mode::Shadow.into(), ..PolicySettings::default() },
            ..Rules::default()
        };
        assert!(
            Ledger::default().judge_hold(&disabled, 0, None, None, &shadow).admitted,
            "shadow mode never refuses"
        );
    }

    #[test]
    fn a_stored_hold_stands_as_judged_before_it_whatever_the_limit_says_now() {
        let rules = Rules::default();
        let (gate, _) = customer(0.0, 1.0, 100, CustomerStatus::Active);
        let mut ledger = Ledger::default();
        // This hold (60) and another (40).
        let open = |amount| OpenHold { subject: None, code: None, units: 0.0, amount };
        ledger.holds.insert(gate.customer, vec![open(60), open(40)]);
        let stored = ledger.stored_hold(&gate, 60);
        assert_eq!((stored.admitted, stored.projection.reserved, stored.cost), (true, 40, 60));
        assert!(!ledger.judge_hold(&gate, 1, None, None, &rules).admitted, "the limit is full all the same");
        assert_eq!(Ledger::default().stored_hold(&gate, 60).projection.reserved, 0, "never below zero");
    }
}
