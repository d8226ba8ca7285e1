//! The kinds of limit an enforced write is judged under, one entry each in [`KINDS`]: a write is
//! admitted only if no kind refuses it (all or nothing, under the policy's mode and the
//! operator's override), and then every kind counts it. A new kind is a type implementing
//! [`Kind`] and its entry in the table (README, "Add a limit kind").

use chrono::{DateTime, Utc};

use super::{Gate, Ledger, Rules};
use crate::domain::Target;
use crate::entitlements::{self, Bounds, FeatureCode, Window};
use crate::policy::{self, Reason};
use crate::projection::Projection;

/// What is being written.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// An event, sent to `target`.
    Event { target: Target, code: &'a str, value: f64 },
    /// A hold of `amount` (minor units), and of an event's units when it was asked as one.
    Hold { amount: i64, event: Option<(&'a str, f64)> },
}

impl Write<'_> {
    /// The event code and units it counts towards a feature with.
    fn units(&self) -> Option<(&str, f64)> {
        match *self {
            Write::Event { code, value, .. } => Some((code, value)),
            Write::Hold { event, .. } => event,
        }
    }
}

/// What every kind judges a write with: the customer's gate, the rules, its projected estimate
/// before the write and the write's price, and the clock.
pub struct Judging<'a> {
    pub gate: &'a Gate,
    pub rules: &'a Rules,
    pub projection: Projection,
    pub cost: i64,
    pub now: DateTime<Utc>,
}

/// The limit that refused a write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Binding {
    /// The customer's usage limits in money, or its status (the decision says which).
    Usage,
    /// A feature limit of the plan, counted by usage-gate.
    Feature(FeatureBinding),
}

impl Binding {
    /// The reason the decision gives for it beside the policy's own.
    fn reason(&self) -> Option<Reason> {
        match self {
            Binding::Usage => None,
            Binding::Feature(_) => Some(Reason::FeatureLimitReached),
        }
    }
}

/// A feature limit that refused: how much was used of it in its window before the write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureBinding {
    pub code: FeatureCode,
    pub limit: u64,
    pub used: f64,
    pub window: Window,
    pub bounds: Bounds,
}

/// One kind of limit.
pub trait Kind: Sync {
    /// The limit of this kind the write would pass, if any.
    fn refuses(&self, judging: &Judging, ledger: &Ledger, write: &Write) -> Option<Binding>;
    /// Counts an admitted write.
    fn count(&self, judging: &Judging, ledger: &mut Ledger, write: &Write);
}

/// Every kind, in the order a refusal is named by.
pub static KINDS: &[&dyn Kind] = &[&UsageInMoney, &FeatureLimit];

/// The verdict over every kind: admitted, and the limit that refused otherwise.
pub fn judge(judging: &Judging, ledger: &Ledger, write: &Write) -> (bool, Option<Binding>) {
    let bindings: Vec<Binding> = KINDS.iter().filter_map(|k| k.refuses(judging, ledger, write)).collect();
    let mut usage = judging.gate.known().usage(&judging.projection);
    for reason in bindings.iter().filter_map(Binding::reason) {
        usage.plan.insert(reason);
    }
    // No kind gave a reason of its own: the money kind's verdict (mode and override applied)
    // is the whole one, so the policy is not asked twice on the enforced path.
    let allowed = if usage.plan.is_empty() {
        bindings.is_empty()
    } else {
        let effect = judging.gate.applied.map(|o| o.effect);
        policy::decide_with(&usage, Some(judging.cost), effect, &judging.rules.policy).allowed
    };
    (allowed, if allowed { None } else { bindings.first().copied().or(Some(Binding::Usage)) })
}

/// BillaBear's usage limits in money, as the policy judges them with the write's price.
struct UsageInMoney;

impl Kind for UsageInMoney {
    fn refuses(&self, judging: &Judging, _: &Ledger, _: &Write) -> Option<Binding> {
        let usage = judging.gate.known().usage(&judging.projection);
        let effect = judging.gate.applied.map(|o| o.effect);
        let verdict = policy::decide_with(&usage, Some(judging.cost), effect, &judging.rules.policy);
        (!verdict.allowed).then_some(Binding::Usage)
    }

    fn count(&self, judging: &Judging, ledger: &mut Ledger, write: &Write) {
        match *write {
            Write::Event { target, code, value } => ledger.add_event(target, code, value),
            Write::Hold { amount, .. } => {
                let reserved = ledger.reserved.entry(judging.gate.customer).or_default();
                *reserved = reserved.saturating_add(amount);
            }
        }
    }
}

/// The plan's limit of the feature the write's code counts towards (`entitlements.metrics`).
struct FeatureLimit;

impl FeatureLimit {
    /// The limited feature the write counts towards, its limit and its window now.
    fn applies(
        &self,
        judging: &Judging,
        ledger: &Ledger,
        write: &Write,
    ) -> Option<(FeatureCode, u64, Window, Bounds, f64)> {
        let (code, units) = write.units()?;
        let settings = &judging.rules.entitlements;
        let feature = settings.counted_as(code)?;
        let known = judging.gate.known();
        let limit = known.plan.features().iter().find(|f| f.code == feature)?.limit()?;
        let window = settings.window(feature);
        // Placed as the statement storing it places it: by the period Postgres has recorded.
        let period = ledger.periods.get(&judging.gate.customer).copied().or(known.period);
        let bounds = window.bounds(judging.now, settings.zone(), period);
        Some((feature, limit, window, bounds, units))
    }
}

impl Kind for FeatureLimit {
    fn refuses(&self, judging: &Judging, ledger: &Ledger, write: &Write) -> Option<Binding> {
        let (code, limit, window, bounds, units) = self.applies(judging, ledger, write)?;
        let used = ledger.feature_used(judging.gate, code, bounds.start);
        (!entitlements::fits(used, units, limit)).then_some(Binding::Feature(FeatureBinding {
            code,
            limit,
            used,
            window,
            bounds,
        }))
    }

    fn count(&self, judging: &Judging, ledger: &mut Ledger, write: &Write) {
        let Some((code, _, _, bounds, units)) = self.applies(judging, ledger, write) else { return };
        match *write {
            Write::Event { target, .. } => {
                *ledger.features.entry((target, code, bounds.start)).or_default() += units
            }
            Write::Hold { .. } => *ledger.held.entry((judging.gate.customer, code)).or_default() += units,
        }
    }
}
