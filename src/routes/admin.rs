//! Operators' routes for a customer (scope `admin`): what usage-gate knows of it, and its usage
//! limits, managed in BillaBear through `limits`.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::Value;

use super::{actor, customer_id};
use crate::auth::Caller;
use crate::check::{Checker, Decision};
use crate::domain::LimitId;
use crate::error::ApiError;
use crate::limits::{Limit, Limits, NewLimit};
use crate::outbox::Outbox;
use crate::rules::Rulebook;
use crate::subscriptions::Subscriptions;
use crate::telemetry::RequestId;

/// What usage-gate knows about a customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    /// The current decision, with BillaBear's status, the estimate, the limits and the cache age.
    pub decision: Decision,
    pub outbox: OutboxCounts,
    /// The ids of usage-gate's rules that bind the customer, from this replica's copy: its own,
    /// its plans' and the `all` rules, with precedence applied (docs/api.md, Rules).
    #[schema(value_type = Vec<String>)]
    pub rules: Vec<uuid::Uuid>,
}

/// The customer's events not yet delivered: those sent with `customer`, and those sent with one
/// of its subscriptions that usage-gate has seen listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxCounts {
    pub pending: i64,
    pub dead: i64,
}

#[utoipa::path(get, path = "/v1/customers/{customer_id}", tag = "admin", security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path, description = "BillaBear customer id (UUID)")),
    responses(
        (status = 200, body = CustomerView),
        (status = 400, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn show_customer(
    checker: web::Data<Checker>,
    subscriptions: web::Data<Subscriptions>,
    outbox: web::Data<Outbox>,
    rules: web::Data<Rulebook>,
    path: web::Path<String>,
) -> Result<web::Json<CustomerView>, ApiError> {
    let customer = customer_id(&path, "customer_id")?;
    let decision = checker.check(customer, None).await;
    let counts = outbox.undelivered_counts(customer, &subscriptions.of_customer(customer)).await?;
    Ok(web::Json(CustomerView {
        decision,
        outbox: OutboxCounts { pending: counts.pending, dead: counts.dead },
        rules: rules.applicable(customer, &checker.plans(customer)).iter().map(|r| r.id.uuid()).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/customers/{customer_id}/usage-limits", tag = "admin", security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path, description = "BillaBear customer id (UUID)")),
    responses(
        (status = 200, description = "The customer's limits, as BillaBear has them now", body = LimitList),
        (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 502, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 504, body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_limits(
    limits: web::Data<Limits>,
    path: web::Path<String>,
) -> Result<web::Json<LimitList>, ApiError> {
    let customer = customer_id(&path, "customer_id")?;
    let limits = limits.list(customer).await?;
    Ok(web::Json(LimitList { data: limits }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitList {
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Limit>,
}

#[utoipa::path(post, path = "/v1/customers/{customer_id}/usage-limits", tag = "admin", security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path, description = "BillaBear customer id (UUID)")),
    request_body(content = NewLimitBody, description = r#"{"amount": 5000, "action": "DISABLE"}: amount a positive integer in minor units; action WARNING or DISABLE (any case)"#),
    responses(
        (status = 201, description = "Created in BillaBear; the next check reflects it", body = Object),
        (status = 404, description = "BillaBear has no such customer", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid amount or action (ours or BillaBear's message)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 502, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable: nothing was done", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 504, body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_limit(
    limits: web::Data<Limits>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let customer = customer_id(&path, "customer_id")?;
    let actor = actor(&caller, &request_id);
    let created = match NewLimit::from_json(&body) {
        Ok(new) => limits.create(&actor, customer, new).await?,
        Err(refused) => return Err(limits.refuse(&actor, customer, refused).await.into()),
    };
    let id = created.id.to_string();
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/customers/{customer}/usage-limits/{id}")))
        .json(created))
}

#[utoipa::path(delete, path = "/v1/customers/{customer_id}/usage-limits/{limit_id}", tag = "admin", security(("bearer" = [])),
    params(
        ("customer_id" = uuid::Uuid, Path, description = "BillaBear customer id (UUID)"),
        ("limit_id" = uuid::Uuid, Path, description = "The usage limit's id (UUID)"),
    ),
    responses(
        (status = 204, description = "Deleted in BillaBear; the next check reflects it"),
        (status = 404, description = "No such customer, or the limit is not this customer's", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 502, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable: nothing was done", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 504, body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_limit(
    limits: web::Data<Limits>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (raw_customer, raw_limit) = path.into_inner();
    let customer = customer_id(&raw_customer, "customer_id")?;
    let limit = LimitId::parse(&raw_limit).map_err(|e| ApiError::invalid_field("limit_id", e.to_string()))?;
    limits.delete(&actor(&caller, &request_id), customer, limit).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The body of `POST .../usage-limits`, for the document (`parse_new_limit` reads it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct NewLimitBody {
    /// Minor units; the limit fires when the estimate is strictly greater.
    #[schema(minimum = 1)]
    amount: i64,
    /// WARNING or DISABLE, in any case.
    #[schema(pattern = "^([Ww][Aa][Rr][Nn][Ii][Nn][Gg]|[Dd][Ii][Ss][Aa][Bb][Ll][Ee])$")]
    action: String,
}
