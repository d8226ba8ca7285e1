//! The fetch path: a customer's answers from BillaBear, settled against the pending ledger
//! before the snapshot is used (so it is never counted with usage BillaBear already counts), and
//! its subscriptions taught to `subscriptions` (events sent by subscription find their customer).
//! The cache calls it through its `Fetch` trait.

use chrono::Utc;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::billabear::{self, BillaBearClient, BillaBearError};
use crate::cache::Fetch;
use crate::domain::CustomerId;
use crate::feature_counts::FeatureCounts;
use crate::pending::Pending;
use crate::snapshot::SnapshotData;
use crate::subscriptions::Subscriptions;

/// Snapshots from BillaBear, settled against the pending ledger.
pub struct LedgerFetch {
    pub client: BillaBearClient,
    pub pending: Pending,
    pub counts: FeatureCounts,
    pub subscriptions: Subscriptions,
}

impl Fetch for LedgerFetch {
    fn fetch(&self, id: CustomerId) -> BoxFuture<'static, Result<SnapshotData, BillaBearError>> {
        let (client, pending, counts, subscriptions) =
            (self.client.clone(), self.pending.clone(), self.counts.clone(), self.subscriptions.clone());
        async move {
            let started = Utc::now();
            let Some(answers) = billabear::fetch(&client, id).await? else {
                return Ok(SnapshotData::NotFound);
            };
            subscriptions.remember(id, &answers.subscriptions);
            let found = answers.usage_subscriptions();
            // A code interned by this fetch: the ledger's copy skipped its pending usage until now.
            let new_code = found.iter().any(|f| f.new_code);
            let previous = pending.settle(id, &found, started, new_code).await;
            let known = answers.known(&found, |s| previous.get(&s).copied());
            counts.record_period(id, &known).await;
            Ok(SnapshotData::Known(known))
        }
        .boxed()
    }
}
