//! Wiring: builds the shared state and the HTTP server from settings and ready-made parts, so
//! tests bind port 0 and hand in their own database pool and BillaBear URL.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tracing_actix_web::TracingLogger;

use crate::audit::Transitions;
use crate::billabear::BillaBearClient;
use crate::cache::{FetchHook, SnapshotCache};
use crate::snapshot::{Known, Lookup, Snapshot, SnapshotData, Source, now_ms};
use crate::check::{self, Checker, Mark};
use crate::config::Settings;
use crate::domain::CustomerId;
use crate::error::{self, ApiError};
use crate::invalidation::Invalidation;
use crate::memo::Memo;
use crate::domain::Target;
use crate::outbox::forwarder::{self, ForwarderHandle};
use crate::outbox::ingest::Ingest;
use crate::outbox::store::Stats;
use crate::overrides::{self, Override, Overrides};
use crate::pending::{self, Changed, LedgerFetch, Pending};
use crate::policy::PolicySettings;
use crate::reservations::{self, Holds};
use crate::subscriptions::Subscriptions;
use crate::{console, db, routes, telemetry, webhooks};

/// What every handler may reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    /// For operators' calls: with `billabear.admin_timeout`.
    pub billabear: BillaBearClient,
    pub checker: Checker,
    /// Group commit for accepted events.
    pub ingest: Ingest,
    pub subscriptions: Subscriptions,
    /// Tells other replicas when a customer changed.
    pub invalidation: Invalidation,
    pub metrics: PrometheusHandle,
    /// `/readyz`'s answer, recomputed at most every [`READINESS_EVERY`].
    pub readiness: Memo<routes::health::Readiness>,
    /// The outbox's counts for `/metrics`, read at most every [`OUTBOX_STATS_EVERY`].
    pub outbox_stats: Memo<Option<Stats>>,
}

/// How stale `/readyz` and the outbox figures in `/metrics` may be: both are open to anyone,
/// and each answer costs a BillaBear call or a count over the outbox.
pub const READINESS_EVERY: Duration = Duration::from_secs(2);
pub const OUTBOX_STATS_EVERY: Duration = Duration::from_secs(5);

impl AppState {
    /// After a change to the customer in BillaBear: refetch it here, so the very next check
    /// reflects the change, and tell the other replicas to drop their copy.
    pub async fn customer_changed(&self, customer: CustomerId) {
        if let Err(e) = self.checker.refresh(customer).await {
            // The next check fetches it instead.
            self.checker.cache.invalidate(customer);
            tracing::warn!(%customer, error = %e, "cannot refetch a changed customer");
        }
        if let Err(e) = self.invalidation.customer_changed(customer).await {
            tracing::warn!(%customer, error = %e, "cannot tell other replicas a customer changed");
        }
    }
}

pub struct Application {
    addr: SocketAddr,
    server: Server,
    /// `/metrics` on its own address (`server.metrics_address`).
    metrics_server: Option<(SocketAddr, Server)>,
    forwarder: ForwarderHandle,
    /// The LISTEN tasks (invalidation, pending usage) and the pending-usage tasks, stopped with
    /// the application.
    background: Vec<tokio::task::AbortHandle>,
    /// Each turns true once its LISTEN task listens (`build_with` waits for them).
    listening: Vec<tokio::sync::watch::Receiver<bool>>,
}

impl Application {
    /// Connects to Postgres (creating the database if needed), migrates, binds `server.address`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::connect(&settings.database).await?;
        db::migrate(&pool).await?;
        let listener = TcpListener::bind(settings.server.address).map_err(|e| {
            anyhow::anyhow!("cannot listen on {} (server.address): {e}", settings.server.address)
        })?;
        Self::build_with(settings, pool, listener).await
    }

    /// Builds on a ready pool and listener (tests bind port 0), and returns once this replica
    /// listens for other replicas' changes (invalidations, pending usage) and holds the pending
    /// ledger: serving before then would miss changes made meanwhile. It waits at most
    /// `database.acquire_timeout`; with Postgres down it serves without.
    pub async fn build_with(settings: Settings, pool: PgPool, listener: TcpListener) -> anyhow::Result<Self> {
        let wait = settings.database.acquire_timeout;
        let app = Self::assemble(settings, pool, listener)?;
        let listening = async {
            for listening in &app.listening {
                let _ = listening.clone().wait_for(|listening| *listening).await;
            }
        };
        if tokio::time::timeout(wait, listening).await.is_err() {
            tracing::warn!("not yet listening to Postgres for other replicas' changes; serving anyway");
        }
        Ok(app)
    }

    fn assemble(settings: Settings, pool: PgPool, listener: TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let billabear = BillaBearClient::new(&settings.billabear)?;
        let keys = web::Data::new(settings.auth.keys.clone());
        let max_body = settings.server.max_body_bytes;
        let workers = settings.server.workers;
        let shutdown_timeout = settings.server.shutdown_timeout.as_secs();
        // Before anything registers metric handles: a handle taken before the recorder is
        // installed stays a no-op for good.
        let metrics = telemetry::metrics_handle();
        let subscriptions = Subscriptions::new(billabear.with_timeout(settings.outbox.timeout));
        let transitions = Transitions::start(pool.clone());
        let pending::Started { pending, changes, tasks: pending_tasks, listening: pending_listening } =
            Pending::start(pool.clone(), settings.pending.clone());
        let overrides::Started {
            overrides,
            changes: override_changes,
            tasks: override_tasks,
            listening: overrides_listening,
        } = Overrides::start(pool.clone());
        let watch = Watch { pending: pending.clone(), transitions, policy: settings.policy.clone() };
        let on_fetched = on_fetched(watch.clone(), overrides.clone());
        let metrics_address = settings.server.metrics_address;
        let console_enabled = settings.console.enabled;
        let source = LedgerFetch {
            client: billabear.clone(),
            pending: pending.clone(),
            subscriptions: subscriptions.clone(),
        };
        let cache = SnapshotCache::with_source(Arc::new(source), &settings.cache, Some(on_fetched));
        let (invalidation, listening, invalidation_listening) =
            Invalidation::start(pool.clone(), cache.clone());
        let watching = tokio::spawn(watch_pending(
            changes,
            cache.clone(),
            watch.clone(),
            overrides.clone(),
            subscriptions.clone(),
        ))
        .abort_handle();
        let watching_overrides =
            tokio::spawn(watch_overrides(override_changes, cache.clone(), watch)).abort_handle();
        let reservations::Started { holds, tasks: holds_tasks, listening: holds_listening } =
            Holds::start(pool.clone());
        let mut background = vec![listening, watching, watching_overrides];
        background.extend(pending_tasks);
        background.extend(holds_tasks);
        background.extend(override_tasks);
        background.extend(webhooks::delivery::spawn(pool.clone(), settings.outbound_webhooks.clone())?);
        background.push(console::spawn_housekeeping(pool.clone(), settings.console.clone()));
        let forwarder = forwarder::spawn(
            pool.clone(),
            &billabear,
            settings.outbox.clone(),
            subscriptions.clone(),
            Some(cache.clone()),
        );
        let checker = Checker::new(cache, pending, holds, overrides, settings.policy.clone());
        let ingest = Ingest::new(pool.clone(), settings.database.acquire_timeout, settings.policy.clone());
        let admin_billabear = billabear.with_timeout(settings.billabear.admin_timeout);
        let state = web::Data::new(AppState {
            settings: Arc::new(settings),
            pool,
            billabear: admin_billabear,
            checker,
            ingest,
            subscriptions,
            invalidation,
            metrics,
            readiness: Memo::new(READINESS_EVERY),
            outbox_stats: Memo::new(OUTBOX_STATS_EVERY),
        });
        let metrics_server = match metrics_address {
            Some(address) => Some(metrics_server(address, state.clone())?),
            None => None,
        };
        let mut server = HttpServer::new(move || {
            // Runs on each worker thread as it starts.
            state.ingest.attach_worker();
            App::new()
                .app_data(state.clone())
                .app_data(keys.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(max_body)
                        // Like BillaBear, take the body as JSON whatever the Content-Type says.
                        .content_type_required(false)
                        .error_handler(error::json_error),
                )
                .app_data(web::PayloadConfig::new(max_body))
                .app_data(web::PathConfig::default().error_handler(error::path_error))
                .app_data(web::QueryConfig::default().error_handler(error::query_error))
                .configure(|cfg| routes::configure(cfg, metrics_address.is_none()))
                .configure(|cfg| {
                    if console_enabled {
                        console::configure(cfg)
                    }
                })
                .default_service(web::to(not_found))
                .wrap(from_fn(telemetry::request_metrics))
                .wrap(TracingLogger::<telemetry::RequestSpan>::new())
        })
        // Shutdown is driven by `run_until_stopped`, which also stops background work.
        .disable_signals()
        .shutdown_timeout(shutdown_timeout);
        if workers > 0 {
            server = server.workers(workers);
        }
        let server = server.listen(listener)?.run();
        let listening = vec![invalidation_listening, pending_listening, holds_listening, overrides_listening];
        Ok(Self { addr, server, metrics_server, forwarder, background, listening })
    }

    /// Where `/metrics` is served when `server.metrics_address` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|(addr, _)| *addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGTERM or Ctrl-C, then lets in-flight requests and deliveries finish;
    /// events not yet delivered stay pending for the next start (or another replica).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// As [`Application::run_until_stopped`], stopping when `stop` resolves instead of on a signal.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        let metrics_server = self.metrics_server.map(|(_, server)| {
            let handle = server.handle();
            tokio::spawn(server);
            handle
        });
        let result = tokio::select! {
            result = server => result.map_err(anyhow::Error::from).and_then(|r| r.map_err(Into::into)),
            () = stop => {
                tracing::info!("shutting down: finishing in-flight requests and deliveries");
                handle.stop(true).await;
                Ok(())
            }
        };
        if let Some(metrics_server) = metrics_server {
            metrics_server.stop(true).await;
        }
        self.forwarder.stop().await;
        for task in self.background {
            task.abort();
        }
        result
    }
}

/// Tells the transition writer what a cached customer's decision is now, wherever it may have
/// changed: a fetch, its pending usage, its override.
#[derive(Clone)]
struct Watch {
    pending: Pending,
    transitions: Transitions,
    policy: PolicySettings,
}

impl Watch {
    /// The mark `snapshot` decides with the customer's pending usage, under `applied`.
    fn mark(&self, customer: CustomerId, snapshot: &Snapshot, applied: Option<&Override>) -> Option<Mark> {
        check::usage_mark(
            &snapshot.data,
            |known| self.pending.project(customer, known),
            applied,
            &self.policy,
        )
    }

    /// Observes the customer's decision on `snapshot` (from `source`) under `applied`, if its
    /// mark is not `before`: the whole decision (what a webhook tells) is built only then.
    fn tell(
        &self,
        customer: CustomerId,
        before: Option<Mark>,
        snapshot: Arc<Snapshot>,
        source: Source,
        applied: Option<&Override>,
        at_ms: u64,
    ) {
        if before.is_some() && self.mark(customer, &snapshot, applied) == before {
            return;
        }
        let project = |known: &Known| self.pending.project(customer, known);
        let decision = check::explain(
            customer,
            None,
            Lookup::found(snapshot, source),
            project,
            applied,
            &self.policy,
            now_ms(),
        );
        self.transitions.observe(customer, before, &decision, at_ms);
    }
}

/// What every fetched snapshot of a known customer starts: auditing a decision transition.
fn on_fetched(watch: Watch, overrides: Overrides) -> FetchHook {
    Arc::new(move |customer, before, after| {
        if !matches!(after.data, SnapshotData::Known(_)) {
            return;
        }
        let applied = overrides.active(customer, now_ms());
        let before = before.and_then(|b| watch.mark(customer, b, applied.as_ref()));
        watch.tell(customer, before, after.clone(), Source::Upstream, applied.as_ref(), after.fetched_at_ms);
    })
}

/// Audits the decision transitions pending usage makes (an event accepted, retired or dead
/// changes a cached customer's status without a fetch).
async fn watch_pending(
    mut changes: tokio::sync::mpsc::Receiver<Changed>,
    cache: SnapshotCache,
    watch: Watch,
    overrides: Overrides,
    subscriptions: Subscriptions,
) {
    while let Some(Changed { target, before }) = changes.recv().await {
        let customer = match target {
            Target::Customer(customer) => Some(customer),
            Target::Subscription(subscription) => subscriptions.owner(subscription),
        };
        let Some(customer) = customer else { continue };
        let Some(snapshot) = cache.cached(customer).and_then(|lookup| lookup.snapshot) else { continue };
        let was = before.as_deref().unwrap_or(&[]);
        let now = now_ms();
        let applied = overrides.active(customer, now);
        let before = check::usage_mark(
            &snapshot.data,
            |known| watch.pending.project_replacing(customer, known, Some((target, was))),
            applied.as_ref(),
            &watch.policy,
        );
        watch.tell(customer, before, snapshot, Source::Cache, applied.as_ref(), now);
    }
}

/// Audits the decision transitions overrides make (created, ended or expired changes a cached
/// customer's status without a fetch). `before` is judged as if still in force: an expired
/// override is told here when it is closed.
async fn watch_overrides(
    mut changes: tokio::sync::mpsc::Receiver<overrides::Changed>,
    cache: SnapshotCache,
    watch: Watch,
) {
    while let Some(overrides::Changed { customer, before, after }) = changes.recv().await {
        let Some(snapshot) = cache.cached(customer).and_then(|lookup| lookup.snapshot) else { continue };
        let marked = watch.mark(customer, &snapshot, before.as_ref());
        watch.tell(customer, marked, snapshot, Source::Cache, after.as_ref(), now_ms());
    }
}

/// A one-worker server for `/metrics` alone.
fn metrics_server(address: SocketAddr, state: web::Data<AppState>) -> anyhow::Result<(SocketAddr, Server)> {
    let listener = TcpListener::bind(address)
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} (server.metrics_address): {e}"))?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new().app_data(state.clone()).route("/metrics", web::get().to(routes::meta::metrics))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((addr, server))
}

async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!("no route for {} {}", req.method(), req.path())))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
