//! One integration-test binary (links once): the service, the BillaBear client and the simulator
//! over real HTTP, against a real Postgres.

mod admin;
mod auth;
mod billabear_client;
mod check;
mod cli;
mod console;
mod crash;
mod deploy;
mod docs;
mod enforce;
mod events;
mod feature_counts;
mod gate_jwt;
mod group_commit;
mod harness;
mod helpers;
mod layers;
mod outbox;
mod overrides;
mod pending;
mod plan;
mod proxies;
mod reservations;
mod retention;
mod rule_limits;
mod rules;
mod service;
mod simulator;
mod webhook_endpoints;
