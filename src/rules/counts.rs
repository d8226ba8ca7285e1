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
use crate::judgement::rule::RuleAsk;
use crate::mirror::{self, Mirror, Started};

/// Named by the statement that counts (`rule_usage_notify`, in the migration).
pub const NOTIFY_CHANNEL: &str = "usage_gate_rule_usage";

/// A customer's count of one rule (and subject) in one bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleCount {
    pub rule: Uuid,
    /// None: the rule counts the whole customer.
    pub subject: Option<Subject>,
    /// The bucket's start, Unix ms.
    pub bucket_ms: i64,
    pub amount: f64,
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

    /// What each ask's rule counted of the customer, into its `used` (see [`RuleCounts::used`]).
    pub fn used_all(&self, customer: CustomerId, asks: &mut [RuleAsk]) {
        self.counts.with(customer, |counts| {
            for ask in asks.iter_mut() {
                ask.used = counts
                    .iter()
                    .filter(|c| {
                        c.rule == ask.rule.id
                            && c.subject.as_ref() == ask.subject
                            && c.bucket_ms >= ask.since_ms
                    })
                    .fold(0.0, |sum, c| sum + c.amount);
            }
        });
    }
}

/// The customers' counts, as the copy holds them.
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
        let mut counts: HashMap<CustomerId, Vec<RuleCount>> = HashMap::new();
        for row in rows {
            let customer = CustomerId::from(row.try_get::<Uuid, _>("customer_id")?);
            let subject: String = row.try_get("subject")?;
            let start: DateTime<Utc> = row.try_get("bucket_start")?;
            counts.entry(customer).or_default().push(RuleCount {
                rule: row.try_get("rule_id")?,
                subject: (!subject.is_empty()).then(|| Subject::parse(&subject).ok()).flatten(),
                bucket_ms: start.timestamp_millis(),
                amount: row.try_get("amount")?,
            });
        }
        Ok(counts.into_iter().map(|(customer, counts)| (customer, counts.into_boxed_slice())).collect())
    }
    .boxed()
}
