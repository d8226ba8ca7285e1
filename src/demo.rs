//! `usage-gate demo`: the service against an in-process BillaBear simulator seeded with demo
//! customers, so a new user can try it with nothing but Postgres.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::{KeySettings, Settings};
use crate::sim::{Seed, SimConfig, SimServer};
use crate::startup::Application;
use crate::telemetry;

/// The simulator's key in the demo (it only listens on the address given).
const SIM_KEY: &str = "demo-billabear-key";
/// The usage-gate key the demo adds when the configuration has none.
pub const DEMO_KEY: &str = "demo-key-change-me";
/// The webhook secret the demo sets when the configuration has none.
const DEMO_WEBHOOK_SECRET: &str = "demo-webhook-secret";

pub async fn run(mut raw: Settings, sim_address: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(sim_address)
        .map_err(|e| anyhow::anyhow!("cannot start the simulator on {sim_address} (--sim-address): {e}"))?;
    // A 10 s counter tick instead of BillaBear's 60 s, so sent events show up sooner.
    let sim = SimServer::start(
        listener,
        SimConfig {
            api_key: SIM_KEY.into(),
            tick: Duration::from_secs(10),
            seed: Seed::built_in(),
            workers: 1,
            webhook_url: None,
        },
    )?;
    raw.billabear.base_url = sim.base_url().into();
    raw.billabear.api_key = SecretString::from(SIM_KEY);
    let demo_key = raw.auth.keys.is_empty();
    if demo_key {
        raw.auth.keys.push(KeySettings {
            name: "demo".into(),
            key: Some(SecretString::from(DEMO_KEY)),
            sha256: None,
            scopes: vec!["check".into(), "events".into(), "admin".into()],
        });
    }
    // A receiver tried with the demo listens on this machine; loopback is closed by default.
    if raw.outbound_webhooks.allowed_subnets.is_empty() {
        raw.outbound_webhooks.allowed_subnets = vec!["127.0.0.0/8".into(), "::1/128".into()];
    }
    if raw.webhooks.secret.expose_secret().is_empty() {
        raw.webhooks.secret = SecretString::from(DEMO_WEBHOOK_SECRET);
    }
    let secret = raw.webhooks.secret.expose_secret().to_owned();
    let settings = raw.validate()?;
    telemetry::init_tracing(&settings.log);
    let app = Application::build(settings).await?;
    // The simulator sends its webhooks (a customer disabled, a limit fired) to usage-gate.
    *sim.shared.webhook_url() = Some(format!("http://{}/v1/webhooks/billabear/{secret}", app.addr()));
    print_banner(app.addr(), &sim, demo_key);
    app.run_until_stopped().await
}

fn print_banner(addr: SocketAddr, sim: &SimServer, demo_key: bool) {
    let key = if demo_key { DEMO_KEY } else { "<a key from your configuration>" };
    let base = format!("http://{addr}");
    println!(
        r#"
usage-gate demo is running (Ctrl-C stops it).

  service     {base}            API docs: {base}/docs/
  console     {base}/console/   (sign in with the API key below)
  BillaBear   {sim_url}  (simulator, X-API-Key: {SIM_KEY}; control API: {control})
  API key     {key}  (scopes: check, events, admin)

Demo customers (amounts in USD cents, as BillaBear sends them):
  11111111-1111-4111-8111-111111111111  Acme      estimate  1200, DISABLE above 10000  (under; plan: sso, 25 projects, 10 users)
  22222222-2222-4222-8222-222222222222  Globex    estimate  9500, DISABLE above 10000  (near; plan: 3 projects, 2 users)
  33333333-3333-4333-8333-333333333333  Initech   estimate  6000, WARNING above 5000   (over warning)
  44444444-4444-4444-8444-444444444444  Umbrella  estimate 15000, DISABLE above 10000  (over)
  55555555-5555-4555-8555-555555555555  Hooli     status disabled                      (disabled)
  66666666-6666-4666-8666-666666666666  Stark     flat plan, no usage

Try:
  curl -s -H 'Authorization: Bearer {key}' {base}/v1/customers/44444444-4444-4444-8444-444444444444/check
  curl -s -H 'Authorization: Bearer {key}' '{base}/v1/customers/11111111-1111-4111-8111-111111111111/check?cost=9000'
  curl -s -H 'Authorization: Bearer {key}' '{base}/v1/customers/22222222-2222-4222-8222-222222222222/check?feature=sso'
  curl -s -H 'Authorization: Bearer {key}' '{base}/v1/customers/11111111-1111-4111-8111-111111111111/check?feature=projects&in_use=24&quantity=2'
  curl -si -H 'Authorization: Bearer {key}' -H 'X-Customer-Id: 33333333-3333-4333-8333-333333333333' {base}/v1/gate
  curl -s {base}/readyz
"#,
        sim_url = sim.base_url(),
        control = sim.control_url(),
    );
}
