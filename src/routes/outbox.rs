//! Outbox administration (scope `admin`): see pending and dead events, retry dead ones, stats.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{actor, customer_id, next_cursor, page_cursor, page_limit};
use crate::auth::Caller;
use crate::domain::CustomerId;
use crate::error::ApiError;
use crate::outbox::{Outbox, OutboxEvent, Stats};
use crate::telemetry::RequestId;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// pending, delivered or dead; all when absent.
    #[param(pattern = "^(pending|delivered|dead)$")]
    pub status: Option<String>,
    /// Only this customer's events (those sent with `customer`).
    #[param(value_type = Option<uuid::Uuid>)]
    pub customer: Option<String>,
    /// 1 to 500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxPage {
    pub events: Vec<OutboxEvent>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

fn customer(raw: Option<&str>) -> Result<Option<CustomerId>, ApiError> {
    raw.map(|c| customer_id(c, "customer")).transpose()
}

/// Outbox events in the order they were accepted, a page at a time.
#[utoipa::path(get, path = "/v1/outbox", tag = "admin", operation_id = "list_outbox", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = OutboxPage), (status = 400, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn list(outbox: web::Data<Outbox>, query: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(s @ ("pending" | "delivered" | "dead")) => Some(s),
        Some(_) => return Err(ApiError::invalid_field("status", "must be pending, delivered or dead")),
    };
    let limit = page_limit(query.limit)?;
    let after = page_cursor(query.cursor.as_deref())?;
    let events = outbox.list(status, customer(query.customer.as_deref())?, after, limit).await?;
    let next_cursor = next_cursor(events.len(), limit, events.last().map(|e| e.id));
    Ok(HttpResponse::Ok().json(OutboxPage { events, next_cursor }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Retried {
    /// How many dead events were put back in the queue.
    pub retried: u64,
}

/// Puts one dead event back in the queue.
#[utoipa::path(post, path = "/v1/outbox/{id}/retry", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "The outbox id (`id` in the list)")),
    responses((status = 200, body = Retried), (status = 404, description = "No dead event with this id", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn retry_one(
    outbox: web::Data<Outbox>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: i64 =
        path.parse().map_err(|_| ApiError::invalid_field("id", "must be an outbox id (integer)"))?;
    let retried = outbox.retry_dead(&actor(&caller, &request_id), Some(id), None).await?;
    Ok(HttpResponse::Ok().json(Retried { retried }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RetryQuery {
    /// Only this customer's dead events.
    #[param(value_type = Option<uuid::Uuid>)]
    pub customer: Option<String>,
}

/// Puts every dead event (or one customer's) back in the queue.
#[utoipa::path(post, path = "/v1/outbox/retry", tag = "admin", security(("bearer" = [])), params(RetryQuery),
    responses((status = 200, body = Retried)))]
pub async fn retry_all(
    outbox: web::Data<Outbox>,
    caller: Caller,
    request_id: RequestId,
    query: web::Query<RetryQuery>,
) -> Result<HttpResponse, ApiError> {
    let customer = query.customer.as_deref().map(|c| customer_id(c, "customer")).transpose()?;
    let retried = outbox.retry_dead(&actor(&caller, &request_id), None, customer).await?;
    Ok(HttpResponse::Ok().json(Retried { retried }))
}

/// Counts by status and the age of the oldest pending event.
#[utoipa::path(get, path = "/v1/outbox/stats", tag = "admin", security(("bearer" = [])), responses((status = 200, body = Stats)))]
pub async fn stats(outbox: web::Data<Outbox>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(outbox.stats().await?))
}
