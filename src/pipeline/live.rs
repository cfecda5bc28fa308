//! The live view: what this instance holds for each webhook right now — attempts on the wire,
//! deliveries parked behind the webhook's in-flight cap, retries waiting in the scheduler's heap,
//! and its circuit — for `WebhookService/GetWebhookStats`.
//!
//! These figures exist only in this process (the signer's parked queues, the scheduler's heap,
//! [`Isolation`]), so they are the *answering instance's*; the counts and last times of
//! `crate::stats` are cluster-wide. The view is an `Arc` shared by the pipeline, which updates
//! it, and the control plane, which reads it: `main` builds it before either starts.
//!
//! The scheduler adjusts a per-webhook count when a retry is scheduled or due — one short lock
//! on that path, none on the common path of a delivery that goes straight out — and a webhook's
//! entry is removed when its count is back to zero. Parked deliveries are counted by the signer
//! in [`Isolation`] (`set_waiting`), which the status page reads too.

use std::{collections::HashMap, sync::Arc, time::Instant};

use parking_lot::Mutex;

use super::isolation::{Circuit, Isolation, Settings};

/// Deliveries of one webhook waiting on this instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waiting {
    /// In the signer, over the webhook's in-flight cap (or behind its half-open probe).
    pub parked: u64,
    /// In the retry scheduler: failed attempts waiting for their next one, and deliveries held
    /// back by an open circuit.
    pub retries: u64,
}

/// One webhook as this instance sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveStats {
    pub in_flight: usize,
    pub waiting: Waiting,
    pub circuit: Circuit,
}

pub struct LiveView {
    isolation: Arc<Isolation>,
    /// Retries waiting in the scheduler's heap, per webhook with at least one.
    retries: Mutex<HashMap<String, u64>>,
    /// This instance's name (its consumer name), said with the figures it answers.
    instance: String,
}

impl LiveView {
    /// The view and the isolation state it reads, which the pipeline shares.
    pub fn new(settings: Settings, instance: String) -> Self {
        Self { isolation: Arc::new(Isolation::new(settings)), retries: Mutex::new(HashMap::new()), instance }
    }

    pub fn isolation(&self) -> &Arc<Isolation> {
        &self.isolation
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// `delta` deliveries of `webhook` entered (positive) or left (negative) the retry heap.
    pub fn retries(&self, webhook: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        let mut retries = self.retries.lock();
        if !retries.contains_key(webhook) {
            retries.insert(webhook.to_owned(), 0);
        }
        let count = retries.get_mut(webhook).expect("just inserted");
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            retries.remove(webhook);
        }
    }

    /// `webhook` on this instance now (zeros and a closed circuit when it has nothing here).
    pub fn of(&self, webhook: &str) -> LiveStats {
        let live = self.isolation.live(webhook);
        let retries = self.retries.lock().get(webhook).copied().unwrap_or_default();
        LiveStats { in_flight: live.in_flight, waiting: Waiting { parked: live.parked as u64, retries }, circuit: live.circuit }
    }
}

/// `at` on the wall clock, in ms since the Unix epoch: for an instant (an open circuit's end)
/// that is shown to people. Instants in the past are fine; the result is as exact as two clock
/// reads a moment apart.
pub fn wall_ms(at: Instant) -> u64 {
    let now_ms = crate::domain::store::now_ms();
    let now = Instant::now();
    if at >= now {
        now_ms.saturating_add(at.duration_since(now).as_millis() as u64)
    } else {
        now_ms.saturating_sub(now.duration_since(at).as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn view() -> LiveView {
        LiveView::new(
            Settings { max_in_flight: 1, failures_to_open: 2, cooldown: Duration::from_secs(30), auto_disable_after: None },
            "test-1".into(),
        )
    }

    #[test]
    fn counts_follow_the_pipeline_and_empty_entries_go() {
        let view = view();
        view.retries("a", 3);
        view.retries("b", 1);
        view.isolation().set_waiting("a", 2);
        assert_eq!(view.of("a").waiting, Waiting { parked: 2, retries: 3 });
        view.isolation().set_waiting("a", 0);
        view.retries("a", -3);
        assert_eq!(view.of("a").waiting, Waiting::default());
        assert!(!view.retries.lock().contains_key("a"), "nothing waits: no entry");
        assert_eq!(view.retries.lock().len(), 1);
        view.retries("c", -1);
        assert_eq!(view.of("c").waiting, Waiting::default(), "never below zero");
    }

    #[test]
    fn in_flight_and_the_circuit_come_from_the_isolation_state() {
        let view = view();
        let now = Instant::now();
        view.isolation().admit("a", now);
        assert_eq!(view.of("a").in_flight, 1);
        view.isolation().finish("a", false, now);
        view.isolation().admit("a", now);
        view.isolation().finish("a", false, now);
        let live = view.of("a");
        assert_eq!((live.in_flight, live.circuit.state()), (0, super::super::isolation::CircuitState::Open));
    }

    #[test]
    fn wall_times_of_instants_keep_their_distance_from_now() {
        let now_ms = crate::domain::store::now_ms();
        let later = wall_ms(Instant::now() + Duration::from_secs(60));
        assert!((now_ms + 59_000..=now_ms + 61_000).contains(&later), "{later} vs {now_ms}");
        let earlier = wall_ms(Instant::now() - Duration::from_secs(60));
        assert!((now_ms - 61_000..=now_ms - 59_000).contains(&earlier), "{earlier} vs {now_ms}");
    }
}
