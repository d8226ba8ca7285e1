//! Enforced events: stored only if they fit under the customer's lowest DISABLE limit, judged
//! one after the other per customer across replicas, so concurrency never lets more through.

use serde_json::{Value, json};

use crate::helpers::*;

impl TestApp {
    pub async fn post_enforced(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/events?enforce=true"))
            .bearer_auth(EVENTS_KEY)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_enforced_batch(&self, events: Value) -> Value {
        let response = self
            .http
            .post(self.url("/v1/events/batch?enforce=true"))
            .bearer_auth(EVENTS_KEY)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Waits until `n` of the customer's events (sent with its id) are delivered.
    pub async fn await_delivered(&self, customer: &str, n: i64) {
        let customer = uuid::Uuid::parse_str(customer).unwrap();
        eventually(
            std::time::Duration::from_secs(10),
            format!("{n} events of {customer} delivered"),
            || async {
                let delivered: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM outbox WHERE customer_id = $1 AND status = 'delivered'",
                )
                .bind(customer)
                .fetch_one(&self.pool)
                .await
                .unwrap();
                (delivered == n).then_some(())
            },
        )
        .await;
    }

    /// Outbox rows stored for the customer (sent with its id).
    pub async fn stored_for(&self, customer: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE customer_id = $1")
            .bind(uuid::Uuid::parse_str(customer).unwrap())
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// One api call of the customer's (1 cent each with `add_usage_customer`).
pub fn call(event_id: &str, customer: &str) -> Value {
    json!({"event_id": event_id, "customer": customer, "code": "api_calls", "value": 1})
}

fn statuses(answer: &Value) -> Vec<&str> {
    answer["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn an_enforced_event_is_stored_only_while_it_fits_under_the_disable_limit() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 3, "action": "DISABLE"}])).await;
    for i in 0..3 {
        let response = app.post_enforced(&call(&format!("fit-{i}"), &customer)).await;
        assert_eq!(response.status(), 202, "event {i}: 3 cents reach the limit without going over it");
    }
    let refused = app.post_enforced(&call("over", &customer)).await;
    let body = assert_problem(refused, 402, "usage_limit_exceeded").await;
    let decision = &body["decision"];
    assert_eq!((decision["allowed"].as_bool(), decision["cost"].as_i64()), (Some(false), Some(1)));
    assert_eq!(decision["estimate"]["amount"], 3, "the estimate before the refused event");
    assert_eq!(decision["reasons"], json!(["would_exceed_disable_limit", "near_limit"]));
    assert_eq!(app.stored_for(&customer).await, 3, "nothing of the refused event was stored");

    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for outcome in ["admitted", "refused"] {
        let line = format!("usage_gate_enforced_events_total{{outcome=\"{outcome}\"}}");
        assert!(metrics.contains(&line), "{line} in metrics");
    }

    // Without enforce the same event is stored: enforcement is the caller's choice.
    assert_eq!(app.post_event(&call("over", &customer)).await.status(), 202);
    assert_eq!(app.stored_for(&customer).await, 4);
}

#[tokio::test]
async fn a_refused_repeat_of_a_stored_event_answers_as_the_duplicate_it_is() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 1, "action": "DISABLE"}])).await;
    assert_eq!(app.post_enforced(&call("first", &customer)).await.status(), 202);
    assert_eq!(app.post_event(&call("second", &customer)).await.status(), 202);
    // Over the limit now; the client retries the first (its answer was lost).
    let again = app.post_enforced(&call("first", &customer)).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
}

#[tokio::test]
async fn a_customer_without_a_disable_limit_is_never_refused() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(500.0, json!([{"amount": 1, "action": "WARNING"}])).await;
    for i in 0..3 {
        assert_eq!(app.post_enforced(&call(&format!("e{i}"), &customer)).await.status(), 202);
    }
    assert_eq!(app.stored_for(&customer).await, 3);
}

#[tokio::test]
async fn a_disabled_customer_is_refused() {
    let app = TestApp::spawn().await;
    let refused = app.post_enforced(&call("e", HOOLI_DISABLED)).await;
    let body = assert_problem(refused, 402, "usage_limit_exceeded").await;
    assert!(body["decision"]["reasons"].as_array().unwrap().contains(&json!("customer_disabled")));
    assert_eq!(app.stored_for(HOOLI_DISABLED).await, 0);
}

#[tokio::test]
async fn a_customer_billabear_does_not_know_is_refused_or_admitted_by_policy() {
    let unknown = uuid::Uuid::new_v4().to_string();
    let app = TestApp::spawn().await;
    let body =
        assert_problem(app.post_enforced(&call("e", &unknown)).await, 402, "usage_limit_exceeded").await;
    assert_eq!(body["decision"]["reasons"], json!(["customer_not_found"]));
    assert_eq!(app.stored_for(&unknown).await, 0);

    let allowing = TestApp::spawn_with(|raw| raw.policy.unknown_customer = "allow".into()).await;
    assert_eq!(allowing.post_enforced(&call("e", &unknown)).await.status(), 202);
    assert_eq!(allowing.stored_for(&unknown).await, 1);
}

#[tokio::test]
async fn with_billabear_down_and_nothing_cached_fail_mode_decides_and_says_it_was_a_fallback() {
    let closed = TestApp::spawn_with(|raw| raw.policy.fail_mode = "closed".into()).await;
    closed.sim.set_faults(json!({"outage": "drop"})).await;
    let body =
        assert_problem(closed.post_enforced(&call("e", ACME)).await, 402, "usage_limit_exceeded").await;
    assert_eq!(
        (body["decision"]["fallback"].as_bool(), body["decision"]["source"].as_str()),
        (Some(true), Some("fallback"))
    );
    assert_eq!(body["decision"]["reasons"], json!(["upstream_unavailable"]));
    assert_eq!(closed.stored_for(ACME).await, 0);

    let open = TestApp::spawn().await;
    open.sim.set_faults(json!({"outage": "drop"})).await;
    let response = open.post_enforced(&call("e", ACME)).await;
    assert_eq!(response.status(), 202);
    assert_eq!(open.stored_for(ACME).await, 1);
}

#[tokio::test]
async fn a_batch_admits_each_customers_events_in_order_while_they_fit() {
    let app = TestApp::spawn().await;
    let (tight, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 2, "action": "DISABLE"}])).await;
    let (roomy, _) = app.sim.add_usage_customer(0.0, json!([{"amount": 1000, "action": "DISABLE"}])).await;
    let answer = app
        .post_enforced_batch(json!([
            call("t1", &tight),
            call("r1", &roomy),
            {"event_id": "t-big", "customer": tight, "code": "api_calls", "value": 5},
            call("t2", &tight),
            {"event_id": "bad", "customer": tight, "code": "api_calls"},
            call("r2", &roomy),
        ]))
        .await;
    assert_eq!(statuses(&answer), ["accepted", "accepted", "refused", "refused", "invalid", "accepted"]);
    let big = &answer["results"][2];
    assert_eq!(
        (big["reason"].as_str(), big["decision"]["cost"].as_i64()),
        (Some("usage_limit_exceeded"), Some(5))
    );
    assert_eq!(
        answer["results"][3]["decision"]["cost"], 1,
        "t2 alone would fit, but it comes after a refused event of the same customer"
    );
    assert_eq!(answer["results"][4]["errors"][0]["field"], "events[4].value");
    assert_eq!((app.stored_for(&tight).await, app.stored_for(&roomy).await), (1, 2));
}

#[tokio::test]
async fn an_enforced_event_sent_by_subscription_needs_its_customer_known() {
    let app = TestApp::spawn().await;
    let (customer, subscription) =
        app.sim.add_usage_customer(0.0, json!([{"amount": 1, "action": "DISABLE"}])).await;
    let event =
        |id: &str| json!({"event_id": id, "subscription": subscription, "code": "api_calls", "value": 1});
    let body = assert_problem(app.post_enforced(&event("s0")).await, 422, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "subscription");

    app.check(&customer).await;
    assert_eq!(app.post_enforced(&event("s1")).await.status(), 202);
    assert_problem(app.post_enforced(&event("s2")).await, 402, "usage_limit_exceeded").await;
}

#[tokio::test]
async fn concurrent_enforced_events_on_two_replicas_store_exactly_what_fits() {
    let a = TestApp::spawn().await;
    let b = a.second_instance().await;
    let (customer, _) = a.sim.add_usage_customer(0.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    // Both replicas have the customer cached, as in steady state.
    a.check(&customer).await;
    b.check(&customer).await;
    let sends = (0..200).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let body = call(&format!("race-{i}"), &customer);
        async move { app.post_enforced(&body).await.status().as_u16() }
    });
    let answers = futures_util::future::join_all(sends).await;
    let stored = answers.iter().filter(|s| **s == 202).count();
    let refused = answers.iter().filter(|s| **s == 402).count();
    assert_eq!((stored, refused), (100, 100), "{answers:?}");
    assert_eq!(a.stored_for(&customer).await, 100);

    // BillaBear receives exactly the stored ones.
    let accepted: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox WHERE customer_id = $1")
        .bind(uuid::Uuid::parse_str(&customer).unwrap())
        .fetch_all(&a.pool)
        .await
        .unwrap();
    a.await_delivered(&customer, 100).await;
    for i in 0..200 {
        let id = format!("race-{i}");
        let expected = u64::from(accepted.contains(&id));
        assert_eq!(a.sim.event_count(&id).await, expected, "{id}");
    }
}

#[tokio::test]
async fn usage_another_replica_saw_counted_still_counts_for_a_replica_with_an_older_snapshot() {
    let a = TestApp::spawn().await;
    let b = a.second_instance().await;
    let (customer, _) = a.sim.add_usage_customer(0.0, json!([{"amount": 3, "action": "DISABLE"}])).await;
    a.check(&customer).await; // A caches the customer at 0 calls.
    for i in 0..3 {
        assert_eq!(a.post_enforced(&call(&format!("e{i}"), &customer)).await.status(), 202);
    }
    a.await_delivered(&customer, 3).await;
    // BillaBear counts them; B fetches, sees the counter grow and retires them from pending.
    a.sim.tick().await;
    let on_b = b.check(&customer).await;
    assert_eq!(
        (on_b["estimate"]["billabear"].as_i64(), on_b["estimate"]["pending"].as_i64()),
        (Some(3), Some(0))
    );
    // A's snapshot still says 0 counted, and nothing is pending any more: the counter B
    // recorded brings it up to date, so the limit still holds.
    let body =
        assert_problem(a.post_enforced(&call("late", &customer)).await, 402, "usage_limit_exceeded").await;
    assert_eq!(body["decision"]["estimate"]["amount"], 3);
}

#[tokio::test]
async fn an_enforced_events_answer_is_the_judgement_counting_it_even_for_a_retry_on_another_replica() {
    let a = TestApp::spawn().await;
    let b = a.second_instance().await;
    let (customer, _) =
        a.sim.add_usage_customer(1200.0, json!([{"amount": 10000, "action": "DISABLE"}])).await;
    b.check(&customer).await;
    let event = json!({"event_id": "judged-1", "customer": customer, "code": "api_calls", "value": 9500});
    let response = a.post_enforced(&event).await;
    let body = assert_problem(response, 402, "usage_limit_exceeded").await;
    assert_eq!(body["decision"]["estimate"]["pending"], 0, "refused: nothing counted {body}");

    let fits = json!({"event_id": "judged-2", "customer": customer, "code": "api_calls", "value": 8000});
    let response = a.post_enforced(&fits).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let estimate = |answer: &Value| {
        let e = &answer["decision"]["estimate"];
        (e["amount"].as_i64().unwrap(), e["pending"].as_i64().unwrap(), e["pending_events"].as_u64().unwrap())
    };
    assert_eq!(estimate(&answer), (9200, 8000, 1), "the event counted once: {answer}");
    assert_eq!(answer["decision"]["allowed"], true, "{answer}");

    // At once, on the other replica, before its copy of the pending usage can hold it: the
    // judgement under the customer's lock counts the first copy, once.
    let response = b.post_enforced(&fits).await;
    assert_eq!(response.status(), 200, "a duplicate");
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["status"], "duplicate");
    assert_eq!(estimate(&again), (9200, 8000, 1), "{again}");
}
