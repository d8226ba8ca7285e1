//! Usage limits, managed in BillaBear for operators (the API and the console alike). Every
//! change is audited before BillaBear is asked and given its outcome after; an answer that never
//! came is settled by looking at BillaBear afterwards. Then the customer is refetched here and
//! dropped by the other replicas.

use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::{Actor, Audit, Entry, Outcome};
use crate::billabear::{BillaBearClient, BillaBearError, NewUsageLimit, UsageLimit};
use crate::db::StorageError;
use crate::domain::{CustomerId, FieldError, LimitAction, LimitId};
use crate::invalidation::Invalidation;

/// A usage limit as usage-gate's API and console show it. BillaBear's wire type stays
/// BillaBear's: a field it adds does not become ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub id: LimitId,
    /// Minor units of the customer's estimate currency.
    pub amount: i64,
    pub action: LimitAction,
}

impl From<UsageLimit> for Limit {
    fn from(UsageLimit { id, amount, action }: UsageLimit) -> Self {
        Self { id, amount, action }
    }
}

/// A usage limit to create, parsed from the API's body or the console's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewLimit {
    pub amount: i64,
    pub action: LimitAction,
}

/// A new limit that was refused before BillaBear was asked: what was given (for the audit log)
/// and every invalid field.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub given: Value,
    pub errors: Vec<FieldError>,
}

impl NewLimit {
    /// A `POST .../usage-limits` body: every invalid field is named.
    pub fn from_json(body: &Value) -> Result<Self, Refused> {
        let (amount, action) = (body.get("amount"), body.get("action"));
        parse_new_limit(amount, action)
            .map_err(|errors| Refused { given: json!({"amount": amount, "action": action}), errors })
    }

    /// The console's form, as typed: an amount that is not a whole number is named as typed.
    pub fn from_form(amount: &str, action: &str) -> Result<Self, Refused> {
        let (amount, action) = (crate::domain::form_number(amount), json!(action));
        parse_new_limit(Some(&amount), Some(&action))
            .map_err(|errors| Refused { given: json!({"amount": amount, "action": action}), errors })
    }
}

/// Why a usage-limit change was not made (or not known to be made).
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The request named invalid values; BillaBear was not asked, or refused them (its field
    /// messages).
    #[error("invalid usage limit")]
    Invalid(Vec<FieldError>),
    /// No such customer in BillaBear, or the limit is not the customer's.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Upstream(BillaBearError),
    /// BillaBear's answer never came; `exists` is what listing the customer's limits afterwards
    /// found (None: that failed too, so nobody can tell yet).
    #[error("{source}")]
    Outcome { source: BillaBearError, exists: Option<bool> },
    /// The audit record could not be written first: nothing was done.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for LimitError {
    fn from(e: sqlx::Error) -> Self {
        LimitError::Storage(e.into())
    }
}

/// The usage-limit service: BillaBear with the operators' timeout, the audit log, and telling
/// the replicas.
pub struct Limits {
    audit: Audit,
    /// With `billabear.admin_timeout`.
    billabear: BillaBearClient,
    invalidation: Invalidation,
}

impl Limits {
    pub fn new(audit: Audit, billabear: BillaBearClient, invalidation: Invalidation) -> Self {
        Self { audit, billabear, invalidation }
    }

    /// The customer's limits as BillaBear has them now.
    pub async fn list(&self, customer: CustomerId) -> Result<Vec<Limit>, LimitError> {
        let limits = self.billabear.list_usage_limits(customer).await.map_err(|e| upstream(e, customer))?;
        Ok(limits.into_iter().map(Limit::from).collect())
    }

    /// Audits a new limit refused before BillaBear was asked, and returns the refusal. Nothing
    /// was changed, so if Postgres fails the refusal is still the answer.
    pub async fn refuse(&self, actor: &Actor, customer: CustomerId, refused: Refused) -> LimitError {
        let Refused { mut given, errors } = refused;
        given["errors"] = json!(errors);
        let entry = entry(actor, "usage_limit.create", customer, None, Outcome::Rejected, given);
        if let Err(e) = self.audit.record(&entry).await {
            tracing::error!(action = %entry.action, error = %e, "audit: cannot record a rejected request");
        }
        LimitError::Invalid(errors)
    }

    /// Creates a usage limit in BillaBear for `actor`: audited before BillaBear is asked and
    /// given its outcome after; the customer is then refetched.
    pub async fn create(
        &self,
        actor: &Actor,
        customer: CustomerId,
        new: NewLimit,
    ) -> Result<Limit, LimitError> {
        let limit = NewUsageLimit { amount: new.amount, action: new.action };
        let details = json!({"amount": limit.amount, "action": limit.action.as_str()});
        let entry = entry(actor, "usage_limit.create", customer, None, Outcome::Pending, details);
        // Recorded before BillaBear is asked: without Postgres, nothing is done (503).
        let record = self.audit.record(&entry).await?;
        // What exists already, so that if BillaBear's answer never comes the new limit can be told
        // from an identical older one (if this fails, any identical limit counts as the new one).
        let before = self.billabear.list_usage_limits(customer).await.ok();
        let created = match self.billabear.create_usage_limit(customer, &limit).await {
            Ok(created) => {
                self.conclude(record, Outcome::Success, Some(201), Some(&created.id.to_string()), json!({}))
                    .await;
                created
            }
            Err(e) if e.outcome_unknown() => {
                let found = self.look_for_created(customer, &limit, before.as_deref()).await;
                let exists = found.as_ref().map(Option::is_some).map_err(Clone::clone);
                let target = found.as_ref().ok().and_then(Option::as_ref).map(|l| l.id.to_string());
                self.settle(record, e.clone(), exists, true, target.as_deref()).await?;
                // Settled as made only when found.
                found.ok().flatten().ok_or(LimitError::Outcome { source: e, exists: None })?
            }
            Err(e) => return Err(self.failed(record, e, customer).await),
        };
        self.invalidation.customer_changed(customer).await;
        Ok(created.into())
    }

    /// Deletes one of the customer's usage limits in BillaBear for `actor`, audited as
    /// [`Limits::create`] is.
    pub async fn delete(
        &self,
        actor: &Actor,
        customer: CustomerId,
        limit: LimitId,
    ) -> Result<(), LimitError> {
        let target = Some(limit.to_string());
        let entry = entry(actor, "usage_limit.delete", customer, target, Outcome::Pending, json!({}));
        let record = self.audit.record(&entry).await?;
        // BillaBear deletes any limit by id, whoever's it is: check that it is this customer's.
        let limits = match self.billabear.list_usage_limits(customer).await {
            Ok(limits) => limits,
            Err(e) => return Err(self.failed(record, e, customer).await),
        };
        let Some(found) = limits.iter().find(|l| l.id == limit) else {
            let message = format!("customer {customer} has no usage limit {limit}");
            self.conclude(record, Outcome::Rejected, None, None, json!({"message": message})).await;
            return Err(LimitError::NotFound(message));
        };
        let details = json!({"amount": found.amount, "action": found.action.as_str()});
        match self.billabear.delete_usage_limit(customer, limit).await {
            Ok(()) => self.conclude(record, Outcome::Success, Some(200), None, details).await,
            Err(e) if e.outcome_unknown() => {
                let exists = self
                    .billabear
                    .list_usage_limits(customer)
                    .await
                    .map(|now| now.iter().any(|l| l.id == limit));
                self.settle(record, e, exists, false, None).await?;
            }
            Err(e) => return Err(self.failed(record, e, customer).await),
        }
        self.invalidation.customer_changed(customer).await;
        Ok(())
    }

    /// After a create whose answer never came: the limit that is now there and was not before.
    async fn look_for_created(
        &self,
        customer: CustomerId,
        limit: &NewUsageLimit,
        before: Option<&[UsageLimit]>,
    ) -> Result<Option<UsageLimit>, BillaBearError> {
        let now = self.billabear.list_usage_limits(customer).await?;
        let existed = |id: LimitId| before.is_some_and(|before| before.iter().any(|l| l.id == id));
        Ok(now.into_iter().find(|l| l.amount == limit.amount && l.action == limit.action && !existed(l.id)))
    }

    /// Settles a change whose answer never came, from what BillaBear shows now: `exists` is whether
    /// the limit is there (`Err`: looking failed too, and the record stays `unknown`), `wanted`
    /// whether the change meant it to be (a create) or not (a delete). The record becomes
    /// `success` or `failed`; `Ok(())` when the change was made, otherwise the answer to give,
    /// which tells whether the limit exists.
    async fn settle(
        &self,
        record: i64,
        error: BillaBearError,
        exists: Result<bool, BillaBearError>,
        wanted: bool,
        target: Option<&str>,
    ) -> Result<(), LimitError> {
        let message = error.to_string();
        let (outcome, details) = match &exists {
            Ok(exists) if *exists == wanted => (
                Outcome::Success,
                json!({"message": message, "verified": "made: seen in BillaBear afterwards"}),
            ),
            Ok(_) => (
                Outcome::Failed,
                json!({"message": message, "verified": "not made: not seen in BillaBear afterwards"}),
            ),
            Err(e) => (Outcome::Unknown, json!({"message": message, "verify_error": e.to_string()})),
        };
        self.conclude(record, outcome, None, target, details).await;
        match exists {
            Ok(exists) if exists == wanted => Ok(()),
            Ok(exists) => Err(LimitError::Outcome { source: error, exists: Some(exists) }),
            Err(_) => Err(LimitError::Outcome { source: error, exists: None }),
        }
    }

    /// Concludes the audit record for a BillaBear error and returns the answer for it.
    async fn failed(&self, record: i64, e: BillaBearError, customer: CustomerId) -> LimitError {
        let outcome = match e {
            BillaBearError::NotFound(_) | BillaBearError::Validation(_) => Outcome::Rejected,
            _ => Outcome::Failed,
        };
        let details = json!({"message": e.to_string()});
        self.conclude(record, outcome, e.upstream_status(), None, details).await;
        upstream(e, customer)
    }

    /// Gives a pending record its outcome. If Postgres fails now, the record stays `pending` (it
    /// never claims an outcome that did not happen) and the answer still tells the caller the
    /// truth.
    async fn conclude(
        &self,
        record: i64,
        outcome: Outcome,
        upstream_status: Option<u16>,
        target: Option<&str>,
        details: Value,
    ) {
        if let Err(e) = self.audit.conclude(record, outcome, upstream_status, target, details).await {
            tracing::error!(record, outcome = outcome.as_str(), error = %e, "audit: cannot record an outcome; the record stays pending");
        }
    }
}

/// The audit record of `actor`'s change to a customer's limits.
fn entry(
    actor: &Actor,
    action: &str,
    customer: CustomerId,
    target: Option<String>,
    outcome: Outcome,
    details: Value,
) -> Entry {
    Entry {
        actor: actor.name.clone(),
        action: action.into(),
        customer: Some(customer),
        target,
        outcome,
        upstream_status: None,
        request_id: actor.request_id.clone(),
        details,
    }
}

/// BillaBear's refusal or failure as a limit change answers it.
fn upstream(e: BillaBearError, customer: CustomerId) -> LimitError {
    match e {
        BillaBearError::NotFound(_) => LimitError::NotFound(format!("BillaBear has no customer {customer}")),
        BillaBearError::Validation(fields) => LimitError::Invalid(
            fields.into_iter().map(|(field, message)| FieldError::new(field, message)).collect(),
        ),
        other => LimitError::Upstream(other),
    }
}

/// A new limit's `amount` and `action` as given: every invalid field is named.
fn parse_new_limit(amount: Option<&Value>, action: Option<&Value>) -> Result<NewLimit, Vec<FieldError>> {
    let mut errors = vec![];
    let amount = match amount {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("amount", "required: a positive integer, minor units"));
            None
        }
        Some(value) => match crate::domain::whole_number(value).filter(|a| *a > 0) {
            Some(amount) => Some(amount),
            None => {
                errors.push(FieldError::new(
                    "amount",
                    format!("must be a positive integer (minor units), got {value}"),
                ));
                None
            }
        },
    };
    let action = match action {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("action", "required: WARNING or DISABLE"));
            None
        }
        Some(value) => match value.as_str().and_then(|s| LimitAction::parse(&s.to_ascii_uppercase()).ok()) {
            Some(action) => Some(action),
            None => {
                errors.push(FieldError::new("action", format!("must be WARNING or DISABLE, got {value}")));
                None
            }
        },
    };
    match (amount, action) {
        (Some(amount), Some(action)) if errors.is_empty() => Ok(NewLimit { amount, action }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billabear_refusals_are_answered_with_its_field_messages() {
        let customer = CustomerId::parse("11111111-1111-4111-8111-111111111111").unwrap();
        let fields = [("amount".to_owned(), "This value should be positive.".to_owned())].into();
        match upstream(BillaBearError::Validation(fields), customer) {
            LimitError::Invalid(errors) => {
                assert_eq!(errors, [FieldError::new("amount", "This value should be positive.")])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(upstream(BillaBearError::NotFound("customer"), customer), LimitError::NotFound(_)));
        let timeout = BillaBearError::Timeout(std::time::Duration::from_millis(250));
        assert!(matches!(upstream(timeout, customer), LimitError::Upstream(BillaBearError::Timeout(_))));
    }

    #[test]
    fn a_new_limit_needs_a_positive_integer_amount_and_a_known_action_in_any_case() {
        assert_eq!(
            NewLimit::from_json(&json!({"amount": 5000, "action": "disable"})),
            Ok(NewLimit { amount: 5000, action: LimitAction::Disable })
        );
        assert_eq!(
            NewLimit::from_json(&json!({"amount": 1, "action": "WARNING", "extra": true})),
            Ok(NewLimit { amount: 1, action: LimitAction::Warning })
        );
        assert_eq!(
            NewLimit::from_json(&json!({"amount": 3957299944604836.0, "action": "diSablE"})),
            Ok(NewLimit { amount: 3957299944604836, action: LimitAction::Disable })
        );
        let fields = |body: Value| -> Vec<String> {
            NewLimit::from_json(&body).unwrap_err().errors.into_iter().map(|e| e.field).collect()
        };
        assert_eq!(fields(json!({})), ["amount", "action"]);
        for amount in [json!(0), json!(-5), json!(20.5), json!("2000"), json!(1e30)] {
            assert_eq!(fields(json!({"amount": amount, "action": "WARNING"})), ["amount"], "{amount}");
        }
        for action in [json!("WARN"), json!(1), json!("")] {
            assert_eq!(fields(json!({"amount": 5, "action": action})), ["action"], "{action}");
        }
        assert_eq!(NewLimit::from_form("5000", "warning").unwrap().amount, 5000);
        let refused = NewLimit::from_form("5e3", "").unwrap_err();
        assert_eq!(refused.given, json!({"amount": "5e3", "action": ""}));
        assert_eq!(refused.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["amount", "action"]);
    }
}
