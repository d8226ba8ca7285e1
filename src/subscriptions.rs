//! What usage-gate knows of customers' subscriptions, learned from BillaBear's listing of a
//! customer's active subscriptions: which usage subscription a customer's events for a metric
//! go to, and which customer a subscription belongs to. BillaBear's API has no lookup from a
//! subscription to its customer, so the second is only known for customers listed before;
//! every fetch of a customer's snapshot lists its subscriptions and tells them here, so events
//! sent by subscription reach the decisions of cached customers.

use std::sync::Arc;
use std::time::Duration;

use crate::billabear::{BillaBearClient, BillaBearError, Subscription};
use uuid::Uuid;

use crate::domain::{CustomerId, SubscriptionId};

/// Entries each map holds at most; beyond it, the least used are forgotten (and relearned on
/// demand or left to the cache's TTL).
const CAPACITY: u64 = 100_000;
/// How long a listing is trusted: a subscription created since is picked up after this.
pub const RELEARN_AFTER: Duration = Duration::from_secs(300);

/// Cheap to clone; clones share what was learned.
#[derive(Clone)]
pub struct Subscriptions {
    inner: Arc<Inner>,
}

struct Inner {
    client: BillaBearClient,
    /// (customer, metric code) → the active usage subscription for it.
    by_metric: moka::sync::Cache<(CustomerId, String), SubscriptionId>,
    /// subscription → its customer.
    owners: moka::sync::Cache<SubscriptionId, CustomerId>,
    /// customer → its active subscriptions as last listed within RELEARN_AFTER (empty while a
    /// listing is under way).
    owned: moka::sync::Cache<CustomerId, Arc<[SubscriptionId]>>,
}

fn bounded<K, V>() -> moka::sync::Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    moka::sync::Cache::builder().max_capacity(CAPACITY).time_to_live(RELEARN_AFTER).build()
}

/// Why a customer's events for a metric have nowhere to go.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("customer {customer} has no active usage subscription for metric {code:?}")]
    NoUsageSubscription { customer: CustomerId, code: String },
    #[error(transparent)]
    BillaBear(#[from] BillaBearError),
}

impl Subscriptions {
    pub fn new(client: BillaBearClient) -> Self {
        Self { inner: Arc::new(Inner { client, by_metric: bounded(), owners: bounded(), owned: bounded() }) }
    }

    /// The customer's active usage subscription whose price meters `code`, listing the
    /// customer's subscriptions when it is not known.
    pub async fn usage_subscription(
        &self,
        customer: CustomerId,
        code: &str,
    ) -> Result<SubscriptionId, ResolveError> {
        let key = (customer, code.to_owned());
        if let Some(found) = self.inner.by_metric.get(&key) {
            return Ok(found);
        }
        self.learn(customer).await?;
        self.inner
            .by_metric
            .get(&key)
            .ok_or_else(|| ResolveError::NoUsageSubscription { customer, code: code.to_owned() })
    }

    /// The customer the subscription belongs to, if a listing showed it.
    pub fn owner(&self, subscription: SubscriptionId) -> Option<CustomerId> {
        self.inner.owners.get(&subscription)
    }

    /// The customer an event is for: the one it names, or its subscription's owner if a listing
    /// showed it.
    pub fn customer_of_event(
        &self,
        customer: Option<Uuid>,
        subscription: Option<Uuid>,
    ) -> Option<CustomerId> {
        match (customer, subscription) {
            (Some(customer), _) => Some(CustomerId::from(customer)),
            (None, Some(subscription)) => self.owner(SubscriptionId::from(subscription)),
            (None, None) => None,
        }
    }

    /// The customer's active subscriptions, if a listing showed them (empty otherwise).
    pub fn of_customer(&self, customer: CustomerId) -> Arc<[SubscriptionId]> {
        self.inner.owned.get(&customer).unwrap_or_else(|| Arc::from([]))
    }

    async fn learn(&self, customer: CustomerId) -> Result<(), BillaBearError> {
        let subscriptions = self.inner.client.list_active_subscriptions(customer).await?;
        self.remember(customer, &subscriptions);
        Ok(())
    }

    /// What a listing of the customer's active subscriptions showed.
    pub fn remember(&self, customer: CustomerId, subscriptions: &[Subscription]) {
        self.inner.owned.insert(customer, subscriptions.iter().map(|s| s.id).collect());
        for subscription in subscriptions {
            self.inner.owners.insert(subscription.id, customer);
            if let Some(code) = subscription.usage_metric() {
                self.inner.by_metric.insert((customer, code.to_owned()), subscription.id);
            }
        }
    }
}
