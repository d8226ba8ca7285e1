//! The `[console]` section and its `validate`.

use super::*;

/// The operator console (docs/console.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Whether `/console/` is served.
    pub enabled: bool,
    /// A session ends after this long without a request.
    #[serde(rename = "session_idle_minutes", with = "minutes")]
    pub session_idle: Duration,
    /// How long the observations behind the usage plots are kept.
    #[serde(rename = "history_days")]
    pub history: Days,
}

embedded_default!(ConsoleSettings, "console");

impl ConsoleSettings {
    pub(super) fn validate(&self, v: &mut Validator) {
        v.range("console.session_idle_minutes", self.session_idle.as_secs() / 60, 1, 7 * 1440);
        days(v, "console.history_days", self.history);
    }
}
