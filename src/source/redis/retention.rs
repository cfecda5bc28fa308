//! Stream retention: a thread of its own (`wss-retention`) that trims `<prefix>events` of
//! entries every consumer group is done with, once they are older than `WSS_STREAM_RETENTION`
//! (default 24 h; `off`: the thread is not started and trimming is left to producers). docs/contract.md §6.
//!
//! Without it the stream grows for ever, and a producer that caps it with `MAXLEN` can trim away
//! entries still pending, which wss then dead-letters as `entry_deleted`. Trimming here is safe
//! by construction: the trim point is the smallest of
//!
//! - the age limit: `<now − retention>-0`, so only entries older than the retention go;
//! - for every consumer group of the stream (not only `wss`: an audit or analytics group a
//!   team added keeps its entries too), its oldest pending entry (`XPENDING <stream> <group>`,
//!   the summary form: one round trip per group whatever its size) and its `last-delivered-id`
//!   (`XINFO GROUPS`), so that nothing a group has not read yet goes either.
//!
//! [`trim_point`] computes it, a pure function over ids compared as numbers (`(ms, seq)`: as
//! strings `"9-0"` would sort after `"10-0"`). Entries strictly below the point are removed with
//! `XTRIM <stream> MINID ~ <point>`. Approximate (`~`) rather than exact, because Redis then
//! removes whole radix-tree nodes only and caps each call at 100 nodes' worth of entries
//! (`LIMIT`'s default), so one call never blocks Redis for long, even the first one over a stream
//! that was never trimmed; a pass repeats the call while it removes something, up to
//! [`MAX_CALLS_PER_PASS`]. `~` only ever keeps more — at most the one node (≤ 100 entries,
//! `stream-node-max-entries`) that holds the point — never anything at or past the point. No
//! group named `wss` on the stream (wss has not read it yet, and will from id 0): nothing is
//! trimmed.
//!
//! The reads and the trim are separate round trips, not one transaction (a `WATCH` on a stream
//! that producers append to would abort nearly every time). What can change in between only
//! moves the groups forward — consumers read and acknowledge later entries, claims move pending
//! entries between consumers — and the point stays safe; an operator who creates a group or
//! moves one back (`XGROUP CREATE … 0`, `SETID`) at that moment may find entries older than the
//! retention gone, as with a producer's `MAXLEN`.
//!
//! A pass runs at start and then every [`period`] (an eighth of the retention, between 2 s and a
//! minute): a few round trips, and none past the first when the oldest entry is not old enough.
//! Several instances each run one; their passes are idempotent. Removed entries are counted in
//! `wss_stream_trimmed_entries_total` and each pass that found a point is logged at debug. On its
//! own connection with short timeouts; a failure is logged at debug (the stages that depend on
//! Redis log outages) and the next pass tries again.

use std::{fmt, time::Duration};

use crate::redis_conn::Conn;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::Value;

use super::ReadError;
use crate::{
    clock::Clock,
    redis_conn::RedisTarget,
    streams::{pairs, parse_id, text},
};

const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// `XTRIM … ~` calls in one pass, each removing at most `100 × stream-node-max-entries` entries
/// (10,000 by default): a backlog larger than that is worked off over the next passes.
pub const MAX_CALLS_PER_PASS: usize = 100;

/// A stream entry id, `<ms>-<seq>`, as its two numbers: ordered as Redis orders ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub fn parse(id: &str) -> Option<Self> {
        parse_id(id).map(|(ms, seq)| Self { ms, seq })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// How far one consumer group has got, as far as trimming is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    pub name: String,
    /// The last entry handed to any consumer of the group (`last-delivered-id`).
    pub last_delivered: StreamId,
    /// The group's oldest entry read and not acknowledged; `None` when none is pending.
    pub oldest_pending: Option<StreamId>,
}

/// The id below which every entry may be removed (`XTRIM … MINID <point>` keeps the point and
/// everything after it): the smallest of `now − keep_for` and every group's last-delivered and
/// oldest pending id. `None` when nothing may go: no group is given (nobody has read anything),
/// the clock is earlier than `keep_for` after the epoch, or the point is `0-0`.
pub fn trim_point(now_ms: u64, keep_for: Duration, groups: &[GroupPosition]) -> Option<StreamId> {
    if groups.is_empty() {
        return None;
    }
    let keep_ms = u64::try_from(keep_for.as_millis()).unwrap_or(u64::MAX);
    let age_limit = StreamId { ms: now_ms.checked_sub(keep_ms)?, seq: 0 };
    let point = groups.iter().flat_map(|g| std::iter::once(g.last_delivered).chain(g.oldest_pending)).fold(age_limit, std::cmp::min);
    (point > StreamId { ms: 0, seq: 0 }).then_some(point)
}

/// How often a pass runs: often enough that the stream holds little more than the retention
/// asks, rarely enough to cost nothing.
pub fn period(keep_for: Duration) -> Duration {
    (keep_for / 8).clamp(Duration::from_secs(2), Duration::from_secs(60))
}

pub struct Retention {
    pub redis: RedisTarget,
    /// `<prefix>events`.
    pub stream: String,
    /// `WSS_STREAM_RETENTION`.
    pub keep_for: Duration,
    /// `wss_stream_trimmed_entries_total`.
    pub trimmed: prometheus::IntCounter,
    /// Where the age of entries is measured from.
    pub clock: Clock,
}

impl Retention {
    pub fn run(self, shutdown: Receiver<()>) {
        let period = period(self.keep_for);
        log::info!(
            target: "wss::retention",
            "trimming entries of {} older than {} once every consumer group is done with them (WSS_STREAM_RETENTION), every {}",
            self.stream,
            humantime::format_duration(self.keep_for),
            humantime::format_duration(period)
        );
        let mut conn: Option<Conn> = None;
        loop {
            if let Err(err) = self.pass(&mut conn) {
                log::debug!(target: "wss::retention", "trimming {} failed ({err}); trying again in {}", self.stream, humantime::format_duration(period));
                conn = None;
            }
            match shutdown.recv_timeout(period) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    /// One pass; returns the number of entries removed.
    fn pass(&self, conn: &mut Option<Conn>) -> Result<u64, ReadError> {
        if conn.is_none() {
            *conn = Some(self.redis.connect_bounded(REDIS_TIMEOUT, REDIS_TIMEOUT)?);
        }
        let con = conn.as_mut().expect("connected above");
        let now_ms = self.clock.now_ms();
        let keep_ms = u64::try_from(self.keep_for.as_millis()).unwrap_or(u64::MAX);

        // Cheap check first: nothing is old enough yet (or the stream is empty or absent).
        let oldest: Value = redis::cmd("XRANGE").arg(&self.stream).arg("-").arg("+").arg("COUNT").arg(1).query(con)?;
        let oldest = crate::streams::parse_entries(oldest).map_err(ReadError::shape("XRANGE"))?;
        let Some(oldest) = oldest.first().and_then(|e| StreamId::parse(&e.id)) else { return Ok(0) };
        if now_ms.saturating_sub(keep_ms) <= oldest.ms {
            return Ok(0);
        }

        let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(&self.stream).query(con)?;
        let mut groups = group_positions(&groups).map_err(|e| shape_error("XINFO GROUPS", e))?;
        if !groups.iter().any(|g| g.name == super::GROUP) {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for group in &groups {
            pipe.cmd("XPENDING").arg(&self.stream).arg(&group.name);
        }
        let summaries: Vec<Value> = pipe.query(con)?;
        for (group, summary) in groups.iter_mut().zip(&summaries) {
            group.oldest_pending = oldest_pending(summary).map_err(|e| shape_error("XPENDING", e))?;
        }

        let Some(point) = trim_point(now_ms, self.keep_for, &groups) else { return Ok(0) };
        if point <= oldest {
            log::debug!(target: "wss::retention", "{}: trim point {point} is at the oldest entry; nothing to remove", self.stream);
            return Ok(0);
        }
        let mut removed = 0;
        for _ in 0..MAX_CALLS_PER_PASS {
            let n: u64 = redis::cmd("XTRIM").arg(&self.stream).arg("MINID").arg("~").arg(point.to_string()).query(con)?;
            removed += n;
            self.trimmed.inc_by(n);
            if n == 0 {
                break;
            }
        }
        log::debug!(target: "wss::retention", "{}: trim point {point}, removed {removed} entries", self.stream);
        Ok(removed)
    }
}

fn shape_error(command: &'static str, detail: String) -> ReadError {
    ReadError::Reply { command, detail }
}

/// Every group's name and `last-delivered-id` from an `XINFO GROUPS` reply (RESP2 flat lists or
/// RESP3 maps); `oldest_pending` is left `None` for the caller to fill in.
fn group_positions(reply: &Value) -> Result<Vec<GroupPosition>, String> {
    let Value::Array(groups) = reply else { return Err(format!("expected a list of groups, got {reply:?}")) };
    groups
        .iter()
        .map(|g| {
            let fields = pairs(g);
            let field = |key: &str| fields.iter().find(|(k, _)| k == key).and_then(|(_, v)| text(v));
            let name = field("name").ok_or_else(|| format!("a group without a name: {g:?}"))?;
            let last = field("last-delivered-id").ok_or_else(|| format!("group {name} without last-delivered-id"))?;
            let last_delivered =
                StreamId::parse(&last).ok_or_else(|| format!("group {name}: last-delivered-id {last:?} is not an entry id"))?;
            Ok(GroupPosition { name, last_delivered, oldest_pending: None })
        })
        .collect()
}

/// The smallest pending id of an `XPENDING <stream> <group>` summary
/// (`[count, smallest, greatest, consumers]`); `None` when nothing is pending.
fn oldest_pending(reply: &Value) -> Result<Option<StreamId>, String> {
    let Value::Array(parts) = reply else { return Err(format!("expected the XPENDING summary, got {reply:?}")) };
    match parts.get(1) {
        None | Some(Value::Nil) => Ok(None),
        Some(id) => {
            let id = text(id).ok_or_else(|| format!("the smallest pending id is not a string: {id:?}"))?;
            StreamId::parse(&id).map(Some).ok_or_else(|| format!("the smallest pending id {id:?} is not an entry id"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::replies::{bulk, flat};

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    fn group(last_delivered: StreamId, oldest_pending: Option<StreamId>) -> GroupPosition {
        GroupPosition { name: "g".into(), last_delivered, oldest_pending }
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const NOW: u64 = 1_767_225_600_000;

    #[test]
    fn the_age_limit_bounds_the_point_when_every_group_is_further() {
        let groups = [group(id(NOW, 5), None), group(id(NOW - 1, 0), Some(id(NOW - 10, 0)))];
        assert_eq!(trim_point(NOW, HOUR, &groups), Some(id(NOW - 3_600_000, 0)));
    }

    #[test]
    fn a_pending_entry_in_any_group_holds_the_point_back() {
        let old = id(NOW - 2 * 3_600_000, 7);
        let groups = [group(id(NOW, 0), None), group(id(NOW, 0), Some(old))];
        assert_eq!(trim_point(NOW, HOUR, &groups), Some(old));
        // The same, whichever group it is in.
        let groups = [group(id(NOW, 0), Some(old)), group(id(NOW, 0), None)];
        assert_eq!(trim_point(NOW, HOUR, &groups), Some(old));
    }

    #[test]
    fn a_group_that_has_not_read_so_far_holds_the_point_back() {
        let behind = id(NOW - 5 * 3_600_000, 0);
        let groups = [group(id(NOW, 0), None), group(behind, None)];
        assert_eq!(trim_point(NOW, HOUR, &groups), Some(behind));
        // A group that has read nothing (created at 0, or at an empty stream): nothing goes.
        assert_eq!(trim_point(NOW, HOUR, &[group(id(NOW, 0), None), group(id(0, 0), None)]), None);
    }

    #[test]
    fn ids_compare_as_numbers_not_as_text() {
        // As strings "999-0" > "1000-0" and "5-10" < "5-9"; as ids they are the other way round.
        let groups = [group(id(1000, 0), None), group(id(999, 0), None)];
        assert_eq!(trim_point(10_000, Duration::from_secs(1), &groups), Some(id(999, 0)));
        let groups = [group(id(5, 10), Some(id(5, 9))), group(id(5, 10), None)];
        assert_eq!(trim_point(10_000, Duration::from_secs(1), &groups), Some(id(5, 9)));
        assert!(StreamId::parse("5-10").unwrap() > StreamId::parse("5-9").unwrap());
        assert!(StreamId::parse("1000-0").unwrap() > StreamId::parse("999-18446744073709551615").unwrap());
    }

    #[test]
    fn nothing_goes_without_groups_or_before_the_retention_has_passed_since_the_epoch() {
        assert_eq!(trim_point(NOW, HOUR, &[]), None);
        assert_eq!(trim_point(1000, HOUR, &[group(id(NOW, 0), None)]), None);
        assert_eq!(trim_point(NOW, Duration::MAX, &[group(id(NOW, 0), None)]), None);
        assert_eq!(trim_point(3_600_000, HOUR, &[group(id(NOW, 0), None)]), None, "the point would be 0-0");
    }

    #[test]
    fn passes_run_an_eighth_of_the_retention_apart_within_two_seconds_and_a_minute() {
        assert_eq!(period(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(period(Duration::from_secs(80)), Duration::from_secs(10));
        assert_eq!(period(Duration::from_secs(86_400)), Duration::from_secs(60));
    }

    #[test]
    fn group_positions_and_pending_summaries_are_read_from_either_protocol() {
        let resp2 = Value::Array(vec![
            flat(vec![
                ("name", bulk("wss")),
                ("consumers", Value::Int(1)),
                ("pending", Value::Int(3)),
                ("last-delivered-id", bulk("12-3")),
            ]),
            Value::Map(vec![(bulk("name"), bulk("audit")), (bulk("last-delivered-id"), bulk("0-0"))]),
        ]);
        let positions = group_positions(&resp2).unwrap();
        assert_eq!(
            positions,
            [
                GroupPosition { name: "wss".into(), last_delivered: id(12, 3), oldest_pending: None },
                GroupPosition { name: "audit".into(), last_delivered: id(0, 0), oldest_pending: None },
            ]
        );
        assert!(group_positions(&Value::Array(vec![Value::Array(vec![bulk("name"), bulk("x")])])).is_err());
        assert!(group_positions(&Value::Nil).is_err());

        let summary = Value::Array(vec![Value::Int(2), bulk("7-1"), bulk("9-0"), Value::Array(vec![])]);
        assert_eq!(oldest_pending(&summary), Ok(Some(id(7, 1))));
        let empty = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(oldest_pending(&empty), Ok(None));
        assert!(oldest_pending(&Value::Array(vec![Value::Int(1), bulk("seven")])).is_err());
    }
}
