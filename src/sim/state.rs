//! The simulator's in-memory BillaBear: customers, subscriptions, limits, events, counters, and
//! the counter tick that prices usage and fires limits as BillaBear's `WarningCheck` does.
//! No I/O here; the HTTP layers lock it, call a method and answer.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::seed::{Aggregation, Seed, SeedCustomer, SeedPlan, SeedSubscription, SeedTier};
use crate::domain::{CustomerId, LimitAction, LimitId, SubscriptionId};

#[derive(Debug, Clone, Serialize)]
pub struct SimCustomer {
    pub id: CustomerId,
    pub name: Option<String>,
    pub email: String,
    pub status: String,
    /// In creation order: BillaBear takes the estimate's currency from the first.
    pub subscriptions: Vec<SubscriptionId>,
    /// This customer's limits (an index into `SimState::limits`).
    pub limits: Vec<LimitId>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimSubscription {
    pub id: SubscriptionId,
    pub customer: CustomerId,
    /// Usage-priced when set: the metric code this subscription's price bills.
    pub metric: Option<String>,
    /// Minor units per unit of usage.
    pub unit_price: f64,
    /// Graduated tiers, when set, instead of `unit_price`.
    pub tiers: Vec<SeedTier>,
    /// Percent; added to the estimate unless `including_tax`.
    pub tax_rate: f64,
    pub including_tax: bool,
    pub currency: String,
    /// The flat price amount (minor units) shown on the subscription.
    pub price_amount: i64,
    pub active: bool,
    pub plan: SeedPlan,
}

impl SimSubscription {
    /// What BillaBear's estimate shows for `usage` units (minor units): the subtotal (per unit,
    /// or graduated tiers), plus tax unless the price includes it, each rounded.
    pub fn price(&self, usage: f64) -> i64 {
        let subtotal = if self.tiers.is_empty() {
            usage * self.unit_price
        } else {
            let (mut left, mut from, mut total) = (usage, 0.0, 0.0);
            for tier in &self.tiers {
                let size = tier.up_to.map_or(f64::INFINITY, |up_to| up_to - from);
                let here = left.min(size).max(0.0);
                total += here * tier.unit_price;
                left -= here;
                from = tier.up_to.unwrap_or(from);
            }
            total
        }
        .round();
        let tax = if self.including_tax { 0.0 } else { (subtotal * self.tax_rate / 100.0).round() };
        (subtotal + tax) as i64
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SimMetric {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub aggregation: Aggregation,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimLimit {
    pub id: LimitId,
    pub customer: CustomerId,
    pub amount: i64,
    pub action: LimitAction,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: Uuid,
    pub event_id: String,
    pub subscription: SubscriptionId,
    pub code: String,
    pub value: f64,
    pub properties: Value,
    pub received_at: DateTime<Utc>,
}

/// A limit that fired on a tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fired {
    pub customer: CustomerId,
    pub limit: LimitId,
    pub action: LimitAction,
    pub estimate: i64,
}

/// The estimate as `GET /costs` reports it, or BillaBear's 500 on mixed currencies.
#[derive(Debug, Clone, PartialEq)]
pub enum Estimate {
    Priced { total: i64, currency: String, costs: Vec<Value> },
    MixedCurrencies,
}

#[derive(Debug, Default)]
pub struct SimState {
    pub customers: HashMap<CustomerId, SimCustomer>,
    pub subscriptions: HashMap<SubscriptionId, SimSubscription>,
    pub metrics: HashMap<String, SimMetric>,
    /// Looked up globally by id, as BillaBear does (it never checks the owner on delete).
    pub limits: HashMap<LimitId, SimLimit>,
    pub events: Vec<StoredEvent>,
    /// `events[..counted]` are already in the counters.
    counted: usize,
    counters: HashMap<SubscriptionId, f64>,
    /// Limits that fired in the current period (each fires at most once per period).
    fired: HashSet<LimitId>,
    /// The current billing period (start, end) every subscription is in, once one was started;
    /// until then the calendar month (UTC).
    period: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub webhooks: Vec<Value>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SeedError {
    #[error("customer {0} already exists")]
    DuplicateCustomer(CustomerId),
    #[error("subscription {0} already exists")]
    DuplicateSubscription(SubscriptionId),
    #[error("no such customer {0}")]
    NoSuchCustomer(CustomerId),
    #[error("metric code {0:?} must match ^[a-z0-9_]+$")]
    BadMetricCode(String),
    #[error("limit amount must be positive")]
    BadLimit,
}

impl SimState {
    pub fn from_seed(seed: &Seed) -> Result<Self, SeedError> {
        let mut state = Self::default();
        for metric in &seed.metrics {
            state.add_metric(&metric.code, metric.name.as_deref(), metric.aggregation)?;
        }
        for customer in &seed.customers {
            state.add_customer(customer)?;
        }
        Ok(state)
    }

    pub fn add_metric(
        &mut self,
        code: &str,
        name: Option<&str>,
        aggregation: Aggregation,
    ) -> Result<(), SeedError> {
        if code.is_empty() || !code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(SeedError::BadMetricCode(code.to_owned()));
        }
        self.metrics.entry(code.to_owned()).or_insert_with(|| SimMetric {
            id: Uuid::new_v4(),
            code: code.to_owned(),
            name: name.map_or_else(|| code.replace('_', " "), str::to_owned),
            aggregation,
        });
        Ok(())
    }

    pub fn add_customer(&mut self, seed: &SeedCustomer) -> Result<CustomerId, SeedError> {
        let id = seed.id.unwrap_or_else(CustomerId::new_v4);
        if self.customers.contains_key(&id) {
            return Err(SeedError::DuplicateCustomer(id));
        }
        self.customers.insert(
            id,
            SimCustomer {
                id,
                name: seed.name.clone(),
                email: seed.email.clone().unwrap_or_else(|| format!("{id}@example.com")),
                status: seed.status.clone(),
                subscriptions: vec![],
                limits: vec![],
            },
        );
        for sub in &seed.subscriptions {
            self.add_subscription(id, sub)?;
        }
        for limit in &seed.limits {
            self.add_limit(id, limit.id.unwrap_or_else(LimitId::new_v4), limit.amount, limit.action)?;
        }
        Ok(id)
    }

    pub fn add_subscription(
        &mut self,
        customer: CustomerId,
        seed: &SeedSubscription,
    ) -> Result<SubscriptionId, SeedError> {
        let id = seed.id.unwrap_or_else(SubscriptionId::new_v4);
        if self.subscriptions.contains_key(&id) {
            return Err(SeedError::DuplicateSubscription(id));
        }
        if let Some(code) = &seed.metric {
            self.add_metric(code, None, Aggregation::Sum)?;
        }
        let owner = self.customers.get_mut(&customer).ok_or(SeedError::NoSuchCustomer(customer))?;
        owner.subscriptions.push(id);
        self.subscriptions.insert(
            id,
            SimSubscription {
                id,
                customer,
                metric: seed.metric.clone(),
                unit_price: seed.unit_price,
                tiers: seed.tiers.clone(),
                tax_rate: seed.tax_rate,
                including_tax: seed.including_tax,
                currency: seed.currency.clone(),
                price_amount: seed.price_amount,
                active: seed.active,
                plan: seed.plan.clone(),
            },
        );
        if let Some(usage) = seed.usage {
            self.counters.insert(id, usage);
        }
        Ok(id)
    }

    pub fn add_limit(
        &mut self,
        customer: CustomerId,
        id: LimitId,
        amount: i64,
        action: LimitAction,
    ) -> Result<SimLimit, SeedError> {
        let owner = self.customers.get_mut(&customer).ok_or(SeedError::NoSuchCustomer(customer))?;
        if amount <= 0 {
            return Err(SeedError::BadLimit);
        }
        owner.limits.push(id);
        let limit = SimLimit { id, customer, amount, action };
        self.limits.insert(id, limit.clone());
        Ok(limit)
    }

    /// Removes a limit found by id alone, whoever owns it (as BillaBear's delete does).
    pub fn remove_limit(&mut self, id: LimitId) -> Option<SimLimit> {
        let limit = self.limits.remove(&id)?;
        if let Some(owner) = self.customers.get_mut(&limit.customer) {
            owner.limits.retain(|l| *l != id);
        }
        Some(limit)
    }

    pub fn customer_limits(&self, customer: CustomerId) -> Vec<&SimLimit> {
        let Some(owner) = self.customers.get(&customer) else { return vec![] };
        let mut limits: Vec<_> = owner.limits.iter().filter_map(|id| self.limits.get(id)).collect();
        limits.sort_by_key(|l| (l.amount, l.id));
        limits
    }

    pub fn active_subscriptions(&self, customer: CustomerId) -> Vec<&SimSubscription> {
        self.customers
            .get(&customer)
            .map(|c| {
                c.subscriptions
                    .iter()
                    .filter_map(|id| self.subscriptions.get(id))
                    .filter(|s| s.active)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sets a usage counter directly (the control API's shortcut past events and ticks).
    /// The customer's plan as `GET /customer/{id}/limits` answers it (BillaBear's
    /// `LimitsFactory`): each feature limit summed over its active subscriptions, the features
    /// of all of them, and their user counts summed; nothing for a disabled customer.
    pub fn plan(&self, customer: CustomerId) -> SeedPlan {
        let mut plan = SeedPlan::default();
        if self.customers.get(&customer).is_none_or(|c| c.status == "disabled") {
            return plan;
        }
        for subscription in self.active_subscriptions(customer) {
            for (code, limit) in &subscription.plan.limits {
                *plan.limits.entry(code.clone()).or_default() += limit;
            }
            for code in &subscription.plan.features {
                if !plan.features.contains(code) {
                    plan.features.push(code.clone());
                }
            }
            plan.user_count += subscription.plan.user_count;
        }
        plan
    }

    pub fn set_usage(&mut self, subscription: SubscriptionId, value: f64) {
        self.counters.insert(subscription, value);
    }

    pub fn usage(&self, subscription: SubscriptionId) -> f64 {
        self.counters.get(&subscription).copied().unwrap_or(0.0)
    }

    /// What `GET /customer/{id}/costs` reports: counters priced per active usage subscription.
    pub fn estimate(&self, customer: CustomerId) -> Estimate {
        let mut total = 0i64;
        let mut currency: Option<String> = None;
        let mut costs = Vec::new();
        for sub in self.active_subscriptions(customer) {
            let Some(code) = &sub.metric else { continue };
            let usage = self.usage(sub.id);
            let amount = sub.price(usage);
            match &currency {
                Some(c) if *c != sub.currency => return Estimate::MixedCurrencies,
                Some(_) => {}
                None => currency = Some(sub.currency.clone()),
            }
            total += amount;
            let name = self.metrics.get(code).map_or(code.as_str(), |m| m.name.as_str());
            costs.push(json!({"name": name, "amount": amount, "currency": sub.currency, "usage": usage}));
        }
        Estimate::Priced { total, currency: currency.unwrap_or_default(), costs }
    }

    /// Stores an event (validated by the caller). Repeated `event_id`s are stored again, as
    /// BillaBear does; they are collapsed only within one tick's aggregation.
    pub fn store_event(&mut self, event: StoredEvent) {
        self.events.push(event);
    }

    /// One run of BillaBear's counter job: aggregate the events since the last run into the
    /// counters, then check the limits of every customer that had events.
    pub fn tick(&mut self) -> Vec<Fired> {
        let new = &self.events[self.counted..];
        self.counted = self.events.len();
        // DISTINCT ON (event_id) within this window only, like EventRepository.
        let mut seen: HashMap<SubscriptionId, HashSet<&str>> = HashMap::new();
        let mut deltas: HashMap<SubscriptionId, f64> = HashMap::new();
        let mut touched: Vec<CustomerId> = Vec::new();
        for event in new {
            let Some(sub) = self.subscriptions.get(&event.subscription) else {
                continue;
            };
            if !touched.contains(&sub.customer) {
                touched.push(sub.customer);
            }
            // Counters use only the subscription's own price metric.
            if sub.metric.as_deref() != Some(event.code.as_str()) {
                continue;
            }
            if !seen.entry(sub.id).or_default().insert(event.event_id.as_str()) {
                continue;
            }
            let aggregation = self.metrics.get(&event.code).map_or(Aggregation::Sum, |m| m.aggregation);
            *deltas.entry(sub.id).or_default() += match aggregation {
                Aggregation::Count => 1.0,
                Aggregation::Sum => event.value,
            };
        }
        for (sub, delta) in deltas {
            *self.counters.entry(sub).or_default() += delta;
        }
        touched.into_iter().flat_map(|customer| self.warning_check(customer)).collect()
    }

    /// BillaBear's `WarningCheck`: each limit fires once per period, when the estimate is
    /// strictly greater than its amount; DISABLE also disables the customer.
    fn warning_check(&mut self, customer: CustomerId) -> Vec<Fired> {
        if self.active_subscriptions(customer).is_empty() {
            return vec![];
        }
        let Estimate::Priced { total, .. } = self.estimate(customer) else {
            return vec![];
        };
        let due: Vec<SimLimit> = self
            .customer_limits(customer)
            .into_iter()
            .filter(|l| !self.fired.contains(&l.id) && total > l.amount)
            .cloned()
            .collect();
        let mut fired = Vec::new();
        for limit in due {
            self.fired.insert(limit.id);
            if limit.action == LimitAction::Disable
                && let Some(c) = self.customers.get_mut(&customer)
            {
                c.status = "disabled".into();
                self.webhooks.push(json!({
                    "type": "customer_disabled",
                    "customer": {"id": c.id, "email": c.email, "brand": "default", "is_disabled": true},
                }));
            }
            // The real server's payload carries only the type (API.md §6.4).
            self.webhooks.push(json!({"type": "usage_warning_triggered"}));
            fired.push(Fired { customer, limit: limit.id, action: limit.action, estimate: total });
        }
        fired
    }

    /// Starts a new billing period now, of `length` (30 days by default): limits may fire again.
    pub fn new_period(&mut self, length: Option<chrono::Duration>) {
        self.fired.clear();
        self.counters.clear();
        let now = Utc::now();
        self.period = Some((now, now + length.unwrap_or(chrono::Duration::days(30))));
    }

    /// The current billing period: subscriptions are `valid_until` its end.
    pub fn period(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        self.period.unwrap_or_else(|| {
            let now = Utc::now().date_naive();
            let first = now.with_day(1).unwrap_or(now);
            let next = first.checked_add_months(chrono::Months::new(1)).unwrap_or(first);
            let at = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
            (at(first), at(next))
        })
    }

    /// Received events by `event_id`, with how many times each arrived.
    pub fn event_counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for e in &self.events {
            *counts.entry(e.event_id.as_str()).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::seed::SeedLimit;

    fn customer_with(
        limits: &[(i64, LimitAction)],
        unit_price: f64,
    ) -> (SimState, CustomerId, SubscriptionId) {
        let mut state = SimState::default();
        let sub_id = SubscriptionId::new_v4();
        let seed = SeedCustomer {
            subscriptions: vec![SeedSubscription {
                id: Some(sub_id),
                metric: Some("api_calls".into()),
                unit_price,
                ..SeedSubscription::default()
            }],
            limits: limits.iter().map(|&(amount, action)| SeedLimit { id: None, amount, action }).collect(),
            ..SeedCustomer::default()
        };
        let id = state.add_customer(&seed).unwrap();
        (state, id, sub_id)
    }

    fn event(sub: SubscriptionId, event_id: &str, value: f64) -> StoredEvent {
        StoredEvent {
            id: Uuid::new_v4(),
            event_id: event_id.into(),
            subscription: sub,
            code: "api_calls".into(),
            value,
            properties: json!({}),
            received_at: Utc::now(),
        }
    }

    fn total(state: &SimState, c: CustomerId) -> i64 {
        match state.estimate(c) {
            Estimate::Priced { total, .. } => total,
            Estimate::MixedCurrencies => panic!("mixed"),
        }
    }

    #[test]
    fn estimate_lags_events_until_the_tick() {
        let (mut state, c, sub) = customer_with(&[], 10.0);
        state.store_event(event(sub, "e1", 3.0));
        assert_eq!(total(&state, c), 0);
        state.tick();
        assert_eq!(total(&state, c), 30);
    }

    #[test]
    fn duplicates_collapse_within_a_tick_but_count_again_in_a_later_one() {
        let (mut state, c, sub) = customer_with(&[], 1.0);
        state.store_event(event(sub, "e1", 5.0));
        state.store_event(event(sub, "e1", 5.0));
        state.tick();
        assert_eq!(total(&state, c), 5);
        assert_eq!(state.event_counts()["e1"], 2, "both stored");
        state.store_event(event(sub, "e1", 5.0));
        state.tick();
        assert_eq!(total(&state, c), 10, "a later duplicate is counted again, as BillaBear's counter does");
    }

    #[test]
    fn limit_fires_only_when_strictly_greater() {
        let (mut state, c, sub) = customer_with(&[(100, LimitAction::Warning)], 1.0);
        state.store_event(event(sub, "a", 100.0));
        assert_eq!(state.tick(), vec![], "equal is not over");
        state.store_event(event(sub, "b", 1.0));
        let fired = state.tick();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].estimate, 101);
        assert_eq!(state.customers[&c].status, "active", "WARNING does not disable");
    }

    #[test]
    fn disable_limit_disables_once_per_period() {
        let (mut state, c, sub) = customer_with(&[(10, LimitAction::Disable)], 1.0);
        state.store_event(event(sub, "a", 11.0));
        assert_eq!(state.tick().len(), 1);
        assert_eq!(state.customers[&c].status, "disabled");
        assert_eq!(state.webhooks[0]["type"], "customer_disabled");
        state.customers.get_mut(&c).unwrap().status = "active".into();
        state.store_event(event(sub, "b", 1.0));
        assert_eq!(state.tick(), vec![], "re-enabled mid-period is not disabled again");
        state.new_period(None);
        state.store_event(event(sub, "c", 11.0));
        assert_eq!(state.tick().len(), 1);
    }

    #[test]
    fn tax_is_added_unless_the_price_includes_it_and_tiers_are_graduated() {
        let (mut state, c, sub) = customer_with(&[], 10.0);
        state.set_usage(sub, 3.0);
        assert_eq!(total(&state, c), 30);
        let s = state.subscriptions.get_mut(&sub).unwrap();
        s.tax_rate = 20.0;
        assert_eq!(total(&state, c), 30, "a tax-inclusive price is its own total");
        state.subscriptions.get_mut(&sub).unwrap().including_tax = false;
        assert_eq!(total(&state, c), 36);
        let s = state.subscriptions.get_mut(&sub).unwrap();
        s.including_tax = true;
        // API.md's example: 1–20 at 10, then 5; 30 units cost 250.
        s.tiers =
            vec![SeedTier { up_to: Some(20.0), unit_price: 10.0 }, SeedTier { up_to: None, unit_price: 5.0 }];
        state.set_usage(sub, 30.0);
        assert_eq!(total(&state, c), 250);
    }

    #[test]
    fn customer_without_usage_subscriptions_has_zero_and_no_currency() {
        let mut state = SimState::default();
        let c = state.add_customer(&SeedCustomer::default()).unwrap();
        assert_eq!(state.estimate(c), Estimate::Priced { total: 0, currency: String::new(), costs: vec![] });
    }

    #[test]
    fn events_for_another_metric_are_stored_but_not_counted() {
        let (mut state, c, sub) = customer_with(&[], 1.0);
        let mut other = event(sub, "x", 50.0);
        other.code = "storage_gb".into();
        state.store_event(other);
        state.tick();
        assert_eq!(total(&state, c), 0);
    }
}
