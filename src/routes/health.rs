//! `/healthz` (the process is alive) and `/readyz` (it can answer checks: see `health`).

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::health::{Health, Readiness};

// `/healthz`'s answer, named `Health` in the document as it always was.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Health)]
pub struct Alive {
    pub status: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Alive)))]
pub async fn healthz() -> web::Json<Alive> {
    web::Json(Alive { status: "ok" })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadinessQuery {
    /// `true`: require Postgres now, not only before it was first reached (503 while it is
    /// unreachable).
    #[param(value_type = Option<bool>)]
    pub strict: Option<String>,
}

impl ReadinessQuery {
    // By hand: serde's error for a bad boolean does not name the field.
    fn strict(&self) -> Result<bool, ApiError> {
        match self.strict.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(ApiError::invalid_field("strict", "must be true or false")),
        }
    }
}

#[utoipa::path(get, path = "/readyz", tag = "health", params(ReadinessQuery), responses(
    (status = 200, description = "Answering checks: `ready`, or `degraded` (Postgres, reached before, is unreachable now: checks answer from the cache, writes answer 503)", body = Readiness),
    (status = 400, description = "strict is not true or false", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 503, description = "Not ready: Postgres never reached since start-up (or unreachable, with `strict=true`), or its migrations missing; `checks` says which", body = Readiness),
))]
pub async fn readyz(
    health: web::Data<Health>,
    query: web::Query<ReadinessQuery>,
) -> Result<HttpResponse, ApiError> {
    let body = health.readiness(query.strict()?).await;
    Ok(if body.status.serving() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    })
}
