//! A customer as BillaBear answers for it, asked in one go (customer, usage limits, cost
//! estimate, active subscriptions, the plan's limits), and turned into the snapshot model a
//! decision is made from: where BillaBear's wire types end.

use super::{
    BillaBearClient, BillaBearError, CostEstimate, Customer, CustomerLimits, MetricCost, Subscription,
    UsageLimit,
};
use crate::domain::{Currency, CustomerId, SubscriptionId};
use crate::entitlements::{Period, Plan};
use crate::policy::Limit;
use crate::projection::{self, Aggregation, Code, Figures, Found};
use crate::snapshot::Known;

/// What BillaBear answered about a customer it knows.
#[derive(Debug, Clone)]
pub struct Answers {
    pub customer: Customer,
    pub limits: Vec<UsageLimit>,
    pub estimate: CostEstimate,
    pub subscriptions: Vec<Subscription>,
    /// The plan's features, feature limits and user count.
    pub plan: CustomerLimits,
}

impl Answers {
    /// The customer's usage-priced subscriptions and BillaBear's figures for each.
    pub fn usage_subscriptions(&self) -> Vec<Found<'_>> {
        usage_subscriptions(&self.subscriptions, &self.estimate.costs)
    }

    /// The snapshot's data, pricing the usage subscriptions `found` in these answers;
    /// `previous` gives the last different figures recorded for a subscription (see
    /// [`projection::meter`]).
    pub fn known(
        &self,
        found: &[Found<'_>],
        previous: impl FnMut(SubscriptionId) -> Option<Figures>,
    ) -> Known {
        Known {
            status: self.customer.status.clone(),
            estimate: self.estimate.total.amount,
            currency: Currency::parse(&self.estimate.total.currency),
            limits: self
                .limits
                .iter()
                .map(|l| Limit { id: l.id, amount: l.amount, action: l.action })
                .collect(),
            metered: projection::meter(found, previous),
            plan: Plan::new(
                self.plan.limits.iter().map(|l| (l.feature.code.as_str(), l.limit)),
                self.plan.features.iter().map(|f| f.code.as_str()),
                self.plan.user_count,
                self.subscriptions.iter().filter_map(|s| s.plan_id()),
            ),
            period: Period::of(
                self.subscriptions.iter().filter_map(|s| Some((s.valid_until()?, s.schedule.as_deref()))),
            ),
        }
    }
}

/// The customer, its usage limits, its cost estimate, its active subscriptions and its plan's
/// limits, asked for at once; None when BillaBear does not know the customer.
pub async fn fetch(client: &BillaBearClient, id: CustomerId) -> Result<Option<Answers>, BillaBearError> {
    let (answers, plan) = tokio::join!(
        async {
            tokio::try_join!(
                client.get_customer(id),
                client.list_usage_limits(id),
                client.get_cost_estimate(id),
                client.list_active_subscriptions(id),
            )
        },
        client.get_customer_limits(id),
    );
    let (customer, limits, estimate, subscriptions) = match answers {
        Ok(answers) => answers,
        // Any of them may be the first to say the customer does not exist.
        Err(BillaBearError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let plan = match plan {
        Ok(plan) => plan,
        // The customer exists, so the route does not (a BillaBear older than its limits
        // endpoint): the plan includes nothing, and a feature check is refused rather than
        // every customer read as unknown.
        Err(BillaBearError::NotFound(_)) => {
            tracing::warn!(customer = %id, "BillaBear has no plan limits for a customer it knows: its plan is read as empty");
            CustomerLimits::default()
        }
        Err(e) => return Err(e),
    };
    Ok(Some(Answers { customer, limits, estimate, subscriptions, plan }))
}

/// The customer's usage-priced subscriptions with BillaBear's figures for each: `costs` has one
/// entry per active usage subscription, in the listing's order, named by the metric's *name*
/// (not its code, nor the subscription), so each subscription takes the next unused entry with
/// its metric's name.
fn usage_subscriptions<'a>(subscriptions: &'a [Subscription], costs: &[MetricCost]) -> Vec<Found<'a>> {
    let mut used = vec![false; costs.len()];
    let mut found = Vec::new();
    for subscription in subscriptions {
        let Some(price) = subscription.price.as_ref().filter(|p| p.usage) else { continue };
        let Some(metric) = price.metric.as_ref() else { continue };
        let name = metric.name.as_deref().unwrap_or(&metric.code);
        let entry = costs.iter().enumerate().position(|(i, c)| !used[i] && c.name == name);
        let figures = match entry {
            Some(i) => {
                used[i] = true;
                Figures { usage: costs[i].usage, amount: costs[i].amount }
            }
            None => Figures { usage: 0.0, amount: 0 },
        };
        let (interned, new_code) = Code::intern_telling(&metric.code);
        found.push(Found {
            subscription: subscription.id,
            code: &metric.code,
            interned,
            new_code,
            aggregation: Aggregation::parse(metric.aggregation_method.as_deref()),
            unit_price: price.amount,
            including_tax: price.including_tax,
            figures,
        });
    }
    found
}
