//! `/healthz` (the process is alive) and `/readyz` (it can do its job: see `health`).

use actix_web::{HttpResponse, web};
use serde::Serialize;

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

#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Postgres reachable and migrated", body = Readiness),
    (status = 503, description = "A required dependency failed; `checks` says which", body = Readiness),
))]
pub async fn readyz(health: web::Data<Health>) -> HttpResponse {
    let body = health.readiness().await;
    let ready = body.status == "ready";
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}
