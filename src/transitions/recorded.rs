//! What transitions recorded, for the console: each customer's last recorded decision
//! (`customer_decisions`, written by [`super::Transitions`]) and its history (`usage_samples`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::CustomerId;

/// A customer as its last recorded observation left it (the console shows it; not an API body).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerRow {
    pub customer_id: Uuid,
    pub status: String,
    /// The projected estimate (minor units); null for rows recorded before the console existed.
    pub estimate: Option<i64>,
    pub currency: Option<String>,
    pub disable_limit: Option<i64>,
    pub reasons: Vec<String>,
    /// When the status last changed.
    pub changed_at: DateTime<Utc>,
    pub observed_at: DateTime<Utc>,
}

/// Which customers to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerFilter {
    /// `ok`, `warning` or `blocked`.
    pub status: Option<String>,
    /// The start of the customer id (lowercase hex and dashes), or all of it.
    pub id_prefix: Option<String>,
}

/// One recorded observation of a customer's usage.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Sample {
    pub observed_at: DateTime<Utc>,
    pub status: String,
    pub estimate: i64,
    pub currency: String,
    pub disable_limit: Option<i64>,
}

/// The one door for reading what transitions recorded. Cheap to clone.
#[derive(Clone)]
pub struct Recorded {
    pool: PgPool,
}

impl Recorded {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// How many customers have each status.
    pub async fn status_counts(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT status, count(*) FROM customer_decisions GROUP BY status")
            .fetch_all(&self.pool)
            .await
    }

    /// A page of customers, closest to (or furthest over) its lowest DISABLE limit first. A page
    /// scans the table (about 0.1 to 0.3 s at a million customers); a whole id is looked up by key.
    pub async fn customers(
        &self,
        filter: &CustomerFilter,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<CustomerRow>, sqlx::Error> {
        if let Some(id) = filter.id_prefix.as_deref().and_then(|p| CustomerId::parse(p).ok()) {
            let found = self.customer(id).await?;
            let wanted = |row: &CustomerRow| filter.status.as_deref().is_none_or(|s| row.status == s);
            return Ok(found.filter(wanted).into_iter().skip(offset as usize).take(limit as usize).collect());
        }
        sqlx::query_as(
            "SELECT customer_id, status, estimate, currency, disable_limit, reasons, changed_at, observed_at
             FROM customer_decisions
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR customer_id::text LIKE $2 || '%')
             ORDER BY estimate::float8 / NULLIF(disable_limit, 0) DESC NULLS LAST, changed_at DESC, customer_id
             OFFSET $3 LIMIT $4",
        )
        .bind(&filter.status)
        .bind(&filter.id_prefix)
        .bind(offset)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// One customer's row, if usage-gate has recorded a decision for it.
    pub async fn customer(&self, customer: CustomerId) -> Result<Option<CustomerRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT customer_id, status, estimate, currency, disable_limit, reasons, changed_at, observed_at
             FROM customer_decisions WHERE customer_id = $1",
        )
        .bind(customer.as_uuid())
        .fetch_optional(&self.pool)
        .await
    }

    /// The customer's observations since `since`, oldest first (at most 2,000: about a hundred
    /// periods of bands).
    pub async fn samples(
        &self,
        customer: CustomerId,
        since: DateTime<Utc>,
    ) -> Result<Vec<Sample>, sqlx::Error> {
        sqlx::query_as(
            "SELECT observed_at, status, estimate, currency, disable_limit FROM (
                 SELECT * FROM usage_samples WHERE customer_id = $1 AND observed_at >= $2
                 ORDER BY observed_at DESC LIMIT 2000) newest
             ORDER BY observed_at",
        )
        .bind(customer.as_uuid())
        .bind(since)
        .fetch_all(&self.pool)
        .await
    }
}
