//! usage-gate's own limit rules (scope `admin`): create, list, read, change, delete.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{actor, customer_id, page_limit};
use crate::auth::Caller;
use crate::domain::PlanId;
use crate::error::ApiError;
use crate::rules::{NewRule, RuleError, RulePatch, RuleRecord, Rulebook};
use crate::telemetry::RequestId;

/// Creates a rule (docs/api.md, "Rules").
#[utoipa::path(post, path = "/v1/rules", tag = "rules", security(("bearer" = [])),
    request_body(content = Value, description = "{\"scope\": {\"customer\": ID} | {\"plan\": PLAN_ID} | {\"all\": true}, \"measure\": {\"cost\": {}} | {\"metric\": CODE}, \"limit\": N > 0, \"window\": {\"calendar\": \"hour\" | \"day\" | \"week\" | \"month\", \"time_zone\"?: IANA} | {\"rolling_s\": 1..2678400} | {\"billing_period\": {}}, \"mode\": \"hard\" | \"soft\", \"per_subject\"?: bool, \"subject_limits\"?: {SUBJECT: N}, \"thresholds\"?: [1..1000 ascending], \"description\"?: text}"),
    responses(
        (status = 201, description = "Created", body = RuleRecord),
        (status = 422, description = "Invalid: every invalid field is named", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_rule(
    rules: web::Data<Rulebook>,
    caller: Caller,
    request_id: RequestId,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let new = NewRule::from_json(&body).map_err(RuleError::Invalid)?;
    let created = rules.create(&actor(&caller, &request_id), &new).await?;
    Ok(HttpResponse::Created().json(created))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only the rules scoped to this customer (with `plan`: and those scoped to the plan).
    #[param(value_type = Option<String>, format = Uuid)]
    pub customer: Option<String>,
    /// Only the rules scoped to this plan.
    #[param(value_type = Option<String>, format = Uuid)]
    pub plan: Option<String>,
    /// 1 to 500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RuleList {
    /// Oldest first.
    pub rules: Vec<RuleRecord>,
}

/// The rules, oldest first: every one, or those scoped to `customer` or `plan`.
#[utoipa::path(get, path = "/v1/rules", tag = "rules", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = RuleList)))]
pub async fn list_rules(
    rules: web::Data<Rulebook>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<RuleList>, ApiError> {
    let customer = query.customer.as_deref().map(|c| customer_id(c, "customer")).transpose()?;
    let plan = query
        .plan
        .as_deref()
        .map(|p| PlanId::parse(p).map_err(|e| ApiError::invalid_field("plan", e.to_string())))
        .transpose()?;
    let limit = page_limit(query.limit)?;
    Ok(web::Json(RuleList { rules: rules.list(customer, plan, limit).await? }))
}

fn rule_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid_field("rule_id", "must be a UUID"))
}

/// One rule.
#[utoipa::path(get, path = "/v1/rules/{rule_id}", tag = "rules", security(("bearer" = [])),
    params(("rule_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = RuleRecord),
        (status = 404, description = "No such rule", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_rule(
    rules: web::Data<Rulebook>,
    path: web::Path<String>,
) -> Result<web::Json<RuleRecord>, ApiError> {
    Ok(web::Json(rules.get(rule_id(&path)?).await?))
}

/// Changes a rule's `limit`, `mode`, `thresholds`, `subject_limits` or `description`.
#[utoipa::path(patch, path = "/v1/rules/{rule_id}", tag = "rules", security(("bearer" = [])),
    params(("rule_id" = uuid::Uuid, Path)),
    request_body(content = Value, description = "{\"limit\"?, \"mode\"?, \"thresholds\"?, \"subject_limits\"? (per-subject rules), \"description\"? (null clears it)}"),
    responses(
        (status = 200, description = "Changed", body = RuleRecord),
        (status = 404, description = "No such rule", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid: every invalid field is named", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn change_rule(
    rules: web::Data<Rulebook>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<web::Json<RuleRecord>, ApiError> {
    let id = rule_id(&path)?;
    let patch = RulePatch::from_json(&body).map_err(RuleError::Invalid)?;
    Ok(web::Json(rules.change(&actor(&caller, &request_id), id, &patch).await?))
}

/// Deletes a rule: 204; 404 if there is none.
#[utoipa::path(delete, path = "/v1/rules/{rule_id}", tag = "rules", security(("bearer" = [])),
    params(("rule_id" = uuid::Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such rule", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_rule(
    rules: web::Data<Rulebook>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    rules.delete(&actor(&caller, &request_id), rule_id(&path)?).await?;
    Ok(HttpResponse::NoContent().finish())
}
