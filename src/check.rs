//! A check: look the customer up in the cache, let the policy decide, and explain the answer.

use metrics::Counter;
use serde::Serialize;

use crate::billabear::BillaBearError;
use crate::cache::SnapshotCache;
use crate::domain::Currency;
use crate::domain::{CustomerId, CustomerStatus, LimitAction, LimitId, PlanId, Target, Timestamp};
use crate::enforce::{Gate, Judged};
use crate::entitlements::FeatureCode;
use crate::entitlements::{self, Counted, EntitlementSettings, PlanAsk};
use crate::feature_counts::FeatureCounts;
use crate::judgement::RuleTally;
use crate::judgement::rule::{self, Added, RuleAsk};
use crate::judgement::{self, Case, Counts, FeatureJudged, Findings, Question, RuleJudged, SeatsJudged};
use crate::outbox::IncomingEvent;
use crate::overrides::{Override, OverrideView, Overrides};
use crate::pending::Pending;
use crate::policy::{self, PolicySettings, Reason, Reasons, Status, Verdict};
use crate::projection::{PendingUsage, Projection};
use crate::reservations::Holds;
use crate::rules::Rulebook;
use crate::rules::counts::RuleCounts;
use crate::snapshot::{Known, Lookup, Snapshot, SnapshotData, Source, now_ms};

mod wire;

/// Decisions of every shape, for tests that write them.
#[cfg(test)]
pub(crate) use wire::tests::decisions as every_shape_of_decision;

/// The answer to "may this customer keep using the product?", with what it is based on.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Decision {
    #[schema(value_type = String, format = Uuid)]
    pub customer_id: CustomerId,
    pub allowed: bool,
    pub status: Status,
    /// Stable codes: customer_disabled, disable_limit_exceeded, would_exceed_disable_limit,
    /// warning_limit_exceeded, near_limit, customer_not_found, upstream_unavailable,
    /// upstream_budget_exhausted, pending_usage_exceeds_limit, override_allow, override_block,
    /// override_raise, feature_not_in_plan, feature_limit_reached, seats_exceeded,
    /// rule_limit_exceeded, would_exceed_rule_limit, soft_limit_exceeded.
    #[schema(value_type = Vec<String>)]
    pub reasons: Reasons,
    /// The projected cost estimate for the period that every rule judges (minor units, tax
    /// included): BillaBear's figure plus usage it has not counted yet; null when unknown.
    pub estimate: Option<Estimate>,
    /// The `cost` asked about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<i64>,
    /// What the plan says of the `feature` asked about (absent when none was, or when the
    /// customer's plan is not known: unknown customer, fallback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<Box<FeatureView>>,
    /// The `seats` asked for and the plan's user count (absent as `feature` is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seats: Option<Box<SeatsView>>,
    /// usage-gate's own rules: on a check, every rule that binds the customer (and, per
    /// subject, the `subject` asked about); on a refused write, the rules that refused it.
    /// Absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleJudged>,
    pub limits: Vec<LimitView>,
    /// BillaBear's customer status (active, disabled, ...); null when unknown.
    #[schema(value_type = Option<String>)]
    pub customer_status: Option<CustomerStatus>,
    /// True when BillaBear could not be asked and the fallback policy answered.
    pub fallback: bool,
    pub source: Source,
    /// When BillaBear gave the data this is based on (RFC 3339, UTC).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub as_of: Option<Timestamp>,
    pub age_ms: Option<u64>,
    /// Shadow mode: whether enforcing would have denied. Under an override: whether the
    /// decision without it would have denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_block: Option<bool>,
    /// The operator's override in force, which decided this answer.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub applied_override: Option<OverrideView>,
}

/// The estimate and its parts, in minor units of its ISO 4217 currency ("" when BillaBear has
/// none), tax included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Estimate {
    /// `billabear` + `pending` + `reserved`: what every rule judges.
    pub amount: i64,
    #[schema(value_type = String)]
    pub currency: Currency,
    /// BillaBear's last estimate (its counter runs about once a minute).
    pub billabear: i64,
    /// What the events usage-gate accepted and BillaBear has not counted yet cost, priced as
    /// BillaBear prices them.
    pub pending: i64,
    /// How many such events.
    pub pending_events: u64,
    /// What the customer's open reservations (holds) set aside.
    pub reserved: i64,
    /// `pending` is priced approximately (a tiered price, a metric aggregated by max, latest or
    /// unique_count, or tax BillaBear's figures do not show yet): see docs/enforcement.md.
    pub approximate: bool,
    /// When BillaBear gave its figure (RFC 3339, UTC).
    #[schema(value_type = String, format = DateTime)]
    pub as_of: Timestamp,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LimitView {
    #[schema(value_type = String, format = Uuid)]
    pub id: LimitId,
    pub amount: i64,
    pub action: LimitAction,
    /// The estimate is strictly greater than the amount.
    pub exceeded: bool,
    /// How much more may be spent before it is exceeded (0 when it is).
    pub remaining: i64,
}

/// Field by field as `Decision::write_json` writes it (its tests hold the two to one another).
impl Serialize for RuleJudged {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Whole(f64);
        impl Serialize for Whole {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                whole_when_whole(&self.0, s)
            }
        }
        let shape = self.rule.shape();
        let mut out = s.serialize_struct("RuleView", 9)?;
        out.serialize_field("id", &self.rule.id)?;
        out.serialize_field("measure", &shape.measure)?;
        out.serialize_field("window", &shape.window)?;
        out.serialize_field("mode", shape.mode.as_str())?;
        out.serialize_field("limit", &self.limit)?;
        out.serialize_field("used", &Whole(self.used))?;
        if let Some(subject) = &self.subject {
            out.serialize_field("subject", subject)?;
        }
        if let Some(resets_at) = &self.resets_at {
            out.serialize_field("resets_at", resets_at)?;
        }
        if let Some(reason) = self.reason {
            out.serialize_field("reason", reason.code())?;
        }
        out.end()
    }
}

/// A count as a whole number when it is one (money always is), else as it is.
pub fn whole_when_whole<S: serde::Serializer>(n: &f64, s: S) -> Result<S::Ok, S::Error> {
    if n.fract() == 0.0 && n.abs() < 9.0e15 { s.serialize_i64(*n as i64) } else { s.serialize_f64(*n) }
}

/// What the plan says of the feature asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FeatureView {
    /// The code asked about.
    pub code: String,
    /// The plan includes it: listed among its features, or carrying a limit.
    pub included: bool,
    /// The plan's limit for it, summed over the customer's active subscriptions; absent for a
    /// feature without a count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// How many are in use: `in_use` as the caller counted it, or else what usage-gate counted
    /// of the feature's events in its window, rounded up (an enforced write is judged with
    /// open holds' units too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    /// `limit - used`, never negative.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// The window usage-gate counts it over (`hour`, `day`, `week`, `month`,
    /// `billing_period`); absent when the caller gave `in_use`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<&'static str>,
    /// When the window ends and the count restarts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resets_at: Option<Timestamp>,
}

impl FeatureView {
    /// The answer's view of what the plan said of feature `code`.
    fn of((code, judged): (String, FeatureJudged)) -> Self {
        FeatureView {
            code,
            included: judged.included,
            limit: judged.limit,
            used: judged.used,
            remaining: judged.remaining(),
            window: judged.window.map(|(window, _)| window.as_str()),
            resets_at: judged.window.map(|(_, end)| Timestamp(end.max(0) as u64 * 1000)),
        }
    }
}

/// The seats asked for beside the plan's user count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SeatsView {
    pub requested: u64,
    /// The plan's user count; null when the plan sets none (a count of 0 read as unlimited,
    /// `entitlements.zero_user_count`).
    pub limit: Option<u64>,
}

crate::domain::moved_fields!(SeatsJudged => SeatsView { requested, limit });

/// What a known customer is judged with: its projected estimate, and what the kinds of limit
/// besides money found (`judgement`).
pub type Judging = (Projection, Findings);

/// Judging a known customer on its usage alone, with the estimate `project` makes of it (a
/// decision that asks nothing of the plan: a transition's, a test's).
pub fn on_usage(project: impl FnOnce(&Known) -> Projection) -> impl FnOnce(&Known) -> Judging {
    move |known| (project(known), Findings::default())
}

impl Decision {
    /// The lowest DISABLE limit: the one that blocks first.
    pub fn lowest_disable_limit(&self) -> Option<i64> {
        policy::lowest_disable_limit(self.limits.iter().map(|l| (l.amount, l.action)))
    }

    /// The decision's [`Mark`], if it is about usage (a known customer).
    pub fn mark(&self) -> Option<Mark> {
        let estimate = self.estimate.as_ref()?;
        Some(Mark { status: self.status, band: policy::band(estimate.amount, self.lowest_disable_limit()) })
    }
}

/// A customer's plan and what usage-gate counted of it (for the console).
#[derive(Debug, Clone)]
pub struct PlanState {
    pub plan: entitlements::Plan,
    /// One per `plan.features()`: what was counted in the feature's window, for a limited one.
    pub counted: Vec<Option<Counted>>,
}

/// How a customer's enforced writes are judged (see [`Checker::enforcement`]).
#[derive(Debug, Clone)]
pub enum Enforcement {
    /// Against this snapshot, under the customer's lock; `lookup` explains a refusal.
    Gate { gate: Gate, lookup: Lookup },
    /// By this decision (unknown customer, or BillaBear unreachable with nothing cached).
    Decided(Decision),
}

/// Decision counters, registered once so the hot path does no registry lookups.
struct DecisionMetrics {
    by_status: [Counter; 4],
    by_reason: [Counter; Reason::ALL.len()],
    shadow_would_block: Counter,
}

impl DecisionMetrics {
    fn new() -> Self {
        Self {
            by_status: Status::ALL
                .map(|s| metrics::counter!("usage_gate_decisions_total", "status" => s.as_str())),
            by_reason: Reason::ALL
                .map(|r| metrics::counter!("usage_gate_decision_reasons_total", "reason" => r.code())),
            shadow_would_block: metrics::counter!("usage_gate_shadow_would_block_total"),
        }
    }

    fn record(&self, decision: &Decision) {
        self.by_status[decision.status as usize].increment(1);
        for reason in decision.reasons.iter() {
            self.by_reason[reason as usize].increment(1);
        }
        if decision.would_block == Some(true) {
            self.shadow_would_block.increment(1);
        }
    }
}

/// Answers checks: the cache, the policy, and the metrics of both.
pub struct Checker {
    pub cache: SnapshotCache,
    /// This replica's copy of the pending usage, added to BillaBear's estimates.
    pub pending: Pending,
    /// This replica's copy of the open holds, added too.
    pub holds: Holds,
    /// This replica's copy of the open overrides.
    pub overrides: Overrides,
    /// This replica's copy of the feature limits' counts.
    pub counts: FeatureCounts,
    /// This replica's copy of usage-gate's rules.
    pub rules: Rulebook,
    /// This replica's copy of what the rules counted.
    pub rule_counts: RuleCounts,
    policy: PolicySettings,
    entitlements: EntitlementSettings,
    metrics: DecisionMetrics,
}

impl Checker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cache: SnapshotCache,
        pending: Pending,
        holds: Holds,
        overrides: Overrides,
        counts: FeatureCounts,
        (rules, rule_counts): (Rulebook, RuleCounts),
        policy: PolicySettings,
        entitlements: EntitlementSettings,
    ) -> Self {
        Self {
            cache,
            pending,
            holds,
            overrides,
            counts,
            rules,
            rule_counts,
            policy,
            entitlements,
            metrics: DecisionMetrics::new(),
        }
    }

    pub fn entitlements(&self) -> &EntitlementSettings {
        &self.entitlements
    }

    pub fn policy(&self) -> &PolicySettings {
        &self.policy
    }

    /// `cost`: minor units the caller is about to spend (not negative).
    pub async fn check(&self, id: CustomerId, cost: Option<i64>) -> Decision {
        let lookup = self.cache.lookup(id).await;
        self.explain(id, cost, lookup)
    }

    /// [`Checker::check`], asking of the plan too (a feature, seats).
    pub async fn check_plan(&self, id: CustomerId, cost: Option<i64>, plan: &PlanAsk) -> Decision {
        let lookup = self.cache.lookup(id).await;
        self.explain_replacing(id, cost, plan, lookup, None)
    }

    /// The customer's plan as the cache holds it, with what usage-gate counted of each limited
    /// feature in its window now (none: not cached, or not a known customer).
    pub fn plan(&self, id: CustomerId) -> Option<PlanState> {
        let SnapshotData::Known(known) = &self.cache.cached(id)?.snapshot?.data else { return None };
        let now = chrono::Utc::now();
        let counted = known
            .plan
            .features()
            .iter()
            .map(|f| f.limit().map(|_| self.counts.counted(id, known, f.code, &self.entitlements, now)))
            .collect();
        Some(PlanState { plan: known.plan.clone(), counted })
    }

    /// The BillaBear plans of the customer's active subscriptions, as the cache holds them (none
    /// when it is not cached or not a known customer).
    pub fn plans(&self, id: CustomerId) -> Vec<PlanId> {
        match self.cache.cached(id).and_then(|l| l.snapshot).as_deref().map(|s| &s.data) {
            Some(SnapshotData::Known(known)) => known.plan.plans().to_vec(),
            _ => vec![],
        }
    }

    /// What an event of the customer's stored without enforcement adds to the rules that bind
    /// it, priced on the snapshot this replica has cached (none cached: nothing is counted, and
    /// BillaBear is not asked for it).
    pub fn tallies(&self, id: CustomerId, event: &IncomingEvent) -> Vec<RuleTally> {
        let Some(snapshot) = self.cache.cached(id).and_then(|l| l.snapshot) else { return vec![] };
        let SnapshotData::Known(known) = &snapshot.data else { return vec![] };
        let rules = self.rules.applicable(id, known.plan.plans());
        if rules.is_empty() {
            return vec![];
        }
        let (code, value) = (event.code.as_str(), event.value);
        let added = Added { cost: known.price(event.target, code, value), units: Some((code, value)) };
        rule::tallies(&rules, id, event.subject.as_ref(), added, now_ms() as i64, known.period)
    }

    /// How the customer's enforced writes are judged: against its snapshot under its lock, or,
    /// when BillaBear does not know it or cannot be asked, by the fallback policy's decision.
    pub async fn enforcement(&self, id: CustomerId) -> Enforcement {
        let lookup = self.cache.lookup(id).await;
        let applied = self.overrides.active(id, now_ms());
        let rules = match lookup.snapshot.as_deref().map(|s| &s.data) {
            Some(SnapshotData::Known(known)) => self.rules.applicable(id, known.plan.plans()),
            _ => Default::default(),
        };
        match lookup.snapshot.clone().and_then(|snapshot| Gate::new(id, snapshot, applied, rules)) {
            Some(gate) => Enforcement::Gate { gate, lookup },
            None => Enforcement::Decided(self.explain(id, None, lookup)),
        }
    }

    /// The decision from the cache alone, if it holds something usable (never calls BillaBear),
    /// with `pending` as what is pending under the customer itself: for an answer that must
    /// count the events it stored (see `routes::events`).
    pub fn decision_with_pending(&self, id: CustomerId, pending: &[PendingUsage]) -> Option<Decision> {
        let lookup = self.cache.cached(id)?;
        let replaced = Some((Target::Customer(id), pending));
        Some(self.explain_replacing(id, None, &PlanAsk::default(), lookup, replaced))
    }

    /// Refetches the customer from BillaBear now and decides on the new data.
    pub async fn refresh(&self, id: CustomerId) -> Result<Decision, BillaBearError> {
        let snapshot = self.cache.refresh(id).await?;
        Ok(self.explain(id, None, Lookup::found(snapshot, Source::Upstream)))
    }

    /// The decision on a lookup (the cache's answer for the customer).
    pub fn explain(&self, id: CustomerId, cost: Option<i64>, lookup: Lookup) -> Decision {
        self.explain_replacing(id, cost, &PlanAsk::default(), lookup, None)
    }

    /// As [`Checker::explain`], asking `plan` of it, with `replaced`'s target read as holding
    /// its entries (see [`Pending::project_replacing`]).
    fn explain_replacing(
        &self,
        id: CustomerId,
        cost: Option<i64>,
        plan: &PlanAsk,
        lookup: Lookup,
        replaced: Option<(Target, &[PendingUsage])>,
    ) -> Decision {
        let now = now_ms();
        let judge = |known: &Known| {
            let rules = self.rules.applicable(id, known.plan.plans());
            let projection = Projection {
                reserved: self.holds.reserved(id, now),
                ..self.pending.project_replacing(id, known, replaced)
            };
            let case = Case {
                customer: id,
                known,
                projection: &projection,
                cost,
                question: Question::Check(plan),
                settings: &self.entitlements,
                now_ms: now,
                rules: &rules,
                subject: plan.subject.as_ref(),
            };
            let found = judgement::find(&case, self);
            (projection, found)
        };
        self.explain_judging(id, cost, lookup, judge, now)
    }

    /// The decision an enforced write was judged by: its projection, read under the
    /// customer's lock, its price as `cost`, and what the kinds of limit found then.
    pub fn explain_judged(&self, id: CustomerId, lookup: Lookup, judged: &Judged) -> Decision {
        let judging = (judged.projection, judged.found.clone());
        self.explain_judging(id, Some(judged.cost), lookup, |_: &Known| judging, now_ms())
    }

    /// The decision on a lookup with a projection made elsewhere (under the customer's lock).
    pub fn explain_with(
        &self,
        id: CustomerId,
        cost: Option<i64>,
        lookup: Lookup,
        projection: Projection,
    ) -> Decision {
        self.explain_judging(id, cost, lookup, on_usage(|_| projection), now_ms())
    }

    fn explain_judging(
        &self,
        id: CustomerId,
        cost: Option<i64>,
        lookup: Lookup,
        judge: impl FnOnce(&Known) -> Judging,
        now: u64,
    ) -> Decision {
        let applied = self.overrides.active(id, now);
        let decision = explain(id, cost, lookup, judge, applied.as_ref(), &self.policy, now);
        self.metrics.record(&decision);
        decision
    }
}

/// A check reads this replica's copies.
impl Counts for Checker {
    fn used(&self, case: &Case, feature: FeatureCode, start: i64) -> f64 {
        self.counts.used(case.customer, case.known, feature, start)
    }

    /// One read of the copy for every rule: five reads cost ~750 instructions a check
    /// (`bench/check_instructions.py --rules`).
    fn rules_used(&self, case: &Case, asks: &mut [RuleAsk]) {
        self.rule_counts.used_all(case.customer, asks);
    }
}

/// The [`Mark`] a snapshot of a known customer decides with the estimate `project` makes of it,
/// under the override `applied` (`None` for unknown customers and the unavailable marker).
pub fn usage_mark(
    data: &SnapshotData,
    project: impl FnOnce(&Known) -> Projection,
    applied: Option<&Override>,
    settings: &PolicySettings,
) -> Option<Mark> {
    let SnapshotData::Known(known) = data else { return None };
    let usage = known.usage(&project(known));
    let status = policy::decide_with(&usage, None, applied.map(|o| o.effect), settings).status;
    Some(Mark {
        status,
        band: policy::band(
            usage.estimate,
            policy::lowest_disable_limit(known.limits.iter().map(|l| (l.amount, l.action))),
        ),
    })
}

/// What is recorded of a customer's decision when it changes: its status, and how far its
/// estimate has come towards its lowest DISABLE limit ([`policy::band`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub status: Status,
    pub band: Option<u8>,
}

/// Builds the explained decision from a lookup, judging a known customer's snapshot as `judge`
/// says (its projected estimate, and what the other kinds of limit found) with its money limits,
/// under the override `applied` (in force at `now`). Pure: `now` is passed in.
pub fn explain(
    id: CustomerId,
    cost: Option<i64>,
    lookup: Lookup,
    judge: impl FnOnce(&Known) -> Judging,
    applied: Option<&Override>,
    settings: &PolicySettings,
    now: u64,
) -> Decision {
    let effect = applied.map(|o| o.effect);
    let empty = |verdict: Verdict, source: Source, snapshot: Option<&Snapshot>| Decision {
        customer_id: id,
        allowed: verdict.allowed,
        status: verdict.status,
        reasons: verdict.reasons,
        estimate: None,
        cost,
        feature: None,
        seats: None,
        rules: vec![],
        limits: vec![],
        customer_status: None,
        fallback: source == Source::Fallback,
        source,
        as_of: snapshot.map(|s| Timestamp(s.fetched_at_ms)),
        age_ms: snapshot.map(|s| s.age_ms(now)),
        would_block: verdict.would_block,
        applied_override: applied.map(Override::view),
    };
    let Some(snapshot) = lookup.snapshot else {
        let why = if lookup.budget_exhausted {
            Reason::UpstreamBudgetExhausted
        } else {
            Reason::UpstreamUnavailable
        };
        return empty(policy::upstream_unavailable(why, effect, settings), Source::Fallback, None);
    };
    let known = match &snapshot.data {
        SnapshotData::Known(known) => known,
        SnapshotData::NotFound => {
            return empty(policy::unknown_customer(effect, settings), lookup.source, Some(snapshot.as_ref()));
        }
        SnapshotData::Unavailable => {
            return empty(
                policy::upstream_unavailable(Reason::UpstreamUnavailable, effect, settings),
                Source::Fallback,
                None,
            );
        }
    };
    let (projection, found) = judge(known);
    let amount = projection.amount();
    let usage = policy::Usage { others: found.reasons, ..known.usage(&projection) };
    let verdict = policy::decide_with(&usage, cost, effect, settings);
    Decision {
        feature: found.feature.map(|f| Box::new(FeatureView::of(f))),
        seats: found.seats.map(|seats| Box::new(SeatsView::from(seats))),
        rules: found.rules,
        limits: known
            .limits
            .iter()
            .map(|l| LimitView {
                id: l.id,
                amount: l.amount,
                action: l.action,
                exceeded: l.exceeded_by(amount),
                remaining: l.remaining(amount),
            })
            .collect(),
        estimate: Some(Estimate {
            amount,
            currency: known.currency,
            billabear: projection.billabear,
            pending: projection.pending,
            pending_events: projection.pending_events,
            reserved: projection.reserved,
            approximate: projection.approximate,
            as_of: Timestamp(snapshot.fetched_at_ms),
        }),
        customer_status: Some(known.status.clone()),
        ..empty(verdict, lookup.source, Some(snapshot.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::{FailMode, Limit};
    use crate::snapshot::{Known, Snapshot};

    const NOW: u64 = 1_800_000_000_000;

    fn lookup(data: SnapshotData, age_ms: u64, source: Source) -> Lookup {
        Lookup::found(Arc::new(Snapshot::fetched_at(data, NOW - age_ms)), source)
    }

    fn known(estimate: i64, limits: &[(i64, LimitAction)]) -> SnapshotData {
        SnapshotData::Known(Known {
            status: CustomerStatus::Active,
            estimate,
            currency: Currency::parse("EUR"),
            limits: limits
                .iter()
                .map(|&(amount, action)| Limit { id: LimitId::new_v4(), amount, action })
                .collect(),
            metered: Box::new([]),
            plan: Default::default(),
            period: None,
        })
    }

    /// BillaBear's figure alone.
    fn counted(known: &Known) -> Projection {
        Projection::counted(known.estimate)
    }

    /// BillaBear's figure plus `pending` minor units from one pending event.
    fn with_pending(pending: i64) -> impl FnOnce(&Known) -> Projection {
        move |known| Projection { pending, pending_events: 1, ..Projection::counted(known.estimate) }
    }

    #[test]
    fn usage_mark_is_the_policys_status_and_the_band_for_known_customers_only() {
        let settings = PolicySettings::default();
        let disable = &[(100, LimitAction::Disable)];
        let mark = |data: &SnapshotData, project: fn(&Known) -> Projection| {
            usage_mark(data, project, None, &settings).map(|m| (m.status, m.band))
        };
        assert_eq!(mark(&known(10, disable), counted), Some((Status::Ok, Some(2))));
        assert_eq!(mark(&known(100, disable), counted), Some((Status::Warning, Some(20))), "near the limit");
        assert_eq!(mark(&known(101, disable), counted), Some((Status::Blocked, Some(20))));
        assert_eq!(
            usage_mark(&known(10, disable), with_pending(91), None, &settings).map(|m| (m.status, m.band)),
            Some((Status::Blocked, Some(20))),
            "pending usage counts"
        );
        assert_eq!(mark(&known(10, &[(100, LimitAction::Warning)]), counted), Some((Status::Ok, None)));
        assert_eq!(mark(&SnapshotData::NotFound, counted), None);
        assert_eq!(mark(&SnapshotData::Unavailable, counted), None);
    }

    #[test]
    fn pending_usage_is_judged_and_explained() {
        let d = explain(
            CustomerId::new_v4(),
            None,
            lookup(known(60, &[(100, LimitAction::Disable)]), 0, Source::Cache),
            on_usage(with_pending(45)),
            None,
            &PolicySettings::default(),
            NOW,
        );
        assert_eq!((d.allowed, d.status), (false, Status::Blocked));
        assert_eq!(
            d.reasons.iter().collect::<Vec<_>>(),
            [Reason::DisableLimitExceeded, Reason::PendingUsageExceedsLimit]
        );
        let estimate = d.estimate.unwrap();
        assert_eq!(
            (estimate.amount, estimate.billabear, estimate.pending, estimate.pending_events),
            (105, 60, 45, 1)
        );
        assert_eq!((d.limits[0].exceeded, d.limits[0].remaining), (true, 0));
    }

    #[test]
    fn a_stale_snapshot_still_decides_and_says_how_old_it_is() {
        let id = CustomerId::new_v4();
        let d = explain(
            id,
            None,
            lookup(known(150, &[(100, LimitAction::Disable)]), 45_000, Source::Stale),
            on_usage(counted),
            None,
            &PolicySettings::default(),
            NOW,
        );
        assert_eq!(
            (d.allowed, d.status, d.source, d.fallback),
            (false, Status::Blocked, Source::Stale, false)
        );
        assert_eq!(d.age_ms, Some(45_000));
        assert_eq!(
            d.estimate,
            Some(Estimate {
                amount: 150,
                currency: Currency::parse("EUR"),
                billabear: 150,
                pending: 0,
                pending_events: 0,
                reserved: 0,
                approximate: false,
                as_of: Timestamp(NOW - 45_000),
            })
        );
        assert_eq!((d.limits[0].exceeded, d.limits[0].remaining), (true, 0));
        assert_eq!(d.as_of, Some(Timestamp(NOW - 45_000)));
    }

    #[test]
    fn no_snapshot_or_an_unavailable_marker_is_the_fallback_policy() {
        let id = CustomerId::new_v4();
        let closed = PolicySettings { fail_mode: FailMode::Closed.into(), ..PolicySettings::default() };
        for lookup in [Lookup::fallback(false), lookup(SnapshotData::Unavailable, 10, Source::Cache)] {
            let d = explain(id, Some(5), lookup, on_usage(counted), None, &closed, NOW);
            assert_eq!(
                (d.allowed, d.status, d.fallback, d.source),
                (false, Status::Unknown, true, Source::Fallback)
            );
            assert_eq!(d.reasons.iter().collect::<Vec<_>>(), [Reason::UpstreamUnavailable]);
            assert_eq!((d.estimate, d.as_of, d.age_ms, d.cost), (None, None, None, Some(5)));
        }
    }

    #[test]
    fn a_cold_customer_past_the_fetch_budget_is_the_fallback_saying_so() {
        let d = explain(
            CustomerId::new_v4(),
            None,
            Lookup::fallback(true),
            on_usage(counted),
            None,
            &PolicySettings::default(),
            NOW,
        );
        assert_eq!((d.allowed, d.status, d.fallback), (true, Status::Unknown, true));
        assert_eq!(d.reasons.iter().collect::<Vec<_>>(), [Reason::UpstreamBudgetExhausted]);
    }

    #[test]
    fn a_customer_billabear_does_not_know_is_unknown_with_its_age() {
        let d = explain(
            CustomerId::new_v4(),
            None,
            lookup(SnapshotData::NotFound, 3, Source::Cache),
            on_usage(counted),
            None,
            &PolicySettings::default(),
            NOW,
        );
        assert_eq!((d.allowed, d.status, d.fallback, d.age_ms), (false, Status::Unknown, false, Some(3)));
        assert_eq!(d.reasons.iter().collect::<Vec<_>>(), [Reason::CustomerNotFound]);
    }
}
