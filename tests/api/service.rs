//! The service skeleton: health, readiness, docs, metrics, request ids, problem bodies.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn healthz_answers_without_a_key() {
    let app = TestApp::spawn().await;
    let response = app.get("/healthz", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_is_ready_with_postgres_migrated_and_reports_billabear() {
    let app = TestApp::spawn().await;
    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["postgres"]["ok"], true);
    assert_eq!(body["checks"]["migrations"]["ok"], true);
    assert_eq!(body["checks"]["billabear"]["ok"], true);
}

#[tokio::test]
async fn readyz_stays_ready_while_billabear_is_down_and_says_so() {
    let app = TestApp::spawn().await;
    app.sim.set_faults(json!({"outage": "unavailable"})).await;
    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["billabear"]["ok"], false);
    assert_eq!(body["checks"]["billabear"]["required"], false);
    assert!(body["checks"]["billabear"]["detail"].as_str().unwrap().contains("503"), "{body}");
}

#[tokio::test]
async fn readyz_is_503_and_names_postgres_when_it_is_unreachable() {
    // Port 1 on loopback: nothing listens there.
    let app = TestApp::spawn_with(|raw| {
        raw.database.url = secrecy::SecretString::from("postgres://postgres@127.0.0.1:1/usage_gate");
        raw.database.acquire_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["postgres"]["ok"], false);
    assert!(body["checks"]["postgres"]["detail"].as_str().unwrap().starts_with("unreachable"), "{body}");
}

#[tokio::test]
async fn with_postgres_gone_after_start_readyz_stays_200_degraded_and_checks_answer() {
    let gate = PostgresGate::start().await;
    let app = TestApp::spawn_with(|raw| {
        let direct = secrecy::ExposeSecret::expose_secret(&raw.database.url).to_owned();
        raw.database.url = secrecy::SecretString::from(gate.url(&direct));
        raw.database.acquire_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    assert_eq!(app.check(ACME).await["allowed"], true, "a cached customer");
    let ready: Value = app.get("/readyz", None).await.json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");

    // As in a Postgres restart or failover: every connection cut, none taken.
    gate.close();
    let degraded = eventually(Duration::from_secs(10), "readyz to report Postgres unreachable", || async {
        let response = app.get("/readyz", None).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (body["checks"]["postgres"]["ok"] == false).then_some((status, body))
    })
    .await;
    assert_eq!(degraded.0, 200, "still answering checks: {}", degraded.1);
    assert_eq!(degraded.1["status"], "degraded");
    assert_eq!(degraded.1["checks"]["postgres"]["required"], false);
    let strict = app.get("/readyz?strict=true", None).await;
    assert_eq!(strict.status(), 503, "the strict answer requires Postgres");
    assert_eq!(strict.json::<Value>().await.unwrap()["status"], "not_ready");
    assert_eq!(app.check(ACME).await["allowed"], true, "the cached customer's check answers");
    let event =
        json!({"event_id": "while-down", "subscription": ACME_SUBSCRIPTION, "code": "api_calls", "value": 1});
    let response =
        app.http.post(app.url("/v1/events")).bearer_auth(EVENTS_KEY).json(&event).send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503, "storage_unavailable").await;

    gate.open();
    eventually(Duration::from_secs(10), "readyz ready again", || async {
        let body: Value = app.get("/readyz?strict=true", None).await.json().await.unwrap();
        (body["status"] == "ready").then_some(())
    })
    .await;
}

#[tokio::test]
async fn readyz_rejects_a_strict_that_is_not_a_boolean() {
    let app = TestApp::spawn().await;
    let body = assert_problem(app.get("/readyz?strict=maybe", None).await, 400, "invalid_request").await;
    assert_eq!(body["errors"][0]["field"], "strict", "{body}");
}

#[tokio::test]
async fn readyz_is_503_when_migrations_are_missing() {
    let app = TestApp::spawn().await;
    sqlx::query("DELETE FROM _sqlx_migrations").execute(&app.pool).await.unwrap();
    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"]["ok"], true);
    assert_eq!(body["checks"]["migrations"]["ok"], false);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = TestApp::spawn().await;
    for (path, key) in
        [("/healthz", None), ("/v1/whoami", None), ("/v1/whoami", Some(ALL_KEY)), ("/nope", None)]
    {
        let response = app.get(path, key).await;
        let id = response.headers().get("x-request-id").unwrap_or_else(|| panic!("{path}")).to_str().unwrap();
        uuid::Uuid::parse_str(id).unwrap();
    }
}

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let app = TestApp::spawn().await;
    let body = assert_problem(app.get("/v1/nothing-here", None).await, 404, "not_found").await;
    assert!(body["detail"].as_str().unwrap().contains("/v1/nothing-here"));
}

#[tokio::test]
async fn the_openapi_document_and_offline_docs_page_are_served() {
    let app = TestApp::spawn().await;
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    for path in ["/healthz", "/readyz", "/metrics", "/v1/whoami"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let page = app.get("/docs/", None).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "docs page");
    // Its script is served locally, not from a CDN.
    assert!(!html.contains("cdn."), "docs page must work offline");
    assert_eq!(app.get("/docs/swagger-ui-bundle.js", None).await.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_upstream_calls_by_operation() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    // A check fetches a customer (on its own, this test must not rely on others' calls).
    assert_eq!(app.get(&format!("/v1/customers/{ACME}/check"), Some(CHECK_KEY)).await.status(), 200);
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(text.contains(r#"http_requests_total{method="GET",route="/readyz",status="200"}"#), "{text}");
    assert!(text.contains("http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains(r#"billabear_requests_total{operation="get_customer",outcome="ok"}"#), "{text}");
}

#[tokio::test]
async fn a_flood_of_readiness_probes_and_scrapes_costs_billabear_and_postgres_almost_nothing() {
    let app = TestApp::spawn().await;
    for _ in 0..20 {
        assert_eq!(app.get("/readyz", None).await.status(), 200);
    }
    let probes = app.sim.route_count("GET /api/v1/customer/{id}").await;
    assert!(probes <= 2, "{probes} BillaBear probes for 20 readiness checks");

    assert_eq!(app.get("/metrics", None).await.status(), 200);
    // With the outbox locked, counting it would wait: scrapes must answer from what was read.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    for _ in 0..5 {
        let scrape = app.http.get(app.url("/metrics")).timeout(std::time::Duration::from_secs(2)).send();
        let text = scrape.await.expect("answered without counting the outbox").text().await.unwrap();
        assert!(text.contains("usage_gate_outbox_events"), "{text}");
    }
    lock.rollback().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_states_what_each_route_answers_and_takes() {
    let app = TestApp::spawn().await;
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let mut operation_ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            // OpenAPI requires them unique, and client generators refuse a document without.
            let id = operation["operationId"].as_str().unwrap();
            assert!(operation_ids.insert(id), "{method} {path}: operationId {id} is used twice");
            let responses = operation["responses"].as_object().unwrap();
            if operation.get("security").is_some_and(|s| !s.as_array().unwrap().is_empty()) {
                for status in ["401", "403"] {
                    assert!(responses.contains_key(status), "{method} {path} documents no {status}");
                }
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413"] {
                    assert!(responses.contains_key(status), "{method} {path} documents no {status}");
                }
            }
        }
    }
    // The batch check answers decisions, not the events batch's results.
    let check =
        &doc["paths"]["/v1/check"]["post"]["responses"]["200"]["content"]["application/json"]["schema"];
    let name = check["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
    assert!(doc["components"]["schemas"][name]["properties"].get("decisions").is_some(), "{name}");
    let event = &doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(event["$ref"], "#/components/schemas/NewEvent");
    assert_eq!(doc["components"]["schemas"]["NewEvent"]["required"], json!(["event_id", "code", "value"]));
    // Every body read by hand has its schema too (the clients take their request types from
    // here), on the method that takes it only; a usage limit is answered as BillaBear's object.
    for (path, method, schema) in [
        ("/v1/customers/{customer_id}/reservations", "post", "NewReservation"),
        ("/v1/reservations/{reservation_id}/commit", "post", "ReservationCommit"),
        ("/v1/customers/{customer_id}/overrides", "post", "NewOverride"),
        ("/v1/webhook-endpoints", "post", "NewWebhookEndpoint"),
    ] {
        let body = &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["$ref"], format!("#/components/schemas/{schema}"), "{method} {path}");
        assert!(doc["components"]["schemas"][schema]["properties"].is_object(), "{schema}");
    }
    assert!(doc["paths"]["/v1/customers/{customer_id}/reservations"]["get"].get("requestBody").is_none());
    let limit = &doc["paths"]["/v1/customers/{customer_id}/usage-limits"]["post"]["responses"]["201"];
    assert_eq!(limit["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/UsageLimit");
    assert_eq!(
        doc["components"]["schemas"]["LimitList"]["properties"]["data"]["items"]["$ref"],
        "#/components/schemas/UsageLimit"
    );

    // A method a path does not take is a 405 naming the ones it does.
    let response = app.http.request(reqwest::Method::TRACE, app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET");
    assert_problem(response, 405, "method_not_allowed").await;
    let response = app
        .http
        .request(reqwest::Method::PUT, app.url("/v1/events"))
        .bearer_auth(ALL_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    assert_problem(response, 405, "method_not_allowed").await;
}
