//! usage-gate: enforces BillaBear usage limits. See README.md for what it does and how to run it.

pub mod audit;
pub mod auth;
pub mod billabear;
pub mod cache;
pub mod check;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod domain;
pub mod enforce;
pub mod error;
pub mod invalidation;
pub mod memo;
pub mod outbox;
pub mod overrides;
pub mod pending;
pub mod policy;
pub mod projection;
pub mod reservations;
pub mod routes;
pub mod sim;
pub mod startup;
pub mod subscriptions;
pub mod telemetry;
pub mod webhooks;
