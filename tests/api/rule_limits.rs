//! usage-gate's own rules judged with every other limit: a check, an enforced event and a hold
//! are allowed only while every rule that binds the customer allows them (the whole customer's,
//! and the subject's for a per-subject rule); plain events count too; windows restart on time.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::enforce::call;
use crate::helpers::*;

impl TestApp {
    async fn rule(&self, body: Value) -> String {
        let response = self.admin(Method::POST, "/v1/rules", Some(body)).await;
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    /// Waits until this replica's check of `customer` (with `query`) lists `n` rules.
    async fn bound_rules(&self, customer: &str, query: &str, n: usize) -> Value {
        eventually(Duration::from_secs(2), format!("{n} rules on the check of {customer}"), || async {
            let decision = self.check_query(customer, query).await;
            (decision["rules"].as_array().map_or(0, Vec::len) == n).then_some(decision)
        })
        .await
    }
}

fn by(event_id: &str, customer: &str, subject: &str) -> Value {
    json!({"event_id": event_id, "customer": customer, "code": "api_calls", "value": 1, "subject": subject})
}

/// A customer with no BillaBear limit, at 1 cent a call, cached by `app`.
async fn unlimited(app: &TestApp) -> String {
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([])).await;
    app.check(&customer).await;
    customer
}

#[tokio::test]
async fn a_day_rule_refuses_checks_and_enforced_events_once_full_and_names_itself() {
    let app = TestApp::spawn().await;
    let customer = unlimited(&app).await;
    let id = app
        .rule(json!({"scope": {"customer": customer}, "measure": {"cost": {}}, "limit": 3,
                     "window": {"calendar": "day", "time_zone": "Europe/Paris"}, "mode": "hard"}))
        .await;
    let fresh = app.bound_rules(&customer, "", 1).await;
    assert_eq!((fresh["allowed"].as_bool(), fresh["rules"][0]["used"].as_i64()), (Some(true), Some(0)));
    assert!(fresh["rules"][0]["resets_at"].is_string(), "{fresh}");

    // Plain events count: the check refuses once they fill the day.
    for i in 0..3 {
        assert_eq!(app.post_event(&call(&format!("plain-{i}"), &customer)).await.status(), 202);
    }
    let full = eventually(Duration::from_secs(1), "the check counts the plain events", || async {
        let decision = app.check(&customer).await;
        (decision["rules"][0]["used"] == 3).then_some(decision)
    })
    .await;
    assert_eq!((full["allowed"].as_bool(), full["status"].as_str()), (Some(false), Some("blocked")));
    assert_eq!(full["reasons"], json!(["rule_limit_exceeded"]));

    let refused = app.post_enforced(&call("over", &customer)).await;
    let body = assert_problem(refused, 402, "usage_limit_exceeded").await;
    assert_eq!(body["limit"]["kind"], "rule");
    assert_eq!(body["limit"]["id"], json!(id));
    assert_eq!((body["limit"]["limit"].as_i64(), body["limit"]["used"].as_i64()), (Some(3), Some(3)));
    assert_eq!(body["limit"]["measure"], json!({"cost": {}}));
    assert_eq!(body["limit"]["window"], json!({"calendar": "day", "time_zone": "Europe/Paris"}));
    assert_eq!(body["decision"]["reasons"], json!(["rule_limit_exceeded"]));
    assert_eq!(app.stored_for(&customer).await, 3, "the refused event was not stored");
    let counted: f64 = sqlx::query_scalar("SELECT sum(amount)::float8 FROM rule_usage WHERE rule_id = $1")
        .bind(uuid::Uuid::parse_str(&id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(counted, 3.0);

    // Deleting the rule frees the customer, and what it counted goes with it.
    app.admin(Method::DELETE, &format!("/v1/rules/{id}"), None).await;
    assert_eq!(app.post_enforced(&call("after", &customer)).await.status(), 202);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM rule_usage").fetch_one(&app.pool).await.unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_per_subject_rule_limits_each_subject_while_the_customers_rule_still_binds_them_all() {
    let app = TestApp::spawn().await;
    let customer = unlimited(&app).await;
    // "5 a day, 2 a day per member" (in cents), alice allowed 3.
    let total = app
        .rule(json!({"scope": {"customer": customer}, "measure": {"cost": {}}, "limit": 5,
                     "window": {"calendar": "day"}, "mode": "hard"}))
        .await;
    let members = app
        .rule(json!({"scope": {"all": true}, "measure": {"metric": "api_calls"}, "limit": 2,
                     "window": {"calendar": "day"}, "mode": "hard", "per_subject": true,
                     "subject_limits": {"alice": 3}}))
        .await;
    app.bound_rules(&customer, "?subject=bob", 2).await;
    let send = |id: &str, subject: &str| {
        let body = by(id, &customer, subject);
        let app = &app;
        async move { app.post_enforced(&body).await }
    };
    for (id, subject) in [("b1", "bob"), ("b2", "bob"), ("a1", "alice"), ("a2", "alice")] {
        assert_eq!(send(id, subject).await.status(), 202, "{id}");
    }
    let bob = assert_problem(send("b3", "bob").await, 402, "usage_limit_exceeded").await;
    assert_eq!(
        (bob["limit"]["id"].as_str(), bob["limit"]["subject"].as_str(), bob["limit"]["used"].as_i64()),
        (Some(members.as_str()), Some("bob"), Some(2))
    );
    assert_eq!(send("a3", "alice").await.status(), 202, "alice's own limit is 3");
    // The customer is at 5 with room left for carol's 2: its own rule binds her now.
    let carol = assert_problem(send("c1", "carol").await, 402, "usage_limit_exceeded").await;
    assert_eq!((carol["limit"]["id"].as_str(), carol["limit"].get("subject")), (Some(total.as_str()), None));

    // The check says the same per subject; without one, the customer's rule alone judges.
    let dave = app.bound_rules(&customer, "?subject=dave", 2).await;
    assert_eq!(dave["allowed"], false);
    let plain = app.check(&customer).await;
    assert_eq!((plain["rules"].as_array().unwrap().len(), plain["allowed"].as_bool()), (1, Some(false)));
    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT event_id, subject FROM outbox WHERE customer_id = $1 ORDER BY event_id")
            .bind(uuid::Uuid::parse_str(&customer).unwrap())
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 5);
    assert!(stored.contains(&("a3".into(), Some("alice".into()))), "the subject is stored with the event");
}

#[tokio::test]
async fn a_soft_rule_allows_with_a_warning_naming_it() {
    let app = TestApp::spawn().await;
    let customer = unlimited(&app).await;
    app.rule(json!({"scope": {"customer": customer}, "measure": {"metric": "api_calls"}, "limit": 1,
                    "window": {"billing_period": {}}, "mode": "soft"}))
        .await;
    app.bound_rules(&customer, "", 1).await;
    for i in 0..3 {
        assert_eq!(app.post_enforced(&call(&format!("soft-{i}"), &customer)).await.status(), 202);
    }
    let decision = eventually(Duration::from_secs(1), "the check counts the events", || async {
        let decision = app.check(&customer).await;
        (decision["rules"][0]["used"] == 3).then_some(decision)
    })
    .await;
    assert_eq!((decision["allowed"].as_bool(), decision["status"].as_str()), (Some(true), Some("warning")));
    assert_eq!(decision["reasons"], json!(["soft_limit_exceeded"]));
    assert_eq!(decision["rules"][0]["reason"], "soft_limit_exceeded");
}

#[tokio::test]
async fn a_rolling_window_blocks_and_then_releases_in_real_time() {
    let app = TestApp::spawn().await;
    let customer = unlimited(&app).await;
    app.rule(json!({"scope": {"customer": customer}, "measure": {"metric": "api_calls"}, "limit": 2,
                    "window": {"rolling_s": 3}, "mode": "hard"}))
        .await;
    app.bound_rules(&customer, "", 1).await;
    let started = Instant::now();
    assert_eq!(app.post_enforced(&call("r1", &customer)).await.status(), 202);
    assert_eq!(app.post_enforced(&call("r2", &customer)).await.status(), 202);
    assert_eq!(app.post_enforced(&call("r3", &customer)).await.status(), 402);
    let mut n = 3;
    let released = eventually(Duration::from_secs(6), "the rolling window frees the customer", || {
        n += 1;
        let body = call(&format!("r{n}"), &customer);
        let app = &app;
        async move { (app.post_enforced(&body).await.status() == 202).then(Instant::now) }
    })
    .await;
    let after = released - started;
    // Exact to a sixtieth of 3 s (50 ms): not before the first events are ~3 s old.
    assert!(after >= Duration::from_millis(2_900), "released after {after:?}");
    assert!(after < Duration::from_millis(4_500), "released after {after:?}");
}

#[tokio::test]
async fn concurrent_enforced_events_on_two_replicas_never_pass_the_day_or_the_subject_rule() {
    let a = TestApp::spawn().await;
    let b = a.second_instance().await;
    // One customer where the day rule fills first (5 subjects x 30 > 100), one where the
    // subject rule does (2 subjects x 30 < 100).
    let (wide, narrow) = (unlimited(&a).await, unlimited(&a).await);
    for customer in [&wide, &narrow] {
        b.check(customer).await;
        a.rule(json!({"scope": {"customer": customer}, "measure": {"cost": {}}, "limit": 100,
                      "window": {"calendar": "day"}, "mode": "hard"}))
            .await;
    }
    a.rule(json!({"scope": {"all": true}, "measure": {"metric": "api_calls"}, "limit": 30,
                  "window": {"calendar": "day"}, "mode": "hard", "per_subject": true}))
        .await;
    for app in [&a, &b] {
        app.bound_rules(&wide, "?subject=s0", 2).await;
        app.bound_rules(&narrow, "?subject=s0", 2).await;
    }
    let sends = (0..500).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let (customer, subjects) = if i < 250 { (&wide, 5) } else { (&narrow, 2) };
        let body = by(&format!("race-{i}"), customer, &format!("s{}", i % subjects));
        async move { app.post_enforced(&body).await.status().as_u16() }
    });
    let answers = futures_util::future::join_all(sends).await;
    assert!(answers.iter().all(|s| *s == 202 || *s == 402), "{answers:?}");
    let stored = |customer: &str| {
        let customer = uuid::Uuid::parse_str(customer).unwrap();
        let pool = a.pool.clone();
        async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT subject, count(*) FROM outbox WHERE customer_id = $1 GROUP BY subject ORDER BY subject",
            )
            .bind(customer)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows
        }
    };
    let wide_rows = stored(&wide).await;
    assert_eq!(wide_rows.iter().map(|(_, n)| n).sum::<i64>(), 100, "the day rule full: {wide_rows:?}");
    assert!(wide_rows.iter().all(|(_, n)| *n <= 30), "{wide_rows:?}");
    let narrow_rows = stored(&narrow).await;
    assert_eq!(narrow_rows, [("s0".to_owned(), 30), ("s1".to_owned(), 30)], "each subject full");
    let admitted = answers.iter().filter(|s| **s == 202).count();
    assert_eq!(admitted, 160);
}

#[tokio::test]
async fn a_bad_subject_is_refused_naming_it_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let customer = unlimited(&app).await;
    for subject in [json!(""), json!("two words"), json!("x".repeat(129)), json!(7)] {
        let mut event = call("bad", &customer);
        event["subject"] = subject.clone();
        let body = assert_problem(app.post_event(&event).await, 400, "invalid_request").await;
        assert_eq!(body["errors"][0]["field"], "subject", "{subject}");
    }
    assert_eq!(app.stored_for(&customer).await, 0);
    let response = app.get(&format!("/v1/customers/{customer}/check?subject=a%20b"), Some(CHECK_KEY)).await;
    let body = assert_problem(response, 400, "invalid_request").await;
    assert_eq!(body["errors"][0]["field"], "subject");
    let batch = json!({"customers": [{"id": customer, "subject": ""}, {"id": customer, "subject": "ok"}]});
    let answers: Value = app.check_batch(&batch.to_string()).await.json().await.unwrap();
    assert_eq!(answers["decisions"][0]["error"]["field"], "customers[0].subject", "{answers}");
    assert_eq!(answers["decisions"][1]["allowed"], true, "{answers}");
}

#[tokio::test]
async fn a_subjects_open_hold_counts_against_its_rules_and_a_hold_past_them_is_refused() {
    let app = TestApp::spawn().await;
    let customer = unlimited(&app).await;
    // 10 cents a day per member, 15 for the whole customer.
    app.rule(json!({"scope": {"customer": customer}, "measure": {"cost": {}}, "limit": 10,
                    "window": {"calendar": "day"}, "mode": "hard", "per_subject": true}))
        .await;
    app.rule(json!({"scope": {"customer": customer}, "measure": {"cost": {}}, "limit": 15,
                    "window": {"calendar": "day"}, "mode": "hard"}))
        .await;
    app.bound_rules(&customer, "?subject=bob", 2).await;
    assert_eq!(app.hold(&customer, json!({"amount": 8, "subject": "bob"})).await.status(), 201);
    let over = app.hold(&customer, json!({"amount": 3, "subject": "bob"})).await;
    let body = assert_problem(over, 402, "usage_limit_exceeded").await;
    assert_eq!(
        (body["limit"]["kind"].as_str(), body["limit"]["subject"].as_str()),
        (Some("rule"), Some("bob"))
    );
    assert_eq!(body["limit"]["used"], 8, "bob's open hold counts");
    assert_eq!(app.hold(&customer, json!({"amount": 2, "subject": "bob"})).await.status(), 201);
    // Alice's own rule has room; the customer's 15 has 5 left.
    assert_eq!(app.hold(&customer, json!({"amount": 5, "subject": "alice"})).await.status(), 201);
    assert_eq!(app.hold(&customer, json!({"amount": 1, "subject": "alice"})).await.status(), 402);
    let subjects: Vec<Option<String>> =
        sqlx::query_scalar("SELECT subject FROM reservations WHERE customer_id = $1 ORDER BY created_at")
            .bind(uuid::Uuid::parse_str(&customer).unwrap())
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(subjects, [Some("bob".to_owned()), Some("bob".to_owned()), Some("alice".to_owned())]);
    let bad = app.hold(&customer, json!({"amount": 1, "subject": ""})).await;
    let body = assert_problem(bad, 400, "invalid_request").await;
    assert_eq!(body["errors"][0]["field"], "subject");
}

#[tokio::test]
async fn each_threshold_is_told_once_per_window_from_two_replicas_and_the_windows_end_once() {
    let app = TestApp::spawn().await;
    let other = app.second_instance().await;
    let receiver = crate::webhook_endpoints::Receiver::start(&[]);
    let types = json!(["limit.threshold_crossed", "limit.window_reset"]);
    app.webhook_endpoint(json!({"url": receiver.url, "event_types": types})).await;
    let customer = unlimited(&app).await;
    other.check(&customer).await;
    // 10 calls per member in a 3-second window: 50% at 5, 100% at 10.
    let id = app
        .rule(json!({"scope": {"customer": customer}, "measure": {"metric": "api_calls"}, "limit": 10,
                     "window": {"rolling_s": 3}, "mode": "soft", "per_subject": true, "thresholds": [50, 100]}))
        .await;
    for replica in [&app, &other] {
        replica.bound_rules(&customer, "?subject=bob", 1).await;
    }
    // 12 events of bob's at once, half on each replica: each threshold is crossed once.
    let sends = (0..12).map(|i| {
        let replica = if i % 2 == 0 { &app } else { &other };
        let body = by(&format!("t-{i}"), &customer, "bob");
        async move { replica.post_event(&body).await.status().as_u16() }
    });
    assert!(futures_util::future::join_all(sends).await.iter().all(|s| *s == 202));
    let crossed: Vec<Value> = receiver.await_received(2).await.iter().map(|m| m.json()).collect();
    let mut thresholds: Vec<i64> = crossed.iter().map(|m| m["data"]["threshold"].as_i64().unwrap()).collect();
    thresholds.sort();
    assert_eq!(thresholds, [50, 100], "{crossed:?}");
    let data = &crossed[0]["data"];
    assert_eq!((data["rule_id"].as_str(), data["subject"].as_str()), (Some(id.as_str()), Some("bob")));
    assert_eq!((data["limit"].as_i64(), &data["window"]), (Some(10), &json!({"rolling_s": 3})));
    assert!(crossed.iter().all(|m| m["type"] == "limit.threshold_crossed"));
    // The window that crossed them ends: one reset, naming both thresholds.
    let all = receiver.await_received(3).await;
    let reset = all[2].json();
    assert_eq!(reset["type"], "limit.window_reset", "{reset}");
    assert_eq!(reset["data"]["thresholds"], json!([50, 100]));
    let told: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(*) FROM webhook_messages GROUP BY event_type ORDER BY event_type",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(told, [("limit.threshold_crossed".into(), 2), ("limit.window_reset".into(), 1)]);
}
