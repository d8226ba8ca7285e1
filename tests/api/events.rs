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
        eventually(Duration::from_secs(10), format!("{event_id} at the simulator"), || async {
            let received = self.sim.event(event_id).await;
            (received["count"].as_u64() > Some(0)).then_some(received)
        })
        .await
    }

    pub async fn outbox_row(&self, event_id: &str) -> Value {
        sqlx::query_scalar("SELECT to_jsonb(o) FROM outbox o WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until events `{prefix}-0` to `{prefix}-{n-1}` are delivered, then asserts that
    /// the simulator received each exactly once.
    pub async fn assert_each_delivered_once(&self, prefix: &str, n: usize) {
        for i in 0..n {
            self.outbox_status(&format!("{prefix}-{i}"), "delivered").await;
        }
        for i in 0..n {
            assert_eq!(
                self.sim.event_count(&format!("{prefix}-{i}")).await,
                1,
                "{prefix}-{i} delivered exactly once"
            );
        }
    }

    /// Polls the outbox row until `status`, or fails after 10 s.
    pub async fn outbox_status(&self, event_id: &str, status: &str) -> Value {
        eventually(Duration::from_secs(10), format!("{event_id} to be {status}"), || async {
            let row = self.outbox_row(event_id).await;
            (row["status"] == status).then_some(row)
        })
        .await
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
    let row = eventually(Duration::from_secs(10), "failed delivery attempts", || async {
        let row = app.outbox_row("out-0").await;
        (row["attempts"].as_i64() >= Some(2)).then_some(row)
    })
    .await;
    assert_eq!((row["status"].as_str(), row["upstream_status"].as_i64()), (Some("pending"), Some(503)));
    app.sim.clear_faults().await;
    app.assert_each_delivered_once("out", 20).await;
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
        raw.database.acquire_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let response = app.post_event(&event("lost?")).await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503, "storage_unavailable").await;
}

#[tokio::test]
async fn after_postgres_drops_its_connections_events_are_stored_again() {
    let app = TestApp::spawn().await;
    assert_eq!(app.post_event(&event("before")).await.status(), 202);
    // As in a Postgres restart or failover: every usage-gate connection is cut.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // The first request after the cut may find the dead connection (503, nothing acknowledged);
    // a client's retry of the same event must then be stored.
    let answers = std::cell::RefCell::new(vec![]);
    eventually(Duration::from_secs(10), "an event accepted after the cut", || async {
        let status = app.post_event(&event("after")).await.status().as_u16();
        answers.borrow_mut().push(status);
        (status == 202).then_some(())
    })
    .await;
    let answers = answers.into_inner();
    assert!(answers.iter().all(|s| *s == 202 || *s == 503), "only 503s before the 202: {answers:?}");
    assert_eq!(app.outbox_row("after").await["event_id"], "after");
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

#[tokio::test]
async fn a_batch_stores_the_valid_events_and_answers_each_in_order() {
    let app = TestApp::spawn().await;
    assert_eq!(app.post_event(&event("b-old")).await.status(), 202);
    let mut conflicting = event("b-old");
    conflicting["value"] = json!(99);
    let batch = json!({"events": [event("b-1"), {"event_id": "b-2", "code": "api_calls"}, event("b-old"), conflicting, event("b-3")]});
    let response =
        app.http.post(app.url("/v1/events/batch")).bearer_auth(EVENTS_KEY).json(&batch).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let results = response.json::<Value>().await.unwrap()["results"].as_array().unwrap().clone();
    let statuses: Vec<_> = results.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "invalid", "duplicate", "conflict", "accepted"]);
    let fields: Vec<_> =
        results[1]["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["events[1].value", "events[1].subscription"]);
    for id in ["b-1", "b-3", "b-old"] {
        app.outbox_status(id, "delivered").await;
        assert_eq!(app.sim.event_count(id).await, 1, "{id}");
    }
    for (body, field) in
        [(json!({"events": []}), "events"), (json!({"events": vec![event("x"); 1001]}), "events")]
    {
        let response = app
            .http
            .post(app.url("/v1/events/batch"))
            .bearer_auth(EVENTS_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(assert_problem(response, 400, "invalid_request").await["errors"][0]["field"], field);
    }
}

#[tokio::test]
async fn services_on_a_billabear_sdk_can_post_to_billabears_own_route() {
    let app = TestApp::spawn().await;
    let post = |key: Option<&str>, body: Value| {
        let mut request = app.http.post(app.url("/api/v1/events")).json(&body);
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        request.send()
    };
    let response = post(Some(EVENTS_KEY), event("sdk-1")).await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.text().await.unwrap(), "");
    assert_eq!(
        post(Some(EVENTS_KEY), event("sdk-1")).await.unwrap().status(),
        201,
        "a repeat, as BillaBear answers"
    );
    app.outbox_status("sdk-1", "delivered").await;
    assert_eq!(app.sim.event_count("sdk-1").await, 1);

    for key in [None, Some(CHECK_KEY), Some("wrong-key-0123456789")] {
        let response = post(key, event("sdk-2")).await.unwrap();
        assert_eq!(
            (response.status().as_u16(), response.text().await.unwrap()),
            (401, "[]".into()),
            "{key:?}"
        );
    }
    let response = post(
        Some(EVENTS_KEY),
        json!({"event_id": "sdk-3", "subscription": ACME_SUBSCRIPTION, "code": "api_calls", "value": "5"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.json::<Value>().await.unwrap()["errors"]["value"].is_string());
    let response = post(
        Some(EVENTS_KEY),
        json!({"event_id": "sdk-4", "customer": ACME, "code": "api_calls", "value": 1}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400, "BillaBear's route takes a subscription, not a customer");
    // Older SDKs and BillaBear's own tests send both: BillaBear ignores customer, so must we.
    let mut both = event("sdk-5");
    both["customer"] = json!(INITECH);
    both["properties"] = json!(["listed"]);
    let response = post(Some(EVENTS_KEY), both).await.unwrap();
    assert_eq!(response.status(), 201);
    let received = app.delivered("sdk-5").await;
    assert_eq!(received["events"][0]["subscription"], ACME_SUBSCRIPTION, "{received}");
    assert_eq!(received["events"][0]["properties"], json!({"0": "listed"}));
}

#[tokio::test]
async fn two_instances_on_one_database_deliver_each_event_once() {
    let app = TestApp::spawn().await;
    // A second replica: its own HTTP server and forwarder, the same database and BillaBear.
    let second = app.second_instance().await;
    let posts = (0..60).map(|i| {
        let target = if i % 2 == 0 { &app } else { &second };
        async move { target.post_event(&event(&format!("two-{i}"))).await }
    });
    for response in futures_util::future::join_all(posts).await {
        assert_eq!(response.status(), 202);
    }
    app.assert_each_delivered_once("two", 60).await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_and_nothing_is_stored() {
    let app = TestApp::spawn_with(|raw| raw.server.max_body_bytes = 4096).await;
    let mut big = event("big");
    big["properties"] = json!({"blob": "x".repeat(5000)});
    assert_problem(app.post_event(&big).await, 413, "payload_too_large").await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&app.pool).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_dead_event_is_delivered_once_retried_after_billabear_is_fixed() {
    let app = TestApp::spawn().await;
    let mut storage = event("dead-1");
    storage["code"] = json!("storage_gb_x");
    assert_eq!(app.post_event(&storage).await.status(), 202);
    let row = app.outbox_status("dead-1", "dead").await;
    // An operator adds the metric in BillaBear (here: the simulator), then retries.
    app.sim.add_subscription(ACME, json!({"metric": "storage_gb_x", "unit_price": 1.0})).await;
    let retry = app
        .http
        .post(app.url(&format!("/v1/outbox/{}/retry", row["id"])))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.json::<Value>().await.unwrap(), json!({"retried": 1}));
    app.outbox_status("dead-1", "delivered").await;
    assert_eq!(app.sim.event_count("dead-1").await, 1);
    let again = app
        .http
        .post(app.url(&format!("/v1/outbox/{}/retry", row["id"])))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_problem(again, 404, "not_found").await;
}

#[tokio::test]
async fn operators_page_through_the_outbox_and_see_its_stats() {
    let app = TestApp::spawn().await;
    app.sim.set_faults(json!({"outage": "unavailable", "only": "events"})).await;
    for i in 0..5 {
        app.post_event(&event(&format!("p-{i}"))).await;
    }
    let page = |cursor: Option<String>| {
        let mut url = app.url("/v1/outbox?status=pending&limit=2");
        if let Some(cursor) = cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        app.http.get(url).bearer_auth(ADMIN_KEY).send()
    };
    let (mut seen, mut cursor) = (Vec::new(), None);
    loop {
        let body: Value = page(cursor).await.unwrap().json().await.unwrap();
        seen.extend(
            body["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()),
        );
        cursor = body["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["p-0", "p-1", "p-2", "p-3", "p-4"]);
    let stats: Value = app.get("/v1/outbox/stats", Some(ADMIN_KEY)).await.json().await.unwrap();
    assert_eq!((stats["pending"].as_i64(), stats["dead"].as_i64()), (Some(5), Some(0)));
    assert!(stats["oldest_pending_age_seconds"].as_f64().unwrap() >= 0.0);
    assert_problem(app.get("/v1/outbox?status=lost", Some(ADMIN_KEY)).await, 400, "invalid_request").await;
    assert_problem(app.get("/v1/outbox", Some(EVENTS_KEY)).await, 403, "forbidden").await;
}

#[tokio::test]
async fn delivering_a_customers_events_refreshes_its_cached_decision_and_is_measured() {
    let app =
        TestApp::spawn_with(|raw| raw.cache.min_refresh_interval = std::time::Duration::from_millis(0)).await;
    app.get(&format!("/v1/customers/{ACME}/check"), Some(CHECK_KEY)).await;
    assert_eq!(app.sim.route_count("GET /api/v1/customer/{id}/costs").await, 1);
    let body = json!({"event_id": "refresh-1", "customer": ACME, "code": "api_calls", "value": 1});
    assert_eq!(app.post_event(&body).await.status(), 202);
    app.outbox_status("refresh-1", "delivered").await;
    eventually(Duration::from_secs(5), "the delivery to refresh the customer", || async {
        (app.sim.route_count("GET /api/v1/customer/{id}/costs").await >= 2).then_some(())
    })
    .await;
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for series in [
        r#"usage_gate_events_total{outcome="accepted"}"#,
        r#"usage_gate_outbox_deliveries_total{outcome="delivered"}"#,
        "usage_gate_outbox_delivery_lag_seconds_count",
        r#"usage_gate_outbox_events{status="delivered"}"#,
        "usage_gate_outbox_oldest_pending_age_seconds",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
}

#[tokio::test]
async fn delivering_events_sent_by_subscription_refreshes_the_owners_cached_decision() {
    let app =
        TestApp::spawn_with(|raw| raw.cache.min_refresh_interval = std::time::Duration::from_millis(0)).await;
    app.get(&format!("/v1/customers/{ACME}/check"), Some(CHECK_KEY)).await;
    // BillaBear cannot say whose a subscription is; fetching the customer lists its subscriptions.
    eventually(Duration::from_secs(5), "the customer's subscriptions listed", || async {
        (app.sim.route_count("GET /api/v1/customer/{id}/subscription/active").await >= 1).then_some(())
    })
    .await;
    assert_eq!(app.sim.route_count("GET /api/v1/customer/{id}/costs").await, 1);
    assert_eq!(app.post_event(&event("by-subscription")).await.status(), 202);
    app.outbox_status("by-subscription", "delivered").await;
    eventually(Duration::from_secs(5), "the delivery to refresh the subscription's customer", || async {
        (app.sim.route_count("GET /api/v1/customer/{id}/costs").await >= 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn on_shutdown_deliveries_under_way_finish_and_the_service_stops_answering() {
    let mut app = TestApp::spawn().await;
    // BillaBear is slow, so the deliveries are still under way when the shutdown begins.
    app.sim.set_faults(json!({"latency_ms": 400, "only": "events"})).await;
    for i in 0..5 {
        assert_eq!(app.post_event(&event(&format!("stop-{i}"))).await.status(), 202);
    }
    eventually(Duration::from_secs(5), "the deliveries to start", || async {
        let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE attempts >= 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (claimed == 5).then_some(())
    })
    .await;
    app.shut_down().await;
    // Everything that was under way was finished and recorded, once.
    for i in 0..5 {
        assert_eq!(app.outbox_row(&format!("stop-{i}")).await["status"], "delivered", "stop-{i}");
        assert_eq!(app.sim.event_count(&format!("stop-{i}")).await, 1);
    }
    assert!(app.http.get(app.url("/healthz")).send().await.is_err(), "no longer listening");
}

#[tokio::test]
async fn an_event_holding_nul_is_a_400_naming_the_field_and_events_beside_it_are_stored() {
    let app = TestApp::spawn().await;
    let mut poisoned_properties = event("nul-props");
    poisoned_properties["properties"] = json!({"endpoint": "/v1/\u{0}"});
    let mut poisoned_id = event("nul-id");
    poisoned_id["event_id"] = json!("nul\u{0}id");
    // Posted together, so the valid ones share group commits with the poisoned ones.
    let posts = (0..40).map(|i| {
        let app = &app;
        let poisoned = if i % 2 == 0 { poisoned_properties.clone() } else { poisoned_id.clone() };
        async move {
            let valid = event(&format!("beside-{i}"));
            let (valid, poisoned) = tokio::join!(app.post_event(&valid), app.post_event(&poisoned));
            (valid.status().as_u16(), poisoned)
        }
    });
    for (i, (valid, poisoned)) in futures_util::future::join_all(posts).await.into_iter().enumerate() {
        assert_eq!(valid, 202, "the valid event beside poisoned one {i}");
        let body = assert_problem(poisoned, 400, "invalid_request").await;
        let field = if i % 2 == 0 { "properties" } else { "event_id" };
        assert_eq!(body["errors"][0]["field"], field);
    }
    let batch = json!({"events": [event("batch-ok-1"), poisoned_properties, event("batch-ok-2")]});
    let response =
        app.http.post(app.url("/v1/events/batch")).bearer_auth(EVENTS_KEY).json(&batch).send().await.unwrap();
    let results = response.json::<Value>().await.unwrap()["results"].clone();
    let statuses: Vec<_> = results.as_array().unwrap().iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [json!("accepted"), json!("invalid"), json!("accepted")]);
    assert_eq!(results[1]["errors"][0]["field"], "events[1].properties");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&app.pool).await.unwrap();
    assert_eq!(stored, 42, "the 40 valid single events and the batch's 2");
}

#[tokio::test]
async fn a_value_postgres_refuses_fails_only_its_own_request_in_a_shared_commit() {
    let app = TestApp::spawn().await;
    // A value validation lets through but the database refuses, as a stand-in for any such gap.
    sqlx::query("ALTER TABLE outbox ADD CONSTRAINT test_refuses_poison CHECK (event_id NOT LIKE 'poison%')")
        .execute(&app.pool)
        .await
        .unwrap();
    let posts = (0..40).map(|i| {
        let app = &app;
        async move {
            let (fine, poison) = (event(&format!("fine-{i}")), event(&format!("poison-{i}")));
            let (valid, refused) = tokio::join!(app.post_event(&fine), app.post_event(&poison));
            (valid.status().as_u16(), refused)
        }
    });
    for (i, (valid, refused)) in futures_util::future::join_all(posts).await.into_iter().enumerate() {
        assert_eq!(valid, 202, "fine-{i} shares commits with refused events");
        assert_problem(refused, 400, "invalid_value").await;
    }
    // Within a batch too: the refused item is `invalid`, the others are stored.
    let batch = json!({"events": [event("batch-fine"), event("poison-batch"), event("batch-fine-2")]});
    let response =
        app.http.post(app.url("/v1/events/batch")).bearer_auth(EVENTS_KEY).json(&batch).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let results = response.json::<Value>().await.unwrap()["results"].clone();
    let statuses: Vec<_> = results.as_array().unwrap().iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [json!("accepted"), json!("invalid"), json!("accepted")]);
    assert_eq!(results[1]["errors"][0]["field"], "events[1]");
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY event_id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 42, "every fine-* and the batch's two: {stored:?}");
    assert!(stored.iter().all(|id| id.starts_with("fine-") || id.starts_with("batch-fine")));
}

#[tokio::test]
async fn an_event_billabear_accepted_is_not_sent_again_when_recording_it_fails_for_a_moment() {
    let app = TestApp::spawn_with(|raw| raw.outbox.lease = std::time::Duration::from_millis(3500)).await;
    // A Postgres blip exactly when the delivery is recorded: the first two tries fail.
    for statement in [
        "CREATE SEQUENCE test_blip",
        "CREATE FUNCTION test_blip() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF nextval('test_blip') <= 2 THEN RAISE EXCEPTION 'blip' USING ERRCODE = '08006'; END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER test_blip BEFORE UPDATE ON outbox FOR EACH ROW
         WHEN (NEW.status = 'delivered') EXECUTE FUNCTION test_blip()",
    ] {
        sqlx::query(statement).execute(&app.pool).await.unwrap();
    }
    assert_eq!(app.post_event(&event("blip")).await.status(), 202);
    app.outbox_status("blip", "delivered").await;
    assert_eq!(app.sim.event_count("blip").await, 1, "BillaBear received it once");
}

#[tokio::test]
async fn an_event_that_keeps_failing_is_dead_after_max_attempts_and_a_resend_says_so() {
    let app = TestApp::spawn_with(|raw| raw.outbox.max_attempts = 3).await;
    app.sim.set_faults(json!({"outage": "unavailable", "only": "events"})).await;
    assert_eq!(app.post_event(&event("doomed")).await.status(), 202);
    let row = app.outbox_status("doomed", "dead").await;
    assert_eq!((row["attempts"].as_i64(), row["upstream_status"].as_i64()), (Some(3), Some(503)));
    assert!(row["last_error"].as_str().unwrap().starts_with("gave up after 3 attempts"), "{row}");
    app.sim.clear_faults().await;

    let body = assert_problem(app.post_event(&event("doomed")).await, 409, "event_dead").await;
    assert!(body["detail"].as_str().unwrap().contains("not delivered"), "{body}");
    let batch = json!({"events": [event("doomed")]});
    let response =
        app.http.post(app.url("/v1/events/batch")).bearer_auth(EVENTS_KEY).json(&batch).send().await.unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["results"][0]["status"], "dead");
    let sdk = app.http.post(app.url("/api/v1/events")).header("X-API-Key", EVENTS_KEY).json(&event("doomed"));
    assert_problem(sdk.send().await.unwrap(), 409, "event_dead").await;
    assert_eq!(app.sim.event_count("doomed").await, 0);
}

#[tokio::test]
async fn a_slow_delivery_holds_back_only_its_own_slot() {
    let app = TestApp::spawn_with(|raw| {
        raw.outbox.timeout = std::time::Duration::from_millis(5000);
        raw.outbox.lease = std::time::Duration::from_millis(20_000);
    })
    .await;
    // Resolving a customer's subscription is slow; delivering by subscription is not.
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([])).await;
    app.sim.set_faults(json!({"latency_ms": 3000, "only": "subscription"})).await;
    let slow = json!({"event_id": "slow", "customer": customer, "code": "api_calls", "value": 1});
    assert_eq!(app.post_event(&slow).await.status(), 202);
    eventually(Duration::from_secs(5), "the slow event to be under way", || async {
        (app.sim.route_count("GET /api/v1/customer/{id}/subscription/active").await > 0).then_some(())
    })
    .await;
    for i in 0..5 {
        assert_eq!(app.post_event(&event(&format!("quick-{i}"))).await.status(), 202);
    }
    for i in 0..5 {
        app.delivered(&format!("quick-{i}")).await;
    }
    assert_eq!(app.sim.event_count("slow").await, 0, "the quick events did not wait for the slow one");
    app.delivered("slow").await;
}

#[tokio::test]
async fn after_the_listening_connection_is_lost_new_events_still_wake_the_forwarder() {
    // Polling is too slow to deliver within the test: only NOTIFY can.
    let app =
        TestApp::spawn_with(|raw| raw.outbox.poll_interval = std::time::Duration::from_millis(60_000)).await;
    assert_eq!(app.post_event(&event("first")).await.status(), 202);
    app.delivered("first").await;
    let database: String =
        sqlx::query_scalar("SELECT current_database()").fetch_one(&app.pool).await.unwrap();
    let admin = sqlx::PgPool::connect(&base_database_url()).await.unwrap();
    // Postgres refuses new connections for a moment and every connection is cut: the
    // forwarder's LISTEN fails, and so does its first attempt to make it again.
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"ALTER DATABASE "{database}" ALLOW_CONNECTIONS false"#)))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&database)
        .execute(&admin)
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "usage-gate to find it cannot reconnect", || async {
        let row: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(&database)
            .fetch_optional(&admin)
            .await
            .unwrap();
        (row == Some(0)).then_some(())
    })
    .await;
    // The refusal lasts a while (a fault's duration, not a wait for something): long enough
    // for the forwarder's first attempt to LISTEN again to fail.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"ALTER DATABASE "{database}" ALLOW_CONNECTIONS true"#)))
        .execute(&admin)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "an event accepted after the cut", || async {
        (app.post_event(&event("second")).await.status() == 202).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "the second event delivered, woken by NOTIFY", || async {
        (app.sim.event_count("second").await == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_event_with_numbers_at_the_edge_of_a_double_is_listed_and_delivered() {
    let app = TestApp::spawn().await;
    let mut edge = event("edge");
    edge["properties"] =
        json!({"max": f64::MAX, "tiny": -2.2250738585072014e-308, "big": 5.435967572042434e276});
    assert_eq!(app.post_event(&edge).await.status(), 202);
    let received = app.delivered("edge").await;
    assert_eq!(received["events"][0]["properties"]["max"], json!(f64::MAX));
    let listing = app.http.get(app.url("/v1/outbox")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(listing.status(), 200, "Postgres's spelling of the numbers reads back");
    let listing: Value = listing.json().await.unwrap();
    assert_eq!(listing["events"][0]["properties"]["max"], json!(f64::MAX));
}

#[tokio::test]
async fn a_stored_event_that_cannot_be_read_is_dead_alone_and_the_rest_are_delivered() {
    let app = TestApp::spawn().await;
    // Nested deeper than a JSON reader follows: only a hand-made row can be like this, but a
    // claim that failed on it would stop every delivery.
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    sqlx::query(
        "INSERT INTO outbox (event_id, subscription_id, code, value, properties, fingerprint)
         VALUES ('unreadable', $1, 'api_calls', 1, jsonb_build_object('deep', $2::jsonb), '\\x00')",
    )
    .bind(uuid::Uuid::parse_str(ACME_SUBSCRIPTION).unwrap())
    .bind(&deep)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(app.post_event(&event("readable")).await.status(), 202);
    app.delivered("readable").await;
    // (Its row cannot be read as JSON either: ask for the two columns.)
    let (status, error) = eventually(Duration::from_secs(10), "the unreadable event dead", || async {
        let row: (String, Option<String>) =
            sqlx::query_as("SELECT status, last_error FROM outbox WHERE event_id = 'unreadable'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        (row.0 == "dead").then_some(row)
    })
    .await;
    assert_eq!(status, "dead");
    assert!(error.unwrap().contains("cannot be read"));
}
