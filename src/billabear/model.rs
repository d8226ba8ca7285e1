//! BillaBear's wire types, as its server sends them (API.md), parsed tolerantly where it is odd.

use serde::{Deserialize, Serialize};

use crate::domain::{
    CustomerId, CustomerStatus, EventId, LimitAction, LimitId, MetricCode, Money, SubscriptionId,
};

/// A usage limit (`{"id","amount","action"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLimit {
    pub id: LimitId,
    /// Minor units of the customer's estimate currency.
    pub amount: i64,
    pub action: LimitAction,
}

/// The body of `POST /customer/{id}/usage-limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewUsageLimit {
    pub amount: i64,
    pub action: LimitAction,
}

/// `GET /customer/{id}/costs`. The server sends `total`; the published spec says `cost`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CostEstimate {
    #[serde(alias = "cost")]
    pub total: Money,
    #[serde(default)]
    pub costs: Vec<MetricCost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricCost {
    /// The metric's name (not its code).
    pub name: String,
    pub amount: i64,
    pub currency: String,
    pub usage: f64,
}

/// The body of `POST /events`: BillaBear's own names (`subscription`, `code`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewEvent {
    pub event_id: EventId,
    pub subscription: SubscriptionId,
    pub code: MetricCode,
    pub value: f64,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub properties: serde_json::Map<String, serde_json::Value>,
}

/// The parts of `GET /customer/{id}` usage-gate uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Customer {
    pub id: CustomerId,
    pub status: CustomerStatus,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

/// A subscription from `GET /customer/{id}/subscription/active`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Subscription {
    pub id: SubscriptionId,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub price: Option<Price>,
    /// When the current period ends (ATOM); read as text, so a value that does not parse costs
    /// the billing period, not the customer.
    #[serde(default)]
    pub valid_until: Option<String>,
    /// `week`, `month` or `year`.
    #[serde(default)]
    pub schedule: Option<String>,
    /// `{"id", "name", …}`: read loosely, so a plan of another shape costs the plan rules, not
    /// the customer.
    #[serde(default)]
    pub plan: Option<serde_json::Value>,
}

impl Subscription {
    /// When its current period ends, if BillaBear said so readably.
    pub fn valid_until(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = self.valid_until.as_deref()?;
        chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&chrono::Utc))
    }

    /// The BillaBear plan it is on, if BillaBear named one readably.
    pub fn plan_id(&self) -> Option<crate::domain::PlanId> {
        let id = self.plan.as_ref()?.get("id")?.as_str()?;
        crate::domain::PlanId::parse(id).ok()
    }

    /// The metric code this subscription bills usage for, if it is usage-priced.
    pub fn usage_metric(&self) -> Option<&str> {
        let price = self.price.as_ref()?;
        if !price.usage {
            return None;
        }
        price.metric.as_ref().map(|m| m.code.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Price {
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    /// Usage-based price (not in the published spec; the server sends it).
    #[serde(default)]
    pub usage: bool,
    /// The amount already includes tax; otherwise BillaBear adds it to estimates.
    #[serde(default)]
    pub including_tax: bool,
    #[serde(default)]
    pub metric: Option<Metric>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Metric {
    pub code: String,
    #[serde(default)]
    pub name: Option<String>,
    /// count, sum, max, latest or unique_count.
    #[serde(default)]
    pub aggregation_method: Option<String>,
}

/// `GET /customer/{id}/limits`: the plan's side of the customer (API.md §6.1), summed by
/// BillaBear over its active subscriptions; empty lists and 0 for a disabled customer.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct CustomerLimits {
    /// Features with a count (`{"feature":{…},"limit":25}`).
    #[serde(default)]
    pub limits: Vec<FeatureLimit>,
    /// Features the plan includes, with or without a count.
    #[serde(default)]
    pub features: Vec<Feature>,
    /// The server's DTO property is `userCount` and its serializer has no name converter, so
    /// that is the key on the wire; the published spec says `user_count`.
    #[serde(default, rename = "userCount", alias = "user_count")]
    pub user_count: i64,
}

/// A plan feature (`{"code","name","description"}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Feature {
    pub code: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FeatureLimit {
    pub feature: Feature,
    pub limit: i64,
}

/// `{"data":[…],"has_more":…,"last_key":…}`; `last_key` is often left out, `has_more` too.
#[derive(Debug, Deserialize)]
pub(crate) struct ListResponse<T> {
    pub data: Vec<T>,
    #[serde(default, rename = "has_more")]
    pub _has_more: Option<bool>,
    #[serde(default, rename = "last_key")]
    pub _last_key: Option<String>,
}
