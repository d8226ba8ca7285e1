//! usage-gate's own limit rules, as operators manage them: created, read, listed by scope,
//! changed and deleted under the `admin` scope, each change audited once with its actor; bad
//! input is a 422 naming the field, and stores nothing.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const CUSTOMER: &str = "11111111-1111-4111-8111-111111111111";
const PLAN: &str = "7a7a7a7a-7a7a-4a7a-8a7a-7a7a7a7a7a7a";

impl TestApp {
    /// The ids of the rules that bind `CUSTOMER`, as this replica's customer view lists them.
    async fn bound(&self) -> Vec<String> {
        self.bound_of(CUSTOMER).await
    }

    async fn bound_of(&self, customer: &str) -> Vec<String> {
        let view: Value =
            self.admin(Method::GET, &format!("/v1/customers/{customer}"), None).await.json().await.unwrap();
        view["rules"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect()
    }

    async fn create_rule(&self, body: Value) -> reqwest::Response {
        self.admin(Method::POST, "/v1/rules", Some(body)).await
    }

    async fn rules(&self, query: &str) -> Vec<Value> {
        let response = self.admin(Method::GET, &format!("/v1/rules{query}"), None).await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["rules"].as_array().unwrap().clone()
    }

    async fn rule_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM rules").fetch_one(&self.pool).await.unwrap()
    }
}

/// "$50 a day" for one customer, in Paris days.
fn fifty_a_day() -> Value {
    json!({"scope": {"customer": CUSTOMER}, "measure": {"cost": {}}, "limit": 5000,
           "window": {"calendar": "day", "time_zone": "Europe/Paris"}, "mode": "hard",
           "description": "$50 a day"})
}

#[tokio::test]
async fn rules_are_created_read_listed_changed_and_deleted_each_change_audited_with_its_actor() {
    let app = TestApp::spawn().await;
    let response = app.create_rule(fifty_a_day()).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["scope"], json!({"customer": CUSTOMER}));
    assert_eq!(created["measure"], json!({"cost": {}}));
    assert_eq!(created["window"], json!({"calendar": "day", "time_zone": "Europe/Paris"}));
    assert_eq!((created["limit"].as_i64(), created["mode"].as_str()), (Some(5000), Some("hard")));
    assert_eq!(
        (created["per_subject"].as_bool(), created["thresholds"].clone()),
        (Some(false), json!([80, 100]))
    );
    assert_eq!(created["created_by"], "operator");

    let per_member = json!({"scope": {"plan": PLAN}, "measure": {"metric": "api_calls"}, "limit": 500,
        "window": {"rolling_s": 3600}, "mode": "soft", "per_subject": true,
        "subject_limits": {"alice": 1000}, "thresholds": [50, 100]});
    assert_eq!(app.create_rule(per_member).await.status(), 201);
    let everyone = json!({"scope": {"all": true}, "measure": {"cost": {}}, "limit": 100_000,
        "window": {"billing_period": {}}, "mode": "hard"});
    assert_eq!(app.create_rule(everyone).await.status(), 201);

    let read: Value = app.admin(Method::GET, &format!("/v1/rules/{id}"), None).await.json().await.unwrap();
    assert_eq!(read, created);
    assert_eq!(app.rules("").await.len(), 3);
    let of_customer = app.rules(&format!("?customer={CUSTOMER}")).await;
    assert_eq!(of_customer.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(), [json!(id)]);
    let of_plan = app.rules(&format!("?plan={PLAN}")).await;
    assert_eq!((of_plan.len(), of_plan[0]["subject_limits"].clone()), (1, json!({"alice": 1000})));

    let changed = app
        .admin(
            Method::PATCH,
            &format!("/v1/rules/{id}"),
            Some(json!({"limit": 7500, "mode": "soft", "description": null})),
        )
        .await;
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!((changed["limit"].as_i64(), changed["mode"].as_str()), (Some(7500), Some("soft")));
    assert_eq!(
        (changed["description"].clone(), changed["window"].clone()),
        (Value::Null, created["window"].clone())
    );

    assert_eq!(app.admin(Method::DELETE, &format!("/v1/rules/{id}"), None).await.status(), 204);
    assert_problem(app.admin(Method::GET, &format!("/v1/rules/{id}"), None).await, 404, "not_found").await;
    assert_problem(app.admin(Method::DELETE, &format!("/v1/rules/{id}"), None).await, 404, "not_found").await;
    assert_eq!(app.rule_rows().await, 2);

    let created_rows = app.audit_rows("rule.create").await;
    assert_eq!(created_rows.len(), 3);
    assert_eq!(created_rows[0]["actor"], "operator");
    assert_eq!(created_rows[0]["customer_id"], CUSTOMER);
    let change = app.audit_rows("rule.change").await;
    assert_eq!(change.len(), 1);
    assert_eq!(
        (change[0]["details"]["before"]["limit"].as_i64(), change[0]["details"]["limit"].as_i64()),
        (Some(5000), Some(7500))
    );
    let deleted = app.audit_rows("rule.delete").await;
    assert_eq!((deleted.len(), deleted[0]["target_id"].as_str()), (1, Some(id.as_str())));
}

#[tokio::test]
async fn a_bad_rule_is_a_422_naming_the_field_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        ("scope", json!({"team": "x"}), "scope"),
        ("measure", json!({"tokens": {}}), "measure"),
        ("limit", json!(0), "limit"),
        ("window", json!({"calendar": "day", "time_zone": "Mars/Olympus"}), "window.time_zone"),
        ("window", json!({"rolling_s": 2_678_401}), "window.rolling_s"),
        ("thresholds", json!([100, 80]), "thresholds"),
        ("thresholds", json!([0]), "thresholds"),
        ("subject_limits", json!({"alice": 5}), "subject_limits"),
    ];
    for (key, value, field) in cases {
        let mut body = fifty_a_day();
        body[key] = value.clone();
        let problem = assert_problem(app.create_rule(body).await, 422, "validation_failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{key}: {value}");
    }
    let mut subject = fifty_a_day();
    subject["per_subject"] = json!(true);
    subject["subject_limits"] = json!({"bob smith": 5});
    let problem = assert_problem(app.create_rule(subject).await, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "subject_limits");
    assert_eq!(app.rule_rows().await, 0, "nothing stored");
    assert!(app.audit_rows("rule.create").await.is_empty());

    // A change of what makes another rule, or of subject limits on a rule without subjects.
    let created: Value = app.create_rule(fifty_a_day()).await.json().await.unwrap();
    let path = format!("/v1/rules/{}", created["id"].as_str().unwrap());
    for (body, field) in [
        (json!({"scope": {"all": true}}), "scope"),
        (json!({"subject_limits": {"alice": 5}}), "subject_limits"),
        (json!({"limit": -1}), "limit"),
    ] {
        let problem =
            assert_problem(app.admin(Method::PATCH, &path, Some(body)).await, 422, "validation_failed").await;
        assert_eq!(problem["errors"][0]["field"], field);
    }
    let read: Value = app.admin(Method::GET, &path, None).await.json().await.unwrap();
    assert_eq!(read, created, "unchanged");
    assert!(app.audit_rows("rule.change").await.is_empty());
    assert_problem(app.admin(Method::GET, "/v1/rules/not-a-uuid", None).await, 400, "invalid_request").await;
    assert_problem(app.admin(Method::GET, "/v1/rules?customer=nope", None).await, 400, "invalid_request")
        .await;
}

#[tokio::test]
async fn rules_need_the_admin_scope() {
    let app = TestApp::spawn().await;
    for key in [CHECK_KEY, EVENTS_KEY] {
        let response =
            app.http.post(app.url("/v1/rules")).bearer_auth(key).json(&fifty_a_day()).send().await.unwrap();
        assert_eq!(response.status(), 403);
        assert_eq!(app.get("/v1/rules", Some(key)).await.status(), 403);
    }
    assert_eq!(app.get("/v1/rules", None).await.status(), 401);
    assert_eq!(app.rule_rows().await, 0);
}

#[tokio::test]
async fn a_rule_created_or_deleted_binds_or_frees_on_every_replica_within_a_second() {
    let app = TestApp::spawn().await;
    let other = app.second_instance().await;
    let everyone = json!({"scope": {"all": true}, "measure": {"cost": {}}, "limit": 100_000,
        "window": {"calendar": "day"}, "mode": "hard"});
    let all: Value = app.create_rule(everyone).await.json().await.unwrap();
    let all = all["id"].as_str().unwrap().to_owned();
    let own: Value = app
        .create_rule(json!({"scope": {"customer": CUSTOMER}, "measure": {"cost": {}}, "limit": 5000,
        "window": {"calendar": "day"}, "mode": "hard"}))
        .await
        .json()
        .await
        .unwrap();
    let own = own["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.bound().await,
        std::slice::from_ref(&own),
        "this replica at once: the customer's rule replaces all's"
    );
    eventually(Duration::from_secs(1), "the other replica binds the customer's rule", || async {
        (other.bound().await == [own.clone()]).then_some(())
    })
    .await;

    other.admin(Method::DELETE, &format!("/v1/rules/{own}"), None).await;
    eventually(Duration::from_secs(1), "the first replica falls back to the all rule", || async {
        (app.bound().await == [all.clone()]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_plan_rule_binds_the_customers_on_that_plan_in_place_of_the_all_rule() {
    let app = TestApp::spawn().await;
    let on_plan =
        app.sim.add_customer(json!({"subscriptions": [{"price_amount": 1000, "plan": {"id": PLAN}}]})).await;
    let on_plan = on_plan["id"].as_str().unwrap().to_owned();
    let day = json!({"calendar": "day"});
    let id = |created: Value| created["id"].as_str().unwrap().to_owned();
    let all = id(app
        .create_rule(json!({"scope": {"all": true}, "measure": {"cost": {}}, "limit": 100_000,
        "window": day, "mode": "hard"}))
        .await
        .json()
        .await
        .unwrap());
    let plan = id(app
        .create_rule(json!({"scope": {"plan": PLAN}, "measure": {"cost": {}}, "limit": 20_000,
        "window": day, "mode": "hard"}))
        .await
        .json()
        .await
        .unwrap());
    assert_eq!(app.bound_of(&on_plan).await, [plan], "its plan's rule replaces all's");
    assert_eq!(app.bound().await, [all], "a customer on another plan keeps all's");
}
