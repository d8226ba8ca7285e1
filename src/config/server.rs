//! The `[server]` section and its `validate`.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub address: Parsed<SocketAddr>,
    pub max_body_bytes: usize,
    /// 0: one per core.
    pub workers: usize,
    #[serde(rename = "shutdown_timeout_s", with = "secs")]
    pub shutdown_timeout: Duration,
    /// Serve `/metrics` here instead of on `address`.
    pub metrics_address: Parsed<Option<SocketAddr>>,
}

embedded_default!(ServerSettings, "server");

impl FromText for SocketAddr {
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| format!("must be IP:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080), got {s:?}"))
    }
    fn stand_in() -> Self {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
}

/// An address or nothing (empty).
impl FromText for Option<SocketAddr> {
    fn from_text(s: &str) -> Result<Self, String> {
        match s {
            "" => Ok(None),
            s => s.parse().map(Some).map_err(|_| format!("must be IP:PORT or empty, got {s:?}")),
        }
    }
    fn stand_in() -> Self {
        None
    }
    fn to_text(&self) -> String {
        self.map(|a| a.to_string()).unwrap_or_default()
    }
}

impl ServerSettings {
    pub(super) fn validate(&self, v: &mut Validator) {
        v.parsed("server.address", &self.address);
        v.range("server.max_body_bytes", self.max_body_bytes as u64, 1024, 64 << 20);
        v.range("server.workers", self.workers as u64, 0, 256);
        v.range("server.shutdown_timeout_s", self.shutdown_timeout.as_secs(), 0, 3600);
        v.parsed("server.metrics_address", &self.metrics_address);
    }
}
