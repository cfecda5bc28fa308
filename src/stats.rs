//! Per-webhook delivery statistics shared by every instance, for `WebhookService/GetWebhookStats`:
//! attempts that succeeded and failed and dead letters, per minute; the last success; the last
//! failure and its error; the last circuit change any instance saw.
//!
//! Key (prefix `P`): `P stats:webhook:<id>`, one hash per webhook:
//!
//! | field | value |
//! |---|---|
//! | `s:<minute>`, `f:<minute>`, `d:<minute>` | attempts succeeded, attempts failed, dead letters in that minute (`<minute>` = Unix ms ÷ 60,000) |
//! | `ok_at` | when the last successful attempt ended (Unix ms) |
//! | `fail_at`, `fail_code`, `fail_kind`, `fail_err` | the last failed attempt: when it ended, its HTTP status (0 without a response), its error class (`http_status`, `connect`, `timeout`, …) and message (at most [`MAX_ERROR_CHARS`]) |
//! | `circuit`, `circuit_at`, `circuit_until`, `circuit_by` | the last circuit change: `open`, `half_open` or `closed`, when, until when an opened one holds attempts back, and the instance (consumer name) that saw it |
//! | `rate_limited` | deliveries that were due and had to wait for the webhook's rate limit, in all (`HINCRBY` by the backlog's take script, each delivery counted once) |
//!
//! **Writing.** The outcome stage adds each attempt and dead letter to a [`Tally`] in memory and
//! writes the tally inside one of its batch transactions (`MULTI … EXEC`) at most once per
//! [`WRITE_EVERY`] — no round trip of its own, and a cost that grows with the webhooks that had
//! traffic, not with the deliveries: per webhook and write, one `HINCRBY` per non-zero count of
//! each minute, one `HSET` of the last times, one `EXPIRE`; once a minute also one `HDEL` of the
//! buckets that left the retention. Counts are added (`HINCRBY`), so instances never overwrite
//! each other's; last times and the circuit change are set (`HSET`), so the last write wins.
//! A crash loses at most the last second's figures; the deliveries themselves are unaffected.
//!
//! **Bounded.** Buckets older than [`KEPT_MINUTES`] are deleted by the writers (each instance,
//! once a minute per webhook, deletes those that aged out since its previous trim) and by
//! readers (whatever stale bucket a read sees); the key expires [`KEY_TTL`] after its last write.
//! Deleting a webhook (or its tenant) deletes its key in the same transaction; a completion
//! another instance records in the quarter second before its routing snapshot drops the webhook
//! can write the key again, and that key then expires after [`KEY_TTL`].
//!
//! **Reading.** One `HGETALL`; the counts of the buckets that overlap the window are summed
//! ([`summarize`]), so a window of `n` minutes covers the last `n` minutes and at most one more.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use crate::redis_conn::Conn;
use redis::{Pipeline, RedisResult};

use crate::{deadletter::AttemptRecord, keys::Keys, pipeline::isolation::CircuitState};

/// The field counting deliveries held back by the webhook's rate limit (a total, not per minute).
pub const RATE_LIMITED_FIELD: &str = "rate_limited";

/// One bucket's span.
pub const BUCKET_MS: u64 = 60_000;
/// The longest window a read may ask for.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// The shortest: one bucket.
pub const MIN_WINDOW: Duration = Duration::from_secs(60);
/// The window when a read names none.
pub const DEFAULT_WINDOW: Duration = MAX_WINDOW;
/// Buckets kept: every minute the longest window overlaps (60, and the minute in progress).
pub const KEPT_MINUTES: u64 = MAX_WINDOW.as_secs() / 60 + 1;
/// How far back an instance's first trim of a webhook reaches, in minutes past the retention,
/// so that buckets an earlier process left behind are deleted too.
const FIRST_TRIM_MINUTES: u64 = 180;
/// The key expires this long after its last write (last times stay readable that long).
pub const KEY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the outcome stage writes its tally: the figures lag by at most this much.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);
/// Longest stored error message, in characters.
pub const MAX_ERROR_CHARS: usize = 256;

/// The minute bucket of a time in Unix ms.
pub fn minute_of(ms: u64) -> u64 {
    ms / BUCKET_MS
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub succeeded: u64,
    pub failed: u64,
    pub dead_letters: u64,
}

/// A failed attempt as the stats keep it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failure {
    pub at_ms: u64,
    /// HTTP status; 0 when no response arrived.
    pub status: u16,
    pub kind: String,
    pub error: String,
}

/// A circuit change as the stats keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitRecord {
    pub state: CircuitState,
    pub at_ms: u64,
    /// For `Open`: when the probe may go; 0 otherwise.
    pub open_until_ms: u64,
    /// The instance (consumer name) that saw it.
    pub instance: String,
}

fn state_of(name: &str) -> Option<CircuitState> {
    match name {
        "closed" => Some(CircuitState::Closed),
        "open" => Some(CircuitState::Open),
        "half_open" => Some(CircuitState::HalfOpen),
        _ => None,
    }
}

/// `text` cut to [`MAX_ERROR_CHARS`] characters, with `…` when cut.
fn capped(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

// ---- writing ----

#[derive(Debug, Default)]
struct WebhookTally {
    buckets: BTreeMap<u64, Counts>,
    last_success_ms: u64,
    last_failure: Option<Failure>,
    circuit: Option<CircuitRecord>,
}

/// What the outcome stage saw since its last write, per webhook.
#[derive(Debug, Default)]
pub struct Tally {
    webhooks: HashMap<String, WebhookTally>,
}

impl Tally {
    fn of(&mut self, webhook: &str) -> &mut WebhookTally {
        if !self.webhooks.contains_key(webhook) {
            self.webhooks.insert(webhook.to_owned(), WebhookTally::default());
        }
        self.webhooks.get_mut(webhook).expect("just inserted")
    }

    /// An attempt ended: counted in the minute it ended, and remembered as the last success or
    /// failure when it is the latest.
    pub fn attempt(&mut self, webhook: &str, record: &AttemptRecord, succeeded: bool) {
        let ended_ms = record.started_at_ms + record.duration_ms;
        let tally = self.of(webhook);
        let counts = tally.buckets.entry(minute_of(ended_ms)).or_default();
        if succeeded {
            counts.succeeded += 1;
            tally.last_success_ms = tally.last_success_ms.max(ended_ms);
        } else {
            counts.failed += 1;
            if tally.last_failure.as_ref().is_none_or(|f| f.at_ms <= ended_ms) {
                tally.last_failure = Some(Failure {
                    at_ms: ended_ms,
                    status: record.status,
                    kind: record.error_kind.to_string(),
                    error: capped(&record.error),
                });
            }
        }
    }

    /// A delivery of `webhook` was dead-lettered at `at_ms`.
    pub fn dead_letter(&mut self, webhook: &str, at_ms: u64) {
        self.of(webhook).buckets.entry(minute_of(at_ms)).or_default().dead_letters += 1;
    }

    /// `webhook`'s circuit changed; a later change replaces an earlier one.
    pub fn circuit(&mut self, webhook: &str, record: CircuitRecord) {
        self.of(webhook).circuit = Some(record);
    }

    /// Keeps only the webhooks `keep` says still exist.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.webhooks.retain(|webhook, _| keep(webhook));
    }

    pub fn is_empty(&self) -> bool {
        self.webhooks.is_empty()
    }

    pub fn clear(&mut self) {
        self.webhooks.clear();
    }
}

/// When this instance last trimmed each webhook's buckets (a minute number).
#[derive(Debug, Default)]
pub struct Trims {
    last: HashMap<String, u64>,
    /// The minute the map was last pruned of webhooks idle for longer than a first trim reaches.
    pruned: u64,
}

impl Trims {
    /// The minutes whose buckets to delete now, if this webhook's trim is due (once a minute).
    fn due(&mut self, webhook: &str, minute: u64) -> Option<std::ops::RangeInclusive<u64>> {
        let newest_stale = minute.checked_sub(KEPT_MINUTES)?;
        let oldest = newest_stale.saturating_sub(FIRST_TRIM_MINUTES - 1);
        let from = match self.last.get(webhook) {
            Some(&last) if last >= minute => return None,
            // Everything that was stale at the last trim is gone already.
            Some(&last) => (last + 1).saturating_sub(KEPT_MINUTES).max(oldest),
            None => oldest,
        };
        self.last.insert(webhook.to_owned(), minute);
        Some(from..=newest_stale)
    }

    /// Forgets webhooks not trimmed for longer than a first trim reaches (they are trimmed as
    /// new next time), once a minute, so that the map holds only webhooks with recent traffic.
    fn prune(&mut self, minute: u64) {
        if self.pruned == minute {
            return;
        }
        self.pruned = minute;
        self.last.retain(|_, last| *last + FIRST_TRIM_MINUTES > minute);
    }
}

/// Queues the tally's writes on `pipe` (see the module docs for the commands), as of `now_ms`.
pub fn queue_writes(pipe: &mut Pipeline, keys: &Keys, tally: &Tally, trims: &mut Trims, now_ms: u64, ttl: Duration) {
    let minute = minute_of(now_ms);
    trims.prune(minute);
    let mut webhooks: Vec<(&String, &WebhookTally)> = tally.webhooks.iter().collect();
    webhooks.sort_by(|a, b| a.0.cmp(b.0)); // a fixed order of commands
    for (webhook, t) in webhooks {
        let key = keys.webhook_stats(webhook);
        for (m, counts) in &t.buckets {
            for (kind, n) in [("s", counts.succeeded), ("f", counts.failed), ("d", counts.dead_letters)] {
                if n > 0 {
                    pipe.hincr(&key, format!("{kind}:{m}"), n).ignore();
                }
            }
        }
        let mut fields: Vec<(&str, String)> = Vec::new();
        if t.last_success_ms > 0 {
            fields.push(("ok_at", t.last_success_ms.to_string()));
        }
        if let Some(f) = &t.last_failure {
            fields.push(("fail_at", f.at_ms.to_string()));
            fields.push(("fail_code", f.status.to_string()));
            fields.push(("fail_kind", f.kind.clone()));
            fields.push(("fail_err", f.error.clone()));
        }
        if let Some(c) = &t.circuit {
            fields.push(("circuit", CircuitState::as_str(c.state).to_owned()));
            fields.push(("circuit_at", c.at_ms.to_string()));
            fields.push(("circuit_until", c.open_until_ms.to_string()));
            fields.push(("circuit_by", c.instance.clone()));
        }
        if !fields.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            for (field, value) in &fields {
                hset.arg(*field).arg(value);
            }
            pipe.add_command(hset).ignore();
        }
        if let Some(stale) = trims.due(webhook, minute) {
            let doomed: Vec<String> = stale.flat_map(|m| ["s", "f", "d"].map(|kind| format!("{kind}:{m}"))).collect();
            pipe.hdel(&key, doomed).ignore();
        }
        pipe.expire(&key, ttl.as_secs() as i64).ignore();
    }
}

// ---- reading ----

/// A webhook's stored stats, as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// Counts by minute.
    pub buckets: BTreeMap<u64, Counts>,
    pub last_success_ms: u64,
    pub last_failure: Option<Failure>,
    pub last_circuit_change: Option<CircuitRecord>,
    /// Deliveries that were due and waited for the webhook's rate limit, in all (written by the
    /// backlog's take script, `crate::pipeline::backlog`).
    pub rate_limited: u64,
}

/// The fields of a stats hash; also names the bucket fields older than the retention at
/// `now_ms` (for deletion). Fields it does not know are ignored.
pub fn parse(fields: Vec<(String, String)>, now_ms: u64) -> (Stored, Vec<String>) {
    let oldest_kept = minute_of(now_ms).saturating_sub(KEPT_MINUTES - 1);
    let mut stored = Stored::default();
    let mut stale = Vec::new();
    let mut failure = Failure::default();
    let (mut circuit, mut circuit_at, mut circuit_until, mut circuit_by) = (None, 0, 0, String::new());
    let number = |v: &str| v.parse::<u64>().unwrap_or(0);
    for (name, value) in fields {
        if let Some((kind, minute)) = name.split_once(':') {
            let Ok(minute) = minute.parse::<u64>() else { continue };
            if minute < oldest_kept {
                stale.push(name);
                continue;
            }
            let counts = stored.buckets.entry(minute).or_default();
            match kind {
                "s" => counts.succeeded += number(&value),
                "f" => counts.failed += number(&value),
                "d" => counts.dead_letters += number(&value),
                _ => {}
            }
            continue;
        }
        match name.as_str() {
            "ok_at" => stored.last_success_ms = number(&value),
            "fail_at" => failure.at_ms = number(&value),
            "fail_code" => failure.status = value.parse().unwrap_or(0),
            "fail_kind" => failure.kind = value,
            "fail_err" => failure.error = value,
            "circuit" => circuit = state_of(&value),
            "circuit_at" => circuit_at = number(&value),
            "circuit_until" => circuit_until = number(&value),
            "circuit_by" => circuit_by = value,
            RATE_LIMITED_FIELD => stored.rate_limited = number(&value),
            _ => {}
        }
    }
    if failure.at_ms > 0 {
        stored.last_failure = Some(failure);
    }
    stored.last_circuit_change =
        circuit.map(|state| CircuitRecord { state, at_ms: circuit_at, open_until_ms: circuit_until, instance: circuit_by });
    (stored, stale)
}

/// The window a read covers, in whole minutes: `window` rounded up.
pub fn window_minutes(window: Duration) -> u64 {
    window.as_millis().div_ceil(u128::from(BUCKET_MS)) as u64
}

/// The counts of the buckets overlapping the `window` before `now_ms`: the window's whole
/// minutes, plus the minute it starts in.
pub fn summarize(stored: &Stored, now_ms: u64, window: Duration) -> Counts {
    let newest = minute_of(now_ms);
    let oldest = newest.saturating_sub(window_minutes(window));
    stored.buckets.range(oldest..=newest).fold(Counts::default(), |sum, (_, c)| Counts {
        succeeded: sum.succeeded + c.succeeded,
        failed: sum.failed + c.failed,
        dead_letters: sum.dead_letters + c.dead_letters,
    })
}

/// Succeeded ÷ all attempts, from 0 to 1; `None` when there were none (no rate, rather than a
/// made-up 0 or 1).
pub fn success_rate(counts: &Counts) -> Option<f64> {
    let attempts = counts.succeeded + counts.failed;
    (attempts > 0).then(|| counts.succeeded as f64 / attempts as f64)
}

/// Reads `webhook`'s stats (empty when it has none) and deletes the stale buckets it saw.
pub fn read(con: &mut Conn, keys: &Keys, webhook: &str, now_ms: u64) -> RedisResult<Stored> {
    Ok(read_many(con, keys, &[webhook], now_ms)?.pop().unwrap_or_default())
}

/// [`read`] for several webhooks in one round trip (the status page reads every webhook's).
pub fn read_many(con: &mut Conn, keys: &Keys, webhooks: &[&str], now_ms: u64) -> RedisResult<Vec<Stored>> {
    let mut pipe = redis::pipe();
    for webhook in webhooks {
        pipe.cmd("HGETALL").arg(keys.webhook_stats(webhook));
    }
    let replies: Vec<Vec<(String, String)>> = pipe.query(con)?;
    let mut stale_deletes = redis::pipe();
    let mut stored = Vec::with_capacity(replies.len());
    for (webhook, fields) in webhooks.iter().zip(replies) {
        let (one, stale) = parse(fields, now_ms);
        if !stale.is_empty() {
            stale_deletes.cmd("HDEL").arg(keys.webhook_stats(webhook)).arg(stale).ignore();
        }
        stored.push(one);
    }
    if !stale_deletes.is_empty() {
        stale_deletes.exec(con)?;
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::pipeline_commands;

    const T: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a minute boundary
    const M: u64 = T / BUCKET_MS;

    fn attempt(ended_ms: u64, status: u16, error: &str) -> AttemptRecord {
        AttemptRecord {
            attempt: 1,
            started_at_ms: ended_ms - 10,
            duration_ms: 10,
            status,
            error_kind: if error.is_empty() { crate::deadletter::ErrorKind::None } else { crate::deadletter::ErrorKind::HttpStatus },
            error: error.into(),
            response_excerpt: String::new(),
        }
    }

    #[test]
    fn a_batch_is_one_increment_per_webhook_bucket_and_count() {
        let keys = Keys::new("p:");
        let mut tally = Tally::default();
        for i in 0..50 {
            tally.attempt("wh_a", &attempt(T + 1000 + i, 200, ""), true);
        }
        tally.attempt("wh_a", &attempt(T + 5000, 500, "HTTP 500 Internal Server Error"), false);
        tally.attempt("wh_a", &attempt(T + 4000, 502, "HTTP 502 Bad Gateway"), false); // earlier: not the last
        tally.attempt("wh_b", &attempt(T + 61_000, 200, ""), true);
        tally.dead_letter("wh_a", T + 6000);
        let mut trims = Trims::default();
        trims.last.insert("wh_a".into(), M); // already trimmed this minute
        trims.last.insert("wh_b".into(), M);
        trims.pruned = M;
        let mut pipe = redis::pipe();
        queue_writes(&mut pipe, &keys, &tally, &mut trims, T + 7000, KEY_TTL);
        assert_eq!(
            pipeline_commands(&pipe),
            [
                format!("HINCRBY p:stats:webhook:wh_a s:{M} 50"),
                format!("HINCRBY p:stats:webhook:wh_a f:{M} 2"),
                format!("HINCRBY p:stats:webhook:wh_a d:{M} 1"),
                format!("HSET p:stats:webhook:wh_a ok_at {} fail_at {} fail_code 500 fail_kind http_status fail_err HTTP 500 Internal Server Error", T + 1049, T + 5000),
                "EXPIRE p:stats:webhook:wh_a 604800".to_owned(),
                format!("HINCRBY p:stats:webhook:wh_b s:{} 1", M + 1),
                format!("HSET p:stats:webhook:wh_b ok_at {}", T + 61_000),
                "EXPIRE p:stats:webhook:wh_b 604800".to_owned(),
            ]
        );
    }

    #[test]
    fn trims_delete_what_aged_out_since_the_last_one_once_a_minute() {
        let mut trims = Trims::default();
        let first = trims.due("wh", M).unwrap();
        assert_eq!(first, (M - KEPT_MINUTES - FIRST_TRIM_MINUTES + 1)..=(M - KEPT_MINUTES), "a first trim reaches back");
        assert_eq!(trims.due("wh", M), None, "once a minute");
        assert_eq!(trims.due("wh", M + 1).unwrap(), (M + 1 - KEPT_MINUTES)..=(M + 1 - KEPT_MINUTES));
        assert_eq!(trims.due("wh", M + 4).unwrap(), (M + 2 - KEPT_MINUTES)..=(M + 4 - KEPT_MINUTES), "the minutes skipped too");
        assert_eq!(trims.due("wh", M + 1000).unwrap().count() as u64, FIRST_TRIM_MINUTES, "never more than a first trim");

        let mut pipe = redis::pipe();
        let mut tally = Tally::default();
        tally.attempt("wh_c", &attempt(T, 200, ""), true);
        queue_writes(&mut pipe, &Keys::new("p:"), &tally, &mut trims, T, KEY_TTL);
        let hdel = pipeline_commands(&pipe).into_iter().find(|c| c.starts_with("HDEL")).expect("a new webhook is trimmed");
        assert!(
            hdel.starts_with(&format!("HDEL p:stats:webhook:wh_c s:{} f:{0} d:{0} ", M - KEPT_MINUTES - FIRST_TRIM_MINUTES + 1)),
            "{hdel}"
        );
        assert_eq!(hdel.split(' ').count() as u64, 2 + 3 * FIRST_TRIM_MINUTES);

        trims.prune(M + FIRST_TRIM_MINUTES + 1);
        assert!(!trims.last.contains_key("wh_c"), "idle webhooks are forgotten");
    }

    #[test]
    fn stored_fields_read_back_and_stale_buckets_are_named() {
        let now = T + 30_000;
        let fields = [
            (format!("s:{M}"), "7"),
            (format!("f:{M}"), "3"),
            (format!("d:{}", M - 1), "1"),
            (format!("s:{}", M - 60), "2"),   // the oldest kept
            (format!("s:{}", M - 61), "100"), // stale
            ("ok_at".into(), "1767225599000"),
            ("fail_at".into(), "1767225598000"),
            ("fail_code".into(), "0"),
            ("fail_kind".into(), "connect"),
            ("fail_err".into(), "connection refused"),
            ("circuit".into(), "open"),
            ("circuit_at".into(), "1767225597000"),
            ("circuit_until".into(), "1767225627000"),
            ("circuit_by".into(), "host-1"),
            ("something:else".into(), "x"),
        ];
        let (stored, stale) = parse(fields.into_iter().map(|(k, v)| (k, v.to_owned())).collect(), now);
        assert_eq!(stale, [format!("s:{}", M - 61)]);
        assert_eq!(stored.buckets.len(), 3);
        assert_eq!(stored.last_success_ms, 1_767_225_599_000);
        assert_eq!(
            stored.last_failure,
            Some(Failure { at_ms: 1_767_225_598_000, status: 0, kind: "connect".into(), error: "connection refused".into() })
        );
        assert_eq!(
            stored.last_circuit_change,
            Some(CircuitRecord {
                state: CircuitState::Open,
                at_ms: 1_767_225_597_000,
                open_until_ms: 1_767_225_627_000,
                instance: "host-1".into()
            })
        );
        assert_eq!(parse(Vec::new(), now), (Stored::default(), Vec::new()), "no key: no stats");

        // Windows: the buckets overlapping it.
        let hour = summarize(&stored, now, DEFAULT_WINDOW);
        assert_eq!(hour, Counts { succeeded: 9, failed: 3, dead_letters: 1 });
        assert_eq!(summarize(&stored, now, Duration::from_secs(60)), Counts { succeeded: 7, failed: 3, dead_letters: 1 });
        assert_eq!(summarize(&stored, now, Duration::from_secs(61)), summarize(&stored, now, Duration::from_secs(120)), "whole minutes");
        assert_eq!(summarize(&stored, now + 120_000, Duration::from_secs(60)), Counts::default(), "old buckets leave short windows");
    }

    #[test]
    fn success_rates_need_attempts() {
        assert_eq!(success_rate(&Counts { succeeded: 3, failed: 1, dead_letters: 0 }), Some(0.75));
        assert_eq!(success_rate(&Counts { succeeded: 0, failed: 4, dead_letters: 4 }), Some(0.0));
        assert_eq!(success_rate(&Counts { succeeded: 5, failed: 0, dead_letters: 0 }), Some(1.0));
        assert_eq!(success_rate(&Counts { succeeded: 0, failed: 0, dead_letters: 2 }), None);
    }

    #[test]
    fn window_minutes_round_up_and_errors_are_capped() {
        assert_eq!(window_minutes(Duration::from_secs(60)), 1);
        assert_eq!(window_minutes(Duration::from_millis(60_001)), 2);
        assert_eq!(window_minutes(MAX_WINDOW), 60);
        let long = "é".repeat(MAX_ERROR_CHARS + 5);
        let cut = capped(&long);
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(capped("short"), "short");
    }
}
