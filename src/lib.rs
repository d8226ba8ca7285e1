//! usage-gate: enforces BillaBear usage limits. See README.md for what it does and how to run it,
//! and its "How the code is laid out" for where to start on a change.
//!
//! The modules stand in six layers. A module uses modules of its own layer or the ones below,
//! never above (`tests/api/layers.rs` holds the code to this; within a layer no two modules
//! use each other, which `../shared/scripts/module-cycles` checks in CI).
//!
//! 1. **Core**, pure: no I/O, no HTTP, schema or client crate.
//!    `domain` (values built by parsing), `policy` (the decision on money limits, mode and
//!    override), `entitlements` (the plan's features, feature limits and user count),
//!    `judgement` (every kind of limit judged at once, for a check and an enforced write),
//!    `projection` (pricing usage BillaBear has not counted), `snapshot` (what a decision is made
//!    from, and the clock).
//! 2. **Edges**: configuration, keys, Postgres and BillaBear.
//!    `config`, `auth` (API keys), `db` (the pool, migrations, and `db::group`, group commit),
//!    `audit` (the audit log), `sessions` (the console's sessions), `mirror` (per-customer copies
//!    of Postgres tables), `memo`, `telemetry`, `billabear` (the client, and a customer's answers
//!    turned into a snapshot), `subscriptions` (which customer owns which subscription),
//!    `seal` (secrets encrypted at rest), `jwt`, `shutdown`.
//!
//! The services, each the one door to its tables, in three layers:
//!
//! 3. **State**, what is kept: `cache` (snapshots, fetched at most once at a time), `pending`
//!    (usage not yet counted), `feature_counts` (feature limits usage-gate counts), `overrides`,
//!    `outbox` (events to BillaBear), `rules` (usage-gate's own limit rules), `webhooks`
//!    (outbound, signed), `invalidation` (telling replicas a customer changed), `retention`
//!    (rows past their window), `health`.
//! 4. **Judging**: `fetch` (BillaBear's answers settled against the pending ledger), `enforce`
//!    (judging under a customer's lock), `reservations` (holds), `check` (the answer and its
//!    explanation).
//! 5. **Intake**: `admission` (everything that comes in and may be refused: events, batches,
//!    holds, their commits and releases), `limits` (usage limits in BillaBear), `inbound`
//!    (BillaBear's webhooks), `transitions` (decision changes: audited, sampled, told).
//! 6. **HTTP and the process**: `error` (every error to problem+json, the one place), `routes`,
//!    `console` (both call services only), `startup` (wiring), `sim` (the BillaBear simulator),
//!    `demo`, `cli`.

pub mod admission;
pub mod audit;
pub mod auth;
pub mod billabear;
pub mod cache;
pub mod check;
pub mod cli;
pub mod config;
pub mod console;
pub mod db;
pub mod demo;
pub mod domain;
pub mod enforce;
pub mod entitlements;
pub mod error;
pub mod feature_counts;
pub mod fetch;
pub mod health;
pub mod inbound;
pub mod invalidation;
pub mod judgement;
pub mod jwt;
pub mod limits;
pub mod memo;
pub mod mirror;
pub mod outbox;
pub mod overrides;
pub mod pending;
pub mod policy;
pub mod projection;
pub mod reservations;
pub mod retention;
pub mod routes;
pub mod rules;
pub mod seal;
pub mod sessions;
pub mod shutdown;
pub mod sim;
pub mod snapshot;
pub mod startup;
pub mod subscriptions;
pub mod telemetry;
pub mod transitions;
pub mod webhooks;
