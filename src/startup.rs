//! Wiring: starts the services and the HTTP server from settings and ready-made parts, so tests
//! bind port 0 and hand in their own database pool and BillaBear URL.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpServer, web};
use sqlx::PgPool;

use crate::admission::Admission;
use crate::admission::ingest::Ingest;
use crate::audit::Audit;
use crate::billabear::BillaBearClient;
use crate::cache::SnapshotCache;
use crate::check::Checker;
use crate::config::{SecretsSettings, Settings};
use crate::enforce::Rules;
use crate::error::{self, ApiError};
use crate::feature_counts::FeatureCounts;
use crate::feature_counts::crossings::Crossings;
use crate::fetch::LedgerFetch;
use crate::health::Health;
use crate::inbound::Inbound;
use crate::invalidation::Invalidation;
use crate::jwt::Verifier;
use crate::limits::Limits;
use crate::mirror::Started;
use crate::outbox::Outbox;
use crate::outbox::forwarder::{self, ForwarderHandle};
use crate::overrides::Overrides;
use crate::pending::Pending;
use crate::reservations::Holds;
use crate::routes::meta::Exposition;
use crate::rules::Rulebook;
use crate::rules::counts::RuleCounts;
use crate::seal::Sealer;
use crate::sessions::Sessions;
use crate::subscriptions::Subscriptions;
use crate::transitions::recorded::Recorded;
use crate::transitions::{self, Transitions, Watch};
use crate::webhooks::destination::Destinations;
use crate::webhooks::endpoints::Endpoints;
use crate::{console, db, routes, shutdown, telemetry, webhooks};

/// How many fetched snapshots may wait for the transition watcher; beyond it they are dropped
/// (and counted), never holding up a fetch.
const FETCHED_QUEUE: usize = 10_000;

pub struct Application {
    addr: SocketAddr,
    server: Server,
    /// `/metrics` on its own address (`server.metrics_address`).
    metrics_server: Option<(SocketAddr, Server)>,
    forwarder: ForwarderHandle,
    /// Stopped with the application (see [`Running`]).
    background: Vec<tokio::task::AbortHandle>,
    /// `build_with` waits for them.
    listening: Vec<tokio::sync::watch::Receiver<bool>>,
}

impl Application {
    /// Connects to Postgres (creating the database if needed), migrates, binds `server.address`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::connect(&settings.database).await?;
        db::migrate(&pool).await?;
        let listener = TcpListener::bind(*settings.server.address).map_err(|e| {
            anyhow::anyhow!("cannot listen on {} (server.address): {e}", *settings.server.address)
        })?;
        Self::build_with(settings, pool, listener).await
    }

    /// Builds on a ready pool and listener (tests bind port 0), and returns once this replica
    /// listens for other replicas' changes (invalidations, pending usage) and holds the pending
    /// ledger: serving before then would miss changes made meanwhile. It waits at most
    /// `database.acquire_timeout`; with Postgres down it serves without.
    pub async fn build_with(settings: Settings, pool: PgPool, listener: TcpListener) -> anyhow::Result<Self> {
        let wait = settings.database.acquire_timeout;
        // The end users' token keys, loaded before serving: a gate that cannot verify would
        // refuse every request.
        let verifier = match settings.gate.jwt.keys() {
            Some(_) => Some(web::Data::from(Verifier::start(settings.gate.jwt.clone()).await?)),
            None => None,
        };
        let sealer = seal_secrets(&settings.secrets, &pool).await?;
        let app = Self::assemble(settings, pool, listener, verifier, sealer)?;
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

    fn assemble(
        settings: Settings,
        pool: PgPool,
        listener: TcpListener,
        verifier: Option<web::Data<Verifier>>,
        sealer: web::Data<Sealer>,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let keys = web::Data::new(settings.auth.api_keys());
        let max_body = settings.server.max_body_bytes;
        let workers = settings.server.workers;
        let shutdown_timeout = settings.server.shutdown_timeout.as_secs();
        let metrics_address = *settings.server.metrics_address;
        let console_enabled = settings.console.enabled;
        let Running { handlers, forwarder, background, listening } =
            Running::start(settings, pool, verifier, sealer)?;
        let metrics_server = match metrics_address {
            Some(address) => Some(metrics_server(address, handlers.exposition.clone())?),
            None => None,
        };
        let mut server = HttpServer::new(move || {
            // Runs on each worker thread as it starts.
            handlers.admission.attach_worker();
            App::new()
                .configure(|cfg| handlers.register(cfg))
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
                .wrap(from_fn(telemetry::requests))
        })
        // Shutdown is driven by `run_until_stopped`, which also stops background work.
        .disable_signals()
        .shutdown_timeout(shutdown_timeout);
        if workers > 0 {
            server = server.workers(workers);
        }
        let server = server.listen(listener)?.run();
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
        self.run_until(shutdown::signal()).await
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

/// What the handlers take, each service once for every worker: a handler names the ones it
/// needs (`web::Data<Checker>`, `web::Data<Admission>`, …).
#[derive(Clone)]
struct Handlers {
    checker: web::Data<Checker>,
    admission: web::Data<Admission>,
    limits: web::Data<Limits>,
    overrides: web::Data<Overrides>,
    rules: web::Data<Rulebook>,
    holds: web::Data<Holds>,
    subscriptions: web::Data<Subscriptions>,
    invalidation: web::Data<Invalidation>,
    health: web::Data<Health>,
    exposition: web::Data<Exposition>,
    audit: web::Data<Audit>,
    outbox: web::Data<Outbox>,
    endpoints: web::Data<Endpoints>,
    inbound: web::Data<Inbound>,
    sessions: web::Data<Sessions>,
    recorded: web::Data<Recorded>,
    /// For the settings a handler reads (the gate's header, a batch's concurrency, …).
    settings: web::Data<Settings>,
    /// The gate's end-user tokens, with `[gate.jwt]`.
    verifier: Option<web::Data<Verifier>>,
}

impl Handlers {
    fn register(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(self.checker.clone())
            .app_data(self.admission.clone())
            .app_data(self.limits.clone())
            .app_data(self.overrides.clone())
            .app_data(self.rules.clone())
            .app_data(self.holds.clone())
            .app_data(self.subscriptions.clone())
            .app_data(self.invalidation.clone())
            .app_data(self.health.clone())
            .app_data(self.exposition.clone())
            .app_data(self.audit.clone())
            .app_data(self.outbox.clone())
            .app_data(self.endpoints.clone())
            .app_data(self.inbound.clone())
            .app_data(self.sessions.clone())
            .app_data(self.recorded.clone())
            .app_data(self.settings.clone());
        if let Some(verifier) = &self.verifier {
            cfg.app_data(verifier.clone());
        }
    }
}

/// The services, started: what the handlers take, and what runs beside them.
struct Running {
    handlers: Handlers,
    forwarder: ForwarderHandle,
    /// The LISTEN tasks, the transition watcher and the periodic chores.
    background: Vec<tokio::task::AbortHandle>,
    /// Each turns true once its LISTEN task listens and its copy is loaded.
    listening: Vec<tokio::sync::watch::Receiver<bool>>,
}

impl Running {
    /// Starts every service in the order they need each other: the copies of Postgres, the
    /// cache on top of BillaBear and the pending ledger, the transition watcher that all three
    /// feed, the forwarder, then the services the handlers take.
    fn start(
        settings: Settings,
        pool: PgPool,
        verifier: Option<web::Data<Verifier>>,
        sealer: web::Data<Sealer>,
    ) -> anyhow::Result<Self> {
        let billabear = BillaBearClient::new(&settings.billabear)?;
        // Before anything registers metric handles: a handle taken before the recorder is
        // installed stays a no-op for good.
        let metrics = telemetry::metrics_handle();
        // Counters whose outcomes are known, at zero from the start: an alert's `rate()` needs a
        // series, and the dashboard a line, before the first event, hold or webhook.
        crate::outbox::store::register_metrics();
        crate::enforce::store::register_metrics();
        crate::reservations::register_metrics();
        webhooks::delivery::register_metrics();
        crate::retention::register_metrics();
        let subscriptions = Subscriptions::new(billabear.with_timeout(settings.outbox.timeout));
        let Started { service: pending, changes: pending_changes, tasks: mut background, listening } =
            Pending::start(pool.clone(), settings.pending.clone());
        let mut listening = vec![listening];
        let Started { service: overrides, changes: override_changes, tasks, listening: overrides_listening } =
            Overrides::start(pool.clone());
        background.extend(tasks);
        listening.push(overrides_listening);
        let Started { service: holds, tasks, listening: holds_listening, .. } = Holds::start(
            pool.clone(),
            settings.database.acquire_timeout,
            Rules { policy: settings.policy.clone(), entitlements: settings.entitlements.clone() },
        );
        background.extend(tasks);
        listening.push(holds_listening);
        let Started { service: counts, changes: count_changes, tasks, listening: counts_listening } =
            FeatureCounts::start(pool.clone());
        background.extend(tasks);
        listening.push(counts_listening);
        let Started { service: rules, tasks, listening: rules_listening, .. } = Rulebook::start(pool.clone());
        background.extend(tasks);
        listening.push(rules_listening);
        let Started { service: rule_counts, tasks, listening: rule_counts_listening, .. } =
            RuleCounts::start(pool.clone());
        background.extend(tasks);
        listening.push(rule_counts_listening);
        let (fetched, fetches) = tokio::sync::mpsc::channel(FETCHED_QUEUE);
        let source = LedgerFetch {
            client: billabear.clone(),
            pending: pending.clone(),
            counts: counts.clone(),
            subscriptions: subscriptions.clone(),
        };
        let cache = SnapshotCache::with_source(Arc::new(source), &settings.cache, Some(fetched));
        let crossings = Crossings {
            pool: pool.clone(),
            counts: counts.clone(),
            cache: cache.clone(),
            subscriptions: subscriptions.clone(),
            settings: settings.entitlements.clone(),
        };
        background.push(tokio::spawn(crossings.watch(count_changes)).abort_handle());
        background.push(crate::rules::crossings::spawn(pool.clone()));
        let (invalidation, task, invalidation_listening) = Invalidation::start(pool.clone(), cache.clone());
        background.push(task);
        listening.push(invalidation_listening);
        let watch = Watch {
            pending: pending.clone(),
            overrides: overrides.clone(),
            transitions: Transitions::start(pool.clone()),
            policy: settings.policy.clone(),
        };
        let sources =
            transitions::Sources { fetched: fetches, pending: pending_changes, overrides: override_changes };
        background.push(
            tokio::spawn(transitions::watch(watch, cache.clone(), subscriptions.clone(), sources))
                .abort_handle(),
        );
        background.extend(webhooks::delivery::spawn(
            pool.clone(),
            settings.outbound_webhooks.clone(),
            sealer.clone().into_inner(),
        )?);
        background.push(crate::retention::spawn(pool.clone(), crate::retention::Plan::new(&settings)));
        let forwarder = forwarder::spawn(
            pool.clone(),
            &billabear,
            settings.outbox.clone(),
            settings.retention.interval,
            subscriptions.clone(),
            Some(cache.clone()),
        );
        let checker = Arc::new(Checker::new(
            cache,
            pending,
            holds.clone(),
            overrides.clone(),
            counts,
            (rules.clone(), rule_counts),
            settings.policy.clone(),
            settings.entitlements.clone(),
        ));
        let (ingest, enforced_writer) = Ingest::new(
            pool.clone(),
            settings.database.acquire_timeout,
            settings.policy.clone(),
            settings.entitlements.clone(),
        );
        own_thread("enforced-writer", enforced_writer.run())?;
        let health =
            web::Data::new(Health::new(pool.clone(), billabear.with_timeout(settings.billabear.timeout)));
        let audit = Audit::new(pool.clone());
        let outbox = Outbox::new(pool.clone());
        let destinations = Destinations::new(settings.outbound_webhooks.allowed_subnets());
        let endpoints = Endpoints::new(pool.clone(), sealer.into_inner(), destinations);
        let inbound = Inbound::new(
            settings.webhooks.secret(),
            audit.clone(),
            outbox.clone(),
            invalidation.clone(),
            subscriptions.clone(),
        );
        let handlers = Handlers {
            admission: web::Data::new(Admission::new(checker.clone(), ingest, subscriptions.clone())),
            limits: web::Data::new(Limits::new(
                audit.clone(),
                billabear.with_timeout(settings.billabear.admin_timeout),
                invalidation.clone(),
            )),
            health: health.clone(),
            exposition: web::Data::new(Exposition::new(metrics, outbox.clone(), endpoints.clone(), health)),
            checker: web::Data::from(checker),
            overrides: web::Data::new(overrides),
            rules: web::Data::new(rules),
            holds: web::Data::new(holds),
            subscriptions: web::Data::new(subscriptions),
            invalidation: web::Data::new(invalidation),
            audit: web::Data::new(audit),
            outbox: web::Data::new(outbox),
            endpoints: web::Data::new(endpoints),
            inbound: web::Data::new(inbound),
            sessions: web::Data::new(Sessions::new(pool.clone())),
            recorded: web::Data::new(Recorded::new(pool)),
            settings: web::Data::new(settings),
            verifier,
        };
        Ok(Self { handlers, forwarder, background, listening })
    }
}

/// Runs `task` on a thread of its own, with a runtime of its own (the enforced events' writer:
/// see `Ingest::new`). It ends when the task does.
fn own_thread(name: &str, task: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the {name} thread's runtime: {e}"))?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(task))
        .map_err(|e| anyhow::anyhow!("cannot start the {name} thread: {e}"))?;
    Ok(())
}

/// A one-worker server for `/metrics` alone.
fn metrics_server(
    address: SocketAddr,
    exposition: web::Data<Exposition>,
) -> anyhow::Result<(SocketAddr, Server)> {
    let listener = TcpListener::bind(address)
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} (server.metrics_address): {e}"))?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new().app_data(exposition.clone()).route("/metrics", web::get().to(routes::meta::metrics))
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

/// The sealer for secrets at rest, once every stored secret is under its key: values stored
/// plain (while a key is set) or under the previous key are sealed again now. A secret that no
/// configured key opens stops the start (its deliveries could not be signed); Postgres
/// unreachable does not (the next start seals them).
async fn seal_secrets(settings: &SecretsSettings, pool: &PgPool) -> anyhow::Result<web::Data<Sealer>> {
    let sealer = Sealer::new(settings.key().as_ref(), settings.previous_key().as_ref());
    if !sealer.sealing() {
        tracing::warn!(
            "secrets.key is not set: webhook signing secrets are stored in Postgres as they are \
             (set it to store them encrypted)"
        );
    }
    match webhooks::store::reseal(pool, &sealer).await {
        Ok(0) => {}
        Ok(sealed) => tracing::info!(sealed, "secrets: webhook signing secrets sealed under secrets.key"),
        Err(webhooks::store::ResealError::Storage(e)) => {
            tracing::warn!(error = %e, "secrets: cannot read the stored secrets now; they are sealed at the next start")
        }
        Err(e @ webhooks::store::ResealError::Key(..)) => {
            anyhow::bail!(
                "{e}: set secrets.key (and secrets.previous_key during a rotation) to the keys it was sealed with"
            )
        }
    }
    Ok(web::Data::new(sealer))
}
