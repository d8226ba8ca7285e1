//! Overrides: an operator's bounded exception to a customer's decision, `allow`, `block` or
//! `raise` (the DISABLE threshold), until `expires_at` (docs/enforcement.md, "Overrides").
//!
//! - **Postgres holds them** (`store`): a customer has at most one open override (a new one
//!   supersedes it); created, ended and expired are each audited once, in the transaction that
//!   makes the change.
//! - **Memory holds a copy** of the open ones (a [`Mirror`]), for checks, enforced events and
//!   holds. A check ignores an override past its `expires_at` by itself, so expiry is exact on
//!   every replica; the expiry task closes it in Postgres within [`EXPIRE_EVERY`].
//! - **Changes are told** ([`Changed`]) to whoever audits decision transitions: an override
//!   can change a customer's status without a fetch.

pub mod store;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::audit::Actor;
use crate::db::{self, StorageError};
use crate::domain::{CustomerId, FieldError, Timestamp};
use crate::mirror::{self, Mirror, Started};
use crate::policy::Effect;
use store::OverrideRow;

/// How often overrides past their `expires_at` are closed in Postgres (and audited).
pub const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// An open override as a check applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override {
    pub id: Uuid,
    pub effect: Effect,
    /// Unix ms; it stops applying then.
    pub expires_at_ms: i64,
}

impl Override {
    pub fn applies_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms > i64::try_from(now_ms).unwrap_or(i64::MAX)
    }

    /// How a decision shows it.
    pub fn view(&self) -> OverrideView {
        OverrideView {
            id: self.id,
            effect: self.effect.as_str(),
            amount: match self.effect {
                Effect::Raise(amount) => Some(amount),
                _ => None,
            },
            expires_at: Timestamp(self.expires_at_ms.max(0) as u64),
        }
    }
}

/// The override a decision was made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OverrideView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// `allow`, `block` or `raise`.
    #[schema(value_type = String)]
    pub effect: &'static str,
    /// For `raise`: the DISABLE threshold judged instead (minor units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
}

/// One override as stored and listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OverrideRecord {
    pub id: Uuid,
    pub customer_id: Uuid,
    /// `allow`, `block` or `raise`.
    pub effect: String,
    /// For `raise`: the DISABLE threshold judged instead (minor units).
    pub amount: Option<i64>,
    pub reason: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// The API key's name.
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: DateTime<Utc>,
    /// In force now: not ended and not past `expires_at`.
    pub active: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<DateTime<Utc>>,
    /// `ended` (by an operator), `superseded` (by a newer override) or `expired`; null while open.
    pub ended_as: Option<String>,
    pub ended_by: Option<String>,
    pub end_reason: Option<String>,
}

crate::domain::moved_fields!(OverrideRow => OverrideRecord {
    id, customer_id, effect, amount, reason, created_at, created_by, expires_at, active, ended_at,
    ended_as, ended_by, end_reason
});

/// A new override, parsed from the API's body or the console's form.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOverride {
    pub effect: Effect,
    pub reason: String,
    pub expires_at: DateTime<Utc>,
}

impl NewOverride {
    /// Reads `{"effect", "amount" (raise only), "reason", "expires_at"}` as of `now`; every
    /// invalid field is named.
    pub fn from_json(body: &Value, now: DateTime<Utc>) -> Result<Self, Vec<FieldError>> {
        parse_new(body, now)
    }

    /// The console's form: an effect, an amount as typed (empty: none), a reason, and how many
    /// hours from `now` it ends (1 to 2160); named as the API's fields are.
    pub fn from_form(
        effect: &str,
        amount: &str,
        reason: &str,
        expires_in_hours: &str,
        now: DateTime<Utc>,
    ) -> Result<Self, Vec<FieldError>> {
        let expires_at = match expires_in_hours.parse::<i64>() {
            Ok(hours) if (1..=2160).contains(&hours) => {
                serde_json::json!((now + chrono::TimeDelta::hours(hours)).to_rfc3339())
            }
            _ => Value::Null,
        };
        let mut body = serde_json::json!({"effect": effect, "reason": reason, "expires_at": expires_at});
        // The form always has an amount box: an empty one is no amount (only `raise` takes one).
        if !amount.is_empty() {
            body["amount"] = crate::domain::form_number(amount);
        }
        parse_new(&body, now)
    }
}

/// A customer's open override changed in this replica's copy.
pub type Changed = mirror::Change<CustomerId, Override>;

/// Cheap to clone; clones share one copy.
#[derive(Clone)]
pub struct Overrides {
    pool: PgPool,
    open: Mirror<CustomerId, Override>,
}

/// Why an override was not created or ended.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("invalid override")]
    Invalid(Vec<FieldError>),
    #[error("no override {id} in force for customer {customer}")]
    NotInForce { id: Uuid, customer: CustomerId },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for OverrideError {
    fn from(e: sqlx::Error) -> Self {
        OverrideError::Storage(e.into())
    }
}

impl Overrides {
    /// Starts keeping the copy up to date and expiring overrides in Postgres.
    pub fn start(pool: PgPool) -> Started<Self, mpsc::Receiver<Changed>> {
        let load: mirror::Loader<CustomerId, Override> =
            |pool, customers| store::open_overrides(pool, customers).boxed();
        let Started { service: open, changes, mut tasks, listening } =
            Mirror::start_telling(pool.clone(), store::NOTIFY_CHANNEL, "overrides", load);
        let expiring = tokio::spawn(db::every(EXPIRE_EVERY, "close expired overrides", {
            let pool = pool.clone();
            move || {
                let pool = pool.clone();
                async move { store::expire(&pool).await }
            }
        }))
        .abort_handle();
        tasks.push(expiring);
        Started { service: Self { pool, open }, changes, tasks, listening }
    }

    /// The customer's override in force at `now_ms` (Unix ms), if any.
    pub fn active(&self, customer: CustomerId, now_ms: u64) -> Option<Override> {
        self.open.with(customer, |o| *o).filter(|o| o.applies_at(now_ms))
    }

    /// Reads the customer's open override now, after a change this replica made: its next check
    /// applies it without waiting for the notification.
    pub async fn reload(&self, customer: CustomerId) {
        self.open.reload(customer).await
    }

    /// Creates an override for `actor`; the customer's open one, if any, ends (`superseded`),
    /// and this replica applies it at once.
    pub async fn create(
        &self,
        actor: &Actor,
        customer: CustomerId,
        new: &NewOverride,
    ) -> Result<OverrideRecord, OverrideError> {
        let created = store::create(&self.pool, customer, new, actor).await?;
        self.reload(customer).await;
        Ok(created.into())
    }

    /// Newest first: the customer's overrides (all customers' when None), only those in force
    /// when `active_only`, at most `limit`.
    pub async fn list(
        &self,
        customer: Option<CustomerId>,
        active_only: bool,
        limit: i64,
    ) -> Result<Vec<OverrideRecord>, StorageError> {
        let rows = store::list(&self.pool, customer, active_only, limit).await?;
        Ok(rows.into_iter().map(OverrideRecord::from).collect())
    }

    /// Ends the override `id` in force for `actor`, or says it is not in force.
    pub async fn end(
        &self,
        actor: &Actor,
        customer: CustomerId,
        id: Uuid,
        reason: Option<&str>,
    ) -> Result<(), OverrideError> {
        match store::end(&self.pool, customer, id, actor, reason).await? {
            Some(_) => {
                self.reload(customer).await;
                Ok(())
            }
            None => Err(OverrideError::NotInForce { id, customer }),
        }
    }
}

/// The furthest ahead an override may end: it is an exception, not a setting.
const MAX_AHEAD: chrono::TimeDelta = chrono::TimeDelta::days(90);
const MAX_REASON_CHARS: usize = 500;

fn parse_new(body: &Value, now: DateTime<Utc>) -> Result<NewOverride, Vec<FieldError>> {
    let Some(object) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let field = |name: &str| object.get(name).filter(|v| !v.is_null());
    let amount = match field("amount") {
        None => None,
        Some(amount) => match crate::domain::whole_number(amount).filter(|a| *a >= 0) {
            Some(amount) => Some(amount),
            None => {
                errors.push(FieldError::new("amount", "must be a whole number of minor units, 0 or more"));
                None
            }
        },
    };
    let effect = match field("effect").and_then(Value::as_str) {
        Some("allow" | "block") if field("amount").is_some() => {
            errors.push(FieldError::new("amount", "only for effect \"raise\""));
            None
        }
        Some("allow") => Some(Effect::Allow),
        Some("block") => Some(Effect::Block),
        Some("raise") => match (field("amount"), amount) {
            (None, _) => {
                errors
                    .push(FieldError::new("amount", "required for effect \"raise\": the DISABLE threshold"));
                None
            }
            (Some(_), amount) => amount.map(Effect::Raise),
        },
        _ => {
            errors.push(FieldError::new("effect", "required: \"allow\", \"block\" or \"raise\""));
            None
        }
    };
    let reason = match field("reason").and_then(Value::as_str) {
        Some(reason) if reason.trim().is_empty() || reason.chars().count() > MAX_REASON_CHARS => {
            errors.push(FieldError::new("reason", "must be 1 to 500 characters, not only blanks"));
            None
        }
        Some(reason) if reason.contains('\0') => {
            errors.push(FieldError::new("reason", "must not contain the NUL character"));
            None
        }
        Some(reason) => Some(reason.to_owned()),
        None => {
            errors.push(FieldError::new("reason", "required: why, 1 to 500 characters"));
            None
        }
    };
    let expires_at = match field("expires_at").and_then(Value::as_str).map(DateTime::parse_from_rfc3339) {
        Some(Ok(at)) if at.to_utc() <= now => {
            errors.push(FieldError::new("expires_at", "must be in the future"));
            None
        }
        Some(Ok(at)) if at.to_utc() > now + MAX_AHEAD => {
            errors.push(FieldError::new("expires_at", "must be at most 90 days ahead"));
            None
        }
        Some(Ok(at)) => Some(at.to_utc()),
        Some(Err(_)) | None => {
            errors
                .push(FieldError::new("expires_at", "required: an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"));
            None
        }
    };
    match (effect, reason, expires_at) {
        (Some(effect), Some(reason), Some(expires_at)) if errors.is_empty() => {
            Ok(NewOverride { effect, reason, expires_at })
        }
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_override_names_every_invalid_field() {
        let now = DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z").unwrap().to_utc();
        let at = "2026-11-30T12:00:00Z";
        let ok =
            parse_new(&json!({"effect": "raise", "amount": 5000, "reason": "deal", "expires_at": at}), now);
        assert_eq!(
            ok.unwrap(),
            NewOverride {
                effect: Effect::Raise(5000),
                reason: "deal".into(),
                expires_at: DateTime::parse_from_rfc3339(at).unwrap().to_utc()
            }
        );
        let fields = |body: Value| -> Vec<String> {
            parse_new(&body, now).unwrap_err().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(fields(json!({})), ["effect", "reason", "expires_at"]);
        assert_eq!(fields(json!({"effect": "allow", "reason": "", "expires_at": at})), ["reason"]);
        assert_eq!(
            fields(json!({"effect": "allow", "reason": "x".repeat(501), "expires_at": at})),
            ["reason"]
        );
        assert!(
            parse_new(&json!({"effect": "allow", "reason": "x".repeat(500), "expires_at": at}), now).is_ok()
        );
        assert_eq!(
            fields(json!({"effect": "block", "reason": "r", "expires_at": "2026-11-29T11:59:59Z"})),
            ["expires_at"]
        );
        assert_eq!(
            fields(json!({"effect": "block", "reason": "r", "expires_at": "2027-02-28T12:00:01Z"})),
            ["expires_at"]
        );
        assert_eq!(
            fields(json!({"effect": "block", "reason": "r", "expires_at": "tomorrow"})),
            ["expires_at"]
        );
        assert_eq!(fields(json!({"effect": "raise", "reason": "r", "expires_at": at})), ["amount"]);
        assert_eq!(
            fields(json!({"effect": "raise", "amount": -1, "reason": "r", "expires_at": at})),
            ["amount"]
        );
        assert_eq!(
            fields(json!({"effect": "allow", "amount": 5, "reason": "r", "expires_at": at})),
            ["amount"]
        );
        assert_eq!(fields(json!({"effect": "pause", "reason": "r", "expires_at": at})), ["effect"]);
        assert_eq!(fields(json!([1])), ["body"]);
    }
}
