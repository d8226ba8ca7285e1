//! Feature limits usage-gate counts: the `value` of the events it accepts, per feature and
//! window, in Postgres (shared by replicas, a duplicate counted once) and in each replica's copy
//! the check reads.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// A customer billed for `api_calls` whose plan limits `limits` (feature code → limit).
async fn customer_with(app: &TestApp, limits: Value) -> String {
    let view = app
        .sim
        .add_customer(json!({"subscriptions": [
            {"metric": "api_calls", "unit_price": 0.01, "plan": {"limits": limits, "user_count": 3}}]}))
        .await;
    view["id"].as_str().unwrap().to_owned()
}

fn event(id: &str, customer: &str, code: &str, value: f64) -> Value {
    json!({"event_id": id, "customer": customer, "code": code, "value": value})
}

/// Two replicas with a customer on a plan of `limits` cached on both, as in steady state.
async fn two_replicas_with(limits: Value) -> (TestApp, TestApp, String) {
    let a = TestApp::spawn().await;
    let b = a.second_instance().await;
    let customer = customer_with(&a, limits).await;
    a.check(&customer).await;
    b.check(&customer).await;
    (a, b, customer)
}

/// Polls `app`'s check of `feature` until its count is `used`.
async fn used_reaches(app: &TestApp, customer: &str, query: &str, used: u64) -> Value {
    eventually(Duration::from_secs(5), format!("{customer}{query} used {used}"), || async {
        let d = app.check_query(customer, query).await;
        (d["feature"]["used"].as_u64() == Some(used)).then_some(d)
    })
    .await
}

#[tokio::test]
async fn accepted_events_count_towards_their_feature_once_each_and_every_replica_sees_it() {
    let app = TestApp::spawn().await;
    let customer = customer_with(&app, json!({"api_calls": 3})).await;
    let fresh = app.check_query(&customer, "?feature=api_calls").await;
    assert_eq!(fresh["allowed"], true, "{fresh}");
    let feature = &fresh["feature"];
    assert_eq!(
        (&feature["used"], &feature["remaining"], &feature["limit"], &feature["window"]),
        (&json!(0), &json!(3), &json!(3), &json!("billing_period")),
        "{fresh}"
    );
    assert!(feature["resets_at"].as_str().unwrap().ends_with('Z'), "{feature}");

    for (id, status) in [("fc-1", 202), ("fc-2", 202), ("fc-1", 200)] {
        assert_eq!(app.post_event(&event(id, &customer, "api_calls", 1.0)).await.status(), status, "{id}");
    }
    let counted = used_reaches(&app, &customer, "?feature=api_calls", 2).await;
    assert_eq!((counted["allowed"].as_bool(), &counted["feature"]["remaining"]), (Some(true), &json!(1)));
    let units: f64 = sqlx::query_scalar("SELECT sum(units)::float8 FROM feature_usage WHERE target = $1")
        .bind(uuid::Uuid::parse_str(&customer).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(units, 2.0, "the duplicate fc-1 counted once");

    let two_more = app.check_query(&customer, "?feature=api_calls&quantity=2").await;
    assert_eq!(two_more["allowed"], false);
    assert_eq!(two_more["reasons"], json!(["feature_limit_reached"]));
    // What the caller counts itself still decides alone when given.
    assert_eq!(app.check_query(&customer, "?feature=api_calls&in_use=0&quantity=3").await["allowed"], true);

    let other = app.second_instance().await;
    let there = other.check_query(&customer, "?feature=api_calls").await;
    assert_eq!(there["feature"]["used"], 2, "counts live in Postgres: {there}");
    // An event the other replica accepts counts here too.
    assert_eq!(other.post_event(&event("fc-3", &customer, "api_calls", 1.0)).await.status(), 202);
    let full = used_reaches(&app, &customer, "?feature=api_calls", 3).await;
    assert_eq!(
        (full["allowed"].as_bool(), &full["reasons"]),
        (Some(false), &json!(["feature_limit_reached"]))
    );
}

#[tokio::test]
async fn a_metric_named_for_a_feature_counts_towards_it_over_a_calendar_window() {
    let app = TestApp::spawn_with(|s| {
        s.entitlements.windows.insert("calls".into(), "day".into());
        s.entitlements.metrics.insert("calls".into(), "api_calls".into());
        s.entitlements.time_zone = "Asia/Tokyo".into();
    })
    .await;
    let customer = customer_with(&app, json!({"calls": 10, "api_calls": 10})).await;
    for i in 0..4 {
        let sent = app.post_event(&event(&format!("cal-{i}"), &customer, "api_calls", 1.5)).await;
        assert_eq!(sent.status(), 202);
    }
    let d = used_reaches(&app, &customer, "?feature=calls", 6).await;
    assert_eq!((&d["feature"]["window"], &d["feature"]["remaining"]), (&json!("day"), &json!(4)), "{d}");
    // Tokyo's next midnight, 15:00 UTC.
    let resets = d["feature"]["resets_at"].as_str().unwrap();
    assert!(resets.ends_with("T15:00:00.000Z"), "{resets}");
    let api_calls = app.check_query(&customer, "?feature=api_calls").await;
    assert_eq!(api_calls["feature"]["used"], 0, "the metric counts for the feature it is named for only");
}

#[tokio::test]
async fn a_feature_count_restarts_when_its_billing_period_ends_on_every_replica() {
    let app = TestApp::spawn().await;
    app.sim.new_period(4_000).await;
    let customer = customer_with(&app, json!({"api_calls": 2})).await;
    let other = app.second_instance().await;
    for id in ["p-1", "p-2"] {
        assert_eq!(app.post_event(&event(id, &customer, "api_calls", 1.0)).await.status(), 202);
    }
    let full = used_reaches(&app, &customer, "?feature=api_calls", 2).await;
    let resets_at = full["feature"]["resets_at"].as_str().unwrap().to_owned();
    assert_eq!(full["allowed"], false);
    assert_eq!(used_reaches(&other, &customer, "?feature=api_calls", 2).await["allowed"], false);

    let end = chrono::DateTime::parse_from_rfc3339(&resets_at).unwrap();
    // Within a second of the end, both replicas count from zero (no fetch, no message).
    for replica in [&app, &other] {
        let d = eventually(Duration::from_secs(8), "the count restarted", || async {
            let d = replica.check_query(&customer, "?feature=api_calls").await;
            (d["allowed"] == true).then_some(d)
        })
        .await;
        let late = chrono::Utc::now().signed_duration_since(end);
        assert!(late < chrono::Duration::milliseconds(1_000), "restarted {late} after the end");
        assert_eq!((&d["feature"]["used"], &d["feature"]["remaining"]), (&json!(0), &json!(2)), "{d}");
    }
    // Events after the end count in the new period.
    assert_eq!(app.post_event(&event("p-3", &customer, "api_calls", 1.0)).await.status(), 202);
    used_reaches(&other, &customer, "?feature=api_calls", 1).await;
}

#[tokio::test]
async fn concurrent_enforced_events_on_two_replicas_store_exactly_the_feature_limit() {
    // Money is far from binding (a cent a call, no usage limit): the feature limit is.
    let (a, b, customer) = two_replicas_with(json!({"api_calls": 100})).await;
    let sends = (0..200).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let body = event(&format!("feat-{i}"), &customer, "api_calls", 1.0);
        async move { app.post_enforced(&body).await }
    });
    let answers = futures_util::future::join_all(sends).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    let stored = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!((stored, statuses.iter().filter(|s| **s == 402).count()), (100, 100), "{statuses:?}");
    assert_eq!(a.stored_for(&customer).await, 100);
    let units: f64 = sqlx::query_scalar("SELECT sum(units)::float8 FROM feature_usage WHERE target = $1")
        .bind(uuid::Uuid::parse_str(&customer).unwrap())
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(units, 100.0);

    // A refusal names the limit that refused, beside the decision it was judged by.
    let refused = assert_problem(
        a.post_enforced(&event("one-more", &customer, "api_calls", 1.0)).await,
        402,
        "usage_limit_exceeded",
    )
    .await;
    let limit = &refused["limit"];
    assert_eq!(
        (&limit["kind"], &limit["code"], &limit["limit"], &limit["used"], &limit["window"]),
        (&json!("feature"), &json!("api_calls"), &json!(100), &json!(100), &json!("billing_period")),
        "{refused}"
    );
    assert!(limit["resets_at"].is_string(), "{limit}");
    assert_eq!(refused["decision"]["reasons"], json!(["feature_limit_reached"]), "{refused}");
    assert_eq!(refused["decision"]["feature"]["remaining"], 0);
    // Not enforced, an event is stored and counted all the same: the limit is for enforced ones.
    assert_eq!(a.post_event(&event("plain", &customer, "api_calls", 1.0)).await.status(), 202);
}

#[tokio::test]
async fn holds_of_feature_units_grant_exactly_what_fits_and_give_their_units_back() {
    let (a, b, customer) = two_replicas_with(json!({"api_calls": 100})).await;
    let asks = (0..50).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let customer = customer.clone();
        async move {
            let response = app.hold(&customer, json!({"code": "api_calls", "value": 10})).await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let granted: Vec<&Value> = answers.iter().filter(|(s, _)| *s == 201).map(|(_, b)| b).collect();
    let refused: Vec<&Value> = answers.iter().filter(|(s, _)| *s == 402).map(|(_, b)| b).collect();
    assert_eq!((granted.len(), refused.len()), (10, 40));
    assert_eq!(refused[0]["limit"]["kind"], "feature", "{}", refused[0]);

    // A released hold gives its units back.
    let released = granted[0]["id"].as_str().unwrap();
    assert_eq!(a.release_hold(released).await.status(), 204);
    let again = a.hold(&customer, json!({"code": "api_calls", "value": 10})).await;
    assert_eq!(again.status(), 201, "the released units are free again");
    let full = a.hold(&customer, json!({"code": "api_calls", "value": 1})).await;
    assert_eq!(full.status(), 402);

    // A committed hold's events count once: the hold's units become the events'.
    let committed = granted[1]["id"].as_str().unwrap();
    let events = json!([{"event_id": "held-1", "customer": customer, "code": "api_calls", "value": 10}]);
    assert_eq!(a.commit_hold(committed, events).await.status(), 200);
    assert_eq!(a.hold(&customer, json!({"code": "api_calls", "value": 1})).await.status(), 402, "still full");
    let third = granted[2]["id"].as_str().unwrap();
    assert_eq!(b.release_hold(third).await.status(), 204);
    assert_eq!(a.hold(&customer, json!({"code": "api_calls", "value": 10})).await.status(), 201);
    let d = used_reaches(&a, &customer, "?feature=api_calls", 10).await;
    assert_eq!(d["feature"]["limit"], 100, "the check counts the committed events: {d}");
}

#[tokio::test]
async fn a_feature_limit_reached_is_told_once_per_window_and_its_reset_once_when_it_ends() {
    let app = TestApp::spawn().await;
    let other = app.second_instance().await;
    let receiver = crate::webhook_endpoints::Receiver::start(&[]);
    let types = json!(["feature_limit.reached", "feature_limit.reset"]);
    app.webhook_endpoint(json!({"url": receiver.url, "event_types": types})).await;
    app.sim.new_period(4_000).await;
    let customer = customer_with(&app, json!({"api_calls": 2})).await;
    app.check(&customer).await;
    other.check(&customer).await;
    for (i, replica) in [&app, &other, &app, &other].into_iter().enumerate() {
        let sent = replica.post_event(&event(&format!("hook-{i}"), &customer, "api_calls", 1.0)).await;
        assert_eq!(sent.status(), 202);
    }
    let reached = receiver.await_received(1).await[0].json();
    assert_eq!(reached["type"], "feature_limit.reached");
    let data = &reached["data"];
    assert_eq!(
        (&data["customer_id"], &data["code"], &data["limit"], &data["window"]),
        (&json!(customer), &json!("api_calls"), &json!(2), &json!("billing_period")),
        "{reached}"
    );
    assert!(data["used"].as_f64() >= Some(2.0), "{data}");

    let both = receiver.await_received(2).await;
    let reset = both[1].json();
    assert_eq!(
        (&reset["type"], &reset["data"]["code"]),
        (&json!("feature_limit.reset"), &json!("api_calls"))
    );
    let told: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(*) FROM webhook_messages GROUP BY event_type ORDER BY event_type",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        told,
        [("feature_limit.reached".into(), 1), ("feature_limit.reset".into(), 1)],
        "once each, two replicas"
    );
}
