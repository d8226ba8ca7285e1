//! The `[cache]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub ttl_ms: u64,
    pub max_stale_ms: u64,
    pub min_refresh_interval_ms: u64,
    pub negative_ttl_ms: u64,
    pub max_customers: u64,
    pub max_unknown_customers: u64,
    pub fetch_concurrency: u32,
    pub max_concurrent_fetches: u32,
    pub cold_fetches_per_second: u32,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub max_stale: Duration,
    pub min_refresh_interval: Duration,
    pub negative_ttl: Duration,
    pub max_customers: u64,
    pub max_unknown_customers: u64,
    pub fetch_concurrency: usize,
    pub max_concurrent_fetches: usize,
    pub cold_fetches_per_second: u32,
}

pub(super) fn validate(v: &mut Validator, raw: &RawCache) -> CacheSettings {
    const DAY_MS: u64 = 86_400_000;
    let ttl = v.range("cache.ttl_ms", raw.ttl_ms, 1, DAY_MS);
    let max_stale = v.range("cache.max_stale_ms", raw.max_stale_ms, 0, 7 * DAY_MS);
    v.check("cache.max_stale_ms", max_stale >= ttl, || {
        format!("must be at least cache.ttl_ms ({ttl}), got {max_stale}")
    });
    CacheSettings {
        ttl: Duration::from_millis(ttl),
        max_stale: Duration::from_millis(max_stale),
        min_refresh_interval: Duration::from_millis(v.range(
            "cache.min_refresh_interval_ms",
            raw.min_refresh_interval_ms,
            0,
            DAY_MS,
        )),
        negative_ttl: Duration::from_millis(v.range("cache.negative_ttl_ms", raw.negative_ttl_ms, 0, DAY_MS)),
        max_customers: v.range("cache.max_customers", raw.max_customers, 1, 100_000_000),
        max_unknown_customers: v.range(
            "cache.max_unknown_customers",
            raw.max_unknown_customers,
            1,
            100_000_000,
        ),
        fetch_concurrency: v.range("cache.fetch_concurrency", raw.fetch_concurrency.into(), 1, 1000) as usize,
        max_concurrent_fetches: v.range(
            "cache.max_concurrent_fetches",
            raw.max_concurrent_fetches.into(),
            1,
            10_000,
        ) as usize,
        cold_fetches_per_second: v.range(
            "cache.cold_fetches_per_second",
            raw.cold_fetches_per_second.into(),
            1,
            1_000_000,
        ) as u32,
    }
}
