//! The `[server]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub address: String,
    pub max_body_bytes: u64,
    pub workers: u32,
    pub shutdown_timeout_s: u64,
    pub metrics_address: String,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub address: SocketAddr,
    pub max_body_bytes: usize,
    /// 0: one per core.
    pub workers: usize,
    pub shutdown_timeout: Duration,
    /// Serve `/metrics` here instead of on `address`.
    pub metrics_address: Option<SocketAddr>,
}

pub(super) fn validate(v: &mut Validator, raw: &RawServer) -> ServerSettings {
    ServerSettings {
        address: v.parse("server.address", &raw.address, SocketAddr::from(([127, 0, 0, 1], 0)), |s| {
            s.parse::<SocketAddr>()
                .map_err(|_| format!("must be IP:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080), got {s:?}"))
        }),
        max_body_bytes: v.range("server.max_body_bytes", raw.max_body_bytes, 1024, 64 << 20) as usize,
        workers: v.range("server.workers", raw.workers.into(), 0, 256) as usize,
        shutdown_timeout: Duration::from_secs(v.range(
            "server.shutdown_timeout_s",
            raw.shutdown_timeout_s,
            0,
            3600,
        )),
        metrics_address: match raw.metrics_address.as_str() {
            "" => None,
            raw => Some(v.parse("server.metrics_address", raw, SocketAddr::from(([127, 0, 0, 1], 0)), |s| {
                s.parse::<SocketAddr>().map_err(|_| format!("must be IP:PORT or empty, got {s:?}"))
            })),
        },
    }
}
