//! The check, end to end: decisions from the simulator's data, the cache's behaviour while
//! BillaBear is slow or down, batches, the gate, bad input and keys.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const GLOBEX_NEAR: &str = "22222222-2222-4222-8222-222222222222";
const UMBRELLA_OVER: &str = "44444444-4444-4444-8444-444444444444";

impl TestApp {
    pub async fn check(&self, customer: &str) -> Value {
        self.check_query(customer, "").await
    }

    pub async fn check_query(&self, customer: &str, query: &str) -> Value {
        let response = self.get(&format!("/v1/customers/{customer}/check{query}"), Some(CHECK_KEY)).await;
        assert_eq!(response.status(), 200, "check {customer}{query}");
        response.json().await.unwrap()
    }

    pub async fn check_batch(&self, body: &str) -> reqwest::Response {
        self.http
            .post(self.url("/v1/check"))
            .bearer_auth(CHECK_KEY)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    pub async fn gate(&self, customer: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url("/v1/gate")).bearer_auth(CHECK_KEY);
        if let Some(customer) = customer {
            request = request.header("X-Customer-Id", customer);
        }
        request.send().await.unwrap()
    }
}

fn reasons(decision: &Value) -> Vec<&str> {
    decision["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect()
}

#[tokio::test]
async fn each_demo_customer_gets_the_decision_its_data_calls_for() {
    let app = TestApp::spawn().await;
    let cases = [
        (ACME, true, "ok", vec![]),
        (GLOBEX_NEAR, true, "warning", vec!["near_limit"]),
        (INITECH, true, "warning", vec!["warning_limit_exceeded"]),
        (UMBRELLA_OVER, false, "blocked", vec!["disable_limit_exceeded"]),
        (HOOLI_DISABLED, false, "blocked", vec!["customer_disabled", "disable_limit_exceeded"]),
        (STARK_FLAT, true, "ok", vec![]),
    ];
    for (customer, allowed, status, expected) in cases {
        let d = app.check(customer).await;
        assert_eq!(
            (d["allowed"].as_bool(), d["status"].as_str()),
            (Some(allowed), Some(status)),
            "{customer}: {d}"
        );
        assert_eq!(reasons(&d), expected, "{customer}");
    }
}

#[tokio::test]
async fn a_decision_explains_itself() {
    let app = TestApp::spawn().await;
    let first = app.check(INITECH).await;
    assert_eq!(first["customer_id"], INITECH);
    assert_eq!(
        first["estimate"],
        json!({"amount": 6000, "currency": "USD", "billabear": 6000, "pending": 0, "pending_events": 0, "reserved": 0,
               "approximate": false, "as_of": first["as_of"]})
    );
    assert_eq!(first["customer_status"], "active");
    assert_eq!((first["fallback"].as_bool(), first["source"].as_str()), (Some(false), Some("upstream")));
    let mut limits = first["limits"].as_array().unwrap().clone();
    limits.sort_by_key(|l| l["amount"].as_i64());
    assert_eq!(limits[0]["action"], "WARNING");
    assert_eq!((limits[0]["exceeded"].as_bool(), limits[0]["remaining"].as_i64()), (Some(true), Some(0)));
    assert_eq!(
        (limits[1]["exceeded"].as_bool(), limits[1]["remaining"].as_i64()),
        (Some(false), Some(14000))
    );
    assert!(first["as_of"].as_str().unwrap().ends_with('Z'));
    assert!(first.get("would_block").is_none(), "only in shadow mode");

    let second = app.check(INITECH).await;
    assert_eq!(second["source"], "cache");
    assert!(second["age_ms"].as_u64().is_some());
    assert_eq!(
        app.sim.route_count("GET /api/v1/customer/{id}/costs").await,
        1,
        "the second came from the cache"
    );
}

#[tokio::test]
async fn an_estimate_equal_to_a_limit_is_not_over_it() {
    let app = TestApp::spawn().await;
    let (at_limit, _) =
        app.sim.add_usage_customer(1000.0, json!([{"amount": 1000, "action": "DISABLE"}])).await;
    let (one_over, _) =
        app.sim.add_usage_customer(1001.0, json!([{"amount": 1000, "action": "DISABLE"}])).await;
    let d = app.check(&at_limit).await;
    assert_eq!((d["allowed"].as_bool(), reasons(&d)), (Some(true), vec!["near_limit"]));
    let d = app.check(&one_over).await;
    assert_eq!((d["allowed"].as_bool(), reasons(&d)), (Some(false), vec!["disable_limit_exceeded"]));
}

#[tokio::test]
async fn cost_asks_whether_that_much_more_would_go_over() {
    let app = TestApp::spawn().await;
    // Acme: estimate 1200, DISABLE above 10000.
    let fits = app.check_query(ACME, "?cost=8800").await;
    assert_eq!((fits["allowed"].as_bool(), fits["cost"].as_i64()), (Some(true), Some(8800)));
    let over = app.check_query(ACME, "?cost=8801").await;
    assert_eq!(over["allowed"], false);
    assert_eq!(reasons(&over), vec!["would_exceed_disable_limit"]);
}

#[tokio::test]
async fn shadow_mode_allows_and_says_what_it_would_have_done() {
    let app = TestApp::spawn_with(|raw| raw.policy.mode = "shadow".into()).await;
    let d = app.check(UMBRELLA_OVER).await;
    assert_eq!(
        (d["allowed"].as_bool(), d["status"].as_str(), d["would_block"].as_bool()),
        (Some(true), Some("blocked"), Some(true))
    );
    assert_eq!(app.check(ACME).await["would_block"], false);
    assert_eq!(app.gate(Some(UMBRELLA_OVER)).await.status(), 204);
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("usage_gate_shadow_would_block_total"), "counted in metrics");
}

#[tokio::test]
async fn an_unknown_customer_is_denied_and_remembered_briefly() {
    let app = TestApp::spawn().await;
    let nobody = uuid::Uuid::new_v4().to_string();
    let d = app.check(&nobody).await;
    assert_eq!((d["allowed"].as_bool(), d["status"].as_str()), (Some(false), Some("unknown")));
    assert_eq!(reasons(&d), vec!["customer_not_found"]);
    let again = app.check(&nobody).await;
    assert_eq!(again["source"], "cache");
    assert_eq!(app.sim.route_count("GET /api/v1/customer/{id}").await, 1, "a bad id cannot hammer BillaBear");
}

#[tokio::test]
async fn unknown_customers_may_be_allowed_by_policy() {
    let app = TestApp::spawn_with(|raw| raw.policy.unknown_customer = "allow".into()).await;
    let d = app.check(&uuid::Uuid::new_v4().to_string()).await;
    assert_eq!((d["allowed"].as_bool(), d["status"].as_str()), (Some(true), Some("unknown")));
}

#[tokio::test]
async fn check_serves_stale_decision_while_billabear_is_down_then_falls_back() {
    let app = TestApp::spawn_with(|raw| {
        raw.cache.ttl = std::time::Duration::from_millis(50);
        raw.cache.max_stale = std::time::Duration::from_millis(600);
        raw.cache.min_refresh_interval = std::time::Duration::from_millis(100);
    })
    .await;
    assert_eq!(app.check(UMBRELLA_OVER).await["source"], "upstream");
    app.sim.set_faults(json!({"outage": "unavailable"})).await;

    let stale = eventually(Duration::from_secs(5), "a stale answer", || async {
        let d = app.check(UMBRELLA_OVER).await;
        (d["source"] == "stale").then_some(d)
    })
    .await;
    assert_eq!((stale["allowed"].as_bool(), stale["fallback"].as_bool()), (Some(false), Some(false)));
    assert_eq!(reasons(&stale), vec!["disable_limit_exceeded"], "stale data still decides");

    let fallback = eventually(Duration::from_secs(5), "a fallback answer", || async {
        let d = app.check(UMBRELLA_OVER).await;
        (d["source"] == "fallback").then_some(d)
    })
    .await;
    assert_eq!(
        (fallback["allowed"].as_bool(), fallback["fallback"].as_bool()),
        (Some(true), Some(true)),
        "fail open"
    );
    assert_eq!(reasons(&fallback), vec!["upstream_unavailable"]);
    assert_eq!(fallback["status"], "unknown");

    app.sim.clear_faults().await;
    let recovered = eventually(Duration::from_secs(5), "an answer from fresh data", || async {
        let d = app.check(UMBRELLA_OVER).await;
        (d["fallback"] == false).then_some(d)
    })
    .await;
    assert_eq!(recovered["allowed"], false);
}

#[tokio::test]
async fn refreshes_during_an_outage_are_bounded_per_customer() {
    let app = TestApp::spawn_with(|raw| {
        raw.cache.ttl = std::time::Duration::from_millis(1);
        raw.cache.min_refresh_interval = std::time::Duration::from_millis(300);
    })
    .await;
    let costs = "GET /api/v1/customer/{id}/costs";
    app.check(ACME).await;
    app.sim.set_faults(json!({"outage": "unavailable"})).await;
    // Stale checks start one refresh once the interval since the first fetch has passed.
    eventually(Duration::from_secs(5), "a refresh after the interval", || async {
        // Within the 1 ms ttl a check is still a fresh hit; either way the cached data answers.
        assert_ne!(app.check(ACME).await["source"], "fallback");
        (app.sim.route_count(costs).await >= 2).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    for _ in 0..50 {
        assert_ne!(app.check(ACME).await["source"], "fallback");
    }
    // At most one more refresh per 300 ms since then (a refresh per check would be ~50).
    let allowed = 2 + 2 + started.elapsed().as_millis() as u64 / 300;
    let seen = app.sim.route_count(costs).await;
    assert!(seen <= allowed, "{seen} refreshes, at most {allowed} expected");
}

#[tokio::test]
async fn fail_closed_denies_when_billabear_is_down_and_nothing_is_cached() {
    let app = TestApp::spawn_with(|raw| raw.policy.fail_mode = "closed".into()).await;
    app.sim.set_faults(json!({"outage": "drop"})).await;
    let d = app.check(ACME).await;
    assert_eq!(
        (d["allowed"].as_bool(), d["fallback"].as_bool(), d["source"].as_str()),
        (Some(false), Some(true), Some("fallback"))
    );
    assert_eq!(reasons(&d), vec!["upstream_unavailable"]);
    assert!(d["estimate"].is_null() && d["as_of"].is_null());
}

#[tokio::test]
async fn a_hanging_billabear_costs_a_check_at_most_the_timeout() {
    let app = TestApp::spawn_with(|raw| raw.billabear.timeout = std::time::Duration::from_millis(200)).await;
    app.sim.set_faults(json!({"outage": "hang"})).await;
    let started = std::time::Instant::now();
    let d = app.check(ACME).await;
    assert_eq!(d["source"], "fallback");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn concurrent_checks_of_a_cold_customer_make_one_set_of_upstream_calls() {
    let app = TestApp::spawn().await;
    app.sim.set_faults(json!({"latency_ms": 100})).await;
    let checks = (0..200).map(|_| app.check(ACME));
    let decisions = futures_util::future::join_all(checks).await;
    assert!(decisions.iter().all(|d| d["allowed"] == true));
    for route in [
        "GET /api/v1/customer/{id}/costs",
        "GET /api/v1/customer/{id}/usage-limits",
        "GET /api/v1/customer/{id}",
    ] {
        assert_eq!(app.sim.route_count(route).await, 1, "{route}");
    }
}

#[tokio::test]
async fn a_batch_answers_in_order_with_errors_in_place() {
    let app = TestApp::spawn().await;
    let body = json!({"customers": [
        {"id": ACME},
        {"id": "not-a-uuid"},
        {"id": UMBRELLA_OVER, "cost": 5},
        {"id": ACME, "cost": -1},
        {"cost": 5},
        42,
        {"id": HOOLI_DISABLED},
        {"id": ACME, "cost": "5"},
    ]});
    let response = app.check_batch(&body.to_string()).await;
    assert_eq!(response.status(), 200);
    let decisions = response.json::<Value>().await.unwrap()["decisions"].as_array().unwrap().clone();
    assert_eq!(decisions.len(), 8);
    assert_eq!(
        (decisions[0]["customer_id"].as_str(), decisions[0]["allowed"].as_bool()),
        (Some(ACME), Some(true))
    );
    assert_eq!(decisions[1]["error"]["field"], "customers[1].id");
    assert_eq!(decisions[1]["customer_id"], "not-a-uuid");
    assert_eq!(
        (decisions[2]["customer_id"].as_str(), decisions[2]["allowed"].as_bool()),
        (Some(UMBRELLA_OVER), Some(false))
    );
    assert_eq!(decisions[3]["error"]["field"], "customers[3].cost");
    assert_eq!(decisions[4]["error"]["field"], "customers[4].id");
    assert_eq!(decisions[5]["error"]["field"], "customers[5]");
    assert_eq!(reasons(&decisions[6]), vec!["customer_disabled", "disable_limit_exceeded"]);
    assert_eq!(decisions[7]["error"]["field"], "customers[7].cost");
}

#[tokio::test]
async fn a_batch_of_cold_customers_fetches_each_once() {
    let app = TestApp::spawn().await;
    app.sim.set_faults(json!({"latency_ms": 20})).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(app.sim.add_usage_customer(10.0, json!([])).await.0);
    }
    // Every customer twice: the second asks while the first fetch may be under way.
    let items: Vec<Value> = ids.iter().chain(ids.iter()).map(|id| json!({"id": id})).collect();
    let response = app.check_batch(&json!({"customers": items}).to_string()).await;
    let decisions = response.json::<Value>().await.unwrap()["decisions"].as_array().unwrap().clone();
    assert_eq!(decisions.len(), 80);
    assert!(
        decisions.iter().zip(ids.iter().chain(ids.iter())).all(|(d, id)| d["customer_id"] == id.as_str())
    );
    assert_eq!(app.sim.route_count("GET /api/v1/customer/{id}/costs").await, 40);
}

#[tokio::test]
async fn a_malformed_batch_is_a_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let too_many = json!({"customers": vec![json!({"id": ACME}); 1001]}).to_string();
    let cases = [
        (r#"{"customers": []}"#.to_string(), "customers"),
        (too_many, "customers"),
        (r#"{"ids": []}"#.to_string(), "customers"),
        ("not json".to_string(), "body"),
        (r#"{"customers": "#.to_string(), "body"),
    ];
    for (body, field) in cases {
        let problem = assert_problem(app.check_batch(&body).await, 400, "invalid_request").await;
        assert_eq!(problem["errors"][0]["field"], field, "{body:.60}");
    }
}

#[tokio::test]
async fn a_cost_is_taken_up_to_the_documents_maximum_and_refused_past_it() {
    let app = TestApp::spawn().await;
    let document: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let parameters =
        document["paths"]["/v1/customers/{customer_id}/check"]["get"]["parameters"].as_array().unwrap();
    let cost = &parameters.iter().find(|p| p["name"] == "cost").unwrap()["schema"];
    assert_eq!((cost["minimum"].as_i64(), cost["maximum"].as_i64()), (Some(0), Some(i64::MAX)), "{cost}");
    let at_most = app.check_query(ACME, &format!("?cost={}", i64::MAX)).await;
    assert_eq!(at_most["allowed"], false, "the largest cost is judged: {at_most}");
    let past =
        app.get(&format!("/v1/customers/{ACME}/check?cost={}", i64::MAX as u64 + 1), Some(CHECK_KEY)).await;
    assert_eq!(assert_problem(past, 400, "invalid_request").await["errors"][0]["field"], "cost");
}

#[tokio::test]
async fn bad_check_input_is_a_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        ("/v1/customers/not-a-uuid/check", "customer_id"),
        ("/v1/customers/11111111-1111-4111-8111-11111111111/check", "customer_id"),
        (&*format!("/v1/customers/{ACME}/check?cost=-1"), "cost"),
        (&*format!("/v1/customers/{ACME}/check?cost=abc"), "cost"),
        (&*format!("/v1/customers/{ACME}/check?cost=1.5"), "cost"),
        (&*format!("/v1/customers/{ACME}/check?cost=99999999999999999999"), "cost"),
    ];
    for (path, field) in cases {
        let problem = assert_problem(app.get(path, Some(CHECK_KEY)).await, 400, "invalid_request").await;
        assert_eq!(problem["errors"][0]["field"], field, "{path}");
    }
    assert_eq!(app.sim.requests().await["by_route"], json!({}), "nothing invalid reached BillaBear");
}

#[tokio::test]
async fn the_gate_answers_204_or_the_blocked_status_with_usage_headers() {
    let app = TestApp::spawn().await;
    let allowed = app.gate(Some(INITECH)).await;
    assert_eq!(allowed.status(), 204);
    let h = allowed.headers();
    assert_eq!(
        (h["x-usage-status"].to_str().unwrap(), h["x-usage-estimate"].to_str().unwrap()),
        ("warning", "6000")
    );
    assert_eq!(
        (h["x-usage-limit"].to_str().unwrap(), h["x-usage-currency"].to_str().unwrap()),
        ("20000", "USD")
    );

    let blocked = app.gate(Some(UMBRELLA_OVER)).await;
    assert_eq!(blocked.headers()["x-usage-status"], "blocked");
    assert_eq!(blocked.headers()["x-usage-reasons"], "disable_limit_exceeded");
    let problem = assert_problem(blocked, 403, "usage_blocked").await;
    assert_eq!(problem["reasons"], json!(["disable_limit_exceeded"]));

    let missing = assert_problem(app.gate(None).await, 400, "invalid_request").await;
    assert_eq!(missing["errors"][0]["field"], "x-customer-id");
    assert_problem(app.gate(Some("nope")).await, 400, "invalid_request").await;
}

#[tokio::test]
async fn the_gate_also_answers_under_a_path_suffix_as_envoy_sends_it() {
    let app = TestApp::spawn().await;
    let gate = |customer: &'static str| {
        app.http
            .get(app.url("/v1/gate/api/orders/42"))
            .bearer_auth(CHECK_KEY)
            .header("X-Customer-Id", customer)
            .send()
    };
    assert_eq!(gate(ACME).await.unwrap().status(), 204);
    assert_problem(gate(UMBRELLA_OVER).await.unwrap(), 403, "usage_blocked").await;
}

#[tokio::test]
async fn the_gate_header_and_blocked_status_are_configurable() {
    let app = TestApp::spawn_with(|raw| {
        raw.gate.customer_header = "X-Tenant".into();
        raw.gate.blocked_status = 429;
    })
    .await;
    let response = app
        .http
        .get(app.url("/v1/gate"))
        .bearer_auth(CHECK_KEY)
        .header("X-Tenant", UMBRELLA_OVER)
        .send()
        .await
        .unwrap();
    assert_problem(response, 429, "usage_blocked").await;
}

#[tokio::test]
async fn check_routes_need_the_check_scope() {
    let app = TestApp::spawn().await;
    let path = format!("/v1/customers/{ACME}/check");
    assert_problem(app.get(&path, None).await, 401, "unauthorized").await;
    assert_problem(app.get(&path, Some("wrong-key-0123456789")).await, 401, "unauthorized").await;
    for key in [EVENTS_KEY, ADMIN_KEY] {
        assert_problem(app.get(&path, Some(key)).await, 403, "forbidden").await;
        let response = app
            .http
            .get(app.url("/v1/gate"))
            .bearer_auth(key)
            .header("X-Customer-Id", ACME)
            .send()
            .await
            .unwrap();
        assert_problem(response, 403, "forbidden").await;
    }
    let refresh = app
        .http
        .post(app.url(&format!("/v1/customers/{ACME}/refresh")))
        .bearer_auth(CHECK_KEY)
        .send()
        .await
        .unwrap();
    assert_problem(refresh, 403, "forbidden").await;
}

#[tokio::test]
async fn refresh_refetches_now_and_reports_upstream_failures() {
    let app = TestApp::spawn().await;
    assert_eq!(app.check(ACME).await["allowed"], true);
    // BillaBear's estimate moves past the DISABLE limit; the cached decision has not seen it.
    app.sim
        .http
        .put(format!("{}/customers/{ACME}/usage", app.sim.server.control_url()))
        .json(&json!({"metric": "api_calls", "value": 20000}))
        .send()
        .await
        .unwrap();
    assert_eq!(app.check(ACME).await["allowed"], true);
    let refresh = |app: &TestApp| {
        app.http.post(app.url(&format!("/v1/customers/{ACME}/refresh"))).bearer_auth(ADMIN_KEY).send()
    };
    let refreshed: Value = refresh(&app).await.unwrap().json().await.unwrap();
    assert_eq!(
        (refreshed["allowed"].as_bool(), refreshed["source"].as_str()),
        (Some(false), Some("upstream"))
    );
    assert_eq!(app.check(ACME).await["allowed"], false, "the next check sees it");

    app.sim.set_faults(json!({"outage": "unavailable"})).await;
    let failed = assert_problem(refresh(&app).await.unwrap(), 502, "upstream_error").await;
    assert!(failed["detail"].as_str().unwrap().contains("503"));
    app.sim.set_faults(json!({"outage": "hang"})).await;
    assert_problem(refresh(&app).await.unwrap(), 504, "upstream_timeout").await;
}

#[tokio::test]
async fn decisions_and_cache_lookups_are_counted_in_metrics() {
    let app = TestApp::spawn().await;
    app.check(UMBRELLA_OVER).await;
    app.check(UMBRELLA_OVER).await;
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for series in [
        r#"usage_gate_decisions_total{status="blocked"}"#,
        r#"usage_gate_decision_reasons_total{reason="disable_limit_exceeded"}"#,
        r#"usage_gate_cache_lookups_total{result="miss"}"#,
        r#"usage_gate_cache_lookups_total{result="hit"}"#,
        r#"usage_gate_cache_refresh_seconds_count{outcome="ok"}"#,
        r#"http_requests_total{method="GET",route="/v1/customers/{customer_id}/check",status="200"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
}

#[tokio::test]
async fn a_fetch_that_began_before_a_limit_change_never_overwrites_the_decision_made_after_it() {
    let app = TestApp::spawn_with(|raw| raw.billabear.timeout = std::time::Duration::from_millis(3000)).await;
    // A cold check's fetch: the customer and its limits answer at once, its costs a second late.
    app.sim.set_faults(json!({"latency_ms": 1000, "only": "costs"})).await;
    let slow = {
        let app = &app;
        async move { app.check(ACME).await }
    };
    let change = async {
        eventually(Duration::from_secs(5), "the slow fetch to have read the limits", || async {
            (app.sim.route_count("GET /api/v1/customer/{id}/usage-limits").await > 0).then_some(())
        })
        .await;
        app.sim.clear_faults().await;
        let created = app.create_limit(ACME, json!({"amount": 100, "action": "DISABLE"})).await;
        assert_eq!(created.status(), 201);
        assert_eq!(app.check(ACME).await["status"], "blocked", "the change is reflected at once");
    };
    let (slow, ()) = tokio::join!(slow, change);
    // The slow check itself may answer with the newer snapshot it found on arriving.
    assert!(slow["status"] == "ok" || slow["status"] == "blocked", "{slow}");
    for _ in 0..3 {
        let decision = app.check(ACME).await;
        assert_eq!(decision["status"], "blocked", "the older fetch did not overwrite: {decision}");
    }
}

#[tokio::test]
async fn cold_fetches_are_bounded_and_past_the_budget_a_cold_customer_gets_the_fallback() {
    let app = TestApp::spawn_with(|raw| {
        raw.cache.cold_fetches_per_second = 50;
        raw.cache.max_concurrent_fetches = 8;
    })
    .await;
    // Cached before the budget is spent (below: it is still answered from the cache).
    assert_eq!(app.check(UMBRELLA_OVER).await["status"], "blocked");
    let fetched_before = app.sim.route_count("GET /api/v1/customer/{id}").await;
    let mut budget_answers = 0;
    for _ in 0..3 {
        let items: Vec<Value> = (0..1000).map(|_| json!({"id": uuid::Uuid::new_v4().to_string()})).collect();
        let response = app.check_batch(&json!({"customers": items}).to_string()).await;
        let decisions = response.json::<Value>().await.unwrap()["decisions"].as_array().unwrap().clone();
        assert_eq!(decisions.len(), 1000);
        for d in &decisions {
            if reasons(d) == ["upstream_budget_exhausted"] {
                assert_eq!((d["fallback"].as_bool(), d["status"].as_str()), (Some(true), Some("unknown")));
                budget_answers += 1;
            } else {
                assert_eq!(reasons(d), ["customer_not_found"], "{d}");
            }
        }
    }
    let calls = app.sim.route_count("GET /api/v1/customer/{id}").await - fetched_before;
    // 50 a second, plus what the seconds the batches took let through.
    assert!(calls <= 300, "{calls} customers fetched from BillaBear for 3,000 random ids");
    assert_eq!(budget_answers + calls, 3000, "every id either fetched once or refused by the budget");
    // A customer already cached is still answered while the budget is spent.
    assert_eq!(app.check(UMBRELLA_OVER).await["status"], "blocked");
}

#[tokio::test]
async fn customers_billabear_does_not_know_never_push_real_customers_out_of_the_cache() {
    let app = TestApp::spawn_with(|raw| {
        raw.cache.max_customers = 3;
        raw.cache.max_unknown_customers = 50;
    })
    .await;
    for customer in [ACME, GLOBEX_NEAR, UMBRELLA_OVER] {
        assert_eq!(app.check(customer).await["source"], "upstream");
    }
    for _ in 0..200 {
        let d = app.check(&uuid::Uuid::new_v4().to_string()).await;
        assert_eq!(reasons(&d), ["customer_not_found"]);
    }
    for customer in [ACME, GLOBEX_NEAR, UMBRELLA_OVER] {
        assert_eq!(app.check(customer).await["source"], "cache", "{customer} still cached");
    }
}

#[tokio::test]
async fn an_invalidation_stops_a_fetch_already_under_way_from_caching_older_data() {
    let app = TestApp::spawn().await;
    let other = app.second_instance().await;
    // Within the check timeout (500 ms in tests), so the other replica's fetch succeeds late.
    app.sim.set_faults(json!({"latency_ms": 400, "only": "costs"})).await;
    let slow = async { other.check(ACME).await };
    let change = async {
        eventually(Duration::from_secs(5), "the other replica's fetch to have read the limits", || async {
            (app.sim.route_count("GET /api/v1/customer/{id}/usage-limits").await > 0).then_some(())
        })
        .await;
        app.sim.clear_faults().await;
        assert_eq!(app.create_limit(ACME, json!({"amount": 100, "action": "DISABLE"})).await.status(), 201);
    };
    tokio::join!(slow, change);
    eventually(Duration::from_secs(2), "the other replica to block Acme", || async {
        (other.check(ACME).await["status"] == "blocked").then_some(())
    })
    .await;
    for _ in 0..3 {
        assert_eq!(other.check(ACME).await["status"], "blocked", "the older fetch was not cached");
    }
}
