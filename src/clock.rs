//! Time as the service reads it: the one place that asks the operating system.
//!
//! The pipeline's stages never read the system clock themselves; each is handed a [`Clock`] and
//! asks it for both kinds of time it needs — a monotonic [`Instant`] for waits, cool-downs and
//! linger windows, and the wall clock in ms since the Unix epoch for what is stored and shown
//! (due times, `started_at_ms`, dead-letter times). In production the clock is
//! [`Clock::System`]; a test builds a [`ManualClock`], whose time stands still until the test
//! moves it, so that cool-downs, due times and retry times can be checked exactly and without
//! sleeping.
//!
//! A manual clock drives what the code *computes* from time. Blocking waits on channels
//! (`recv_timeout`, `recv_deadline`) still pass in real time: a test drives time through the
//! pure parts (the outcome decision, the isolation state), not through a running stage's loop.
//!
//! Why an enum and not a trait object: the clock is read on the hot path (twice per attempt in
//! the sender, once per completion in the outcome stage), and a `match` on a two-variant enum
//! costs a predictable branch where a `dyn` call costs an indirect one and an `Arc` per stage
//! either way.
//! Control-plane code outside the stages (gRPC, the store) reads [`now_ms`], the system clock.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Milliseconds since the Unix epoch (0 if the clock is before it), from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `at` on the system's wall clock, in ms since the Unix epoch ([`Clock::wall_ms`] of
/// [`Clock::System`]), for code outside the pipeline that shows a pipeline instant.
pub fn wall_ms(at: Instant) -> u64 {
    Clock::System.wall_ms(at)
}

/// Where a stage reads the time. Cloning is cheap (a manual clock is shared, not copied).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The operating system's clocks.
    #[default]
    System,
    /// A test's clock: stands still until its [`ManualClock`] advances it.
    Manual(Arc<ManualTime>),
}

impl Clock {
    /// The monotonic time now.
    #[inline]
    pub fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Manual(time) => time.origin + time.offset(),
        }
    }

    /// Milliseconds since the Unix epoch now.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => now_ms(),
            Clock::Manual(time) => time.origin_ms + time.offset().as_millis() as u64,
        }
    }

    /// Seconds since the Unix epoch now (the signature's timestamp).
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// How long ago `since` was (zero if it is in the future).
    #[inline]
    pub fn elapsed(&self, since: Instant) -> Duration {
        self.now().saturating_duration_since(since)
    }

    /// `at` on the wall clock, in ms since the Unix epoch: for an instant (an open circuit's
    /// end) that is stored or shown. Instants in the past are fine; on the system clock the
    /// result is as exact as two clock reads a moment apart.
    pub fn wall_ms(&self, at: Instant) -> u64 {
        let (now, now_ms) = (self.now(), self.now_ms());
        if at >= now {
            now_ms.saturating_add(at.duration_since(now).as_millis() as u64)
        } else {
            now_ms.saturating_sub(now.duration_since(at).as_millis() as u64)
        }
    }
}

/// The state behind [`Clock::Manual`]: a fixed origin on both clocks and how far the test has
/// moved them since.
#[derive(Debug)]
pub struct ManualTime {
    origin: Instant,
    origin_ms: u64,
    offset_ns: AtomicU64,
}

impl ManualTime {
    fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_ns.load(Ordering::SeqCst))
    }
}

/// A clock for tests: it reads `start_ms` on the wall clock until [`ManualClock::advance`]
/// moves it (both clocks together). Hand [`ManualClock::clock`] to the code under test.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<ManualTime>);

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        Self(Arc::new(ManualTime { origin: Instant::now(), origin_ms: start_ms, offset_ns: AtomicU64::new(0) }))
    }

    pub fn clock(&self) -> Clock {
        Clock::Manual(self.0.clone())
    }

    /// Moves time forward by `by` (it never goes back).
    pub fn advance(&self, by: Duration) {
        self.0.offset_ns.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    /// The time now, as [`Clock::now`] reads it.
    pub fn now(&self) -> Instant {
        self.clock().now()
    }

    /// The wall time now, as [`Clock::now_ms`] reads it.
    pub fn now_ms(&self) -> u64 {
        self.clock().now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_advanced_and_moves_both_clocks_together() {
        let manual = ManualClock::new(1_767_225_600_000);
        let clock = manual.clock();
        let (t0, ms0) = (clock.now(), clock.now_ms());
        assert_eq!(ms0, 1_767_225_600_000);
        assert_eq!((clock.now(), clock.now_ms()), (t0, ms0), "no time passes by itself");
        manual.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - t0, Duration::from_millis(1500));
        assert_eq!(clock.now_ms(), ms0 + 1500);
        assert_eq!(clock.now_secs(), 1_767_225_601);
        assert_eq!(clock.elapsed(t0), Duration::from_millis(1500));
        assert_eq!(clock.elapsed(t0 + Duration::from_secs(9)), Duration::ZERO, "the future has not elapsed");
        let copy = clock.clone();
        manual.advance(Duration::from_secs(1));
        assert_eq!(copy.now_ms(), ms0 + 2500, "clones share the time");
    }

    #[test]
    fn wall_times_of_instants_keep_their_distance_from_now() {
        let manual = ManualClock::new(1_000_000);
        let clock = manual.clock();
        let now = clock.now();
        assert_eq!(clock.wall_ms(now + Duration::from_secs(60)), 1_060_000);
        manual.advance(Duration::from_secs(90));
        assert_eq!(clock.wall_ms(now), 1_000_000, "an instant in the past");

        let system = Clock::System;
        let now_ms = system.now_ms();
        let later = system.wall_ms(Instant::now() + Duration::from_secs(60));
        assert!((now_ms + 59_000..=now_ms + 61_000).contains(&later), "{later} vs {now_ms}");
        let earlier = wall_ms(Instant::now() - Duration::from_secs(60));
        assert!((now_ms - 61_000..=now_ms - 59_000).contains(&earlier), "{earlier} vs {now_ms}");
    }
}
