//! usage-gate's own limit rules, as operators manage them (`POST /v1/rules`, the console): each
//! created, changed and deleted with an audit record in the same transaction
//! (`judgement::rule` says what a rule is).

pub mod counts;
pub mod crossings;
mod parse;
pub mod store;

use std::sync::Arc;

use futures_util::FutureExt;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::Actor;
use crate::db::StorageError;
use crate::domain::{CustomerId, FieldError, PlanId};
use crate::judgement::rule::{self, Rule, Scope};
use crate::mirror::{self, Mirror, Started};
pub use parse::{NewRule, RuleForm, RulePatch};
use store::RuleRow;

/// The key of a customer's own rules in this replica's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(pub CustomerId);

/// The trigger's payload: `c:ID`, `p:ID` or `a`, separated by commas.
fn notified(payloads: &[String]) -> impl Iterator<Item = Scope> + '_ {
    payloads.iter().flat_map(|p| p.split(',')).filter_map(|scope| match scope.split_once(':') {
        Some(("c", id)) => CustomerId::parse(id).ok().map(Scope::Customer),
        Some(("p", id)) => PlanId::parse(id).ok().map(Scope::Plan),
        None if scope == "a" => Some(Scope::All),
        _ => None,
    })
}

fn sorted<K: Ord>(mut keys: Vec<K>) -> Vec<K> {
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl mirror::Key for Owner {
    fn notified(payloads: &[String]) -> Vec<Self> {
        let owners = notified(payloads).filter_map(|scope| match scope {
            Scope::Customer(customer) => Some(Owner(customer)),
            _ => None,
        });
        sorted(owners.collect())
    }
}

/// Plans' and `all` scopes (customers' are [`Owner`]s).
impl mirror::Key for Scope {
    fn notified(payloads: &[String]) -> Vec<Self> {
        sorted(notified(payloads).filter(|scope| !matches!(scope, Scope::Customer(_))).collect())
    }
}

/// A rule as the API and the console show it: the shapes it was written in, and who made and
/// last changed it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RuleRecord {
    pub id: Uuid,
    /// `{"customer": ID}`, `{"plan": PLAN_ID}` or `{"all": true}`.
    #[schema(value_type = Object)]
    pub scope: Value,
    /// `{"cost": {}}` (minor units) or `{"metric": CODE}` (units).
    #[schema(value_type = Object)]
    pub measure: Value,
    pub limit: i64,
    /// `{"calendar": "hour" | "day" | "week" | "month", "time_zone": IANA}`, `{"rolling_s": S}`
    /// or `{"billing_period": {}}`.
    #[schema(value_type = Object)]
    pub window: Value,
    /// `hard` (refuses) or `soft` (allows, with status `warning`).
    pub mode: String,
    pub per_subject: bool,
    /// A subject's own limit, replacing the rule's for it.
    #[schema(value_type = Object)]
    pub subject_limits: Value,
    /// Percents of the limit, ascending.
    pub thresholds: Vec<i16>,
    pub description: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The API key's name.
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub updated_by: String,
}

impl From<RuleRow> for RuleRecord {
    fn from(row: RuleRow) -> Self {
        let scope = match (row.scope_kind.as_str(), row.scope_id) {
            ("customer", Some(id)) => json!({"customer": id}),
            ("plan", Some(id)) => json!({"plan": id}),
            _ => json!({"all": true}),
        };
        let measure = match row.metric {
            Some(code) => json!({"metric": code}),
            None => json!({"cost": {}}),
        };
        let window = match (row.window_kind.as_str(), row.calendar, row.time_zone, row.rolling_s) {
            ("calendar", Some(unit), Some(zone), _) => json!({"calendar": unit, "time_zone": zone}),
            ("rolling", _, _, Some(seconds)) => json!({"rolling_s": seconds}),
            _ => json!({"billing_period": {}}),
        };
        RuleRecord {
            id: row.id,
            scope,
            measure,
            limit: row.limit,
            window,
            mode: row.mode,
            per_subject: row.per_subject,
            subject_limits: row.subject_limits,
            thresholds: row.thresholds,
            description: row.description,
            created_at: row.created_at,
            created_by: row.created_by,
            updated_at: row.updated_at,
            updated_by: row.updated_by,
        }
    }
}

/// Why a rule was not created, changed or deleted.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("invalid rule")]
    Invalid(Vec<FieldError>),
    #[error("no rule {0}")]
    NotFound(Uuid),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for RuleError {
    fn from(e: sqlx::Error) -> Self {
        RuleError::Storage(e.into())
    }
}

/// The operators' rules: the one door to `rules`, and this replica's copy of them by scope,
/// which every change reaches within a second (the trigger names the scopes). Cheap to clone.
#[derive(Clone)]
pub struct Rulebook {
    pool: PgPool,
    /// Customers' own rules, keyed by the customer alone: a million customers with a rule each
    /// hold ~110 bytes apiece (`cargo run --release --example cache-memory -- 1000000 --rules`);
    /// keyed by scope, with the rule behind its own pointer, they held 400.
    customers: Mirror<Owner, Arc<[Rule]>>,
    /// Plans' and `all` rules: few, and shared by many customers.
    shared: Mirror<Scope, Arc<[Rule]>>,
}

/// The rules that bind a customer: the copy's own when they are of one scope (a reference
/// counted, not five rules copied: ~300 instructions a check, `bench/check_instructions.py
/// --rules`). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Applicable(Option<Arc<[Rule]>>);

impl std::ops::Deref for Applicable {
    type Target = [Rule];

    fn deref(&self) -> &[Rule] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl Rulebook {
    /// Starts keeping the copy up to date.
    pub fn start(pool: PgPool) -> Started<Self> {
        let own: mirror::Loader<Owner, Arc<[Rule]>> = |pool, keys| store::of_customers(pool, keys).boxed();
        let shared: mirror::Loader<Scope, Arc<[Rule]>> = |pool, keys| store::shared(pool, keys).boxed();
        let Started { service: (customers, shared), tasks, listening, .. } = Mirror::start_with(
            pool.clone(),
            store::NOTIFY_CHANNEL,
            ("customers' rules", own),
            ("plans' rules", shared),
        );
        Started { service: Self { pool, customers, shared }, changes: (), tasks, listening }
    }

    /// Whether this replica knows of any rule at all (none: nothing to judge or count).
    pub fn any(&self) -> bool {
        self.customers.any(0) || self.shared.any(0)
    }

    /// The rules that bind the customer, on `plans` (precedence applied: `rule::applicable`).
    pub fn applicable(&self, customer: CustomerId, plans: &[PlanId]) -> Applicable {
        // An atomic load each while there are no rules: the scopes' lookups cost a warm check
        // 207 instructions (`bench/check_instructions.py`).
        let own = self.customers.with(Owner(customer), Arc::clone);
        if !self.shared.any(0) {
            return Applicable(own);
        }
        let mut scopes = usize::from(own.is_some());
        let mut scoped: Vec<Rule> = own.as_deref().map(<[Rule]>::to_vec).unwrap_or_default();
        let mut last = own;
        for key in std::iter::once(Scope::All).chain(plans.iter().map(|p| Scope::Plan(*p))) {
            if let Some(rules) = self.shared.with(key, Arc::clone) {
                scoped.extend_from_slice(&rules);
                scopes += 1;
                last = Some(rules);
            }
        }
        // Rules of one scope never replace each other.
        if scopes < 2 {
            return Applicable(last);
        }
        rule::applicable(&mut scoped);
        Applicable(Some(scoped.into()))
    }

    /// Reads the scope's rules now, after this replica changed them.
    async fn reload(&self, scope: Scope) {
        match scope {
            Scope::Customer(customer) => self.customers.reload(Owner(customer)).await,
            shared => self.shared.reload(shared).await,
        }
    }

    pub async fn create(&self, actor: &Actor, new: &NewRule) -> Result<RuleRecord, RuleError> {
        let row = store::create(&self.pool, Uuid::new_v4(), new, actor).await?;
        self.reload(new.spec.scope).await;
        metrics::counter!("usage_gate_rule_changes_total", "change" => "create").increment(1);
        Ok(row.into())
    }

    pub async fn get(&self, id: Uuid) -> Result<RuleRecord, RuleError> {
        store::get(&self.pool, id).await?.map(RuleRecord::from).ok_or(RuleError::NotFound(id))
    }

    /// Oldest first, at most `limit`: the rules scoped to the customer and to the plan (every
    /// rule when neither is given).
    pub async fn list(
        &self,
        customer: Option<CustomerId>,
        plan: Option<PlanId>,
        limit: i64,
    ) -> Result<Vec<RuleRecord>, StorageError> {
        let rows = store::list(&self.pool, customer, plan, limit).await?;
        Ok(rows.into_iter().map(RuleRecord::from).collect())
    }

    /// Changes what `patch` sets; `subject_limits` only on a rule that limits each subject.
    pub async fn change(&self, actor: &Actor, id: Uuid, patch: &RulePatch) -> Result<RuleRecord, RuleError> {
        let mut tx = self.pool.begin().await.map_err(StorageError::from)?;
        let before = store::locked(&mut tx, id).await?.ok_or(RuleError::NotFound(id))?;
        if patch.subject_limits.as_ref().is_some_and(|limits| !limits.is_empty()) && !before.per_subject {
            let why = "only on a rule with \"per_subject\": true";
            return Err(RuleError::Invalid(vec![FieldError::new("subject_limits", why)]));
        }
        let row = store::change(&mut tx, &before, patch, actor).await?;
        tx.commit().await?;
        if let Some(scope) = row.scope() {
            self.reload(scope).await;
        }
        metrics::counter!("usage_gate_rule_changes_total", "change" => "change").increment(1);
        Ok(row.into())
    }

    pub async fn delete(&self, actor: &Actor, id: Uuid) -> Result<(), RuleError> {
        let deleted = store::delete(&self.pool, id, actor).await?.ok_or(RuleError::NotFound(id))?;
        if let Some(scope) = deleted.scope() {
            self.reload(scope).await;
        }
        metrics::counter!("usage_gate_rule_changes_total", "change" => "delete").increment(1);
        Ok(())
    }
}
