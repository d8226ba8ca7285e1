//! The `[cache]` section and its `validate`.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    #[serde(rename = "ttl_ms", with = "ms")]
    pub ttl: Duration,
    #[serde(rename = "max_stale_ms", with = "ms")]
    pub max_stale: Duration,
    #[serde(rename = "min_refresh_interval_ms", with = "ms")]
    pub min_refresh_interval: Duration,
    #[serde(rename = "negative_ttl_ms", with = "ms")]
    pub negative_ttl: Duration,
    pub max_customers: u64,
    pub max_unknown_customers: u64,
    pub fetch_concurrency: usize,
    pub max_concurrent_fetches: usize,
    pub cold_fetches_per_second: u32,
}

embedded_default!(CacheSettings, "cache");

impl CacheSettings {
    pub(super) fn validate(&self, v: &mut Validator) {
        const DAY_MS: u64 = 86_400_000;
        let ttl = v.range_ms("cache.ttl_ms", self.ttl, 1, DAY_MS);
        let max_stale = v.range_ms("cache.max_stale_ms", self.max_stale, 0, 7 * DAY_MS);
        v.check("cache.max_stale_ms", max_stale >= ttl, || {
            format!("must be at least cache.ttl_ms ({ttl}), got {max_stale}")
        });
        v.range_ms("cache.min_refresh_interval_ms", self.min_refresh_interval, 0, DAY_MS);
        v.range_ms("cache.negative_ttl_ms", self.negative_ttl, 0, DAY_MS);
        v.range("cache.max_customers", self.max_customers, 1, 100_000_000);
        v.range("cache.max_unknown_customers", self.max_unknown_customers, 1, 100_000_000);
        v.range("cache.fetch_concurrency", self.fetch_concurrency as u64, 1, 1000);
        v.range("cache.max_concurrent_fetches", self.max_concurrent_fetches as u64, 1, 10_000);
        v.range("cache.cold_fetches_per_second", self.cold_fetches_per_second.into(), 1, 1_000_000);
    }
}
