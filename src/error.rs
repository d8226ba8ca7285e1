//! The one place where errors become HTTP responses: RFC 9457 problem+json for every status.
//! 4xx bodies say what was wrong and name fields; 5xx bodies are generic and the cause chain goes
//! to the log instead.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{
    HttpRequest, HttpResponse, ResponseError, error::JsonPayloadError, error::PathError,
    error::QueryPayloadError,
};
use serde::Serialize;

use crate::admission::AdmissionError;
use crate::auth::Scope;
use crate::billabear::BillaBearError;
use crate::check::Decision;
use crate::db::{FailureKind, StorageError};
use crate::domain::{CustomerId, FieldError, LimitAction, LimitId, Timestamp};
use crate::inbound::InboundError;
use crate::limits::LimitError;
use crate::outbox::RetryError;
use crate::overrides::OverrideError;
use crate::policy::Reason;
use crate::reservations::{IDEMPOTENCY_KEY, Reuse};
use crate::rules::RuleError;
use crate::webhooks::endpoints::EndpointError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required (Authorization: Bearer KEY)")]
    Unauthorized,
    /// The gate's end-user token (`[gate.jwt]`) was refused.
    #[error("the end user's token: {0}")]
    InvalidToken(#[from] crate::jwt::TokenError),
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(Scope),
    #[error("{detail}")]
    BadRequest { detail: String, errors: Vec<FieldError> },
    /// Well-formed but invalid values (422), caught here or by BillaBear.
    #[error("{detail}")]
    Unprocessable { detail: String, errors: Vec<FieldError> },
    #[error("{0}")]
    NotFound(String),
    /// A known path with a method it does not take; the ones it does, for `Allow`.
    #[error("this path takes only {0}")]
    MethodNotAllowed(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Conflict(String),
    /// A repeated event whose stored copy is dead (409: it conflicts with what is stored, and
    /// was not delivered).
    #[error("{0}")]
    EventDead(String),
    /// An enforced event or a hold that does not fit under the customer's limit (402), with
    /// the decision it was judged by.
    #[error("{}", over_limit(.0))]
    UsageLimitExceeded(Box<Decision>),
    /// The gate's answer for a customer who may not use the product, with the status
    /// `gate.blocked_status` sets (403, 402 or 429).
    #[error("customer {} may not use the product: {}", .decision.customer_id, reason_codes(.decision).join(", "))]
    UsageBlocked { status: StatusCode, decision: Box<Decision> },
    /// Postgres failed; what the caller is told depends on the failure's kind (see `db::classify`).
    #[error("storage failed: {}", chain(.0))]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Upstream(#[from] BillaBearError),
    /// BillaBear's answer to a usage-limit change never came; `exists` is what listing the
    /// customer's limits afterwards found (None: that failed too, so nobody can tell yet).
    #[error("{source}; {}", limit_outcome(*.exists))]
    LimitOutcome { source: BillaBearError, exists: Option<bool> },
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Storage(e.into())
    }
}

impl From<AdmissionError> for ApiError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::Unresolved(error) => ApiError::unprocessable(vec![error]),
            AdmissionError::OverLimit(decision) => ApiError::UsageLimitExceeded(decision),
            // Asked otherwise: the request is at fault (the key names another hold). Closed: the
            // request is fine, but what the key stands for is gone.
            AdmissionError::KeyReused { why: Reuse::OtherAsk, message } => {
                ApiError::unprocessable(vec![FieldError::new(IDEMPOTENCY_KEY, message)])
            }
            AdmissionError::KeyReused { why: Reuse::Closed, message } => ApiError::Conflict(message),
            AdmissionError::Storage(e) => ApiError::Storage(e),
            e @ AdmissionError::Impossible(_) => ApiError::Internal(anyhow::anyhow!(e.to_string())),
        }
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::Invalid(errors) => ApiError::unprocessable(errors),
            LimitError::NotFound(message) => ApiError::NotFound(message),
            LimitError::Upstream(e) => ApiError::Upstream(e),
            LimitError::Outcome { source, exists } => ApiError::LimitOutcome { source, exists },
            LimitError::Storage(e) => ApiError::Storage(e),
        }
    }
}

impl From<OverrideError> for ApiError {
    fn from(e: OverrideError) -> Self {
        match e {
            OverrideError::Invalid(errors) => ApiError::unprocessable(errors),
            e @ OverrideError::NotInForce { .. } => ApiError::NotFound(e.to_string()),
            OverrideError::Storage(e) => ApiError::Storage(e),
        }
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::Invalid(errors) => ApiError::unprocessable(errors),
            e @ RuleError::NotFound(_) => ApiError::NotFound(e.to_string()),
            RuleError::Storage(e) => ApiError::Storage(e),
        }
    }
}

impl From<RetryError> for ApiError {
    fn from(e: RetryError) -> Self {
        match e {
            e @ RetryError::NotDead(_) => ApiError::NotFound(e.to_string()),
            RetryError::Storage(e) => ApiError::Storage(e),
        }
    }
}

impl From<EndpointError> for ApiError {
    fn from(e: EndpointError) -> Self {
        match e {
            EndpointError::Invalid(errors) => ApiError::unprocessable(errors),
            e @ (EndpointError::NoEndpoint(_) | EndpointError::NoMessage { .. }) => {
                ApiError::NotFound(e.to_string())
            }
            e @ EndpointError::Secret(_) => ApiError::Internal(anyhow::anyhow!(e.to_string())),
            EndpointError::Storage(e) => ApiError::Storage(e),
        }
    }
}

impl From<InboundError> for ApiError {
    fn from(e: InboundError) -> Self {
        match e {
            e @ InboundError::UnknownSecret => ApiError::NotFound(e.to_string()),
            InboundError::Invalid(error) => ApiError::invalid_field(error.field, error.message),
            InboundError::Storage(e) => ApiError::Storage(e),
        }
    }
}

/// An error and its causes, "outer: inner: innermost", for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        let message = inner.to_string();
        if !text.ends_with(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = inner.source();
    }
    text
}

impl ApiError {
    /// 400 naming every invalid field.
    pub fn invalid_fields(errors: Vec<FieldError>) -> Self {
        Self::BadRequest { detail: summary(&errors), errors }
    }

    /// 422 naming every invalid value.
    pub fn unprocessable(errors: Vec<FieldError>) -> Self {
        Self::Unprocessable { detail: summary(&errors), errors }
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let error = FieldError::new(field, message);
        Self::BadRequest { detail: format!("{}: {}", error.field, error.message), errors: vec![error] }
    }

    /// A stable, machine-readable code (also the last part of the problem `type`).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidToken(e) => e.code(),
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadRequest { .. } => "invalid_request",
            ApiError::Unprocessable { .. } => "validation_failed",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Conflict(_) => "conflict",
            ApiError::EventDead(_) => "event_dead",
            ApiError::UsageLimitExceeded(_) => "usage_limit_exceeded",
            ApiError::UsageBlocked { .. } => "usage_blocked",
            ApiError::Storage(e) => match e.kind {
                FailureKind::Unavailable | FailureKind::Contention => "storage_unavailable",
                FailureKind::Data => "invalid_value",
                FailureKind::Internal => "internal_error",
            },
            ApiError::Upstream(BillaBearError::Timeout(_))
            | ApiError::LimitOutcome { source: BillaBearError::Timeout(_), .. } => "upstream_timeout",
            ApiError::Upstream(_) | ApiError::LimitOutcome { .. } => "upstream_error",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

fn reason_codes(decision: &Decision) -> Vec<&'static str> {
    decision.reasons.iter().map(|r| r.code()).collect()
}

fn over_limit(decision: &Decision) -> String {
    format!(
        "customer {} is over its usage limit with this ({}); nothing was stored",
        decision.customer_id,
        reason_codes(decision).join(", ")
    )
}

fn limit_outcome(exists: Option<bool>) -> &'static str {
    match exists {
        Some(true) => "afterwards, the limit exists in BillaBear",
        Some(false) => "afterwards, the limit does not exist in BillaBear",
        None => "whether BillaBear made the change is unknown: list the customer's usage limits to see",
    }
}

/// "field: message; field: message".
fn summary(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
}

/// The problem+json body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:usage-gate:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The same code as the end of `type`, for clients that switch on it.
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    pub errors: Vec<FieldError>,
    /// Usage-limit changes whose answer from BillaBear never came: whether the limit exists in
    /// BillaBear now (null: could not be told).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<bool>)]
    pub limit_exists: Option<Option<bool>>,
    /// `usage_limit_exceeded`: the decision the event or hold was judged by (its `cost` is
    /// what it would have added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Box<Decision>>,
    /// `usage_limit_exceeded`: the limit that refused it, when one did (a disabled customer is
    /// refused by its status, named in `decision.reasons`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<RefusedBy>,
    /// `usage_blocked` (the gate): the customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub customer_id: Option<CustomerId>,
    /// `usage_blocked`: the decision's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_status: Option<crate::policy::Status>,
    /// `usage_blocked`: the decision's reason codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<&'static str>>,
}

/// The limit that refused an enforced event or a hold, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefusedBy {
    /// A usage limit in BillaBear (the customer's lowest DISABLE limit), in minor units: what
    /// the estimate was before the write.
    Usage {
        #[schema(value_type = String, format = Uuid)]
        id: LimitId,
        amount: i64,
        estimate: i64,
    },
    /// A feature limit of the plan, counted by usage-gate in its window.
    Feature {
        code: String,
        limit: u64,
        /// Used in the window before the write (events and open holds), rounded up.
        used: u64,
        window: &'static str,
        #[schema(value_type = String, format = DateTime)]
        resets_at: Timestamp,
    },
    /// One of usage-gate's own rules: the hard rule with the least room left among those that
    /// refused (`decision.rules` lists them all).
    Rule(crate::judgement::RuleJudged),
}

impl RefusedBy {
    /// Read from the decision a write was refused with: the lowest DISABLE limit when the
    /// money (or the customer's status, or an override) refused it, else the feature limit,
    /// else the binding rule.
    fn of(decision: &Decision) -> Option<RefusedBy> {
        let money = [
            Reason::CustomerDisabled,
            Reason::DisableLimitExceeded,
            Reason::WouldExceedDisableLimit,
            Reason::OverrideBlock,
        ];
        if decision.reasons.contains(Reason::FeatureLimitReached)
            && !money.iter().any(|r| decision.reasons.contains(*r))
            && let Some(f) = decision.feature.as_deref()
            && let (Some(limit), Some(used), Some(window), Some(resets_at)) =
                (f.limit, f.used, f.window, f.resets_at)
        {
            return Some(RefusedBy::Feature { code: f.code.clone(), limit, used, window, resets_at });
        }
        if !money.iter().any(|r| decision.reasons.contains(*r))
            && let Some(binding) = decision
                .rules
                .iter()
                .filter(|r| r.refuses())
                .min_by(|a, b| a.remaining().total_cmp(&b.remaining()))
        {
            return Some(RefusedBy::Rule(binding.clone()));
        }
        let estimate = decision.estimate.as_ref()?.amount;
        let lowest =
            decision.limits.iter().filter(|l| l.action == LimitAction::Disable).min_by_key(|l| l.amount)?;
        Some(RefusedBy::Usage { id: lowest.id, amount: lowest.amount, estimate })
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

pub fn problem_response(
    status: StatusCode,
    code: &str,
    detail: String,
    errors: Vec<FieldError>,
) -> HttpResponse {
    HttpResponse::build(status).content_type(PROBLEM_JSON).json(problem(status, code, detail, errors))
}

fn problem(status: StatusCode, code: &str, detail: String, errors: Vec<FieldError>) -> Problem {
    Problem {
        kind: format!("urn:usage-gate:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        code: code.to_owned(),
        errors,
        limit_exists: None,
        decision: None,
        limit: None,
        customer_id: None,
        usage_status: None,
        reasons: None,
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::EventDead(_) => StatusCode::CONFLICT,
            ApiError::UsageLimitExceeded(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::UsageBlocked { status, .. } => *status,
            ApiError::Storage(e) => match e.kind {
                FailureKind::Unavailable | FailureKind::Contention => StatusCode::SERVICE_UNAVAILABLE,
                FailureKind::Data => StatusCode::BAD_REQUEST,
                FailureKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Upstream(BillaBearError::Timeout(_))
            | ApiError::LimitOutcome { source: BillaBearError::Timeout(_), .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ApiError::Upstream(_) | ApiError::LimitOutcome { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (detail, errors) = match self {
            ApiError::BadRequest { detail, errors } | ApiError::Unprocessable { detail, errors } => {
                (detail.clone(), errors.clone())
            }
            // The cause is logged with the request's id by `telemetry::requests`.
            ApiError::Internal(_) | ApiError::Storage(StorageError { kind: FailureKind::Internal, .. }) => {
                ("internal error; the log has the cause under this request's id".to_owned(), vec![])
            }
            // Postgres refused a value that validation let through: nothing was stored.
            ApiError::Storage(e @ StorageError { kind: FailureKind::Data, .. }) => {
                let message = format!("a value cannot be stored: {}", e.source);
                (message.clone(), vec![FieldError::new("body", message)])
            }
            ApiError::Storage(_) => ("storage is unavailable; nothing was stored, retry".to_owned(), vec![]),
            other => (other.to_string(), vec![]),
        };
        let mut response = match self {
            ApiError::LimitOutcome { exists, .. } => {
                let mut body = problem(status, self.code(), detail, errors);
                body.limit_exists = Some(*exists);
                HttpResponse::build(status).content_type(PROBLEM_JSON).json(body)
            }
            ApiError::UsageLimitExceeded(decision) => {
                let mut body = problem(status, self.code(), detail, errors);
                body.limit = RefusedBy::of(decision);
                body.decision = Some(decision.clone());
                HttpResponse::build(status).content_type(PROBLEM_JSON).json(body)
            }
            ApiError::UsageBlocked { decision, .. } => {
                let mut body = problem(status, self.code(), detail, errors);
                body.customer_id = Some(decision.customer_id);
                body.usage_status = Some(decision.status);
                body.reasons = Some(reason_codes(decision));
                HttpResponse::build(status).content_type(PROBLEM_JSON).json(body)
            }
            _ => problem_response(status, self.code(), detail, errors),
        };
        let challenge = match self {
            ApiError::Unauthorized => Some("Bearer"),
            ApiError::InvalidToken(_) => Some("Bearer error=\"invalid_token\""),
            _ => None,
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        if let ApiError::MethodNotAllowed(allow) = self
            && let Ok(allow) = HeaderValue::from_str(allow)
        {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        if self.status_code() == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// JSON bodies that fail to parse: 400 naming the field where serde can tell, 413, 415.
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::OverflowKnownLength { limit, .. } | JsonPayloadError::Overflow { limit } => {
            ApiError::PayloadTooLarge { limit: *limit }
        }
        JsonPayloadError::ContentType => {
            ApiError::UnsupportedMediaType("the body must be JSON (Content-Type: application/json)".into())
        }
        JsonPayloadError::Deserialize(e) => {
            let field = serde_field(&e.to_string()).unwrap_or_else(|| "body".into());
            ApiError::invalid_field(field, e.to_string())
        }
        other => ApiError::invalid_field("body", other.to_string()),
    };
    api.into()
}

/// Path segments that fail to parse (e.g. a customer id that is not a UUID).
pub fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::invalid_field("path", err.to_string()).into()
}

pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let message = err.to_string();
    let field = serde_field(&message).unwrap_or_else(|| "query".into());
    ApiError::invalid_field(field, message).into()
}

/// serde names the field in backticks in "missing field `amount`" and "unknown field `x`"
/// (other messages quote values, not fields).
fn serde_field(message: &str) -> Option<String> {
    if !(message.starts_with("missing field") || message.starts_with("unknown field")) {
        return None;
    }
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    let field = &message[start..start + len];
    (!field.is_empty() && field.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| field.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_errors_are_answered_with_the_status_their_callers_expect() {
        let field = FieldError::new("amount", "This value should be positive.");
        match ApiError::from(LimitError::Invalid(vec![field.clone()])) {
            ApiError::Unprocessable { errors, .. } => assert_eq!(errors, std::slice::from_ref(&field)),
            other => panic!("{other:?}"),
        }
        let timeout = BillaBearError::Timeout(std::time::Duration::from_millis(250));
        let cases = [
            (ApiError::from(LimitError::NotFound("no customer".into())), 404),
            (ApiError::from(LimitError::Upstream(timeout.clone())), 504),
            (ApiError::from(LimitError::Upstream(BillaBearError::Unavailable { status: 503 })), 502),
            (ApiError::from(LimitError::Outcome { source: timeout, exists: None }), 504),
            (ApiError::from(OverrideError::Invalid(vec![field.clone()])), 422),
            (
                ApiError::from(OverrideError::NotInForce {
                    id: uuid::Uuid::nil(),
                    customer: CustomerId::new_v4(),
                }),
                404,
            ),
            (ApiError::from(RetryError::NotDead(7)), 404),
            (ApiError::from(RuleError::Invalid(vec![field.clone()])), 422),
            (ApiError::from(RuleError::NotFound(uuid::Uuid::nil())), 404),
            (ApiError::from(AdmissionError::Unresolved(field.clone())), 422),
            // A state that cannot happen is usage-gate's fault, never the caller's conflict.
            (ApiError::from(AdmissionError::Impossible("an event handed in was not answered")), 500),
            (ApiError::from(StorageError::impossible("a writer's answer of the wrong kind")), 500),
            (ApiError::from(EndpointError::Invalid(vec![field])), 422),
            (ApiError::from(EndpointError::NoEndpoint(uuid::Uuid::nil())), 404),
            (ApiError::from(InboundError::UnknownSecret), 404),
        ];
        for (error, status) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
        }
    }

    #[test]
    fn serde_messages_yield_the_field() {
        assert_eq!(serde_field("missing field `amount` at line 1 column 2"), Some("amount".into()));
        assert_eq!(serde_field("unknown field `amonut`, expected one of"), Some("amonut".into()));
        assert_eq!(serde_field("unknown variant `warn`, expected one of"), None);
        assert_eq!(serde_field("expected value at line 1 column 1"), None);
    }

    #[test]
    fn a_refusal_names_the_money_limit_when_money_refused_and_else_the_feature_limit() {
        let mut decision = crate::check::every_shape_of_decision()
            .into_iter()
            .find(|d| {
                d.estimate.is_some()
                    && d.feature.as_ref().is_some_and(|f| f.window.is_some())
                    && d.limits.iter().any(|l| l.action == LimitAction::Disable)
            })
            .expect("a decision with a counted feature and a DISABLE limit");
        let refused = |decision: &Decision| match RefusedBy::of(decision) {
            Some(RefusedBy::Feature { .. }) => "feature",
            Some(RefusedBy::Usage { .. }) => "usage",
            Some(RefusedBy::Rule(_)) => "rule",
            None => "none",
        };
        decision.reasons = [Reason::FeatureLimitReached].into();
        assert_eq!(refused(&decision), "feature");
        for money in [Reason::DisableLimitExceeded, Reason::WouldExceedDisableLimit, Reason::CustomerDisabled]
        {
            decision.reasons = [Reason::FeatureLimitReached, money].into();
            assert_eq!(refused(&decision), "usage", "{money:?}");
        }
    }
}
