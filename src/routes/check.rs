//! The check routes (scope `check`): one customer, a batch, and the reverse-proxy gate; plus the
//! admin refresh.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use std::borrow::Cow;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{batch_items, customer_id};
use crate::check::{Checker, Decision};
use crate::config::Settings;
use crate::domain::{CustomerId, FieldError, Subject, whole_number};
use crate::entitlements::{FeatureAsk, PlanAsk};
use crate::error::ApiError;
use crate::jwt::{TokenError, Verifier};

const COST_RULE: &str = "must be a non-negative integer (minor units)";

fn parse_cost(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|c| *c >= 0).ok_or_else(|| ApiError::invalid_field("cost", COST_RULE))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckQuery {
    /// Minor units the caller is about to spend: blocked if it would take the estimate over a
    /// DISABLE limit.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub cost: Option<String>,
    /// A feature code of the customer's BillaBear plan (1 to 128 visible ASCII characters):
    /// allowed only if the plan includes it (`feature_not_in_plan`); the answer's `feature`
    /// says what the plan gives.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub feature: Option<String>,
    /// With `feature`: how many more are about to be used (default 1).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub quantity: Option<String>,
    /// With `feature`: how many the caller counts in use now (projects, members); allowed iff
    /// `in_use + quantity` is within the feature's limit (`feature_limit_reached`).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub in_use: Option<String>,
    /// Seats the customer would have: allowed iff within the plan's user count
    /// (`seats_exceeded`; a count of 0: `entitlements.zero_user_count`).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub seats: Option<String>,
    /// Who inside the customer asks (a user, a workspace, an API key of the customer's): 1 to
    /// 128 visible ASCII characters, judged by per-subject rules (`rule_limit_exceeded`).
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub subject: Option<String>,
}

/// The check's query parameters as sent (`CheckQuery` documents them).
#[derive(Default)]
struct QueryValues<'q> {
    cost: Option<Cow<'q, str>>,
    feature: Option<Cow<'q, str>>,
    quantity: Option<Cow<'q, str>>,
    in_use: Option<Cow<'q, str>>,
    seats: Option<Cow<'q, str>>,
    subject: Option<Cow<'q, str>>,
}

impl<'q> QueryValues<'q> {
    /// Read by hand, borrowing what needs no decoding: serde_urlencoded's `Deserialize` cost a
    /// check with `feature`, `in_use` and `quantity` ~2,850 instructions of its ~38,500, and
    /// `form_urlencoded::parse` with owned values ~2,450 (`bench/check_instructions.py --query`).
    /// A pair with `%` or `+` is decoded by `form_urlencoded`. Unknown parameters are ignored,
    /// as serde did; one given twice is a 400 naming it, as serde's "duplicate field" was.
    fn parse(query: &'q str) -> Result<QueryValues<'q>, ApiError> {
        let mut sent = QueryValues::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value): (Cow<'q, str>, Cow<'q, str>) = if pair.contains(['%', '+']) {
                match url::form_urlencoded::parse(pair.as_bytes()).next() {
                    Some((name, value)) => (Cow::Owned(name.into_owned()), Cow::Owned(value.into_owned())),
                    None => continue,
                }
            } else {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (Cow::Borrowed(name), Cow::Borrowed(value))
            };
            let slot = match &*name {
                "cost" => &mut sent.cost,
                "feature" => &mut sent.feature,
                "quantity" => &mut sent.quantity,
                "in_use" => &mut sent.in_use,
                "seats" => &mut sent.seats,
                "subject" => &mut sent.subject,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(ApiError::invalid_field(name.into_owned(), "given more than once"));
            }
        }
        Ok(sent)
    }
}

/// A value of the plan's part of a check as sent: query text, or a batch item's JSON.
#[derive(Clone, Copy)]
enum Sent<'a> {
    Text(&'a str),
    Json(&'a Value),
}

fn text<'a>(value: &'a Option<Cow<'_, str>>) -> Option<Sent<'a>> {
    value.as_deref().map(Sent::Text)
}

const FEATURE_RULE: &str = "must be a feature code: 1 to 128 visible ASCII characters";

const SUBJECT_RULE: &str = "must be a subject: 1 to 128 visible ASCII characters";

/// The plan's part of a check (`feature`, `quantity`, `in_use`, `seats`) and its `subject`,
/// every problem named by `at(field)`.
fn plan_ask(
    [feature, quantity, in_use, seats, subject]: [Option<Sent<'_>>; 5],
    at: impl Fn(&str) -> String,
) -> Result<PlanAsk, Vec<FieldError>> {
    let mut errors = Vec::new();
    let subject = match subject {
        None | Some(Sent::Json(Value::Null)) => None,
        Some(Sent::Text(text)) => Subject::parse(text).ok().or_else(|| {
            errors.push(FieldError::new(at("subject"), SUBJECT_RULE));
            None
        }),
        Some(Sent::Json(Value::String(text))) => Subject::parse(text).ok().or_else(|| {
            errors.push(FieldError::new(at("subject"), SUBJECT_RULE));
            None
        }),
        Some(Sent::Json(_)) => {
            errors.push(FieldError::new(at("subject"), SUBJECT_RULE));
            None
        }
    };
    let mut count = |field: &str, sent: Option<Sent<'_>>, min: u64| -> Option<u64> {
        let rule = if min == 0 { "must be a non-negative integer" } else { "must be a positive integer" };
        // Within i64, as the document says (int64): a client's language may hold no more.
        let parsed = match sent? {
            Sent::Text(text) => text.parse::<i64>().ok(),
            Sent::Json(Value::Null) => return None,
            Sent::Json(value) => whole_number(value),
        };
        let parsed = parsed.and_then(|n| u64::try_from(n).ok());
        let parsed = parsed.filter(|n| *n >= min);
        if parsed.is_none() {
            errors.push(FieldError::new(at(field), rule));
        }
        parsed
    };
    let given = |sent: Option<Sent<'_>>| sent.is_some_and(|s| !matches!(s, Sent::Json(Value::Null)));
    let (feature_given, quantity_given, in_use_given) = (given(feature), given(quantity), given(in_use));
    let quantity = count("quantity", quantity, 1);
    let in_use = count("in_use", in_use, 0);
    let seats = count("seats", seats, 0);
    let code = match feature {
        None | Some(Sent::Json(Value::Null)) => None,
        Some(Sent::Text(code)) => Some(code),
        Some(Sent::Json(Value::String(code))) => Some(code.as_str()),
        Some(Sent::Json(_)) => {
            errors.push(FieldError::new(at("feature"), FEATURE_RULE));
            None
        }
    };
    if let Some(code) = code
        && !crate::entitlements::is_feature_code(code)
    {
        errors.push(FieldError::new(at("feature"), FEATURE_RULE));
    }
    if !feature_given {
        for (given, field) in [(quantity_given, "quantity"), (in_use_given, "in_use")] {
            if given {
                errors.push(FieldError::new(at(field), "needs feature: the feature it counts"));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PlanAsk {
        feature: code.map(|code| FeatureAsk {
            code: code.to_owned(),
            quantity: quantity.unwrap_or(1),
            in_use,
        }),
        seats,
        subject,
    })
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
    if req.query_string().is_empty() {
        return Ok(json_body(checker.check(id, None).await.to_json()));
    }
    let query = QueryValues::parse(req.query_string())?;
    let cost = query.cost.as_deref().map(parse_cost).transpose()?;
    let plan = plan_ask(
        [&query.feature, &query.quantity, &query.in_use, &query.seats, &query.subject].map(text),
        str::to_owned,
    )
    .map_err(ApiError::invalid_fields)?;
    Ok(json_body(checker.check_plan(id, cost, &plan).await.to_json()))
}

/// Room for one decision without rules (`Decision::to_json` sizes its own).
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
    /// 1 to 1000 customers, answered in order: `{"id": UUID, "cost": minor units, "feature",
    /// "quantity", "in_use", "seats", "subject"}` each (all but `id` optional, as the single check's
    /// parameters); an item of another shape is answered with its own error in its place.
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<Value>)]
    pub customers: Vec<CheckBatchItem>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CheckBatchItem {
    /// The customer id (a UUID); anything else is answered with this item's error.
    pub id: String,
    /// Minor units about to be spent; a negative or fractional one is this item's error.
    pub cost: Option<i64>,
    /// A feature code of the customer's plan, as `feature` of the single check.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub feature: Option<String>,
    /// With `feature`: how many more (default 1).
    #[schema(minimum = 1)]
    pub quantity: Option<i64>,
    /// With `feature`: how many the caller counts in use now.
    #[schema(minimum = 0)]
    pub in_use: Option<i64>,
    /// Seats the customer would have.
    #[schema(minimum = 0)]
    pub seats: Option<i64>,
    /// Who inside the customer asks, as `subject` of the single check.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub subject: Option<String>,
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
fn parse_item(index: usize, item: &Value) -> Result<(CustomerId, Option<i64>, PlanAsk), CheckItemError> {
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
    let sent = |field: &str| object.get(field).map(Sent::Json);
    let plan = plan_ask(["feature", "quantity", "in_use", "seats", "subject"].map(sent), at).map_err(
        |mut errors| CheckItemError { customer_id: item.get("id").cloned(), error: errors.remove(0) },
    )?;
    Ok((id, cost, plan))
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
                    Ok((id, cost, plan)) => {
                        CheckBatchAnswer::Decision(Box::new(checker.check_plan(id, cost, &plan).await))
                    }
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
        ("X-Usage-Feature" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$", description = "A feature code of the customer's plan the location needs (as the check's `feature`); blocked with feature_not_in_plan when the plan lacks it. The proxy sets it per location"),
        ("feature" = Option<String>, Query, min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$", description = "As X-Usage-Feature (both given: they must be equal)"),
    ),
    responses(
        (status = 204, description = "Allowed. Headers: X-Usage-Status, X-Usage-Estimate, X-Usage-Currency, X-Usage-Limit (lowest DISABLE limit), X-Usage-Reasons"),
        (status = 400, description = "The customer header is missing or not a UUID, or the feature is not a feature code (or the header and the query name different ones)", body = crate::error::Problem, content_type = "application/problem+json"),
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
    let plan = gate_feature(&req)?;
    let decision = checker.check_plan(id, None, &plan).await;
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

static X_USAGE_FEATURE: HeaderName = HeaderName::from_static("x-usage-feature");

/// The feature a gated location needs: its `X-Usage-Feature` header or `?feature=` (the
/// query read as the check's is).
fn gate_feature(req: &HttpRequest) -> Result<PlanAsk, ApiError> {
    let header = match req.headers().get(&X_USAGE_FEATURE) {
        Some(value) => {
            Some(value.to_str().map_err(|_| ApiError::invalid_field("X-Usage-Feature", FEATURE_RULE))?)
        }
        None => None,
    };
    let query = QueryValues::parse(req.query_string())?;
    let (feature, field) = match (header, query.feature.as_deref()) {
        (Some(header), Some(query)) if header != query => {
            return Err(ApiError::invalid_field(
                "X-Usage-Feature",
                "differs from the feature query parameter",
            ));
        }
        (Some(header), _) => (Some(header), "X-Usage-Feature"),
        (None, query) => (query, "feature"),
    };
    let subject = query.subject.as_deref().map(Sent::Text);
    plan_ask([feature.map(Sent::Text), None, None, None, subject], |name| match name {
        "subject" => name.to_owned(),
        _ => field.to_owned(),
    })
    .map_err(ApiError::invalid_fields)
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
