//! BillaBear's webhooks, received (`POST /v1/webhooks/billabear/{secret}`). BillaBear signs
//! nothing, so the secret (`webhooks.secret`) is the proof. Each webhook is audited and answered
//! at once (BillaBear waits for the answer and never retries); the refetch it causes runs in the
//! background.

use std::time::Duration;

use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::audit::{Audit, Entry, Outcome};
use crate::auth::{KeyDigest, digest};
use crate::db::StorageError;
use crate::domain::{CustomerId, FieldError};
use crate::invalidation::Invalidation;
use crate::outbox::Outbox;
use crate::subscriptions::Subscriptions;

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

/// Why a webhook was not taken.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// A wrong secret, or webhooks are off: answered as an unknown route.
    #[error("no such route")]
    UnknownSecret,
    /// A known type without a usable customer id (audited as rejected).
    #[error("invalid webhook")]
    Invalid(FieldError),
    /// The audit record could not be written.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for InboundError {
    fn from(e: sqlx::Error) -> Self {
        InboundError::Storage(e.into())
    }
}

/// The webhook receiver.
pub struct Inbound {
    /// The digest of `webhooks.secret`; none: webhooks are off.
    secret: Option<KeyDigest>,
    audit: Audit,
    outbox: Outbox,
    invalidation: Invalidation,
    subscriptions: Subscriptions,
}

impl Inbound {
    pub fn new(
        secret: Option<&SecretString>,
        audit: Audit,
        outbox: Outbox,
        invalidation: Invalidation,
        subscriptions: Subscriptions,
    ) -> Self {
        let secret = secret.map(|s| digest(s.expose_secret().as_bytes()));
        Self { secret, audit, outbox, invalidation, subscriptions }
    }

    /// Takes one webhook presented with `secret`: audits it and starts the refetch it asks for.
    pub async fn receive(
        &self,
        secret: &str,
        body: &Value,
        request_id: Option<String>,
    ) -> Result<(), InboundError> {
        if !self.secret.is_some_and(|e| bool::from(e.ct_eq(&digest(secret.as_bytes())))) {
            return Err(InboundError::UnknownSecret);
        }
        let mut entry = Entry {
            actor: "billabear".into(),
            action: "webhook".into(),
            customer: None,
            target: None,
            outcome: Outcome::Success,
            upstream_status: None,
            request_id,
            details: json!({"type": body.get("type")}),
        };
        let (kind, webhook) = match parse(body) {
            Ok(parsed) => parsed,
            Err(message) => {
                entry.outcome = Outcome::Rejected;
                entry.details["error"] = json!(message);
                self.audit.record(&entry).await?;
                let (field, message) = message.split_once(": ").unwrap_or(("body", &message));
                return Err(InboundError::Invalid(FieldError::new(field, message)));
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
        let invalidation = self.invalidation.clone();
        match webhook {
            Webhook::CustomerChanged(customer) => {
                tokio::spawn(async move { invalidation.customer_changed(customer).await });
            }
            Webhook::UsageWarning => {
                let customers = self.recent_customers().await?;
                tokio::spawn(async move {
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
        self.audit.record(&entry).await?;
        Ok(())
    }

    /// Customers whose events were delivered within [`RECENT`]: those sent with `customer`, and
    /// the owners of subscriptions usage-gate has seen listed.
    async fn recent_customers(&self) -> Result<Vec<CustomerId>, StorageError> {
        let rows = self.outbox.delivered_within(RECENT, MAX_RECENT).await?;
        let mut customers: Vec<CustomerId> = rows
            .into_iter()
            .filter_map(|(customer, subscription)| {
                self.subscriptions.customer_of_event(customer, subscription)
            })
            .collect();
        customers.sort_unstable_by_key(|c| c.as_uuid());
        customers.dedup();
        Ok(customers)
    }
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
