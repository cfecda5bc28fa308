//! Endpoint isolation: one slow or failing webhook must not occupy the sender pool or stall the
//! others. Shared by the signer (which asks before sending) and the senders (which report each
//! attempt's end the moment it ends; the outcome stage logs what that changed).
//!
//! - **In-flight cap** (`WSS_WEBHOOK_CONCURRENCY`, default 8): at most that many attempts to one
//!   webhook at once. A little of the excess is parked, unsigned, in a per-webhook queue in the
//!   signer and released as attempts finish; the rest is handed to the durable backlog
//!   (`super::backlog`), whose pump takes a webhook's work only as far as [`Isolation::room`]
//!   allows — so it waits without blocking other webhooks' deliveries or the reader.
//! - **Circuit breaker**: after `WSS_CIRCUIT_FAILURES` (default 5) consecutive failed attempts
//!   the circuit opens for `WSS_CIRCUIT_COOLDOWN` (default 30 s): deliveries are handed to the
//!   backlog, due at the end of the cool-down, instead of attempted, and they keep their attempt
//!   count. Then one
//!   probe goes out alone (half-open): success closes the circuit, failure opens it again for
//!   twice as long, up to 10 minutes (or the cool-down, if longer).
//!
//! - **Auto-disable** (`WSS_AUTO_DISABLE_AFTER`, off by default): a webhook whose attempts have
//!   all failed for that long is disabled, with the reason visible in `GetWebhook`.
//!
//! The state is a map behind a mutex, touched twice per attempt; time is passed in, so the state
//! machine is tested without clocks.
//!
//! Every change of a circuit (opened, half-open when its probe goes out, closed) is also queued
//! as a [`CircuitChange`]; the outcome stage takes them with each batch and records them in the
//! webhook's stats (`crate::stats`), so `GetWebhookStats` shows the last change any instance
//! saw. The live state ([`Isolation::live`]) is what the gRPC layer reads for this instance.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_in_flight: usize,
    pub failures_to_open: u32,
    pub cooldown: Duration,
    /// Disable a webhook that has failed without a success for this long.
    pub auto_disable_after: Option<Duration>,
}

impl Settings {
    fn max_cooldown(&self) -> Duration {
        self.cooldown.max(Duration::from_secs(600))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    /// Attempts wait until `until`; the next cool-down after a failed probe is `cooldown` × 2.
    Open {
        until: Instant,
        cooldown: Duration,
    },
    /// The probe is out; everything else waits for its verdict.
    HalfOpen {
        cooldown: Duration,
    },
}

#[derive(Debug)]
struct Endpoint {
    in_flight: usize,
    failures: u32,
    circuit: Circuit,
    /// When the current run of failures began.
    failing_since: Option<Instant>,
    /// A delivery was parked since the last attempt ended: the next end must wake the signer.
    parked: bool,
    /// Deliveries the signer holds for this webhook now (reported by it, for the status page).
    waiting: usize,
    /// How long its attempts take, lately (a moving average; zero: none seen yet).
    attempt_time: Duration,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self {
            in_flight: 0,
            failures: 0,
            circuit: Circuit::Closed,
            failing_since: None,
            parked: false,
            waiting: 0,
            attempt_time: Duration::ZERO,
        }
    }
}

/// How many attempts a webhook may start now, for the backlog's pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// This many (0: at its cap, or a probe is out).
    Free(usize),
    /// None before its circuit's cool-down ends.
    OpenUntil(Instant),
}

/// What the signer should do with a delivery now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Send it (a slot was taken; report its end with [`Isolation::finish`]).
    Go,
    /// Keep it until a slot of this webhook frees up.
    Park,
    /// The circuit is open: schedule it for then.
    WaitUntil(Instant),
}

/// A change of circuit state worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened {
        failures: u32,
        cooldown: Duration,
    },
    Closed,
    /// Failing without a success for longer than `auto_disable_after`: disable the webhook.
    FailingTooLong {
        failures: u32,
        since: Duration,
    },
}

/// A circuit's state without its timing, as recorded and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// The state's name where it is stored and shown (`crate::stats`, the status page).
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

impl Circuit {
    pub fn state(&self) -> CircuitState {
        match self {
            Circuit::Closed => CircuitState::Closed,
            Circuit::Open { .. } => CircuitState::Open,
            Circuit::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

/// A circuit changed state: queued for the outcome stage to record (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitChange {
    pub webhook: String,
    pub state: CircuitState,
    pub at: Instant,
    /// When an opened circuit lets its probe go.
    pub open_until: Option<Instant>,
}

/// One webhook's isolation state on this instance, for `GetWebhookStats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// Attempts on the wire now.
    pub in_flight: usize,
    /// Deliveries the signer holds back (over the cap, or behind a half-open probe).
    pub parked: usize,
    pub circuit: Circuit,
}

/// One webhook's state in [`Isolation::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    pub webhook: String,
    pub circuit: Circuit,
    pub in_flight: usize,
    pub parked: usize,
}

pub struct Isolation {
    settings: Settings,
    endpoints: Mutex<HashMap<String, Endpoint>>,
    /// Circuit changes not yet taken by the outcome stage. Bounded in fact: a change needs an
    /// attempt, and every attempt reaches the outcome stage, which takes them with its batch.
    changes: Mutex<Vec<CircuitChange>>,
}

impl Isolation {
    pub fn new(settings: Settings) -> Self {
        Self { settings, endpoints: Mutex::new(HashMap::new()), changes: Mutex::new(Vec::new()) }
    }

    pub fn admit(&self, webhook: &str, now: Instant) -> Gate {
        let mut endpoints = self.endpoints.lock();
        let endpoint = entry(&mut endpoints, webhook);
        let before = endpoint.circuit.state();
        let gate = Self::gate(&self.settings, endpoint, now);
        if gate == Gate::Park {
            endpoint.parked = true;
        }
        if endpoint.circuit.state() == CircuitState::HalfOpen && before != CircuitState::HalfOpen {
            self.changes.lock().push(CircuitChange {
                webhook: webhook.to_owned(),
                state: CircuitState::HalfOpen,
                at: now,
                open_until: None,
            });
        }
        gate
    }

    /// How many attempts `webhook` may start now (changes nothing: the signer's [`Isolation::admit`]
    /// takes the slots).
    pub fn room(&self, webhook: &str, now: Instant) -> Room {
        let endpoints = self.endpoints.lock();
        let Some(endpoint) = endpoints.get(webhook) else { return Room::Free(self.settings.max_in_flight) };
        match endpoint.circuit {
            Circuit::Open { until, .. } if now < until => Room::OpenUntil(until),
            Circuit::Open { .. } => Room::Free(usize::from(endpoint.in_flight == 0)),
            Circuit::HalfOpen { .. } => Room::Free(0),
            Circuit::Closed => Room::Free(self.settings.max_in_flight.saturating_sub(endpoint.in_flight)),
        }
    }

    /// How many deliveries of `webhook` may wait parked so that the last of them goes within
    /// `horizon`, at the pace of its recent attempts under its cap (unbounded while that pace is
    /// unknown).
    pub fn park_limit(&self, webhook: &str, horizon: Duration) -> usize {
        let endpoints = self.endpoints.lock();
        match endpoints.get(webhook).map(|e| e.attempt_time) {
            Some(pace) if !pace.is_zero() => {
                let per_slot = (horizon.as_micros() / pace.max(Duration::from_millis(1)).as_micros()) as usize;
                per_slot.saturating_mul(self.settings.max_in_flight).max(1)
            }
            _ => usize::MAX,
        }
    }

    /// The circuit changes since the last call, oldest first.
    pub fn take_changes(&self) -> Vec<CircuitChange> {
        std::mem::take(&mut *self.changes.lock())
    }

    /// `webhook`'s attempts in flight, parked deliveries and circuit on this instance (none and closed when it has
    /// nothing to remember).
    pub fn live(&self, webhook: &str) -> Live {
        self.endpoints.lock().get(webhook).map_or(Live { in_flight: 0, parked: 0, circuit: Circuit::Closed }, |e| Live {
            in_flight: e.in_flight,
            parked: e.waiting,
            circuit: e.circuit,
        })
    }

    fn gate(settings: &Settings, endpoint: &mut Endpoint, now: Instant) -> Gate {
        match endpoint.circuit {
            Circuit::Open { until, .. } if now < until => return Gate::WaitUntil(until),
            Circuit::Open { cooldown, .. } => {
                if endpoint.in_flight > 0 {
                    return Gate::Park; // attempts from before it opened are still out
                }
                endpoint.circuit = Circuit::HalfOpen { cooldown };
                endpoint.in_flight += 1;
                return Gate::Go; // the probe
            }
            Circuit::HalfOpen { .. } => return Gate::Park,
            Circuit::Closed => {}
        }
        if endpoint.in_flight >= settings.max_in_flight {
            return Gate::Park;
        }
        endpoint.in_flight += 1;
        Gate::Go
    }

    /// An attempt admitted with [`Gate::Go`] ended. Returns a transition to log, if any.
    pub fn finish(&self, webhook: &str, success: bool, now: Instant) -> Option<Transition> {
        self.finish_and_release(webhook, success, Duration::ZERO, now).0
    }

    /// [`Isolation::finish`], also saying whether a delivery of the webhook was parked since
    /// the last attempt ended — only then has the signer something to release, so only then is
    /// it woken (once per attempt, that wake-up was a measurable share of the signer's work).
    /// `took`: how long the attempt took, for [`Isolation::park_limit`].
    pub fn finish_and_release(&self, webhook: &str, success: bool, took: Duration, now: Instant) -> (Option<Transition>, bool) {
        let mut endpoints = self.endpoints.lock();
        let endpoint = entry(&mut endpoints, webhook);
        let release = std::mem::take(&mut endpoint.parked);
        endpoint.attempt_time = if endpoint.attempt_time.is_zero() { took } else { (endpoint.attempt_time * 4 + took) / 5 };
        let transition = self.finish_endpoint(&mut endpoints, webhook, success, now);
        let change = match transition {
            Some(Transition::Opened { cooldown, .. }) => Some((CircuitState::Open, Some(now + cooldown))),
            Some(Transition::Closed) => Some((CircuitState::Closed, None)),
            Some(Transition::FailingTooLong { .. }) | None => None,
        };
        if let Some((state, open_until)) = change {
            self.changes.lock().push(CircuitChange { webhook: webhook.to_owned(), state, at: now, open_until });
        }
        (transition, release)
    }

    fn finish_endpoint(&self, endpoints: &mut HashMap<String, Endpoint>, webhook: &str, success: bool, now: Instant) -> Option<Transition> {
        let endpoint = entry(endpoints, webhook);
        endpoint.in_flight = endpoint.in_flight.saturating_sub(1);
        if success {
            endpoint.failures = 0;
            endpoint.failing_since = None;
            let was_open = endpoint.circuit != Circuit::Closed;
            endpoint.circuit = Circuit::Closed;
            let idle = endpoint.in_flight == 0 && endpoint.waiting == 0;
            if idle {
                endpoints.remove(webhook); // nothing to remember about a healthy idle endpoint
            }
            return was_open.then_some(Transition::Closed);
        }
        endpoint.failures = endpoint.failures.saturating_add(1);
        let since = *endpoint.failing_since.get_or_insert(now);
        if let Some(limit) = self.settings.auto_disable_after {
            let failing_for = now.saturating_duration_since(since);
            if failing_for >= limit {
                let failures = endpoint.failures;
                endpoints.remove(webhook);
                return Some(Transition::FailingTooLong { failures, since: failing_for });
            }
        }
        match endpoint.circuit {
            Circuit::HalfOpen { cooldown } => {
                let cooldown = (cooldown * 2).min(self.settings.max_cooldown());
                endpoint.circuit = Circuit::Open { until: now + cooldown, cooldown };
                Some(Transition::Opened { failures: endpoint.failures, cooldown })
            }
            Circuit::Closed if endpoint.failures >= self.settings.failures_to_open => {
                let cooldown = self.settings.cooldown;
                endpoint.circuit = Circuit::Open { until: now + cooldown, cooldown };
                Some(Transition::Opened { failures: endpoint.failures, cooldown })
            }
            _ => None,
        }
    }

    /// The circuit of `webhook` (Closed when unknown).
    pub fn circuit(&self, webhook: &str) -> Circuit {
        self.endpoints.lock().get(webhook).map_or(Circuit::Closed, |e| e.circuit)
    }

    /// The signer holds `waiting` deliveries of `webhook` (it parked or released some). Only
    /// for what [`Isolation::snapshot`] shows: parking is the signer's.
    pub fn set_waiting(&self, webhook: &str, waiting: usize) {
        let mut endpoints = self.endpoints.lock();
        if waiting > 0 {
            entry(&mut endpoints, webhook).waiting = waiting;
        } else if let Some(endpoint) = endpoints.get_mut(webhook) {
            endpoint.waiting = 0;
            if endpoint.in_flight == 0 && endpoint.failures == 0 && endpoint.circuit == Circuit::Closed {
                endpoints.remove(webhook); // healthy and idle: nothing to remember
            }
        }
    }

    /// Every webhook with state — failing, with attempts out or deliveries parked — as (id,
    /// circuit, attempts in flight, deliveries parked). A copy, taken about once a second for
    /// the metrics and the status page; healthy idle webhooks are not in it.
    pub fn snapshot(&self) -> Vec<EndpointView> {
        let endpoints = self.endpoints.lock();
        endpoints
            .iter()
            .map(|(id, e)| EndpointView { webhook: id.clone(), circuit: e.circuit, in_flight: e.in_flight, parked: e.waiting })
            .collect()
    }
}

/// The webhook's state, created when missing (without allocating its key when present).
fn entry<'m>(endpoints: &'m mut HashMap<String, Endpoint>, webhook: &str) -> &'m mut Endpoint {
    if !endpoints.contains_key(webhook) {
        endpoints.insert(webhook.to_owned(), Endpoint::default());
    }
    endpoints.get_mut(webhook).expect("just inserted")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// A manual clock's time: the state machine is driven by the instants passed in.
    fn start() -> Instant {
        ManualClock::new(1_767_225_600_000).now()
    }

    fn isolation() -> Isolation {
        Isolation::new(Settings { max_in_flight: 2, failures_to_open: 3, cooldown: Duration::from_secs(30), auto_disable_after: None })
    }

    #[test]
    fn the_snapshot_shows_parked_deliveries_and_forgets_healthy_idle_webhooks() {
        let iso = isolation();
        let now = start();
        assert_eq!(iso.admit("a", now), Gate::Go);
        iso.set_waiting("a", 3);
        let view = |iso: &Isolation| iso.snapshot().into_iter().map(|e| (e.webhook, e.in_flight, e.parked)).collect::<Vec<_>>();
        assert_eq!(view(&iso), [("a".to_owned(), 1, 3)]);
        iso.finish("a", true, now);
        assert_eq!(view(&iso), [("a".to_owned(), 0, 3)], "kept while deliveries wait");
        iso.set_waiting("a", 0);
        assert!(iso.snapshot().is_empty(), "healthy and idle");
        iso.set_waiting("b", 0);
        assert!(iso.snapshot().is_empty(), "reporting nothing waiting creates nothing");
    }

    #[test]
    fn the_cap_parks_the_excess_and_a_finish_frees_a_slot() {
        let iso = isolation();
        let now = start();
        assert_eq!(iso.admit("a", now), Gate::Go);
        assert_eq!(iso.admit("a", now), Gate::Go);
        assert_eq!(iso.admit("a", now), Gate::Park);
        assert_eq!(iso.admit("b", now), Gate::Go, "other webhooks are not affected");
        iso.finish("a", true, now);
        assert_eq!(iso.admit("a", now), Gate::Go);
    }

    #[test]
    fn consecutive_failures_open_the_circuit_and_one_probe_decides() {
        let iso = isolation();
        let clock = ManualClock::new(1_767_225_600_000);
        for _ in 0..2 {
            assert_eq!(iso.admit("a", clock.now()), Gate::Go);
            assert_eq!(iso.finish("a", false, clock.now()), None);
        }
        assert_eq!(iso.admit("a", clock.now()), Gate::Go);
        assert_eq!(iso.finish("a", false, clock.now()), Some(Transition::Opened { failures: 3, cooldown: Duration::from_secs(30) }));
        let until = clock.now() + Duration::from_secs(30);
        clock.advance(Duration::from_secs(10));
        assert_eq!(iso.admit("a", clock.now()), Gate::WaitUntil(until));
        clock.advance(Duration::from_secs(20) - Duration::from_millis(1));
        assert_eq!(iso.admit("a", clock.now()), Gate::WaitUntil(until), "a millisecond before the end");

        // Cool-down over: one probe, the rest wait for it.
        clock.advance(Duration::from_millis(2));
        assert_eq!(iso.admit("a", clock.now()), Gate::Go);
        assert_eq!(iso.admit("a", clock.now()), Gate::Park);
        // The probe fails: open again, twice as long.
        let t1 = clock.now();
        assert_eq!(iso.finish("a", false, t1), Some(Transition::Opened { failures: 4, cooldown: Duration::from_secs(60) }));
        assert_eq!(iso.admit("a", t1), Gate::WaitUntil(t1 + Duration::from_secs(60)));

        // Next probe succeeds: closed, normal service.
        clock.advance(Duration::from_secs(61));
        assert_eq!(iso.admit("a", clock.now()), Gate::Go);
        assert_eq!(iso.finish("a", true, clock.now()), Some(Transition::Closed));
        assert_eq!(iso.circuit("a"), Circuit::Closed);
        assert_eq!(iso.admit("a", clock.now()), Gate::Go);
        assert_eq!(iso.admit("a", clock.now()), Gate::Go);
    }

    #[test]
    fn every_circuit_change_is_queued_once_and_the_live_state_is_readable() {
        let iso = isolation();
        let t0 = start();
        for _ in 0..3 {
            assert_eq!(iso.admit("a", t0), Gate::Go);
            iso.finish("a", false, t0);
        }
        assert_eq!(
            iso.live("a"),
            Live {
                in_flight: 0,
                parked: 0,
                circuit: Circuit::Open { until: t0 + Duration::from_secs(30), cooldown: Duration::from_secs(30) }
            }
        );
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(iso.admit("a", t1), Gate::Go, "the probe");
        assert_eq!(iso.admit("a", t1), Gate::Park);
        assert_eq!(iso.live("a").in_flight, 1);
        assert_eq!(iso.live("a").circuit.state(), CircuitState::HalfOpen);
        assert_eq!(iso.finish("a", true, t1), Some(Transition::Closed));
        let changes: Vec<(CircuitState, Instant, Option<Instant>)> =
            iso.take_changes().into_iter().map(|c| (c.state, c.at, c.open_until)).collect();
        assert_eq!(
            changes,
            [
                (CircuitState::Open, t0, Some(t0 + Duration::from_secs(30))),
                (CircuitState::HalfOpen, t1, None),
                (CircuitState::Closed, t1, None),
            ]
        );
        assert!(iso.take_changes().is_empty(), "taken once");
        assert_eq!(iso.live("unknown"), Live { in_flight: 0, parked: 0, circuit: Circuit::Closed });
    }

    #[test]
    fn only_an_end_after_a_park_asks_for_a_release() {
        let iso = isolation();
        let now = start();
        assert_eq!(iso.admit("a", now), Gate::Go);
        assert_eq!(iso.finish_and_release("a", true, Duration::ZERO, now), (None, false), "nothing was parked");
        assert_eq!(iso.admit("a", now), Gate::Go);
        assert_eq!(iso.admit("a", now), Gate::Go);
        assert_eq!(iso.admit("a", now), Gate::Park);
        assert_eq!(iso.finish_and_release("a", true, Duration::ZERO, now), (None, true), "the parked delivery may go");
        assert_eq!(iso.admit("a", now), Gate::Go, "the signer releases it");
        assert_eq!(iso.finish_and_release("a", true, Duration::ZERO, now), (None, false));
        assert_eq!(iso.finish_and_release("a", true, Duration::ZERO, now), (None, false));
    }

    #[test]
    fn room_counts_free_slots_and_respects_the_circuit() {
        let iso = isolation();
        let t0 = start();
        assert_eq!(iso.room("a", t0), Room::Free(2), "unknown: the whole cap");
        assert_eq!(iso.admit("a", t0), Gate::Go);
        assert_eq!(iso.room("a", t0), Room::Free(1));
        assert_eq!(iso.admit("a", t0), Gate::Go);
        assert_eq!(iso.room("a", t0), Room::Free(0));
        for _ in 0..2 {
            iso.finish("a", false, t0);
        }
        assert_eq!(iso.admit("a", t0), Gate::Go);
        iso.finish("a", false, t0);
        let until = t0 + Duration::from_secs(30);
        assert_eq!(iso.room("a", t0), Room::OpenUntil(until));
        assert_eq!(iso.room("a", until), Room::Free(1), "the probe may go");
        assert_eq!(iso.admit("a", until), Gate::Go);
        assert_eq!(iso.room("a", until), Room::Free(0), "the probe is out");
    }

    #[test]
    fn the_park_limit_follows_the_pace_of_the_attempts() {
        let iso = isolation();
        let now = start();
        assert_eq!(iso.park_limit("a", Duration::from_secs(2)), usize::MAX, "pace unknown");
        assert_eq!(iso.admit("a", now), Gate::Go);
        assert_eq!(iso.admit("a", now), Gate::Go);
        iso.finish_and_release("a", true, Duration::from_secs(1), now);
        // 1 s an attempt, 2 at once: 4 go within 2 s.
        assert_eq!(iso.park_limit("a", Duration::from_secs(2)), 4);
        // A quicker attempt moves the average a fifth of the way: 800 ms, 2 per slot.
        assert_eq!(iso.admit("a", now), Gate::Go);
        iso.finish_and_release("a", true, Duration::from_millis(1), now);
        assert_eq!(iso.park_limit("a", Duration::from_secs(2)), 4);
        assert_eq!(iso.park_limit("b", Duration::from_secs(2)), usize::MAX, "another webhook's pace is its own");
        // Healthy and idle: forgotten, pace unknown again.
        iso.finish_and_release("a", true, Duration::from_millis(1), now);
        assert_eq!(iso.park_limit("a", Duration::from_secs(2)), usize::MAX);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let iso = isolation();
        let t = start();
        for success in [false, false, true, false, false] {
            assert_eq!(iso.admit("a", t), Gate::Go);
            assert_eq!(iso.finish("a", success, t), None, "never three failures in a row");
        }
        assert_eq!(iso.circuit("a"), Circuit::Closed);
    }

    #[test]
    fn a_webhook_failing_for_too_long_is_to_be_disabled() {
        let iso = Isolation::new(Settings {
            max_in_flight: 4,
            failures_to_open: 1000,
            cooldown: Duration::from_secs(30),
            auto_disable_after: Some(Duration::from_secs(3600)),
        });
        let t0 = start();
        assert_eq!(iso.admit("a", t0), Gate::Go);
        assert_eq!(iso.finish("a", false, t0), None);
        // A success in between restarts the clock.
        assert_eq!(iso.admit("a", t0), Gate::Go);
        assert_eq!(iso.finish("a", true, t0 + Duration::from_secs(1800)), None);
        let t1 = t0 + Duration::from_secs(2000);
        assert_eq!(iso.admit("a", t1), Gate::Go);
        assert_eq!(iso.finish("a", false, t1), None);
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(iso.admit("a", t2), Gate::Go);
        assert_eq!(iso.finish("a", false, t2), Some(Transition::FailingTooLong { failures: 2, since: Duration::from_secs(3600) }));
    }

    #[test]
    fn cool_downs_are_capped() {
        let iso = Isolation::new(Settings {
            max_in_flight: 1,
            failures_to_open: 1,
            cooldown: Duration::from_secs(300),
            auto_disable_after: None,
        });
        let mut t = start();
        assert_eq!(iso.admit("a", t), Gate::Go);
        iso.finish("a", false, t);
        for _ in 0..5 {
            t += Duration::from_secs(3600);
            assert_eq!(iso.admit("a", t), Gate::Go);
            iso.finish("a", false, t);
        }
        match iso.circuit("a") {
            Circuit::Open { cooldown, .. } => assert_eq!(cooldown, Duration::from_secs(600)),
            other => panic!("expected open, got {other:?}"),
        }
    }
}
