//! Decision transitions: a customer's decision changes status (`ok`, `warning`, `blocked`) or
//! crosses a 5% band of its lowest DISABLE limit when a fetch brings new figures, when its
//! pending usage changes, or when its override does. The cache, the pending ledger and the
//! overrides each report what changed on a channel; one task here ([`watch`]) judges the
//! decision before and after, and the writer ([`Transitions`]) records each change once across
//! replicas, with its audit record, its usage sample and its outbound webhook, in one statement.

pub mod recorded;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::audit;
use crate::cache::{Fetched, SnapshotCache};
use crate::check::{self, Decision, Mark};
use crate::domain::{CustomerId, Target};
use crate::overrides::{self, Override, Overrides};
use crate::pending::{self, Pending};
use crate::policy::{PolicySettings, Status};
use crate::snapshot::{Known, Lookup, Snapshot, SnapshotData, Source, now_ms};
use crate::subscriptions::Subscriptions;
use crate::webhooks::EventType;

/// Where a decision may change without a check asking: what [`watch`] reads.
pub struct Sources {
    /// Every snapshot the cache fetched from BillaBear, with the one it replaced.
    pub fetched: mpsc::Receiver<Fetched>,
    /// Every change to the pending ledger's copy.
    pub pending: mpsc::Receiver<pending::Changed>,
    /// Every change to the open overrides' copy.
    pub overrides: mpsc::Receiver<overrides::Changed>,
}

/// Judges each change [`Sources`] report, in the order each source reports them, and tells the
/// writer the customer's decision when its mark changed. Runs until aborted (the cache keeps its
/// sender as long as it lives).
pub async fn watch(watch: Watch, cache: SnapshotCache, subscriptions: Subscriptions, mut sources: Sources) {
    loop {
        tokio::select! {
            Some(Fetched { customer, before, after }) = sources.fetched.recv() => {
                watch.fetched(customer, before.as_deref(), after);
            }
            Some(changed) = sources.pending.recv() => {
                watch.pending_changed(changed, &cache, &subscriptions);
            }
            Some(changed) = sources.overrides.recv() => {
                watch.override_changed(changed, &cache);
            }
            else => break,
        }
    }
}

/// What judges a cached customer's decision wherever it may have changed (a fetch, its pending
/// usage, its override), and tells the writer.
pub struct Watch {
    pub pending: Pending,
    pub overrides: Overrides,
    pub transitions: Transitions,
    pub policy: PolicySettings,
}

impl Watch {
    /// A snapshot fetched from BillaBear replaced `before` (if one was cached).
    fn fetched(&self, customer: CustomerId, before: Option<&Snapshot>, after: Arc<Snapshot>) {
        if !matches!(after.data, SnapshotData::Known(_)) {
            return;
        }
        let applied = self.overrides.active(customer, now_ms());
        let before = before.and_then(|b| self.mark(customer, b, applied.as_ref()));
        let at_ms = after.fetched_at_ms;
        self.tell(customer, before, after, Source::Upstream, applied.as_ref(), at_ms);
    }

    /// A target's pending usage changed (an event accepted, retired or dead changes a cached
    /// customer's status without a fetch).
    fn pending_changed(
        &self,
        changed: pending::Changed,
        cache: &SnapshotCache,
        subscriptions: &Subscriptions,
    ) {
        let pending::Changed { key: target, before, .. } = changed;
        let customer = match target {
            Target::Customer(customer) => Some(customer),
            Target::Subscription(subscription) => subscriptions.owner(subscription),
        };
        let Some(customer) = customer else { return };
        let Some(snapshot) = cache.cached(customer).and_then(|lookup| lookup.snapshot) else { return };
        let was = before.as_deref().unwrap_or(&[]);
        let now = now_ms();
        let applied = self.overrides.active(customer, now);
        let before = check::usage_mark(
            &snapshot.data,
            |known| self.pending.project_replacing(customer, known, Some((target, was))),
            applied.as_ref(),
            &self.policy,
        );
        self.tell(customer, before, snapshot, Source::Cache, applied.as_ref(), now);
    }

    /// A customer's override was created, ended or expired. `before` is judged as if still in
    /// force: an expired override is told here when it is closed.
    fn override_changed(&self, changed: overrides::Changed, cache: &SnapshotCache) {
        let overrides::Changed { key: customer, before, after } = changed;
        let Some(snapshot) = cache.cached(customer).and_then(|lookup| lookup.snapshot) else { return };
        let marked = self.mark(customer, &snapshot, before.as_ref());
        self.tell(customer, marked, snapshot, Source::Cache, after.as_ref(), now_ms());
    }

    /// The mark `snapshot` decides with the customer's pending usage, under `applied`.
    fn mark(&self, customer: CustomerId, snapshot: &Snapshot, applied: Option<&Override>) -> Option<Mark> {
        check::usage_mark(
            &snapshot.data,
            |known| self.pending.project(customer, known),
            applied,
            &self.policy,
        )
    }

    /// Observes the customer's decision on `snapshot` (from `source`) under `applied`, if its
    /// mark is not `before`: the whole decision (what a webhook tells) is built only then.
    fn tell(
        &self,
        customer: CustomerId,
        before: Option<Mark>,
        snapshot: Arc<Snapshot>,
        source: Source,
        applied: Option<&Override>,
        at_ms: u64,
    ) {
        if before.is_some() && self.mark(customer, &snapshot, applied) == before {
            return;
        }
        let project = |known: &Known| self.pending.project(customer, known);
        let decision = check::explain(
            customer,
            None,
            Lookup::found(snapshot, source),
            check::on_usage(project),
            applied,
            &self.policy,
            now_ms(),
        );
        self.transitions.observe(customer, before, &decision, at_ms);
    }
}

/// Records decision transitions (`ok`, `warning`, `blocked`) seen when snapshots are fetched
/// (or pending usage or an override changes a cached customer's decision), once per transition
/// across replicas, and queues the outbound webhook that tells of each in the same transaction.
/// Observing is cheap and never waits: a task writes batches.
#[derive(Clone)]
pub struct Transitions {
    sender: mpsc::Sender<Observation>,
}

/// A customer's status as a snapshot fetched at `at_ms` (Unix ms) decides it, and what its
/// webhook tells if it is a transition.
#[derive(Debug, Clone, PartialEq)]
struct Observation {
    customer: CustomerId,
    status: Status,
    at_ms: u64,
    /// The webhook's event type.
    kind: Option<&'static str>,
    /// The webhook's `data`: the decision.
    data: serde_json::Value,
    /// What the console lists and plots: the projected estimate, its currency, the lowest
    /// DISABLE limit, the reason codes (comma-separated).
    estimate: i64,
    currency: String,
    disable_limit: Option<i64>,
    reasons: String,
}

/// How many observations may wait for the writer; beyond it they are dropped (and counted),
/// never blocking a fetch.
const TRANSITION_QUEUE: usize = 10_000;

impl Transitions {
    pub fn start(pool: PgPool) -> Self {
        let (sender, receiver) = mpsc::channel(TRANSITION_QUEUE);
        tokio::spawn(write_transitions(pool, receiver));
        Self { sender }
    }

    /// `before`: the mark of the snapshot this replica held (None if it held none); only a
    /// change (of status, or of the estimate's band), or a first sight, goes to Postgres, where
    /// the newest status seen by any replica decides whether it is a transition. `after`: the
    /// decision now. `at_ms`: when the new snapshot was fetched (or the change seen).
    pub fn observe(&self, customer: CustomerId, before: Option<Mark>, after: &Decision, at_ms: u64) {
        let (Some(mark), Some(estimate)) = (after.mark(), after.estimate) else { return };
        if !is_tracked(mark.status) || before == Some(mark) {
            return;
        }
        let reasons: Vec<&str> = after.reasons.iter().map(|r| r.code()).collect();
        let observation = Observation {
            customer,
            status: after.status,
            at_ms,
            kind: EventType::of_transition(after.status, after.reasons).map(EventType::as_str),
            data: serde_json::to_value(after).unwrap_or_default(),
            estimate: estimate.amount,
            currency: estimate.currency.as_str().to_owned(),
            disable_limit: after.lowest_disable_limit(),
            reasons: reasons.join(","),
        };
        if self.sender.try_send(observation).is_err() {
            metrics::counter!("usage_gate_audit_transitions_dropped_total").increment(1);
        }
    }
}

/// Statuses between which transitions are audited (`unknown` is not a decision about usage).
fn is_tracked(status: Status) -> bool {
    matches!(status, Status::Ok | Status::Warning | Status::Blocked)
}

/// Splits a batch into rounds holding each customer at most once (an upsert may not touch a
/// row twice), keeping each customer's observations in order across rounds, so a quick
/// `blocked` then `ok` is two transitions, not none.
fn rounds(batch: Vec<Observation>) -> Vec<Vec<Observation>> {
    let mut rounds: Vec<Vec<Observation>> = vec![];
    let mut next: HashMap<CustomerId, usize> = HashMap::new();
    for observation in batch {
        let round = next.entry(observation.customer).or_insert(0);
        if *round == rounds.len() {
            rounds.push(vec![]);
        }
        rounds[*round].push(observation);
        *round += 1;
    }
    rounds
}

async fn write_transitions(pool: PgPool, mut receiver: mpsc::Receiver<Observation>) {
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, 1000).await > 0 {
        for round in rounds(std::mem::take(&mut batch)) {
            let mut attempt = 0;
            while let Err(e) = store_transitions(&pool, &round).await {
                attempt += 1;
                if attempt == 3 {
                    tracing::warn!(error = %e, customers = round.len(), "audit: cannot record decision transitions");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}

/// Upserts the observations, each only over an older one; an update that changes the status is
/// a transition, audited, and its webhooks queued, in the same transaction. `previous_status`
/// comes from the row as the update found it (after waiting for another replica's update of
/// it), so two replicas recording one change audit and tell it once.
async fn store_transitions(pool: &PgPool, round: &[Observation]) -> Result<(), sqlx::Error> {
    let customers: Vec<Uuid> = round.iter().map(|o| o.customer.as_uuid()).collect();
    let statuses: Vec<&str> = round.iter().map(|o| o.status.as_str()).collect();
    let observed: Vec<chrono::DateTime<chrono::Utc>> = round
        .iter()
        .map(|o| chrono::DateTime::from_timestamp_millis(o.at_ms as i64).unwrap_or_default())
        .collect();
    let kinds: Vec<Option<&str>> = round.iter().map(|o| o.kind).collect();
    let data: Vec<&serde_json::Value> = round.iter().map(|o| &o.data).collect();
    let estimates: Vec<i64> = round.iter().map(|o| o.estimate).collect();
    let currencies: Vec<&str> = round.iter().map(|o| o.currency.as_str()).collect();
    let disable_limits: Vec<Option<i64>> = round.iter().map(|o| o.disable_limit).collect();
    let reasons: Vec<&str> = round.iter().map(|o| o.reasons.as_str()).collect();
    let mut tx = pool.begin().await?;
    audit::lock_inserts(&mut tx).await?;
    sqlx::query(
        "WITH seen AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::jsonb[],
                                  $6::bigint[], $7::text[], $8::bigint[], $9::text[])
                 AS s (customer_id, status, observed_at, kind, data, estimate, currency, disable_limit, reasons)),
         sampled AS (
             INSERT INTO usage_samples (customer_id, observed_at, status, estimate, currency, disable_limit)
             SELECT customer_id, observed_at, status, estimate, currency, disable_limit FROM seen
             ON CONFLICT DO NOTHING),
         changed AS (
             INSERT INTO customer_decisions (customer_id, status, observed_at, estimate, currency, disable_limit, reasons)
             SELECT customer_id, status, observed_at, estimate, currency, disable_limit,
                    string_to_array(reasons, ',')
             FROM seen
             ON CONFLICT (customer_id) DO UPDATE
                 SET previous_status = customer_decisions.status,
                     status = EXCLUDED.status,
                     observed_at = EXCLUDED.observed_at,
                     estimate = EXCLUDED.estimate,
                     currency = EXCLUDED.currency,
                     disable_limit = EXCLUDED.disable_limit,
                     reasons = EXCLUDED.reasons,
                     changed_at = CASE WHEN customer_decisions.status <> EXCLUDED.status
                                       THEN now() ELSE customer_decisions.changed_at END
                 WHERE customer_decisions.observed_at < EXCLUDED.observed_at
             RETURNING customer_id, previous_status, status),
         transitions AS (
             SELECT c.customer_id, c.previous_status, c.status, s.kind, s.data
             FROM changed c JOIN seen s USING (customer_id)
             WHERE c.previous_status IS NOT NULL AND c.previous_status <> c.status),
         audited AS (
             INSERT INTO audit_log (actor, action, customer_id, outcome, details)
             SELECT 'usage-gate', 'decision.transition', customer_id, 'success',
                    jsonb_build_object('from', previous_status, 'to', status)
             FROM transitions ORDER BY customer_id
             RETURNING 1),
         queued AS (
             SELECT queue_webhooks(kind, customer_id, data || jsonb_build_object('previous_status', previous_status)) AS n
             FROM transitions WHERE kind IS NOT NULL)
         SELECT (SELECT count(*) FROM audited), (SELECT coalesce(sum(n), 0) FROM queued)",
    )
    .bind(&customers)
    .bind(&statuses)
    .bind(&observed)
    .bind(&kinds)
    .bind(&data)
    .bind(&estimates)
    .bind(&currencies)
    .bind(&disable_limits)
    .bind(&reasons)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_each_customers_observations_in_order_across_rounds() {
        let (a, b) = (CustomerId::new_v4(), CustomerId::new_v4());
        let seen = |customer, status, at_ms| Observation {
            customer,
            status,
            at_ms,
            kind: None,
            data: serde_json::Value::Null,
            estimate: 0,
            currency: String::new(),
            disable_limit: None,
            reasons: String::new(),
        };
        let batch = vec![
            seen(a, Status::Blocked, 1),
            seen(b, Status::Warning, 2),
            seen(a, Status::Ok, 3),
            seen(a, Status::Blocked, 4),
        ];
        assert_eq!(
            rounds(batch),
            [
                vec![seen(a, Status::Blocked, 1), seen(b, Status::Warning, 2)],
                vec![seen(a, Status::Ok, 3)],
                vec![seen(a, Status::Blocked, 4)],
            ]
        );
    }

    #[test]
    fn only_usage_decisions_are_tracked() {
        assert!(is_tracked(Status::Ok) && is_tracked(Status::Warning) && is_tracked(Status::Blocked));
        assert!(!is_tracked(Status::Unknown));
    }
}
