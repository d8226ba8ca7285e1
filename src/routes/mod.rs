//! HTTP routes. Each route group declares the API-key scope it needs where it is registered.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod check;
pub mod events;
pub mod health;
pub mod meta;
pub mod openapi;
pub mod outbox;
pub mod overrides;
pub mod reservations;
pub mod rules;
mod schema;
pub mod webhook_endpoints;
pub mod webhooks;

use actix_web::dev::HttpServiceFactory;
use actix_web::http::Method;
use actix_web::{Resource, Route, web};

use crate::auth::Scope;
use crate::domain::CustomerId;
use crate::error::ApiError;
use auth::Authorize;

/// Registers every route. Health, metrics and docs are open; everything under `/v1` needs a key
/// (webhooks carry their own secret). `metrics`: whether `/metrics` is served here.
pub fn configure(cfg: &mut web::ServiceConfig, metrics: bool) {
    // Routes are tried in order, and each dynamic pattern costs a regex match: the hot ones
    // first, the docs' catch-all last.
    use Method as M;
    cfg.service(keyed(
        "/v1/customers/{customer_id}/check",
        Some(Scope::Check),
        vec![(M::GET, web::to(check::check_customer))],
    ))
    .service(gate("/v1/gate"))
    .service(keyed("/v1/check", Some(Scope::Check), vec![(M::POST, web::to(check::check_batch))]))
    .service(keyed(
        "/v1/customers/{customer_id}/refresh",
        Some(Scope::Admin),
        vec![(M::POST, web::to(check::refresh))],
    ))
    .service(keyed("/v1/events", Some(Scope::Events), vec![(M::POST, web::to(events::post_event))]))
    .service(keyed("/v1/events/batch", Some(Scope::Events), vec![(M::POST, web::to(events::post_batch))]))
    // BillaBear's own route and key header, for services on a BillaBear SDK (checks its own key).
    .service(endpoint("/api/v1/events", vec![(M::POST, web::to(events::post_billabear_event))]))
    // Creating, committing and releasing need `events`, listing `admin` (checked by each).
    .service(keyed(
        "/v1/customers/{customer_id}/reservations",
        None,
        vec![(M::POST, web::to(reservations::create)), (M::GET, web::to(reservations::list))],
    ))
    .service(keyed(
        "/v1/reservations/{reservation_id}/commit",
        Some(Scope::Events),
        vec![(M::POST, web::to(reservations::commit))],
    ))
    .service(keyed(
        "/v1/reservations/{reservation_id}",
        Some(Scope::Events),
        vec![(M::DELETE, web::to(reservations::release))],
    ))
    .service(keyed("/v1/outbox", Some(Scope::Admin), vec![(M::GET, web::to(outbox::list))]))
    .service(keyed("/v1/outbox/stats", Some(Scope::Admin), vec![(M::GET, web::to(outbox::stats))]))
    .service(keyed("/v1/outbox/retry", Some(Scope::Admin), vec![(M::POST, web::to(outbox::retry_all))]))
    .service(keyed("/v1/outbox/{id}/retry", Some(Scope::Admin), vec![(M::POST, web::to(outbox::retry_one))]))
    .service(keyed(
        "/v1/customers/{customer_id}",
        Some(Scope::Admin),
        vec![(M::GET, web::to(admin::show_customer))],
    ))
    .service(keyed(
        "/v1/customers/{customer_id}/usage-limits",
        Some(Scope::Admin),
        vec![(M::GET, web::to(admin::list_limits)), (M::POST, web::to(admin::create_limit))],
    ))
    .service(keyed(
        "/v1/customers/{customer_id}/usage-limits/{limit_id}",
        Some(Scope::Admin),
        vec![(M::DELETE, web::to(admin::delete_limit))],
    ))
    .service(keyed(
        "/v1/customers/{customer_id}/overrides",
        Some(Scope::Admin),
        vec![(M::GET, web::to(overrides::list_customer)), (M::POST, web::to(overrides::create))],
    ))
    .service(keyed(
        "/v1/customers/{customer_id}/overrides/{override_id}",
        Some(Scope::Admin),
        vec![(M::DELETE, web::to(overrides::end))],
    ))
    .service(keyed("/v1/overrides", Some(Scope::Admin), vec![(M::GET, web::to(overrides::list_all))]))
    .service(keyed(
        "/v1/rules",
        Some(Scope::Admin),
        vec![(M::GET, web::to(rules::list_rules)), (M::POST, web::to(rules::create_rule))],
    ))
    .service(keyed(
        "/v1/rules/{rule_id}",
        Some(Scope::Admin),
        vec![
            (M::GET, web::to(rules::get_rule)),
            (M::PATCH, web::to(rules::change_rule)),
            (M::DELETE, web::to(rules::delete_rule)),
        ],
    ))
    .service(keyed(
        "/v1/webhook-endpoints",
        Some(Scope::Admin),
        vec![(M::GET, web::to(webhook_endpoints::list)), (M::POST, web::to(webhook_endpoints::create))],
    ))
    .service(keyed(
        "/v1/webhook-endpoints/{endpoint_id}",
        Some(Scope::Admin),
        vec![(M::GET, web::to(webhook_endpoints::show)), (M::DELETE, web::to(webhook_endpoints::delete))],
    ))
    .service(keyed(
        "/v1/webhook-endpoints/{endpoint_id}/rotate-secret",
        Some(Scope::Admin),
        vec![(M::POST, web::to(webhook_endpoints::rotate_secret))],
    ))
    .service(keyed(
        "/v1/webhook-endpoints/{endpoint_id}/enable",
        Some(Scope::Admin),
        vec![(M::POST, web::to(webhook_endpoints::enable))],
    ))
    .service(keyed(
        "/v1/webhook-endpoints/{endpoint_id}/messages",
        Some(Scope::Admin),
        vec![(M::GET, web::to(webhook_endpoints::messages))],
    ))
    .service(keyed(
        "/v1/webhook-endpoints/{endpoint_id}/messages/{message_id}/resend",
        Some(Scope::Admin),
        vec![(M::POST, web::to(webhook_endpoints::resend))],
    ))
    .service(keyed("/v1/audit", Some(Scope::Admin), vec![(M::GET, web::to(audit::list))]))
    .service(endpoint("/v1/webhooks/billabear/{secret}", vec![(M::POST, web::to(webhooks::billabear))]))
    .service(keyed("/v1/whoami", None, vec![(M::GET, web::to(meta::whoami))]))
    // Envoy's ext_authz appends the original request path to its path prefix.
    .service(gate("/v1/gate/{original_path:.*}"))
    .service(endpoint("/healthz", vec![(M::GET, web::to(health::healthz))]))
    .service(endpoint("/readyz", vec![(M::GET, web::to(health::readyz))]));
    if metrics {
        cfg.service(endpoint("/metrics", vec![(M::GET, web::to(meta::metrics))]));
    }
    cfg.service(openapi::docs());
}

/// A path and the handler for each method it takes; any other method is a 405 naming them
/// (without this, actix would fall through to the app's 404).
fn endpoint(path: &'static str, routes: Vec<(Method, Route)>) -> Resource {
    let allow = routes.iter().map(|(method, _)| method.as_str()).collect::<Vec<_>>().join(", ");
    let resource =
        routes.into_iter().fold(web::resource(path), |r, (method, route)| r.route(route.method(method)));
    resource.default_service(web::to(move || {
        let allow = allow.clone();
        async move { Err::<actix_web::HttpResponse, _>(ApiError::MethodNotAllowed(allow)) }
    }))
}

/// An [`endpoint`] behind the API-key check; `scope` is the scope its routes need (none: any
/// key). It also labels its requests with its pattern for the metrics.
fn keyed(path: &'static str, scope: Option<Scope>, routes: Vec<(Method, Route)>) -> impl HttpServiceFactory {
    endpoint(path, routes).wrap(Authorize { route: path, scope, gate: false })
}

/// A gate route (scope `check`): its key may come in `X-Usage-Gate-Key`, for when
/// `Authorization` carries the end user's token (`[gate.jwt]`).
fn gate(path: &'static str) -> impl HttpServiceFactory {
    let rule = Authorize { route: path, scope: Some(Scope::Check), gate: true };
    endpoint(path, vec![(Method::GET, web::to(check::gate))]).wrap(rule)
}

/// Who is making a change, for the audit log.
fn actor(caller: &crate::auth::Caller, request_id: &crate::telemetry::RequestId) -> crate::audit::Actor {
    crate::audit::Actor { name: caller.name.to_string(), request_id: Some(request_id.to_string()) }
}

/// The most items one batch request (checks or events) may hold.
pub const MAX_BATCH: usize = 1000;

/// A customer id from a path, header or query parameter, or a 400 naming `field`.
pub(crate) fn customer_id(raw: &str, field: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(raw).map_err(|e| ApiError::invalid_field(field, e.to_string()))
}

/// A free-text query parameter, or a 400 naming it: Postgres cannot compare text holding NUL,
/// and nothing usage-gate stores is longer than 255 characters. Empty means no filter.
pub(crate) fn text_param(raw: Option<&str>, field: &str) -> Result<Option<String>, ApiError> {
    match raw {
        Some("") => Ok(None),
        Some(s) if s.contains('\0') => {
            Err(ApiError::invalid_field(field, "must not contain the NUL character"))
        }
        Some(s) if s.chars().count() > 255 => {
            Err(ApiError::invalid_field(field, "must be at most 255 characters"))
        }
        other => Ok(other.map(str::to_owned)),
    }
}

/// A listing's `cursor`: the `next_cursor` of the previous page, which is the id of the last
/// record it held (the audit log and the outbox page the same way).
pub(crate) fn page_cursor(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    match raw {
        None => Ok(None),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| ApiError::invalid_field("cursor", "not a cursor from this API")),
    }
}

/// The cursor of the page after one that ended with `last_id`, if the page was full.
pub(crate) fn next_cursor(len: usize, limit: i64, last_id: Option<i64>) -> Option<String> {
    (len as i64 == limit).then_some(last_id).flatten().map(|id| id.to_string())
}

/// The `limit` of a listing (1 to 500, default 100), or a 400 naming it.
fn page_limit(raw: Option<i64>) -> Result<i64, ApiError> {
    let limit = raw.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be between 1 and 500"));
    }
    Ok(limit)
}

/// The list a batch request carries in `field`: 1 to [`MAX_BATCH`] items, or a 400 naming it.
fn batch_items<'a>(
    body: &'a serde_json::Value,
    field: &str,
    shape: &str,
) -> Result<&'a [serde_json::Value], ApiError> {
    match body.get(field) {
        Some(serde_json::Value::Array(items)) if !items.is_empty() && items.len() <= MAX_BATCH => Ok(items),
        Some(serde_json::Value::Array(items)) => Err(ApiError::invalid_field(
            field,
            format!("must hold 1 to {MAX_BATCH} items, got {}", items.len()),
        )),
        _ => Err(ApiError::invalid_field(field, format!("required: a list of {shape}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_a_positive_record_id() {
        assert_eq!(page_cursor(Some("12345")).unwrap(), Some(12345));
        assert_eq!(page_cursor(None).unwrap(), None);
        for bad in ["", "abc", "-3", "0", "1e3", "99999999999999999999"] {
            assert!(page_cursor(Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(next_cursor(2, 2, Some(7)), Some("7".into()));
        assert_eq!(next_cursor(1, 2, Some(7)), None, "a short page is the last");
    }
}
