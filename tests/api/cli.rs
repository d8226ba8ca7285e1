//! The binary: configuration errors exit non-zero before anything binds; migrate creates and
//! migrates the database.

use crate::helpers::*;

const VALID: &str = r#"
[billabear]
api_key = "bb-secret-key"
[[auth.keys]]
name = "ops"
key = "ops-secret-key-0123"
scopes = ["admin"]
"#;

#[test]
fn a_bad_value_names_the_key_and_exits_2_before_binding() {
    // Hold a port: if serve got as far as binding, it would fail differently (exit 1).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = write_config(VALID);
    let output = usage_gate()
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("USAGE_GATE__BILLABEAR__TIMEOUT_MS", "0")
        .env("USAGE_GATE__SERVER__ADDRESS", held.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("billabear.timeout_ms: must be between 1 and 60000, got 0"), "{stderr}");
}

#[test]
fn config_prints_effective_values_with_secrets_redacted() {
    let config = write_config(VALID);
    let output = usage_gate()
        .args(["config"])
        .env("USAGE_GATE_CONFIG", &config)
        .env("DATABASE_URL", "postgres://app:db-password@db:5432/ug")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("timeout_ms = 250"), "{stdout}");
    assert!(stdout.contains("db:5432/ug"), "{stdout}");
    for secret in ["bb-secret-key", "ops-secret-key-0123", "db-password"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
}

#[test]
fn config_without_keys_lists_every_missing_key() {
    let output = usage_gate().args(["config"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("billabear.api_key: must be set"), "{stderr}");
    assert!(stderr.contains("auth.keys: at least one key is required"), "{stderr}");
}

#[tokio::test]
async fn migrate_creates_the_database_and_applies_migrations() {
    let existing = fresh_database_url().await;
    // A database that does not exist yet, on the same server.
    let mut url = url::Url::parse(&existing).unwrap();
    let name = format!("{}_new", url.path().trim_start_matches('/'));
    url.set_path(&name);
    let config = write_config(VALID);
    let output = usage_gate()
        .args(["--config", config.to_str().unwrap(), "migrate"])
        .env("DATABASE_URL", url.as_str())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let pool = sqlx::PgPool::connect(url.as_str()).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 0, "audit_log exists");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, usage_gate::db::MIGRATOR.iter().count());
}

/// Reads `reader` line by line (on a thread) until `find` returns something, or 60 s pass.
fn wait_for_line<T: Send + 'static>(
    reader: impl std::io::Read + Send + 'static,
    find: impl Fn(&str) -> Option<T> + Send + 'static,
) -> T {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines().map_while(Result::ok) {
            if let Some(found) = find(&line) {
                let _ = tx.send(found);
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the expected line within 60 s")
}

/// The README's demo command as a process on free ports and a fresh database, its stdout piped.
async fn demo(env: &[(&str, &str)]) -> Child {
    let database = fresh_database_url().await;
    let mut command = usage_gate();
    command
        .args(["demo", "--sim-address", "127.0.0.1:0"])
        .env("DATABASE_URL", &database)
        .env("USAGE_GATE__SERVER__ADDRESS", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    Child(command.spawn().unwrap())
}

#[tokio::test]
async fn the_readme_demo_command_serves_the_service_against_the_simulator() {
    let mut child = demo(&[]).await;
    // The banner's "service  http://127.0.0.1:PORT" line says where it listens.
    let base = wait_for_line(child.0.stdout.take().unwrap(), |line| {
        let line = line.trim_start();
        line.strip_prefix("service").and_then(|rest| rest.split_whitespace().next()).map(str::to_owned)
    });
    let http = reqwest::Client::new();
    let ready: serde_json::Value =
        http.get(format!("{base}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["billabear"]["ok"], true, "the simulator is its upstream");
    let whoami =
        http.get(format!("{base}/v1/whoami")).bearer_auth(usage_gate::demo::DEMO_KEY).send().await.unwrap();
    assert_eq!(whoami.status(), 200);
    let console = http.get(format!("{base}/console/")).send().await.unwrap();
    assert_eq!(console.status(), 200, "the console's sign-in form");
    assert!(child.terminate().success(), "SIGTERM shuts it down cleanly");
}

#[tokio::test]
async fn sim_serves_a_json_seed_file() {
    let seed = std::env::temp_dir().join(format!("usage-gate-seed-{}.json", uuid::Uuid::new_v4()));
    let customer = uuid::Uuid::new_v4();
    std::fs::write(
        &seed,
        serde_json::json!({"customers": [{"id": customer, "subscriptions": [
            {"metric": "api_calls", "unit_price": 2.0, "usage": 21}
        ]}]})
        .to_string(),
    )
    .unwrap();
    let mut child = Child(
        usage_gate()
            .args(["sim", "--address", "127.0.0.1:0", "--api-key", "k", "--seed", seed.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let base = wait_for_line(child.0.stdout.take().unwrap(), |line| {
        let log: serde_json::Value = serde_json::from_str(line).ok()?;
        log["base_url"].as_str().map(str::to_owned)
    });
    let costs: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/customer/{customer}/costs"))
        .header("X-API-Key", "k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(costs["total"], serde_json::json!({"amount": 42, "currency": "USD"}));
    assert!(child.terminate().success());
}

#[tokio::test]
async fn a_callers_mistakes_are_answered_not_logged_as_warnings() {
    use std::io::BufRead;
    let mut child = demo(&[("USAGE_GATE__LOG__FORMAT", "json")]).await;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let base = loop {
        let line = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the banner within 60 s");
        if let Some(rest) = line.trim_start().strip_prefix("service") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let http = reqwest::Client::new();
    for path in ["/v1/customers/not-a-uuid/check", "/v1/whoami", "/nowhere"] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert!(response.status().is_client_error(), "{path}");
    }
    assert!(child.terminate().success());
    reader.join().unwrap();
    let warnings: Vec<String> = rx.try_iter().filter(|line| line.contains(r#""level":"WARN""#)).collect();
    assert!(warnings.is_empty(), "4xx answers logged as warnings: {warnings:?}");
}

#[tokio::test]
async fn docker_composes_placeholder_keys_start_only_with_the_flag_that_says_so() {
    let compose = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/docker.toml");
    let database = fresh_database_url().await;
    // docker-compose.yml's environment.
    let compose_env = |command: &mut std::process::Command| {
        command
            .env("USAGE_GATE__BILLABEAR__BASE_URL", "http://127.0.0.1:1/api/v1")
            .env("USAGE_GATE__BILLABEAR__API_KEY", "compose-billabear-key")
            .env("USAGE_GATE__WEBHOOKS__SECRET", "compose-webhook-secret-change-me");
    };
    let mut refused = usage_gate();
    refused.args(["--config", compose.to_str().unwrap(), "serve"]).env("DATABASE_URL", &database);
    compose_env(&mut refused);
    let refused = refused.output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    for key in ["auth.keys[0].key", "webhooks.secret", "billabear.api_key"] {
        assert!(stderr.contains(&format!("{key}: ")), "names {key}: {stderr}");
    }

    // With the flag it serves (serve_process_with waits for /healthz).
    let _running = serve_process_with(&compose, &database, |command| {
        command.arg("--allow-placeholder-secrets");
        compose_env(command);
    })
    .await;
}
