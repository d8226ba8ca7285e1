//! When to try a failed delivery again: exponential backoff with jitter, capped.

use std::time::Duration;

/// The delay before attempt `attempts + 1`, after `attempts` failures (1 or more): `base`
/// doubling each time up to `max`, then scaled by a factor in [0.5, 1.0) from `jitter`
/// (uniform in [0, 1)) so that replicas retrying after the same outage spread out.
pub fn backoff(attempts: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(32);
    let full = base.saturating_mul(1u32 << exponent.min(31)).min(max);
    full.mul_f64(0.5 + jitter.clamp(0.0, 0.999_999) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn doubles_from_the_base_and_stops_at_the_cap() {
        let top = |n| backoff(n, BASE, MAX, 0.999_999);
        assert!(top(1) <= BASE && top(1) > BASE.mul_f64(0.99));
        assert!(top(2) <= BASE * 2 && top(2) > BASE.mul_f64(1.99));
        assert!(top(5) <= BASE * 16);
        assert!(top(20) <= MAX && top(20) > MAX.mul_f64(0.99));
        assert!(top(u32::MAX) <= MAX);
    }

    #[test]
    fn jitter_keeps_at_least_half_the_delay() {
        for attempts in 1..12 {
            let low = backoff(attempts, BASE, MAX, 0.0);
            let high = backoff(attempts, BASE, MAX, 0.999_999);
            assert!(low <= high && high < low * 2 + Duration::from_millis(1), "{attempts}: {low:?} {high:?}");
        }
    }
}
