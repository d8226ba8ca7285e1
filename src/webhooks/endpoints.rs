//! usage-gate's outbound webhook endpoints and their messages, for operators: the one door to
//! `webhook_endpoints` and `webhook_messages` outside delivery. Every change is audited in the
//! transaction that makes it (`store`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::destination::Destinations;
use super::store::{self, EndpointRow, MessageRow};
pub use super::{EndpointCounts, NewEndpoint};
use super::{EventType, new_secret};
use crate::audit::Actor;
use crate::db::StorageError;
use crate::domain::FieldError;
use crate::seal::Sealer;

/// An endpoint as operators see it (never its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    /// The types sent; null: every type.
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// Until then, the secret rotated out signs too.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// Set when the receiver answered 410 Gone: nothing is queued or sent until it is enabled.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
}

crate::domain::moved_fields!(EndpointRow => Endpoint {
    id, url, event_types, description, created_at, created_by, previous_secret_until, disabled_at,
    disabled_reason
});

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Created {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `whsec_<base64>`: shown once, here. Verify each message's `webhook-signature` with it.
    pub secret: String,
}

/// A message with its attempts, as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Message {
    /// The `webhook-id` header.
    pub id: String,
    pub event_type: String,
    pub customer_id: Option<Uuid>,
    /// `pending`, `delivered` or `failed` (the schedule ran out, or the receiver answered 410).
    pub status: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<DateTime<Utc>>,
    /// The body as sent.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Oldest first.
    #[schema(value_type = Vec<MessageAttempt>)]
    pub attempts: serde_json::Value,
}

crate::domain::moved_fields!(MessageRow => Message {
    id, event_type, customer_id, status, created_at, next_attempt_at, delivered_at, payload,
    attempts
});

// The query builds the attempts as JSON; this type is their schema in the OpenAPI document.
/// One delivery attempt of a message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MessageAttempt {
    #[schema(value_type = String, format = DateTime)]
    pub attempted_at: DateTime<Utc>,
    /// The receiver's status; null when none came (refused, timed out, not allowed).
    #[schema(required = true)]
    pub status_code: Option<i16>,
    /// Why it failed; null when it did not.
    #[schema(required = true)]
    pub error: Option<String>,
    pub duration_ms: i32,
}

impl NewEndpoint {
    /// Reads `{"url", "event_types" (optional), "description" (optional)}`; every invalid field
    /// is named.
    pub fn from_json(body: &Value) -> Result<Self, Vec<FieldError>> {
        parse_endpoint(body)
    }
}

/// Why an endpoint or message was not changed or shown.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid webhook endpoint")]
    Invalid(Vec<FieldError>),
    #[error("no webhook endpoint {0}")]
    NoEndpoint(Uuid),
    #[error("no message {message} for webhook endpoint {endpoint}")]
    NoMessage { endpoint: Uuid, message: String },
    #[error("cannot draw a webhook secret: {0}")]
    Secret(getrandom::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for EndpointError {
    fn from(e: sqlx::Error) -> Self {
        EndpointError::Storage(e.into())
    }
}

/// The endpoints service. Cheap to clone.
#[derive(Clone)]
pub struct Endpoints {
    pool: PgPool,
    sealer: Arc<Sealer>,
    destinations: Destinations,
}

impl Endpoints {
    pub fn new(pool: PgPool, sealer: Arc<Sealer>, destinations: Destinations) -> Self {
        Self { pool, sealer, destinations }
    }

    /// Stores a new endpoint with a new secret, for `actor`. A URL that reaches a loopback,
    /// link-local or private address (unless `outbound_webhooks.allowed_subnets` opens it) is
    /// refused naming that rule: not a way in (each attempt is judged again).
    pub async fn create(&self, actor: &Actor, new: &NewEndpoint) -> Result<Created, EndpointError> {
        if let Some(refused) = self.destinations.refusal(&new.url).await {
            let rule = refused.rule.as_str();
            return Err(EndpointError::Invalid(vec![FieldError::new("url", format!("{rule}: {refused}"))]));
        }
        let secret = new_secret().map_err(EndpointError::Secret)?;
        let endpoint = store::create(&self.pool, &self.sealer, new, &secret, actor).await?;
        Ok(Created { endpoint: endpoint.into(), secret })
    }

    /// Every endpoint, oldest first.
    pub async fn list(&self) -> Result<Vec<Endpoint>, EndpointError> {
        Ok(store::list(&self.pool).await?.into_iter().map(Endpoint::from).collect())
    }

    pub async fn find(&self, id: Uuid) -> Result<Endpoint, EndpointError> {
        store::find(&self.pool, id).await?.map(Endpoint::from).ok_or(EndpointError::NoEndpoint(id))
    }

    pub async fn delete(&self, actor: &Actor, id: Uuid) -> Result<(), EndpointError> {
        match store::delete(&self.pool, id, actor).await? {
            true => Ok(()),
            false => Err(EndpointError::NoEndpoint(id)),
        }
    }

    /// Gives the endpoint a new secret, returned; the old one keeps signing beside it for
    /// [`store::ROTATION_OVERLAP`].
    pub async fn rotate_secret(&self, actor: &Actor, id: Uuid) -> Result<String, EndpointError> {
        let secret = new_secret().map_err(EndpointError::Secret)?;
        store::rotate(&self.pool, &self.sealer, id, &secret, actor)
            .await?
            .ok_or(EndpointError::NoEndpoint(id))?;
        Ok(secret)
    }

    /// Sends to a disabled endpoint again.
    pub async fn enable(&self, actor: &Actor, id: Uuid) -> Result<Endpoint, EndpointError> {
        store::enable(&self.pool, id, actor).await?.map(Endpoint::from).ok_or(EndpointError::NoEndpoint(id))
    }

    /// The endpoint's messages, newest first, of one status when given.
    pub async fn messages(
        &self,
        id: Uuid,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Message>, EndpointError> {
        if store::find(&self.pool, id).await?.is_none() {
            return Err(EndpointError::NoEndpoint(id));
        }
        Ok(store::messages(&self.pool, id, status, limit).await?.into_iter().map(Message::from).collect())
    }

    /// Queues a message again, due now, with a fresh schedule (same `webhook-id`).
    pub async fn resend(&self, actor: &Actor, endpoint: Uuid, message: &str) -> Result<(), EndpointError> {
        match store::resend(&self.pool, endpoint, message, actor).await? {
            true => Ok(()),
            false => Err(EndpointError::NoMessage { endpoint, message: message.to_owned() }),
        }
    }

    pub async fn counts(&self) -> Result<EndpointCounts, StorageError> {
        Ok(store::endpoint_counts(&self.pool).await?)
    }
}

const MAX_URL: usize = 2048;
const MAX_DESCRIPTION_CHARS: usize = 500;

/// Reads `{"url", "event_types"?, "description"?}`; every invalid field is named.
fn parse_endpoint(body: &Value) -> Result<NewEndpoint, Vec<FieldError>> {
    let Some(object) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let field = |name: &str| object.get(name).filter(|v| !v.is_null());
    let url = match field("url").and_then(Value::as_str) {
        Some(raw) if raw.len() <= MAX_URL => match url::Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url.to_string())
            }
            _ => {
                errors.push(FieldError::new("url", "must be an absolute http or https URL"));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("url", format!("must be at most {MAX_URL} characters")));
            None
        }
        None => {
            errors.push(FieldError::new("url", "required: where to POST the messages"));
            None
        }
    };
    let event_types = match field("event_types") {
        None => None,
        Some(Value::Array(names)) if !names.is_empty() => {
            let mut types = Vec::new();
            for (i, name) in names.iter().enumerate() {
                match name.as_str().and_then(EventType::parse) {
                    Some(t) if !types.contains(&t) => types.push(t),
                    Some(_) => {}
                    None => errors.push(FieldError::new(
                        format!("event_types[{i}]"),
                        format!("unknown; one of {}", EventType::ALL.map(EventType::as_str).join(", ")),
                    )),
                }
            }
            Some(types)
        }
        Some(_) => {
            errors.push(FieldError::new(
                "event_types",
                "must be a non-empty list of event types (or absent: all)",
            ));
            None
        }
    };
    let description = match field("description") {
        None => None,
        Some(Value::String(text))
            if text.chars().count() <= MAX_DESCRIPTION_CHARS && !text.contains('\0') =>
        {
            Some(text.clone())
        }
        Some(_) => {
            errors.push(FieldError::new(
                "description",
                "must be a string of at most 500 characters, without NUL",
            ));
            None
        }
    };
    match url {
        Some(url) if errors.is_empty() => Ok(NewEndpoint { url, event_types, description }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_endpoint_names_every_invalid_field() {
        let ok = parse_endpoint(
            &json!({"url": "https://hooks.example.com/in", "event_types": ["event.dead", "event.dead"]}),
        );
        assert_eq!(
            ok.unwrap(),
            NewEndpoint {
                url: "https://hooks.example.com/in".into(),
                event_types: Some(vec![EventType::EventDead]),
                description: None
            }
        );
        let fields = |body: Value| -> Vec<String> {
            parse_endpoint(&body).unwrap_err().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(fields(json!({})), ["url"]);
        assert_eq!(fields(json!({"url": "ftp://example.com"})), ["url"]);
        assert_eq!(fields(json!({"url": "/relative"})), ["url"]);
        assert_eq!(fields(json!({"url": format!("https://e.com/{}", "a".repeat(2048))})), ["url"]);
        assert_eq!(fields(json!({"url": "http://e.com", "event_types": []})), ["event_types"]);
        assert_eq!(
            fields(json!({"url": "http://e.com", "event_types": ["customer.usage.blocked", "nope"]})),
            ["event_types[1]"]
        );
        assert_eq!(fields(json!({"url": "http://e.com", "description": "d".repeat(501)})), ["description"]);
        assert_eq!(fields(json!("x")), ["body"]);
    }
}
