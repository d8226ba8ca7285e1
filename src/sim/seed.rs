//! Seed data for the simulator: metrics, customers, their subscriptions and limits. Read from a
//! TOML or JSON file (`usage-gate sim --seed FILE`); the control API takes the same shapes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::domain::{CustomerId, LimitAction, LimitId, SubscriptionId};

/// The built-in seed: the demo's customers, under, near and over their limits, and one disabled.
pub const BUILT_IN: &str = include_str!("../../config/sim-seed.toml");

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default)]
    pub metrics: Vec<SeedMetric>,
    #[serde(default)]
    pub customers: Vec<SeedCustomer>,
}

/// How a metric's events are aggregated (the simulator does BillaBear's `count` and `sum`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Count,
    #[default]
    Sum,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedMetric {
    pub code: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub aggregation: Aggregation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedCustomer {
    #[serde(default)]
    pub id: Option<CustomerId>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// BillaBear's customer status: active, disabled, ...
    #[serde(default = "active")]
    pub status: String,
    #[serde(default)]
    pub subscriptions: Vec<SeedSubscription>,
    #[serde(default)]
    pub limits: Vec<SeedLimit>,
}

impl Default for SeedCustomer {
    fn default() -> Self {
        Self { id: None, name: None, email: None, status: active(), subscriptions: vec![], limits: vec![] }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSubscription {
    #[serde(default)]
    pub id: Option<SubscriptionId>,
    /// The metric code a usage-priced subscription bills; none for a flat subscription.
    #[serde(default)]
    pub metric: Option<String>,
    /// Minor units per unit of usage (BillaBear's `price.amount`, a whole number of minor units).
    #[serde(default = "one")]
    pub unit_price: f64,
    /// Graduated tiers instead of a per-unit price: the listing then shows `price.amount` null,
    /// as for BillaBear's tiered prices.
    #[serde(default)]
    pub tiers: Vec<SeedTier>,
    /// Percent. With `including_tax` the price already holds it; otherwise BillaBear adds it to
    /// the estimate.
    #[serde(default)]
    pub tax_rate: f64,
    #[serde(default = "yes")]
    pub including_tax: bool,
    #[serde(default = "usd")]
    pub currency: String,
    #[serde(default)]
    pub price_amount: i64,
    /// Usage already counted this period, so the estimate starts above zero.
    #[serde(default)]
    pub usage: Option<f64>,
    #[serde(default = "yes")]
    pub active: bool,
    /// What the subscription's plan includes (`GET /customer/{id}/limits` sums it over the
    /// customer's active subscriptions).
    #[serde(default)]
    pub plan: SeedPlan,
}

/// A plan's features (included, no count), feature limits (code → limit) and user count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPlan {
    /// The plan's id in BillaBear (`plan.id` on its subscriptions); one made from the
    /// subscription's id when not set.
    #[serde(default)]
    pub id: Option<uuid::Uuid>,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub limits: std::collections::BTreeMap<String, i64>,
    #[serde(default)]
    pub user_count: i64,
}

impl Default for SeedSubscription {
    fn default() -> Self {
        Self {
            id: None,
            metric: None,
            unit_price: one(),
            tiers: vec![],
            tax_rate: 0.0,
            including_tax: true,
            currency: usd(),
            price_amount: 0,
            usage: None,
            active: true,
            plan: SeedPlan::default(),
        }
    }
}

/// Units up to `up_to` (the last tier: no bound) cost `unit_price` each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTier {
    #[serde(default)]
    pub up_to: Option<f64>,
    pub unit_price: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedLimit {
    #[serde(default)]
    pub id: Option<LimitId>,
    pub amount: i64,
    pub action: LimitAction,
}

fn active() -> String {
    "active".into()
}
fn one() -> f64 {
    1.0
}
fn usd() -> String {
    "USD".into()
}
fn yes() -> bool {
    true
}

impl Seed {
    pub fn built_in() -> Self {
        toml::from_str(BUILT_IN).expect("built-in seed parses")
    }

    /// A `.json` file is read as JSON, anything else as TOML.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read seed file {}: {e}", path.display()))?;
        let seed = if path.extension().is_some_and(|ext| ext == "json") {
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        } else {
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        };
        Ok(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_seed_loads_into_a_state() {
        let seed = Seed::built_in();
        assert!(seed.customers.len() >= 5);
        crate::sim::state::SimState::from_seed(&seed).unwrap();
    }
}
