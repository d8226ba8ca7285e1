//! Operators' routes for a customer (scope `admin`): what usage-gate knows of it, and its usage
//! limits, managed in BillaBear. Every change is audited before BillaBear is asked and given its
//! outcome after; then the customer is refetched here and dropped by the other replicas.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::{Value, json};
use tracing_actix_web::RequestId;

use super::{actor, customer_id};
use crate::audit::{self, Actor, Entry, Outcome};
use crate::auth::Caller;
use crate::billabear::{BillaBearError, NewUsageLimit, UsageLimit};
use crate::check::Decision;
use crate::domain::{CustomerId, LimitAction, LimitId};
use crate::domain::FieldError;
use crate::error::ApiError;
use crate::startup::AppState;

/// What usage-gate knows about a customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    /// The current decision, with BillaBear's status, the estimate, the limits and the cache age.
    pub decision: Decision,
    pub outbox: OutboxCounts,
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
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<web::Json<CustomerView>, ApiError> {
    let customer = customer_id(&path, "customer_id")?;
    let decision = state.checker.check(customer, None).await;
    let subscriptions: Vec<uuid::Uuid> =
        state.subscriptions.of_customer(customer).iter().map(|s| s.as_uuid()).collect();
    let (pending, dead): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead')
         FROM outbox
         WHERE status IN ('pending', 'dead') AND (customer_id = $1 OR subscription_id = ANY($2))",
    )
    .bind(customer.as_uuid())
    .bind(&subscriptions)
    .fetch_one(&state.pool)
    .await?;
    Ok(web::Json(CustomerView { decision, outbox: OutboxCounts { pending, dead } }))
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
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<web::Json<LimitList>, ApiError> {
    let customer = customer_id(&path, "customer_id")?;
    let limits = state.billabear.list_usage_limits(customer).await.map_err(|e| upstream(e, customer))?;
    Ok(web::Json(LimitList { data: limits }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitList {
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<UsageLimit>,
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
    state: web::Data<AppState>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let customer = customer_id(&path, "customer_id")?;
    let created = create_limit_as(&state, &actor(&caller, &request_id), customer, &body).await?;
    let id = created.id.to_string();
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/customers/{customer}/usage-limits/{id}")))
        .json(created))
}

/// Creates a usage limit in BillaBear for `actor` (the API and the console): audited before
/// BillaBear is asked and given its outcome after; the customer is then refetched.
pub(crate) async fn create_limit_as(
    state: &AppState,
    actor: &Actor,
    customer: CustomerId,
    body: &Value,
) -> Result<UsageLimit, ApiError> {
    let mut entry = Entry {
        actor: actor.name.clone(),
        action: "usage_limit.create".into(),
        customer: Some(customer),
        target: None,
        outcome: Outcome::Pending,
        upstream_status: None,
        request_id: actor.request_id.clone(),
        details: json!({"amount": body.get("amount"), "action": body.get("action")}),
    };
    let limit = match parse_new_limit(body) {
        Ok(limit) => limit,
        Err(errors) => {
            entry.outcome = Outcome::Rejected;
            entry.details["errors"] = json!(errors);
            audit_rejection(state, &entry).await;
            return Err(ApiError::unprocessable(errors));
        }
    };
    entry.details = json!({"amount": limit.amount, "action": limit.action.as_str()});
    // Recorded before BillaBear is asked: without Postgres, nothing is done (503).
    let record = audit::record(&state.pool, &entry).await?;
    // What exists already, so that if BillaBear's answer never comes the new limit can be told
    // from an identical older one (if this fails, any identical limit counts as the new one).
    let before = state.billabear.list_usage_limits(customer).await.ok();
    let created = match state.billabear.create_usage_limit(customer, &limit).await {
        Ok(created) => {
            conclude(state, record, Outcome::Success, Some(201), Some(&created.id.to_string()), json!({}))
                .await;
            created
        }
        Err(e) if outcome_unknown(&e) => {
            let found = look_for_created(state, customer, &limit, before.as_deref()).await;
            let exists = found.as_ref().map(Option::is_some).map_err(Clone::clone);
            let target = found.as_ref().ok().and_then(Option::as_ref).map(|l| l.id.to_string());
            settle(state, record, e, exists, true, target.as_deref()).await?;
            // Settled as made only when found.
            found.ok().flatten().ok_or_else(|| anyhow::anyhow!("a limit settled as made was not found"))?
        }
        Err(e) => return Err(failed(state, record, e, customer).await),
    };
    state.customer_changed(customer).await;
    Ok(created)
}

/// BillaBear may have acted on a request whose answer never came (or could not be read).
fn outcome_unknown(e: &BillaBearError) -> bool {
    match e {
        BillaBearError::Timeout(_) | BillaBearError::Connect(_) => true,
        BillaBearError::InvalidBody { status, .. } => (200..300).contains(status),
        _ => false,
    }
}

/// After a create whose answer never came: the limit that is now there and was not before.
async fn look_for_created(
    state: &AppState,
    customer: CustomerId,
    limit: &NewUsageLimit,
    before: Option<&[UsageLimit]>,
) -> Result<Option<UsageLimit>, BillaBearError> {
    let now = state.billabear.list_usage_limits(customer).await?;
    let existed = |id: LimitId| before.is_some_and(|before| before.iter().any(|l| l.id == id));
    Ok(now.into_iter().find(|l| l.amount == limit.amount && l.action == limit.action && !existed(l.id)))
}

/// Settles a change whose answer never came, from what BillaBear shows now: `exists` is whether
/// the limit is there (`Err`: looking failed too, and the record stays `unknown`), `wanted`
/// whether the change meant it to be (a create) or not (a delete). The record becomes
/// `success` or `failed`; `Ok(())` when the change was made, otherwise the answer to give,
/// which tells whether the limit exists.
async fn settle(
    state: &AppState,
    record: i64,
    error: BillaBearError,
    exists: Result<bool, BillaBearError>,
    wanted: bool,
    target: Option<&str>,
) -> Result<(), ApiError> {
    let message = error.to_string();
    let (outcome, details) = match &exists {
        Ok(exists) if *exists == wanted => {
            (Outcome::Success, json!({"message": message, "verified": "made: seen in BillaBear afterwards"}))
        }
        Ok(_) => (
            Outcome::Failed,
            json!({"message": message, "verified": "not made: not seen in BillaBear afterwards"}),
        ),
        Err(e) => (Outcome::Unknown, json!({"message": message, "verify_error": e.to_string()})),
    };
    conclude(state, record, outcome, None, target, details).await;
    match exists {
        Ok(exists) if exists == wanted => Ok(()),
        Ok(exists) => Err(ApiError::LimitOutcome { source: error, exists: Some(exists) }),
        Err(_) => Err(ApiError::LimitOutcome { source: error, exists: None }),
    }
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
    state: web::Data<AppState>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (raw_customer, raw_limit) = path.into_inner();
    let customer = customer_id(&raw_customer, "customer_id")?;
    let limit = LimitId::parse(&raw_limit).map_err(|e| ApiError::invalid_field("limit_id", e.to_string()))?;
    delete_limit_as(&state, &actor(&caller, &request_id), customer, limit).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Deletes one of the customer's usage limits in BillaBear for `actor` (the API and the
/// console), audited as [`create_limit_as`] is.
pub(crate) async fn delete_limit_as(
    state: &AppState,
    actor: &Actor,
    customer: CustomerId,
    limit: LimitId,
) -> Result<(), ApiError> {
    let entry = Entry {
        actor: actor.name.clone(),
        action: "usage_limit.delete".into(),
        customer: Some(customer),
        target: Some(limit.to_string()),
        outcome: Outcome::Pending,
        upstream_status: None,
        request_id: actor.request_id.clone(),
        details: json!({}),
    };
    let record = audit::record(&state.pool, &entry).await?;
    // BillaBear deletes any limit by id, whoever's it is: check that it is this customer's.
    let limits = match state.billabear.list_usage_limits(customer).await {
        Ok(limits) => limits,
        Err(e) => return Err(failed(state, record, e, customer).await),
    };
    let Some(found) = limits.iter().find(|l| l.id == limit) else {
        let message = format!("customer {customer} has no usage limit {limit}");
        conclude(state, record, Outcome::Rejected, None, None, json!({"message": message})).await;
        return Err(ApiError::NotFound(message));
    };
    let details = json!({"amount": found.amount, "action": found.action.as_str()});
    match state.billabear.delete_usage_limit(customer, limit).await {
        Ok(()) => conclude(state, record, Outcome::Success, Some(200), None, details).await,
        Err(e) if outcome_unknown(&e) => {
            let exists = state
                .billabear
                .list_usage_limits(customer)
                .await
                .map(|now| now.iter().any(|l| l.id == limit));
            settle(state, record, e, exists, false, None).await?;
        }
        Err(e) => return Err(failed(state, record, e, customer).await),
    }
    state.customer_changed(customer).await;
    Ok(())
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

/// A `POST .../usage-limits` body: every invalid field is named.
pub fn parse_new_limit(body: &Value) -> Result<NewUsageLimit, Vec<FieldError>> {
    let mut errors = vec![];
    let amount = match body.get("amount") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("amount", "required: a positive integer, minor units"));
            None
        }
        Some(value) => match whole_number(value).filter(|a| *a > 0) {
            Some(amount) => Some(amount),
            None => {
                errors.push(FieldError::new(
                    "amount",
                    format!("must be a positive integer (minor units), got {value}"),
                ));
                None
            }
        },
    };
    let action = match body.get("action") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("action", "required: WARNING or DISABLE"));
            None
        }
        Some(value) => match value.as_str().and_then(|s| LimitAction::parse(&s.to_ascii_uppercase()).ok()) {
            Some(action) => Some(action),
            None => {
                errors.push(FieldError::new("action", format!("must be WARNING or DISABLE, got {value}")));
                None
            }
        },
    };
    match (amount, action) {
        (Some(amount), Some(action)) if errors.is_empty() => Ok(NewUsageLimit { amount, action }),
        _ => Err(errors),
    }
}

/// An integer, also when spelled with a zero fraction (`5000.0`, which JSON Schema counts as an
/// integer too); BillaBear is sent the integer.
fn whole_number(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        let f = value.as_f64()?;
        // Within 2^53, where every integer is exactly a double.
        (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64)
    })
}

/// BillaBear's refusal or failure as the admin API answers it.
fn upstream(e: BillaBearError, customer: CustomerId) -> ApiError {
    match e {
        BillaBearError::NotFound(_) => ApiError::NotFound(format!("BillaBear has no customer {customer}")),
        BillaBearError::Validation(fields) => ApiError::unprocessable(
            fields.into_iter().map(|(field, message)| FieldError::new(field, message)).collect(),
        ),
        other => ApiError::Upstream(other),
    }
}

/// Concludes the audit record for a BillaBear error and returns the answer for it.
async fn failed(state: &AppState, record: i64, e: BillaBearError, customer: CustomerId) -> ApiError {
    let outcome = match e {
        BillaBearError::NotFound(_) | BillaBearError::Validation(_) => Outcome::Rejected,
        _ => Outcome::Failed,
    };
    let details = json!({"message": e.to_string()});
    conclude(state, record, outcome, e.upstream_status(), None, details).await;
    upstream(e, customer)
}

/// Gives a pending record its outcome. If Postgres fails now, the record stays `pending` (it
/// never claims an outcome that did not happen) and the answer still tells the caller the truth.
async fn conclude(
    state: &AppState,
    record: i64,
    outcome: Outcome,
    upstream_status: Option<u16>,
    target: Option<&str>,
    details: Value,
) {
    if let Err(e) = audit::conclude(&state.pool, record, outcome, upstream_status, target, details).await {
        tracing::error!(record, outcome = outcome.as_str(), error = %e, "audit: cannot record an outcome; the record stays pending");
    }
}

/// Audits a request refused before BillaBear was asked. Nothing was changed, so if Postgres
/// fails the refusal is still the answer.
async fn audit_rejection(state: &AppState, entry: &Entry) {
    if let Err(e) = audit::record(&state.pool, entry).await {
        tracing::error!(action = %entry.action, error = %e, "audit: cannot record a rejected request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billabear_refusals_are_answered_with_its_field_messages() {
        let customer = CustomerId::parse("11111111-1111-4111-8111-111111111111").unwrap();
        let fields = [("amount".to_owned(), "This value should be positive.".to_owned())].into();
        match upstream(BillaBearError::Validation(fields), customer) {
            ApiError::Unprocessable { errors, .. } => {
                assert_eq!(errors, [FieldError::new("amount", "This value should be positive.")])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(upstream(BillaBearError::NotFound("customer"), customer), ApiError::NotFound(_)));
        let timeout = BillaBearError::Timeout(std::time::Duration::from_millis(250));
        assert!(matches!(upstream(timeout, customer), ApiError::Upstream(BillaBearError::Timeout(_))));
    }

    #[test]
    fn a_new_limit_needs_a_positive_integer_amount_and_a_known_action_in_any_case() {
        assert_eq!(
            parse_new_limit(&json!({"amount": 5000, "action": "disable"})),
            Ok(NewUsageLimit { amount: 5000, action: LimitAction::Disable })
        );
        assert_eq!(
            parse_new_limit(&json!({"amount": 1, "action": "WARNING", "extra": true})),
            Ok(NewUsageLimit { amount: 1, action: LimitAction::Warning })
        );
        assert_eq!(
            parse_new_limit(&json!({"amount": 3957299944604836.0, "action": "diSablE"})),
            Ok(NewUsageLimit { amount: 3957299944604836, action: LimitAction::Disable })
        );
        let fields = |body: Value| -> Vec<String> {
            parse_new_limit(&body).unwrap_err().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(fields(json!({})), ["amount", "action"]);
        for amount in [json!(0), json!(-5), json!(20.5), json!("2000"), json!(1e30)] {
            assert_eq!(fields(json!({"amount": amount, "action": "WARNING"})), ["amount"], "{amount}");
        }
        for action in [json!("WARN"), json!(1), json!("")] {
            assert_eq!(fields(json!({"amount": 5, "action": action})), ["action"], "{action}");
        }
    }
}
