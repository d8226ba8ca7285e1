//! Overrides: an operator lets a customer through, stops one or raises its DISABLE threshold
//! until a set time; checks, enforced events and holds follow it on every replica, it expires
//! exactly, and every change is audited once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::enforce::call;
use crate::helpers::*;

impl TestApp {
    pub async fn create_override(&self, customer: &str, body: Value) -> reqwest::Response {
        self.admin(reqwest::Method::POST, &format!("/v1/customers/{customer}/overrides"), Some(body)).await
    }

    /// A created override's body.
    pub async fn overridden(
        &self,
        customer: &str,
        effect: &str,
        amount: Option<i64>,
        ttl: Duration,
    ) -> Value {
        let mut body = json!({"effect": effect, "reason": "support ticket 42", "expires_at": in_(ttl)});
        if let Some(amount) = amount {
            body["amount"] = json!(amount);
        }
        let response = self.create_override(customer, body).await;
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    pub async fn overrides_of(&self, customer: &str, query: &str) -> Vec<Value> {
        let response = self
            .admin(reqwest::Method::GET, &format!("/v1/customers/{customer}/overrides{query}"), None)
            .await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["overrides"].as_array().unwrap().clone()
    }
}

/// RFC 3339, `ttl` from now.
pub fn in_(ttl: Duration) -> String {
    (chrono::Utc::now() + ttl).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn reasons(decision: &Value) -> Vec<&str> {
    decision["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect()
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn allow_lets_a_blocked_customer_through_and_the_truth_stays_visible() {
    let app = TestApp::spawn().await;
    let (customer, _) =
        app.sim.add_usage_customer(120.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    assert_eq!(app.check(&customer).await["allowed"], false);

    let created = app.overridden(&customer, "allow", None, HOUR).await;
    assert_eq!((created["effect"].as_str(), created["active"].as_bool()), (Some("allow"), Some(true)));
    assert_eq!(created["created_by"], "operator");
    let check = app.check(&customer).await;
    assert_eq!(
        (check["allowed"].as_bool(), check["status"].as_str(), check["would_block"].as_bool()),
        (Some(true), Some("warning"), Some(true))
    );
    assert_eq!(reasons(&check), ["disable_limit_exceeded", "override_allow"]);
    assert_eq!(check["override"]["id"], created["id"]);
    assert_eq!(check["override"]["effect"], "allow");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(check["override"]["expires_at"].as_str().unwrap()).unwrap(),
        chrono::DateTime::parse_from_rfc3339(created["expires_at"].as_str().unwrap()).unwrap()
    );
    assert_eq!(check["estimate"]["amount"], 120, "the estimate is the truth");
    // Enforced events and holds follow it.
    assert_eq!(app.post_enforced(&call("allowed-1", &customer)).await.status(), 202);
    assert_eq!(app.hold(&customer, json!({"amount": 500})).await.status(), 201);
}

#[tokio::test]
async fn block_stops_a_customer_under_its_limits_everywhere() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(10.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    app.overridden(&customer, "block", None, HOUR).await;
    let check = app.check(&customer).await;
    assert_eq!(
        (check["allowed"].as_bool(), check["status"].as_str(), check["would_block"].as_bool()),
        (Some(false), Some("blocked"), Some(false))
    );
    assert_eq!(reasons(&check), ["override_block"]);
    let refused =
        assert_problem(app.post_enforced(&call("blocked-1", &customer)).await, 402, "usage_limit_exceeded")
            .await;
    assert_eq!(refused["decision"]["override"]["effect"], "block");
    assert_problem(app.hold(&customer, json!({"amount": 1})).await, 402, "usage_limit_exceeded").await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&app.pool).await.unwrap();
    assert_eq!(stored, 0, "nothing stored for a blocked customer");
}

#[tokio::test]
async fn raise_judges_the_disable_limit_at_the_raised_amount() {
    let app = TestApp::spawn().await;
    let (customer, _) =
        app.sim.add_usage_customer(120.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let created = app.overridden(&customer, "raise", Some(200), HOUR).await;
    assert_eq!(created["amount"], 200);
    let check = app.check(&customer).await;
    assert_eq!(
        (check["allowed"].as_bool(), check["status"].as_str(), check["would_block"].as_bool()),
        (Some(true), Some("ok"), Some(true))
    );
    assert_eq!(reasons(&check), ["override_raise"]);
    assert_eq!(
        (check["override"]["effect"].as_str(), check["override"]["amount"].as_i64()),
        (Some("raise"), Some(200))
    );
    assert_eq!(check["limits"][0]["amount"], 100, "BillaBear's limit is shown as it is");
    // 120 + 81 > 200; 120 + 80 is not.
    assert_problem(app.hold(&customer, json!({"amount": 81})).await, 402, "usage_limit_exceeded").await;
    assert_eq!(app.hold(&customer, json!({"amount": 80})).await.status(), 201);
    assert_problem(app.post_enforced(&call("over-raised", &customer)).await, 402, "usage_limit_exceeded")
        .await;
}

#[tokio::test]
async fn a_new_override_supersedes_the_open_one_and_ending_one_restores_the_decision() {
    let app = TestApp::spawn().await;
    let (customer, _) =
        app.sim.add_usage_customer(120.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let first = app.overridden(&customer, "allow", None, HOUR).await;
    let second = app.overridden(&customer, "raise", Some(1000), HOUR).await;
    let listed = app.overrides_of(&customer, "").await;
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0]["id"].clone(), listed[0]["active"].as_bool()), (second["id"].clone(), Some(true)));
    assert_eq!(
        (listed[1]["id"].clone(), listed[1]["ended_as"].as_str()),
        (first["id"].clone(), Some("superseded"))
    );
    assert_eq!(app.check(&customer).await["override"]["id"], second["id"]);

    let id = second["id"].as_str().unwrap();
    let path = format!("/v1/customers/{customer}/overrides/{id}?reason=deal%20signed");
    assert_eq!(app.admin(reqwest::Method::DELETE, &path, None).await.status(), 204);
    let check = app.check(&customer).await;
    assert_eq!(
        (check["allowed"].as_bool(), check.get("override"), check.get("would_block")),
        (Some(false), None, None)
    );
    assert_problem(app.admin(reqwest::Method::DELETE, &path, None).await, 404, "not_found").await;
    assert!(app.overrides_of(&customer, "?active=true").await.is_empty());
    let all = app
        .admin(reqwest::Method::GET, "/v1/overrides?active=false", None)
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(all["overrides"].as_array().unwrap().len(), 2);

    let created = app.audit_rows("override.create").await;
    let ended = app.audit_rows("override.end").await;
    assert_eq!(created.len(), 2);
    assert_eq!(ended.len(), 2, "superseded and ended, once each");
    assert_eq!(
        (
            ended[1]["actor"].as_str(),
            ended[1]["target_id"].as_str(),
            ended[1]["details"]["end_reason"].as_str()
        ),
        (Some("operator"), Some(id), Some("deal signed"))
    );
    assert_eq!(ended[1]["details"]["reason"], "support ticket 42");
    assert_eq!(created[0]["details"]["reason"], "support ticket 42");
}

#[tokio::test]
async fn an_override_is_validated_field_by_field_with_422_and_needs_the_admin_scope() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(1.0, json!([])).await;
    let cases = [
        (json!({"effect": "allow", "expires_at": in_(HOUR)}), "reason"),
        (json!({"effect": "allow", "reason": "r".repeat(501), "expires_at": in_(HOUR)}), "reason"),
        (json!({"effect": "allow", "reason": "r"}), "expires_at"),
        (json!({"effect": "allow", "reason": "r", "expires_at": "2020-01-01T00:00:00Z"}), "expires_at"),
        (
            json!({"effect": "allow", "reason": "r", "expires_at": in_(Duration::from_secs(91 * 86400))}),
            "expires_at",
        ),
        (json!({"effect": "raise", "reason": "r", "expires_at": in_(HOUR)}), "amount"),
        (json!({"effect": "forgive", "reason": "r", "expires_at": in_(HOUR)}), "effect"),
    ];
    for (body, field) in cases {
        let problem =
            assert_problem(app.create_override(&customer, body.clone()).await, 422, "validation_failed")
                .await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    assert!(app.overrides_of(&customer, "").await.is_empty(), "nothing stored");
    let with_check_key = app
        .http
        .post(app.url(&format!("/v1/customers/{customer}/overrides")))
        .bearer_auth(CHECK_KEY)
        .json(&json!({"effect": "allow", "reason": "r", "expires_at": in_(HOUR)}))
        .send()
        .await
        .unwrap();
    assert_problem(with_check_key, 403, "forbidden").await;
}

#[tokio::test]
async fn an_override_reaches_every_replica_and_expires_on_each_within_a_second_audited_once() {
    let app = TestApp::spawn().await;
    let other = app.second_instance().await;
    let (customer, _) = app.sim.add_usage_customer(10.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    for replica in [&app, &other] {
        assert_eq!(replica.check(&customer).await["allowed"], true);
    }
    let ttl = Duration::from_millis(2500);
    let created = app.overridden(&customer, "block", None, ttl).await;
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(created["expires_at"].as_str().unwrap()).unwrap().to_utc();
    let made = Instant::now();
    eventually(Duration::from_secs(1), "the other replica applies the override", || async {
        (other.check(&customer).await["allowed"] == false).then_some(())
    })
    .await;
    assert!(made.elapsed() < Duration::from_secs(1));
    for replica in [&app, &other] {
        eventually(ttl + Duration::from_secs(1), "the override has expired on each replica", || async {
            (replica.check(&customer).await["allowed"] == true).then_some(())
        })
        .await;
        let late = chrono::Utc::now() - expires_at;
        assert!(late < chrono::TimeDelta::seconds(1), "answered without it {late} after expires_at");
    }
    let expired = eventually(Duration::from_secs(2), "the expiry is recorded", || async {
        let rows = app.audit_rows("override.expire").await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0]["actor"].as_str(), expired[0]["details"]["reason"].as_str()),
        (Some("usage-gate"), Some("support ticket 42"))
    );
    assert_eq!(app.overrides_of(&customer, "").await[0]["ended_as"], "expired");
    assert_eq!(app.audit_rows("override.create").await.len(), 1);
}

#[tokio::test]
async fn an_override_that_changes_the_status_is_an_audited_decision_transition() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(10.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    assert_eq!(app.check(&customer).await["status"], "ok");
    let created = app.overridden(&customer, "block", None, HOUR).await;
    let rows = eventually(Duration::from_secs(2), "a transition to blocked", || async {
        let rows = app.audit_rows("decision.transition").await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(rows[0]["details"], json!({"from": "ok", "to": "blocked"}));
    let path = format!("/v1/customers/{customer}/overrides/{}", created["id"].as_str().unwrap());
    assert_eq!(app.admin(reqwest::Method::DELETE, &path, None).await.status(), 204);
    eventually(Duration::from_secs(2), "a transition back to ok", || async {
        let rows = app.audit_rows("decision.transition").await;
        (rows.len() == 2).then_some(())
    })
    .await;
}
