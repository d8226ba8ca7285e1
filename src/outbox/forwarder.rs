//! Delivers pending events to BillaBear: claims due rows (shared safely between replicas),
//! sends them with bounded concurrency, and records each outcome. Woken by Postgres NOTIFY when
//! events are accepted, polling as a fallback.
//!
//! Delivery is at least once: if a replica dies after BillaBear took an event but before the row
//! was marked, the event is sent again when its lease expires. BillaBear collapses repeats of an
//! `event_id` only within one counting window, so the window is kept small: the mark follows the
//! send at once, and the lease only matters when a replica dies.

use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use super::retry::backoff;
use super::store::{self, Claimed};
use crate::billabear::{BillaBearClient, BillaBearError, NewEvent};
use crate::cache::SnapshotCache;
use crate::config::OutboxSettings;
use crate::domain::{CustomerId, EventId, MetricCode, SubscriptionId};
use crate::subscriptions::{ResolveError, Subscriptions};

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    /// BillaBear refused the event (400), or it can never be sent: retrying will not help.
    Permanent { message: String, upstream_status: Option<u16> },
    /// BillaBear was unreachable, slow, failing or misconfigured: try again later.
    Transient { message: String, upstream_status: Option<u16> },
}

impl From<BillaBearError> for Failure {
    fn from(e: BillaBearError) -> Self {
        let (message, upstream_status) = (e.to_string(), e.upstream_status());
        // A 401 or a 404 on /events is usage-gate's configuration, not the event: keep it.
        if e.is_retryable() {
            Failure::Transient { message, upstream_status }
        } else {
            Failure::Permanent { message, upstream_status }
        }
    }
}

struct Metrics {
    delivered: Counter,
    retried: Counter,
    dead: Counter,
    /// From acceptance to BillaBear's answer.
    lag: metrics::Histogram,
}

impl Metrics {
    fn new() -> Self {
        let outcome = |outcome: &'static str| metrics::counter!("usage_gate_outbox_deliveries_total", "outcome" => outcome);
        Self {
            delivered: outcome("delivered"),
            retried: outcome("retried"),
            dead: outcome("dead"),
            lag: metrics::histogram!("usage_gate_outbox_delivery_lag_seconds"),
        }
    }
}

/// How many rows per statement when delivered events past retention are deleted.
const PRUNE_CHUNK: i64 = 1000;
/// How soon a broken LISTEN connection is made again (polling covers the gap).
const RELISTEN_EVERY: Duration = Duration::from_secs(1);

struct Forwarder {
    pool: PgPool,
    client: BillaBearClient,
    settings: OutboxSettings,
    /// Where a customer's events go, and whose a subscription is.
    subscriptions: Subscriptions,
    /// Told when a customer's events are delivered, so their cached decision catches up.
    snapshots: Option<SnapshotCache>,
    metrics: Metrics,
}

/// The running forwarder; [`ForwarderHandle::stop`] lets deliveries under way finish.
pub struct ForwarderHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ForwarderHandle {
    /// Stops claiming and pruning, waits for the deliveries under way, and leaves the rest pending.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts the forwarder and the pruner (every `prune_every`: `retention.interval_s`) on the
/// current tokio runtime.
pub fn spawn(
    pool: PgPool,
    client: &BillaBearClient,
    settings: OutboxSettings,
    prune_every: Duration,
    subscriptions: Subscriptions,
    snapshots: Option<SnapshotCache>,
) -> ForwarderHandle {
    let (stop, stopped) = watch::channel(false);
    let pruner =
        tokio::spawn(prune(pool.clone(), settings.retention.duration(), prune_every, stopped.clone()));
    let forwarder = Arc::new(Forwarder {
        pool,
        client: client.with_timeout(settings.timeout),
        subscriptions,
        settings,
        snapshots,
        metrics: Metrics::new(),
    });
    ForwarderHandle { stop, tasks: vec![tokio::spawn(forwarder.run(stopped)), pruner] }
}

/// Deletes delivered events past retention every `every`, off the delivery path.
async fn prune(pool: PgPool, retention: Duration, every: Duration, mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow() {
        match store::prune(&pool, retention, PRUNE_CHUNK).await {
            Ok(0) => {}
            Ok(pruned) => {
                crate::retention::pruned("outbox", pruned);
                tracing::info!(pruned, "outbox: pruned delivered events past retention")
            }
            Err(e) => tracing::warn!(error = %e, "outbox: cannot prune"),
        }
        tokio::select! {
            _ = stopped.changed() => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}

impl Forwarder {
    /// Keeps up to `outbox.concurrency` deliveries under way: freed slots are filled by the
    /// next claim as deliveries end, so one slow delivery holds back only its own slot.
    async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut listener = self.listen().await;
        let mut deliveries = JoinSet::new();
        while !*stopped.borrow() {
            while deliveries.try_join_next().is_some() {}
            let free = self.settings.concurrency.saturating_sub(deliveries.len());
            // A claim per finished delivery would be a query per event: wait for a quarter of
            // the slots to free up, unless none is busy.
            if free >= self.settings.concurrency.div_ceil(4) || deliveries.is_empty() {
                match store::claim(&self.pool, free as i64, self.settings.lease).await {
                    Ok(claimed) => {
                        let full = claimed.len() == free;
                        for event in claimed {
                            let this = self.clone();
                            deliveries.spawn(async move { this.deliver(event).await }.in_current_span());
                        }
                        if full {
                            // More may be due already; claim as slots free up.
                            continue;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "outbox: cannot claim events; retrying"),
                }
            }
            tokio::select! {
                _ = stopped.changed() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
                woken = wait_for_notification(listener.as_mut()) => {
                    if !woken {
                        // The listening connection broke (or was never made): make it again;
                        // polling covers the gap.
                        listener = self.listen().await;
                    }
                }
            }
        }
        while deliveries.join_next().await.is_some() {}
    }

    async fn listen(&self) -> Option<PgListener> {
        let listening = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(store::NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "outbox: cannot LISTEN for new events; polling until it can");
                None
            }
        }
    }

    async fn deliver(&self, event: Claimed) {
        match self.send(&event).await {
            Ok(subscription) => {
                self.metrics.delivered.increment(1);
                let lag = chrono::Utc::now() - event.received_at;
                self.metrics.lag.record(lag.num_milliseconds().max(0) as f64 / 1000.0);
                let customer = self.subscriptions.customer_of_event(event.customer_id, event.subscription_id);
                if let (Some(snapshots), Some(customer)) = (&self.snapshots, customer) {
                    snapshots.refresh_soon(customer);
                }
                // BillaBear has it: the row must not be claimed and sent again, so recording is
                // retried (a Postgres blip, a pool timeout) for as long as one delivery may take.
                self.record(&event, "delivered", || {
                    store::mark_delivered(&self.pool, event.id, subscription)
                })
                .await;
            }
            Err(failure) => self.failed(&event, failure).await,
        }
    }

    /// A failed delivery: dead if retrying cannot help or the retries ran out (see
    /// [`give_up`]), else tried again after a backoff.
    async fn failed(&self, event: &Claimed, failure: Failure) {
        let (message, upstream_status, dead) = match failure {
            Failure::Permanent { message, upstream_status } => (message, upstream_status, true),
            Failure::Transient { message, upstream_status } => {
                match give_up(&self.settings, event.attempts, chrono::Utc::now() - event.attempts_since) {
                    Some(why) => (format!("{why}; last error: {message}"), upstream_status, true),
                    None => (message, upstream_status, false),
                }
            }
        };
        if dead {
            self.metrics.dead.increment(1);
            tracing::warn!(event_id = %event.event_id, error = %message, "outbox: event is dead");
            self.record(event, "dead", || store::mark_dead(&self.pool, event, &message, upstream_status))
                .await;
        } else {
            self.metrics.retried.increment(1);
            let attempts = u32::try_from(event.attempts).unwrap_or(1);
            let delay = backoff(attempts, self.settings.retry_base, self.settings.retry_max, fastrand::f64());
            tracing::debug!(event_id = %event.event_id, error = %message, ?delay, "outbox: delivery failed");
            self.record(event, "retry", || {
                store::mark_retry(&self.pool, event, delay, &message, upstream_status)
            })
            .await;
        }
    }

    /// Records an outcome, trying again for up to `outbox.timeout` while Postgres fails. If it
    /// never succeeds the row keeps its lease and is claimed again when the lease expires
    /// (`outbox.lease_ms` is validated to leave room for this).
    async fn record<F, Fut>(&self, event: &Claimed, outcome: &'static str, mut update: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, sqlx::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            match update().await {
                Ok(true) => return,
                Ok(false) => {
                    // Another replica holds the event now (this claim's lease ran out): its
                    // outcome counts, not this one.
                    tracing::info!(event_id = %event.event_id, outcome, "outbox: outcome not recorded; the event was claimed again");
                    return;
                }
                Err(e) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!(event_id = %event.event_id, outcome, error = %e, "outbox: cannot record a delivery outcome; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    tracing::error!(event_id = %event.event_id, outcome, error = %e, "outbox: cannot record a delivery outcome; the event is claimed again when its lease expires");
                    return;
                }
            }
        }
    }

    /// Sends the event; the subscription it went to.
    async fn send(&self, event: &Claimed) -> Result<SubscriptionId, Failure> {
        let permanent = |message: String| Failure::Permanent { message, upstream_status: None };
        let subscription = match (event.subscription_id, event.customer_id) {
            (Some(subscription), _) => SubscriptionId::from(subscription),
            (None, Some(customer)) => self.resolve(CustomerId::from(customer), &event.code).await?,
            (None, None) => return Err(permanent("neither subscription nor customer".into())),
        };
        let new_event = NewEvent {
            event_id: EventId::parse(&event.event_id).map_err(|e| permanent(format!("event_id {e}")))?,
            subscription,
            code: MetricCode::parse(&event.code).map_err(|e| permanent(format!("code {e}")))?,
            value: event.value,
            properties: serde_json::from_str(&event.properties)
                .map_err(|e| permanent(format!("its stored properties cannot be read: {e}")))?,
        };
        self.client.create_event(&new_event).await?;
        Ok(subscription)
    }

    /// The customer's active usage subscription whose price meters `code`.
    async fn resolve(&self, customer: CustomerId, code: &str) -> Result<SubscriptionId, Failure> {
        match self.subscriptions.usage_subscription(customer, code).await {
            Ok(subscription) => Ok(subscription),
            Err(ResolveError::BillaBear(BillaBearError::NotFound(_))) => Err(Failure::Permanent {
                message: format!("BillaBear has no customer {customer}"),
                upstream_status: Some(404),
            }),
            Err(ResolveError::BillaBear(e)) => Err(e.into()),
            Err(e @ ResolveError::NoUsageSubscription { .. }) => {
                Err(Failure::Permanent { message: e.to_string(), upstream_status: None })
            }
        }
    }
}

/// Resolves when a notification arrives (true), or when the listener fails or there is none
/// (false, after [`RELISTEN_EVERY`] without one, so it is made again).
async fn wait_for_notification(listener: Option<&mut PgListener>) -> bool {
    match listener {
        Some(listener) => listener.recv().await.is_ok(),
        None => {
            tokio::time::sleep(RELISTEN_EVERY).await;
            false
        }
    }
}

/// Why a transiently failing event is given up (made dead), if it is: `outbox.max_attempts`
/// attempts made, or `outbox.max_age` since this run of attempts began.
fn give_up(settings: &OutboxSettings, attempts: i32, trying_for: chrono::TimeDelta) -> Option<String> {
    let attempts = u32::try_from(attempts).unwrap_or(0);
    if attempts >= settings.max_attempts {
        return Some(format!("gave up after {attempts} attempts (outbox.max_attempts)"));
    }
    let trying_for = trying_for.to_std().unwrap_or_default();
    (trying_for >= settings.max_age)
        .then(|| format!("gave up after {}s of attempts (outbox.max_age_s)", trying_for.as_secs()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_failing_event_is_given_up_after_max_attempts_or_max_age() {
        let settings = crate::config::OutboxSettings {
            max_attempts: 5,
            max_age: Duration::from_secs(3600),
            ..Default::default()
        };
        let minutes = chrono::TimeDelta::minutes;
        assert_eq!(give_up(&settings, 4, minutes(59)), None);
        assert!(give_up(&settings, 5, minutes(1)).unwrap().contains("5 attempts"));
        assert!(give_up(&settings, 1, minutes(60)).unwrap().contains("3600s"));
    }

    #[test]
    fn only_a_refused_event_is_dead() {
        let validation = BillaBearError::Validation(BTreeMap::from([("code".into(), "unknown".into())]));
        assert!(matches!(Failure::from(validation), Failure::Permanent { upstream_status: Some(400), .. }));
        for transient in [
            BillaBearError::Timeout(Duration::from_secs(5)),
            BillaBearError::Connect("refused".into()),
            BillaBearError::Unavailable { status: 503 },
            BillaBearError::Unavailable { status: 429 },
            BillaBearError::Unauthorized,
            BillaBearError::NotFound("route"),
            BillaBearError::UnexpectedStatus { status: 422 },
        ] {
            assert!(matches!(Failure::from(transient.clone()), Failure::Transient { .. }), "{transient:?}");
        }
    }
}
