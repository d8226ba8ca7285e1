//! The `[log]` section and its `validate`.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: Parsed<LogFormat>,
    pub level: String,
}

embedded_default!(LogSettings, "log");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

crate::written_as!(LogFormat { "auto" => Auto, "json" => Json, "pretty" => Pretty });

impl LogSettings {
    pub(super) fn validate(&self, v: &mut Validator) {
        v.parsed("log.format", &self.format);
        v.check("log.level", tracing_subscriber::EnvFilter::try_new(&self.level).is_ok(), || {
            format!(
                "is not a tracing filter directive (e.g. info or usage_gate=debug,info), got {:?}",
                self.level
            )
        });
    }
}
