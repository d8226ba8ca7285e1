//! Test harness: a fresh Postgres database per test, the BillaBear simulator on a random port,
//! and the service itself on a random port, all over real connections.

use std::net::TcpListener;
use std::time::Duration;

use tokio::sync::OnceCell;

use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use usage_gate::billabear::BillaBearClient;
use usage_gate::config::{KeySettings, Settings};
use usage_gate::sim::{Seed, SimConfig, SimServer};
use usage_gate::startup::Application;

/// Loopback, opened to outbound webhooks in the tests (their receivers listen there).
pub const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];
pub const SIM_KEY: &str = "sim-test-key";

/// API keys the test app accepts, one per scope plus one with all of them.
pub const CHECK_KEY: &str = "check-key-0123456789";
pub const EVENTS_KEY: &str = "events-key-0123456789";
pub const ADMIN_KEY: &str = "admin-key-0123456789";
pub const ALL_KEY: &str = "all-scopes-key-0123456789";
pub const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

/// Customers of the built-in seed (config/sim-seed.toml).
pub const ACME: &str = "11111111-1111-4111-8111-111111111111";
pub const ACME_SUBSCRIPTION: &str = "a1111111-1111-4111-8111-111111111111";
pub const ACME_LIMIT: &str = "b1111111-1111-4111-8111-111111111111";
pub const INITECH: &str = "33333333-3333-4333-8333-333333333333";
pub const HOOLI_DISABLED: &str = "55555555-5555-4555-8555-555555555555";
pub const STARK_FLAT: &str = "66666666-6666-4666-8666-666666666666";

pub fn base_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Drops test databases left by earlier test processes that are gone.
async fn drop_stale_databases() {
    static ONCE: OnceCell<()> = OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let Ok(mut conn) = PgConnection::connect(&base_database_url()).await else {
            return;
        };
        let names: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'ugt\\_%'")
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
        for name in names {
            let pid = name.split('_').nth(1).and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = conn
                    .execute(sqlx::AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)))
                    .await;
            }
        }
    })
    .await;
}

/// A new, empty database: `ugt_<pid>_<random>`; its URL is returned (not yet migrated).
pub async fn fresh_database_url() -> String {
    drop_stale_databases().await;
    let name = format!("ugt_{}_{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let mut conn =
        PgConnection::connect(&base_database_url()).await.expect("Postgres is running (see .ci/run)");
    conn.execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#))).await.unwrap();
    let mut url = url::Url::parse(&base_database_url()).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// A fresh database with migrations applied.
pub async fn fresh_database() -> (String, PgPool) {
    let url = fresh_database_url().await;
    let pool = PgPool::connect(&url).await.unwrap();
    usage_gate::db::migrate(&pool).await.unwrap();
    (url, pool)
}

/// The simulator with `seed`, on a random port. Its counter tick is an hour: tests run it
/// explicitly through the control API (`Sim::tick`), so nothing depends on timing.
pub fn start_sim(seed: Seed) -> Sim {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = SimConfig {
        api_key: SIM_KEY.into(),
        tick: Duration::from_secs(3600),
        seed,
        workers: 1,
        webhook_url: None,
    };
    Sim { server: SimServer::start(listener, config).unwrap(), http: reqwest::Client::new() }
}

/// A handle on a running simulator and its control API.
pub struct Sim {
    pub server: SimServer,
    pub http: reqwest::Client,
}

impl Sim {
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.server.control_url()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "control {path}: {status} {text}");
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() }
    }

    /// Starts a new billing period of `length_ms` now (subscriptions are valid until its end).
    pub async fn new_period(&self, length_ms: u64) {
        self.control(reqwest::Method::POST, "/period", Some(json!({"length_ms": length_ms}))).await;
    }

    /// Adds a customer (seed shape); returns the control API's view with ids.
    pub async fn add_customer(&self, customer: Value) -> Value {
        self.control(reqwest::Method::POST, "/customers", Some(customer)).await
    }

    /// Adds a subscription (seed shape) to a customer, as an operator would in BillaBear.
    pub async fn add_subscription(&self, customer: &str, subscription: Value) -> Value {
        self.control(
            reqwest::Method::POST,
            &format!("/customers/{customer}/subscriptions"),
            Some(subscription),
        )
        .await
    }

    /// A customer with one usage subscription for `api_calls` at 1 cent per call.
    pub async fn add_usage_customer(&self, usage: f64, limits: Value) -> (String, String) {
        let view = self
            .add_customer(json!({"subscriptions": [{"metric": "api_calls", "unit_price": 1.0, "usage": usage}], "limits": limits}))
            .await;
        (view["id"].as_str().unwrap().to_owned(), view["subscriptions"][0]["id"].as_str().unwrap().to_owned())
    }

    /// Defines a metric (`{"code", "name", "aggregation": "sum" | "count"}`).
    pub async fn add_metric(&self, metric: Value) -> Value {
        self.control(reqwest::Method::POST, "/metrics", Some(metric)).await
    }

    /// Sets the customer's `api_calls` counter, as if BillaBear's counter had run.
    pub async fn set_usage(&self, customer: &str, value: f64) -> Value {
        let body = json!({"metric": "api_calls", "value": value});
        self.control(reqwest::Method::PUT, &format!("/customers/{customer}/usage"), Some(body)).await
    }

    pub async fn customer(&self, id: &str) -> Value {
        self.control(reqwest::Method::GET, &format!("/customers/{id}"), None).await
    }

    pub async fn set_faults(&self, faults: Value) {
        self.control(reqwest::Method::PUT, "/faults", Some(faults)).await;
    }

    pub async fn clear_faults(&self) {
        self.control(reqwest::Method::DELETE, "/faults", None).await;
    }

    pub async fn tick(&self) -> Value {
        self.control(reqwest::Method::POST, "/tick", None).await
    }

    pub async fn requests(&self) -> Value {
        self.control(reqwest::Method::GET, "/requests", None).await
    }

    /// How many times "BillaBear" received requests on `route` ("GET /api/v1/customer/{id}/costs":
    /// the simulator files every id under `{id}`, so a route naming one would always count 0).
    pub async fn route_count(&self, route: &str) -> u64 {
        assert!(
            !route.split('/').any(|segment| uuid::Uuid::try_parse(segment).is_ok()),
            "{route}: routes name ids as {{id}}; path_count counts one customer's"
        );
        self.requests().await["by_route"][route].as_u64().unwrap_or(0)
    }

    /// How many times "BillaBear" received requests on exactly `path` ("GET /api/v1/customer/ID").
    pub async fn path_count(&self, path: &str) -> u64 {
        self.requests().await["by_path"][path].as_u64().unwrap_or(0)
    }

    /// How many times an event with this id was stored.
    pub async fn event_count(&self, event_id: &str) -> u64 {
        self.control(reqwest::Method::GET, &format!("/events/{event_id}"), None).await["count"]
            .as_u64()
            .unwrap()
    }

    pub async fn event(&self, event_id: &str) -> Value {
        self.control(reqwest::Method::GET, &format!("/events/{event_id}"), None).await
    }

    /// Where the simulator POSTs its webhooks from now on.
    pub async fn send_webhooks_to(&self, url: &str) {
        self.control(reqwest::Method::PUT, "/webhooks/endpoint", Some(serde_json::json!({"url": url}))).await;
    }

    pub async fn webhooks(&self) -> Value {
        self.control(reqwest::Method::GET, "/webhooks", None).await
    }

    /// A BillaBear client for this simulator (a 500 ms timeout).
    pub fn client(&self) -> BillaBearClient {
        self.client_with_key(SIM_KEY)
    }

    pub fn client_with_key(&self, key: &str) -> BillaBearClient {
        let mut raw = test_settings(&self.base_url(), "postgres://unused/db");
        raw.billabear.api_key = SecretString::from(key);
        raw.billabear.timeout = std::time::Duration::from_millis(500);
        BillaBearClient::new(&raw.validate().unwrap().billabear).unwrap()
    }
}

fn key(name: &str, key: &str, scopes: &[&str]) -> KeySettings {
    KeySettings {
        name: name.into(),
        key: Some(SecretString::from(key)),
        sha256: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

/// Settings for a test app: random port, the given upstream and database, the test keys.
pub fn test_settings(billabear_url: &str, database_url: &str) -> Settings {
    let mut raw = Settings::defaults();
    raw.server.address = "127.0.0.1:0".into();
    raw.server.workers = 1;
    raw.server.shutdown_timeout = std::time::Duration::from_secs(1);
    raw.database.url = SecretString::from(database_url);
    raw.database.max_connections = 10;
    raw.billabear.base_url = billabear_url.into();
    raw.billabear.api_key = SecretString::from(SIM_KEY);
    raw.billabear.timeout = std::time::Duration::from_millis(500);
    // Quick retries, so outage-and-recovery tests finish in a second or two.
    raw.outbox.retry_base = std::time::Duration::from_millis(20);
    raw.outbox.retry_max = std::time::Duration::from_millis(200);
    raw.outbox.poll_interval = std::time::Duration::from_millis(100);
    raw.outbox.timeout = std::time::Duration::from_millis(1000);
    // Outbound webhooks retried within a second, looked for every 20 ms.
    raw.outbound_webhooks.retry_schedule_ms = vec![100, 200, 400];
    raw.outbound_webhooks.poll_interval = std::time::Duration::from_millis(20);
    raw.outbound_webhooks.timeout = std::time::Duration::from_millis(2000);
    // The tests' receivers listen on loopback, which endpoints may not reach by default.
    raw.outbound_webhooks.allowed_subnets = LOOPBACK.iter().map(|net| (*net).into()).collect();
    raw.webhooks.secret = SecretString::from(WEBHOOK_SECRET);
    raw.auth.keys = vec![
        key("checker", CHECK_KEY, &["check"]),
        key("ingester", EVENTS_KEY, &["events"]),
        key("operator", ADMIN_KEY, &["admin"]),
        key("everything", ALL_KEY, &["check", "events", "admin"]),
    ];
    raw
}

/// The service, running against a fresh database and its own simulator.
pub struct TestApp {
    pub address: String,
    /// Where `/metrics` is when `server.metrics_address` is set.
    pub metrics_address: Option<String>,
    pub pool: PgPool,
    /// Shared with a second instance, if one is started.
    pub sim: std::sync::Arc<Sim>,
    pub http: reqwest::Client,
    /// Stops the service as SIGTERM would (see `shut_down`).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Spawns with the built-in seed; `adjust` may change the settings first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let sim = start_sim(Seed::built_in());
        let (url, pool) = fresh_database().await;
        let mut raw = test_settings(&sim.base_url(), &url);
        adjust(&mut raw);
        let settings: Settings = raw.validate().expect("test settings are valid");
        let pool = if raw.database.url.expose() == url {
            pool
        } else {
            usage_gate::db::connect_lazy(&settings.database).unwrap()
        };
        Self::start(settings, pool, sim).await
    }

    /// Another instance of the service on the same database and simulator (a second replica).
    pub async fn second_instance(&self) -> TestApp {
        self.second_instance_with(|_| {}).await
    }

    /// A second replica whose settings `adjust` changes first.
    pub async fn second_instance_with(&self, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let (settings, pool, listener) = self.second_instance_parts(adjust).await;
        let app = Application::build_with(settings, pool.clone(), listener).await.unwrap();
        Self::running(app, pool, self.sim.clone())
    }

    /// What a second replica is built from (a test may expect the build to fail).
    pub async fn second_instance_parts(
        &self,
        adjust: impl FnOnce(&mut Settings),
    ) -> (Settings, PgPool, TcpListener) {
        let url =
            sqlx::query_scalar::<_, String>("SELECT current_database()").fetch_one(&self.pool).await.unwrap();
        let mut database = url::Url::parse(&base_database_url()).unwrap();
        database.set_path(&url);
        let mut raw = test_settings(&self.sim.base_url(), database.as_str());
        adjust(&mut raw);
        let settings = raw.validate().unwrap();
        let pool = PgPool::connect(database.as_str()).await.unwrap();
        let listener = TcpListener::bind(*settings.server.address).unwrap();
        (settings, pool, listener)
    }

    async fn start(settings: Settings, pool: PgPool, sim: Sim) -> Self {
        let listener = TcpListener::bind(*settings.server.address).unwrap();
        Self::run(settings, pool, listener, std::sync::Arc::new(sim)).await
    }

    /// Starts the application once it listens for other replicas' changes (as `build_with`
    /// returns), so a test never races a replica's start.
    async fn run(settings: Settings, pool: PgPool, listener: TcpListener, sim: std::sync::Arc<Sim>) -> Self {
        let app = Application::build_with(settings, pool.clone(), listener).await.unwrap();
        Self::running(app, pool, sim)
    }

    fn running(app: Application, pool: PgPool, sim: std::sync::Arc<Sim>) -> Self {
        let address = format!("http://{}", app.addr());
        let metrics_address = app.metrics_addr().map(|a| format!("http://{a}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            metrics_address,
            pool,
            sim,
            http: reqwest::Client::new(),
            stop: Some(stop),
            running: Some(running),
        }
    }

    /// Shuts the service down as SIGTERM does and waits until it has.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            running.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }
}

/// `SecretString` to `&str` in tests.
trait Expose {
    fn expose(&self) -> &str;
}

impl Expose for SecretString {
    fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(self)
    }
}

/// Asserts an RFC 9457 problem body with this status and code; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    let actual = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(actual, status, "{body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["code"], code);
    assert_eq!(body["type"], format!("urn:usage-gate:problem:{code}"));
    body
}

/// Polls `probe` every 10 ms until it returns Some, failing with "`what` within …" after `within`.
/// The one way tests wait for something asynchronous: no fixed sleeps.
pub async fn eventually<T, F, Fut>(within: Duration, what: impl std::fmt::Display, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "expected {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The usage-gate binary, with a clean environment.
pub fn usage_gate() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_usage-gate"));
    // Only what the test sets: no stray USAGE_GATE__* or DATABASE_URL from the environment.
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

pub fn write_config(contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("usage-gate-cli-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, contents).unwrap();
    path
}

/// A config file for a `serve` process against `sim`, logging warnings only, with `more`.
pub fn process_config(sim: &Sim, more: &str) -> std::path::PathBuf {
    write_config(&format!(
        "[billabear]\nbase_url = \"{}\"\napi_key = \"{SIM_KEY}\"\n[log]\nlevel = \"warn\"\n{more}",
        sim.base_url()
    ))
}

/// Whether `tool` runs (`tool args`). Without it the test says so and passes, unless
/// `USAGE_GATE_REQUIRE_TOOLS` is set (CI sets it and installs the tools).
pub fn have_tool(tool: &str, args: &[&str]) -> bool {
    let found = std::process::Command::new(tool).args(args).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("USAGE_GATE_REQUIRE_TOOLS").is_none(),
            "USAGE_GATE_REQUIRE_TOOLS is set but {tool} is not installed"
        );
        eprintln!("skipped: {tool} is not installed (see the README's test section)");
    }
    found
}

/// The issuer and audience end users' tokens carry in the `[gate.jwt]` tests.
pub const JWT_ISSUER: &str = "https://id.example.com/";
pub const JWT_AUDIENCE: &str = "usage-gate";

/// A service whose gate verifies end users' tokens with the key source `source` sets
/// (issuer and audience [`JWT_ISSUER`] and [`JWT_AUDIENCE`]).
pub async fn spawn_with_jwt(source: impl FnOnce(&mut usage_gate::config::JwtSettings)) -> TestApp {
    TestApp::spawn_with(|raw| {
        source(&mut raw.gate.jwt);
        raw.gate.jwt.issuer = JWT_ISSUER.into();
        raw.gate.jwt.audience = JWT_AUDIENCE.into();
    })
    .await
}

/// A file under `deploy/`.
pub fn deploy(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the binary's `serve` with `config` on a free port and waits until it answers; its
/// base URL.
pub async fn serve_process(config: &std::path::Path, database: &str) -> (Child, String) {
    serve_process_with(config, database, |_| {}).await
}

/// [`serve_process`], its command first changed by `adjust` (more arguments after `serve`, an
/// environment of its own).
pub async fn serve_process_with(
    config: &std::path::Path,
    database: &str,
    adjust: impl FnOnce(&mut std::process::Command),
) -> (Child, String) {
    let port = free_port();
    let mut command = usage_gate();
    command
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("DATABASE_URL", database)
        .env("USAGE_GATE__SERVER__ADDRESS", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    adjust(&mut command);
    let child = Child(command.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    eventually(Duration::from_secs(30), "the service to answer /healthz", || async {
        http.get(format!("{base}/healthz")).send().await.ok().filter(|r| r.status() == 200)
    })
    .await;
    (child, base)
}

/// A child process that is sent SIGTERM when dropped, given [`Child::GRACE`] to exit, then
/// SIGKILL, and reaped: nothing a test starts outlives it.
pub struct Child(pub std::process::Child);

impl Child {
    pub const GRACE: Duration = Duration::from_secs(5);

    /// SIGTERM, then waits for the exit (no deadline: the caller asserts how it ended).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.0.wait().unwrap()
    }

    fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.0.id().to_string()])
            .status();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        self.signal("TERM");
        let deadline = std::time::Instant::now() + Self::GRACE;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP relay to the machine's Postgres that a test can close and open again: closed, it cuts
/// every connection through it and refuses new ones, as a Postgres stopped or failing over does,
/// for the one replica whose `database.url` points here (the other tests' Postgres stays up).
pub struct PostgresGate {
    pub port: u16,
    open: tokio::sync::watch::Sender<bool>,
}

impl PostgresGate {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = url::Url::parse(&base_database_url()).unwrap();
        let upstream = format!("{}:{}", upstream.host_str().unwrap(), upstream.port().unwrap_or(5432));
        let (open, _) = tokio::sync::watch::channel(true);
        let gate = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = gate.subscribe();
                if !*state.borrow_and_update() {
                    continue; // dropped: the connection is closed at once
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self { port, open }
    }

    /// `url` (a database on the machine's Postgres) as reached through this gate.
    pub fn url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }

    pub fn close(&self) {
        self.open.send_replace(false);
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }
}
