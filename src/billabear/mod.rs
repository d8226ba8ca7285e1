//! The BillaBear client, on the server's real routes (API.md §4: not the SDKs' `uasge-limit`).
//!
//! Every call goes through [`BillaBearClient::send`], which classifies the answer into the typed
//! [`BillaBearError`] the same way for all operations and records metrics per operation.

mod answers;
mod error;
mod model;

use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

pub use answers::{Answers, fetch};
pub use error::BillaBearError;
pub use model::{
    CostEstimate, Customer, CustomerLimits, Feature, FeatureLimit, Metric, MetricCost, NewEvent,
    NewUsageLimit, Price, Subscription, UsageLimit,
};

use crate::config::BillaBearSettings;
use crate::domain::{CustomerId, LimitId};
use model::ListResponse;

/// Which call, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    ListUsageLimits,
    CreateUsageLimit,
    DeleteUsageLimit,
    GetCostEstimate,
    CreateEvent,
    GetCustomer,
    ListActiveSubscriptions,
    GetCustomerLimits,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::ListUsageLimits => "list_usage_limits",
            Operation::CreateUsageLimit => "create_usage_limit",
            Operation::DeleteUsageLimit => "delete_usage_limit",
            Operation::GetCostEstimate => "get_cost_estimate",
            Operation::CreateEvent => "create_event",
            Operation::GetCustomer => "get_customer",
            Operation::ListActiveSubscriptions => "list_active_subscriptions",
            Operation::GetCustomerLimits => "get_customer_limits",
        }
    }

    /// What a 404 means for this call.
    fn missing(self) -> &'static str {
        match self {
            Operation::DeleteUsageLimit => "customer or usage limit",
            Operation::CreateEvent => "route",
            _ => "customer",
        }
    }
}

/// A cheap-to-clone handle on a pooled HTTP client for one BillaBear instance.
#[derive(Debug, Clone)]
pub struct BillaBearClient {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
}

impl BillaBearClient {
    pub fn new(settings: &BillaBearSettings) -> Result<Self, BillaBearError> {
        let mut key = HeaderValue::from_str(settings.api_key.expose_secret()).map_err(|_| {
            BillaBearError::InvalidRequest("billabear.api_key is not a valid header value".into())
        })?;
        // Keeps the key out of reqwest's Debug output and HTTP/2 header tables.
        key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("X-API-Key", key);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("usage-gate/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| BillaBearError::InvalidRequest(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { http, base: settings.base_url.0.clone(), timeout: settings.timeout })
    }

    /// The same client (same connection pool) with another per-request timeout; the event
    /// forwarder can afford to wait longer than a check.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { timeout, ..self.clone() }
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%customer))]
    pub async fn list_usage_limits(&self, customer: CustomerId) -> Result<Vec<UsageLimit>, BillaBearError> {
        let id = customer.to_string();
        let list: ListResponse<UsageLimit> = self
            .call(Operation::ListUsageLimits, Method::GET, &["customer", &id, "usage-limits"], None::<&()>)
            .await?;
        Ok(list.data)
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%customer))]
    pub async fn create_usage_limit(
        &self,
        customer: CustomerId,
        limit: &NewUsageLimit,
    ) -> Result<UsageLimit, BillaBearError> {
        let id = customer.to_string();
        self.call(Operation::CreateUsageLimit, Method::POST, &["customer", &id, "usage-limits"], Some(limit))
            .await
    }

    /// BillaBear does not check that the limit belongs to the customer; callers that care must.
    #[tracing::instrument(level = "debug", skip(self), fields(%customer, %limit))]
    pub async fn delete_usage_limit(
        &self,
        customer: CustomerId,
        limit: LimitId,
    ) -> Result<(), BillaBearError> {
        let (id, limit) = (customer.to_string(), limit.to_string());
        self.send(
            Operation::DeleteUsageLimit,
            Method::DELETE,
            &["customer", &id, "usage-limit", &limit],
            None::<&()>,
        )
        .await
        .map(drop)
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%customer))]
    pub async fn get_cost_estimate(&self, customer: CustomerId) -> Result<CostEstimate, BillaBearError> {
        let id = customer.to_string();
        self.call(Operation::GetCostEstimate, Method::GET, &["customer", &id, "costs"], None::<&()>).await
    }

    /// BillaBear stores every event it is sent, repeated `event_id`s included: dedupe before.
    #[tracing::instrument(level = "debug", skip_all, fields(event_id = %event.event_id))]
    pub async fn create_event(&self, event: &NewEvent) -> Result<(), BillaBearError> {
        if !event.value.is_finite() {
            // serde_json would send NaN as null, which BillaBear rejects as blank.
            return Err(BillaBearError::InvalidRequest("value must be a finite number".into()));
        }
        self.send(Operation::CreateEvent, Method::POST, &["events"], Some(event)).await.map(drop)
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%customer))]
    pub async fn get_customer(&self, customer: CustomerId) -> Result<Customer, BillaBearError> {
        let id = customer.to_string();
        self.call(Operation::GetCustomer, Method::GET, &["customer", &id], None::<&()>).await
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%customer))]
    pub async fn list_active_subscriptions(
        &self,
        customer: CustomerId,
    ) -> Result<Vec<Subscription>, BillaBearError> {
        let id = customer.to_string();
        let list: ListResponse<Subscription> = self
            .call(
                Operation::ListActiveSubscriptions,
                Method::GET,
                &["customer", &id, "subscription", "active"],
                None::<&()>,
            )
            .await?;
        Ok(list.data)
    }

    /// The plan's features, feature limits and user count (not its usage limits).
    #[tracing::instrument(level = "debug", skip(self), fields(%customer))]
    pub async fn get_customer_limits(&self, customer: CustomerId) -> Result<CustomerLimits, BillaBearError> {
        let id = customer.to_string();
        self.call(Operation::GetCustomerLimits, Method::GET, &["customer", &id, "limits"], None::<&()>).await
    }

    /// Reachability and key check for `/readyz`: asks for a customer that cannot exist, so any
    /// 404 or 200 means BillaBear answered and accepted the key.
    pub async fn probe(&self) -> Result<(), BillaBearError> {
        match self.get_customer(CustomerId::from(uuid::Uuid::nil())).await {
            Ok(_) | Err(BillaBearError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `send`, then parse the successful body as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        op: Operation,
        method: Method,
        path: &[&str],
        body: Option<&impl Serialize>,
    ) -> Result<T, BillaBearError> {
        let started = Instant::now();
        let (status, bytes) = self.send_raw(op, method, path, body).await?;
        let parsed = parse_body(status, &bytes);
        record(op, started, parsed.as_ref().err());
        parsed
    }

    /// `send_raw`, recording metrics for calls whose body is not parsed.
    async fn send(
        &self,
        op: Operation,
        method: Method,
        path: &[&str],
        body: Option<&impl Serialize>,
    ) -> Result<(StatusCode, bytes::Bytes), BillaBearError> {
        let started = Instant::now();
        let result = self.send_raw(op, method, path, body).await;
        record(op, started, result.as_ref().err());
        result
    }

    /// Sends one request and sorts the answer: a 2xx comes back with its body; everything else
    /// becomes a [`BillaBearError`], whatever odd body BillaBear sent with it.
    async fn send_raw(
        &self,
        op: Operation,
        method: Method,
        path: &[&str],
        body: Option<&impl Serialize>,
    ) -> Result<(StatusCode, bytes::Bytes), BillaBearError> {
        let mut url = self.base.clone();
        // Segments are percent-encoded here; ids are already validated UUIDs besides.
        url.path_segments_mut()
            .map_err(|_| BillaBearError::InvalidRequest("billabear.base_url cannot take a path".into()))?
            .pop_if_empty()
            .extend(path);
        let mut request = self.http.request(method, url).timeout(self.timeout);
        if let Some(body) = body {
            let json = serde_json::to_vec(body).map_err(|e| BillaBearError::InvalidRequest(e.to_string()))?;
            request = request.header(header::CONTENT_TYPE, "application/json").body(json);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport_error(e))?;
        classify(op, status, bytes)
    }

    fn transport_error(&self, e: reqwest::Error) -> BillaBearError {
        if e.is_timeout() {
            return BillaBearError::Timeout(self.timeout);
        }
        // The innermost cause says what happened (refused, reset, closed early); the URL holds
        // only validated ids, never the key.
        let mut cause: &dyn std::error::Error = &e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        BillaBearError::Connect(cause.to_string())
    }
}

fn classify(
    op: Operation,
    status: StatusCode,
    bytes: bytes::Bytes,
) -> Result<(StatusCode, bytes::Bytes), BillaBearError> {
    match status.as_u16() {
        200..=299 => Ok((status, bytes)),
        401 => Err(BillaBearError::Unauthorized),
        404 => Err(BillaBearError::NotFound(op.missing())),
        400 => Err(validation_errors(&bytes)
            .map(BillaBearError::Validation)
            .unwrap_or_else(|reason| BillaBearError::InvalidBody { status: 400, reason })),
        429 | 500..=599 => Err(BillaBearError::Unavailable { status: status.as_u16() }),
        other => Err(BillaBearError::UnexpectedStatus { status: other }),
    }
}

/// BillaBear's 400 body: `{"errors":{"field":"message"}}`.
fn validation_errors(bytes: &[u8]) -> Result<std::collections::BTreeMap<String, String>, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| describe(bytes, &e))?;
    let errors = value
        .get("errors")
        .and_then(|e| e.as_object())
        .ok_or_else(|| "a 400 without an \"errors\" object".to_owned())?;
    Ok(errors
        .iter()
        .map(|(field, message)| {
            let message = message.as_str().map(str::to_owned).unwrap_or_else(|| message.to_string());
            (field.clone(), message)
        })
        .collect())
}

fn parse_body<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, BillaBearError> {
    serde_json::from_slice(bytes)
        .map_err(|e| BillaBearError::InvalidBody { status: status.as_u16(), reason: describe(bytes, &e) })
}

/// Says what was wrong with a body without echoing it (it may hold customer data).
fn describe(bytes: &[u8], e: &serde_json::Error) -> String {
    if bytes.iter().all(u8::is_ascii_whitespace) { "empty body".into() } else { e.to_string() }
}

fn record(op: Operation, started: Instant, error: Option<&BillaBearError>) {
    let outcome = error.map_or("ok", BillaBearError::outcome);
    metrics::counter!("billabear_requests_total", "operation" => op.name(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("billabear_request_duration_seconds", "operation" => op.name())
        .record(started.elapsed().as_secs_f64());
    if let Some(e) = error {
        tracing::debug!(operation = op.name(), error = %e, "BillaBear call failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        let b = |s: &str| bytes::Bytes::from(s.to_owned());
        let op = Operation::GetCostEstimate;
        assert!(classify(op, StatusCode::OK, b("{}")).is_ok());
        assert_eq!(
            classify(op, StatusCode::UNAUTHORIZED, b("[]")).unwrap_err(),
            BillaBearError::Unauthorized
        );
        assert_eq!(
            classify(op, StatusCode::NOT_FOUND, b("")).unwrap_err(),
            BillaBearError::NotFound("customer")
        );
        assert_eq!(
            classify(op, StatusCode::SERVICE_UNAVAILABLE, b("<html>")).unwrap_err(),
            BillaBearError::Unavailable { status: 503 }
        );
        assert_eq!(
            classify(op, StatusCode::TOO_MANY_REQUESTS, b("")).unwrap_err(),
            BillaBearError::Unavailable { status: 429 }
        );
        assert_eq!(
            classify(op, StatusCode::UNPROCESSABLE_ENTITY, b("")).unwrap_err(),
            BillaBearError::UnexpectedStatus { status: 422 }
        );
        match classify(
            op,
            StatusCode::BAD_REQUEST,
            b(r#"{"errors":{"amount":"This value should be positive."}}"#),
        ) {
            Err(BillaBearError::Validation(map)) => {
                assert_eq!(map["amount"], "This value should be positive.")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(op, StatusCode::BAD_REQUEST, b(r#"{"reason":"limit is below 1"}"#)),
            Err(BillaBearError::InvalidBody { status: 400, .. })
        ));
    }

    #[test]
    fn cost_estimate_accepts_total_or_cost() {
        let total: CostEstimate =
            parse_body(StatusCode::OK, br#"{"total":{"amount":250,"currency":"USD"},"costs":[]}"#).unwrap();
        let cost: CostEstimate =
            parse_body(StatusCode::OK, br#"{"cost":{"amount":250,"currency":"USD"}}"#).unwrap();
        assert_eq!(total.total.amount, 250);
        assert_eq!(cost.total, total.total);
    }

    #[test]
    fn customer_limits_read_user_count_as_the_server_writes_it_and_as_the_spec_does() {
        let server: CustomerLimits = parse_body(
            StatusCode::OK,
            br#"{"limits":[{"feature":{"code":"projects","name":"Projects","description":null},"limit":25}],
                 "features":[{"code":"sso","name":"SSO","description":"Single sign-on"}],"userCount":10}"#,
        )
        .unwrap();
        assert_eq!(server.user_count, 10);
        assert_eq!((server.limits[0].feature.code.as_str(), server.limits[0].limit), ("projects", 25));
        assert_eq!(server.features[0].code, "sso");
        let spec: CustomerLimits =
            parse_body(StatusCode::OK, br#"{"limits":[],"features":[],"user_count":3}"#).unwrap();
        assert_eq!(spec.user_count, 3);
        let disabled: CustomerLimits =
            parse_body(StatusCode::OK, br#"{"limits":[],"features":[],"userCount":0}"#).unwrap();
        assert_eq!(disabled, CustomerLimits::default());
    }

    #[test]
    fn odd_bodies_are_invalid_body_errors_that_do_not_echo_content() {
        for body in ["", "[]", r#"{"success":false}"#, "<html>secret@example.com</html>"] {
            match parse_body::<CostEstimate>(StatusCode::OK, body.as_bytes()) {
                Err(BillaBearError::InvalidBody { status: 200, reason }) => {
                    assert!(!reason.contains("secret@example.com"), "{reason}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
