//! The outcome decision: what becomes of a delivery after one attempt, as a pure function of the
//! attempt (its number, its verdict, the change it caused to its webhook's circuit), the retry
//! policy and the time. The outcome stage (`super::outcomes`) asks [`decide`] and then does what
//! the [`Step`] says — logs, counts, writes to Redis — so that the rules can be read and tested
//! here, over every case, without Redis or a running pipeline.
//!
//! The rules (docs/contract.md §2, §4, §6):
//! - a 2xx delivers;
//! - `410 Gone` dead-letters (`gone`) and disables the webhook, whatever attempts are left;
//! - any other failure retries while the policy has attempts left: due after the policy's delay
//!   for this attempt's number (`crate::retry`, spread by the jitter draw), or after the
//!   receiver's `Retry-After` capped by the policy — never an extra attempt. Every retry waits
//!   in the durable backlog (`super::backlog`): none is held in memory, so none is lost in a
//!   crash;
//! - the failure of the last attempt dead-letters (`max_attempts_exhausted`).
//!
//! The circuit changes themselves are made by the sender the moment the attempt ends
//! (`super::isolation`, so that the slot is free at once); the decision only says what they ask
//! of the outcome stage: to log an opened or closed circuit, and to disable a webhook whose
//! attempts have all failed for too long. A circuit change never alters the delivery's own
//! step: an opened circuit delays the *next* deliveries (the signer postpones them), not the
//! retry time of this one.

use std::time::Duration;

use super::{isolation::Transition, messages::Verdict};
use crate::{deadletter::Reason, domain::model::RetryPolicy, retry::next_delay};

/// One attempt as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attempt {
    /// Its number, from 1.
    pub number: u32,
    pub verdict: Verdict,
    /// How it changed its webhook's circuit (`super::isolation::Isolation::finish_and_release`).
    pub transition: Option<Transition>,
}

/// What the outcome stage does after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub next: Next,
    /// A circuit change to log (already applied by the sender).
    pub circuit: Option<Transition>,
    /// Disable the webhook, and why.
    pub disable: Option<Disable>,
    /// Once it is disabled, let the signer release what it parked for the webhook (to be
    /// dead-lettered as `webhook_disabled`): the sender did not, for a webhook failing too long,
    /// so that those deliveries are not attempted again first (`super::sender`).
    pub release_parked: bool,
}

/// What becomes of the delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Delivered: its share of the entry is done.
    Delivered,
    /// Attempted again, as attempt `number + 1`, from the durable backlog: due at `due_ms` (ms
    /// since the Unix epoch), `delay` from now.
    Retry { delay: Duration, due_ms: u64 },
    /// Dead-lettered, with this reason (`gone` or `max_attempts_exhausted`).
    DeadLetter(Reason),
}

/// Why a webhook is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disable {
    /// Its receiver answered `410 Gone`.
    Gone,
    /// All its attempts failed for `since` (`WSS_AUTO_DISABLE_AFTER`), `failures` in a row.
    FailingTooLong { failures: u32, since: Duration },
}

impl Disable {
    /// The reason stored on the webhook (`disabled_reason`, shown by `GetWebhook`): what
    /// happened and how to undo it.
    pub fn reason(&self) -> String {
        match self {
            Disable::Gone => "the receiver answered 410 Gone".to_owned(),
            Disable::FailingTooLong { failures, since } => format!(
                "every attempt failed for {} ({failures} in a row; WSS_AUTO_DISABLE_AFTER); re-enable with UpdateWebhook enabled=true",
                humantime::format_duration(Duration::from_secs(since.as_secs()))
            ),
        }
    }
}

/// The decision after `attempt` under `policy`, at `now_ms` (ms since the Unix epoch). `draw`
/// gives the jitter draw in [-1, 1] (`crate::retry::random_draw`); it is called only when a
/// retry's delay is computed, so a delivered attempt costs no random number.
pub fn decide(attempt: Attempt, policy: &RetryPolicy, now_ms: u64, draw: impl FnOnce() -> f64) -> Step {
    let (circuit, failing_too_long) = match attempt.transition {
        Some(Transition::FailingTooLong { failures, since }) => (None, Some(Disable::FailingTooLong { failures, since })),
        other => (other, None),
    };
    let next = match attempt.verdict {
        Verdict::Delivered => Next::Delivered,
        Verdict::Gone => Next::DeadLetter(Reason::Gone),
        Verdict::Retry { retry_after } if attempt.number < policy.max_attempts => {
            let delay = next_delay(policy, attempt.number, retry_after, draw());
            Next::Retry { delay, due_ms: now_ms.saturating_add(delay.as_millis() as u64) }
        }
        Verdict::Retry { .. } => Next::DeadLetter(Reason::MaxAttemptsExhausted),
    };
    // A 410 while the webhook was also failing too long: one disabling, for the 410 (the
    // reason the webhook was left with before, when both were written in turn).
    let disable = if next == Next::DeadLetter(Reason::Gone) { Some(Disable::Gone) } else { failing_too_long };
    Step { next, circuit, disable, release_parked: failing_too_long.is_some() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn policy() -> RetryPolicy {
        RetryPolicy::builtin_default() // 8 attempts, 5 s × 5 up to 10 h, jitter 0.2
    }

    const FAILED: Verdict = Verdict::Retry { retry_after: None };
    const OPENED: Transition = Transition::Opened { failures: 5, cooldown: Duration::from_secs(30) };
    const TOO_LONG: Transition = Transition::FailingTooLong { failures: 40, since: Duration::from_secs(7200) };

    fn asked(secs: u64) -> Verdict {
        Verdict::Retry { retry_after: Some(Duration::from_secs(secs)) }
    }

    fn attempt(number: u32, verdict: Verdict) -> Attempt {
        Attempt { number, verdict, transition: None }
    }

    /// The delivery's fate over verdicts × attempt numbers (first, middle, last but one, last,
    /// past the last: a policy lowered while the delivery waited) × draws, with no circuit change.
    #[test]
    fn each_verdict_and_attempt_number_has_its_next_step() {
        let secs = Duration::from_secs;
        let clock = ManualClock::new(1_767_225_600_000);
        let now = clock.now_ms();
        let retry = |delay: Duration| Next::Retry { delay, due_ms: now + delay.as_millis() as u64 };
        let dead = Next::DeadLetter(Reason::MaxAttemptsExhausted);
        #[rustfmt::skip]
        let table: &[(u32, Verdict, f64, Next)] = &[
            // a 2xx delivers, on any attempt, even past the last
            (1, Verdict::Delivered, 0.0, Next::Delivered),
            (4, Verdict::Delivered, 0.0, Next::Delivered),
            (8, Verdict::Delivered, 0.0, Next::Delivered),
            (9, Verdict::Delivered, 0.0, Next::Delivered),
            // 410 ends it on any attempt
            (1, Verdict::Gone, 0.0, Next::DeadLetter(Reason::Gone)),
            (7, Verdict::Gone, 0.0, Next::DeadLetter(Reason::Gone)),
            (8, Verdict::Gone, 0.0, Next::DeadLetter(Reason::Gone)),
            // a failure waits initial × multiplier^(n-1), capped at 10 h, then the 8th is the last
            (1, FAILED, 0.0, retry(secs(5))),
            (2, FAILED, 0.0, retry(secs(25))),
            (3, FAILED, 0.0, retry(secs(125))),
            (4, FAILED, 0.0, retry(secs(625))),
            (5, FAILED, 0.0, retry(secs(3125))),
            (6, FAILED, 0.0, retry(secs(15625))),
            (7, FAILED, 0.0, retry(secs(36000))),
            (8, FAILED, 0.0, dead),
            (9, FAILED, 0.0, dead),
            // the draw spreads the delay by the jitter (20 %) both ways, never past the cap
            (1, FAILED, 1.0, retry(secs(6))),
            (1, FAILED, -1.0, retry(secs(4))),
            (2, FAILED, -1.0, retry(secs(20))),
            (7, FAILED, 1.0, retry(secs(36000))),
            (7, FAILED, -1.0, retry(secs(28800))),
            // Retry-After replaces the delay, without jitter, within the cap; it adds no attempt
            (1, asked(90), 1.0, retry(secs(90))),
            (1, asked(0), 0.0, retry(secs(0))),
            (3, asked(100_000), 0.0, retry(secs(36000))),
            (7, asked(1), -1.0, retry(secs(1))),
            (8, asked(1), 0.0, dead),
        ];
        for &(number, verdict, draw, expected) in table {
            let step = decide(attempt(number, verdict), &policy(), now, || draw);
            let disable = (verdict == Verdict::Gone).then_some(Disable::Gone);
            assert_eq!(
                step,
                Step { next: expected, circuit: None, disable, release_parked: false },
                "attempt {number}, {verdict:?}, draw {draw}"
            );
        }
    }

    #[test]
    fn due_times_follow_the_clock() {
        let clock = ManualClock::new(1_000_000);
        let p = policy();
        assert_eq!(
            decide(attempt(1, FAILED), &p, clock.now_ms(), || 0.0).next,
            Next::Retry { delay: Duration::from_secs(5), due_ms: 1_005_000 }
        );
        clock.advance(Duration::from_millis(2_500));
        assert_eq!(
            decide(attempt(2, FAILED), &p, clock.now_ms(), || 0.0).next,
            Next::Retry { delay: Duration::from_secs(25), due_ms: 1_027_500 }
        );
        assert_eq!(
            decide(attempt(1, FAILED), &p, u64::MAX - 1, || 0.0).next,
            Next::Retry { delay: Duration::from_secs(5), due_ms: u64::MAX },
            "a due time saturates"
        );
    }

    #[test]
    fn the_policy_sets_the_last_attempt() {
        let mut once = policy();
        once.max_attempts = 1;
        assert_eq!(decide(attempt(1, FAILED), &once, 0, || 0.0).next, Next::DeadLetter(Reason::MaxAttemptsExhausted));
        assert_eq!(decide(attempt(1, asked(5)), &once, 0, || 0.0).next, Next::DeadLetter(Reason::MaxAttemptsExhausted));
        let mut flat = policy();
        (flat.max_attempts, flat.multiplier, flat.jitter) = (3, 1.0, 0.0);
        let nexts: Vec<Next> = (1..=3).map(|n| decide(attempt(n, FAILED), &flat, 0, || 1.0).next).collect();
        let five = Next::Retry { delay: Duration::from_secs(5), due_ms: 5_000 };
        assert_eq!(nexts, [five, five, Next::DeadLetter(Reason::MaxAttemptsExhausted)]);
    }

    #[test]
    fn the_draw_is_taken_only_for_a_computed_delay() {
        let p = policy();
        let no_draw = || -> f64 { panic!("no jitter is drawn here") };
        decide(attempt(1, Verdict::Delivered), &p, 0, no_draw);
        decide(attempt(1, Verdict::Gone), &p, 0, no_draw);
        decide(attempt(8, FAILED), &p, 0, no_draw);
        let mut drawn = false;
        decide(attempt(1, FAILED), &p, 0, || {
            drawn = true;
            0.0
        });
        assert!(drawn);
    }

    /// The whole matrix again with each circuit change: the change is passed on to be logged,
    /// or turned into a disabling, and never alters the delivery's own next step.
    #[test]
    fn circuit_changes_are_passed_on_and_never_change_the_delivery_s_step() {
        let p = policy();
        let verdicts = [Verdict::Delivered, Verdict::Gone, FAILED, asked(60)];
        let transitions = [None, Some(OPENED), Some(Transition::Closed), Some(TOO_LONG)];
        for number in [1, 2, 7, 8, 9] {
            for verdict in verdicts {
                let alone = decide(attempt(number, verdict), &p, 1_000, || 0.5);
                for transition in transitions {
                    let step = decide(Attempt { number, verdict, transition }, &p, 1_000, || 0.5);
                    let case = format!("attempt {number}, {verdict:?}, {transition:?}");
                    assert_eq!(step.next, alone.next, "{case}");
                    let (circuit, disable) = match (verdict, transition) {
                        (Verdict::Gone, Some(TOO_LONG)) => (None, Some(Disable::Gone)),
                        (Verdict::Gone, other) => (other, Some(Disable::Gone)),
                        (_, Some(TOO_LONG)) => (None, Some(Disable::FailingTooLong { failures: 40, since: Duration::from_secs(7200) })),
                        (_, other) => (other, None),
                    };
                    assert_eq!((step.circuit, step.disable), (circuit, disable), "{case}");
                    assert_eq!(step.release_parked, transition == Some(TOO_LONG), "{case}");
                }
            }
        }
    }

    #[test]
    fn disabling_reasons_say_what_happened_and_how_to_undo_it() {
        assert_eq!(Disable::Gone.reason(), "the receiver answered 410 Gone");
        let too_long = Disable::FailingTooLong { failures: 40, since: Duration::from_millis(7_200_900) };
        assert_eq!(
            too_long.reason(),
            "every attempt failed for 2h (40 in a row; WSS_AUTO_DISABLE_AFTER); re-enable with UpdateWebhook enabled=true"
        );
    }
}
