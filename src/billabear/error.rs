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
    /// Worth trying again later: the request may not have been processed, or BillaBear was busy.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Connect(_) | Self::Unavailable { .. })
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
