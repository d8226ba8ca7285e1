//! The simulator keeps BillaBear's contract (API.md), odd bodies included, over raw HTTP.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usage_gate::sim::Seed;

use crate::helpers::*;

/// Sends a raw request; returns status and body text.
async fn send(
    sim: &Sim,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, String) {
    let mut request = sim.http.request(method, sim.url(path));
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_missing_or_wrong_key_gets_401_with_an_empty_array() {
    let sim = start_sim(Seed::built_in());
    let routes = [
        (Method::GET, format!("/customer/{ACME}")),
        (Method::GET, format!("/customer/{ACME}/costs")),
        (Method::GET, format!("/customer/{ACME}/usage-limits")),
        (Method::POST, format!("/customer/{ACME}/usage-limits")),
        (Method::DELETE, format!("/customer/{ACME}/usage-limit/{ACME_LIMIT}")),
        (Method::GET, format!("/customer/{ACME}/subscription/active")),
        (Method::POST, "/events".to_string()),
    ];
    for (method, path) in routes {
        for key in [None, Some("wrong")] {
            let (status, body) = send(&sim, method.clone(), &path, key, Some("{}")).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::UNAUTHORIZED, "[]"),
                "{method} {path} key={key:?}"
            );
        }
    }
    // The header name is case-insensitive (the server reads X-API-KEY).
    let response = sim
        .http
        .get(sim.url(&format!("/customer/{ACME}")))
        .header("x-api-key", SIM_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn routing_runs_before_auth_so_the_sdk_uasge_limit_paths_are_404() {
    let sim = start_sim(Seed::built_in());
    for key in [None, Some(SIM_KEY)] {
        let (status, _) = send(&sim, Method::GET, &format!("/customer/{ACME}/uasge-limit"), key, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "key={key:?}");
        let (status, _) =
            send(&sim, Method::DELETE, &format!("/customer/{ACME}/uasge-limit/{ACME_LIMIT}"), key, None)
                .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn each_route_has_its_own_404_body() {
    let sim = start_sim(Seed::built_in());
    let nobody = uuid::Uuid::new_v4();
    let cases = [
        (Method::GET, format!("/customer/{nobody}"), "[]"),
        (Method::GET, format!("/customer/{nobody}/costs"), ""),
        (Method::GET, format!("/customer/{nobody}/usage-limits"), ""),
        (Method::POST, format!("/customer/{nobody}/usage-limits"), ""),
        (Method::GET, format!("/customer/{nobody}/subscription/active"), "[]"),
        (Method::DELETE, format!("/customer/{nobody}/usage-limit/{ACME_LIMIT}"), r#"{"success":false}"#),
        (Method::DELETE, format!("/customer/{ACME}/usage-limit/{nobody}"), r#"{"success":false}"#),
        (Method::GET, "/customer/not-a-uuid/costs".to_string(), ""),
    ];
    for (method, path, expected) in cases {
        // The create body is invalid on purpose: the customer is checked first.
        let (status, body) =
            send(&sim, method.clone(), &path, Some(SIM_KEY), Some(r#"{"amount":"x"}"#)).await;
        assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, expected), "{method} {path}");
    }
}

#[tokio::test]
async fn usage_limit_validation_uses_billabear_messages() {
    let sim = start_sim(Seed::built_in());
    let path = format!("/customer/{ACME}/usage-limits");
    let cases = [
        (r#"{"amount":0,"action":"WARNING"}"#, json!({"amount": "This value should be positive."})),
        (r#"{"amount":20.5,"action":"WARNING"}"#, json!({"amount": "This value should be of type integer."})),
        (
            r#"{"amount":"2000","action":"WARNING"}"#,
            json!({"amount": "This value should be of type integer."}),
        ),
        (
            r#"{"amount":100,"action":"warning"}"#,
            json!({"action": "The value you selected is not a valid choice."}),
        ),
        (
            r#"{"amount":100,"action":"WARN"}"#,
            json!({"action": "The value you selected is not a valid choice."}),
        ),
        (
            "{}",
            json!({"amount": "This value should not be blank.", "action": "This value should not be blank."}),
        ),
    ];
    for (body, errors) in cases {
        let (status, text) = send(&sim, Method::POST, &path, Some(SIM_KEY), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({ "errors": errors }), "{body}");
    }
    let (status, text) =
        send(&sim, Method::POST, &path, Some(SIM_KEY), Some(r#"{"amount":100,"action":"DISABLE"}"#)).await;
    assert_eq!(status, StatusCode::CREATED);
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((created["amount"].as_i64(), created["action"].as_str()), (Some(100), Some("DISABLE")));
    uuid::Uuid::parse_str(created["id"].as_str().unwrap()).unwrap();
    // The list has `has_more` but no `last_key`.
    let (_, text) = send(&sim, Method::GET, &path, Some(SIM_KEY), None).await;
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["has_more"], false);
    assert!(list.get("last_key").is_none());
}

#[tokio::test]
async fn event_validation_uses_billabear_messages() {
    let sim = start_sim(Seed::built_in());
    let event = |fields: Value| {
        let mut e =
            json!({"event_id": "e1", "subscription": ACME_SUBSCRIPTION, "code": "api_calls", "value": 1});
        for (k, v) in fields.as_object().unwrap() {
            if v.is_null() {
                e.as_object_mut().unwrap().remove(k)
            } else {
                e.as_object_mut().unwrap().insert(k.clone(), v.clone())
            };
        }
        e.to_string()
    };
    let cases = [
        (event(json!({"value": "5"})), json!({"value": "This value should be of type integer|float."})),
        (event(json!({"value": null})), json!({"value": "This value should not be blank."})),
        (event(json!({"event_id": 7})), json!({"event_id": "This value should be of type string."})),
        (event(json!({"subscription": "nope"})), json!({"subscription": "This is not a valid UUID."})),
        (event(json!({"code": "storage"})), json!({"code": "The code \"storage\" does not exist."})),
        (event(json!({"properties": 5})), json!({"properties": "This value should be of type array."})),
    ];
    for (body, errors) in cases {
        let (status, text) = send(&sim, Method::POST, "/events", Some(SIM_KEY), Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({ "errors": errors }), "{body}");
    }
    // 0 and negative values pass NotBlank; a body that is not JSON is an uncaught 500.
    let (status, _) =
        send(&sim, Method::POST, "/events", Some(SIM_KEY), Some(&event(json!({"value": 0})))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(&sim, Method::POST, "/events", Some(SIM_KEY), Some("not json")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_repeated_event_id_is_accepted_and_stored_twice() {
    let sim = start_sim(Seed::built_in());
    let body = json!({"event_id": "dup", "subscription": ACME_SUBSCRIPTION, "code": "api_calls", "value": 1})
        .to_string();
    for _ in 0..2 {
        let (status, text) = send(&sim, Method::POST, "/events", Some(SIM_KEY), Some(&body)).await;
        assert_eq!((status, text.as_str()), (StatusCode::CREATED, ""));
    }
    assert_eq!(sim.event_count("dup").await, 2);
}

#[tokio::test]
async fn the_estimate_moves_on_the_tick_and_a_limit_fires_only_when_strictly_over() {
    let sim = start_sim(Seed::built_in());
    let (customer, subscription) =
        sim.add_usage_customer(90.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    let post = |id: &'static str, value: f64| {
        json!({"event_id": id, "subscription": subscription, "code": "api_calls", "value": value}).to_string()
    };
    let estimate = |sim: &Sim| {
        let customer = customer.clone();
        let url = sim.url(&format!("/customer/{customer}/costs"));
        let http = sim.http.clone();
        async move {
            let body: Value =
                http.get(url).header("X-API-Key", SIM_KEY).send().await.unwrap().json().await.unwrap();
            body["total"]["amount"].as_i64().unwrap()
        }
    };

    send(&sim, Method::POST, "/events", Some(SIM_KEY), Some(&post("a", 10.0))).await;
    assert_eq!(estimate(&sim).await, 90, "events are counted on the tick, not on receipt");
    let fired = sim.tick().await;
    assert_eq!(estimate(&sim).await, 100);
    assert_eq!(fired["fired"], json!([]), "an estimate equal to the limit is not over it");
    assert_eq!(sim.customer(&customer).await["status"], "active");

    send(&sim, Method::POST, "/events", Some(SIM_KEY), Some(&post("b", 1.0))).await;
    let fired = sim.tick().await;
    assert_eq!(fired["fired"].as_array().unwrap().len(), 1);
    assert_eq!(sim.customer(&customer).await["status"], "disabled", "DISABLE disables the customer");
    let webhooks = sim.webhooks().await;
    let types: Vec<_> = webhooks.as_array().unwrap().iter().map(|w| w["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["customer_disabled", "usage_warning_triggered"]);
}

#[tokio::test]
async fn mixed_currencies_make_the_estimate_fail_as_billabear_does() {
    let sim = start_sim(Seed::built_in());
    let view = sim
        .add_customer(json!({"subscriptions": [
            {"metric": "api_calls", "currency": "USD", "usage": 1},
            {"metric": "storage_gb", "currency": "EUR", "usage": 1}
        ]}))
        .await;
    let (status, body) = send(
        &sim,
        Method::GET,
        &format!("/customer/{}/costs", view["id"].as_str().unwrap()),
        Some(SIM_KEY),
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, ""));
}

#[tokio::test]
async fn requests_are_counted_per_route_and_per_path() {
    let sim = start_sim(Seed::built_in());
    send(&sim, Method::GET, &format!("/customer/{ACME}/costs"), Some(SIM_KEY), None).await;
    send(&sim, Method::GET, &format!("/customer/{ACME}/costs"), None, None).await;
    let requests = sim.requests().await;
    assert_eq!(requests["by_route"]["GET /api/v1/customer/{id}/costs"], 2);
    assert_eq!(requests["by_path"][format!("GET /api/v1/customer/{ACME}/costs")], 2);
}
