use std::collections::BTreeMap;
use std::time::Duration;

/// Everything that can go wrong talking to BillaBear, told apart so callers can decide: a 404 is
/// an answer, a timeout is not; a 400 carries BillaBear's field messages; a 5xx may be retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BillaBearError {
    #[error("BillaBear has no such {0}")]
    NotFound(&'static str),
    #[error("BillaBear rejected the request: {}", fields(.0))]
    Validation(BTreeMap<String, String>),
    #[error("BillaBear rejected usage-gate's API key (401); check billabear.api_key")]
    Unauthorized,
    #[error("BillaBear did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach BillaBear: {0}")]
    Connect(String),
    #[error("BillaBear answered {status} (unavailable)")]
    Unavailable { status: u16 },
    #[error("BillaBear answered {status} with a body usage-gate cannot read: {reason}")]
    InvalidBody { status: u16, reason: String },
    #[error("BillaBear answered an unexpected {status}")]
    UnexpectedStatus { status: u16 },
    #[error("not sent to BillaBear: {0}")]
    InvalidRequest(String),
}

fn fields(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; ")
}

impl BillaBearError {
    /// BillaBear's passing state: unreachable, slow or busy. The same request may well work
    /// unchanged in a moment.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Connect(_) | Self::Unavailable { .. })
    }

    /// Whether the same request is worth sending again later (the forwarder keeps an event for
    /// it): yes unless BillaBear refused the request itself (400) or it could never be sent.
    /// Besides transient failures, a 401, a 404 on a route, an unexpected status or an
    /// unreadable body are usage-gate's configuration or BillaBear's version, which an operator
    /// can mend.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Validation(_) | Self::InvalidRequest(_))
    }

    /// BillaBear may have acted on the request although no usable answer came: it timed out,
    /// the connection failed, or a 2xx body could not be read. Whether a change was made must
    /// then be looked up, not assumed.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Connect(_) => true,
            Self::InvalidBody { status, .. } => (200..300).contains(status),
            _ => false,
        }
    }

    /// The HTTP status BillaBear answered with, when it answered.
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            Self::NotFound(_) => Some(404),
            Self::Validation(_) => Some(400),
            Self::Unauthorized => Some(401),
            Self::Unavailable { status }
            | Self::InvalidBody { status, .. }
            | Self::UnexpectedStatus { status } => Some(*status),
            Self::Timeout(_) | Self::Connect(_) | Self::InvalidRequest(_) => None,
        }
    }

    /// A short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Validation(_) => "validation",
            Self::Unauthorized => "unauthorized",
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Unavailable { .. } => "unavailable",
            Self::InvalidBody { .. } => "invalid_body",
            Self::UnexpectedStatus { .. } => "unexpected_status",
            Self::InvalidRequest(_) => "invalid_request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_failure_is_always_worth_retrying() {
        for transient in [
            BillaBearError::Timeout(Duration::from_secs(5)),
            BillaBearError::Connect("refused".into()),
            BillaBearError::Unavailable { status: 503 },
        ] {
            assert!(transient.is_transient() && transient.is_retryable(), "{transient:?}");
        }
        assert!(!BillaBearError::Unauthorized.is_transient());
        // What the forwarder gives up on (its own test lists what it keeps).
        let validation = BillaBearError::Validation(BTreeMap::from([("code".into(), "unknown".into())]));
        assert!(!validation.is_retryable());
        assert!(!BillaBearError::InvalidRequest("id".into()).is_retryable());
    }

    #[test]
    fn an_answer_that_never_came_leaves_the_outcome_unknown() {
        assert!(BillaBearError::Timeout(Duration::from_millis(250)).outcome_unknown());
        assert!(BillaBearError::Connect("reset".into()).outcome_unknown());
        assert!(BillaBearError::InvalidBody { status: 201, reason: "eof".into() }.outcome_unknown());
        assert!(!BillaBearError::InvalidBody { status: 500, reason: "html".into() }.outcome_unknown());
        assert!(!BillaBearError::Unavailable { status: 503 }.outcome_unknown());
        assert!(!BillaBearError::NotFound("customer").outcome_unknown());
    }
}
