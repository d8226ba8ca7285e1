//! BillaBear's webhooks: `POST /v1/webhooks/billabear/{secret}`. BillaBear signs nothing, so the
//! secret (`webhooks.secret`) is the proof; a wrong one is a plain 404. Each webhook is audited
//! and answered at once (BillaBear waits for the answer and never retries); the refetch it
//! causes runs in the background.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::audit::{self, Entry, Outcome};
use crate::auth::digest;
use crate::config::Settings;
use crate::domain::CustomerId;
use crate::error::ApiError;
use crate::invalidation::Invalidation;
use crate::subscriptions::Subscriptions;
use crate::telemetry::RequestId;

/// `usage_warning_triggered` names no customer (API.md §6.4): BillaBear checks limits for
/// customers with events in the last minute or so, so those delivered within this window are
/// the candidates.
const RECENT: Duration = Duration::from_secs(180);
/// At most this many customers are refetched for one `usage_warning_triggered`.
const MAX_RECENT: i64 = 1000;

/// What a webhook asks of usage-gate.
#[derive(Debug, PartialEq, Eq)]
pub enum Webhook {
    /// `customer_disabled`, `customer_enabled`, `customer_updated`.
    CustomerChanged(CustomerId),
    /// A limit fired for some customer with recent events.
    UsageWarning,
    /// Another type: acknowledged and logged.
    Ignored,
}

/// Reads a webhook body. `Err` names what is missing from a known type's body.
pub fn parse(body: &Value) -> Result<(String, Webhook), String> {
    let kind = body.get("type").and_then(Value::as_str).ok_or("type: required, a string")?.to_owned();
    let webhook = match kind.as_str() {
        "customer_disabled" | "customer_enabled" | "customer_updated" => {
            let id = body.pointer("/customer/id").and_then(Value::as_str).ok_or("customer.id: required")?;
            Webhook::CustomerChanged(CustomerId::parse(id).map_err(|e| format!("customer.id: {e}"))?)
        }
        "usage_warning_triggered" => Webhook::UsageWarning,
        _ => Webhook::Ignored,
    };
    Ok((kind, webhook))
}

#[utoipa::path(post, path = "/v1/webhooks/billabear/{secret}", tag = "webhooks",
    params(("secret" = String, Path, description = "webhooks.secret")),
    request_body(content = Object, description = "BillaBear's webhook body"),
    responses(
        (status = 202, description = "Taken; the customers concerned are refetched"),
        (status = 400, description = "A known type without a usable customer id", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Wrong secret, or webhooks are off", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn billabear(
    settings: web::Data<Settings>,
    pool: web::Data<PgPool>,
    invalidation: web::Data<Invalidation>,
    subscriptions: web::Data<Subscriptions>,
    request_id: RequestId,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let expected = settings.webhooks.secret.as_ref().map(|s| digest(s.expose_secret().as_bytes()));
    if !expected.is_some_and(|e| bool::from(e.ct_eq(&digest(path.as_bytes())))) {
        return Err(ApiError::NotFound("no such route".into()));
    }
    let mut entry = Entry {
        actor: "billabear".into(),
        action: "webhook".into(),
        customer: None,
        target: None,
        outcome: Outcome::Success,
        upstream_status: None,
        request_id: Some(request_id.to_string()),
        details: json!({"type": body.get("type")}),
    };
    let (kind, webhook) = match parse(&body) {
        Ok(parsed) => parsed,
        Err(message) => {
            entry.outcome = Outcome::Rejected;
            entry.details["error"] = json!(message);
            audit::record(&pool, &entry).await?;
            let (field, message) = message.split_once(": ").unwrap_or(("body", &message));
            return Err(ApiError::invalid_field(field, message));
        }
    };
    entry.action = format!("webhook.{kind}");
    match &webhook {
        Webhook::CustomerChanged(customer) => entry.customer = Some(*customer),
        Webhook::Ignored => {
            tracing::info!(webhook = %kind, "BillaBear webhook of a type usage-gate does not act on");
            entry.details["ignored"] = json!(true);
        }
        Webhook::UsageWarning => {}
    }
    // Acted on first: BillaBear never resends a webhook, so a refetch is not held back by the
    // audit log. Postgres failing here is still a 503 (the record is missing).
    let invalidation = invalidation.into_inner();
    match webhook {
        Webhook::CustomerChanged(customer) => {
            actix_web::rt::spawn(async move { invalidation.customer_changed(customer).await });
        }
        Webhook::UsageWarning => {
            let customers = recent_customers(&pool, &subscriptions).await?;
            actix_web::rt::spawn(async move {
                futures_util::stream::iter(customers)
                    .for_each_concurrent(16, |customer| {
                        let invalidation = invalidation.clone();
                        async move { invalidation.customer_changed(customer).await }
                    })
                    .await;
            });
        }
        Webhook::Ignored => {}
    }
    audit::record(&pool, &entry).await?;
    Ok(HttpResponse::Accepted().json(json!({"status": "accepted"})))
}

/// Customers whose events were delivered within [`RECENT`]: those sent with `customer`, and the
/// owners of subscriptions usage-gate has seen listed.
async fn recent_customers(pool: &PgPool, subscriptions: &Subscriptions) -> Result<Vec<CustomerId>, ApiError> {
    let rows: Vec<(Option<uuid::Uuid>, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT DISTINCT customer_id, subscription_id FROM outbox
         WHERE status = 'delivered' AND delivered_at > now() - make_interval(secs => $1)
         LIMIT $2",
    )
    .bind(RECENT.as_secs_f64())
    .bind(MAX_RECENT)
    .fetch_all(pool)
    .await?;
    let mut customers: Vec<CustomerId> = rows
        .into_iter()
        .filter_map(|(customer, subscription)| subscriptions.customer_of_event(customer, subscription))
        .collect();
    customers.sort_unstable_by_key(|c| c.as_uuid());
    customers.dedup();
    Ok(customers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACME: &str = "c1111111-1111-4111-8111-111111111111";

    #[test]
    fn webhooks_are_read_by_type() {
        let customer = CustomerId::parse(ACME).unwrap();
        for kind in ["customer_disabled", "customer_enabled", "customer_updated"] {
            let body = json!({"type": kind, "customer": {"id": ACME, "email": "a@b.c", "is_disabled": true}});
            assert_eq!(parse(&body), Ok((kind.to_owned(), Webhook::CustomerChanged(customer))));
        }
        assert_eq!(
            parse(&json!({"type": "usage_warning_triggered"})),
            Ok(("usage_warning_triggered".into(), Webhook::UsageWarning))
        );
        assert_eq!(
            parse(&json!({"type": "invoice_paid", "x": 1})),
            Ok(("invoice_paid".into(), Webhook::Ignored))
        );
        assert!(parse(&json!({"customer": {"id": ACME}})).unwrap_err().starts_with("type:"));
        assert!(parse(&json!({"type": "customer_disabled"})).unwrap_err().starts_with("customer.id:"));
        assert!(
            parse(&json!({"type": "customer_enabled", "customer": {"id": "nope"}}))
                .unwrap_err()
                .starts_with("customer.id:")
        );
    }
}
