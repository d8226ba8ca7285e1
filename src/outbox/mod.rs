//! The event outbox: usage events are stored in Postgres before they are acknowledged, then
//! forwarded to BillaBear with retries. The outbox row is also the dedupe record (`event_id` is
//! unique), so a write that fails leaves nothing behind and a retry is never swallowed.
//!
//! `event` parses what callers send; `ingest` commits concurrent requests' events together;
//! `store` holds the table's operations; `forwarder` delivers to BillaBear on the schedule
//! `retry` sets. The HTTP routes are in `routes::events` and `routes::outbox`.

pub mod event;
pub mod forwarder;
pub mod ingest;
pub mod retry;
pub mod store;

pub use event::IncomingEvent;
