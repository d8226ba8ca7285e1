//! The process killed (SIGKILL) in the middle of a load of events: after a restart on the same
//! database, every acknowledged event reaches BillaBear, and none twice except those whose
//! delivery was under way at the kill (BillaBear's 201 may have arrived unrecorded).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use usage_gate::sim::Seed;

use crate::helpers::*;

/// Delivery concurrency of the killed process, so at most this many events were under way.
const CONCURRENCY: usize = 4;

#[tokio::test]
async fn killed_mid_load_it_loses_no_acknowledged_event() {
    let sim = start_sim(Seed::built_in());
    // Deliveries take a while, so some are under way at the kill.
    sim.set_faults(json!({"latency_ms": 5, "only": "events"})).await;
    let database = fresh_database_url().await;
    let config = process_config(
        &sim,
        &format!(
            r#"
[outbox]
concurrency = {CONCURRENCY}
lease_ms = 2000
timeout_ms = 500
retry_base_ms = 20
retry_max_ms = 200
[[auth.keys]]
name = "ingester"
key = "{EVENTS_KEY}"
scopes = ["events"]
"#
        ),
    );
    let (mut first, base) = serve_process(&config, &database).await;

    // Eight clients post events until the process dies under them.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (acknowledged, url) = (acknowledged.clone(), format!("{base}/v1/events"));
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for n in 0.. {
                    let event_id = format!("load-{client}-{n}");
                    let body = json!({"event_id": event_id, "subscription": ACME_SUBSCRIPTION,
                                      "code": "api_calls", "value": 1});
                    match http.post(&url).bearer_auth(EVENTS_KEY).json(&body).send().await {
                        Ok(r) if r.status() == 202 => acknowledged.lock().unwrap().push(event_id),
                        Ok(r) => panic!("{event_id}: {}", r.status()),
                        Err(_) => return, // killed
                    }
                }
            })
        })
        .collect();
    // Kill it once deliveries are flowing and events keep arriving.
    eventually(Duration::from_secs(30), "some events delivered while the load runs", || async {
        (sim.requests().await["by_route"]["POST /api/v1/events"].as_u64() >= Some(50)).then_some(())
    })
    .await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    for client in clients {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 50, "load ran: {} acknowledged", acknowledged.len());

    // Restarted on the same database, it delivers the rest.
    let (mut second, _) = serve_process(&config, &database).await;
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    eventually(Duration::from_secs(60), "the outbox to drain after the restart", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status <> 'delivered'")
            .fetch_one(&pool)
            .await
            .unwrap();
        (pending == 0).then_some(())
    })
    .await;
    let stored: HashSet<String> = sqlx::query_scalar("SELECT event_id FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut twice = vec![];
    for event_id in &acknowledged {
        assert!(stored.contains(event_id), "{event_id} was acknowledged but is not in the outbox");
        match sim.event_count(event_id).await {
            0 => panic!("{event_id} was acknowledged but never reached BillaBear"),
            1 => {}
            _ => twice.push(event_id.clone()),
        }
    }
    // Events stored but not acknowledged (the answer was cut off by the kill) go out too.
    for event_id in stored.iter().filter(|id| !acknowledged.contains(id)) {
        assert!(sim.event_count(event_id).await >= 1, "{event_id} is stored but was not delivered");
    }
    assert!(
        twice.len() <= CONCURRENCY,
        "only deliveries under way at the kill may be repeated, at most {CONCURRENCY}: {twice:?}"
    );
    assert!(second.terminate().success());
}
