//! The check routes (scope `check`): one customer, a batch, and the reverse-proxy gate; plus the
//! admin refresh.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{batch_items, customer_id};
use crate::check::{Checker, Decision};
use crate::config::Settings;
use crate::domain::{CustomerId, FieldError, whole_number};
use crate::error::ApiError;
use crate::jwt::{TokenError, Verifier};

const COST_RULE: &str = "must be a non-negative integer (minor units)";

fn parse_cost(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|c| *c >= 0).ok_or_else(|| ApiError::invalid_field("cost", COST_RULE))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CheckQuery {
    /// Minor units the caller is about to spend: blocked if it would take the estimate over a
    /// DISABLE limit.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub cost: Option<String>,
}

/// May this customer keep using the product?
#[utoipa::path(get, path = "/v1/customers/{customer_id}/check", tag = "check", security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path, description = "BillaBear customer id (UUID)"), CheckQuery),
    responses(
        (status = 200, body = Decision),
        (status = 400, description = "customer_id not a UUID, or cost not a non-negative integer", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn check_customer(
    checker: web::Data<Checker>,
    req: HttpRequest,
) -> Result<HttpResponse, actix_web::Error> {
    // The path segment and the query read as they are, not through the `Path` and `Query`
    // extractors: their serde and allocations cost a warm check ~650 instructions, and most
    // checks have no query (`bench/check_instructions.py`).
    let id = customer_id(req.match_info().query("customer_id"), "customer_id")?;
    let cost = match req.query_string() {
        "" => None,
        _ => web::Query::<CheckQuery>::extract(&req).await?.cost.as_deref().map(parse_cost).transpose()?,
    };
    let mut body = Vec::with_capacity(DECISION_BYTES);
    checker.check(id, cost).await.write_json(&mut body);
    Ok(json_body(body))
}

/// Room for one decision, so writing it rarely reallocates: one with two limits is about 600
/// bytes, and growing a 512-byte buffer on every check cost a malloc, a copy and a free.
const DECISION_BYTES: usize = 1024;

/// 200 with `body`, JSON. The header value is a static one: `ContentType::json()` formats a
/// mime type into a new value on every call (~700 instructions, `bench/check_instructions.py`).
fn json_body(body: Vec<u8>) -> HttpResponse {
    static JSON: HeaderValue = HeaderValue::from_static("application/json");
    HttpResponse::Ok().insert_header((actix_web::http::header::CONTENT_TYPE, JSON.clone())).body(body)
}

/// The body of `POST /v1/check` (documentation: the handler reads each item on its own, so
/// an invalid item is answered in its place instead of failing the batch).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CheckBatchRequest {
    /// 1 to 1000 customers, answered in order: `{"id": UUID, "cost": minor units}` each; an
    /// item of another shape is answered with its own error in its place.
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<Value>)]
    pub customers: Vec<CheckBatchItem>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CheckBatchItem {
    /// The customer id (a UUID); anything else is answered with this item's error.
    pub id: String,
    /// Minor units about to be spent; a negative or fractional one is this item's error.
    pub cost: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckBatchResponse {
    /// One per requested customer, in order: a decision, or that item's error.
    pub decisions: Vec<CheckBatchAnswer>,
}

impl CheckBatchResponse {
    /// The answer as JSON, as serde_json writes it, with each decision written by
    /// [`Decision::write_json`] (serde's way cost a quarter of a check).
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"decisions\":[");
        for (i, answer) in self.decisions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match answer {
                CheckBatchAnswer::Decision(decision) => decision.write_json(out),
                CheckBatchAnswer::Invalid(invalid) => serde_json::to_writer(&mut *out, invalid)?,
            }
        }
        out.extend_from_slice(b"]}");
        Ok(())
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CheckBatchAnswer {
    Decision(Box<Decision>),
    Invalid(CheckItemError),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckItemError {
    /// The item as sent, when it had an id.
    pub customer_id: Option<Value>,
    pub error: FieldError,
}

/// Checks one item of a batch as sent, without failing the others.
fn parse_item(index: usize, item: &Value) -> Result<(CustomerId, Option<i64>), CheckItemError> {
    let at = |field: &str| format!("customers[{index}].{field}");
    let invalid = |field: &str, message: &str| CheckItemError {
        customer_id: item.get("id").cloned(),
        error: FieldError::new(at(field), message),
    };
    let Some(object) = item.as_object() else {
        return Err(CheckItemError {
            customer_id: None,
            error: FieldError::new(format!("customers[{index}]"), "must be an object with id and cost"),
        });
    };
    let id = match object.get("id") {
        Some(Value::String(raw)) => CustomerId::parse(raw).map_err(|e| invalid("id", &e.to_string()))?,
        _ => return Err(invalid("id", "must be a customer id (UUID string)")),
    };
    let cost = match object.get("cost") {
        None | Some(Value::Null) => None,
        Some(number @ Value::Number(_)) => {
            Some(whole_number(number).filter(|c| *c >= 0).ok_or_else(|| invalid("cost", COST_RULE))?)
        }
        Some(_) => return Err(invalid("cost", COST_RULE)),
    };
    Ok((id, cost))
}

/// Many customers at once; cold ones are fetched concurrently (`cache.fetch_concurrency`).
#[utoipa::path(post, path = "/v1/check", tag = "check", security(("bearer" = [])),
    request_body = CheckBatchRequest,
    responses(
        (status = 200, description = "One answer per item, in order; invalid items carry their own error", body = CheckBatchResponse),
        (status = 400, description = "Body not JSON, or customers missing, empty or over 1000", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn check_batch(
    checker: web::Data<Checker>,
    settings: web::Data<Settings>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let items = batch_items(&body, "customers", "{\"id\", \"cost\"} objects")?;
    let parsed: Vec<_> = items.iter().enumerate().map(|(i, item)| parse_item(i, item)).collect();
    let concurrency = settings.cache.fetch_concurrency;
    let decisions: Vec<CheckBatchAnswer> = futures_util::stream::iter(parsed)
        .map(|item| {
            let checker = checker.clone();
            async move {
                match item {
                    Ok((id, cost)) => CheckBatchAnswer::Decision(Box::new(checker.check(id, cost).await)),
                    Err(invalid) => CheckBatchAnswer::Invalid(invalid),
                }
            }
        })
        .buffered(concurrency)
        .collect()
        .await;
    let mut body = Vec::with_capacity(DECISION_BYTES * decisions.len());
    CheckBatchResponse { decisions }.write_json(&mut body).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(json_body(body))
}

static X_USAGE_STATUS: HeaderName = HeaderName::from_static("x-usage-status");
static X_USAGE_ESTIMATE: HeaderName = HeaderName::from_static("x-usage-estimate");
static X_USAGE_CURRENCY: HeaderName = HeaderName::from_static("x-usage-currency");
static X_USAGE_LIMIT: HeaderName = HeaderName::from_static("x-usage-limit");
static X_USAGE_REASONS: HeaderName = HeaderName::from_static("x-usage-reasons");

/// For reverse proxies: 204 when allowed, `gate.blocked_status` (problem+json) when not. The
/// customer id comes from the `gate.customer_header` header or, with `[gate.jwt]`, from the end
/// user's verified token in `Authorization` (the key then in `X-Usage-Gate-Key`).
#[utoipa::path(get, path = "/v1/gate", tag = "check", security(("bearer" = [])),
    params(
        ("X-Customer-Id" = uuid::Uuid, Header, description = "Required without [gate.jwt] (the default): the customer id (header name set by gate.customer_header); it must come from the proxy's own authentication. Ignored with [gate.jwt]"),
        ("X-Usage-Gate-Key" = Option<String>, Header, description = "usage-gate's API key (scope check) when Authorization carries the end user's token ([gate.jwt])"),
    ),
    responses(
        (status = 204, description = "Allowed. Headers: X-Usage-Status, X-Usage-Estimate, X-Usage-Currency, X-Usage-Limit (lowest DISABLE limit), X-Usage-Reasons"),
        (status = 400, description = "The customer header is missing or not a UUID", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown API key (unauthorized); with [gate.jwt], the end user's token missing (token_missing), expired (token_expired) or otherwise refused (token_invalid)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Blocked (default gate.blocked_status; 402 or 429 if so configured), or the key lacks the check scope", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn gate(
    checker: web::Data<Checker>,
    settings: web::Data<Settings>,
    verifier: Option<web::Data<Verifier>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = match verifier {
        // The customer is the one the end user's verified token names; a customer header the
        // client sent is ignored.
        Some(verifier) => {
            let token = super::auth::bearer_token(req.headers())
                .and_then(|token| std::str::from_utf8(token).ok())
                .ok_or(TokenError::Missing)?;
            verifier.customer(token).await?
        }
        None => {
            let header = &settings.gate.customer_header;
            let raw = req
                .headers()
                .get(&**header)
                .ok_or_else(|| ApiError::invalid_field(header.as_str(), "required: the customer id (UUID)"))?
                .to_str()
                .map_err(|_| ApiError::invalid_field(header.as_str(), "must be a UUID"))?;
            customer_id(raw.trim(), header.as_str())?
        }
    };
    let decision = checker.check(id, None).await;
    if decision.allowed {
        let mut response = HttpResponse::NoContent().finish();
        set_usage_headers(response.headers_mut(), &decision);
        return Ok(response);
    }
    // A problem+json like every other error, with the usage headers too.
    let status = StatusCode::from_u16(settings.gate.blocked_status).unwrap_or(StatusCode::FORBIDDEN);
    let blocked = ApiError::UsageBlocked { status, decision: Box::new(decision) };
    let mut response = blocked.error_response();
    if let ApiError::UsageBlocked { decision, .. } = &blocked {
        set_usage_headers(response.headers_mut(), decision);
    }
    Ok(response)
}

fn set_usage_headers(headers: &mut actix_web::http::header::HeaderMap, decision: &Decision) {
    let mut set = |name: &HeaderName, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name.clone(), value);
        }
    };
    set(&X_USAGE_STATUS, decision.status.as_str().to_owned());
    if let Some(estimate) = &decision.estimate {
        set(&X_USAGE_ESTIMATE, estimate.amount.to_string());
        if !estimate.currency.as_str().is_empty() {
            set(&X_USAGE_CURRENCY, estimate.currency.as_str().to_owned());
        }
    }
    if let Some(limit) = decision.lowest_disable_limit() {
        set(&X_USAGE_LIMIT, limit.to_string());
    }
    if !decision.reasons.is_empty() {
        set(&X_USAGE_REASONS, decision.reasons.iter().map(|r| r.code()).collect::<Vec<_>>().join(","));
    }
}

/// Refetches the customer from BillaBear now and returns the new decision (scope `admin`).
#[utoipa::path(post, path = "/v1/customers/{customer_id}/refresh", tag = "admin", security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path, description = "BillaBear customer id (UUID)")),
    responses(
        (status = 200, body = Decision),
        (status = 400, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "BillaBear failed or is unreachable", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 504, description = "BillaBear did not answer in time", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn refresh(
    checker: web::Data<Checker>,
    path: web::Path<String>,
) -> Result<web::Json<Decision>, ApiError> {
    let id = customer_id(&path, "customer_id")?;
    Ok(web::Json(checker.refresh(id).await?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::check::every_shape_of_decision;

    #[test]
    fn a_batch_answer_is_written_exactly_as_serde_json_writes_it() {
        let items = [
            json!({"id": "x\"y", "cost": 1}),
            json!(7),
            json!({"id": "00000000-0000-4000-8000-000000000001", "cost": -1}),
        ];
        let invalid = |i: usize| CheckBatchAnswer::Invalid(parse_item(i, &items[i]).unwrap_err());
        let mut answers: Vec<CheckBatchAnswer> =
            every_shape_of_decision().into_iter().map(|d| CheckBatchAnswer::Decision(Box::new(d))).collect();
        answers.insert(1, invalid(0));
        answers.extend([invalid(1), invalid(2)]);
        for response in [CheckBatchResponse { decisions: vec![] }, CheckBatchResponse { decisions: answers }]
        {
            let mut ours = Vec::new();
            response.write_json(&mut ours).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&response).unwrap());
        }
    }
}
