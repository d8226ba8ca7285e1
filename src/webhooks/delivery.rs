//! Delivers queued webhook messages: every replica claims due messages (SKIP LOCKED, so each
//! attempt is made by one replica), signs and posts them, and records each attempt with what
//! follows from it (delivered, due again on the schedule, failed, or the endpoint disabled on 410).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::destination::{Destinations, Guard};
use super::store::{self, Attempt, Claimed};
use super::{Attempted, attempted, retry_after, signature};
use crate::config::OutboundWebhookSettings;
use crate::seal::Sealer;

/// How often the backlog gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);
/// At most this much of a failed answer's body is kept with the attempt.
const MAX_ERROR_BODY: usize = 256;

/// Starts delivering on this replica, and pruning messages past retention (its own task, so a
/// long prune holds up no delivery); both run until aborted (an attempt cut short is made again
/// when its claim runs out).
pub fn spawn(
    pool: PgPool,
    settings: OutboundWebhookSettings,
    sealer: Arc<Sealer>,
) -> anyhow::Result<Vec<tokio::task::AbortHandle>> {
    let destinations = Destinations::new(settings.allowed_subnets());
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        // A receiver's redirect is an answer to fix, not to follow: it fails the attempt.
        .redirect(reqwest::redirect::Policy::none())
        // Names resolve only to allowed addresses, and the connection goes to one of those (a
        // proxy from the environment would connect elsewhere).
        .dns_resolver(Guard(destinations.clone()))
        .no_proxy()
        .user_agent(concat!("usage-gate-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let delivering = tokio::spawn(run(Arc::new(Deliverer { pool, client, destinations, sealer, settings })));
    Ok(vec![delivering.abort_handle()])
}

/// Registers the delivery counters for every outcome, so `/metrics` shows zeros (and the
/// failing-deliveries alert a series) before the first attempt.
pub fn register_metrics() {
    for outcome in ["delivered", "gone", "failed"] {
        metrics::counter!("usage_gate_webhook_attempts_total", "outcome" => outcome).increment(0);
    }
    for outcome in ["delivered", "failed"] {
        metrics::counter!("usage_gate_webhook_messages_total", "outcome" => outcome).increment(0);
    }
}

struct Deliverer {
    pool: PgPool,
    client: reqwest::Client,
    destinations: Destinations,
    sealer: Arc<Sealer>,
    settings: OutboundWebhookSettings,
}

/// Claims due messages while attempts are free, each attempt its own task (a slow receiver
/// holds one of `concurrency` slots, not the others' messages); the attempts under way stop
/// with the loop.
async fn run(deliverer: Arc<Deliverer>) {
    let settings = &deliverer.settings;
    // Due again only after every attempt of the claim could have timed out.
    let lease = settings.timeout * 2 + Duration::from_secs(1);
    let mut gauges_at: Option<Instant> = None;
    let mut under_way = JoinSet::new();
    // Attempts under way per endpoint, so that one receiver that hangs holds at most
    // `max_attempts_per_endpoint` slots and the others' messages go out meanwhile.
    let mut per_endpoint: HashMap<Uuid, i64> = HashMap::new();
    loop {
        while let Some(finished) = under_way.try_join_next() {
            slot_freed(&mut per_endpoint, finished);
        }
        if gauges_at.is_none_or(|at| at.elapsed() >= GAUGES_EVERY) {
            gauges_at = Some(Instant::now());
            match store::backlog(&deliverer.pool).await {
                Ok((pending, lag)) => {
                    metrics::gauge!("usage_gate_webhook_messages_pending").set(pending as f64);
                    metrics::gauge!("usage_gate_webhook_lag_seconds").set(lag);
                }
                Err(e) => tracing::warn!(error = %e, "webhooks: cannot read the backlog"),
            }
        }
        let free = settings.concurrency.saturating_sub(under_way.len());
        if free == 0 {
            if let Some(finished) = under_way.join_next().await {
                slot_freed(&mut per_endpoint, finished);
            }
            continue;
        }
        let busy: Vec<(Uuid, i64)> = per_endpoint.iter().map(|(e, n)| (*e, *n)).collect();
        let cap = settings.max_attempts_per_endpoint as i64;
        let claimed = match store::claim(&deliverer.pool, free as i64, lease, cap, &busy).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: cannot claim due messages");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(settings.poll_interval) => {}
                Some(finished) = under_way.join_next(), if !under_way.is_empty() => slot_freed(&mut per_endpoint, finished),
            }
            continue;
        }
        for message in claimed {
            *per_endpoint.entry(message.endpoint_id).or_default() += 1;
            under_way.spawn(deliver(deliverer.clone(), message));
        }
    }
}

fn slot_freed(per_endpoint: &mut HashMap<Uuid, i64>, finished: Result<Uuid, tokio::task::JoinError>) {
    if let Ok(endpoint) = finished
        && let Some(n) = per_endpoint.get_mut(&endpoint)
    {
        *n -= 1;
        if *n <= 0 {
            per_endpoint.remove(&endpoint);
        }
    }
}

/// One attempt and its outcome recorded; answers the endpoint, whose slot it frees.
async fn deliver(deliverer: Arc<Deliverer>, message: Claimed) -> Uuid {
    let attempt = post(&deliverer.client, &deliverer.destinations, &deliverer.sealer, &message).await;
    let outcome = attempted(attempt.status_code);
    let retry = match outcome {
        Attempted::Failed => {
            retry_after(message.attempts.max(0) as u32, &deliverer.settings.retry_schedule())
        }
        _ => None,
    };
    let label = match outcome {
        Attempted::Delivered => "delivered",
        Attempted::Gone => "gone",
        Attempted::Failed => "failed",
    };
    metrics::counter!("usage_gate_webhook_attempts_total", "outcome" => label).increment(1);
    match (outcome, retry) {
        (Attempted::Delivered, _) => {
            metrics::counter!("usage_gate_webhook_messages_total", "outcome" => "delivered").increment(1)
        }
        (_, None) => {
            metrics::counter!("usage_gate_webhook_messages_total", "outcome" => "failed").increment(1)
        }
        _ => {}
    }
    if outcome != Attempted::Delivered {
        tracing::info!(message_id = %message.id, attempts = message.attempts, status = ?attempt.status_code,
            error = attempt.error.as_deref().unwrap_or(""), "webhooks: attempt failed");
    }
    // An attempt whose outcome is lost is made again when its claim runs out.
    let mut tries = 0;
    while let Err(e) = store::finish(&deliverer.pool, &message, &attempt, outcome, retry).await {
        tries += 1;
        if tries == 3 {
            tracing::warn!(message_id = %message.id, error = %e, "webhooks: cannot record an attempt");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200 * tries)).await;
    }
    message.endpoint_id
}

/// One signed POST of the message to its endpoint (refused, as a failed attempt, when the URL
/// names an address `destinations` does not allow: the resolver judges names, this literals).
async fn post(
    client: &reqwest::Client,
    destinations: &Destinations,
    sealer: &Sealer,
    message: &Claimed,
) -> Attempt {
    let started = Instant::now();
    let opened = [Some(&message.secret), message.previous_secret.as_ref()]
        .into_iter()
        .flatten()
        .map(|stored| sealer.open(message.endpoint_id, stored))
        .collect::<Result<Vec<String>, _>>();
    let secrets = match opened {
        Ok(secrets) => secrets,
        Err(e) => {
            let error = format!("cannot read the endpoint's signing secret: {e}");
            return Attempt { status_code: None, error: Some(error), duration: started.elapsed() };
        }
    };
    let literal = url::Url::parse(&message.url).ok().and_then(|url| match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    });
    if let Some(Err(refused)) = literal.map(|ip| destinations.judge(ip)) {
        return Attempt {
            status_code: None,
            error: Some(format!("refused: {refused}")),
            duration: started.elapsed(),
        };
    }
    let timestamp = chrono::Utc::now().timestamp();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let sent = client
        .post(&message.url)
        .header("content-type", "application/json")
        .header("webhook-id", &message.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature(&message.id, timestamp, &message.body, &secrets))
        .body(message.body.clone())
        .send()
        .await;
    match sent {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let error = (!response.status().is_success()).then(|| format!("HTTP {status}"));
            // The start of a failed answer's body helps whoever reads the attempt log.
            let error = match (error, response.chunk().await) {
                (Some(error), Ok(Some(chunk))) if !chunk.is_empty() => {
                    let text =
                        String::from_utf8_lossy(&chunk[..chunk.len().min(MAX_ERROR_BODY)]).replace('\0', "");
                    Some(format!("{error}: {text}"))
                }
                (error, _) => error,
            };
            Attempt { status_code: Some(status), error, duration: started.elapsed() }
        }
        Err(e) => Attempt {
            status_code: None,
            error: Some(if e.is_timeout() {
                "timed out".into()
            } else if let Some(refused) = refusal(&e) {
                format!("refused: {refused}")
            } else {
                format!("cannot connect: {e}")
            }),
            duration: started.elapsed(),
        },
    }
}

/// The destination rule behind a failed connection, if that is what failed it.
fn refusal(error: &reqwest::Error) -> Option<&super::destination::Refused> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<super::destination::Refused>() {
            return Some(refused);
        }
        source = e.source();
    }
    None
}
