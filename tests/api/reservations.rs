//! Reservations (holds): money set aside under the limit for work whose cost comes later,
//! granted exactly under concurrency, committed with the real usage, released or expired.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::enforce::call;
use crate::helpers::*;

impl TestApp {
    pub async fn hold(&self, customer: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/customers/{customer}/reservations")))
            .bearer_auth(EVENTS_KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A hold asked for with an `Idempotency-Key`.
    pub async fn hold_with_key(&self, customer: &str, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/customers/{customer}/reservations")))
            .bearer_auth(EVENTS_KEY)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `usage_gate_reservations_total{outcome="replayed"}`.
    pub async fn replays_counted(&self) -> u64 {
        let metrics = self.get("/metrics", None).await.text().await.unwrap();
        let line = "usage_gate_reservations_total{outcome=\"replayed\"} ";
        metrics.lines().find_map(|l| l.strip_prefix(line)).map_or(0, |n| n.parse().unwrap())
    }

    /// The customer's holds made with this key: (id, closed_as).
    pub async fn held_with_key(&self, customer: &str, key: &str) -> Vec<(uuid::Uuid, Option<String>)> {
        sqlx::query_as(
            "SELECT id, closed_as FROM reservations WHERE customer_id = $1 AND idempotency_key = $2",
        )
        .bind(uuid::Uuid::parse_str(customer).unwrap())
        .bind(key)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// A granted hold's id.
    pub async fn granted(&self, customer: &str, body: Value) -> String {
        let response = self.hold(customer, body).await;
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    pub async fn commit_hold(&self, id: &str, events: Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/reservations/{id}/commit")))
            .bearer_auth(EVENTS_KEY)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap()
    }

    pub async fn release_hold(&self, id: &str) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/v1/reservations/{id}")))
            .bearer_auth(EVENTS_KEY)
            .send()
            .await
            .unwrap()
    }

    pub async fn reserved(&self, customer: &str) -> i64 {
        self.check(customer).await["estimate"]["reserved"].as_i64().unwrap()
    }

    pub async fn closed_as(&self, id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT closed_as FROM reservations WHERE id = $1")
            .bind(uuid::Uuid::parse_str(id).unwrap())
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The audit records of a reservation, oldest first: (action, actor).
    pub async fn hold_audit(&self, id: &str) -> Vec<(String, String)> {
        sqlx::query_as("SELECT action, actor FROM audit_log WHERE target_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_hold_that_fits_is_granted_and_counted_by_the_check_and_the_listing() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(20.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let response = app.hold(&customer, json!({"amount": 30, "ttl_ms": 600_000})).await;
    assert_eq!(response.status(), 201);
    let granted: Value = response.json().await.unwrap();
    assert_eq!(
        (granted["customer_id"].as_str(), granted["amount"].as_i64()),
        (Some(customer.as_str()), Some(30))
    );
    assert_eq!(granted["decision"]["estimate"]["reserved"], 30);
    assert_eq!(granted["decision"]["estimate"]["amount"], 50);
    let id = granted["id"].as_str().unwrap();

    let check = app.check(&customer).await;
    assert_eq!(
        (check["estimate"]["amount"].as_i64(), check["estimate"]["reserved"].as_i64()),
        (Some(50), Some(30))
    );
    assert_eq!(check["limits"][0]["remaining"], 50);

    let listing =
        app.admin(reqwest::Method::GET, &format!("/v1/customers/{customer}/reservations"), None).await;
    assert_eq!(listing.status(), 200);
    let listing: Value = listing.json().await.unwrap();
    assert_eq!(listing["reservations"][0]["id"], id);
    assert_eq!(listing["reservations"][0]["amount"], 30);
    assert_eq!(app.hold_audit(id).await, [("reservation.create".into(), "ingester".into())]);
}

#[tokio::test]
async fn a_hold_that_does_not_fit_is_refused_with_402_and_nothing_held() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(60.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    app.granted(&customer, json!({"amount": 30})).await;
    let body =
        assert_problem(app.hold(&customer, json!({"amount": 11})).await, 402, "usage_limit_exceeded").await;
    assert_eq!(
        (body["decision"]["cost"].as_i64(), body["decision"]["estimate"]["amount"].as_i64()),
        (Some(11), Some(90))
    );
    assert_eq!(app.granted(&customer, json!({"amount": 10})).await.len(), 36, "exactly the room left fits");
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reservations").fetch_one(&app.pool).await.unwrap();
    assert_eq!(held, 2);
    // Enforced events count holds too.
    assert_problem(app.post_enforced(&call("e", &customer)).await, 402, "usage_limit_exceeded").await;
}

#[tokio::test]
async fn a_hold_priced_like_an_event_sets_aside_what_that_event_would_cost() {
    let app = TestApp::spawn().await;
    let view = app
        .sim
        .add_customer(json!({"subscriptions": [{"metric": "api_calls", "unit_price": 10.0, "tax_rate": 20.0,
                                                 "including_tax": false, "usage": 10}],
                             "limits": [{"amount": 1000, "action": "DISABLE"}]}))
        .await;
    let customer = view["id"].as_str().unwrap();
    let response = app.hold(customer, json!({"code": "api_calls", "value": 7})).await;
    assert_eq!(response.status(), 201);
    let granted: Value = response.json().await.unwrap();
    assert_eq!(granted["amount"], 84, "7 calls at 10 cents plus 20% tax");
    let body = assert_problem(
        app.hold(customer, json!({"code": "api_calls", "value": 70})).await,
        402,
        "usage_limit_exceeded",
    )
    .await;
    assert_eq!(body["decision"]["cost"], 840);
}

#[tokio::test]
async fn committing_stores_the_real_usage_and_releases_the_hold_in_one_step() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let id = app.granted(&customer, json!({"amount": 50})).await;
    let events = json!([call("work-1", &customer), {"event_id": "work-2", "customer": customer, "code": "api_calls", "value": 4}]);
    let response = app.commit_hold(&id, events.clone()).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["expired"], false);
    assert_eq!(
        answer["results"],
        json!([{"event_id": "work-1", "status": "accepted"}, {"event_id": "work-2", "status": "accepted"}])
    );
    assert_eq!(app.closed_as(&id).await.as_deref(), Some("committed"));
    assert_eq!(app.stored_for(&customer).await, 2);
    let check = eventually(Duration::from_secs(1), "the hold gone and the usage pending", || async {
        let check = app.check(&customer).await;
        (check["estimate"]["reserved"] == 0 && check["estimate"]["pending"] == 5).then_some(check)
    })
    .await;
    assert_eq!(check["estimate"]["amount"], 5);
    assert_eq!(
        app.hold_audit(&id).await.into_iter().map(|(action, _)| action).collect::<Vec<_>>(),
        ["reservation.create", "reservation.commit"]
    );

    // Once committed, it is done: a second commit stores nothing.
    let again = app.commit_hold(&id, json!([call("work-3", &customer)])).await;
    assert_problem(again, 409, "conflict").await;
    assert_eq!(app.stored_for(&customer).await, 2);
}

#[tokio::test]
async fn committed_usage_is_never_refused_even_over_the_limit() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 10, "action": "DISABLE"}])).await;
    let id = app.granted(&customer, json!({"amount": 10})).await;
    let big = json!([{"event_id": "costly", "customer": customer, "code": "api_calls", "value": 25}]);
    assert_eq!(app.commit_hold(&id, big).await.status(), 200);
    assert_eq!(app.stored_for(&customer).await, 1);
}

#[tokio::test]
async fn a_commit_after_expiry_still_stores_the_events_and_says_so() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let id = app.granted(&customer, json!({"amount": 50, "ttl_ms": 50})).await;
    eventually(Duration::from_secs(2), "the hold expired", || async {
        (app.closed_as(&id).await.as_deref() == Some("expired")).then_some(())
    })
    .await;
    let response = app.commit_hold(&id, json!([call("late-work", &customer)])).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (answer["expired"].as_bool(), answer["results"][0]["status"].as_str()),
        (Some(true), Some("accepted"))
    );
    assert_eq!(app.stored_for(&customer).await, 1);
    assert_eq!(
        app.hold_audit(&id).await,
        [
            ("reservation.create".into(), "ingester".into()),
            ("reservation.expire".into(), "usage-gate".into()),
            ("reservation.commit".into(), "ingester".into())
        ]
    );
}

#[tokio::test]
async fn releasing_frees_the_room_once_and_an_unknown_hold_is_404() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let id = app.granted(&customer, json!({"amount": 100})).await;
    assert_problem(app.hold(&customer, json!({"amount": 1})).await, 402, "usage_limit_exceeded").await;
    assert_eq!(app.release_hold(&id).await.status(), 204);
    assert_problem(app.release_hold(&id).await, 404, "not_found").await;
    assert_problem(app.release_hold(&uuid::Uuid::new_v4().to_string()).await, 404, "not_found").await;
    assert_problem(app.release_hold("not-a-uuid").await, 400, "invalid_request").await;
    assert_eq!(app.hold(&customer, json!({"amount": 100})).await.status(), 201, "the room is back");
    // A released hold cannot be committed.
    assert_problem(app.commit_hold(&id, json!([])).await, 404, "not_found").await;
    assert_eq!(
        app.hold_audit(&id).await.into_iter().map(|(action, _)| action).collect::<Vec<_>>(),
        ["reservation.create", "reservation.release"]
    );
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for outcome in ["granted", "refused", "released"] {
        let line = format!("usage_gate_reservations_total{{outcome=\"{outcome}\"}}");
        assert!(metrics.contains(&line), "{line} in metrics");
    }
}

#[tokio::test]
async fn an_expired_hold_stops_counting_on_every_replica_within_a_second() {
    let a = TestApp::spawn().await;
    let b = a.second_instance().await;
    let (customer, _) = a.sim.add_usage_customer(0.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let response = a.hold(&customer, json!({"amount": 40, "ttl_ms": 1500})).await;
    let granted: Value = response.json().await.unwrap();
    let id = granted["id"].as_str().unwrap().to_owned();
    let expires_at = chrono::DateTime::parse_from_rfc3339(granted["expires_at"].as_str().unwrap()).unwrap();
    eventually(Duration::from_secs(1), "the hold on replica B", || async {
        (b.reserved(&customer).await == 40).then_some(())
    })
    .await;
    let started = Instant::now();
    for app in [&a, &b] {
        eventually(Duration::from_secs(3), "the hold released", || async {
            (app.reserved(&customer).await == 0).then_some(())
        })
        .await;
    }
    let released = chrono::Utc::now();
    let late = (released - expires_at.with_timezone(&chrono::Utc)).num_milliseconds();
    assert!(late < 1000, "released {late} ms after expires_at ({:?} polling)", started.elapsed());
    eventually(Duration::from_secs(1), "the hold closed in Postgres", || async {
        (a.closed_as(&id).await.as_deref() == Some("expired")).then_some(())
    })
    .await;
    let expiries =
        a.hold_audit(&id).await.into_iter().filter(|(action, _)| action == "reservation.expire").count();
    assert_eq!(expiries, 1, "one record, whichever replica closed it");
}

#[tokio::test]
async fn a_commit_with_another_customers_events_is_refused_whole() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let (other, _) = app.sim.add_usage_customer(0.0, json!([])).await;
    let id = app.granted(&customer, json!({"amount": 10})).await;
    let body = assert_problem(
        app.commit_hold(&id, json!([call("mine", &customer), call("theirs", &other)])).await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "events[1].customer");
    assert_eq!(app.stored_for(&customer).await + app.stored_for(&other).await, 0);
    assert_eq!(app.closed_as(&id).await, None, "the hold is still open");
}

#[tokio::test]
async fn concurrent_holds_on_two_replicas_grant_exactly_what_fits() {
    let a = TestApp::spawn().await;
    let b = a.second_instance().await;
    let (customer, _) = a.sim.add_usage_customer(0.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    a.check(&customer).await;
    b.check(&customer).await;
    let asks = (0..50).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let customer = customer.clone();
        async move { app.hold(&customer, json!({"amount": 10})).await.status().as_u16() }
    });
    let answers = futures_util::future::join_all(asks).await;
    let granted = answers.iter().filter(|s| **s == 201).count();
    assert_eq!((granted, answers.iter().filter(|s| **s == 402).count()), (10, 40), "{answers:?}");
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations WHERE closed_at IS NULL")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(held, 10);
}

#[tokio::test]
async fn holds_need_the_events_scope_and_their_listing_the_admin_scope() {
    let app = TestApp::spawn().await;
    let path = format!("/v1/customers/{ACME}/reservations");
    let with = |key: &'static str| {
        let request = app.http.post(app.url(&path)).bearer_auth(key).json(&json!({"amount": 1}));
        async move { request.send().await.unwrap() }
    };
    assert_problem(with(CHECK_KEY).await, 403, "forbidden").await;
    assert_problem(app.get(&path, Some(EVENTS_KEY)).await, 403, "forbidden").await;
    assert_problem(app.get(&path, None).await, 401, "unauthorized").await;
    let invalid = with(EVENTS_KEY);
    assert_eq!(invalid.await.status(), 201);
    let bad = app.hold(ACME, json!({"amount": 1, "ttl_ms": 0})).await;
    let body = assert_problem(bad, 400, "invalid_request").await;
    assert_eq!(body["errors"][0]["field"], "ttl_ms");
}

#[tokio::test]
async fn concurrent_holds_and_commits_share_transactions_and_a_refused_value_fails_only_its_own() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 1000, "action": "DISABLE"}])).await;
    app.check(&customer).await;
    let holds = (0..40).map(|_| app.granted(&customer, json!({"amount": 10})));
    let ids = futures_util::future::join_all(holds).await;
    // Written together: holds granted in one transaction share its start time.
    let starts: i64 = sqlx::query_scalar("SELECT count(DISTINCT created_at) FROM reservations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(starts < 40, "40 concurrent holds were written in {starts} transactions");
    assert_eq!(app.reserved(&customer).await, 400);

    // A value validation lets through but the database refuses, as a stand-in for any such gap:
    // that commit fails alone, and its hold stays open; the others sharing its batch are done.
    sqlx::query("ALTER TABLE outbox ADD CONSTRAINT test_refuses_poison CHECK (event_id NOT LIKE 'poison%')")
        .execute(&app.pool)
        .await
        .unwrap();
    let commits = ids.iter().enumerate().map(|(i, id)| {
        let event = if i % 4 == 0 { format!("poison-{i}") } else { format!("work-{i}") };
        let (app, customer) = (&app, &customer);
        async move { app.commit_hold(id, json!([call(&event, customer)])).await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(commits).await;
    for (i, status) in statuses.iter().enumerate() {
        let (expected, closed) = if i % 4 == 0 { (400, None) } else { (200, Some("committed")) };
        assert_eq!(*status, expected, "commit {i}");
        assert_eq!(app.closed_as(&ids[i]).await.as_deref(), closed, "hold {i}");
    }
    assert_eq!(app.stored_for(&customer).await, 30);
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'reservation.commit'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(audited, 30, "one record per commit that was made");
    // The ten left open still count; the committed ones count as pending usage instead.
    let check = app.check(&customer).await;
    assert_eq!(
        (check["estimate"]["reserved"].as_i64(), check["estimate"]["pending"].as_i64()),
        (Some(100), Some(30))
    );
}

/// A granted hold's answer: (id, replayed, estimate.reserved, estimate.amount); a decision by
/// the fallback has no estimate.
async fn granted_answer(response: reqwest::Response) -> (String, bool, Option<i64>, Option<i64>) {
    assert_eq!(response.status(), 201);
    let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    let body: Value = response.json().await.unwrap();
    let estimate = &body["decision"]["estimate"];
    (
        body["id"].as_str().unwrap().to_owned(),
        replayed,
        estimate["reserved"].as_i64(),
        estimate["amount"].as_i64(),
    )
}

#[tokio::test]
async fn a_hold_asked_again_with_its_idempotency_key_is_the_same_hold_held_once() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(20.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let ask = json!({"amount": 30, "ttl_ms": 600_000});
    let replays_before = app.replays_counted().await;
    let (id, replayed, reserved, amount) =
        granted_answer(app.hold_with_key(&customer, "job-1", ask.clone()).await).await;
    assert_eq!((replayed, reserved, amount), (false, Some(30), Some(50)));

    // The answer was lost; the client asks again: the same hold, counted once.
    let again = granted_answer(app.hold_with_key(&customer, "job-1", ask.clone()).await).await;
    assert_eq!(again, (id.clone(), true, Some(30), Some(50)));
    let quoted = granted_answer(app.hold_with_key(&customer, "\"job-1\"", ask.clone()).await).await;
    assert_eq!(quoted.0, id, "a quoted key is the same key");
    assert_eq!(app.held_with_key(&customer, "job-1").await.len(), 1);
    assert_eq!(app.reserved(&customer).await, 30);
    assert_eq!(app.hold_audit(&id).await, [("reservation.create".into(), "ingester".into())], "audited once");
    // The metrics are the test process's, shared with tests running beside this one: the
    // replays counted since the first hold, at least.
    assert!(app.replays_counted().await >= replays_before + 2);

    // The key asked for something else: 422 naming it, nothing held.
    let body = assert_problem(
        app.hold_with_key(&customer, "job-1", json!({"amount": 31})).await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "Idempotency-Key");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains(&id), "{body}");
    // Keys are the customer's: another customer's hold with the same key is its own.
    let (other, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let (other_id, replayed, ..) =
        granted_answer(app.hold_with_key(&other, "job-1", ask.clone()).await).await;
    assert!(other_id != id && !replayed);

    // Once the hold is closed, its key holds nothing: 409, and nothing new is held.
    assert_eq!(app.commit_hold(&id, json!([call("work-1", &customer)])).await.status(), 200);
    let body =
        assert_problem(app.hold_with_key(&customer, "job-1", ask.clone()).await, 409, "conflict").await;
    assert!(body["detail"].as_str().unwrap().contains("committed"), "{body}");
    assert_eq!(
        app.held_with_key(&customer, "job-1").await,
        [(uuid::Uuid::parse_str(&id).unwrap(), Some("committed".into()))]
    );

    // A refused hold holds nothing, so its key may be asked with again (and judged again).
    let refused = app.hold_with_key(&customer, "job-2", json!({"amount": 500})).await;
    assert_problem(refused, 402, "usage_limit_exceeded").await;
    let (_, replayed, ..) =
        granted_answer(app.hold_with_key(&customer, "job-2", json!({"amount": 5})).await).await;
    assert!(!replayed);

    for bad in ["two words", "", &"k".repeat(256)] {
        let body =
            assert_problem(app.hold_with_key(&customer, bad, ask.clone()).await, 400, "invalid_request")
                .await;
        assert_eq!(body["errors"][0]["field"], "Idempotency-Key", "{bad:?}");
    }
}

#[tokio::test]
async fn one_key_asked_for_at_once_on_two_replicas_holds_once_judged_or_by_the_fallback() {
    let a = TestApp::spawn_with(|raw| raw.policy.unknown_customer = "allow".into()).await;
    let b = a.second_instance_with(|raw| raw.policy.unknown_customer = "allow".into()).await;
    let (known, _) = a.sim.add_usage_customer(0.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    // Unknown to BillaBear and allowed: held by the fallback, without the customer's lock (the
    // unique index and the insert's conflict clause keep it to one).
    let unknown = uuid::Uuid::new_v4().to_string();
    // Several rounds for the fallback: its race is one of timing.
    let rounds = [(&known, 0), (&unknown, 0), (&unknown, 1), (&unknown, 2), (&unknown, 3), (&unknown, 4)];
    for (customer, round) in rounds {
        a.check(customer).await;
        b.check(customer).await;
        let asks = (0..24).map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            let key = format!("job-{round}-{}", i % 3);
            async move { granted_answer(app.hold_with_key(customer, &key, json!({"amount": 10})).await).await }
        });
        let answers = futures_util::future::join_all(asks).await;
        for k in 0..3 {
            let key = format!("job-{round}-{k}");
            let held = a.held_with_key(customer, &key).await;
            assert_eq!(held.len(), 1, "{customer} {key}");
            let ids: Vec<_> = answers.iter().skip(k).step_by(3).collect();
            assert!(ids.iter().all(|(id, ..)| *id == held[0].0.to_string()), "{ids:?}");
            assert_eq!(ids.iter().filter(|(_, replayed, ..)| !replayed).count(), 1, "made once: {ids:?}");
        }
    }
    assert_eq!(a.reserved(&known).await, 30);
}

#[tokio::test]
async fn a_hold_takes_a_whole_number_with_a_zero_fraction_and_a_null_field_as_absent_as_documented() {
    let app = TestApp::spawn().await;
    let body = json!({"amount": 30.0, "code": null, "value": null, "ttl_ms": 60000.0});
    let response = app.hold(ACME, body).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    assert_eq!(app.reserved(ACME).await, 30);
    let half = app.hold(ACME, json!({"amount": 30.5})).await;
    assert_eq!(assert_problem(half, 400, "invalid_request").await["errors"][0]["field"], "amount");

    let document: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let fields = &document["components"]["schemas"]["NewReservation"]["properties"];
    for field in ["amount", "code", "value", "ttl_ms"] {
        assert!(
            fields[field]["type"].as_array().is_some_and(|t| t.contains(&json!("null"))),
            "{field}: {fields}"
        );
    }
}
