//! The live view: what this instance holds for each webhook right now — attempts on the wire,
//! deliveries parked behind the webhook's in-flight cap, and its circuit — for
//! `WebhookService/GetWebhookStats`.
//!
//! These figures exist only in this process (the signer's parked queues, [`Isolation`]), so they
//! are the *answering instance's*; the counts and last times of `crate::stats`, and the backlog
//! (`super::backlog`, read from Redis), are cluster-wide. The view is an `Arc` shared by the
//! pipeline, which updates it, and the control plane, which reads it: `main` builds it before
//! either starts. Parked deliveries are counted by the signer in [`Isolation`] (`set_waiting`),
//! which the status page reads too.

use std::sync::Arc;

use super::isolation::{Circuit, Isolation, Settings};

/// One webhook as this instance sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveStats {
    pub in_flight: usize,
    /// In the signer, over the webhook's in-flight cap (or behind its half-open probe).
    pub parked: u64,
    pub circuit: Circuit,
}

pub struct LiveView {
    isolation: Arc<Isolation>,
    /// This instance's name (its consumer name), said with the figures it answers.
    instance: String,
}

impl LiveView {
    /// The view and the isolation state it reads, which the pipeline shares.
    pub fn new(settings: Settings, instance: String) -> Self {
        Self { isolation: Arc::new(Isolation::new(settings)), instance }
    }

    pub fn isolation(&self) -> &Arc<Isolation> {
        &self.isolation
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// `webhook` on this instance now (zeros and a closed circuit when it has nothing here).
    pub fn of(&self, webhook: &str) -> LiveStats {
        let live = self.isolation.live(webhook);
        LiveStats { in_flight: live.in_flight, parked: live.parked as u64, circuit: live.circuit }
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
    fn parked_deliveries_are_the_signers_count() {
        let view = view();
        view.isolation().set_waiting("a", 2);
        assert_eq!(view.of("a").parked, 2);
        view.isolation().set_waiting("a", 0);
        assert_eq!(view.of("a").parked, 0);
    }

    #[test]
    fn in_flight_and_the_circuit_come_from_the_isolation_state() {
        let view = view();
        let now = crate::clock::ManualClock::new(0).now();
        view.isolation().admit("a", now);
        assert_eq!(view.of("a").in_flight, 1);
        view.isolation().finish("a", false, now);
        view.isolation().admit("a", now);
        view.isolation().finish("a", false, now);
        let live = view.of("a");
        assert_eq!((live.in_flight, live.circuit.state()), (0, super::super::isolation::CircuitState::Open));
    }
}
