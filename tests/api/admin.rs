//! Operators' routes: limits managed in BillaBear through usage-gate, every change audited and
//! reflected in checks at once, on every replica; the audit log; BillaBear's webhooks; scopes.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::webhook_endpoints::Receiver;

impl TestApp {
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    pub async fn create_limit(&self, customer: &str, body: Value) -> reqwest::Response {
        self.admin(reqwest::Method::POST, &format!("/v1/customers/{customer}/usage-limits"), Some(body)).await
    }

    pub async fn check_status(&self, customer: &str) -> Value {
        self.get(&format!("/v1/customers/{customer}/check"), Some(CHECK_KEY)).await.json().await.unwrap()
    }

    /// Audit records for an action, oldest first.
    pub async fn audit_rows(&self, action: &str) -> Vec<Value> {
        sqlx::query_scalar("SELECT to_jsonb(a) FROM audit_log a WHERE action = $1 ORDER BY id")
            .bind(action)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn limits_are_created_listed_and_deleted_in_billabear_and_each_change_is_audited() {
    let app = TestApp::spawn().await;
    let response = app.create_limit(ACME, json!({"amount": 50_000, "action": "warning"})).await;
    assert_eq!(response.status(), 201);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    assert_eq!((created["amount"].as_i64(), created["action"].as_str()), (Some(50_000), Some("WARNING")));
    let limit = created["id"].as_str().unwrap().to_owned();
    assert_eq!(app.sim.route_count("POST /api/v1/customer/{id}/usage-limits").await, 1);

    let listed: Value = app
        .admin(reqwest::Method::GET, &format!("/v1/customers/{ACME}/usage-limits"), None)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> =
        listed["data"].as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&limit.as_str()) && ids.contains(&ACME_LIMIT), "{listed}");

    let deleted =
        app.admin(reqwest::Method::DELETE, &format!("/v1/customers/{ACME}/usage-limits/{limit}"), None).await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(app.sim.route_count("DELETE /api/v1/customer/{id}/usage-limit/{id}").await, 1);
    assert_eq!(
        app.sim.customer(ACME).await["limits"].as_array().unwrap().len(),
        1,
        "only the seed's limit is left"
    );

    let [create] = &app.audit_rows("usage_limit.create").await[..] else { panic!("one create record") };
    assert_eq!(
        (create["actor"].as_str(), create["outcome"].as_str(), create["customer_id"].as_str()),
        (Some("operator"), Some("success"), Some(ACME))
    );
    assert_eq!(
        (create["target_id"].as_str(), create["upstream_status"].as_i64()),
        (Some(limit.as_str()), Some(201))
    );
    assert_eq!(create["details"], json!({"amount": 50_000, "action": "WARNING"}));
    assert_eq!(create["request_id"].as_str(), Some(request_id.as_str()));
    let [delete] = &app.audit_rows("usage_limit.delete").await[..] else { panic!("one delete record") };
    assert_eq!(
        (delete["outcome"].as_str(), delete["target_id"].as_str()),
        (Some("success"), Some(limit.as_str()))
    );
    assert_eq!(delete["details"], json!({"amount": 50_000, "action": "WARNING"}));
    let audit = serde_json::to_string(&app.audit_rows("usage_limit.create").await).unwrap();
    assert!(!audit.contains(ADMIN_KEY), "keys never reach the audit log");
}

#[tokio::test]
async fn a_new_disable_limit_below_the_estimate_blocks_the_very_next_check() {
    let app = TestApp::spawn().await;
    assert_eq!(app.check_status(ACME).await["status"], "ok", "Acme's estimate 1200 is under 10000");
    assert_eq!(app.create_limit(ACME, json!({"amount": 1000, "action": "DISABLE"})).await.status(), 201);
    let decision = app.check_status(ACME).await;
    assert_eq!((decision["status"].as_str(), decision["allowed"].as_bool()), (Some("blocked"), Some(false)));
    assert!(decision["reasons"].as_array().unwrap().contains(&json!("disable_limit_exceeded")), "{decision}");
}

#[tokio::test]
async fn invalid_limits_are_422s_naming_the_field_never_sent_and_audited_as_rejected() {
    let app = TestApp::spawn().await;
    let response = app.create_limit(ACME, json!({"amount": 0, "action": "WARN"})).await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    let fields: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["amount", "action"]);
    let response = app.create_limit(ACME, json!({"amount": "2000", "action": "DISABLE"})).await;
    assert_problem(response, 422, "validation_failed").await;
    assert_eq!(app.sim.route_count("POST /api/v1/customer/{id}/usage-limits").await, 0);
    let rows = app.audit_rows("usage_limit.create").await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["outcome"] == "rejected" && r["actor"] == "operator"), "{rows:?}");
    assert_eq!(rows[0]["details"]["errors"][0]["field"], "amount");
}

#[tokio::test]
async fn with_billabear_failing_a_change_is_a_502_or_504_and_audited_as_failed() {
    let app =
        TestApp::spawn_with(|raw| raw.billabear.admin_timeout = std::time::Duration::from_millis(400)).await;
    app.sim.set_faults(json!({"outage": "unavailable", "only": "usage-limit"})).await;
    let response = app.create_limit(ACME, json!({"amount": 500, "action": "DISABLE"})).await;
    assert_problem(response, 502, "upstream_error").await;
    // The create hangs, and so does looking afterwards: nobody can tell whether it was made.
    app.sim.set_faults(json!({"outage": "hang", "only": "usage-limit"})).await;
    let response = app.create_limit(ACME, json!({"amount": 500, "action": "DISABLE"})).await;
    let problem = assert_problem(response, 504, "upstream_timeout").await;
    assert_eq!(problem["limit_exists"], Value::Null);
    assert!(problem.as_object().unwrap().contains_key("limit_exists"), "{problem}");
    let rows = app.audit_rows("usage_limit.create").await;
    let outcomes: Vec<(&str, Option<i64>)> =
        rows.iter().map(|r| (r["outcome"].as_str().unwrap(), r["upstream_status"].as_i64())).collect();
    assert_eq!(outcomes, [("failed", Some(503)), ("unknown", None)]);
    assert!(rows.iter().all(|r| r["details"]["message"].is_string()));
    app.sim.clear_faults().await;
    assert_eq!(app.check_status(ACME).await["status"], "ok", "nothing was changed");
}

#[tokio::test]
async fn another_customers_limit_cannot_be_deleted_through_this_one() {
    let app = TestApp::spawn().await;
    let response = app
        .admin(reqwest::Method::DELETE, &format!("/v1/customers/{INITECH}/usage-limits/{ACME_LIMIT}"), None)
        .await;
    assert_problem(response, 404, "not_found").await;
    assert_eq!(app.sim.route_count("DELETE /api/v1/customer/{id}/usage-limit/{id}").await, 0);
    assert_eq!(app.sim.customer(ACME).await["limits"][0]["id"], ACME_LIMIT);
    let [row] = &app.audit_rows("usage_limit.delete").await[..] else { panic!("one record") };
    assert_eq!((row["outcome"].as_str(), row["target_id"].as_str()), (Some("rejected"), Some(ACME_LIMIT)));
}

#[tokio::test]
async fn a_change_made_on_one_replica_reaches_the_others_checks_within_a_second() {
    let app = TestApp::spawn().await;
    let other = app.second_instance().await;
    assert_eq!(other.check_status(ACME).await["status"], "ok", "cached on the other replica");
    assert_eq!(app.create_limit(ACME, json!({"amount": 1000, "action": "DISABLE"})).await.status(), 201);
    eventually(Duration::from_secs(1), "the other replica to block Acme", || async {
        (other.check_status(ACME).await["status"] == "blocked").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_customer_view_shows_the_decision_and_undelivered_events() {
    let app = TestApp::spawn().await;
    app.sim.set_faults(json!({"outage": "unavailable", "only": "events"})).await;
    let event = json!({"event_id": "view-1", "customer": ACME, "code": "api_calls", "value": 1});
    assert_eq!(app.post_event(&event).await.status(), 202);
    // The replica's copy of pending usage learns of the commit a moment after the 202 (the
    // event's own answer counts it at once): the view counts it within a second.
    let view: Value = eventually(Duration::from_secs(1), "the view to count the event", || async {
        let view: Value = app
            .admin(reqwest::Method::GET, &format!("/v1/customers/{ACME}"), None)
            .await
            .json()
            .await
            .unwrap();
        (view["decision"]["estimate"]["pending"] == 1).then_some(view)
    })
    .await;
    let decision = &view["decision"];
    assert_eq!(
        (decision["status"].as_str(), decision["customer_status"].as_str()),
        (Some("ok"), Some("active"))
    );
    // The undelivered event counts: BillaBear's 1200 plus one call at 1 cent.
    assert_eq!(
        (
            &decision["estimate"]["amount"],
            &decision["estimate"]["billabear"],
            &decision["estimate"]["pending"]
        ),
        (&json!(1201), &json!(1200), &json!(1))
    );
    assert_eq!(decision["limits"][0]["id"], ACME_LIMIT);
    assert!(decision["age_ms"].is_u64());
    assert_eq!(view["outbox"], json!({"pending": 1, "dead": 0}));
}

#[tokio::test]
async fn every_route_group_needs_a_key_with_its_scope() {
    let app = TestApp::spawn().await;
    let routes: Vec<(reqwest::Method, String, Option<Value>, &str)> = vec![
        (reqwest::Method::GET, format!("/v1/customers/{ACME}/check"), None, "check"),
        (reqwest::Method::POST, "/v1/check".into(), Some(json!({"customers": [ACME]})), "check"),
        (reqwest::Method::GET, "/v1/gate".into(), None, "check"),
        (reqwest::Method::POST, "/v1/events".into(), Some(json!({})), "events"),
        (reqwest::Method::POST, "/v1/events/batch".into(), Some(json!({})), "events"),
        (reqwest::Method::GET, format!("/v1/customers/{ACME}"), None, "admin"),
        (reqwest::Method::GET, format!("/v1/customers/{ACME}/usage-limits"), None, "admin"),
        (reqwest::Method::POST, format!("/v1/customers/{ACME}/usage-limits"), Some(json!({})), "admin"),
        (reqwest::Method::DELETE, format!("/v1/customers/{ACME}/usage-limits/{ACME_LIMIT}"), None, "admin"),
        (reqwest::Method::POST, format!("/v1/customers/{ACME}/refresh"), None, "admin"),
        (reqwest::Method::GET, "/v1/audit".into(), None, "admin"),
        (reqwest::Method::GET, "/v1/outbox".into(), None, "admin"),
        (reqwest::Method::GET, "/v1/outbox/stats".into(), None, "admin"),
    ];
    let keys =
        [(None, ""), (Some(CHECK_KEY), "check"), (Some(EVENTS_KEY), "events"), (Some(ADMIN_KEY), "admin")];
    for (method, path, body, scope) in &routes {
        for (key, key_scope) in keys {
            let mut request = app.http.request(method.clone(), app.url(path)).header("X-Customer-Id", ACME);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let status = request.send().await.unwrap().status().as_u16();
            let expected = match key {
                None => "401",
                Some(_) if key_scope == *scope => "allowed",
                Some(_) => "403",
            };
            // Allowed means past the key check: the empty bodies above are then 4xx for what they hold.
            let got = match status {
                401 => "401",
                403 => "403",
                _ => "allowed",
            };
            assert_eq!(got, expected, "{method} {path} with the {key_scope:?} key answered {status}");
        }
    }
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(app.get(open, None).await.status(), 200, "{open} needs no key");
    }
}

#[tokio::test]
async fn metrics_can_move_to_their_own_address() {
    let app = TestApp::spawn_with(|raw| raw.server.metrics_address = "127.0.0.1:0".into()).await;
    assert_eq!(app.get("/metrics", None).await.status(), 404);
    let metrics = app.metrics_address.as_ref().expect("a metrics address");
    let response = app.http.get(format!("{metrics}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("usage_gate_"));
}

#[tokio::test]
async fn a_billabear_webhook_refreshes_the_customers_decision_and_is_audited() {
    let app = TestApp::spawn().await;
    app.sim.send_webhooks_to(&app.url(&format!("/v1/webhooks/billabear/{WEBHOOK_SECRET}"))).await;
    assert_eq!(app.check_status(ACME).await["status"], "ok");
    // Disabled in BillaBear itself: it sends customer_disabled to usage-gate.
    let disabled = app
        .http
        .post(app.sim.url(&format!("/customer/{ACME}/disable")))
        .header("X-API-Key", SIM_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 202);
    eventually(Duration::from_secs(5), "the webhook to block Acme", || async {
        let decision = app.check_status(ACME).await;
        (decision["status"] == "blocked").then_some(decision)
    })
    .await;
    // The refetch runs beside the webhook's own answer, so its record may land just after.
    let rows = eventually(Duration::from_secs(5), "the webhook's audit record", || async {
        let rows = app.audit_rows("webhook.customer_disabled").await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    let [row] = &rows[..] else { panic!("one record: {rows:?}") };
    assert_eq!((row["actor"].as_str(), row["customer_id"].as_str()), (Some("billabear"), Some(ACME)));

    let wrong =
        app.http.post(app.url("/v1/webhooks/billabear/not-the-secret-at-all")).json(&json!({"type": "x"}));
    assert_problem(wrong.send().await.unwrap(), 404, "not_found").await;
    let other = app.http.post(app.url(&format!("/v1/webhooks/billabear/{WEBHOOK_SECRET}")));
    let response = other.json(&json!({"type": "invoice_created", "invoice": {}})).send().await.unwrap();
    assert_eq!(response.status(), 202, "unknown types are taken and logged");
    assert_eq!(app.audit_rows("webhook.invoice_created").await[0]["details"]["ignored"], true);
}

#[tokio::test]
async fn a_usage_warning_webhook_refetches_customers_with_recent_events() {
    let app =
        TestApp::spawn_with(|raw| raw.cache.min_refresh_interval = std::time::Duration::from_millis(0)).await;
    app.check_status(ACME).await;
    let event = json!({"event_id": "recent-1", "customer": ACME, "code": "api_calls", "value": 1});
    assert_eq!(app.post_event(&event).await.status(), 202);
    app.outbox_status("recent-1", "delivered").await;
    // Let the delivery's own refresh finish, so the count below moves only for the webhook.
    let before = eventually(Duration::from_secs(5), "the delivery's refresh", || async {
        let n = app.sim.route_count("GET /api/v1/customer/{id}/costs").await;
        (n >= 2).then_some(n)
    })
    .await;
    // BillaBear's usage_warning_triggered carries nothing but its type.
    let webhook = app.http.post(app.url(&format!("/v1/webhooks/billabear/{WEBHOOK_SECRET}")));
    assert_eq!(webhook.json(&json!({"type": "usage_warning_triggered"})).send().await.unwrap().status(), 202);
    eventually(Duration::from_secs(5), "Acme refetched", || async {
        (app.sim.route_count("GET /api/v1/customer/{id}/costs").await > before).then_some(())
    })
    .await;
    assert_eq!(app.audit_rows("webhook.usage_warning_triggered").await.len(), 1);
}

#[tokio::test]
async fn a_decision_transition_is_audited_and_told_once_per_change_whatever_the_checks_and_replicas() {
    let app = TestApp::spawn().await;
    let other = app.second_instance().await;
    let receiver = Receiver::start(&[]);
    let endpoint = app.webhook_endpoint(json!({"url": receiver.url})).await;
    for replica in [&app, &other] {
        assert_eq!(replica.check_status(ACME).await["status"], "ok");
    }
    let created: Value =
        app.create_limit(ACME, json!({"amount": 1000, "action": "DISABLE"})).await.json().await.unwrap();
    // Both replicas see it blocked, and refresh it again and again.
    for _ in 0..3 {
        for replica in [&app, &other] {
            replica.admin(reqwest::Method::POST, &format!("/v1/customers/{ACME}/refresh"), None).await;
        }
    }
    let path = format!("/v1/customers/{ACME}/usage-limits/{}", created["id"].as_str().unwrap());
    assert_eq!(app.admin(reqwest::Method::DELETE, &path, None).await.status(), 204);
    // The writer keeps order: once the way back is recorded, any repeat of the first would be too.
    let transitions = eventually(Duration::from_secs(5), "both transitions recorded", || async {
        let rows = app.audit_rows("decision.transition").await;
        (rows.len() >= 2).then_some(rows)
    })
    .await;
    let seen: Vec<(&str, &str)> = transitions
        .iter()
        .map(|r| (r["details"]["from"].as_str().unwrap(), r["details"]["to"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("ok", "blocked"), ("blocked", "ok")]);
    assert!(transitions.iter().all(|r| r["customer_id"] == ACME && r["actor"] == "usage-gate"));
    // Each told by one webhook message, queued with its record.
    let messages = app.webhook_messages(endpoint["id"].as_str().unwrap(), "").await;
    let told: Vec<&str> = messages.iter().rev().map(|m| m["event_type"].as_str().unwrap()).collect();
    assert_eq!(told, ["customer.usage.blocked", "customer.usage.recovered"]);
    assert_eq!(receiver.await_received(2).await.len(), 2);
}

#[tokio::test]
async fn audit_pages_have_no_duplicates_or_gaps_while_records_are_added() {
    let app = TestApp::spawn().await;
    let entry = |n: usize| usage_gate::audit::Entry {
        actor: "test".into(),
        action: "test.record".into(),
        customer: None,
        target: Some(n.to_string()),
        outcome: usage_gate::audit::Outcome::Success,
        upstream_status: None,
        request_id: None,
        details: json!({}),
    };
    for n in 0..40 {
        usage_gate::audit::Audit::new(app.pool.clone()).record(&entry(n)).await.unwrap();
    }
    // Writers keep adding while a reader pages through, 7 at a time.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let pool = app.pool.clone();
            tokio::spawn(async move {
                for n in 0..25 {
                    usage_gate::audit::Audit::new(pool.clone())
                        .record(&entry(1000 + w * 100 + n))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut seen: Vec<i64> = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("/v1/audit?action=test.record&limit=7&cursor={c}"),
            None => "/v1/audit?action=test.record&limit=7".into(),
        };
        let page: Value = app.admin(reqwest::Method::GET, &query, None).await.json().await.unwrap();
        seen.extend(page["records"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first, no duplicates: {seen:?}");
    let newest_seen = seen[0];
    let expected: BTreeSet<i64> =
        sqlx::query_scalar("SELECT id FROM audit_log WHERE action = 'test.record' AND id <= $1")
            .bind(newest_seen)
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(seen.iter().copied().collect::<BTreeSet<i64>>(), expected, "no gaps below the first page");
}

#[tokio::test]
async fn the_audit_log_filters_and_refuses_bad_parameters() {
    let app = TestApp::spawn().await;
    app.create_limit(ACME, json!({"amount": 0, "action": "DISABLE"})).await;
    app.create_limit(INITECH, json!({"amount": 0, "action": "DISABLE"})).await;
    let page: Value = app
        .admin(reqwest::Method::GET, &format!("/v1/audit?customer={ACME}&actor=operator"), None)
        .await
        .json()
        .await
        .unwrap();
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["customer_id"], ACME);
    assert!(page["next_cursor"].is_null());
    for (query, field) in [
        ("customer=nope", "customer"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("cursor=abc", "cursor"),
    ] {
        let response = app.admin(reqwest::Method::GET, &format!("/v1/audit?{query}"), None).await;
        let problem = assert_problem(response, 400, "invalid_request").await;
        assert_eq!(problem["errors"][0]["field"], field, "{query}");
    }
}

#[tokio::test]
async fn nul_in_an_audit_filter_is_a_400_naming_it_and_a_webhook_quoting_nul_is_still_audited() {
    let app = TestApp::spawn().await;
    for (query, field) in [("actor=a%00b", "actor"), ("action=x%00", "action")] {
        let response = app.admin(reqwest::Method::GET, &format!("/v1/audit?{query}"), None).await;
        assert_eq!(assert_problem(response, 400, "invalid_request").await["errors"][0]["field"], field);
    }
    let hook = app.http.post(app.url(&format!("/v1/webhooks/billabear/{WEBHOOK_SECRET}")));
    let response = hook.json(&json!({"type": "odd\u{0}type"})).send().await.unwrap();
    assert_eq!(response.status(), 202, "taken, not a storage failure");
    let rows = app.audit_rows("webhook.odd\u{FFFD}type").await;
    assert_eq!(rows.len(), 1, "recorded with NUL replaced");
    let response = app.create_limit(ACME, json!({"amount": "\u{0}", "action": "DISABLE"})).await;
    assert_problem(response, 422, "validation_failed").await;
    assert_eq!(app.audit_rows("usage_limit.create").await[0]["details"]["amount"], "\u{FFFD}");
}

#[tokio::test]
async fn an_admin_change_waits_longer_than_a_check_would() {
    // Checks give up after 500 ms (test settings); an operator's change has its own timeout.
    let app = TestApp::spawn().await;
    app.sim.set_faults(json!({"latency_ms": 800, "only": "usage-limit"})).await;
    let response = app.create_limit(ACME, json!({"amount": 100, "action": "DISABLE"})).await;
    assert_eq!(response.status(), 201);
    let [row] = &app.audit_rows("usage_limit.create").await[..] else { panic!("one record") };
    assert_eq!(row["outcome"], "success");
    app.sim.clear_faults().await;
    assert_eq!(app.check_status(ACME).await["status"], "blocked");
}

#[tokio::test]
async fn a_change_whose_answer_never_came_is_settled_by_looking_at_billabear() {
    let app =
        TestApp::spawn_with(|raw| raw.billabear.admin_timeout = std::time::Duration::from_millis(300)).await;
    // BillaBear creates the limit but answers too late.
    app.sim
        .set_faults(json!({"late_answer_ms": 600, "only": "POST /api/v1/customer/{id}/usage-limits"}))
        .await;
    let response = app.create_limit(ACME, json!({"amount": 100, "action": "DISABLE"})).await;
    assert_eq!(response.status(), 201, "it was made, and the answer says so");
    let created: Value = response.json().await.unwrap();
    let limits = app.sim.customer(ACME).await["limits"].clone();
    assert_eq!(limits.as_array().unwrap().len(), 2, "created once: {limits}");
    assert!(limits.as_array().unwrap().iter().any(|l| l["id"] == created["id"]));
    let [row] = &app.audit_rows("usage_limit.create").await[..] else { panic!("one record") };
    assert_eq!(
        (row["outcome"].as_str(), row["target_id"].as_str()),
        (Some("success"), created["id"].as_str())
    );
    assert!(row["details"]["verified"].as_str().unwrap().starts_with("made"), "{row}");
    assert_eq!(app.check_status(ACME).await["status"], "blocked");

    // BillaBear hangs before doing anything: looking afterwards finds no limit.
    app.sim.set_faults(json!({"outage": "hang", "only": "POST /api/v1/customer/{id}/usage-limits"})).await;
    let response = app.create_limit(ACME, json!({"amount": 200, "action": "WARNING"})).await;
    assert_eq!(assert_problem(response, 504, "upstream_timeout").await["limit_exists"], false);
    let rows = app.audit_rows("usage_limit.create").await;
    assert_eq!(rows[1]["outcome"], "failed");
    assert!(rows[1]["details"]["verified"].as_str().unwrap().starts_with("not made"), "{rows:?}");

    // A delete answered too late: the limit is gone, so the delete succeeded.
    app.sim.set_faults(json!({"late_answer_ms": 600, "only": "DELETE"})).await;
    let id = created["id"].as_str().unwrap();
    let response =
        app.admin(reqwest::Method::DELETE, &format!("/v1/customers/{ACME}/usage-limits/{id}"), None).await;
    assert_eq!(response.status(), 204);
    let [row] = &app.audit_rows("usage_limit.delete").await[..] else { panic!("one record") };
    assert_eq!(row["outcome"], "success");
}
