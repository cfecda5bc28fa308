//! Retry delays (docs/contract.md §4), as pure functions: the caller supplies the random draw, so tests
//! check the maths exactly.
//!
//! The delay before attempt n+1 is `min(max_backoff, initial_backoff × multiplier^(n-1))`, then
//! spread by ± `jitter` (a fraction of that delay) and capped at `max_backoff` again. A
//! `Retry-After` from a 429 or 503 replaces the computed delay, capped at `max_backoff`.

use std::time::Duration;

use crate::domain::model::RetryPolicy;

/// Delay after failed attempt number `failed_attempt` (1 for the first attempt).
/// `draw` is uniform in [-1, 1]: -1 shortens by the full jitter fraction, +1 lengthens by it.
pub fn backoff(policy: &RetryPolicy, failed_attempt: u32, draw: f64) -> Duration {
    let exponent = failed_attempt.saturating_sub(1).min(1000) as i32;
    let max = policy.max_backoff.as_secs_f64();
    let base = (policy.initial_backoff.as_secs_f64() * policy.multiplier.powi(exponent)).min(max);
    let spread = base * (1.0 + policy.jitter * draw.clamp(-1.0, 1.0));
    Duration::from_secs_f64(spread.clamp(0.0, max))
}

/// The delay to use: the receiver's `Retry-After` when it gave one, else [`backoff`].
pub fn next_delay(policy: &RetryPolicy, failed_attempt: u32, retry_after: Option<Duration>, draw: f64) -> Duration {
    match retry_after {
        Some(wait) => wait.min(policy.max_backoff),
        None => backoff(policy, failed_attempt, draw),
    }
}

/// A uniform draw in [-1, 1] from the operating system's generator.
pub fn random_draw() -> f64 {
    let mut buf = [0u8; 8];
    if getrandom::fill(&mut buf).is_err() {
        return 0.0;
    }
    let unit = (u64::from_le_bytes(buf) >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (relative to `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::builtin_default() // 5 s, ×5, 10 h cap, jitter 0.2
    }

    #[test]
    fn delays_grow_geometrically_and_are_capped() {
        let p = policy();
        let secs: Vec<f64> = (1..=8).map(|n| backoff(&p, n, 0.0).as_secs_f64()).collect();
        assert_eq!(secs, [5.0, 25.0, 125.0, 625.0, 3125.0, 15625.0, 36000.0, 36000.0]);
    }

    #[test]
    fn jitter_spreads_by_the_fraction_both_ways_and_never_exceeds_the_cap() {
        let p = policy();
        assert_eq!(backoff(&p, 1, -1.0), Duration::from_secs(4));
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_secs(6));
        assert_eq!(backoff(&p, 2, 0.5), Duration::from_secs_f64(27.5));
        assert_eq!(backoff(&p, 8, 1.0), Duration::from_secs(36000));
        assert_eq!(backoff(&p, 8, -1.0), Duration::from_secs(28800));
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let mut p = policy();
        assert_eq!(next_delay(&p, 1, Some(Duration::from_secs(90)), 0.0), Duration::from_secs(90));
        p.max_backoff = Duration::from_secs(60);
        assert_eq!(next_delay(&p, 1, Some(Duration::from_secs(90)), 0.0), Duration::from_secs(60));
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01T00:00:00Z
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        let _ = SystemTime::now();
    }

    #[test]
    fn draws_stay_in_range() {
        for _ in 0..1000 {
            let d = random_draw();
            assert!((-1.0..=1.0).contains(&d));
        }
    }
}
