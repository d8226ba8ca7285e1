//! usage-gate: enforces BillaBear usage limits. See README.md for what it does and how to run it,
//! and its "How the code is laid out" for where to start on a change.
//!
//! The modules stand in four layers. A module uses modules of its own layer or the ones below,
//! never above (`tests/api/layers.rs` holds the code to this; within a layer no two modules
//! use each other, which `../shared/scripts/module-cycles` checks in CI).
//!
//! 1. **Core**, pure: no I/O, no HTTP, schema or client crate.
//!    `domain` (values built by parsing), `policy` (the decision), `projection` (pricing usage
//!    BillaBear has not counted), `snapshot` (what a decision is made from, and the clock).
//! 2. **Edges**: configuration, keys, Postgres and BillaBear.
//!    `config`, `auth` (API keys), `db`, `audit` (the audit log), `mirror` (per-customer copies
//!    of Postgres tables), `memo`, `telemetry`, `billabear` (the client, and a customer's answers
//!    turned into a snapshot), `subscriptions` (which customer owns which subscription),
//!    `seal` (secrets encrypted at rest), `shutdown`.
//! 3. **Services**: what usage-gate does, each over its own stores.
//!    `cache` (snapshots, fetched at most once at a time), `pending` (usage not yet counted),
//!    `overrides`, `reservations` (holds), `enforce` (judging under a customer's lock),
//!    `outbox` (events to BillaBear), `check` (the answer and its explanation), `admission`
//!    (what comes in and may be refused: events, batches, holds), `limits` (usage limits in
//!    BillaBear), `transitions` (decision changes: audited, sampled, told), `retention` (rows
//!    past their window), `webhooks`
//!    (outbound, signed), `invalidation` (telling replicas a customer changed), `health`.
//! 4. **HTTP and the process**: `error` (every error to problem+json, the one place), `routes`,
//!    `console`, `startup` (wiring), `sim` (the BillaBear simulator), `demo`, `cli`.

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
pub mod error;
pub mod health;
pub mod inbound;
pub mod invalidation;
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
