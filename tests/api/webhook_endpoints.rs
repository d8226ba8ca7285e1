//! usage-gate's own webhooks: a local receiver verifies every signature with the endpoint's
//! secret (by the Standard Webhooks library), retries keep the webhook-id, rotation signs with
//! both secrets, 410 disables, and a dead outbox event is told. That each transition is one
//! message however many replicas see it is tested with its audit record (`admin.rs`).

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use usage_gate::audit::Actor;
use usage_gate::seal::Sealer;
use usage_gate::webhooks::endpoints::NewEndpoint;
use usage_gate::webhooks::store;
use uuid::Uuid;

use crate::helpers::*;
use crate::overrides::in_;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Received {
    pub fn id(&self) -> &str {
        self.headers["webhook-id"].to_str().unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// Verifies the signature as a receiver would, with the Standard Webhooks library.
    pub fn verifies_with(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret).unwrap().verify(self.body.as_bytes(), &self.headers).is_ok()
    }
}

/// A local webhook receiver: records every request and answers with the scripted statuses in
/// turn, then 204.
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    server: actix_web::dev::ServerHandle,
}

#[derive(Clone)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    /// How long each answer takes.
    delay: Duration,
}

async fn receive(state: web::Data<ReceiverState>, request: HttpRequest, body: web::Bytes) -> HttpResponse {
    let mut headers = http::HeaderMap::new();
    for (name, value) in request.headers() {
        headers.append(
            http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    state
        .received
        .lock()
        .unwrap()
        .push(Received { headers, body: String::from_utf8(body.to_vec()).unwrap() });
    tokio::time::sleep(state.delay).await;
    let status = state.script.lock().unwrap().pop_front().unwrap_or(204);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).body("scripted")
}

impl Receiver {
    pub fn start(script: &[u16]) -> Self {
        Self::start_slow(script, Duration::ZERO)
    }

    /// A receiver that takes `delay` to answer each request.
    pub fn start_slow(script: &[u16], delay: Duration) -> Self {
        let state = ReceiverState {
            received: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            delay,
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let data = web::Data::new(state.clone());
        let server =
            HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(receive)))
                .workers(1)
                .disable_signals()
                .listen(listener)
                .unwrap()
                .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { url, received: state.received, server: handle }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have come; returns them.
    pub async fn await_received(&self, n: usize) -> Vec<Received> {
        eventually(Duration::from_secs(5), format!("{n} webhook requests"), || async {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let server = self.server.clone();
        tokio::spawn(async move { server.stop(false).await });
    }
}

impl TestApp {
    /// Registers an endpoint; returns its body (with `secret`).
    pub async fn webhook_endpoint(&self, body: Value) -> Value {
        let response = self.admin(reqwest::Method::POST, "/v1/webhook-endpoints", Some(body)).await;
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    pub async fn shown_endpoint(&self, id: &str) -> Value {
        let response = self.admin(reqwest::Method::GET, &format!("/v1/webhook-endpoints/{id}"), None).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// The endpoint's messages, newest first.
    pub async fn webhook_messages(&self, endpoint: &str, query: &str) -> Vec<Value> {
        let path = format!("/v1/webhook-endpoints/{endpoint}/messages{query}");
        let response = self.admin(reqwest::Method::GET, &path, None).await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["messages"].as_array().unwrap().clone()
    }

    /// Waits until the endpoint has `n` delivered messages; returns them.
    pub async fn await_delivered_messages(&self, endpoint: &str, n: usize) -> Vec<Value> {
        eventually(Duration::from_secs(5), format!("{n} delivered messages"), || async {
            let messages = self.webhook_messages(endpoint, "?status=delivered").await;
            (messages.len() >= n).then_some(messages)
        })
        .await
    }

    /// Blocks the customer with an override; returns the override.
    pub async fn block(&self, customer: &str) -> Value {
        let body = json!({"effect": "block", "reason": "test", "expires_at": in_(Duration::from_secs(3600))});
        let response = self.create_override(customer, body).await;
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    pub async fn end_override(&self, customer: &str, created: &Value) {
        let path = format!("/v1/customers/{customer}/overrides/{}", created["id"].as_str().unwrap());
        assert_eq!(self.admin(reqwest::Method::DELETE, &path, None).await.status(), 204);
    }
}

#[tokio::test]
async fn every_message_is_signed_with_the_endpoints_secret_and_tells_the_transition() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[]);
    let endpoint = app.webhook_endpoint(json!({"url": receiver.url, "description": "billing team"})).await;
    let secret = endpoint["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() >= 6 + 32, "{secret}");
    let id = endpoint["id"].as_str().unwrap();
    let listed =
        app.admin(reqwest::Method::GET, "/v1/webhook-endpoints", None).await.json::<Value>().await.unwrap();
    assert_eq!(listed["endpoints"][0]["id"], id);
    assert!(!listed.to_string().contains(secret), "the secret is shown once");

    let (customer, _) = app.sim.add_usage_customer(20.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    assert_eq!(app.check(&customer).await["status"], "ok");
    let created = app.block(&customer).await;
    let first = &app.await_delivered_messages(id, 1).await[0];
    app.end_override(&customer, &created).await;
    let received = receiver.await_received(2).await;
    for request in &received {
        assert!(request.verifies_with(secret), "{:?}", request.headers);
        assert!(
            !request.verifies_with(&usage_gate::webhooks::new_secret().unwrap()),
            "another secret does not verify"
        );
    }
    let blocked = received[0].json();
    assert_eq!(blocked["type"], "customer.usage.blocked");
    assert_eq!(
        (
            blocked["data"]["customer_id"].as_str(),
            blocked["data"]["status"].as_str(),
            blocked["data"]["previous_status"].as_str()
        ),
        (Some(customer.as_str()), Some("blocked"), Some("ok"))
    );
    assert_eq!(blocked["data"]["reasons"], json!(["override_block"]));
    assert_eq!(blocked["data"]["estimate"]["amount"], 20);
    assert_eq!(blocked["data"]["limits"][0]["amount"], 100);
    assert!(chrono::DateTime::parse_from_rfc3339(blocked["timestamp"].as_str().unwrap()).is_ok());
    assert_eq!(received[0].id(), first["id"].as_str().unwrap());
    let recovered = received[1].json();
    assert_eq!(
        (recovered["type"].as_str(), recovered["data"]["previous_status"].as_str()),
        (Some("customer.usage.recovered"), Some("blocked"))
    );
    let attempts = &app.await_delivered_messages(id, 2).await[1]["attempts"];
    assert_eq!((attempts.as_array().unwrap().len(), attempts[0]["status_code"].as_i64()), (1, Some(204)));
}

#[tokio::test]
async fn null_event_types_and_description_are_taken_as_absent_as_the_document_says() {
    let app = TestApp::spawn().await;
    let endpoint = app
        .webhook_endpoint(
            json!({"url": "http://127.0.0.1:9/hooks", "event_types": null, "description": null}),
        )
        .await;
    assert_eq!(endpoint["event_types"], Value::Null, "all types: {endpoint}");
    assert_eq!(endpoint["description"], Value::Null, "{endpoint}");
    let document: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let fields = &document["components"]["schemas"]["NewWebhookEndpoint"]["properties"];
    for field in ["event_types", "description"] {
        assert!(
            fields[field]["type"].as_array().is_some_and(|t| t.contains(&json!("null"))),
            "{field}: {fields}"
        );
    }
}

#[tokio::test]
async fn a_receiver_answering_500_then_204_gets_the_same_webhook_id_twice_and_nothing_more() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[500]);
    let endpoint =
        app.webhook_endpoint(json!({"url": receiver.url, "event_types": ["customer.usage.blocked"]})).await;
    let id = endpoint["id"].as_str().unwrap();
    let (customer, _) = app.sim.add_usage_customer(20.0, json!([{"amount": 100, "action": "DISABLE"}])).await;
    app.check(&customer).await;
    app.block(&customer).await;
    let delivered = app.await_delivered_messages(id, 1).await;
    let attempts: Vec<Option<i64>> =
        delivered[0]["attempts"].as_array().unwrap().iter().map(|a| a["status_code"].as_i64()).collect();
    assert_eq!(attempts, [Some(500), Some(204)]);
    assert!(delivered[0]["attempts"][0]["error"].as_str().unwrap().starts_with("HTTP 500"));
    // Each attempt has exactly the fields the OpenAPI document's MessageAttempt lists, and all of
    // them (built in SQL, so nothing else holds the two together).
    let document: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let schema = &document["components"]["schemas"]["MessageAttempt"];
    let listed: std::collections::BTreeSet<&str> =
        schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    let required: std::collections::BTreeSet<&str> =
        schema["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for attempt in delivered[0]["attempts"].as_array().unwrap() {
        let sent: std::collections::BTreeSet<&str> =
            attempt.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!((&sent, &sent), (&listed, &required), "{attempt}");
    }
    // Delivered is recorded after the 204 came: any further request would have come before.
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].id(), received[1].id());
    assert!(received.iter().all(|r| r.verifies_with(endpoint["secret"].as_str().unwrap())));
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for series in [
        "usage_gate_webhook_attempts_total{outcome=\"failed\"}",
        "usage_gate_webhook_messages_total{outcome=\"delivered\"}",
        "usage_gate_webhook_messages_pending",
        "usage_gate_webhook_lag_seconds",
    ] {
        assert!(metrics.contains(series), "{series} in /metrics");
    }
}

#[tokio::test]
async fn messages_past_retention_are_pruned_unless_still_pending() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[]);
    let endpoint = app.webhook_endpoint(json!({"url": receiver.url})).await;
    let id = endpoint["id"].as_str().unwrap();
    let (customer, _) = app.sim.add_usage_customer(20.0, json!([])).await;
    app.check(&customer).await;
    app.block(&customer).await;
    app.await_delivered_messages(id, 1).await;
    // An old delivered message, and an old one still pending (due tomorrow).
    sqlx::query("UPDATE webhook_messages SET created_at = now() - interval '40 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    let old_pending = sqlx::query_scalar::<_, String>(
        "INSERT INTO webhook_messages (id, endpoint_id, event_type, body, created_at, next_attempt_at)
         VALUES ('msg_old_pending', $1, 'event.dead', '{}', now() - interval '40 days', now() + interval '1 day')
         RETURNING id",
    )
    .bind(uuid::Uuid::parse_str(id).unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let retention = test_settings("http://127.0.0.1:9", "postgres://x@127.0.0.1/x").validate().unwrap();
    let removed =
        usage_gate::retention::prune(&app.pool, &usage_gate::retention::Plan::new(&retention)).await.unwrap();
    assert!(removed.contains(&("webhook_messages", 1)), "{removed:?}");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM webhook_messages").fetch_all(&app.pool).await.unwrap();
    assert_eq!(left, [old_pending]);
    let attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_attempts").fetch_one(&app.pool).await.unwrap();
    assert_eq!(attempts, 0, "the pruned message's attempts go with it");
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[]);
    let endpoint = app.webhook_endpoint(json!({"url": receiver.url})).await;
    let id = endpoint["id"].as_str().unwrap();
    let old = endpoint["secret"].as_str().unwrap();
    let response =
        app.admin(reqwest::Method::POST, &format!("/v1/webhook-endpoints/{id}/rotate-secret"), None).await;
    assert_eq!(response.status(), 200);
    let new = response.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let shown = app.shown_endpoint(id).await;
    assert!(shown["previous_secret_until"].is_string());

    let (customer, _) = app.sim.add_usage_customer(20.0, json!([])).await;
    app.check(&customer).await;
    app.block(&customer).await;
    let received = receiver.await_received(1).await;
    let signatures: Vec<&str> =
        received[0].headers["webhook-signature"].to_str().unwrap().split(' ').collect();
    assert_eq!(signatures.len(), 2);
    assert!(signatures.iter().all(|s| s.starts_with("v1,")));
    assert!(received[0].verifies_with(old) && received[0].verifies_with(&new));
    assert_eq!(app.audit_rows("webhook_endpoint.rotate_secret").await.len(), 1);
}

#[tokio::test]
async fn a_410_disables_the_endpoint_until_it_is_enabled() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[410]);
    let endpoint = app.webhook_endpoint(json!({"url": receiver.url})).await;
    let id = endpoint["id"].as_str().unwrap();
    let (customer, _) = app.sim.add_usage_customer(20.0, json!([])).await;
    app.check(&customer).await;
    let created = app.block(&customer).await;
    let failed = eventually(Duration::from_secs(5), "the message failed", || async {
        let failed = app.webhook_messages(id, "?status=failed").await;
        (!failed.is_empty()).then_some(failed)
    })
    .await;
    assert_eq!(failed[0]["attempts"][0]["status_code"], 410);
    let shown = app.shown_endpoint(id).await;
    assert!(shown["disabled_at"].is_string(), "{shown}");
    // Nothing is queued for a disabled endpoint.
    app.end_override(&customer, &created).await;
    eventually(Duration::from_secs(5), "the way back recorded", || async {
        (app.audit_rows("decision.transition").await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(app.webhook_messages(id, "").await.len(), 1);
    assert_eq!(receiver.received().len(), 1);
    // Enabled again, it gets what comes next.
    let enabled = app.admin(reqwest::Method::POST, &format!("/v1/webhook-endpoints/{id}/enable"), None).await;
    assert_eq!(enabled.status(), 200);
    app.block(&customer).await;
    assert_eq!(app.await_delivered_messages(id, 1).await[0]["event_type"], "customer.usage.blocked");
    // A failed message can be sent again by hand, with its webhook-id.
    let message = failed[0]["id"].as_str().unwrap();
    let path = format!("/v1/webhook-endpoints/{id}/messages/{message}/resend");
    assert_eq!(app.admin(reqwest::Method::POST, &path, None).await.status(), 202);
    let received = receiver.await_received(3).await;
    assert_eq!(received[2].id(), message);
}

#[tokio::test]
async fn a_slow_receiver_does_not_hold_up_another_endpoints_messages() {
    let app =
        TestApp::spawn_with(|raw| raw.outbound_webhooks.timeout = std::time::Duration::from_millis(10_000))
            .await;
    let slow = Receiver::start_slow(&[], Duration::from_secs(5));
    let fast = Receiver::start(&[]);
    let slow_endpoint = app.webhook_endpoint(json!({"url": slow.url})).await;
    app.webhook_endpoint(json!({"url": fast.url})).await;
    let (customer, _) = app.sim.add_usage_customer(20.0, json!([])).await;
    app.check(&customer).await;
    let created = app.block(&customer).await;
    slow.await_received(1).await;
    app.end_override(&customer, &created).await;
    // While the slow receiver still holds its first message, the fast one gets both.
    let received = fast.await_received(2).await;
    assert_eq!(received[1].json()["type"], "customer.usage.recovered");
    let slow_delivered =
        app.webhook_messages(slow_endpoint["id"].as_str().unwrap(), "?status=delivered").await;
    assert!(slow_delivered.is_empty(), "the slow receiver has not answered yet: {slow_delivered:?}");
}

#[tokio::test]
async fn a_dead_outbox_event_is_told_as_event_dead() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[]);
    let endpoint = app.webhook_endpoint(json!({"url": receiver.url, "event_types": ["event.dead"]})).await;
    let event =
        json!({"event_id": "doomed-1", "subscription": ACME_SUBSCRIPTION, "code": "storage_tb", "value": 3});
    assert_eq!(app.post_event(&event).await.status(), 202);
    let received = receiver.await_received(1).await;
    let told = received[0].json();
    assert_eq!(told["type"], "event.dead");
    assert_eq!(
        (told["data"]["event_id"].as_str(), told["data"]["upstream_status"].as_i64()),
        (Some("doomed-1"), Some(400))
    );
    assert!(told["data"]["error"].as_str().unwrap().contains("storage_tb"), "{told}");
    assert!(received[0].verifies_with(endpoint["secret"].as_str().unwrap()));
}

#[tokio::test]
async fn an_expired_override_is_told_and_endpoints_are_validated() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[]);
    let endpoint = app
        .webhook_endpoint(json!({"url": receiver.url, "event_types": ["customer.override.expired"]}))
        .await;
    let (customer, _) = app.sim.add_usage_customer(20.0, json!([])).await;
    let body = json!({"effect": "allow", "reason": "trial", "expires_at": in_(Duration::from_millis(300))});
    assert_eq!(app.create_override(&customer, body).await.status(), 201);
    let told = receiver.await_received(1).await[0].json();
    assert_eq!(told["type"], "customer.override.expired");
    assert_eq!(
        (told["data"]["customer_id"].as_str(), told["data"]["override"]["reason"].as_str()),
        (Some(customer.as_str()), Some("trial"))
    );
    assert!(receiver.received()[0].verifies_with(endpoint["secret"].as_str().unwrap()));

    let invalid = app
        .admin(
            reqwest::Method::POST,
            "/v1/webhook-endpoints",
            Some(json!({"url": "ftp://x", "event_types": ["nope"]})),
        )
        .await;
    let problem = assert_problem(invalid, 422, "validation_failed").await;
    let fields: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["url", "event_types[0]"]);
    let with_check_key =
        app.http.get(app.url("/v1/webhook-endpoints")).bearer_auth(CHECK_KEY).send().await.unwrap();
    assert_problem(with_check_key, 403, "forbidden").await;
}

#[tokio::test]
async fn endpoints_may_not_reach_inside_unless_a_subnet_is_opened() {
    let app =
        TestApp::spawn_with(|raw| raw.outbound_webhooks.allowed_subnets = vec!["10.9.0.0/16".into()]).await;
    for (url, rule) in [
        ("http://127.0.0.1:5432/", "loopback"),
        ("http://localhost:8080/hooks", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link_local"),
        ("http://[::ffff:127.0.0.1]/hooks", "loopback"),
        ("http://[fd00::1]/hooks", "private"),
        ("http://10.8.0.1/hooks", "private"),
        ("http://0.0.0.0:9/", "unspecified"),
        // IPv6 forms that carry an IPv4 address: IPv4-compatible, NAT64, 6to4, Teredo.
        ("http://[::127.0.0.1]/hooks", "loopback"),
        ("http://[::a9fe:a9fe]/latest/meta-data/", "link_local"),
        ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "link_local"),
        ("http://[2002:a00:1::1]/hooks", "private"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hooks", "loopback"),
    ] {
        let response =
            app.admin(reqwest::Method::POST, "/v1/webhook-endpoints", Some(json!({"url": url}))).await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(problem["errors"][0]["field"], "url", "{url}");
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{rule}: ")), "{url}: {message}");
        assert!(message.contains("outbound_webhooks.allowed_subnets"), "{message}");
    }
    // An opened subnet, and a public address, are taken.
    for url in ["http://10.9.1.2/hooks", "https://203.0.113.9/hooks", "http://[64:ff9b::10.9.3.4]/hooks"] {
        let response =
            app.admin(reqwest::Method::POST, "/v1/webhook-endpoints", Some(json!({"url": url}))).await;
        assert_eq!(response.status(), 201, "{url}");
    }
}

#[tokio::test]
async fn each_attempt_is_judged_on_the_address_it_connects_to() {
    // Endpoints stored while loopback was open (an earlier configuration); it is closed now.
    let app = TestApp::spawn_with(|raw| raw.outbound_webhooks.allowed_subnets = vec![]).await;
    let receiver = Receiver::start(&[]);
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let mut endpoints = vec![];
    for url in [receiver.url.clone(), by_name] {
        let new = NewEndpoint { url, event_types: None, description: None };
        let secret = usage_gate::webhooks::new_secret().unwrap();
        endpoints.push(
            store::create(&app.pool, &Sealer::default(), &new, &secret, &Actor::usage_gate()).await.unwrap(),
        );
    }
    let (customer, _) = app.sim.add_usage_customer(20.0, json!([])).await;
    app.check(&customer).await;
    app.block(&customer).await;
    for endpoint in &endpoints {
        let messages = eventually(Duration::from_secs(5), "a refused attempt", || async {
            let messages = app.webhook_messages(&endpoint.id.to_string(), "").await;
            messages.first().filter(|m| !m["attempts"].as_array().unwrap().is_empty()).cloned()
        })
        .await;
        let error = messages["attempts"][0]["error"].as_str().unwrap();
        assert!(error.starts_with("refused: 127.0.0.1 is a loopback address"), "{}: {error}", endpoint.url);
        assert_eq!(messages["status"], "pending", "retried on the schedule, as any failed attempt");
    }
    assert!(receiver.received().is_empty(), "nothing reached the receiver");
}

#[tokio::test]
async fn a_hanging_endpoint_with_a_backlog_takes_a_few_slots_and_not_the_others_turn() {
    let attempt = Duration::from_secs(5);
    let app = TestApp::spawn_with(|raw| {
        raw.outbound_webhooks.timeout = std::time::Duration::from_millis(attempt.as_millis() as u64);
        raw.outbound_webhooks.concurrency = 16;
        raw.outbound_webhooks.max_attempts_per_endpoint = 4;
    })
    .await;
    let hanging = Receiver::start_slow(&[], Duration::from_secs(60));
    let fast = Receiver::start(&[]);
    let hanging_endpoint = app.webhook_endpoint(json!({"url": hanging.url})).await;
    // 100 messages due for the hanging endpoint, older than anything after them.
    sqlx::query(
        "INSERT INTO webhook_messages (id, endpoint_id, event_type, body, next_attempt_at)
         SELECT 'msg_backlog_' || n, $1, 'customer.usage.blocked', '{}', now() - interval '1 minute'
         FROM generate_series(1, 100) n",
    )
    .bind(Uuid::parse_str(hanging_endpoint["id"].as_str().unwrap()).unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    hanging.await_received(4).await;
    app.webhook_endpoint(json!({"url": fast.url})).await;
    let (customer, _) = app.sim.add_usage_customer(20.0, json!([])).await;
    app.check(&customer).await;
    app.block(&customer).await;
    // Without a cap per endpoint, the 16 slots would go to the backlog, 16 at a time, each
    // held for a whole attempt: the message would wait several attempts' time.
    let started = std::time::Instant::now();
    let received = fast.await_received(1).await;
    assert_eq!(received[0].json()["type"], "customer.usage.blocked");
    assert!(started.elapsed() < attempt, "delayed {:?}, more than one attempt's time", started.elapsed());
    assert!(hanging.received().len() <= 4, "{} attempts at once to one endpoint", hanging.received().len());
}

/// The endpoint's secret columns as stored.
async fn stored_secrets(pool: &sqlx::PgPool, id: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT secret, previous_secret FROM webhook_endpoints WHERE id = $1")
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_one(pool)
        .await
        .unwrap()
}

fn key(byte: u8) -> secrecy::SecretString {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([byte; 32]).into()
}

#[tokio::test]
async fn signing_secrets_are_sealed_at_rest_and_a_key_rotation_seals_them_again() {
    // Without a key (start-up warns), a secret is stored as it is.
    let mut plain = TestApp::spawn().await;
    let receiver = Receiver::start(&[]);
    let endpoint = plain.webhook_endpoint(json!({"url": receiver.url})).await;
    let (id, first) = (endpoint["id"].as_str().unwrap(), endpoint["secret"].as_str().unwrap().to_owned());
    assert_eq!(stored_secrets(&plain.pool, id).await, (first.clone(), None));
    plain.shut_down().await;

    // With a key: the plain row is sealed at start-up, and a rotated secret is stored sealed.
    let mut sealed = plain.second_instance_with(|raw| raw.secrets.key = key(1)).await;
    let (stored, _) = stored_secrets(&sealed.pool, id).await;
    let key_one = stored.split(':').nth(2).unwrap().to_owned();
    assert!(stored.starts_with("enc:v1:") && !stored.contains(&first[6..]), "{stored}");
    let path = format!("/v1/webhook-endpoints/{id}/rotate-secret");
    let rotated = sealed.admin(reqwest::Method::POST, &path, None).await.json::<Value>().await.unwrap();
    let second = rotated["secret"].as_str().unwrap().to_owned();
    let (stored, previous) = stored_secrets(&sealed.pool, id).await;
    assert!(stored.starts_with("enc:v1:") && !stored.contains(&second[6..]), "{stored}");
    assert!(previous.as_deref().is_some_and(|p| p.starts_with("enc:v1:")), "{previous:?}");
    // Deliveries are signed with the secrets as given: both, during the rotation.
    let (customer, _) = sealed.sim.add_usage_customer(20.0, json!([])).await;
    sealed.check(&customer).await;
    sealed.block(&customer).await;
    let delivered = receiver.await_received(1).await;
    assert!(delivered[0].verifies_with(&second) && delivered[0].verifies_with(&first));
    sealed.shut_down().await;

    // A new key with the old one as previous: every value is sealed again under the new key.
    let (settings, pool, listener) = sealed.second_instance_parts(|raw| raw.secrets.key = key(2)).await;
    let refused = usage_gate::startup::Application::build_with(settings, pool, listener).await.err().unwrap();
    assert!(refused.to_string().contains("secrets.key"), "{refused}");
    let mut moved = sealed
        .second_instance_with(|raw| {
            raw.secrets.key = key(2);
            raw.secrets.previous_key = key(1);
        })
        .await;
    let (stored, previous) = stored_secrets(&moved.pool, id).await;
    let key_two = stored.split(':').nth(2).unwrap();
    assert_ne!(key_two, key_one);
    assert_eq!(previous.unwrap().split(':').nth(2), Some(key_two));
    moved.shut_down().await;
    // The previous key is no longer needed.
    let mut after = moved.second_instance_with(|raw| raw.secrets.key = key(2)).await;
    after.shut_down().await;
}

/// A listener that counts the connections made to it and answers none.
fn counting_listener(
    address: &str,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind(address).unwrap();
    let bound = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    (bound, count)
}

#[tokio::test]
async fn a_redirect_to_an_inside_address_is_not_followed_the_attempt_fails() {
    // Only 127.0.0.1 is opened; 127.0.0.2 (loopback too) stands for what must not be reached.
    let app =
        TestApp::spawn_with(|raw| raw.outbound_webhooks.allowed_subnets = vec!["127.0.0.1/32".into()]).await;
    let (inside, reached) = counting_listener("127.0.0.2:0");
    let redirecting = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", redirecting.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in redirecting.incoming().flatten() {
            let _ = stream.read(&mut [0u8; 65536]);
            let answer = format!(
                "HTTP/1.1 302 Found\r\nLocation: http://{inside}/latest/meta-data/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    let endpoint = app.webhook_endpoint(json!({"url": url})).await;
    let id = endpoint["id"].as_str().unwrap();
    app.check(ACME).await;
    app.block(ACME).await;
    let attempts = eventually(Duration::from_secs(10), "an attempt answered 302", || async {
        let messages = app.webhook_messages(id, "").await;
        let attempts = messages.first()?["attempts"].as_array()?.clone();
        (!attempts.is_empty()).then_some(attempts)
    })
    .await;
    assert_eq!(attempts[0]["status_code"], 302, "a failed attempt: {attempts:?}");
    let message = &app.webhook_messages(id, "").await[0];
    assert_ne!(message["status"], "delivered", "{message}");
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the redirect's target");
}

#[tokio::test]
async fn deliveries_ignore_the_environments_proxy() {
    // A process of its own: its environment names a proxy, which deliveries must not use.
    let (proxy, proxied) = counting_listener("127.0.0.1:0");
    let sim = start_sim(usage_gate::sim::Seed::built_in());
    // BillaBear's client may use the environment's proxy (an egress proxy to BillaBear's cloud):
    // it is reached as localhost, which NO_PROXY exempts; the receiver is 127.0.0.1, which
    // nothing exempts.
    let billabear = sim.base_url().replace("127.0.0.1", "localhost");
    let config = write_config(&format!(
        "[billabear]\nbase_url = \"{billabear}\"\napi_key = \"{SIM_KEY}\"\n\
         [outbound_webhooks]\nallowed_subnets = [\"127.0.0.0/8\"]\nretry_schedule_ms = [100]\npoll_interval_ms = 20\n\
         [[auth.keys]]\nname = \"operator\"\nkey = \"{ALL_KEY}\"\nscopes = [\"admin\", \"check\"]\n"
    ));
    let proxy_url = format!("http://{proxy}");
    let (_service, base) = serve_process_with(&config, &fresh_database_url().await, |command| {
        command
            .envs(
                ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"]
                    .map(|v| (v, &proxy_url)),
            )
            .env("NO_PROXY", "localhost");
    })
    .await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let receiver = Receiver::start(&[]);
    let created = http
        .post(format!("{base}/v1/webhook-endpoints"))
        .bearer_auth(ALL_KEY)
        .json(&json!({"url": receiver.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let checked =
        http.get(format!("{base}/v1/customers/{ACME}/check")).bearer_auth(ALL_KEY).send().await.unwrap();
    assert_eq!(checked.status(), 200);
    let body = json!({"effect": "block", "reason": "test", "expires_at": in_(Duration::from_secs(3600))});
    let blocked = http
        .post(format!("{base}/v1/customers/{ACME}/overrides"))
        .bearer_auth(ALL_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(blocked.status(), 201);
    eventually(Duration::from_secs(10), "the message at the receiver", || async {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    assert_eq!(proxied.load(std::sync::atomic::Ordering::SeqCst), 0, "the proxy saw nothing");
}
