//! The event outbox: usage events are stored in Postgres before they are acknowledged, then
//! forwarded to BillaBear with retries. The outbox row is also the dedupe record (`event_id` is
//! unique), so a write that fails leaves nothing behind and a retry is never swallowed.
//!
//! This module has the pieces so far: parsing (`event`), the retry schedule (`retry`) and the
//! storage operations (`store`). The HTTP routes and the forwarder build on them.

pub mod event;
pub mod forwarder;
pub mod ingest;
pub mod retry;
pub mod store;

pub use event::{IncomingEvent, Target};
