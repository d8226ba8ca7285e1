//! Events in: stored before acknowledged, forwarded to the simulator exactly once, duplicates
//! and conflicts caught here, failures retried or dead.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

impl TestApp {
    pub async fn post_event(&self, body: &Value) -> reqwest::Response {
        self.http.post(self.url("/v1/events")).bearer_auth(EVENTS_KEY).json(body).send().await.unwrap()
    }

    /// Polls until the simulator has received `event_id` at least once, or fails after 10 s.
    pub async fn delivered(&self, event_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let received = self.sim.event(event_id).await;
            if received["count"].as_u64() > Some(0) {
                return received;
            }
            assert!(tokio::time::Instant::now() < deadline, "{event_id} never reached the simulator");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn outbox_row(&self, event_id: &str) -> Value {
        sqlx::query_scalar("SELECT to_jsonb(o) FROM outbox o WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Polls the outbox row until `status`, or fails after 10 s.
    pub async fn outbox_status(&self, event_id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let row = self.outbox_row(event_id).await;
            if row["status"] == status {
                return row;
            }
            assert!(tokio::time::Instant::now() < deadline, "{event_id} never became {status}: {row}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn event(event_id: &str) -> Value {
    json!({"event_id": event_id, "subscription": ACME_SUBSCRIPTION, "code": "api_calls", "value": 3,
           "properties": {"endpoint": "/v1/search"}})
}

#[tokio::test]
async fn an_accepted_event_reaches_billabear_once_with_its_fields() {
    let app = TestApp::spawn().await;
    let response = app.post_event(&event("evt-1")).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "accepted");
    let received = app.delivered("evt-1").await;
    let e = &received["events"][0];
    assert_eq!(
        (e["subscription"].as_str(), e["code"].as_str(), e["value"].as_f64()),
        (Some(ACME_SUBSCRIPTION), Some("api_calls"), Some(3.0))
    );
    assert_eq!(e["properties"], json!({"endpoint": "/v1/search"}));
    let row = app.outbox_status("evt-1", "delivered").await;
    assert!(row["delivered_at"].is_string() && row["received_at"].is_string());
    assert_eq!(app.sim.event_count("evt-1").await, 1);
}

#[tokio::test]
async fn a_repeated_event_is_a_duplicate_and_other_content_is_a_conflict() {
    let app = TestApp::spawn().await;
    assert_eq!(app.post_event(&event("evt-d")).await.status(), 202);
    let duplicate = app.post_event(&event("evt-d")).await;
    assert_eq!(duplicate.status(), 200);
    assert_eq!(duplicate.json::<Value>().await.unwrap()["status"], "duplicate");
    let mut changed = event("evt-d");
    changed["value"] = json!(4);
    assert_problem(app.post_event(&changed).await, 409, "conflict").await;
    app.outbox_status("evt-d", "delivered").await;
    assert_eq!(app.sim.event_count("evt-d").await, 1, "BillaBear saw it once");
    assert_eq!(app.outbox_row("evt-d").await["value"].as_f64(), Some(3.0));
}

#[tokio::test]
async fn a_customer_target_is_sent_to_its_usage_subscription_and_carries_the_cached_decision() {
    let app = TestApp::spawn().await;
    // Warm the customer so the answer can carry its decision without asking BillaBear.
    app.get(&format!("/v1/customers/{ACME}/check"), Some(CHECK_KEY)).await;
    let body = json!({"event_id": "evt-c", "customer": ACME, "code": "api_calls", "value": 1});
    let answer: Value = app.post_event(&body).await.json().await.unwrap();
    assert_eq!(answer["decision"]["customer_id"], ACME);
    assert_eq!(answer["decision"]["source"], "cache");
    let received = app.delivered("evt-c").await;
    assert_eq!(received["events"][0]["subscription"], ACME_SUBSCRIPTION);
}

#[tokio::test]
async fn events_accepted_during_an_outage_are_delivered_once_after_it() {
    let app = TestApp::spawn().await;
    app.sim.set_faults(json!({"outage": "unavailable", "only": "events"})).await;
    for i in 0..20 {
        assert_eq!(app.post_event(&event(&format!("out-{i}"))).await.status(), 202);
    }
    // Delivery is being tried and failing.
    let row = loop {
        let row = app.outbox_row("out-0").await;
        if row["attempts"].as_i64() >= Some(2) {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((row["status"].as_str(), row["upstream_status"].as_i64()), (Some("pending"), Some(503)));
    app.sim.clear_faults().await;
    for i in 0..20 {
        app.outbox_status(&format!("out-{i}"), "delivered").await;
    }
    for i in 0..20 {
        assert_eq!(app.sim.event_count(&format!("out-{i}")).await, 1, "out-{i} delivered exactly once");
    }
}

#[tokio::test]
async fn an_event_billabear_refuses_is_dead_with_its_message() {
    let app = TestApp::spawn().await;
    let mut unknown_code = event("evt-x");
    unknown_code["code"] = json!("storage_tb");
    assert_eq!(app.post_event(&unknown_code).await.status(), 202);
    let row = app.outbox_status("evt-x", "dead").await;
    assert_eq!(row["upstream_status"], 400);
    assert!(row["last_error"].as_str().unwrap().contains("The code \"storage_tb\" does not exist."), "{row}");
    let no_subscription =
        json!({"event_id": "evt-y", "customer": STARK_FLAT, "code": "api_calls", "value": 1});
    assert_eq!(app.post_event(&no_subscription).await.status(), 202);
    let row = app.outbox_status("evt-y", "dead").await;
    assert!(row["last_error"].as_str().unwrap().contains("no active usage subscription"), "{row}");
    assert_eq!(app.sim.event_count("evt-x").await + app.sim.event_count("evt-y").await, 0);
}

#[tokio::test]
async fn bad_events_are_400s_naming_the_field_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let with = |field: &str, value: Value| {
        let mut e = event("bad");
        if value.is_null() {
            e.as_object_mut().unwrap().remove(field);
        } else {
            e[field] = value;
        }
        e
    };
    let cases = [
        (with("event_id", Value::Null), "event_id"),
        (with("event_id", json!("x".repeat(256))), "event_id"),
        (with("code", Value::Null), "code"),
        (with("value", json!("5")), "value"),
        (with("value", Value::Null), "value"),
        (with("properties", json!("x")), "properties"),
        (with("subscription", json!("not-a-uuid")), "subscription"),
    ];
    for (body, field) in cases {
        let problem = assert_problem(app.post_event(&body).await, 400, "invalid_request").await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    let response = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(EVENTS_KEY)
        .body(r#"{"event_id": "nan", "value": NaN}"#)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "invalid_request").await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&app.pool).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn with_postgres_down_an_event_is_a_503_and_never_acknowledged() {
    let app = TestApp::spawn_with(|raw| {
        raw.database.url = secrecy::SecretString::from("postgres://postgres@127.0.0.1:1/usage_gate");
        raw.database.acquire_timeout_ms = 300;
    })
    .await;
    let response = app.post_event(&event("lost?")).await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503, "storage_unavailable").await;
}

#[tokio::test]
async fn posting_events_needs_the_events_scope() {
    let app = TestApp::spawn().await;
    for key in [CHECK_KEY, ADMIN_KEY] {
        let response =
            app.http.post(app.url("/v1/events")).bearer_auth(key).json(&event("s")).send().await.unwrap();
        assert_problem(response, 403, "forbidden").await;
    }
    let response = app.http.post(app.url("/v1/events")).json(&event("s")).send().await.unwrap();
    assert_problem(response, 401, "unauthorized").await;
}
