//! Reservations (holds): money set aside under a customer's DISABLE limit for work whose cost
//! comes later (docs/enforcement.md, "Enforcement at the point of use").
//!
//! - **Postgres holds them** (`store`): granted under the customer's lock like enforced events
//!   (`enforce`), committed (the real usage stored and the hold closed in one transaction),
//!   released, or expired, each audited in the transaction that makes it.
//! - **Two writers per replica** (`writer`), one for new holds and one for commits and
//!   releases, write each change together with whatever else waits (group commit), and reload
//!   the changed customers' copies.
//! - **Memory holds a copy** of the open ones per customer (a [`Mirror`]), for the check's
//!   `estimate.reserved`. A check skips holds past their `expires_at` by itself, so an expired hold stops counting on
//!   every replica at once; the expiry task closes it in Postgres within [`EXPIRE_EVERY`].

pub mod store;
mod writer;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::audit::Actor;
use crate::db::{self, StorageError};
use crate::domain::{CustomerId, FieldError, MetricCode, Subject, whole_number};
use crate::enforce::Rules;
use crate::enforce::{Gate, Judged};
use crate::mirror::{self, Mirror, Started};
use crate::outbox::IncomingEvent;
use store::{Change, Created, Done, ReservationRow};
pub use store::{Committed, Reuse};
use uuid::Uuid;

/// The header a hold is asked for again with (the name its errors give as the field).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// How often holds past their `expires_at` are closed in Postgres (and audited).
pub const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// How often the reservations are vacuumed if they need it (see [`db::vacuum_busy`]).
const VACUUM_EVERY: Duration = Duration::from_secs(5);

/// Registers `usage_gate_reservations_total` for every outcome, so `/metrics` shows zeros
/// before the first hold.
pub fn register_metrics() {
    for outcome in writer::OUTCOMES.into_iter().chain(["expired"]) {
        metrics::counter!("usage_gate_reservations_total", "outcome" => outcome).increment(0);
    }
}

/// What a hold is asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// Minor units.
    Amount(i64),
    /// What an event with this code and value would cost now.
    Event { code: String, value: f64 },
}

/// A hold's default lifetime, and the longest one may ask for.
const DEFAULT_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// A new hold, parsed from the API's body: what it asks for and how long it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct NewHold {
    pub ask: Ask,
    pub ttl: Duration,
    /// Who inside the customer it is for (usage-gate's per-subject rules).
    pub subject: Option<Subject>,
}

impl NewHold {
    /// Reads `{"amount"}` or `{"code", "value"}`, and `ttl_ms`; every invalid field is named.
    pub fn from_json(body: &Value) -> Result<Self, Vec<FieldError>> {
        parse_hold(body)
    }
}

/// Reads `{"amount": N}` or `{"code", "value"}`, with an optional `ttl_ms`; every invalid field
/// is named.
fn parse_hold(body: &Value) -> Result<NewHold, Vec<FieldError>> {
    let Some(object) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let amount = object.get("amount").filter(|v| !v.is_null());
    let code = object.get("code").filter(|v| !v.is_null());
    let value = object.get("value").filter(|v| !v.is_null());
    let ask = match (amount, code, value) {
        (Some(amount), None, None) => match whole_number(amount).filter(|a| *a >= 0) {
            Some(amount) => Some(Ask::Amount(amount)),
            None => {
                errors.push(FieldError::new("amount", "must be a whole number of minor units, 0 or more"));
                None
            }
        },
        (None, code, value) if code.is_some() || value.is_some() => {
            let code = match code.and_then(Value::as_str).map(MetricCode::parse) {
                Some(Ok(code)) => Some(code),
                Some(Err(e)) => {
                    errors.push(FieldError::new("code", e.to_string()));
                    None
                }
                None => {
                    errors.push(FieldError::new("code", "required with value: the metric code, a string"));
                    None
                }
            };
            let value = value.and_then(Value::as_f64).filter(|v| v.is_finite() && *v >= 0.0);
            if value.is_none() {
                errors.push(FieldError::new("value", "required with code: a finite number, 0 or more"));
            }
            code.zip(value).map(|(code, value)| Ask::Event { code: code.as_str().to_owned(), value })
        }
        _ => {
            errors.push(FieldError::new(
                "amount",
                "give either amount (minor units) or code and value, not both",
            ));
            None
        }
    };
    let ttl = match object.get("ttl_ms").filter(|v| !v.is_null()) {
        None => Some(DEFAULT_TTL),
        Some(ttl) => {
            let ttl = whole_number(ttl)
                .and_then(|ms| u64::try_from(ms).ok())
                .filter(|ms| *ms >= 1)
                .map(Duration::from_millis)
                .filter(|t| *t <= MAX_TTL);
            if ttl.is_none() {
                errors.push(FieldError::new(
                    "ttl_ms",
                    "must be a whole number of milliseconds, 1 to 86400000 (24 h)",
                ));
            }
            ttl
        }
    };
    let subject = match object.get("subject").filter(|v| !v.is_null()) {
        None => None,
        Some(Value::String(s)) => {
            Subject::parse(s).map_err(|e| errors.push(FieldError::new("subject", e.to_string()))).ok()
        }
        Some(_) => {
            errors.push(FieldError::new("subject", "must be a string: who inside the customer it is for"));
            None
        }
    };
    match (ask, ttl) {
        (Some(ask), Some(ttl)) if errors.is_empty() => Ok(NewHold { ask, ttl, subject }),
        _ => Err(errors),
    }
}

/// One reservation as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reservation {
    pub id: Uuid,
    pub customer_id: Uuid,
    /// Minor units set aside.
    pub amount: i64,
    /// The event's code and value it was priced from, if it was asked for that way.
    pub code: Option<String>,
    pub value: Option<f64>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: DateTime<Utc>,
    /// The API key's name.
    pub created_by: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub closed_at: Option<DateTime<Utc>>,
    /// `committed`, `released` or `expired`; null while open.
    pub closed_as: Option<String>,
}

crate::domain::moved_fields!(ReservationRow => Reservation {
    id, customer_id, amount, code, value, created_at, expires_at, created_by, closed_at, closed_as
});

/// An open hold as a check counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The reservation's id: this replica's own writes edit its copy by it (`writer`).
    pub id: Uuid,
    pub amount: i64,
    /// Unix ms; the hold stops counting then.
    pub expires_at_ms: i64,
}

impl Hold {
    pub fn of(id: Uuid, amount: i64, expires_at: DateTime<Utc>) -> Self {
        Self { id, amount, expires_at_ms: expires_at.timestamp_millis() }
    }
}

/// A hold not made because its idempotency key made another, or one that holds nothing now.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{}", key_reused(*.0, .1))]
    KeyReused(Reuse, Box<ReservationRow>),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn key_reused(why: Reuse, earlier: &ReservationRow) -> String {
    match why {
        Reuse::OtherAsk => format!(
            "this key made hold {} for {} asked for otherwise; a new hold needs a new key",
            earlier.id,
            match (&earlier.code, earlier.value) {
                (Some(code), Some(value)) => format!("{value} of {code}"),
                _ => format!("an amount of {}", earlier.amount),
            }
        ),
        Reuse::Closed => format!(
            "this key made hold {}, which is {} and holds nothing now; a new hold needs a new key",
            earlier.id,
            earlier.closed_as.as_deref().unwrap_or("expired")
        ),
    }
}

/// A request for a hold as judged: granted (`reservation`), or refused with nothing held.
#[derive(Debug)]
pub struct Judgement {
    pub reservation: Option<ReservationRow>,
    pub judged: Judged,
    /// The hold was made by an earlier request with the same idempotency key.
    pub replayed: bool,
}

/// Cheap to clone; clones share one copy.
#[derive(Clone)]
pub struct Holds {
    pool: PgPool,
    open: Mirror<CustomerId, Box<[Hold]>>,
    writer: writer::Writer,
}

impl Holds {
    /// Starts keeping the copy up to date, the writer (which connects with the pool's options,
    /// waiting at most `connect_timeout`, and judges new holds by `rules`), and expiring holds
    /// in Postgres.
    pub fn start(pool: PgPool, connect_timeout: Duration, rules: Rules) -> Started<Self> {
        let load: mirror::Loader<CustomerId, Box<[Hold]>> =
            |pool, customers| store::open_holds(pool, customers).boxed();
        // The writers put what they commit in the copy themselves; the others' changes (other
        // replicas', expiry) come by notification.
        let writers = db::Backends::default();
        let Started { service: open, mut tasks, listening, .. } =
            Mirror::start_beside(pool.clone(), store::NOTIFY_CHANNEL, "reservations", load, writers.clone());
        let (writer, writing) =
            writer::Writer::start(pool.clone(), connect_timeout, rules, open.clone(), writers);
        tasks.extend(writing);
        let vacuum_pool = pool.clone();
        let expire_pool = pool.clone();
        let expiring = tokio::spawn(db::every(EXPIRE_EVERY, "close expired holds", move || {
            let pool = expire_pool.clone();
            async move { store::expire(&pool).await }
        }))
        .abort_handle();
        tasks.push(expiring);
        // Every close leaves a dead row, and the partial index of open holds that each
        // enforced write and reload reads keeps its entry until a vacuum: at thousands of
        // commits a second, hold → commit pairs fell from 1,638/s to 577/s within half a minute
        // (`bench/enforce.py`) before this.
        let vacuuming = tokio::spawn(db::every(VACUUM_EVERY, "vacuum the reservations", move || {
            let pool = vacuum_pool.clone();
            async move { db::vacuum_busy(&pool, &["reservations"]).await }
        }))
        .abort_handle();
        tasks.push(vacuuming);
        Started { service: Self { pool, open, writer }, changes: (), tasks, listening }
    }

    /// What the customer's open holds set aside at `now_ms` (Unix ms).
    pub fn reserved(&self, customer: CustomerId, now_ms: u64) -> i64 {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        self.open
            .with(customer, |holds| {
                holds
                    .iter()
                    .filter(|h| h.expires_at_ms > now)
                    .fold(0i64, |sum, h| sum.saturating_add(h.amount))
            })
            .unwrap_or(0)
    }

    /// A hold for the gate's customer if it fits (judged under its lock with its pending usage
    /// and open holds): stored, or refused with nothing stored; and how it was judged. With a
    /// `key` that made one of the customer's holds before, that hold, if asked for the same way
    /// and still open.
    pub async fn create(
        &self,
        gate: Gate,
        NewHold { ask, ttl, subject }: NewHold,
        actor: Actor,
        key: Option<String>,
    ) -> Result<Judgement, HoldError> {
        let customer = gate.customer;
        let change = Change::Hold { customer, gate: Some(gate), ask, ttl, subject, actor, key };
        match self.writer.write(change).await? {
            Done::Hold(Created { reservation, judged: Some(judged), replayed }) => {
                Ok(Judgement { reservation, judged, replayed })
            }
            Done::KeyReused(why, earlier) => Err(HoldError::KeyReused(why, Box::new(earlier))),
            _ => Err(unanswered().into()),
        }
    }

    /// A hold stored without judging it (the policy's fallback allowed it): of `ask`'s amount,
    /// or 0 for an event (its price is unknown); and whether an earlier request with the same
    /// `key` made it.
    pub async fn grant(
        &self,
        customer: CustomerId,
        NewHold { ask, ttl, subject }: NewHold,
        actor: Actor,
        key: Option<String>,
    ) -> Result<(ReservationRow, bool), HoldError> {
        let change = Change::Hold { customer, gate: None, ask, ttl, subject, actor, key };
        match self.writer.write(change).await? {
            Done::Hold(Created { reservation: Some(reservation), replayed, .. }) => {
                Ok((reservation, replayed))
            }
            Done::KeyReused(why, earlier) => Err(HoldError::KeyReused(why, Box::new(earlier))),
            _ => Err(unanswered().into()),
        }
    }

    /// Stores the work's real usage and closes the hold, in one transaction (see
    /// [`store::write`]). `owners`: each event's customer, as far as usage-gate can tell.
    pub async fn commit(
        &self,
        id: Uuid,
        events: Vec<IncomingEvent>,
        owners: Vec<Option<CustomerId>>,
        actor: Actor,
    ) -> Result<Committed, StorageError> {
        match self.writer.write(Change::Commit { id, events, owners, actor }).await? {
            Done::Commit(committed) => Ok(committed),
            _ => Err(unanswered()),
        }
    }

    /// The customer's open holds, newest first.
    pub async fn list_open(&self, customer: CustomerId) -> Result<Vec<Reservation>, StorageError> {
        let rows = store::list_open(&self.pool, customer).await?;
        Ok(rows.into_iter().map(Reservation::from).collect())
    }

    /// Releases an open hold; None when there is none with this id (unknown, or closed before).
    pub async fn release(&self, id: Uuid, actor: Actor) -> Result<Option<ReservationRow>, StorageError> {
        match self.writer.write(Change::Release { id, actor }).await? {
            Done::Release(released) => Ok(released),
            _ => Err(unanswered()),
        }
    }
}

/// The writer answers each change with its own kind; another would be a fault of ours.
fn unanswered() -> StorageError {
    StorageError::impossible("reservations: a change was answered as another kind")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_hold_asks_for_an_amount_or_an_events_price() {
        assert_eq!(
            parse_hold(&json!({"amount": 250})).unwrap(),
            NewHold { ask: Ask::Amount(250), ttl: DEFAULT_TTL, subject: None }
        );
        assert_eq!(
            parse_hold(&json!({"code": "tokens", "value": 1.5, "ttl_ms": 5000})).unwrap(),
            NewHold {
                ask: Ask::Event { code: "tokens".into(), value: 1.5 },
                ttl: Duration::from_secs(5),
                subject: None
            }
        );
        let fields = |body: Value| -> Vec<String> {
            parse_hold(&body).unwrap_err().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(fields(json!({})), ["amount"]);
        assert_eq!(fields(json!({"amount": 5, "code": "x", "value": 1})), ["amount"]);
        assert_eq!(fields(json!({"amount": -1})), ["amount"]);
        assert_eq!(fields(json!({"amount": 1.5})), ["amount"]);
        assert_eq!(fields(json!({"code": "x"})), ["value"]);
        assert_eq!(fields(json!({"value": 3})), ["code"]);
        assert_eq!(fields(json!({"amount": 1, "ttl_ms": 0})), ["ttl_ms"]);
        assert_eq!(fields(json!({"amount": 1, "ttl_ms": 86_400_001})), ["ttl_ms"]);
        assert_eq!(fields(json!({"amount": "1", "ttl_ms": "5"})), ["amount", "ttl_ms"]);
        assert_eq!(fields(json!([1])), ["body"]);
    }
}
