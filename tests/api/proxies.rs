//! deploy/nginx and deploy/caddy, run through Debian's nginx and Caddy in front of a small
//! application and a real usage-gate (verifying the end user's token, `[gate.jwt]`): what a user
//! behind each proxy sees when allowed, blocked, forging a customer header, without a valid
//! token, and with usage-gate down.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "a-proxy-test-secret-of-32-characters-or-more";

fn token(customer: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"sub": customer, "iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "exp": now + 3600});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The application behind the proxy: answers 200 with the headers it was sent that matter here.
async fn application() -> String {
    async fn echo(req: HttpRequest) -> HttpResponse {
        let header = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap_or("").to_owned());
        HttpResponse::Ok().json(json!({
            "app": true,
            "x_customer_id": header("x-customer-id"),
            "x_usage_status": header("x-usage-status"),
        }))
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = HttpServer::new(|| App::new().default_service(web::to(echo)))
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
    tokio::spawn(server);
    address
}

/// `file` with the example addresses and key replaced by the test's.
fn rendered(file: &Path, gate: &str, app: &str, proxy: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    for example in ["127.0.0.1:8080", "127.0.0.1:3000", "127.0.0.1:8000", "A-KEY-WITH-SCOPE-CHECK"] {
        assert!(text.contains(example), "{} names {example}", file.display());
    }
    text.replace("127.0.0.1:8080", gate)
        .replace("127.0.0.1:3000", app)
        .replace("127.0.0.1:8000", proxy)
        .replace("A-KEY-WITH-SCOPE-CHECK", CHECK_KEY)
}

async fn wait_until_listening(base: &str) {
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), format!("the proxy at {base}"), || async {
        http.get(format!("{base}/healthz-of-nobody")).send().await.ok().map(|_| ())
    })
    .await;
}

async fn send(
    base: &str,
    token: Option<&str>,
    forged: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    send_to(base, "/api/things", token, forged).await
}

async fn send_to(
    base: &str,
    path: &str,
    token: Option<&str>,
    forged: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(customer) = forged {
        request = request.header("X-Customer-Id", customer);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// What every proxy must do while usage-gate runs, `blocked` its `gate.blocked_status`.
async fn behaves_in_front_of_the_application(base: &str, proxy: &str, blocked: u16) {
    // Allowed: the application answers; the decision's status reaches the client (nginx) or
    // the application (Caddy's copy_headers).
    let (status, headers, body) = send(base, Some(&token(ACME)), None).await;
    assert_eq!(status, 200, "{proxy}: allowed reaches the app: {body}");
    assert_eq!(body["app"], true, "{proxy}");
    let seen = headers.get("x-usage-status").map(|v| v.to_str().unwrap().to_owned());
    assert!(seen.as_deref() == Some("ok") || body["x_usage_status"] == "ok", "{proxy}: {headers:?} {body}");

    // A forged customer header neither reaches the application nor changes the decision.
    let (status, _, body) = send(base, Some(&token(ACME)), Some(HOOLI_DISABLED)).await;
    assert_eq!(status, 200, "{proxy}");
    assert!(body["x_customer_id"].is_null() || body["x_customer_id"] == "", "{proxy}: the app saw {body}");
    let (status, headers, body) = send(base, Some(&token(HOOLI_DISABLED)), Some(ACME)).await;
    assert_eq!(status, blocked, "{proxy}: a blocked customer's token is blocked whatever the header says");
    assert_ne!(body["app"], true, "{proxy}: blocked never reaches the application");
    assert_eq!(
        headers.get("x-usage-status").map(|v| v.to_str().unwrap()),
        Some("blocked"),
        "{proxy}: {headers:?}"
    );

    // A part of the application that needs a feature of the plan (the file's /sso/): Acme's plan
    // has it; Globex's does not, so Globex is refused there and nowhere else.
    let globex = "22222222-2222-4222-8222-222222222222";
    let (status, _, body) = send_to(base, "/sso/login", Some(&token(ACME)), None).await;
    assert_eq!((status, &body["app"]), (200, &json!(true)), "{proxy}: {body}");
    let (status, headers, body) = send_to(base, "/sso/login?next=/", Some(&token(globex)), None).await;
    assert_eq!(status, blocked, "{proxy}: a plan without the feature is refused there: {body}");
    assert_ne!(body["app"], true, "{proxy}");
    let reasons = headers.get("x-usage-reasons").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(reasons.contains("feature_not_in_plan"), "{proxy}: {headers:?}");
    let (status, _, _) = send_to(base, "/ssolike", Some(&token(globex)), None).await;
    assert_eq!(status, 200, "{proxy}: only the feature's own paths need it");
    let (status, _, _) = send(base, Some(&token(globex)), None).await;
    assert_eq!(status, 200, "{proxy}: elsewhere Globex is allowed");

    // No token, or a bad one: 401, and the application is not reached.
    for bad in [None, Some("not-a-jwt".to_owned()), Some(token("not-a-uuid"))] {
        let (status, _, body) = send(base, bad.as_deref(), Some(ACME)).await;
        assert_eq!(status, 401, "{proxy}: {bad:?}");
        assert_ne!(body["app"], true, "{proxy}");
    }
}

/// A usage-gate verifying tokens, the application, and `file` from deploy/ rendered for them into
/// a scratch directory as `name`; None when `tool` is missing.
struct Setup {
    gate: TestApp,
    proxy: String,
    dir: PathBuf,
}

async fn setup(tool: &str, version: &str, file: &str, name: &str, blocked: u16) -> Option<Setup> {
    if !have_tool(tool, &[version]) {
        return None;
    }
    let gate = TestApp::spawn_with(|raw| {
        raw.gate.jwt.hs256_secret = SECRET.to_owned().into();
        raw.gate.jwt.issuer = JWT_ISSUER.into();
        raw.gate.jwt.audience = JWT_AUDIENCE.into();
        raw.gate.blocked_status = blocked;
    })
    .await;
    let app = application().await;
    let proxy = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("usage-gate-proxy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = rendered(&deploy(file), gate.address.trim_start_matches("http://"), &app, &proxy);
    std::fs::write(dir.join(name), text).unwrap();
    Some(Setup { gate, proxy, dir })
}

fn spawn(command: &mut std::process::Command) -> Child {
    Child(command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap())
}

#[tokio::test]
async fn nginx_in_front_blocks_with_each_blocked_status_and_fails_open_when_usage_gate_is_down() {
    // auth_request turns any answer but 2xx, 401 and 403 into a 500, which the file's fail-open
    // path must not take for a blocked customer's 402 or 429.
    for blocked in [402, 403, 429] {
        let Some(Setup { mut gate, proxy, dir }) =
            setup("nginx", "-v", "nginx/usage-gate.conf", "usage-gate.conf", blocked).await
        else {
            return;
        };
        let _nginx = nginx(&dir);
        // usage-gate down: the documented choice for nginx is to fail open (even a blocked
        // customer's request goes on unchecked).
        let (status, body) =
            through(&proxy, &format!("nginx (blocked_status {blocked})"), &mut gate, blocked).await;
        assert_eq!(status, 200, "nginx fails open: {body}");
        assert_eq!(body["app"], true);
    }
}

/// nginx on the rendered file in `dir`, in the foreground as one process (no master, no
/// workers to outlive the test).
fn nginx(dir: &Path) -> Child {
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             include {d}/usage-gate.conf;\n}}\n"
        ),
    )
    .unwrap();
    let conf = dir.join("nginx.conf");
    let conf = conf.to_str().unwrap();
    let prefix = format!("{d}/");
    let error_log = format!("{d}/error.log");
    let test = std::process::Command::new("nginx")
        .args(["-t", "-p", &prefix, "-e", &error_log, "-c", conf])
        .output()
        .unwrap();
    assert!(test.status.success(), "nginx -t: {}", String::from_utf8_lossy(&test.stderr));
    spawn(std::process::Command::new("nginx").args([
        "-p",
        &prefix,
        "-e",
        &error_log,
        "-c",
        conf,
        "-g",
        "daemon off; master_process off;",
    ]))
}

#[tokio::test]
async fn caddy_in_front_enforces_and_fails_closed_when_usage_gate_is_down() {
    let Some(Setup { mut gate, proxy, dir }) =
        setup("caddy", "version", "caddy/Caddyfile", "Caddyfile", 403).await
    else {
        return;
    };
    let file = dir.join("Caddyfile");
    let _caddy = spawn(
        std::process::Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config", file.to_str().unwrap()])
            .env("HOME", &dir)
            .env("XDG_DATA_HOME", &dir)
            .env("XDG_CONFIG_HOME", &dir),
    );
    // usage-gate down: the documented choice for Caddy is to fail closed (502).
    let (status, body) = through(&proxy, "Caddy", &mut gate, 403).await;
    assert_eq!(status, 502, "Caddy fails closed: {body}");
}

/// Once the proxy listens: what it must do while usage-gate runs, then usage-gate stopped and
/// what a blocked customer's request gets.
async fn through(proxy: &str, name: &str, gate: &mut TestApp, blocked: u16) -> (u16, Value) {
    let base = format!("http://{proxy}");
    wait_until_listening(&base).await;
    behaves_in_front_of_the_application(&base, name, blocked).await;
    gate.shut_down().await;
    let (status, _, body) = send(&base, Some(&token(HOOLI_DISABLED)), None).await;
    (status, body)
}
