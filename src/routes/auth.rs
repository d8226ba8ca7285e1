//! API keys on the wire: the middleware that admits a request by its key and scope, and the
//! extractor that hands a handler its caller. Who the keys are is `auth`'s.

use std::future::{Ready, ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, http::header};

use crate::auth::{ApiKeys, Caller, Scope};
use crate::error::ApiError;
use crate::telemetry::{self, RequestContext};

/// The key from `Authorization: Bearer <key>`.
fn bearer_token(req: &ServiceRequest) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

/// Middleware: 401 without a known key, 403 without `scope` (when one is required).
/// Wrap a route group with `from_fn(move |req, next| authorize(req, next, Some(Scope::Check)))`.
pub async fn authorize<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
    scope: Option<Scope>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let keys = req.app_data::<actix_web::web::Data<ApiKeys>>().expect("ApiKeys registered as app data");
    let caller = match bearer_token(&req).and_then(|token| keys.authenticate(token)) {
        Some(caller) => caller,
        None => {
            return Ok(req.error_response(ApiError::Unauthorized).map_into_right_body());
        }
    };
    if let Some(scope) = scope
        && !caller.has(scope)
    {
        return Ok(req.error_response(ApiError::Forbidden(scope)).map_into_right_body());
    }
    telemetry::with_context(&req, |context| context.set_caller(caller));
    next.call(req).await.map(ServiceResponse::map_into_left_body)
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
