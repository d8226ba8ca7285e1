//! BillaBear's webhooks: `POST /v1/webhooks/billabear/{secret}` (the service is `inbound`). A
//! wrong secret is a plain 404.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::inbound::Inbound;
use crate::telemetry::RequestId;

#[utoipa::path(post, path = "/v1/webhooks/billabear/{secret}", tag = "webhooks",
    params(("secret" = String, Path, description = "webhooks.secret")),
    request_body(content = Object, description = "BillaBear's webhook body"),
    responses(
        (status = 202, description = "Taken; the customers concerned are refetched"),
        (status = 400, description = "A known type without a usable customer id", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Wrong secret, or webhooks are off", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn billabear(
    inbound: web::Data<Inbound>,
    request_id: RequestId,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    inbound.receive(&path, &body, Some(request_id.to_string())).await?;
    Ok(HttpResponse::Accepted().json(json!({"status": "accepted"})))
}
