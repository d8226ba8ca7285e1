//! HTTP routes. Each route group declares the API-key scope it needs where it is registered.

pub mod admin;
pub mod audit;
pub mod check;
pub mod events;
pub mod health;
pub mod meta;
pub mod openapi;
pub mod outbox;
pub mod webhooks;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{Resource, web};

use crate::auth::{Scope, authorize};
use crate::domain::CustomerId;
use crate::error::ApiError;
use crate::telemetry::RouteLabel;

/// Registers every route. Health, metrics and docs are open; everything under `/v1` needs a key
/// (webhooks carry their own secret). `metrics`: whether `/metrics` is served here.
pub fn configure(cfg: &mut web::ServiceConfig, metrics: bool) {
    // Routes are tried in order, and each dynamic pattern costs a regex match: the hot ones
    // first, the docs' catch-all last.
    cfg.service(
        keyed("/v1/customers/{customer_id}/check", Some(Scope::Check))
            .route(web::get().to(check::check_customer))
            .default_service(not_allowed("GET")),
    )
    .service(
        keyed("/v1/gate", Some(Scope::Check))
            .route(web::get().to(check::gate))
            .default_service(not_allowed("GET")),
    )
    .service(
        keyed("/v1/check", Some(Scope::Check))
            .route(web::post().to(check::check_batch))
            .default_service(not_allowed("POST")),
    )
    .service(
        keyed("/v1/customers/{customer_id}/refresh", Some(Scope::Admin))
            .route(web::post().to(check::refresh))
            .default_service(not_allowed("POST")),
    )
    .service(
        keyed("/v1/events", Some(Scope::Events))
            .route(web::post().to(events::post_event))
            .default_service(not_allowed("POST")),
    )
    .service(
        keyed("/v1/events/batch", Some(Scope::Events))
            .route(web::post().to(events::post_batch))
            .default_service(not_allowed("POST")),
    )
    // BillaBear's own route and key header, for services on a BillaBear SDK (checks its own key).
    .service(
        web::resource("/api/v1/events")
            .route(web::post().to(events::post_billabear_event))
            .default_service(not_allowed("POST")),
    )
    .service(
        keyed("/v1/outbox", Some(Scope::Admin))
            .route(web::get().to(outbox::list))
            .default_service(not_allowed("GET")),
    )
    .service(
        keyed("/v1/outbox/stats", Some(Scope::Admin))
            .route(web::get().to(outbox::stats))
            .default_service(not_allowed("GET")),
    )
    .service(
        keyed("/v1/outbox/retry", Some(Scope::Admin))
            .route(web::post().to(outbox::retry_all))
            .default_service(not_allowed("POST")),
    )
    .service(
        keyed("/v1/outbox/{id}/retry", Some(Scope::Admin))
            .route(web::post().to(outbox::retry_one))
            .default_service(not_allowed("POST")),
    )
    .service(
        keyed("/v1/customers/{customer_id}", Some(Scope::Admin))
            .route(web::get().to(admin::show_customer))
            .default_service(not_allowed("GET")),
    )
    .service(
        keyed("/v1/customers/{customer_id}/usage-limits", Some(Scope::Admin))
            .route(web::get().to(admin::list_limits))
            .route(web::post().to(admin::create_limit))
            .default_service(not_allowed("GET, POST")),
    )
    .service(
        keyed("/v1/customers/{customer_id}/usage-limits/{limit_id}", Some(Scope::Admin))
            .route(web::delete().to(admin::delete_limit))
            .default_service(not_allowed("DELETE")),
    )
    .service(
        keyed("/v1/audit", Some(Scope::Admin))
            .route(web::get().to(audit::list))
            .default_service(not_allowed("GET")),
    )
    .service(
        web::resource("/v1/webhooks/billabear/{secret}")
            .route(web::post().to(webhooks::billabear))
            .default_service(not_allowed("POST")),
    )
    .service(keyed("/v1/whoami", None).route(web::get().to(meta::whoami)).default_service(not_allowed("GET")))
    // Envoy's ext_authz appends the original request path to its path prefix.
    .service(
        keyed("/v1/gate/{original_path:.*}", Some(Scope::Check))
            .route(web::get().to(check::gate))
            .default_service(not_allowed("GET")),
    )
    .service(
        web::resource("/healthz").route(web::get().to(health::healthz)).default_service(not_allowed("GET")),
    )
    .service(
        web::resource("/readyz").route(web::get().to(health::readyz)).default_service(not_allowed("GET")),
    );
    if metrics {
        cfg.service(
            web::resource("/metrics").route(web::get().to(meta::metrics)).default_service(not_allowed("GET")),
        );
    }
    cfg.service(openapi::docs());
}

/// A known path asked with a method it does not take: 405 naming the ones it does.
fn not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move { Err::<actix_web::HttpResponse, _>(ApiError::MethodNotAllowed(allow)) })
}

/// A resource behind the API-key check; `scope` is the scope its routes need (none: any key).
/// It also labels its requests with its pattern for the metrics.
fn keyed(
    path: &'static str,
    scope: Option<Scope>,
) -> Resource<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::resource(path).wrap(from_fn(move |req: ServiceRequest, next| {
        req.extensions_mut().insert(RouteLabel(path));
        authorize(req, next, scope)
    }))
}

/// The most items one batch request (checks or events) may hold.
pub const MAX_BATCH: usize = 1000;

/// A customer id from a path, header or query parameter, or a 400 naming `field`.
fn customer_id(raw: &str, field: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(raw).map_err(|e| ApiError::invalid_field(field, e.to_string()))
}

/// A free-text query parameter, or a 400 naming it: Postgres cannot compare text holding NUL,
/// and nothing usage-gate stores is longer than 255 characters. Empty means no filter.
fn text_param(raw: Option<&str>, field: &str) -> Result<Option<String>, ApiError> {
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
fn page_cursor(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
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
fn next_cursor(len: usize, limit: i64, last_id: Option<i64>) -> Option<String> {
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
