//! The `[console]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    pub enabled: bool,
    pub session_idle_minutes: u64,
    pub history_days: f64,
}

/// The operator console (docs/console.md).
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// Whether `/console/` is served.
    pub enabled: bool,
    /// A session ends after this long without a request.
    pub session_idle: Duration,
    /// How long the observations behind the usage plots are kept.
    pub history: Duration,
}

pub(super) fn validate(v: &mut Validator, raw: &RawConsole) -> ConsoleSettings {
    ConsoleSettings {
        enabled: raw.enabled,
        session_idle: Duration::from_secs(
            60 * v.range("console.session_idle_minutes", raw.session_idle_minutes, 1, 7 * 1440),
        ),
        history: days(v, "console.history_days", raw.history_days),
    }
}
