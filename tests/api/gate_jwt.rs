//! The gate with `[gate.jwt]`: the customer comes from the end user's verified token, never from
//! a header the client sent; every kind of bad token is a 401 before any check; keys rotate
//! through the JWKS.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;

const ISSUER: &str = JWT_ISSUER;
const AUDIENCE: &str = JWT_AUDIENCE;
const SECRET: &str = "an-hs256-secret-of-at-least-32-characters";

fn fixtures() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt_keys.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims for `customer`, valid for an hour, with `change` applied.
fn claims(customer: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut claims =
        json!({"sub": customer, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 3600, "iat": now()});
    change(&mut claims);
    claims
}

fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .unwrap()
}

/// Signed with the fixture key `kid` (ES256), naming it in the header.
fn es256(claims: &Value, kid: &str) -> String {
    let pem = fixtures()[kid]["private_pem"].as_str().unwrap().to_owned();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()).unwrap()
}

async fn gate(
    app: &TestApp,
    token: Option<&str>,
    key: Option<&str>,
    forged: Option<&str>,
) -> reqwest::Response {
    let mut request = app.http.get(app.url("/v1/gate"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("X-Usage-Gate-Key", key);
    }
    if let Some(customer) = forged {
        request = request.header("X-Customer-Id", customer);
    }
    request.send().await.unwrap()
}

async fn hs256_app() -> TestApp {
    spawn_with_jwt(|jwt| jwt.hs256_secret = SECRET.to_owned().into()).await
}

#[tokio::test]
async fn the_customer_is_the_one_the_verified_token_names() {
    let app = hs256_app().await;
    let token = hs256(&claims(ACME, |_| {}), SECRET);
    let allowed = gate(&app, Some(&token), Some(CHECK_KEY), None).await;
    assert_eq!(allowed.status(), 204);
    assert_eq!(allowed.headers()["x-usage-status"], "ok");

    // A forged customer header changes nothing: still ACME's answer.
    let forged = gate(&app, Some(&token), Some(CHECK_KEY), Some(HOOLI_DISABLED)).await;
    assert_eq!(forged.status(), 204);

    // A token for a blocked customer is blocked, whatever header says otherwise.
    let blocked = hs256(&claims(HOOLI_DISABLED, |_| {}), SECRET);
    let response = gate(&app, Some(&blocked), Some(CHECK_KEY), Some(ACME)).await;
    let body = assert_problem(response, 403, "usage_blocked").await;
    assert_eq!(body["customer_id"], HOOLI_DISABLED);
}

#[tokio::test]
async fn every_bad_token_is_a_401_before_any_check() {
    let app = hs256_app().await;
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "token_missing"),
        ("not a JWT", Some("not-a-jwt".into()), "token_invalid"),
        ("expired", Some(hs256(&claims(ACME, |c| c["exp"] = json!(now() - 3600)), SECRET)), "token_expired"),
        (
            "another issuer",
            Some(hs256(&claims(ACME, |c| c["iss"] = json!("https://evil.example/")), SECRET)),
            "token_invalid",
        ),
        (
            "another audience",
            Some(hs256(&claims(ACME, |c| c["aud"] = json!("another-service")), SECRET)),
            "token_invalid",
        ),
        (
            "no audience",
            Some(hs256(
                &claims(ACME, |c| {
                    c.as_object_mut().unwrap().remove("aud");
                }),
                SECRET,
            )),
            "token_invalid",
        ),
        (
            "not yet valid",
            Some(hs256(&claims(ACME, |c| c["nbf"] = json!(now() + 3600)), SECRET)),
            "token_invalid",
        ),
        (
            "wrong secret",
            Some(hs256(&claims(ACME, |_| {}), "another-secret-of-at-least-32-characters!")),
            "token_invalid",
        ),
        ("no customer", Some(hs256(&claims("not-a-uuid", |_| {}), SECRET)), "token_invalid"),
        ("alg none", Some(unsigned(&claims(ACME, |_| {}))), "token_invalid"),
        // An asymmetric algorithm where a secret is configured.
        ("ES256", Some(es256(&claims(ACME, |_| {}), "key-a")), "token_invalid"),
    ];
    for (what, token, code) in cases {
        let response = gate(&app, token.as_deref(), Some(CHECK_KEY), Some(ACME)).await;
        assert_eq!(
            response.headers().get("www-authenticate").map(|v| v.to_str().unwrap()),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
        let body = assert_problem(response, 401, code).await;
        assert!(body["detail"].as_str().unwrap().contains("token"), "{what}: {body}");
    }
    // No check was made for any of them: BillaBear was never asked for the customer, as it is
    // for a valid token.
    let path = format!("GET /api/v1/customer/{ACME}");
    let fetches = || app.sim.path_count(&path);
    assert_eq!(fetches().await, 0);
    let valid = gate(&app, Some(&hs256(&claims(ACME, |_| {}), SECRET)), Some(CHECK_KEY), None).await;
    assert_eq!(valid.status(), 204);
    assert_eq!(fetches().await, 1, "the count sees a check's fetch");

    // usage-gate's own key must come in X-Usage-Gate-Key: the bearer is the end user's.
    let token = hs256(&claims(ACME, |_| {}), SECRET);
    assert_problem(gate(&app, Some(&token), None, None).await, 401, "unauthorized").await;
    assert_problem(gate(&app, Some(&token), Some(EVENTS_KEY), None).await, 403, "forbidden").await;
}

/// A token with `"alg": "none"` and no signature.
fn unsigned(claims: &Value) -> String {
    use base64::Engine;
    let encode = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", encode(&json!({"alg": "none", "typ": "JWT"})), encode(claims))
}

/// An identity provider's JWKS endpoint whose keys the test changes.
async fn jwks_server(keys: Arc<Mutex<Value>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        let keys = keys.clone();
        App::new().route(
            "/.well-known/jwks.json",
            web::get().to(move || {
                let body = keys.lock().unwrap().clone();
                async move { HttpResponse::Ok().json(body) }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    url
}

#[tokio::test]
async fn keys_rotate_through_the_jwks_and_an_hmac_token_never_passes_as_a_public_key() {
    let fixtures = fixtures();
    let jwks = Arc::new(Mutex::new(json!({"keys": [fixtures["key-a"]["jwk"], fixtures["rsa-1"]["jwk"]]})));
    let url = jwks_server(jwks.clone()).await;
    let app = spawn_with_jwt(|jwt| jwt.jwks_url = url.clone()).await;
    let before = es256(&claims(ACME, |_| {}), "key-a");
    assert_eq!(gate(&app, Some(&before), Some(CHECK_KEY), None).await.status(), 204);

    // The provider rotates: key-b in, key-a out. A token signed with key-b names a key id
    // usage-gate has not seen, so it fetches the JWKS again and accepts it.
    *jwks.lock().unwrap() = json!({"keys": [fixtures["key-b"]["jwk"], fixtures["rsa-1"]["jwk"]]});
    let after = es256(&claims(ACME, |_| {}), "key-b");
    assert_eq!(gate(&app, Some(&after), Some(CHECK_KEY), None).await.status(), 204);
    // key-a is gone with the refresh.
    assert_problem(gate(&app, Some(&before), Some(CHECK_KEY), None).await, 401, "token_invalid").await;

    // Algorithm confusion: HS256 "signed" with the RSA key's public PEM as the secret.
    let public_pem = fixtures["rsa-1"]["public_pem"].as_str().unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims(ACME, |_| {}),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    assert_problem(gate(&app, Some(&confused), Some(CHECK_KEY), None).await, 401, "token_invalid").await;
}

#[test]
fn jwt_settings_refuse_what_would_be_unsafe() {
    use usage_gate::config::JwtSettings;
    type Change = fn(&mut JwtSettings);
    // The problems the settings have with `source` set up and then `change` made, as one text.
    let problems = |source: Change, change: Change| -> String {
        let mut raw = test_settings("http://127.0.0.1:1/api/v1", "postgres://postgres@127.0.0.1:5432/none");
        raw.gate.jwt.issuer = ISSUER.into();
        raw.gate.jwt.audience = AUDIENCE.into();
        source(&mut raw.gate.jwt);
        change(&mut raw.gate.jwt);
        raw.validate().err().map(|e| e.to_string()).unwrap_or_default()
    };
    let hs: Change = |jwt| jwt.hs256_secret = SECRET.to_owned().into();
    let jwks: Change = |jwt| jwt.jwks_url = "https://id.example.com/jwks".into();
    assert_eq!(problems(hs, |_| {}), "");
    assert_eq!(problems(jwks, |_| {}), "");
    let unsafe_ones: [(Change, Change, &str); 8] = [
        (hs, |jwt| jwt.audience.clear(), "gate.jwt.audience"),
        (hs, |jwt| jwt.issuer.clear(), "gate.jwt.issuer"),
        (hs, |jwt| jwt.algorithms = vec!["RS256".into()], "gate.jwt.algorithms"),
        (hs, |jwt| jwt.algorithms = vec!["none".into()], "gate.jwt.algorithms"),
        (hs, |jwt| jwt.hs256_secret = "short".to_owned().into(), "gate.jwt.hs256_secret"),
        (hs, |jwt| jwt.jwks_url = "https://id.example.com/jwks".into(), "gate.jwt: set one of"),
        (jwks, |jwt| jwt.algorithms = vec!["HS256".into()], "gate.jwt.algorithms"),
        (jwks, |jwt| jwt.jwks_url = "ftp://id.example.com/jwks".into(), "gate.jwt.jwks_url"),
    ];
    for (i, (source, change, key)) in unsafe_ones.into_iter().enumerate() {
        let found = problems(source, change);
        assert!(found.contains(key), "case {i}: expected {key} in {found:?}");
    }
}

#[tokio::test]
async fn keys_may_come_from_a_jwks_file() {
    let fixtures = fixtures();
    let file = std::env::temp_dir().join(format!("usage-gate-jwks-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, json!({"keys": [fixtures["key-b"]["jwk"]]}).to_string()).unwrap();
    let app = spawn_with_jwt(|jwt| jwt.jwks_file = file.to_str().unwrap().into()).await;
    let token = es256(&claims(ACME, |_| {}), "key-b");
    assert_eq!(gate(&app, Some(&token), Some(CHECK_KEY), None).await.status(), 204);
    // A key the file does not hold: refused (a file is not fetched again).
    let other = es256(&claims(ACME, |_| {}), "key-a");
    assert_problem(gate(&app, Some(&other), Some(CHECK_KEY), None).await, 401, "token_invalid").await;
    std::fs::remove_file(&file).unwrap();
}
