//! The command line: parses arguments, loads the configuration, runs the chosen command.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, LogFormat, LogSettings, Settings};
use crate::sim::{Seed, SimConfig, SimServer};
use crate::startup::Application;
use crate::{db, demo, telemetry};

#[derive(Debug, Parser)]
#[command(name = "usage-gate", version, about = "Enforces BillaBear usage limits")]
pub struct Cli {
    /// A TOML file layered over the built-in defaults; repeat it for several, a later file's keys
    /// winning (USAGE_GATE_CONFIG: comma-separated).
    #[arg(long, global = true, env = "USAGE_GATE_CONFIG", value_delimiter = ',')]
    pub config: Vec<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve {
        /// Start even with a placeholder or demo secret this project ships (`change-me…`, an
        /// all-zero `secrets.key`): for a laptop's docker-compose, never a shared deployment.
        #[arg(long)]
        allow_placeholder_secrets: bool,
    },
    /// Run the service against an in-process BillaBear simulator with demo customers.
    Demo {
        /// Where the simulator listens.
        #[arg(long, default_value = "127.0.0.1:8090")]
        sim_address: SocketAddr,
    },
    /// Run the BillaBear simulator alone.
    Sim {
        #[arg(long, default_value = "127.0.0.1:8090")]
        address: SocketAddr,
        /// The X-API-Key it accepts.
        #[arg(long, env = "SIM_API_KEY")]
        api_key: String,
        /// Seed data (TOML, or JSON by extension); the built-in demo seed otherwise.
        #[arg(long)]
        seed: Option<PathBuf>,
        /// How often usage is counted and limits are checked (BillaBear: every 60 s).
        #[arg(long, default_value_t = 60_000)]
        tick_ms: u64,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Where to POST webhooks (usage-gate's /v1/webhooks/billabear/SECRET), as BillaBear would.
        #[arg(long)]
        webhook_url: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration and print the effective values, secrets redacted.
    Config,
    /// Exit 0 if the service at URL answers 200 (for container health checks).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

/// Exit codes: 0 done, 1 failed while running, 2 bad configuration or arguments.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(execute(cli))
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("usage-gate: {message}");
    ExitCode::from(code)
}

async fn execute(cli: Cli) -> ExitCode {
    let command = cli.command.unwrap_or(Command::Serve { allow_placeholder_secrets: false });
    if let Command::Healthcheck { url } = &command {
        return healthcheck(url).await;
    }
    if let Command::Sim { address, api_key, seed, tick_ms, workers, webhook_url } = command {
        let config = SimConfig {
            api_key,
            tick: Duration::from_millis(tick_ms.max(1)),
            seed: Seed::default(),
            workers,
            webhook_url,
        };
        return report(run_sim(address, config, seed).await);
    }
    let raw = match Settings::load(&cli.config) {
        Ok(raw) => raw,
        Err(e) => return config_failure(e),
    };
    if let Command::Demo { sim_address } = command {
        return report(demo::run(raw, sim_address).await);
    }
    let settings = match raw.validate() {
        Ok(settings) => settings,
        Err(e) => return config_failure(e),
    };
    let placeholders_allowed = matches!(command, Command::Serve { allow_placeholder_secrets: true });
    match raw.refuse_placeholders() {
        Err(e) if !placeholders_allowed => return config_failure(e),
        Err(e) => {
            eprintln!("usage-gate: starting with placeholder secrets (--allow-placeholder-secrets): {e}")
        }
        Ok(()) => {}
    }
    match command {
        Command::Config => {
            print!("{}", raw.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Migrate => {
            telemetry::init_tracing(&settings.log);
            let result = async {
                let pool = db::connect(&settings.database).await?;
                db::migrate(&pool).await?;
                println!("migrations applied ({} known)", db::MIGRATOR.iter().count());
                anyhow::Ok(())
            };
            report(result.await)
        }
        _ => {
            telemetry::init_tracing(&settings.log);
            let address = *settings.server.address;
            let result = async {
                let app = Application::build(settings).await?;
                tracing::info!(%address, "usage-gate listening");
                app.run_until_stopped().await
            };
            report(result.await)
        }
    }
}

fn config_failure(e: ConfigError) -> ExitCode {
    fail(2, e)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, format!("{e:#}")),
    }
}

/// `config.seed` is replaced by `seed` (a file) or the built-in seed.
async fn run_sim(address: SocketAddr, mut config: SimConfig, seed: Option<PathBuf>) -> anyhow::Result<()> {
    telemetry::init_tracing(&LogSettings { format: LogFormat::Auto.into(), level: "info".into() });
    if config.api_key.is_empty() {
        anyhow::bail!("--api-key must not be empty");
    }
    config.seed = match seed {
        Some(path) => Seed::from_file(&path)?,
        None => Seed::built_in(),
    };
    let listener =
        TcpListener::bind(address).map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
    let sim = SimServer::start(listener, config)?;
    tracing::info!(base_url = %sim.base_url(), control = %sim.control_url(), "BillaBear simulator listening");
    sim.run_until_signal().await
}

async fn healthcheck(url: &str) -> ExitCode {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build();
    match client.map(|c| c.get(url).send()) {
        Ok(request) => match request.await {
            Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
            Ok(response) => fail(1, format!("{url} answered {}", response.status())),
            Err(e) => fail(1, format!("{url}: {e}")),
        },
        Err(e) => fail(1, e),
    }
}
