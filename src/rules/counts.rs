//! What usage-gate's rules counted (`rule_usage`): written by the statement that stores the
//! events (`outbox::store`), read under the customer's lock by enforced writes
//! (`enforce::store`), and copied here per customer for checks, reloaded for the customers
//! each commit names. Which buckets count is the clock's to say (`RuleWindow::placed`), so a
//! window's end frees the customer on every replica as soon as it passes.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::{CustomerId, Subject};
use crate::judgement::rule::{RuleAsk, RuleId};
use crate::mirror::{self, Mirror, Started};

/// Named by the statement that counts (`rule_usage_notify`, in the migration).
pub const NOTIFY_CHANNEL: &str = "usage_gate_rule_usage";

/// What a customer's usage counted in one rule (and subject), by bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleCount {
    pub rule: RuleId,
    /// None: the rule counts the whole customer.
    pub subject: Option<Subject>,
    /// Each bucket's start (Unix ms) and amount.
    pub buckets: Box<[(i64, f64)]>,
}

/// This replica's copy of the customers' rule counts. Cheap to clone.
#[derive(Clone)]
pub struct RuleCounts {
    counts: Mirror<CustomerId, Box<[RuleCount]>>,
}

impl RuleCounts {
    pub fn start(pool: PgPool) -> Started<Self> {
        let load: mirror::Loader<CustomerId, Box<[RuleCount]>> =
            |pool, customers| load(pool, customers).boxed();
        let Started { service: counts, tasks, listening, .. } =
            Mirror::start(pool, NOTIFY_CHANNEL, "rule counts", load);
        Started { service: Self { counts }, changes: (), tasks, listening }
    }

    /// What each ask's rule counted of the customer (of its subject, for a per-subject rule)
    /// in the buckets from its `since_ms` on, into its `used`. By rule and subject, not by row:
    /// a rolling window's 60 buckets are passed over once for its own rule, not once a rule.
    pub fn used_all(&self, customer: CustomerId, asks: &mut [RuleAsk]) {
        self.counts.with(customer, |counts| {
            for ask in asks.iter_mut() {
                let counted =
                    counts.iter().find(|c| c.rule == ask.rule.id && c.subject.as_ref() == ask.subject);
                ask.used = counted.map_or(0.0, |c| {
                    c.buckets
                        .iter()
                        .filter(|(start, _)| *start >= ask.since_ms)
                        .fold(0.0, |sum, (_, a)| sum + a)
                });
            }
        });
    }
}

type ByCustomer = HashMap<CustomerId, Box<[RuleCount]>>;

/// The unexpired buckets of `customers` (of every customer when None).
fn load<'a>(
    pool: &'a PgPool,
    customers: Option<&'a [CustomerId]>,
) -> BoxFuture<'a, Result<ByCustomer, sqlx::Error>> {
    async move {
        let ids: Option<Vec<Uuid>> = customers.map(|c| c.iter().map(|c| c.as_uuid()).collect());
        let rows = sqlx::query(
            "SELECT customer_id, rule_id, subject, bucket_start, amount::float8 AS amount FROM rule_usage
             WHERE expires_at > now() AND ($1::uuid[] IS NULL OR customer_id = ANY($1))",
        )
        .bind(ids)
        .fetch_all(pool)
        .await?;
        type Buckets = HashMap<(Uuid, Option<Subject>), Vec<(i64, f64)>>;
        let mut counts: HashMap<CustomerId, Buckets> = HashMap::new();
        for row in rows {
            let customer = CustomerId::from(row.try_get::<Uuid, _>("customer_id")?);
            let subject: String = row.try_get("subject")?;
            let subject = (!subject.is_empty()).then(|| Subject::parse(&subject).ok()).flatten();
            let start: DateTime<Utc> = row.try_get("bucket_start")?;
            let rule: Uuid = row.try_get("rule_id")?;
            let bucket = (start.timestamp_millis(), row.try_get("amount")?);
            counts.entry(customer).or_default().entry((rule, subject)).or_default().push(bucket);
        }
        let grouped = |buckets: Buckets| -> Box<[RuleCount]> {
            let mut counts: Vec<RuleCount> = buckets
                .into_iter()
                .map(|((rule, subject), mut buckets)| {
                    buckets.sort_by_key(|(start, _)| *start);
                    RuleCount { rule: rule.into(), subject, buckets: buckets.into() }
                })
                .collect();
            // In one order whatever the map's: a reload that changed nothing changes no entry.
            counts.sort_by(|a, b| (a.rule, &a.subject).cmp(&(b.rule, &b.subject)));
            counts.into()
        };
        Ok(counts.into_iter().map(|(customer, buckets)| (customer, grouped(buckets))).collect())
    }
    .boxed()
}
