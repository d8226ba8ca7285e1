//! The plan's side of a check, end to end: features, feature limits the caller counts and seats,
//! from the simulator serving BillaBear's `GET /customer/{id}/limits` as its server does
//! (`userCount`).

use serde_json::{Value, json};

use crate::helpers::*;

const GLOBEX_NEAR: &str = "22222222-2222-4222-8222-222222222222";
const LIMITS_ROUTE: &str = "GET /api/v1/customer/{id}/limits";

fn reasons(decision: &Value) -> Vec<&str> {
    decision["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect()
}

/// A customer with one flat subscription on `plan` (the seed's shape), far from any limit.
async fn customer_on(app: &TestApp, plan: Value) -> String {
    let view = app.sim.add_customer(json!({"subscriptions": [{"price_amount": 1000, "plan": plan}]})).await;
    view["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_feature_is_allowed_only_when_the_plan_includes_it() {
    let app = TestApp::spawn().await;
    // Acme's plan: sso, 25 projects, 10 users; Globex's: 3 projects, 2 users, no sso.
    let sso = app.check_query(ACME, "?feature=sso").await;
    assert_eq!((sso["allowed"].as_bool(), sso["status"].as_str()), (Some(true), Some("ok")), "{sso}");
    assert_eq!(sso["feature"], json!({"code": "sso", "included": true}));
    assert_eq!(
        app.sim.route_count(LIMITS_ROUTE).await,
        1,
        "the plan was fetched with the customer's other answers"
    );

    let encoded = app.check_query(ACME, "?fea%74ure=s%73o&cost=1%30").await;
    assert_eq!(encoded["cost"], 10);
    assert_eq!(
        encoded["feature"],
        json!({"code": "sso", "included": true}),
        "decoded as a form is: {encoded}"
    );

    let limited = app.check_query(ACME, "?feature=projects").await;
    assert_eq!(limited["allowed"], true);
    let feature = &limited["feature"];
    assert_eq!(
        (&feature["limit"], &feature["used"], &feature["remaining"], &feature["window"]),
        (&json!(25), &json!(0), &json!(25), &json!("billing_period")),
        "counted by usage-gate without in_use: {feature}"
    );

    let missing = app.check_query(GLOBEX_NEAR, "?feature=sso").await;
    assert_eq!(
        (missing["allowed"].as_bool(), missing["status"].as_str()),
        (Some(false), Some("blocked")),
        "{missing}"
    );
    assert_eq!(reasons(&missing), ["near_limit", "feature_not_in_plan"], "its usage is still explained");
    assert_eq!(missing["feature"], json!({"code": "sso", "included": false}));

    let plain = app.check(GLOBEX_NEAR).await;
    assert_eq!((plain["allowed"].as_bool(), reasons(&plain)), (Some(true), vec!["near_limit"]));
    assert!(plain.get("feature").is_none() && plain.get("seats").is_none(), "without feature: as before");
    assert_eq!(app.sim.route_count(LIMITS_ROUTE).await, 2, "one fetch per customer, from the cache after");
}

#[tokio::test]
async fn a_blocked_or_disabled_customer_stays_blocked_with_every_reason() {
    let app = TestApp::spawn().await;
    // Hooli: disabled by BillaBear (whose limits answer is empty for it), and over its limit.
    let d = app.check_query(HOOLI_DISABLED, "?feature=sso").await;
    assert_eq!(d["allowed"], false);
    assert_eq!(reasons(&d), ["customer_disabled", "disable_limit_exceeded", "feature_not_in_plan"]);
    // A disabled customer on a plan that has the feature: BillaBear lists nothing for it.
    let view = app
        .sim
        .add_customer(json!({"status": "disabled", "subscriptions": [{"plan": {"features": ["sso"], "user_count": 4}}]}))
        .await;
    let d = app.check_query(view["id"].as_str().unwrap(), "?feature=sso&seats=1").await;
    assert_eq!(reasons(&d), ["customer_disabled", "feature_not_in_plan", "seats_exceeded"], "{d}");
}

#[tokio::test]
async fn what_the_caller_has_in_use_and_the_quantity_must_fit_the_feature_limit() {
    let app = TestApp::spawn().await;
    let fits = app.check_query(ACME, "?feature=projects&in_use=24").await;
    assert_eq!(fits["allowed"], true, "24 + 1 = 25 fits");
    assert_eq!(
        fits["feature"],
        json!({"code": "projects", "included": true, "limit": 25, "used": 24, "remaining": 1})
    );
    let over = app.check_query(ACME, "?feature=projects&in_use=24&quantity=2").await;
    assert_eq!((over["allowed"].as_bool(), reasons(&over)), (Some(false), vec!["feature_limit_reached"]));
    let full = app.check_query(ACME, "?feature=projects&in_use=30").await;
    assert_eq!(full["feature"]["remaining"], 0);
    assert_eq!(reasons(&full), ["feature_limit_reached"]);
    let unlimited = app.check_query(ACME, "?feature=sso&in_use=1000&quantity=5").await;
    assert_eq!((unlimited["allowed"].as_bool(), unlimited["feature"]["limit"].as_u64()), (Some(true), None));

    // Summed over the customer's active subscriptions, as BillaBear sums them.
    let two = app
        .sim
        .add_customer(json!({"subscriptions": [
            {"plan": {"limits": {"projects": 2}, "user_count": 1}},
            {"plan": {"limits": {"projects": 3}, "user_count": 2}},
            {"active": false, "plan": {"limits": {"projects": 100}}}]}))
        .await;
    let id = two["id"].as_str().unwrap();
    let d = app.check_query(id, "?feature=projects&in_use=4&seats=3").await;
    assert_eq!((d["allowed"].as_bool(), d["feature"]["limit"].as_u64()), (Some(true), Some(5)), "{d}");
    assert_eq!(d["seats"], json!({"requested": 3, "limit": 3}));
}

#[tokio::test]
async fn seats_fit_within_the_user_count_and_zero_is_read_as_configured() {
    let app = TestApp::spawn().await;
    let ten = app.check_query(ACME, "?seats=10").await;
    assert_eq!(
        (ten["allowed"].as_bool(), &ten["seats"]),
        (Some(true), &json!({"requested": 10, "limit": 10}))
    );
    let eleven = app.check_query(ACME, "?seats=11").await;
    assert_eq!((eleven["allowed"].as_bool(), reasons(&eleven)), (Some(false), vec!["seats_exceeded"]));
    let none = customer_on(&app, json!({"features": ["sso"]})).await;
    let any = app.check_query(&none, "?seats=500").await;
    assert_eq!(
        (any["allowed"].as_bool(), &any["seats"]),
        (Some(true), &json!({"requested": 500, "limit": null}))
    );

    let strict = TestApp::spawn_with(|s| s.entitlements.zero_user_count = "none".into()).await;
    let none = customer_on(&strict, json!({"features": ["sso"]})).await;
    let refused = strict.check_query(&none, "?seats=1").await;
    assert_eq!((refused["allowed"].as_bool(), reasons(&refused)), (Some(false), vec!["seats_exceeded"]));
    assert_eq!(refused["seats"], json!({"requested": 1, "limit": 0}));
}

#[tokio::test]
async fn bad_plan_input_is_a_400_naming_the_parameter_and_reaches_nobody() {
    let app = TestApp::spawn().await;
    let long = "f".repeat(129);
    let cases = [
        ("?feature=".to_owned(), "feature"),
        (format!("?feature={long}"), "feature"),
        ("?feature=ss%00o".to_owned(), "feature"),
        ("?feature=s%20o".to_owned(), "feature"),
        ("?feature=%C3%A9t%C3%A9".to_owned(), "feature"),
        ("?feature=projects&quantity=0".to_owned(), "quantity"),
        ("?feature=projects&quantity=-1".to_owned(), "quantity"),
        ("?feature=projects&quantity=1.5".to_owned(), "quantity"),
        ("?feature=projects&in_use=abc".to_owned(), "in_use"),
        ("?feature=projects&in_use=-3".to_owned(), "in_use"),
        ("?seats=-2".to_owned(), "seats"),
        ("?seats=99999999999999999999".to_owned(), "seats"),
        ("?seats=9223372036854775808".to_owned(), "seats"),
        ("?feature=projects&in_use=9223372036854775808".to_owned(), "in_use"),
        ("?in_use=3".to_owned(), "in_use"),
        ("?quantity=3".to_owned(), "quantity"),
        ("?feature=sso&feature=projects".to_owned(), "feature"),
        ("?cost=1&cost=2".to_owned(), "cost"),
    ];
    for (query, field) in cases {
        let path = format!("/v1/customers/{ACME}/check{query}");
        let problem = assert_problem(app.get(&path, Some(CHECK_KEY)).await, 400, "invalid_request").await;
        assert_eq!(problem["errors"][0]["field"], field, "{query}: {problem}");
    }
    let ok = app.check_query(ACME, &format!("?feature={}", "f".repeat(128))).await;
    assert_eq!(reasons(&ok), ["feature_not_in_plan"], "128 bytes is a code, one no plan has");
    assert_eq!(app.sim.route_count(LIMITS_ROUTE).await, 1, "only the valid check reached BillaBear");
}

#[tokio::test]
async fn a_batch_asks_each_item_of_its_own_plan_with_errors_in_place() {
    let app = TestApp::spawn().await;
    let body = json!({"customers": [
        {"id": ACME, "feature": "sso"},
        {"id": GLOBEX_NEAR, "feature": "sso"},
        {"id": ACME, "feature": "projects", "in_use": 25},
        {"id": ACME, "quantity": 2},
        {"id": ACME, "feature": "", "seats": 1},
        {"id": ACME, "seats": 3, "feature": null},
    ]});
    let response = app.check_batch(&body.to_string()).await;
    assert_eq!(response.status(), 200);
    let answers: Value = response.json().await.unwrap();
    let d = &answers["decisions"];
    assert_eq!((d[0]["allowed"].as_bool(), &d[0]["feature"]["included"]), (Some(true), &json!(true)));
    assert_eq!(reasons(&d[1]), ["near_limit", "feature_not_in_plan"]);
    assert_eq!(reasons(&d[2]), ["feature_limit_reached"]);
    assert_eq!(d[3]["error"]["field"], "customers[3].quantity");
    assert_eq!(d[4]["error"]["field"], "customers[4].feature");
    assert_eq!((d[5]["allowed"].as_bool(), &d[5]["seats"]["limit"]), (Some(true), &json!(10)));
}

#[tokio::test]
async fn the_gate_refuses_a_location_whose_feature_the_plan_lacks() {
    let app = TestApp::spawn().await;
    let gate = |customer: &'static str, header: Option<&'static str>, query: &'static str| {
        let mut request = app
            .http
            .get(app.url(&format!("/v1/gate{query}")))
            .bearer_auth(CHECK_KEY)
            .header("X-Customer-Id", customer);
        if let Some(feature) = header {
            request = request.header("X-Usage-Feature", feature);
        }
        request.send()
    };
    assert_eq!(gate(ACME, Some("sso"), "").await.unwrap().status(), 204);
    let blocked = gate(GLOBEX_NEAR, Some("sso"), "").await.unwrap();
    assert_eq!(blocked.headers()["x-usage-reasons"], "near_limit,feature_not_in_plan");
    let problem = assert_problem(blocked, 403, "usage_blocked").await;
    assert_eq!(problem["reasons"], json!(["near_limit", "feature_not_in_plan"]));
    assert_eq!(gate(GLOBEX_NEAR, None, "").await.unwrap().status(), 204, "no feature: as before");
    assert_eq!(gate(GLOBEX_NEAR, None, "?feature=sso").await.unwrap().status(), 403);
    assert_eq!(gate(ACME, Some("sso"), "?feature=sso").await.unwrap().status(), 204);
    let differ =
        assert_problem(gate(ACME, Some("sso"), "?feature=projects").await.unwrap(), 400, "invalid_request")
            .await;
    assert_eq!(differ["errors"][0]["field"], "X-Usage-Feature");
    let empty = assert_problem(gate(ACME, Some(""), "").await.unwrap(), 400, "invalid_request").await;
    assert_eq!(empty["errors"][0]["field"], "X-Usage-Feature");
}

#[tokio::test]
async fn a_billabear_without_the_limits_route_reads_every_plan_as_empty_not_every_customer_as_unknown() {
    let app = TestApp::spawn().await;
    app.sim.set_faults(json!({"error_rate": 1.0, "error_status": 404, "only": "{id}/limits"})).await;
    let d = app.check_query(ACME, "?feature=sso").await;
    assert_eq!(d["customer_status"], "active", "the customer is known: {d}");
    assert_eq!(reasons(&d), ["feature_not_in_plan"]);
    assert_eq!(app.check(ACME).await["allowed"], true, "a check without feature is as it was");
}
