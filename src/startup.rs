//! Wiring: builds the shared state and the HTTP server from settings and ready-made parts, so
//! tests bind port 0 and hand in their own database pool and BillaBear URL.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tracing_actix_web::TracingLogger;

use crate::billabear::BillaBearClient;
use crate::cache::SnapshotCache;
use crate::check::Checker;
use crate::config::Settings;
use crate::error::{self, ApiError};
use crate::outbox::forwarder::{self, ForwarderHandle};
use crate::outbox::ingest::Ingest;
use crate::subscriptions::Subscriptions;
use crate::{db, routes, telemetry};

/// What every handler may reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub billabear: BillaBearClient,
    pub checker: Checker,
    /// Group commit for accepted events.
    pub ingest: Ingest,
    pub metrics: PrometheusHandle,
}

pub struct Application {
    addr: SocketAddr,
    server: Server,
    forwarder: ForwarderHandle,
}

impl Application {
    /// Connects to Postgres (creating the database if needed), migrates, binds `server.address`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::connect(&settings.database).await?;
        db::migrate(&pool).await?;
        let listener = TcpListener::bind(settings.server.address).map_err(|e| {
            anyhow::anyhow!("cannot listen on {} (server.address): {e}", settings.server.address)
        })?;
        Self::build_with(settings, pool, listener)
    }

    pub fn build_with(settings: Settings, pool: PgPool, listener: TcpListener) -> anyhow::Result<Self> {
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
        let cache = SnapshotCache::new(billabear.clone(), &settings.cache, Some(subscriptions.clone()));
        let forwarder = forwarder::spawn(
            pool.clone(),
            &billabear,
            settings.outbox.clone(),
            subscriptions,
            Some(cache.clone()),
        );
        let checker = Checker::new(cache, settings.policy.clone());
        let ingest = Ingest::new(pool.clone(), settings.database.acquire_timeout);
        let state = web::Data::new(AppState {
            settings: Arc::new(settings),
            pool,
            billabear,
            checker,
            ingest,
            metrics,
        });
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
                .configure(routes::configure)
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
        Ok(Self { addr, server, forwarder })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
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
        let result = tokio::select! {
            result = server => result.map_err(anyhow::Error::from).and_then(|r| r.map_err(Into::into)),
            () = stop => {
                tracing::info!("shutting down: finishing in-flight requests and deliveries");
                handle.stop(true).await;
                Ok(())
            }
        };
        self.forwarder.stop().await;
        result
    }
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
