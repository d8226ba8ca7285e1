//! Every client operation against the simulator: success, and every error shape.

use std::time::Duration;

use serde_json::json;
use usage_gate::billabear::{BillaBearError, NewEvent, NewUsageLimit};
use usage_gate::domain::{
    CustomerId, CustomerStatus, EventId, LimitAction, LimitId, MetricCode, SubscriptionId,
};
use usage_gate::sim::Seed;

use crate::helpers::*;

fn cid(s: &str) -> CustomerId {
    CustomerId::parse(s).unwrap()
}

fn event(event_id: &str, subscription: &str, code: &str, value: f64) -> NewEvent {
    NewEvent {
        event_id: EventId::parse(event_id).unwrap(),
        subscription: SubscriptionId::parse(subscription).unwrap(),
        code: MetricCode::parse(code).unwrap(),
        value,
        properties: serde_json::Map::new(),
    }
}

#[tokio::test]
async fn list_usage_limits_uses_the_real_route_and_tolerates_a_missing_last_key() {
    let sim = start_sim(Seed::built_in());
    let limits = sim.client().list_usage_limits(cid(INITECH)).await.unwrap();
    let mut seen: Vec<_> = limits.iter().map(|l| (l.amount, l.action)).collect();
    seen.sort_by_key(|(amount, _)| *amount);
    assert_eq!(seen, vec![(5000, LimitAction::Warning), (20000, LimitAction::Disable)]);
    assert_eq!(sim.route_count("GET /api/v1/customer/{id}/usage-limits").await, 1);
}

#[tokio::test]
async fn create_usage_limit_returns_the_limit_and_passes_on_billabear_field_messages() {
    let sim = start_sim(Seed::built_in());
    let client = sim.client();
    let created = client
        .create_usage_limit(cid(STARK_FLAT), &NewUsageLimit { amount: 2500, action: LimitAction::Warning })
        .await
        .unwrap();
    assert_eq!((created.amount, created.action), (2500, LimitAction::Warning));
    assert_eq!(client.list_usage_limits(cid(STARK_FLAT)).await.unwrap(), vec![created]);

    let rejected = client
        .create_usage_limit(cid(STARK_FLAT), &NewUsageLimit { amount: 0, action: LimitAction::Disable })
        .await
        .unwrap_err();
    match rejected {
        BillaBearError::Validation(fields) => {
            assert_eq!(fields["amount"], "This value should be positive.")
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[tokio::test]
async fn delete_usage_limit_removes_it_and_an_unknown_limit_is_not_found() {
    let sim = start_sim(Seed::built_in());
    let client = sim.client();
    let limit = LimitId::parse(ACME_LIMIT).unwrap();
    client.delete_usage_limit(cid(ACME), limit).await.unwrap();
    assert!(client.list_usage_limits(cid(ACME)).await.unwrap().is_empty());
    // BillaBear answers 404 `{"success":false}` for a limit it does not have.
    assert_eq!(
        client.delete_usage_limit(cid(ACME), limit).await.unwrap_err(),
        BillaBearError::NotFound("customer or usage limit")
    );
    assert_eq!(sim.route_count("DELETE /api/v1/customer/{id}/usage-limit/{id}").await, 2);
}

#[tokio::test]
async fn cost_estimate_reads_total_in_minor_units() {
    let sim = start_sim(Seed::built_in());
    let client = sim.client();
    let estimate = client.get_cost_estimate(cid(ACME)).await.unwrap();
    assert_eq!((estimate.total.amount, estimate.total.currency.as_str()), (1200, "USD"));
    assert_eq!(estimate.costs[0].name, "API Calls");
    // No usage subscription: 200 with an empty currency, as BillaBear answers.
    let flat = client.get_cost_estimate(cid(STARK_FLAT)).await.unwrap();
    assert_eq!((flat.total.amount, flat.total.currency.as_str()), (0, ""));
}

#[tokio::test]
async fn create_event_is_received_with_billabear_field_names() {
    let sim = start_sim(Seed::built_in());
    let mut sent = event("evt-1", ACME_SUBSCRIPTION, "api_calls", 2.5);
    sent.properties.insert("endpoint".into(), json!("/v1/search"));
    sim.client().create_event(&sent).await.unwrap();
    let received = sim.event("evt-1").await;
    assert_eq!(received["count"], 1);
    let e = &received["events"][0];
    assert_eq!(
        (e["subscription"].as_str(), e["code"].as_str(), e["value"].as_f64()),
        (Some(ACME_SUBSCRIPTION), Some("api_calls"), Some(2.5))
    );
    assert_eq!(e["properties"], json!({"endpoint": "/v1/search"}));
}

#[tokio::test]
async fn create_event_with_unknown_code_or_subscription_is_a_validation_error() {
    let sim = start_sim(Seed::built_in());
    let client = sim.client();
    match client.create_event(&event("e", ACME_SUBSCRIPTION, "nope", 1.0)).await.unwrap_err() {
        BillaBearError::Validation(fields) => {
            assert_eq!(fields["code"], "The code \"nope\" does not exist.")
        }
        other => panic!("{other:?}"),
    }
    match client
        .create_event(&event("e", &uuid::Uuid::new_v4().to_string(), "api_calls", 1.0))
        .await
        .unwrap_err()
    {
        BillaBearError::Validation(fields) => {
            assert_eq!(fields["subscription"], "Subscription plan does not exist")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.event_count("e").await, 0);
}

#[tokio::test]
async fn a_non_finite_value_is_never_sent() {
    let sim = start_sim(Seed::built_in());
    let err =
        sim.client().create_event(&event("nan", ACME_SUBSCRIPTION, "api_calls", f64::NAN)).await.unwrap_err();
    assert!(matches!(err, BillaBearError::InvalidRequest(_)), "{err:?}");
    assert_eq!(sim.route_count("POST /api/v1/events").await, 0);
}

#[tokio::test]
async fn get_customer_reads_the_status() {
    let sim = start_sim(Seed::built_in());
    let client = sim.client();
    assert_eq!(client.get_customer(cid(ACME)).await.unwrap().status, CustomerStatus::Active);
    assert!(client.get_customer(cid(HOOLI_DISABLED)).await.unwrap().status.is_disabled());
}

#[tokio::test]
async fn active_subscriptions_carry_the_usage_metric_code() {
    let sim = start_sim(Seed::built_in());
    let client = sim.client();
    let subs = client.list_active_subscriptions(cid(ACME)).await.unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].id.to_string(), ACME_SUBSCRIPTION);
    assert_eq!(subs[0].usage_metric(), Some("api_calls"));
    let flat = client.list_active_subscriptions(cid(STARK_FLAT)).await.unwrap();
    assert_eq!(flat[0].usage_metric(), None, "a flat price is not usage-based");
}

#[tokio::test]
async fn every_customer_route_reports_an_unknown_customer_as_not_found() {
    // Each route has its own 404 body (empty, `[]`, `{"success":false}`); all read as NotFound.
    let sim = start_sim(Seed::built_in());
    let client = sim.client();
    let nobody = CustomerId::new_v4();
    let limit = NewUsageLimit { amount: 1, action: LimitAction::Warning };
    let results = [
        client.list_usage_limits(nobody).await.map(drop),
        client.create_usage_limit(nobody, &limit).await.map(drop),
        client.delete_usage_limit(nobody, LimitId::new_v4()).await,
        client.get_cost_estimate(nobody).await.map(drop),
        client.get_customer(nobody).await.map(drop),
        client.list_active_subscriptions(nobody).await.map(drop),
    ];
    for result in results {
        assert!(matches!(result, Err(BillaBearError::NotFound(_))), "{result:?}");
    }
}

#[tokio::test]
async fn a_wrong_api_key_is_unauthorized() {
    let sim = start_sim(Seed::built_in());
    let err = sim.client_with_key("not-the-key").get_cost_estimate(cid(ACME)).await.unwrap_err();
    assert_eq!(err, BillaBearError::Unauthorized);
    assert_eq!(err.upstream_status(), Some(401));
}

#[tokio::test]
async fn outages_map_to_distinct_transient_errors() {
    let sim = start_sim(Seed::built_in());
    let client = sim.client();
    let cases = [
        (json!({"outage": "unavailable"}), "unavailable"),
        (json!({"error_rate": 1.0, "error_status": 500}), "unavailable"),
        (json!({"error_rate": 1.0, "error_status": 429}), "unavailable"),
        (json!({"outage": "drop"}), "connect"),
        (json!({"outage": "hang"}), "timeout"),
        (json!({"latency_ms": 800}), "timeout"),
    ];
    for (faults, outcome) in cases {
        sim.set_faults(faults.clone()).await;
        let err = client.get_cost_estimate(cid(ACME)).await.unwrap_err();
        assert_eq!(err.outcome(), outcome, "{faults}: {err:?}");
        assert!(err.is_transient(), "{faults}: {err:?}");
    }
    sim.clear_faults().await;
    assert!(client.get_cost_estimate(cid(ACME)).await.is_ok(), "recovers when the faults clear");
}

#[tokio::test]
async fn a_body_that_is_not_billabear_json_is_an_invalid_body_error() {
    let sim = start_sim(Seed::built_in());
    sim.set_faults(json!({"outage": "garbage"})).await;
    let err = sim.client().get_cost_estimate(cid(ACME)).await.unwrap_err();
    assert!(matches!(err, BillaBearError::InvalidBody { status: 200, .. }), "{err:?}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn nothing_listening_is_a_connection_error() {
    let sim = start_sim(Seed::built_in());
    let client = sim.client();
    drop(sim);
    // Poll until the stopped simulator refuses connections.
    eventually(Duration::from_secs(5), "the stopped simulator to refuse connections", || async {
        matches!(client.get_cost_estimate(cid(ACME)).await, Err(BillaBearError::Connect(_))).then_some(())
    })
    .await;
}

#[tokio::test]
async fn faults_can_target_one_route() {
    let sim = start_sim(Seed::built_in());
    let client = sim.client();
    sim.set_faults(json!({"outage": "unavailable", "only": "costs"})).await;
    assert!(client.get_cost_estimate(cid(ACME)).await.is_err());
    assert!(client.list_usage_limits(cid(ACME)).await.is_ok());
}
