//! The audit log, newest first, a page at a time (scope `admin`).

use actix_web::web;
use serde::{Deserialize, Serialize};

use super::{customer_id, next_cursor, page_cursor, page_limit, text_param};
use crate::audit::{Audit, AuditRecord, Filter};
use crate::error::ApiError;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Only this customer's records.
    #[param(value_type = Option<uuid::Uuid>)]
    pub customer: Option<String>,
    /// e.g. usage_limit.create, usage_limit.delete, decision.transition, webhook.customer_disabled.
    #[param(max_length = 255, pattern = "^[^\\u0000]*$")]
    pub action: Option<String>,
    /// The API key's name; `billabear` for webhooks, `usage-gate` for decision transitions.
    #[param(max_length = 255, pattern = "^[^\\u0000]*$")]
    pub actor: Option<String>,
    /// RFC 3339; records at or after.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// RFC 3339; records before.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// 1 to 500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Pass as `cursor` for the next page; null on the last. Records added meanwhile appear
    /// on a new first page, never in the middle: no duplicates or gaps across pages.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn list(
    audit: web::Data<Audit>,
    query: web::Query<AuditQuery>,
) -> Result<web::Json<AuditPage>, ApiError> {
    let time = |raw: &Option<String>, field: &str| {
        raw.as_deref()
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(s).map(|t| t.to_utc()).map_err(|_| {
                    ApiError::invalid_field(field, format!("must be an RFC 3339 time, got {s:?}"))
                })
            })
            .transpose()
    };
    let filter = Filter {
        customer: query.customer.as_deref().map(|c| customer_id(c, "customer")).transpose()?,
        action: text_param(query.action.as_deref(), "action")?,
        actor: text_param(query.actor.as_deref(), "actor")?,
        since: time(&query.since, "since")?,
        until: time(&query.until, "until")?,
    };
    let limit = page_limit(query.limit)?;
    let before = page_cursor(query.cursor.as_deref())?;
    let records = audit.list(&filter, before, limit).await?;
    let next_cursor = next_cursor(records.len(), limit, records.last().map(|r| r.id));
    Ok(web::Json(AuditPage { records, next_cursor }))
}
