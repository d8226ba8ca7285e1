//! Delivers pending events to BillaBear: claims due rows (shared safely between replicas),
//! sends them with bounded concurrency, and records each outcome. Woken by Postgres NOTIFY when
//! events are accepted, polling as a fallback.
//!
//! Delivery is at least once: if a replica dies after BillaBear took an event but before the row
//! was marked, the event is sent again when its lease expires. BillaBear collapses repeats of an
//! `event_id` only within one counting window, so the window is kept small: the mark follows the
//! send at once, and the lease only matters when a replica dies.

use std::time::Duration;

use futures_util::StreamExt;
use metrics::Counter;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
        match e {
            BillaBearError::Validation(_) | BillaBearError::InvalidRequest(_) => {
                Failure::Permanent { message, upstream_status }
            }
            // A 401 or a 404 on /events is usage-gate's configuration, not the event: keep it.
            _ => Failure::Transient { message, upstream_status },
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

/// How often delivered events past retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

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
    task: JoinHandle<()>,
}

impl ForwarderHandle {
    /// Stops claiming, waits for the deliveries under way, and leaves the rest pending.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the forwarder on the current tokio runtime.
pub fn spawn(
    pool: PgPool,
    client: &BillaBearClient,
    settings: OutboxSettings,
    subscriptions: Subscriptions,
    snapshots: Option<SnapshotCache>,
) -> ForwarderHandle {
    let (stop, stopped) = watch::channel(false);
    let forwarder = Forwarder {
        pool,
        client: client.with_timeout(settings.timeout),
        subscriptions,
        settings,
        snapshots,
        metrics: Metrics::new(),
    };
    ForwarderHandle { stop, task: tokio::spawn(forwarder.run(stopped)) }
}

impl Forwarder {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut listener = self.listen().await;
        let mut next_prune = tokio::time::Instant::now();
        while !*stopped.borrow() {
            if tokio::time::Instant::now() >= next_prune {
                match store::prune(&self.pool, self.settings.retention).await {
                    Ok(0) => {}
                    Ok(pruned) => tracing::info!(pruned, "outbox: pruned delivered events past retention"),
                    Err(e) => tracing::warn!(error = %e, "outbox: cannot prune"),
                }
                next_prune += PRUNE_EVERY;
            }
            match store::claim(&self.pool, self.settings.concurrency as i64, self.settings.lease).await {
                Ok(claimed) if !claimed.is_empty() => {
                    futures_util::stream::iter(claimed)
                        .for_each_concurrent(self.settings.concurrency, |event| self.deliver(event))
                        .await;
                    // More may be due already.
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox: cannot claim events; retrying"),
            }
            tokio::select! {
                _ = stopped.changed() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                woken = wait_for_notification(listener.as_mut()) => {
                    if !woken {
                        // The listening connection broke; poll until it can be made again.
                        listener = self.listen().await;
                    }
                }
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(store::NOTIFY_CHANNEL).await.ok()?;
        Some(listener)
    }

    async fn deliver(&self, event: Claimed) {
        let result = match self.send(&event).await {
            Ok(()) => {
                self.metrics.delivered.increment(1);
                let lag = chrono::Utc::now() - event.received_at;
                self.metrics.lag.record(lag.num_milliseconds().max(0) as f64 / 1000.0);
                let customer = self.subscriptions.customer_of_event(event.customer_id, event.subscription_id);
                if let (Some(snapshots), Some(customer)) = (&self.snapshots, customer) {
                    snapshots.refresh_soon(customer);
                }
                store::mark_delivered(&self.pool, event.id).await
            }
            Err(Failure::Permanent { message, upstream_status }) => {
                self.metrics.dead.increment(1);
                tracing::warn!(event_id = %event.event_id, error = %message, "outbox: event is dead");
                store::mark_dead(&self.pool, event.id, &message, upstream_status).await
            }
            Err(Failure::Transient { message, upstream_status }) => {
                self.metrics.retried.increment(1);
                let attempts = u32::try_from(event.attempts).unwrap_or(1);
                let delay =
                    backoff(attempts, self.settings.retry_base, self.settings.retry_max, fastrand::f64());
                tracing::debug!(event_id = %event.event_id, error = %message, ?delay, "outbox: delivery failed");
                store::mark_retry(&self.pool, event.id, delay, &message, upstream_status).await
            }
        };
        if let Err(e) = result {
            // The row keeps its lease and is claimed again when it expires.
            tracing::warn!(event_id = %event.event_id, error = %e, "outbox: cannot record a delivery outcome");
        }
    }

    async fn send(&self, event: &Claimed) -> Result<(), Failure> {
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
            properties: event.properties.as_object().cloned().unwrap_or_default(),
        };
        Ok(self.client.create_event(&new_event).await?)
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

/// Resolves when a notification arrives (true) or the listener fails (false); never without one.
async fn wait_for_notification(listener: Option<&mut PgListener>) -> bool {
    match listener {
        Some(listener) => listener.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

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
