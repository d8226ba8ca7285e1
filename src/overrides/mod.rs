//! Overrides: an operator's bounded exception to a customer's decision, `allow`, `block` or
//! `raise` (the DISABLE threshold), until `expires_at` (README, "Overrides").
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

use futures_util::FutureExt;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::db;
use crate::domain::{CustomerId, Timestamp};
use crate::mirror::{self, Mirror};
use crate::policy::Effect;

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

/// A customer's open override changed in this replica's copy.
pub type Changed = mirror::Change<Override>;

/// What [`Overrides::start`] started.
pub struct Started {
    pub overrides: Overrides,
    /// Every change to the copy (dropped, and counted, if nobody keeps up).
    pub changes: mpsc::Receiver<Changed>,
    /// Stop the listening and expiring tasks.
    pub tasks: [tokio::task::AbortHandle; 2],
    /// True once the copy is loaded and kept up to date.
    pub listening: watch::Receiver<bool>,
}

/// Cheap to clone; clones share one copy.
#[derive(Clone)]
pub struct Overrides {
    open: Mirror<Override>,
}

const CHANGES_QUEUE: usize = 10_000;

impl Overrides {
    /// Starts keeping the copy up to date and expiring overrides in Postgres.
    pub fn start(pool: PgPool) -> Started {
        let (changes, receiver) = mpsc::channel(CHANGES_QUEUE);
        let load: mirror::Loader<Override> = |pool, customers| store::open_overrides(pool, customers).boxed();
        let mirror::Started { mirror, task: following, listening } =
            Mirror::start(pool.clone(), store::NOTIFY_CHANNEL, "overrides", load, Some(changes));
        let expiring = tokio::spawn(db::every(EXPIRE_EVERY, "close expired overrides", move || {
            let pool = pool.clone();
            async move { store::expire(&pool).await }
        }))
        .abort_handle();
        Started {
            overrides: Self { open: mirror },
            changes: receiver,
            tasks: [following, expiring],
            listening,
        }
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
}
