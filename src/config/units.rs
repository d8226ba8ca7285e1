//! Settings written as a number of a unit: durations ([`ms`], [`secs`], [`minutes`]) and
//! windows in days ([`Days`]).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as whole units (`timeout_ms = 250`): serde `with` modules.
macro_rules! unit {
    ($name:ident, $doc:literal, $from:expr, $to:expr) => {
        #[doc = $doc]
        pub mod $name {
            use super::*;

            pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
                let to: fn(&Duration) -> u64 = $to;
                s.serialize_u64(to(d))
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
                let from: fn(u64) -> Duration = $from;
                u64::deserialize(d).map(from)
            }
        }
    };
}

unit!(ms, "Milliseconds.", Duration::from_millis, |d| d.as_millis() as u64);
unit!(secs, "Seconds.", Duration::from_secs, Duration::as_secs);
unit!(minutes, "Minutes.", |m| Duration::from_secs(m.saturating_mul(60)), |d| d.as_secs() / 60);

/// A number of days, fractions allowed (so that a test or a soak can shorten a window).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Days(pub f64);

impl Days {
    /// The window; 0 (where a window may keep every row) is None. Valid once validated.
    pub fn window(self) -> Option<Duration> {
        (self.0 > 0.0 && self.0.is_finite()).then(|| Duration::from_secs_f64(self.0.min(3650.0) * 86_400.0))
    }

    /// A window that must end (validated above 0).
    pub fn duration(self) -> Duration {
        self.window().unwrap_or(Duration::from_secs(86_400))
    }
}
