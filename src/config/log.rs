//! The `[log]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: String,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

pub(super) fn validate(v: &mut Validator, raw: &RawLog) -> LogSettings {
    LogSettings {
        format: v.parse("log.format", &raw.format, LogFormat::Auto, |s| match s {
            "auto" => Ok(LogFormat::Auto),
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            _ => Err(format!("must be auto, json or pretty, got {s:?}")),
        }),
        level: {
            v.check("log.level", tracing_subscriber::EnvFilter::try_new(&raw.level).is_ok(), || {
                format!(
                    "is not a tracing filter directive (e.g. info or usage_gate=debug,info), got {:?}",
                    raw.level
                )
            });
            raw.level.clone()
        },
    }
}
