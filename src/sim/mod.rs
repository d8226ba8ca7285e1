//! A BillaBear simulator, faithful to `shared/billabear/API.md` for every route usage-gate uses,
//! with fault injection and a control API under `/_sim/` for tests, demos and benchmarks.
//! Run alone by `usage-gate sim`, in-process by `usage-gate demo` and by the tests.

pub mod api;
pub mod control;
pub mod seed;
pub mod state;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpResponse, HttpServer, web};
use serde::{Deserialize, Serialize};

pub use seed::Seed;
use state::SimState;

/// How the simulator misbehaves, set through `PUT /_sim/faults`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Added before every answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Added after the request was handled, before its answer is sent: the work is done but
    /// the caller may time out first (its outcome is unknown to it).
    #[serde(default)]
    pub late_answer_ms: u64,
    /// Share of requests (0.0 to 1.0) answered with `error_status` instead.
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default = "default_error_status")]
    pub error_status: u16,
    /// Every request fails this way while set.
    #[serde(default)]
    pub outage: Option<Outage>,
    /// Only requests whose route contains this text are affected (e.g. "costs", "events").
    #[serde(default)]
    pub only: Option<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            late_answer_ms: 0,
            error_rate: 0.0,
            error_status: default_error_status(),
            outage: None,
            only: None,
        }
    }
}

fn default_error_status() -> u16 {
    503
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outage {
    /// 503 with Symfony's error body.
    Unavailable,
    /// The connection is closed without an answer.
    Drop,
    /// No answer at all (until the caller gives up).
    Hang,
    /// 200 with an HTML page, as a misconfigured proxy would send.
    Garbage,
}

/// Requests that reached the simulator's BillaBear API, faulted or not.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Requests {
    /// "GET /api/v1/customer/{id}/costs" → count.
    pub by_route: BTreeMap<String, u64>,
    /// "GET /api/v1/customer/<uuid>/costs" → count.
    pub by_path: BTreeMap<String, u64>,
}

/// Everything the simulator's handlers share.
pub struct SimShared {
    pub api_key: String,
    state: Mutex<SimState>,
    faults: Mutex<Faults>,
    requests: Mutex<Requests>,
    /// Where webhooks are POSTed (BillaBear's "webhook endpoint"); none: only recorded.
    webhook_url: Mutex<Option<String>>,
    /// Woken when webhooks were recorded, so the sender posts them.
    webhooks_recorded: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in one handler must not take the simulator down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimShared {
    pub fn new(api_key: String, state: SimState) -> Self {
        Self {
            api_key,
            state: Mutex::new(state),
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Requests::default()),
            webhook_url: Mutex::new(None),
            webhooks_recorded: tokio::sync::Notify::new(),
        }
    }

    pub fn webhook_url(&self) -> MutexGuard<'_, Option<String>> {
        lock(&self.webhook_url)
    }

    /// Call after recording webhooks in the state: they are sent to the endpoint, if one is set.
    pub fn webhooks_recorded(&self) {
        self.webhooks_recorded.notify_one();
    }

    pub fn state(&self) -> MutexGuard<'_, SimState> {
        lock(&self.state)
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    pub fn requests(&self) -> MutexGuard<'_, Requests> {
        lock(&self.requests)
    }

    /// Runs BillaBear's counter job once.
    pub fn tick(&self) -> Vec<state::Fired> {
        let fired = self.state().tick();
        if !fired.is_empty() {
            self.webhooks_recorded();
        }
        for f in &fired {
            tracing::info!(customer = %f.customer, limit = %f.limit, action = %f.action, estimate = f.estimate, "simulator: usage limit fired");
        }
        fired
    }
}

/// Posts recorded webhooks to the endpoint, in order, once each, as BillaBear does: no
/// signature, no retry (a failure is only logged).
async fn send_webhooks(sim: web::Data<SimShared>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("HTTP client");
    let mut sent = 0;
    loop {
        sim.webhooks_recorded.notified().await;
        let (url, batch) = {
            let state = sim.state();
            let batch: Vec<serde_json::Value> = state.webhooks.get(sent..).unwrap_or_default().to_vec();
            sent = state.webhooks.len();
            (sim.webhook_url().clone(), batch)
        };
        let Some(url) = url else { continue };
        for webhook in batch {
            match http.post(&url).json(&webhook).send().await {
                Ok(response) => tracing::debug!(status = %response.status(), "simulator: webhook sent"),
                Err(e) => tracing::warn!(error = %e, "simulator: webhook not delivered"),
            }
        }
    }
}

/// "GET /api/v1/customer/{id}/costs" from the real path: UUID segments become `{id}`.
fn route_key(method: &str, path: &str) -> String {
    let normalized: Vec<&str> =
        path.split('/').map(|seg| if uuid::Uuid::try_parse(seg).is_ok() { "{id}" } else { seg }).collect();
    format!("{method} {}", normalized.join("/"))
}

/// The connection's socket, kept so a `drop` outage can close it without answering.
struct ConnSocket(socket2::Socket);

/// Counts the request, then applies the configured faults before BillaBear "answers".
async fn inject_faults<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let shared = req.app_data::<web::Data<SimShared>>().expect("SimShared registered").clone();
    let method = req.method().to_string();
    let route = route_key(&method, req.path());
    {
        let mut requests = shared.requests();
        *requests.by_route.entry(route.clone()).or_default() += 1;
        *requests.by_path.entry(format!("{method} {}", req.path())).or_default() += 1;
    }
    let faults = shared.faults().clone();
    if faults.only.as_deref().is_some_and(|only| !route.contains(only)) {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let failure = match faults.outage {
        Some(Outage::Unavailable) => Some(api::symfony_error(StatusCode::SERVICE_UNAVAILABLE)),
        Some(Outage::Drop) => {
            if let Some(ConnSocket(socket)) = req.conn_data::<ConnSocket>() {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
            Some(HttpResponse::ServiceUnavailable().finish())
        }
        Some(Outage::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Some(HttpResponse::GatewayTimeout().finish())
        }
        Some(Outage::Garbage) => Some(
            HttpResponse::Ok()
                .content_type("text/html")
                .body("<html><body><h1>Welcome to nginx!</h1></body></html>"),
        ),
        None if faults.error_rate > 0.0 && fastrand::f64() < faults.error_rate => {
            let status = StatusCode::from_u16(faults.error_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            Some(api::symfony_error(status))
        }
        None => None,
    };
    match failure {
        Some(response) => Ok(req.into_response(response).map_into_right_body()),
        None => {
            let response = next.call(req).await.map(ServiceResponse::map_into_left_body);
            if faults.late_answer_ms > 0 {
                tokio::time::sleep(Duration::from_millis(faults.late_answer_ms)).await;
            }
            response
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The X-API-Key the simulator accepts.
    pub api_key: String,
    /// How often the counter job runs (BillaBear: every minute).
    pub tick: Duration,
    pub seed: Seed,
    pub workers: usize,
    /// Where to POST webhooks (also settable through the control API).
    pub webhook_url: Option<String>,
}

impl SimConfig {
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            tick: Duration::from_secs(60),
            seed: Seed::default(),
            workers: 1,
            webhook_url: None,
        }
    }
}

/// A running simulator. Dropping it stops it.
pub struct SimServer {
    pub addr: SocketAddr,
    pub shared: web::Data<SimShared>,
    handle: ServerHandle,
    tick_task: tokio::task::JoinHandle<()>,
    webhook_task: tokio::task::JoinHandle<()>,
}

impl SimServer {
    /// Starts the simulator on `listener` (bind port 0 for a random port). Needs a tokio runtime.
    pub fn start(listener: TcpListener, config: SimConfig) -> anyhow::Result<Self> {
        let state = SimState::from_seed(&config.seed)?;
        let shared = web::Data::new(SimShared::new(config.api_key, state));
        *shared.webhook_url() = config.webhook_url;
        let addr = listener.local_addr()?;
        let app_shared = shared.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_shared.clone())
                .service(
                    web::scope("/api/v1")
                        .wrap(from_fn(inject_faults))
                        .configure(api::routes)
                        .default_service(web::to(|| async { api::symfony_error(StatusCode::NOT_FOUND) })),
                )
                .service(web::scope("/_sim").configure(control::routes))
                .default_service(web::to(|| async { api::symfony_error(StatusCode::NOT_FOUND) }))
        })
        .on_connect(|conn, extensions| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
                && let Ok(socket) = socket2::SockRef::from(tcp).try_clone()
            {
                extensions.insert(ConnSocket(socket));
            }
        })
        .workers(config.workers.max(1))
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        let ticker = shared.clone();
        let tick_task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(config.tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                ticker.tick();
            }
        });
        let webhook_task = tokio::spawn(send_webhooks(shared.clone()));
        Ok(Self { addr, shared, handle, tick_task, webhook_task })
    }

    /// What usage-gate's `billabear.base_url` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// The control API's root.
    pub fn control_url(&self) -> String {
        format!("http://{}/_sim", self.addr)
    }

    /// Serves until Ctrl-C or SIGTERM.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        crate::shutdown::signal().await;
        self.handle.stop(true).await;
        Ok(())
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.tick_task.abort();
        self.webhook_task.abort();
        let handle = self.handle.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { handle.stop(false).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_keys_hide_ids_but_keep_the_route() {
        assert_eq!(
            route_key(
                "DELETE",
                "/api/v1/customer/11111111-1111-4111-8111-111111111111/usage-limit/b1111111-1111-4111-8111-111111111111"
            ),
            "DELETE /api/v1/customer/{id}/usage-limit/{id}"
        );
        assert_eq!(route_key("GET", "/api/v1/customer/x/uasge-limit"), "GET /api/v1/customer/x/uasge-limit");
    }
}
