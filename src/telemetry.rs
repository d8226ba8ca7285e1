//! Logs (tracing: JSON in production, readable on a terminal), Prometheus metrics, request ids.

use std::cell::{Cell, OnceCell};
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;
use tracing::Span;
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

use crate::auth::Caller;
use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber once; later calls (tests) are no-ops. RUST_LOG wins over
/// `log.level`.
pub fn init_tracing(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let json = match *settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(JsonSpanFields)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Formats span fields as a JSON object, as `tracing_subscriber`'s `JsonFields` does, but by
/// writing them out directly: `JsonFields` builds a map and runs serde for every span, and every
/// request opens one.
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        writer.write_char('{')?;
        let mut visitor = JsonObjectVisitor { out: &mut writer, first: true };
        fields.record(&mut visitor);
        writer.write_char('}')
    }

    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &Record<'_>) -> fmt::Result {
        // Reopen the object: `{"a":1}` becomes `{"a":1,"b":2}`.
        let had_fields = current.fields.len() > 2;
        if current.fields.ends_with('}') {
            current.fields.pop();
        } else {
            current.fields.clear();
            current.fields.push('{');
        }
        let mut visitor = JsonObjectVisitor { out: &mut current.fields, first: !had_fields };
        fields.record(&mut visitor);
        current.fields.push('}');
        Ok(())
    }
}

/// Writes `"name":value` for each field, comma-separated.
struct JsonObjectVisitor<'a, W: fmt::Write> {
    out: &'a mut W,
    first: bool,
}

impl<W: fmt::Write> JsonObjectVisitor<'_, W> {
    fn key(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            let _ = self.out.write_char(',');
        }
        let _ = json_string(self.out, field.name());
        let _ = self.out.write_char(':');
    }
}

impl<W: fmt::Write> Visit for JsonObjectVisitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        let _ = json_string(self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        let _ = self.out.write_char('"');
        let _ = write!(JsonEscaped(&mut *self.out), "{value:?}");
        let _ = self.out.write_char('"');
    }
}

/// Writes `value` as a JSON string literal.
fn json_string<W: fmt::Write + ?Sized>(out: &mut W, value: &str) -> fmt::Result {
    out.write_char('"')?;
    JsonEscaped(out).write_str(value)?;
    out.write_char('"')
}

/// A `fmt::Write` that escapes what it is given for the inside of a JSON string.
struct JsonEscaped<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for JsonEscaped<'_, W> {
    fn write_str(&mut self, value: &str) -> fmt::Result {
        if !value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            return self.0.write_str(value);
        }
        for c in value.chars() {
            match c {
                '"' => self.0.write_str("\\\"")?,
                '\\' => self.0.write_str("\\\\")?,
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if (c as u32) < 0x20 => write!(self.0, "\\u{:04x}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The process-wide Prometheus recorder (metrics has one global recorder).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // From 100 µs: a warm check is answered in a fraction of a millisecond, and a p99
            // interpolated inside one 0–500 µs bucket would say nothing about it.
            let seconds = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets(&seconds)
                .expect("static buckets are valid")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            // Histograms keep raw samples until upkeep folds them in.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn metrics upkeep thread");
            handle
        })
        .clone()
}

/// A request's id: on its span (so on every log line of the request), in the `X-Request-Id`
/// answer header, and in the audit records it makes. Handlers take it as an extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(uuid::Uuid);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl actix_web::FromRequest for RequestId {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // `requests` puts it in before any handler runs; nil only for a handler mounted without it.
        std::future::ready(Ok(req
            .extensions()
            .get::<RequestContext>()
            .map_or(RequestId(uuid::Uuid::nil()), |c| c.id)))
    }
}

/// What the middlewares learn of a request, kept in one extension: each insert into actix's
/// extension map boxes its value, and three of them (id, route, caller) cost a warm check
/// ~1,100 instructions (`bench/check_instructions.py`).
pub struct RequestContext {
    id: RequestId,
    route: Cell<Option<&'static str>>,
    caller: OnceCell<Caller>,
}

impl RequestContext {
    fn new(id: RequestId) -> Self {
        Self { id, route: Cell::new(None), caller: OnceCell::new() }
    }

    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Labels the request's metrics with the pattern of the resource that serves it, so the
    /// metrics need not match the route table again.
    pub fn set_route(&self, route: &'static str) {
        self.route.set(Some(route));
    }

    /// The caller its key authenticated (the API-key middleware's, once per request).
    pub fn set_caller(&self, caller: Caller) {
        let _ = self.caller.set(caller);
    }

    pub fn caller(&self) -> Option<&Caller> {
        self.caller.get()
    }
}

/// `f` of the request's context; one with a nil id is made for a request that came without
/// [`requests`] (a handler mounted alone, in a test).
pub fn with_context<R>(req: &impl HttpMessage, f: impl FnOnce(&RequestContext) -> R) -> R {
    if let Some(context) = req.extensions().get::<RequestContext>() {
        return f(context);
    }
    let context = RequestContext::new(RequestId(uuid::Uuid::nil()));
    let answer = f(&context);
    req.extensions_mut().insert(context);
    answer
}

/// The request span, carrying the request id onto every log line of the request; with one
/// field, as JSON logs format span fields on every request. Method, path and status are on the
/// line logged for a failed request (`requests`); the other fields are recorded only then.
fn request_span(request_id: &str) -> Span {
    tracing::info_span!(
        "HTTP request",
        request_id,
        http.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        exception.message = tracing::field::Empty,
        exception.details = tracing::field::Empty,
    )
}

/// The metric handles for one (method, route, status), looked up once per worker thread.
#[derive(Clone)]
struct HttpMetrics {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

type HttpMetricsKey = (actix_web::http::Method, std::borrow::Cow<'static, str>, u16);

thread_local! {
    // Registry lookups hash every label on every call; the set of (method, route, status) a
    // service sees is small, so each worker keeps its handles.
    // foldhash, not SipHash: this is looked up on every request.
    static HTTP_METRICS: std::cell::RefCell<
        std::collections::HashMap<HttpMetricsKey, HttpMetrics, foldhash::fast::RandomState>,
    > = Default::default();
}

/// Counts a request and records its duration, under this worker's handles for its labels.
fn count_request(key: HttpMetricsKey, seconds: f64) {
    HTTP_METRICS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let metrics = cache
            .entry(key)
            .or_insert_with_key(|(method, route, status)| {
                let (method, route) = (method.as_str().to_owned(), route.to_string());
                HttpMetrics {
                    requests: metrics::counter!("http_requests_total", "method" => method.clone(),
                                                "route" => route.clone(), "status" => status.to_string()),
                    duration: metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route),
                }
            });
        metrics.requests.increment(1);
        metrics.duration.record(seconds);
    })
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Middleware around every request: its id and span (see [`RequestId`]), `X-Request-Id` on
/// its answer (so a caller can quote it and an operator can find its log lines), the log line
/// of a failure, and `http_requests_total` / `http_request_duration_seconds` by route pattern
/// and status. One middleware instead of tracing-actix-web's and a second one of ours: a warm
/// check spent ~1,000 instructions in tracing-actix-web's (its root span and id each in the
/// request's extensions, its body wrapper), `bench/check_instructions.py`.
pub async fn requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let id = RequestId(uuid::Uuid::new_v4());
    req.extensions_mut().insert(RequestContext::new(id));
    // Encoded once, for the span and the header.
    let mut buffer = uuid::Uuid::encode_buffer();
    let id_text: &str = id.0.hyphenated().encode_lower(&mut buffer);
    let span = request_span(id_text);
    let outcome = next.call(req).instrument(span.clone()).await;
    let failed = match &outcome {
        Ok(response) => response.response().error().is_some() || response.status().is_server_error(),
        Err(_) => true,
    };
    if failed {
        DefaultRootSpanBuilder::on_request_end(span, &outcome);
    }
    let mut response = outcome?;
    if let Ok(value) = HeaderValue::from_str(id_text) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let status = response.status();
    if status.is_server_error() {
        let error = response.response().error().map(|e| format!("{e:#}"));
        tracing::error!(http.method = %method, http.target = %loggable_path(response.request().path()),
                        http.status_code = status.as_u16(), error = error.as_deref().unwrap_or(""),
                        "request failed");
    } else if status.is_client_error() {
        // The caller's mistake, answered in the body: not worth an operator's attention.
        let error = response.response().error().map(|e| e.to_string());
        tracing::debug!(http.method = %method, http.target = %loggable_path(response.request().path()),
                        http.status_code = status.as_u16(), error = error.as_deref().unwrap_or(""),
                        "request refused");
    }
    // The route pattern, not the path: ids must not become label values.
    let label = response.request().extensions().get::<RequestContext>().and_then(|c| c.route.get());
    let route = match label {
        Some(route) => route.into(),
        None => response.request().match_pattern().map_or("unmatched".into(), Into::into),
    };
    count_request((method, route, status.as_u16()), started.elapsed().as_secs_f64());
    Ok(response)
}

/// The path as it may be logged: the webhook route's last segment is its secret.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    const WEBHOOKS: &str = "/v1/webhooks/billabear/";
    match path.strip_prefix(WEBHOOKS) {
        Some(_) => format!("{WEBHOOKS}{{secret}}").into(),
        None => path.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_secret_is_never_logged() {
        assert_eq!(
            loggable_path("/v1/webhooks/billabear/s3cr3t-s3cr3t-s3cr3t"),
            "/v1/webhooks/billabear/{secret}"
        );
        assert_eq!(loggable_path("/v1/customers/x/check"), "/v1/customers/x/check");
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}é").unwrap();
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn span_fields_are_a_json_object_the_json_logger_can_read() {
        use tracing_subscriber::layer::SubscriberExt;

        let (writer, lines) = CapturedLines::new();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .fmt_fields(JsonSpanFields)
                .with_writer(writer),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("HTTP request", request_id = %"r-1", n = 5_u64, later = tracing::field::Empty);
            span.record("later", "x\"y");
            span.in_scope(|| tracing::info!(customer = "c", "inside"));
        });
        let line: serde_json::Value = serde_json::from_str(lines.lock().unwrap().trim()).unwrap();
        assert_eq!(line["span"]["request_id"], "r-1");
        assert_eq!(line["span"]["n"], 5);
        assert_eq!(line["span"]["later"], "x\"y");
        assert_eq!(line["message"], "inside");
        assert!(line.get("field_error").is_none() && line["span"].get("field_error").is_none(), "{line}");
    }

    /// A `MakeWriter` that keeps what is logged.
    #[derive(Clone)]
    struct CapturedLines(std::sync::Arc<std::sync::Mutex<String>>);

    impl CapturedLines {
        fn new() -> (Self, std::sync::Arc<std::sync::Mutex<String>>) {
            let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            (Self(lines.clone()), lines)
        }
    }

    impl std::io::Write for CapturedLines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLines {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }
}
