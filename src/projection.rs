//! The projected estimate: BillaBear's last figure plus the usage usage-gate accepted that
//! BillaBear's counter has not counted yet, priced as BillaBear prices it. Pure: the pending
//! ledger (`pending`) feeds it, the check and the policy read its result.
//!
//! Pricing, per usage subscription (API.md §3, §6.2, §6.3):
//! - `sum` metrics count `value`, `count` metrics one unit per event (usage-gate keeps one row
//!   per `event_id`, so events are distinct ids);
//! - a per-unit price (`price.amount` set) costs `round(usage × amount × tax)`, where `tax` is the
//!   factor BillaBear's own figures imply (its `amount` against `usage × price`), snapped to the
//!   simplest tax rate those rounded figures allow; pending usage costs the growth of that figure,
//!   so after BillaBear counts it the projection equals its estimate to the minor unit;
//! - a price the API does not describe (tiers: `price.amount` null) uses the marginal rate of
//!   BillaBear's last two figures (their average while there is only one), and says
//!   `approximate`; so do metrics aggregated otherwise (max, latest, unique_count), which are not
//!   projected at all.

use crate::domain::{Interner, SubscriptionId};

/// How a metric's events become usage (BillaBear's `aggregation_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Sum,
    Count,
    /// max, latest, unique_count: not projected.
    Other,
}

impl Aggregation {
    pub fn parse(method: Option<&str>) -> Self {
        match method {
            Some("count") => Aggregation::Count,
            // BillaBear's default, and the simulator's.
            Some("sum") | None => Aggregation::Sum,
            Some(_) => Aggregation::Other,
        }
    }
}

/// What one unit of usage costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// `price.amount` minor units per unit, times a tax factor.
    PerUnit { unit_price: i64, tax: f64 },
    /// Minor units per unit, the marginal rate BillaBear's figures imply (approximate).
    Marginal(f64),
}

/// BillaBear's figure for one subscription: its counter and the price of it (tax included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub usage: f64,
    pub amount: i64,
}

/// A metric code a usage price bills, interned: a million snapshots share a few codes, and a
/// check compares them as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(u32);

static CODES: Interner = Interner::new();

impl Code {
    /// The code of a price BillaBear listed (BillaBear's metrics: few).
    pub fn intern(code: &str) -> Code {
        Code::intern_telling(code).0
    }

    /// As [`Code::intern`], and whether this call interned it: a fetch that does has met a code
    /// whose pending usage the ledger's copy did not keep until now.
    pub fn intern_telling(code: &str) -> (Code, bool) {
        let (number, new) = CODES.intern_telling(code);
        (Code(number), new)
    }

    /// The code, if some price listed it: an event's code that none did is priced by no
    /// subscription (and is not interned, so events cannot grow the table).
    pub fn known(code: &str) -> Option<Code> {
        CODES.known(code).map(Code)
    }
}

/// A usage-priced subscription of a customer, as its last fetch showed it: 40 bytes, since the
/// cache holds one or more per customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Metered {
    pub subscription: SubscriptionId,
    /// BillaBear's counter for it (`costs[].usage`).
    pub usage: f64,
    /// Minor units per unit of usage, tax included (see [`Rate`]).
    pub per_unit: f64,
    pub code: Code,
    pub aggregation: Aggregation,
    /// Priced at a marginal rate (a price the API does not describe), not on the counter.
    pub marginal: bool,
    /// The pricing is an estimate (see the module's notes).
    pub approximate: bool,
    /// Events sent with the customer's id and this code go to this subscription (the last
    /// usage subscription for the code, as `subscriptions` resolves them).
    pub takes_customer_events: bool,
}

impl Metered {
    pub fn new(found: &Found<'_>, rate: Rate, approximate: bool) -> Self {
        let (per_unit, marginal) = match rate {
            Rate::PerUnit { unit_price, tax } => (unit_price as f64 * tax, false),
            Rate::Marginal(per_unit) => (per_unit, true),
        };
        Self {
            subscription: found.subscription,
            usage: found.figures.usage,
            per_unit,
            code: found.interned,
            aggregation: found.aggregation,
            marginal,
            approximate,
            takes_customer_events: true,
        }
    }

    /// What `units` more usage adds to this subscription's figure (minor units): on a per-unit
    /// price, what BillaBear's figure for the counter plus `units` adds to its figure for the
    /// counter, each rounded to the minor unit as BillaBear rounds.
    pub fn cost_of(&self, units: f64) -> i64 {
        if self.marginal {
            return saturate((units * self.per_unit).round());
        }
        let price = |usage: f64| (usage * self.per_unit).round();
        saturate(price(self.usage + units) - price(self.usage))
    }

    /// The usage `units` and `events` pending make under this metric's aggregation.
    pub fn usage_of(&self, units: f64, events: u64) -> Option<f64> {
        match self.aggregation {
            Aggregation::Sum => Some(units),
            Aggregation::Count => Some(events as f64),
            Aggregation::Other => None,
        }
    }
}

fn saturate(x: f64) -> i64 {
    // `as` saturates, and NaN becomes 0.
    x as i64
}

/// Pending usage under one target (a customer or a subscription) and metric code.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingUsage {
    pub code: Code,
    /// The sum of the events' values.
    pub units: f64,
    pub events: u64,
}

/// The units and events pending under one target for `code`.
pub fn pending_of(entries: &[PendingUsage], code: Code) -> (f64, u64) {
    entries
        .iter()
        .filter(|e| e.code == code)
        .fold((0.0, 0), |(units, events), e| (units + e.units, events + e.events))
}

/// The estimate the policy judges, with its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Projection {
    /// BillaBear's last estimate (minor units, tax included).
    pub billabear: i64,
    /// What the pending events add, priced like BillaBear.
    pub pending: i64,
    /// Events accepted and not yet counted by BillaBear that this customer's figure includes.
    pub pending_events: u64,
    /// What the customer's open reservations (holds) set aside (minor units).
    pub reserved: i64,
    pub approximate: bool,
}

impl Projection {
    /// BillaBear's figure alone (nothing pending).
    pub fn counted(billabear: i64) -> Self {
        Self { billabear, ..Self::default() }
    }

    /// What every rule judges: BillaBear's figure, the pending usage and the holds.
    pub fn amount(&self) -> i64 {
        self.billabear.saturating_add(self.pending).saturating_add(self.reserved)
    }
}

/// Projects a customer's estimate: `pending_for(metered)` gives the units and events pending
/// for one of its usage subscriptions (sent to it, or to the customer when it takes those).
pub fn project(
    billabear: i64,
    metered: &[Metered],
    mut pending_for: impl FnMut(&Metered) -> (f64, u64),
) -> Projection {
    let mut projection = Projection::counted(billabear);
    for m in metered {
        let (units, events) = pending_for(m);
        if events == 0 {
            continue;
        }
        projection.pending_events += events;
        match m.usage_of(units, events) {
            Some(usage) => {
                projection.pending = projection.pending.saturating_add(m.cost_of(usage));
                projection.approximate |= m.approximate;
            }
            None => projection.approximate = true,
        }
    }
    projection
}

/// The factor BillaBear's figures imply between a per-unit price and its `amount` (tax), or
/// None when the figures say nothing (no usage, or a zero price). BillaBear rounds its amount
/// to the minor unit, so any factor within half a unit fits; the simplest tax rate in that
/// range (whole percent, then tenths, hundredths, thousandths) is taken, which is the real one
/// once `usage × price` is large enough to tell them apart.
pub fn tax_factor(figures: Figures, unit_price: i64) -> Option<f64> {
    let base = figures.usage * unit_price as f64;
    // NaN (a malformed figure) says nothing either.
    if base.is_nan() || base <= 0.0 || figures.amount <= 0 {
        return None;
    }
    let amount = figures.amount as f64;
    let (low, high) = ((amount - 0.5) / base, (amount + 0.5) / base);
    let percent = (amount / base - 1.0) * 100.0;
    for step in [1.0, 0.1, 0.01, 0.001] {
        let factor = 1.0 + (percent / step).round() * step / 100.0;
        if (low..=high).contains(&factor) {
            return Some(factor);
        }
    }
    Some(amount / base)
}

/// What a subscription's price says about pricing pending usage: per unit when `price.amount`
/// is set, else the marginal rate between the `previous` figures (BillaBear's last different
/// ones) and these.
pub fn rate(
    unit_price: Option<i64>,
    including_tax: bool,
    figures: Figures,
    previous: Option<Figures>,
) -> (Rate, bool) {
    match unit_price {
        Some(unit_price) => match tax_factor(figures, unit_price) {
            Some(tax) => (Rate::PerUnit { unit_price, tax }, false),
            // No figures yet: a tax-inclusive price is its own total; otherwise the tax BillaBear
            // adds is not known until its figures show it.
            None => (Rate::PerUnit { unit_price, tax: 1.0 }, !including_tax),
        },
        None => {
            let marginal = match previous {
                Some(p) if figures.usage > p.usage => {
                    (figures.amount - p.amount) as f64 / (figures.usage - p.usage)
                }
                _ if figures.usage > 0.0 => figures.amount as f64 / figures.usage,
                _ => 0.0,
            };
            (Rate::Marginal(marginal.max(0.0)), true)
        }
    }
}

/// A usage-priced subscription found in a fetch, with BillaBear's figures for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Found<'a> {
    pub subscription: SubscriptionId,
    pub code: &'a str,
    /// `code`, interned as it is found, so pending usage with it is kept from then on.
    pub interned: Code,
    /// Whether finding it interned `code` (see [`Code::intern_telling`]).
    pub new_code: bool,
    pub aggregation: Aggregation,
    /// `price.amount`: minor units per unit, or None (tiers).
    pub unit_price: Option<i64>,
    pub including_tax: bool,
    pub figures: Figures,
}

/// How the pending usage of each subscription found is priced; `previous` gives the last
/// different figures recorded for a subscription.
pub fn meter(
    found: &[Found<'_>],
    mut previous: impl FnMut(SubscriptionId) -> Option<Figures>,
) -> Box<[Metered]> {
    let mut metered: Vec<Metered> = Vec::with_capacity(found.len());
    for f in found {
        let (rate, approximate) = rate(f.unit_price, f.including_tax, f.figures, previous(f.subscription));
        let m = Metered::new(f, rate, approximate);
        // Events sent by customer go to the last usage subscription for their code.
        for earlier in metered.iter_mut().filter(|e| e.code == m.code) {
            earlier.takes_customer_events = false;
        }
        metered.push(m);
    }
    metered.into_boxed_slice()
}

/// What a newly fetched counter value means for the events delivered to its subscription.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settle {
    /// The first figure seen for the subscription: every event delivered before the fetch began
    /// is taken as counted (no figure from before them says otherwise).
    First,
    /// An older fetch than the one already recorded: changes nothing.
    Stale,
    Unchanged,
    /// BillaBear counted this much more: retire the oldest delivered events worth it.
    Grew(f64),
    /// The counter went down (a new period: BillaBear resets or rebases it at invoicing): events
    /// delivered before the last figure belong to the old period; then retire up to the new
    /// counter.
    Reset(f64),
}

/// Compares a fetched counter with the last recorded one (`previous`: usage and when the fetch
/// that saw it began, Unix ms); `started_ms` is when this fetch began.
pub fn settle(previous: Option<(f64, i64)>, usage: f64, started_ms: i64) -> Settle {
    match previous {
        None => Settle::First,
        Some((_, seen_ms)) if seen_ms > started_ms => Settle::Stale,
        Some((seen, _)) if usage > seen => Settle::Grew(usage - seen),
        Some((seen, _)) if usage < seen => Settle::Reset(usage),
        Some(_) => Settle::Unchanged,
    }
}

/// Which of the events delivered to a subscription (oldest first: id and usage) a counter growth
/// of `grew` accounts for. BillaBear counts what it received before its run, in about the order
/// usage-gate delivered it, but deliveries run concurrently, so one may arrive after a later
/// one: each event is taken, oldest first, if it still fits in what is left of the growth, and
/// skipped (left for the next run) otherwise. What is left at the end came some other way (or
/// is still being recorded). Returns the events taken and their usage.
pub fn counted(delivered: &[(i64, f64)], grew: f64) -> (Vec<i64>, f64) {
    // Values are doubles: allow for rounding in the sums.
    let tolerance = 1e-9 * grew.abs().max(1.0);
    let mut left = grew;
    let mut taken = Vec::new();
    let mut used = 0.0;
    for &(id, usage) in delivered {
        if usage <= left + tolerance {
            left -= usage;
            used += usage;
            taken.push(id);
        }
    }
    (taken, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_tells_the_one_call_that_added_a_code() {
        let code = format!("telling-{}", uuid::Uuid::new_v4());
        let (first, new) = Code::intern_telling(&code);
        assert!(new, "the first call interns it");
        assert_eq!(Code::intern_telling(&code), (first, false), "later calls find it");
        assert_eq!(Code::known(&code), Some(first));
    }

    fn metered(rate: Rate, aggregation: Aggregation, usage: f64, amount: i64) -> Metered {
        let found = Found {
            subscription: SubscriptionId::new_v4(),
            code: "api_calls",
            interned: Code::intern("api_calls"),
            new_code: false,
            aggregation,
            unit_price: None,
            including_tax: true,
            figures: Figures { usage, amount },
        };
        Metered::new(&found, rate, matches!(rate, Rate::Marginal(_)))
    }

    #[test]
    fn the_tax_factor_is_the_simplest_rate_the_rounded_figures_allow() {
        let f = |usage, amount, price| tax_factor(Figures { usage, amount }, price);
        let near = |factor: Option<f64>, expected: f64| factor.is_some_and(|f| (f - expected).abs() < 1e-12);
        assert!(near(f(10.0, 120, 10), 1.2));
        assert!(near(f(1000.0, 1190, 1), 1.19));
        assert!(near(f(333.0, 358, 1), 1.075), "7.5% is the simplest rate that rounds to 358");
        assert!(near(f(7.0, 7, 1), 1.0));
        assert_eq!(f(0.0, 0, 10), None);
        assert_eq!(f(5.0, 0, 0), None);
    }

    #[test]
    fn pending_usage_at_a_per_unit_price_costs_what_billabear_will_show_after_counting_it() {
        // 20% tax: BillaBear's figure for usage u is round(u × 7 × 1.2).
        let billabear = |usage: f64| (usage * 7.0 * 1.2_f64).round() as i64;
        let figures = Figures { usage: 13.0, amount: billabear(13.0) };
        let (rate, approximate) = rate(Some(7), false, figures, None);
        assert!(!approximate);
        let m = metered(rate, Aggregation::Sum, 13.0, figures.amount);
        for pending in [1.0, 2.5, 17.0, 1000.0] {
            assert_eq!(figures.amount + m.cost_of(pending), billabear(13.0 + pending), "{pending}");
        }
    }

    #[test]
    fn count_metrics_count_events_and_sum_metrics_values() {
        let price = Rate::PerUnit { unit_price: 10, tax: 1.0 };
        let sum = metered(price, Aggregation::Sum, 0.0, 0);
        let count = metered(price, Aggregation::Count, 0.0, 0);
        let p = project(100, &[sum], |_| (7.5, 3));
        assert_eq!((p.billabear, p.pending, p.pending_events, p.amount()), (100, 75, 3, 175));
        let p = project(100, &[count], |_| (7.5, 3));
        assert_eq!((p.pending, p.amount()), (30, 130));
        assert!(!p.approximate);
    }

    #[test]
    fn unprojectable_metrics_and_tiers_say_approximate() {
        let other = metered(Rate::PerUnit { unit_price: 1, tax: 1.0 }, Aggregation::Other, 0.0, 0);
        let p = project(5, &[other], |_| (3.0, 1));
        assert_eq!((p.pending, p.pending_events, p.approximate), (0, 1, true));
        let quiet = project(5, &[metered(Rate::Marginal(2.0), Aggregation::Sum, 0.0, 0)], |_| (0.0, 0));
        assert!(!quiet.approximate, "nothing pending: BillaBear's own figure, exact");
    }

    #[test]
    fn a_tiered_price_uses_the_marginal_rate_of_the_last_two_figures() {
        // Graduated: 1–20 at 10, then 5 (API.md's example).
        let now = Figures { usage: 30.0, amount: 250 };
        assert_eq!(
            rate(None, true, now, Some(Figures { usage: 25.0, amount: 225 })),
            (Rate::Marginal(5.0), true)
        );
        let (average, _) = rate(None, true, now, None);
        assert!(matches!(average, Rate::Marginal(r) if (r - 250.0 / 30.0).abs() < 1e-9));
        assert_eq!(rate(None, true, Figures { usage: 0.0, amount: 0 }, None), (Rate::Marginal(0.0), true));
    }

    #[test]
    fn without_figures_only_a_tax_exclusive_price_is_approximate() {
        let none = Figures { usage: 0.0, amount: 0 };
        assert_eq!(rate(Some(10), true, none, None), (Rate::PerUnit { unit_price: 10, tax: 1.0 }, false));
        assert_eq!(rate(Some(10), false, none, None), (Rate::PerUnit { unit_price: 10, tax: 1.0 }, true));
    }

    #[test]
    fn growth_retires_the_oldest_events_that_fit_and_skips_one_that_arrived_late() {
        assert_eq!(counted(&[(1, 2.0), (2, 3.0), (3, 4.0)], 5.0), (vec![1, 2], 5.0), "in delivery order");
        // Delivered 1 then 2, but BillaBear received 2 before its run and 1 after it.
        assert_eq!(counted(&[(1, 5.0), (2, 3.0)], 3.0), (vec![2], 3.0));
        assert_eq!(counted(&[(1, 0.1), (2, 0.2)], 0.1 + 0.2).0, [1, 2], "rounding in the sums");
        assert_eq!(counted(&[(1, 1.0)], 0.5), (vec![], 0.0), "the growth came some other way");
        assert_eq!(counted(&[(1, 1.0), (2, 1.0)], f64::INFINITY), (vec![1, 2], 2.0));
    }

    #[test]
    fn settling_compares_with_the_newest_figure_seen() {
        assert_eq!(settle(None, 5.0, 100), Settle::First);
        assert_eq!(settle(Some((5.0, 200)), 9.0, 100), Settle::Stale, "a fetch older than the record");
        assert_eq!(settle(Some((5.0, 100)), 9.0, 200), Settle::Grew(4.0));
        assert_eq!(settle(Some((5.0, 100)), 5.0, 200), Settle::Unchanged);
        assert_eq!(settle(Some((5.0, 100)), 2.0, 200), Settle::Reset(2.0));
    }
}
