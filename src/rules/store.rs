//! Rules in Postgres: created, changed and deleted, each audited in the transaction that makes
//! it; the trigger tells every replica.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{NewRule, Owner, RulePatch};
use crate::audit::{self, Actor};
use crate::domain::{CustomerId, FromText, MetricCode, PlanId, Subject};
use crate::entitlements::{TimeZone, Window};
use crate::judgement::rule::{Measure, Mode, Rule, RuleSpec, RuleWindow, Scope};

/// Sent (by the trigger) at the commit of every change.
pub const NOTIFY_CHANNEL: &str = "usage_gate_rules";

/// A row of `rules`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RuleRow {
    pub id: Uuid,
    pub scope_kind: String,
    pub scope_id: Option<Uuid>,
    pub measure_kind: String,
    pub metric: Option<String>,
    pub limit: i64,
    pub window_kind: String,
    pub calendar: Option<String>,
    pub time_zone: Option<String>,
    pub rolling_s: Option<i32>,
    pub mode: String,
    pub per_subject: bool,
    pub subject_limits: serde_json::Value,
    pub thresholds: Vec<i16>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

const COLUMNS: &str = r#"id, scope_kind, scope_id, measure_kind, metric, "limit", window_kind, calendar,
     time_zone, rolling_s, mode, per_subject, subject_limits, thresholds, description, created_at,
     created_by, updated_at, updated_by"#;

pub async fn create(pool: &PgPool, id: Uuid, new: &NewRule, actor: &Actor) -> Result<RuleRow, sqlx::Error> {
    let (spec, description) = (&new.spec, &new.description);
    let (scope_kind, scope_id) = match &spec.scope {
        Scope::Customer(c) => ("customer", Some(c.as_uuid())),
        Scope::Plan(p) => ("plan", Some(p.as_uuid())),
        Scope::All => ("all", None),
    };
    let metric = match &spec.measure {
        Measure::Cost => None,
        Measure::Metric(code) => Some(code.as_str()),
    };
    let (window_kind, calendar, time_zone, rolling_s) = match spec.window {
        RuleWindow::Calendar { unit, zone } => ("calendar", Some(unit.as_str()), Some(zone.0.name()), None),
        RuleWindow::Rolling { seconds } => ("rolling", None, None, Some(seconds as i32)),
        RuleWindow::BillingPeriod => ("billing_period", None, None, None),
    };
    let thresholds: Vec<i16> = spec.thresholds.iter().map(|t| *t as i16).collect();
    let mut tx = pool.begin().await?;
    let row: RuleRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"INSERT INTO rules (id, scope_kind, scope_id, measure_kind, metric, "limit", window_kind, calendar,
             time_zone, rolling_s, mode, per_subject, subject_limits, thresholds, description, created_by,
             updated_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)
         RETURNING {COLUMNS}"#
    )))
    .bind(id)
    .bind(scope_kind)
    .bind(scope_id)
    .bind(if metric.is_some() { "metric" } else { "cost" })
    .bind(metric)
    .bind(spec.limit)
    .bind(window_kind)
    .bind(calendar)
    .bind(time_zone)
    .bind(rolling_s)
    .bind(spec.mode.to_text())
    .bind(spec.per_subject)
    .bind(serde_json::to_value(&spec.subject_limits).unwrap_or_default())
    .bind(&thresholds)
    .bind(description)
    .bind(&actor.name)
    .fetch_one(&mut *tx)
    .await?;
    record(&mut tx, "rule.create", &row, actor).await?;
    tx.commit().await?;
    Ok(row)
}

/// The rule, locked for a change in `tx`.
pub async fn locked(tx: &mut PgConnection, id: Uuid) -> Result<Option<RuleRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM rules WHERE id = $1 FOR UPDATE")))
        .bind(id)
        .fetch_optional(tx)
        .await
}

/// Applies `patch` to the rule locked in `tx`, audited with what it was before.
pub async fn change(
    tx: &mut PgConnection,
    before: &RuleRow,
    patch: &RulePatch,
    actor: &Actor,
) -> Result<RuleRow, sqlx::Error> {
    let thresholds: Option<Vec<i16>> =
        patch.thresholds.as_ref().map(|t| t.iter().map(|p| *p as i16).collect());
    let row: RuleRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"UPDATE rules SET
             "limit" = coalesce($2, "limit"),
             mode = coalesce($3, mode),
             thresholds = coalesce($4, thresholds),
             subject_limits = coalesce($5, subject_limits),
             description = CASE WHEN $6 THEN $7 ELSE description END,
             updated_at = now(), updated_by = $8
         WHERE id = $1 RETURNING {COLUMNS}"#
    )))
    .bind(before.id)
    .bind(patch.limit)
    .bind(patch.mode.map(|m| m.to_text()))
    .bind(thresholds)
    .bind(patch.subject_limits.as_ref().map(|l| serde_json::to_value(l).unwrap_or_default()))
    .bind(patch.description.is_some())
    .bind(patch.description.clone().flatten())
    .bind(&actor.name)
    .fetch_one(&mut *tx)
    .await?;
    let mut entry = entry("rule.change", &row, actor);
    entry.details["before"] = details(before);
    audit::record_in(tx, &entry).await?;
    Ok(row)
}

/// Deletes the rule, audited with what it was; None when there is none.
pub async fn delete(pool: &PgPool, id: Uuid, actor: &Actor) -> Result<Option<RuleRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let deleted: Option<RuleRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("DELETE FROM rules WHERE id = $1 RETURNING {COLUMNS}")))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(deleted) = deleted else { return Ok(None) };
    // What it counted goes with it (a rule created again starts from nothing).
    sqlx::query("DELETE FROM rule_usage WHERE rule_id = $1").bind(id).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM rule_crossings WHERE rule_id = $1").bind(id).execute(&mut *tx).await?;
    record(&mut tx, "rule.delete", &deleted, actor).await?;
    tx.commit().await?;
    Ok(Some(deleted))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<RuleRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM rules WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Oldest first: the rules scoped to `customer` and to `plan` (every rule when both are None).
pub async fn list(
    pool: &PgPool,
    customer: Option<CustomerId>,
    plan: Option<PlanId>,
    limit: i64,
) -> Result<Vec<RuleRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM rules
         WHERE ($1::uuid IS NULL AND $2::uuid IS NULL)
            OR (scope_kind = 'customer' AND scope_id = $1)
            OR (scope_kind = 'plan' AND scope_id = $2)
         ORDER BY created_at, id
         LIMIT $3"
    )))
    .bind(customer.map(|c| c.as_uuid()))
    .bind(plan.map(|p| p.as_uuid()))
    .bind(limit)
    .fetch_all(pool)
    .await
}

fn details(row: &RuleRow) -> serde_json::Value {
    serde_json::to_value(super::RuleRecord::from(row.clone())).unwrap_or_default()
}

fn entry(action: &str, row: &RuleRow, actor: &Actor) -> audit::Entry {
    let customer = (row.scope_kind == "customer").then_some(row.scope_id).flatten().map(CustomerId::from);
    actor.entry(action, customer, row.id.to_string(), details(row))
}

async fn record(
    tx: &mut PgConnection,
    action: &str,
    row: &RuleRow,
    actor: &Actor,
) -> Result<(), sqlx::Error> {
    audit::record_in(tx, &entry(action, row, actor)).await.map(|_| ())
}

impl RuleRow {
    /// Whom the rule is for; None for a row no valid rule makes.
    pub fn scope(&self) -> Option<Scope> {
        match (self.scope_kind.as_str(), self.scope_id) {
            ("customer", Some(id)) => Some(Scope::Customer(CustomerId::from(id))),
            ("plan", Some(id)) => Some(Scope::Plan(PlanId::from(id))),
            ("all", None) => Some(Scope::All),
            _ => None,
        }
    }

    /// The rule as written; None for a row no valid rule makes (the table's checks keep them
    /// out; a time zone the library stopped knowing is the one way in).
    pub fn spec(&self) -> Option<RuleSpec> {
        let measure = match &self.metric {
            Some(code) => Measure::Metric(MetricCode::parse(code).ok()?),
            None => Measure::Cost,
        };
        let window = match (self.window_kind.as_str(), &self.calendar, &self.time_zone, self.rolling_s) {
            ("calendar", Some(unit), Some(zone), _) => RuleWindow::Calendar {
                unit: Window::from_text(unit).ok()?,
                zone: TimeZone::from_text(zone).ok()?,
            },
            ("rolling", _, _, Some(seconds)) => RuleWindow::Rolling { seconds: u32::try_from(seconds).ok()? },
            ("billing_period", _, _, _) => RuleWindow::BillingPeriod,
            _ => return None,
        };
        let subject_limits =
            serde_json::from_value::<std::collections::BTreeMap<Subject, i64>>(self.subject_limits.clone())
                .ok()?;
        Some(RuleSpec {
            scope: self.scope()?,
            measure,
            limit: self.limit,
            window,
            mode: Mode::from_text(&self.mode).ok()?,
            per_subject: self.per_subject,
            subject_limits,
            thresholds: self.thresholds.iter().map(|t| u16::try_from(*t).ok()).collect::<Option<_>>()?,
        })
    }
}

/// Customers' own rules, of each of `owners` (of every customer that has any when None),
/// oldest first.
pub async fn of_customers(
    pool: &PgPool,
    owners: Option<&[Owner]>,
) -> Result<HashMap<Owner, Arc<[Rule]>>, sqlx::Error> {
    let scopes: Option<Vec<Scope>> = owners.map(|o| o.iter().map(|Owner(c)| Scope::Customer(*c)).collect());
    let rules = by_scope(pool, scopes.as_deref(), &["customer"]).await?;
    Ok(rules
        .into_iter()
        .filter_map(|(scope, rules)| match scope {
            Scope::Customer(customer) => Some((Owner(customer), rules)),
            _ => None,
        })
        .collect())
}

/// Plans' and `all` rules, of each of `scopes` (of every such scope that has any when None),
/// oldest first.
pub async fn shared(
    pool: &PgPool,
    scopes: Option<&[Scope]>,
) -> Result<HashMap<Scope, Arc<[Rule]>>, sqlx::Error> {
    by_scope(pool, scopes, &["plan", "all"]).await
}

/// The rules of each of `scopes` (of every scope of `kinds` that has any when None), oldest first.
async fn by_scope(
    pool: &PgPool,
    scopes: Option<&[Scope]>,
    kinds: &[&str],
) -> Result<HashMap<Scope, Arc<[Rule]>>, sqlx::Error> {
    let (mut customers, mut plans, mut all) = (Vec::new(), Vec::new(), false);
    for key in scopes.unwrap_or_default() {
        match key {
            Scope::Customer(c) => customers.push(c.as_uuid()),
            Scope::Plan(p) => plans.push(p.as_uuid()),
            Scope::All => all = true,
        }
    }
    let rows: Vec<RuleRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM rules
         WHERE ($1 AND scope_kind = ANY($5)) OR (scope_kind = 'customer' AND scope_id = ANY($2))
            OR (scope_kind = 'plan' AND scope_id = ANY($3)) OR ($4 AND scope_kind = 'all')
         ORDER BY created_at, id"
    )))
    .bind(scopes.is_none())
    .bind(&customers)
    .bind(&plans)
    .bind(all)
    .bind(kinds)
    .fetch_all(pool)
    .await?;
    let mut by_scope: HashMap<Scope, Vec<Rule>> = HashMap::new();
    for row in &rows {
        match row.spec() {
            Some(spec) => by_scope.entry(spec.scope).or_default().push(Rule::new(row.id, &spec)),
            None => {
                tracing::warn!(rule = %row.id, "rules: a stored rule does not read as one; it is not applied")
            }
        }
    }
    Ok(by_scope.into_iter().map(|(k, v)| (k, v.into())).collect())
}
