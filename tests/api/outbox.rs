//! The outbox's storage against a real Postgres: acceptance with dedupe, claims shared between
//! forwarders, leases, and the delivered/retry/dead transitions.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use usage_gate::domain::SubscriptionId;
use usage_gate::outbox::IncomingEvent;
use usage_gate::outbox::store::{self, Accepted};

use crate::helpers::*;

fn event(event_id: &str, value: f64) -> IncomingEvent {
    IncomingEvent::parse(
        &json!({"event_id": event_id, "subscription": ACME_SUBSCRIPTION, "code": "api_calls", "value": value,
                "properties": {"endpoint": "/v1/search"}}),
        "",
    )
    .unwrap()
}

async fn column(pool: &PgPool, event_id: &str, column: &str) -> Value {
    sqlx::query_scalar::<_, Value>(sqlx::AssertSqlSafe(format!(
        "SELECT to_jsonb({column}) FROM outbox WHERE event_id = $1"
    )))
    .bind(event_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn accepted_events_are_stored_and_repeats_are_duplicates_or_conflicts() {
    let (_, pool) = fresh_database().await;
    assert_eq!(
        store::accept(
            &mut pool.acquire().await.unwrap(),
            &[event("e1", 1.0), event("e2", 2.0)],
            &Default::default()
        )
        .await
        .unwrap(),
        [Accepted::New, Accepted::New]
    );
    let again = store::accept(
        &mut pool.acquire().await.unwrap(),
        &[event("e1", 1.0), event("e2", 3.0), event("e3", 1.0)],
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(again, [Accepted::Duplicate, Accepted::Conflict, Accepted::New]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 3, "nothing written for the duplicate or the conflict");
    assert_eq!(column(&pool, "e2", "value").await.as_f64(), Some(2.0), "the conflict did not overwrite");
    assert_eq!(column(&pool, "e1", "properties").await, json!({"endpoint": "/v1/search"}));
    assert_eq!(column(&pool, "e1", "status").await, json!("pending"));
}

#[tokio::test]
async fn within_one_batch_the_first_of_a_repeated_event_id_wins() {
    let (_, pool) = fresh_database().await;
    let outcome = store::accept(
        &mut pool.acquire().await.unwrap(),
        &[event("same", 1.0), event("same", 1.0), event("same", 9.0)],
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(outcome, [Accepted::New, Accepted::Duplicate, Accepted::Conflict]);
    assert_eq!(column(&pool, "same", "value").await.as_f64(), Some(1.0));
}

#[tokio::test]
async fn an_accepted_batch_notifies_forwarders_on_commit() {
    let (url, pool) = fresh_database().await;
    let mut listener = sqlx::postgres::PgListener::connect(&url).await.unwrap();
    listener.listen(store::NOTIFY_CHANNEL).await.unwrap();
    store::accept(&mut pool.acquire().await.unwrap(), &[event("n1", 1.0)], &Default::default())
        .await
        .unwrap();
    let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await.unwrap().unwrap();
    assert_eq!(notification.channel(), store::NOTIFY_CHANNEL);
}

#[tokio::test]
async fn concurrent_claimers_never_share_an_event_and_together_take_all() {
    let (url, pool) = fresh_database().await;
    let events: Vec<_> = (0..200).map(|i| event(&format!("c{i}"), 1.0)).collect();
    store::accept(&mut pool.acquire().await.unwrap(), &events, &Default::default()).await.unwrap();
    // Two "replicas", each with its own pool, claiming in small batches until nothing is left.
    let replica = |pool: PgPool| async move {
        let mut mine = Vec::new();
        loop {
            let claimed = store::claim(&pool, 7, Duration::from_secs(60)).await.unwrap();
            if claimed.is_empty() {
                return mine;
            }
            mine.extend(claimed.into_iter().map(|c| c.event_id));
        }
    };
    let other = PgPool::connect(&url).await.unwrap();
    let (a, b) = tokio::join!(replica(pool.clone()), replica(other));
    let mut all: Vec<_> = a.iter().chain(b.iter()).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), a.len() + b.len(), "an event was claimed twice");
    assert_eq!(all.len(), 200, "every event was claimed");
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_a_live_one_is_not() {
    let (_, pool) = fresh_database().await;
    store::accept(&mut pool.acquire().await.unwrap(), &[event("l1", 1.0)], &Default::default())
        .await
        .unwrap();
    let first = store::claim(&pool, 10, Duration::from_millis(200)).await.unwrap();
    assert_eq!((first.len(), first[0].attempts), (1, 1));
    assert!(store::claim(&pool, 10, Duration::from_secs(60)).await.unwrap().is_empty(), "leased");
    // The first claimer "dies"; once its lease runs out another takes the event over.
    let taken = eventually(Duration::from_secs(5), "the expired lease to be taken over", || async {
        let claimed = store::claim(&pool, 10, Duration::from_secs(60)).await.unwrap();
        (!claimed.is_empty()).then_some(claimed)
    })
    .await;
    assert_eq!((taken[0].event_id.as_str(), taken[0].attempts), ("l1", 2));
}

#[tokio::test]
async fn delivered_retried_and_dead_events_leave_the_queue_as_they_should() {
    let (_, pool) = fresh_database().await;
    store::accept(
        &mut pool.acquire().await.unwrap(),
        &[event("d", 1.0), event("r", 1.0), event("x", 1.0)],
        &Default::default(),
    )
    .await
    .unwrap();
    let claimed = store::claim(&pool, 10, Duration::from_secs(60)).await.unwrap();
    let claim = |event_id: &str| claimed.iter().find(|c| c.event_id == event_id).unwrap();
    assert!(store::mark_delivered(&pool, claim("d").id, SubscriptionId::new_v4()).await.unwrap());
    assert!(
        store::mark_retry(&pool, claim("r"), Duration::from_secs(3600), "BillaBear answered 503", Some(503))
            .await
            .unwrap()
    );
    assert!(
        store::mark_dead(&pool, claim("x"), "code: The code \"x\" does not exist.", Some(400)).await.unwrap()
    );

    assert_eq!(column(&pool, "d", "status").await, json!("delivered"));
    assert!(column(&pool, "d", "delivered_at").await.is_string());
    assert_eq!(
        (column(&pool, "r", "status").await, column(&pool, "r", "upstream_status").await),
        (json!("pending"), json!(503))
    );
    assert_eq!(column(&pool, "x", "status").await, json!("dead"));
    assert_eq!(column(&pool, "x", "last_error").await, json!("code: The code \"x\" does not exist."));
    assert!(store::claim(&pool, 10, Duration::from_secs(60)).await.unwrap().is_empty(), "nothing is due");

    // A retry that is due is claimed again.
    sqlx::query("UPDATE outbox SET next_attempt_at = now() WHERE event_id = 'r'")
        .execute(&pool)
        .await
        .unwrap();
    let again = store::claim(&pool, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!((again.len(), again[0].event_id.as_str(), again[0].attempts), (1, "r", 2));
}

#[tokio::test]
async fn pruning_deletes_only_delivered_events_past_retention() {
    let (_, pool) = fresh_database().await;
    store::accept(
        &mut pool.acquire().await.unwrap(),
        &[event("old", 1.0), event("new", 1.0), event("pending", 1.0)],
        &Default::default(),
    )
    .await
    .unwrap();
    for id in ["old", "new"] {
        let claimed = store::claim(&pool, 10, Duration::from_secs(60)).await.unwrap();
        let row = claimed.iter().find(|c| c.event_id == id).unwrap();
        assert!(store::mark_delivered(&pool, row.id, SubscriptionId::new_v4()).await.unwrap());
        sqlx::query("UPDATE outbox SET lease_until = NULL WHERE status = 'pending'")
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE outbox SET delivered_at = now() - interval '40 days' WHERE event_id = 'old'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(store::prune(&pool, Duration::from_secs(35 * 86_400), 1000).await.unwrap(), 1);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY event_id").fetch_all(&pool).await.unwrap();
    assert_eq!(left, ["new", "pending"]);
}

// On an actix runtime, as on an HTTP worker, so the requests share the thread's writer.
#[actix_rt::test]
async fn group_commit_answers_each_request_with_its_own_outcomes() {
    let (_, pool) = fresh_database().await;
    let (ingest, _) = usage_gate::admission::ingest::Ingest::new(
        pool.clone(),
        Duration::from_secs(5),
        Default::default(),
        Default::default(),
    );
    ingest.attach_worker();
    // 100 concurrent requests of two events each: its own, and one that all of them share.
    let requests = (0..100).map(|i| {
        let ingest = ingest.clone();
        async move { ingest.accept(vec![event(&format!("g-{i}"), 1.0), event("shared", 1.0)]).await.unwrap() }
    });
    let answers = futures_util::future::join_all(requests).await;
    assert!(answers.iter().all(|a| a.len() == 2 && a[0] == Accepted::New), "each request's own event is new");
    let shared_new = answers.iter().filter(|a| a[1] == Accepted::New).count();
    let shared_duplicate = answers.iter().filter(|a| a[1] == Accepted::Duplicate).count();
    assert_eq!((shared_new, shared_duplicate), (1, 99), "the shared event_id is stored once");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 101);
}

// More than one commit's worth at once (a commit holds at most 5,000 events): the backlog is
// split over commits, the second running beside the first, and every request still gets its own
// outcomes.
#[actix_rt::test]
async fn a_backlog_is_split_over_overlapping_commits_and_nothing_is_lost() {
    let (_, pool) = fresh_database().await;
    let (ingest, _) = usage_gate::admission::ingest::Ingest::new(
        pool.clone(),
        Duration::from_secs(5),
        Default::default(),
        Default::default(),
    );
    ingest.attach_worker();
    let requests = (0..60).map(|r| {
        let ingest = ingest.clone();
        async move {
            let events = (0..100).map(|i| event(&format!("b-{r}-{i}"), 1.0)).collect();
            ingest.accept(events).await.unwrap()
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    assert!(answers.iter().all(|a| a.len() == 100 && a.iter().all(|o| *o == Accepted::New)));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 6000);
}

#[tokio::test]
async fn commits_inserting_the_same_ids_in_opposite_orders_never_deadlock() {
    let (_, pool) = fresh_database().await;
    for round in 0..3 {
        let ids: Vec<IncomingEvent> = (0..5000).map(|i| event(&format!("r{round}-{i:04}"), 1.0)).collect();
        let reversed: Vec<IncomingEvent> = ids.iter().rev().cloned().collect();
        let (mut a, mut b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        let counting = Default::default();
        let (first, second) =
            tokio::join!(store::accept(&mut a, &ids, &counting), store::accept(&mut b, &reversed, &counting));
        let (first, second) = (first.expect("no deadlock"), second.expect("no deadlock"));
        // Each id is new for exactly one of the two, and a duplicate for the other.
        for (i, outcome) in first.iter().enumerate() {
            let other = second[ids.len() - 1 - i];
            assert!(
                matches!(
                    (outcome, other),
                    (Accepted::New, Accepted::Duplicate) | (Accepted::Duplicate, Accepted::New)
                ),
                "round {round} id {i}: {outcome:?} {other:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_late_outcome_from_an_expired_claim_changes_nothing() {
    let (_, pool) = fresh_database().await;
    store::accept(&mut pool.acquire().await.unwrap(), &[event("fenced", 1.0)], &Default::default())
        .await
        .unwrap();
    let first = store::claim(&pool, 10, Duration::from_secs(60)).await.unwrap().remove(0);
    // The first replica stalls past its lease; a second one takes the event over.
    sqlx::query("UPDATE outbox SET lease_until = now() - interval '1 second'").execute(&pool).await.unwrap();
    let second = store::claim(&pool, 10, Duration::from_secs(60)).await.unwrap().remove(0);
    assert_ne!(first.claim_token, second.claim_token);
    let lease = column(&pool, "fenced", "lease_until").await;
    assert!(!store::mark_retry(&pool, &first, Duration::ZERO, "late", None).await.unwrap());
    assert!(!store::mark_dead(&pool, &first, "late", None).await.unwrap());
    assert_eq!(column(&pool, "fenced", "lease_until").await, lease, "the live lease is kept");
    assert_eq!(column(&pool, "fenced", "status").await, json!("pending"));
    assert!(store::claim(&pool, 10, Duration::from_secs(60)).await.unwrap().is_empty(), "still leased");
    assert!(store::mark_retry(&pool, &second, Duration::from_secs(60), "its own", None).await.unwrap());
    assert_eq!(column(&pool, "fenced", "last_error").await, json!("its own"));
}

#[tokio::test]
async fn pruning_goes_in_chunks_and_one_replica_at_a_time() {
    let (_, pool) = fresh_database().await;
    sqlx::query(
        "INSERT INTO outbox (event_id, subscription_id, code, value, fingerprint, status, delivered_at)
         SELECT 'old-' || i, gen_random_uuid(), 'api_calls', 1, '\\x00', 'delivered', now() - interval '40 days'
         FROM generate_series(1, 2500) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let retention = Duration::from_secs(35 * 86_400);
    // Another replica is pruning: this one leaves it alone.
    let mut other = pool.acquire().await.unwrap();
    // The pruning lock: "usageprn" (src/outbox/store.rs).
    sqlx::query("SELECT pg_advisory_lock(8463215221470687854)").execute(&mut *other).await.unwrap();
    assert_eq!(store::prune(&pool, retention, 1000).await.unwrap(), 0);
    sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut *other).await.unwrap();
    assert_eq!(store::prune(&pool, retention, 1000).await.unwrap(), 2500);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn an_event_id_resent_while_its_old_row_is_pruned_is_answered_as_stored() {
    let (_, pool) = fresh_database().await;
    store::accept(&mut pool.acquire().await.unwrap(), &[event("race", 1.0)], &Default::default())
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET status = 'delivered', delivered_at = now() - interval '40 days'")
        .execute(&pool)
        .await
        .unwrap();
    // Pruning commits in another session exactly between the insert that ran into the old row
    // and the read of what is stored (dblink: a second connection inside the statement).
    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await.unwrap();
    let url = url::Url::parse(&base_database_url()).unwrap();
    let other = format!(
        "host={} port={} user={} dbname={database}",
        url.host_str().unwrap(),
        url.port().unwrap_or(5432),
        url.username()
    );
    for statement in [
        "CREATE EXTENSION IF NOT EXISTS dblink".to_owned(),
        format!(
            "CREATE FUNCTION test_prune_now() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM dblink_exec('{other}', 'DELETE FROM outbox WHERE status = ''delivered''');
                 RETURN NULL;
             END $$"
        ),
        "CREATE TRIGGER test_prune_now AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION test_prune_now()"
            .to_owned(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&pool).await.unwrap();
    }
    let outcome =
        store::accept(&mut pool.acquire().await.unwrap(), &[event("race", 1.0)], &Default::default())
            .await
            .unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT status FROM outbox WHERE event_id = 'race'")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        (outcome, stored),
        (vec![Accepted::New], vec!["pending".to_owned()]),
        "the answer matches what is stored"
    );
}
