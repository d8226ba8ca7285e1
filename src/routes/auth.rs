//! API keys on the wire: the middleware that admits a request by its key and scope, and the
//! extractor that hands a handler its caller. Who the keys are is `auth`'s.

use std::future::{Ready, ready};

use actix_web::body::EitherBody;
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::{FromRequest, HttpMessage, HttpRequest, http::header};
use futures_util::TryFutureExt;
use futures_util::future::{Either, MapOk};

use crate::auth::{ApiKeys, Caller, Scope};
use crate::error::ApiError;
use crate::telemetry::{self, RequestContext};

/// The token from `Authorization: Bearer <token>`.
pub fn bearer_token(headers: &header::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

/// The header that carries usage-gate's own key on the gate routes when `Authorization` carries
/// the end user's token (`[gate.jwt]`).
pub static GATE_KEY: header::HeaderName = header::HeaderName::from_static("x-usage-gate-key");

/// The request's API key: `X-Usage-Gate-Key` on a gate route that has one, else the bearer.
fn api_key(req: &ServiceRequest, gate: bool) -> Option<&[u8]> {
    // Other routes never look: the check pays for no extra header lookup.
    let gate_key = if gate { req.headers().get(&GATE_KEY) } else { None };
    match gate_key {
        Some(key) => Some(key.as_bytes()),
        None => bearer_token(req.headers()),
    }
}

/// Middleware: 401 without a known key, 403 without `scope` (none: any key will do). It also
/// labels the request with its route's pattern for the metrics. A `Transform` of its own, not
/// `from_fn`: that boxes the middleware's future and the next service's on every request
/// (~300 instructions of a warm check, `bench/check_instructions.py`).
#[derive(Clone, Copy)]
pub struct Authorize {
    pub route: &'static str,
    pub scope: Option<Scope>,
    /// A gate route: the key may come in `X-Usage-Gate-Key`.
    pub gate: bool,
}

impl<S, B> Transform<S, ServiceRequest> for Authorize
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = AuthorizeService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AuthorizeService { service, rule: *self }))
    }
}

pub struct AuthorizeService<S> {
    service: S,
    rule: Authorize,
}

type Admitted<B> = fn(ServiceResponse<B>) -> ServiceResponse<EitherBody<B>>;

impl<S, B> Service<ServiceRequest> for AuthorizeService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = Either<Ready<Result<Self::Response, actix_web::Error>>, MapOk<S::Future, Admitted<B>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        match admit(&req, self.rule) {
            Ok(()) => Either::Right(
                self.service.call(req).map_ok(ServiceResponse::map_into_left_body as Admitted<B>),
            ),
            Err(refused) => Either::Left(ready(Ok(req.error_response(refused).map_into_right_body()))),
        }
    }
}

/// Whether the request's key admits it to `rule`'s route. The route's label and an admitted
/// caller go into the request's context in one visit (each visit is a lookup in its extensions).
fn admit(req: &ServiceRequest, rule: Authorize) -> Result<(), ApiError> {
    let keys = req.app_data::<actix_web::web::Data<ApiKeys>>().expect("ApiKeys registered as app data");
    let caller = api_key(req, rule.gate).and_then(|token| keys.authenticate(token));
    let verdict = match (&caller, rule.scope) {
        (None, _) => Err(ApiError::Unauthorized),
        (Some(caller), Some(scope)) if !caller.has(scope) => Err(ApiError::Forbidden(scope)),
        (Some(_), _) => Ok(()),
    };
    telemetry::with_context(req, |context| {
        context.set_route(rule.route);
        if let (Ok(()), Some(caller)) = (&verdict, caller) {
            context.set_caller(caller);
        }
    });
    verdict
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // Absent only on a route that forgot the middleware: fail closed.
        let caller = req.extensions().get::<RequestContext>().and_then(|context| context.caller().cloned());
        ready(caller.ok_or(ApiError::Unauthorized))
    }
}
