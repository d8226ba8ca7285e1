//! HTTP routes. Each route group declares the API-key scope it needs where it is registered.

pub mod check;
pub mod health;
pub mod meta;
pub mod openapi;

use actix_web::middleware::from_fn;
use actix_web::web;

use crate::auth::{Scope, authorize};

/// Registers every route. Health, metrics and docs are open; everything under `/v1` needs a key.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(meta::metrics))
        .service(openapi::docs())
        .service(keyed("/v1/whoami", None).route(web::get().to(meta::whoami)))
        .service(
            keyed("/v1/customers/{customer_id}/check", Some(Scope::Check))
                .route(web::get().to(check::check_customer)),
        )
        .service(keyed("/v1/check", Some(Scope::Check)).route(web::post().to(check::check_batch)))
        .service(keyed("/v1/gate", Some(Scope::Check)).route(web::get().to(check::gate)))
        .service(
            keyed("/v1/customers/{customer_id}/refresh", Some(Scope::Admin))
                .route(web::post().to(check::refresh)),
        );
}

/// A resource behind the API-key check; `scope` is the scope its routes need (none: any key).
fn keyed(
    path: &str,
    scope: Option<Scope>,
) -> actix_web::Resource<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::resource(path).wrap(from_fn(move |req, next| authorize(req, next, scope)))
}
