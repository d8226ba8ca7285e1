//! The operator console under `/console/` (docs/console.md): server-rendered pages
//! for the people who run limits, embedded in the binary, loading nothing from another host.
//!
//! An operator signs in with an API key that has the `admin` scope and gets a session (see
//! [`session`]). Every change is made by the same function the API uses, so it is validated and
//! audited the same way, with the key's name as the actor; every form carries the session's
//! CSRF token, and answers with a redirect (303) to a page that shows the outcome once.

pub mod plot;
pub mod session;
pub mod views;

use std::collections::HashMap;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::middleware::{DefaultHeaders, Next, from_fn};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use chrono::Utc;
use futures_util::future::LocalBoxFuture;
use maud::Markup;
use serde_json::json;

use self::session::{Flash, LOGIN_COOKIE, SESSION_COOKIE};
use self::views::Shell;
use crate::audit::{Actor, Audit, Filter, Outcome};
use crate::auth::{ApiKeys, Caller, Scope, digest};
use crate::check::Checker;
use crate::config::Settings;
use crate::domain::{CustomerId, LimitId, Subject};
use crate::entitlements::PlanAsk;
use crate::error::ApiError;
use crate::health::Health;
use crate::limits::{Limits, NewLimit};
use crate::outbox::Outbox;
use crate::overrides::{NewOverride, OverrideError, Overrides};
use crate::routes::{customer_id, next_cursor, page_cursor, text_param};
use crate::rules::{NewRule, RuleError, RuleForm, Rulebook};
use crate::sessions::Sessions;
use crate::subscriptions::Subscriptions;
use crate::telemetry::{self, RequestContext};
use crate::transitions::recorded::{CustomerFilter, Recorded};

/// Only this origin, no inline script or style, no framing: a page that echoes an operator's
/// input cannot run it.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("console.css");

/// Rows per page of a list.
const PAGE: i64 = 50;

/// Registers the console's routes under `/console`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(|| async { see_other("/console/") })).service(
        web::scope("/console")
            .wrap(
                DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CSP))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::REFERRER_POLICY, "same-origin"))
                    .add((header::CACHE_CONTROL, "no-store")),
            )
            .wrap(from_fn(label))
            .route("/", web::get().to(home))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/assets/console.css", web::get().to(css))
            .route("/customers", web::get().to(customers))
            .route("/customers/{customer_id}", web::get().to(customer))
            .route("/customers/{customer_id}/usage-limits", web::post().to(create_limit))
            .route("/customers/{customer_id}/usage-limits/{limit_id}/delete", web::post().to(delete_limit))
            .route("/customers/{customer_id}/overrides", web::post().to(create_override))
            .route("/customers/{customer_id}/overrides/{override_id}/end", web::post().to(end_override))
            .route("/rules", web::get().to(rules_page))
            .route("/rules", web::post().to(create_rule))
            .route("/rules/{rule_id}/delete", web::post().to(delete_rule))
            .route("/outbox", web::get().to(outbox_page))
            .route("/outbox/retry", web::post().to(retry_all))
            .route("/outbox/{id}/retry", web::post().to(retry_one))
            .route("/audit", web::get().to(audit_page))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ConsoleError::Api(ApiError::NotFound("no such console page".into())))
            })),
    );
}

/// Labels every console request `/console` for the metrics (one series, not one per page).
async fn label(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    telemetry::with_context(&req, |context| context.set_route("/console"));
    next.call(req).await
}

/// Why a console request was not answered with its page.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No session (or an expired one): to the sign-in form, then back to `next`.
    #[error("sign in first")]
    SignIn { next: String },
    #[error("this form has expired: reload the page and try again")]
    Csrf,
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignIn { .. } => StatusCode::SEE_OTHER,
            ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::Api(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ConsoleError::SignIn { next } => {
                let query =
                    url::form_urlencoded::Serializer::new(String::new()).append_pair("next", next).finish();
                see_other(&format!("/console/?{query}"))
            }
            other => {
                let status = other.status_code();
                let message = match other {
                    ConsoleError::Api(e) => describe(e),
                    _ => other.to_string(),
                };
                let title = status.canonical_reason().unwrap_or("Error");
                html(status, views::error(None, title, &message))
            }
        }
    }
}

/// What an operator is told of an error: each invalid field by name; for a failure of
/// usage-gate or its storage, only that it failed (the cause is in the log).
fn describe(e: &ApiError) -> String {
    match e {
        ApiError::Unprocessable { errors, .. } | ApiError::BadRequest { errors, .. }
            if !errors.is_empty() =>
        {
            errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
        }
        e if e.status_code().is_server_error()
            && !matches!(e, ApiError::Upstream(_) | ApiError::LimitOutcome { .. }) =>
        {
            format!("usage-gate could not do this ({}); the cause is in its log", e.status_code())
        }
        e => e.to_string(),
    }
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, location)).finish()
}

fn html(status: StatusCode, page: Markup) -> HttpResponse {
    HttpResponse::build(status).content_type("text/html; charset=utf-8").body(page.into_string())
}

/// Whether the browser reached the console over TLS (directly, or as a proxy's
/// `X-Forwarded-Proto`/`Forwarded` says): then cookies are `Secure`.
fn over_tls(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// Who acts, for the audit log: the key's name and this request's id, as the API's
/// `routes::actor` records them.
fn actor(req: &HttpRequest, caller: &Caller) -> Actor {
    let request_id = req.extensions().get::<RequestContext>().map(|context| context.id().to_string());
    Actor { name: caller.name.to_string(), request_id }
}

/// A signed-in operator: a live session whose key is still configured with the `admin` scope.
pub struct Operator {
    pub caller: Caller,
    pub actor: Actor,
    csrf: String,
    session: String,
    flash: Option<Flash>,
}

impl Operator {
    fn shell(&self) -> Shell<'_> {
        Shell { operator: &self.caller.name, csrf: &self.csrf, flash: self.flash.as_ref() }
    }

    /// A form's CSRF token must be this session's.
    fn check(&self, form: &Fields) -> Result<(), ConsoleError> {
        if session::csrf_matches(&self.csrf, field(form, "csrf")) { Ok(()) } else { Err(ConsoleError::Csrf) }
    }

    /// Ends a form: its outcome is shown once on `back`, where the browser is sent (303).
    async fn done(&self, sessions: &Sessions, outcome: Result<String, ApiError>, back: &str) -> HttpResponse {
        let flash = match outcome {
            Ok(text) => Flash::ok(text),
            Err(e) => {
                // The answer is a redirect, so the request's log line would not carry the cause.
                if e.status_code().is_server_error() {
                    tracing::error!(error = %e, operator = %self.caller.name, "console: an action failed");
                }
                Flash::error(describe(&e))
            }
        };
        if let Err(e) = sessions.flash(&self.session, &flash).await {
            tracing::warn!(error = %e, "console: cannot keep a form's outcome for the next page");
        }
        see_other(back)
    }
}

impl FromRequest for Operator {
    type Error = ConsoleError;
    type Future = LocalBoxFuture<'static, Result<Self, ConsoleError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            // Back to this page after signing in (a form's target is not a page: the overview).
            let next = if req.method() == actix_web::http::Method::GET {
                req.uri().path_and_query().map_or("/console/", |p| p.as_str()).to_owned()
            } else {
                "/console/".to_owned()
            };
            let sign_in = || ConsoleError::SignIn { next: next.clone() };
            let sessions = req.app_data::<web::Data<Sessions>>().expect("Sessions registered").clone();
            let settings = req.app_data::<web::Data<Settings>>().expect("Settings registered").clone();
            let keys = req.app_data::<web::Data<ApiKeys>>().expect("ApiKeys registered").clone();
            let Some(id) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
                return Err(sign_in());
            };
            let resumed = sessions
                .resume(&id, settings.console.session_idle)
                .await
                .map_err(ApiError::from)?
                .ok_or_else(sign_in)?;
            let Some(caller) = keys.by_digest(&resumed.key_digest).filter(|c| c.has(Scope::Admin)) else {
                // The key was removed from the configuration, or lost its admin scope.
                let _ = sessions.end(&id).await;
                return Err(sign_in());
            };
            let actor = actor(&req, &caller);
            Ok(Operator { caller, actor, csrf: resumed.csrf, session: id, flash: resumed.flash })
        })
    }
}

/// What the console's pages read besides the services they change through.
struct Reads {
    audit: web::Data<Audit>,
    outbox: web::Data<Outbox>,
    recorded: web::Data<Recorded>,
    subscriptions: web::Data<Subscriptions>,
}

impl FromRequest for Reads {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(Ok(Reads {
            audit: req.app_data::<web::Data<Audit>>().expect("Audit registered").clone(),
            outbox: req.app_data::<web::Data<Outbox>>().expect("Outbox registered").clone(),
            recorded: req.app_data::<web::Data<Recorded>>().expect("Recorded registered").clone(),
            subscriptions: req
                .app_data::<web::Data<Subscriptions>>()
                .expect("Subscriptions registered")
                .clone(),
        }))
    }
}

/// A submitted form's fields.
type Fields = HashMap<String, String>;

fn field<'a>(form: &'a Fields, name: &str) -> &'a str {
    form.get(name).map_or("", |v| v.trim())
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "max-age=3600"))
        .body(CSS)
}

/// The sign-in form (with a fresh token in its cookie), or the overview when signed in.
async fn home(
    req: HttpRequest,
    reads: Reads,
    health: web::Data<Health>,
    checker: web::Data<Checker>,
    operator: Option<Operator>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ConsoleError> {
    match operator {
        Some(operator) => overview(&reads, &health, &checker, &operator).await,
        None => Ok(login_form(&req, StatusCode::OK, query.get("next").map(String::as_str), None)),
    }
}

fn login_form(
    req: &HttpRequest,
    status: StatusCode,
    next: Option<&str>,
    problem: Option<&str>,
) -> HttpResponse {
    let Ok(token) = session::token() else {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            views::error(None, "Sign in", "no randomness available"),
        );
    };
    let page = views::login(&token, &session::next_page(next), problem);
    let mut response = html(status, page);
    let _ = response.add_cookie(&session::cookie(LOGIN_COOKIE, token, over_tls(req)));
    response
}

/// Signs in with an `admin` key: a session, audited as `console.login`.
async fn login(
    req: HttpRequest,
    audit: web::Data<Audit>,
    sessions: web::Data<Sessions>,
    keys: web::Data<ApiKeys>,
    form: web::Form<Fields>,
) -> HttpResponse {
    let next = session::next_page(Some(field(&form, "next")));
    let expected = req.cookie(LOGIN_COOKIE).map(|c| c.value().to_owned()).unwrap_or_default();
    if !session::csrf_matches(&expected, field(&form, "csrf")) {
        return login_form(
            &req,
            StatusCode::FORBIDDEN,
            Some(&next),
            Some("The sign-in form expired; try again."),
        );
    }
    let key = field(&form, "key");
    let outcome =
        |outcome: &'static str| metrics::counter!("usage_gate_console_logins_total", "outcome" => outcome);
    let Some(caller) = keys.authenticate(key.as_bytes()) else {
        outcome("unknown_key").increment(1);
        return login_form(&req, StatusCode::UNAUTHORIZED, Some(&next), Some("This key is not accepted."));
    };
    let actor = actor(&req, &caller);
    if !caller.has(Scope::Admin) {
        outcome("forbidden").increment(1);
        let mut entry = actor.entry(
            "console.login",
            None,
            "console".into(),
            json!({"message": "the key lacks the admin scope"}),
        );
        entry.outcome = Outcome::Rejected;
        if let Err(e) = audit.record(&entry).await {
            tracing::warn!(error = %e, "audit: cannot record a refused console sign-in");
        }
        return login_form(&req, StatusCode::FORBIDDEN, Some(&next), Some("This key lacks the admin scope."));
    }
    let started = async {
        let id = sessions.start(&digest(key.as_bytes())).await?;
        audit.record(&actor.entry("console.login", None, "console".into(), json!({}))).await?;
        anyhow::Ok(id)
    };
    match started.await {
        Ok(id) => {
            outcome("signed_in").increment(1);
            let secure = over_tls(&req);
            let mut response = see_other(&next);
            let _ = response.add_cookie(&session::cookie(SESSION_COOKIE, id, secure));
            let _ = response.add_cookie(&session::removal(LOGIN_COOKIE, secure));
            response
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "console: cannot start a session");
            login_form(
                &req,
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&next),
                Some("usage-gate cannot start a session now (its storage failed); try again."),
            )
        }
    }
}

/// Ends the session, audited as `console.logout`.
async fn logout(
    req: HttpRequest,
    audit: web::Data<Audit>,
    sessions: web::Data<Sessions>,
    operator: Operator,
    form: web::Form<Fields>,
) -> Result<HttpResponse, ConsoleError> {
    operator.check(&form)?;
    sessions.end(&operator.session).await.map_err(ApiError::from)?;
    let entry = operator.actor.entry("console.logout", None, "console".into(), json!({}));
    if let Err(e) = audit.record(&entry).await {
        tracing::warn!(error = %e, "audit: cannot record a console sign-out");
    }
    let mut response = see_other("/console/");
    let _ = response.add_cookie(&session::removal(SESSION_COOKIE, over_tls(&req)));
    Ok(response)
}

async fn overview(
    reads: &Reads,
    health: &Health,
    checker: &Checker,
    operator: &Operator,
) -> Result<HttpResponse, ConsoleError> {
    let transitions = Filter { action: Some("decision.transition".into()), ..Filter::default() };
    let (counts, outbox, lag, transitions, readiness) = tokio::join!(
        reads.recorded.status_counts(),
        reads.outbox.stats(),
        reads.outbox.delivery_lag(),
        reads.audit.list(&transitions, None, 20),
        health.readiness(false),
    );
    let page = views::Overview {
        counts: counts.map_err(ApiError::from)?,
        unknown: checker.cache.unknown_count(),
        readiness,
        outbox: outbox.map_err(ApiError::from)?,
        delivery_lag_s: lag.map_err(ApiError::from)?,
        transitions: transitions.map_err(ApiError::from)?,
    };
    Ok(html(StatusCode::OK, views::overview(&operator.shell(), &page)))
}

async fn customers(
    recorded: web::Data<Recorded>,
    operator: Operator,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ConsoleError> {
    let status = match query.get("status").map(String::as_str) {
        None | Some("") => None,
        Some(s @ ("ok" | "warning" | "blocked")) => Some(s),
        Some(_) => return Err(ApiError::invalid_field("status", "must be ok, warning or blocked").into()),
    };
    let q = query.get("q").map_or("", |q| q.trim());
    if q.len() > 36 || !q.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(ApiError::invalid_field(
            "q",
            "must be a customer id or its start (hex digits and dashes)",
        )
        .into());
    }
    let q = q.to_ascii_lowercase();
    let page = match query.get("page").map(|p| p.parse::<i64>()) {
        None => 1,
        Some(Ok(page)) if (1..=10_000).contains(&page) => page,
        Some(_) => {
            return Err(ApiError::invalid_field("page", "must be a page number from 1 to 10000").into());
        }
    };
    let filter =
        CustomerFilter { status: status.map(str::to_owned), id_prefix: (!q.is_empty()).then(|| q.clone()) };
    let mut rows = recorded.customers(&filter, (page - 1) * PAGE, PAGE + 1).await.map_err(ApiError::from)?;
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);
    let listed = views::CustomersQuery { status, q: &q, page, more };
    Ok(html(StatusCode::OK, views::customers(&operator.shell(), &listed, &rows)))
}

/// How far back the usage plot looks.
const PLOT_DAYS: i64 = 31;

async fn customer(
    reads: Reads,
    overrides: web::Data<Overrides>,
    checker: web::Data<Checker>,
    limits: web::Data<Limits>,
    operator: Operator,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ConsoleError> {
    let customer = customer_id(&path, "customer_id")?;
    // Its rules judged for a subject, when one is asked (per-subject rules need one).
    let subject = match query.get("subject").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(Subject::parse(s).map_err(|e| ApiError::invalid_field("subject", e.to_string()))?),
    };
    let ask = PlanAsk { subject: subject.clone(), ..PlanAsk::default() };
    let now = Utc::now();
    let since = now - chrono::TimeDelta::days(PLOT_DAYS);
    let subscriptions = reads.subscriptions.of_customer(customer);
    let trail = Filter { customer: Some(customer), ..Filter::default() };
    let (decision, limits, recorded, samples, overrides, events, audit) = tokio::join!(
        checker.check_plan(customer, None, &ask),
        limits.list(customer),
        reads.recorded.customer(customer),
        reads.recorded.samples(customer, since),
        overrides.list(Some(customer), false, 20),
        reads.outbox.undelivered_of(customer, &subscriptions, 100),
        reads.audit.list(&trail, None, 25),
    );
    let samples = samples.map_err(ApiError::from)?;
    let currency = decision
        .estimate
        .map(|e| e.currency.as_str().to_owned())
        .or_else(|| samples.last().map(|s| s.currency.clone()))
        .unwrap_or_default();
    let mut usage: Vec<plot::Point> = samples
        .iter()
        .map(|s| plot::Point { at_ms: s.observed_at.timestamp_millis(), value: s.estimate })
        .collect();
    let mut limit: Vec<plot::Point> = samples
        .iter()
        .filter_map(|s| {
            s.disable_limit.map(|l| plot::Point { at_ms: s.observed_at.timestamp_millis(), value: l })
        })
        .collect();
    // The plot ends with the decision now, which may be newer than the last observation.
    if let Some(estimate) = decision.estimate {
        usage.push(plot::Point { at_ms: now.timestamp_millis(), value: estimate.amount });
        if let Some(lowest) = decision.lowest_disable_limit() {
            limit.push(plot::Point { at_ms: now.timestamp_millis(), value: lowest });
        }
    }
    let plot = plot::usage(
        &usage,
        &limit,
        since.timestamp_millis(),
        now.timestamp_millis(),
        |amount| views::money(amount, &currency),
        |at| {
            chrono::DateTime::from_timestamp_millis(at)
                .map(|t| t.format("%Y-%m-%d").to_string())
                .unwrap_or_default()
        },
    );
    let plan = checker.plan(customer);
    let page = views::CustomerPage {
        decision,
        plan,
        recorded: recorded.map_err(ApiError::from)?,
        limits: limits.map_err(|e| e.to_string()),
        overrides: overrides.map_err(ApiError::from)?,
        events: events.map_err(ApiError::from)?,
        audit: audit.map_err(ApiError::from)?,
        plot,
        week_ago: (now - chrono::TimeDelta::days(7)).format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        subject: subject.map(|s| s.as_str().to_owned()),
    };
    Ok(html(StatusCode::OK, views::customer(&operator.shell(), &page)))
}

/// A form about one customer: its token checked, then `act`, whose outcome the customer's page
/// shows once.
async fn customer_form<Fut>(
    sessions: &Sessions,
    operator: &Operator,
    form: &Fields,
    customer: &str,
    act: impl FnOnce(CustomerId) -> Fut,
) -> Result<HttpResponse, ConsoleError>
where
    Fut: std::future::Future<Output = Result<String, ApiError>>,
{
    operator.check(form)?;
    let customer = customer_id(customer, "customer_id")?;
    let outcome = act(customer).await;
    Ok(operator.done(sessions, outcome, &format!("/console/customers/{customer}")).await)
}

async fn create_limit(
    sessions: web::Data<Sessions>,
    limits: web::Data<Limits>,
    operator: Operator,
    path: web::Path<String>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, ConsoleError> {
    let new = NewLimit::from_form(field(&form, "amount"), field(&form, "action"));
    let (limits, actor) = (&limits, &operator.actor);
    customer_form(&sessions, &operator, &form, &path, move |customer| async move {
        let limit = match new {
            Ok(new) => limits.create(actor, customer, new).await?,
            Err(refused) => return Err(limits.refuse(actor, customer, refused).await.into()),
        };
        Ok(format!(
            "Created a {} limit of {} (minor units), id {}.",
            limit.action.as_str(),
            limit.amount,
            limit.id
        ))
    })
    .await
}

async fn delete_limit(
    sessions: web::Data<Sessions>,
    limits: web::Data<Limits>,
    operator: Operator,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, ConsoleError> {
    let (limits, actor, (customer, target)) = (&limits, &operator.actor, path.into_inner());
    customer_form(&sessions, &operator, &form, &customer, move |customer| async move {
        let limit =
            LimitId::parse(&target).map_err(|e| ApiError::invalid_field("limit_id", e.to_string()))?;
        limits.delete(actor, customer, limit).await?;
        Ok(format!("Deleted limit {limit}."))
    })
    .await
}

async fn create_override(
    sessions: web::Data<Sessions>,
    overrides: web::Data<Overrides>,
    operator: Operator,
    path: web::Path<String>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, ConsoleError> {
    let new = NewOverride::from_form(
        field(&form, "effect"),
        field(&form, "amount"),
        field(&form, "reason"),
        field(&form, "expires_in_hours"),
        Utc::now(),
    );
    let (overrides, actor) = (&overrides, &operator.actor);
    customer_form(&sessions, &operator, &form, &path, move |customer| async move {
        let new = new.map_err(OverrideError::Invalid)?;
        let created = overrides.create(actor, customer, &new).await?;
        Ok(format!("Created an override ({}) until {}.", created.effect, views::time(created.expires_at)))
    })
    .await
}

async fn end_override(
    sessions: web::Data<Sessions>,
    overrides: web::Data<Overrides>,
    operator: Operator,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, ConsoleError> {
    let reason = Some(field(&form, "reason")).filter(|r| !r.is_empty() && !r.contains('\0'));
    let (overrides, actor, (customer, target)) = (&overrides, &operator.actor, path.into_inner());
    customer_form(&sessions, &operator, &form, &customer, move |customer| async move {
        let id = uuid::Uuid::parse_str(&target)
            .map_err(|_| ApiError::invalid_field("override_id", "must be a UUID"))?;
        overrides.end(actor, customer, id, reason).await?;
        Ok("Ended the override.".to_owned())
    })
    .await
}

async fn rules_page(rules: web::Data<Rulebook>, operator: Operator) -> Result<HttpResponse, ConsoleError> {
    let listed = rules.list(None, None, 500).await.map_err(ApiError::from)?;
    Ok(html(StatusCode::OK, views::rules(&operator.shell(), &listed)))
}

async fn create_rule(
    sessions: web::Data<Sessions>,
    rules: web::Data<Rulebook>,
    operator: Operator,
    form: web::Form<Fields>,
) -> Result<HttpResponse, ConsoleError> {
    operator.check(&form)?;
    let typed = RuleForm {
        scope: field(&form, "scope"),
        scope_id: field(&form, "scope_id"),
        measure: field(&form, "measure"),
        metric: field(&form, "metric"),
        limit: field(&form, "limit"),
        window: field(&form, "window"),
        time_zone: field(&form, "time_zone"),
        rolling_s: field(&form, "rolling_s"),
        mode: field(&form, "mode"),
        per_subject: field(&form, "per_subject") == "on",
        thresholds: field(&form, "thresholds"),
        description: field(&form, "description"),
    };
    let outcome = match NewRule::from_form(&typed) {
        Ok(new) => rules.create(&operator.actor, &new).await.map(|r| format!("Created rule {}.", r.id)),
        Err(errors) => Err(RuleError::Invalid(errors)),
    };
    Ok(operator.done(&sessions, outcome.map_err(ApiError::from), "/console/rules").await)
}

async fn delete_rule(
    sessions: web::Data<Sessions>,
    rules: web::Data<Rulebook>,
    operator: Operator,
    path: web::Path<String>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, ConsoleError> {
    operator.check(&form)?;
    let outcome = match uuid::Uuid::parse_str(&path) {
        Ok(id) => rules
            .delete(&operator.actor, id)
            .await
            .map(|()| format!("Deleted rule {id}."))
            .map_err(ApiError::from),
        Err(_) => Err(ApiError::invalid_field("rule_id", "must be a UUID")),
    };
    Ok(operator.done(&sessions, outcome, "/console/rules").await)
}

async fn outbox_page(
    outbox: web::Data<Outbox>,
    operator: Operator,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ConsoleError> {
    let status = match query.get("status").map(String::as_str) {
        None | Some("" | "dead") => "dead",
        Some("pending") => "pending",
        Some(_) => return Err(ApiError::invalid_field("status", "must be dead or pending").into()),
    };
    let after = page_cursor(query.get("cursor").map(String::as_str))?;
    let events = outbox.list(Some(status), None, after, PAGE).await.map_err(ApiError::from)?;
    let next = next_cursor(events.len(), PAGE, events.last().map(|e| e.id));
    Ok(html(StatusCode::OK, views::outbox(&operator.shell(), status, &events, next.as_deref())))
}

/// Where a retry form asked to go back to (a console page), or the dead letters.
fn back(form: &Fields) -> String {
    match field(form, "back") {
        "" => "/console/outbox?status=dead".to_owned(),
        raw => session::next_page(Some(raw)),
    }
}

async fn retry_one(
    sessions: web::Data<Sessions>,
    outbox: web::Data<Outbox>,
    operator: Operator,
    path: web::Path<String>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, ConsoleError> {
    operator.check(&form)?;
    let id: i64 =
        path.parse().map_err(|_| ApiError::invalid_field("id", "must be an outbox id (integer)"))?;
    let outcome = outbox
        .retry_dead(&operator.actor, Some(id), None)
        .await
        .map_err(ApiError::from)
        .map(|_| format!("Event {id} is queued for delivery again."));
    Ok(operator.done(&sessions, outcome, &back(&form)).await)
}

async fn retry_all(
    sessions: web::Data<Sessions>,
    outbox: web::Data<Outbox>,
    operator: Operator,
    form: web::Form<Fields>,
) -> Result<HttpResponse, ConsoleError> {
    operator.check(&form)?;
    let customer = match field(&form, "customer") {
        "" => None,
        raw => Some(customer_id(raw, "customer")?),
    };
    let outcome = outbox
        .retry_dead(&operator.actor, None, customer)
        .await
        .map_err(ApiError::from)
        .map(|n| format!("{n} dead events are queued for delivery again."));
    Ok(operator.done(&sessions, outcome, &back(&form)).await)
}

/// A `since`/`until` filter: a day (midnight UTC) or an RFC 3339 time.
fn moment(raw: &str, name: &str) -> Result<Option<chrono::DateTime<Utc>>, ApiError> {
    if raw.is_empty() {
        return Ok(None);
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| Some(t.to_utc()))
        .map_err(|_| ApiError::invalid_field(name, "must be a day (2026-11-22) or an RFC 3339 time"))
}

async fn audit_page(
    audit: web::Data<Audit>,
    operator: Operator,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ConsoleError> {
    let get = |name: &str| query.get(name).map_or("", |v| v.trim());
    let filter = Filter {
        customer: match get("customer") {
            "" => None,
            raw => Some(customer_id(raw, "customer")?),
        },
        action: text_param(Some(get("action")), "action")?,
        actor: text_param(Some(get("actor")), "actor")?,
        since: moment(get("since"), "since")?,
        until: moment(get("until"), "until")?,
    };
    let before = page_cursor(Some(get("cursor")).filter(|c| !c.is_empty()))?;
    let records = audit.list(&filter, before, PAGE).await.map_err(ApiError::from)?;
    let next = next_cursor(records.len(), PAGE, records.last().map(|r| r.id));
    let shown = views::AuditQuery {
        customer: get("customer"),
        action: get("action"),
        actor: get("actor"),
        since: get("since"),
        until: get("until"),
    };
    Ok(html(StatusCode::OK, views::audit(&operator.shell(), &shown, &records, next.as_deref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_or_a_time_filters_the_audit_log() {
        assert_eq!(moment("", "since").unwrap(), None);
        assert_eq!(moment("2026-11-22", "since").unwrap().unwrap().to_rfc3339(), "2026-11-22T00:00:00+00:00");
        assert_eq!(
            moment("2026-11-22T10:00:00+01:00", "since").unwrap().unwrap().to_rfc3339(),
            "2026-11-22T09:00:00+00:00"
        );
        assert!(moment("yesterday", "until").is_err());
    }

    #[test]
    fn operators_are_told_which_field_is_wrong_but_not_internal_causes() {
        let invalid =
            ApiError::unprocessable(vec![crate::domain::FieldError::new("amount", "must be positive")]);
        assert_eq!(describe(&invalid), "amount: must be positive");
        let internal = ApiError::Internal(anyhow::anyhow!("secret detail"));
        assert!(!describe(&internal).contains("secret"), "{}", describe(&internal));
    }
}
