//! Delivery history: every delivery's status and every attempt's outcome, kept in Redis with
//! bounded retention, for `DeliveryService/ListDeliveries` and `GetDelivery`.
//!
//! Keys (prefix `P`):
//! - `P deliveries:records:<start ms>` — the [`DeliveryRecord`]s last written in the hour
//!   ([`BUCKET_MS`]) starting at `<start ms>`: a hash, field the delivery id, value the record as
//!   JSON; it expires an hour plus the retention age after its start. `<id>` is
//!   `<stream entry id>:<webhook id>`, stable across retries;
//! - `P deliveries` — index of all deliveries, a sorted set scored by last update (ms): a
//!   record's score is the time of its last write, so it says the record's bucket;
//! - `P deliveries:tenant:<t>`, `P deliveries:webhook:<w>` — the same, per tenant and per webhook
//!   (written in the same transaction with the same scores);
//! - `P deliveries:by-event` — the event index: one sorted set whose members are
//!   `<event id>\0<delivery id>`, all at score 0, so that an event's deliveries are one lexical
//!   range (`ZRANGEBYLEX`); `P deliveries:by-event:age` holds the same members scored by last
//!   update, for trimming it;
//! - of the layouts before 2026-12, no longer written and still read until they have expired:
//!   `P delivery:<id>` (a record as a string of its own, expiring after the retention age), and
//!   `P deliveries:event:<e>` (a set per event, expiring with its records).
//!
//! The outcome stage writes a record after every attempt (the delivery carries its attempts, so
//! this is a plain write, no read-modify-write), pipelined with its batch ([`queue_writes`]):
//! the records of a batch go into their bucket with one `HSET` and one `EXPIRE` (a batch spans
//! milliseconds: one bucket, two at an hour's turn), and the index entries are grouped by key:
//! one `ZADD` per index, whatever the events — so a record costs no command of its own, a batch
//! a few (docs/performance.md, "Redis commands per delivery"). A string per record cost a
//! `SET … EX` per delivery; an index per event, a `SADD` and an `EXPIRE` per event.
//!
//! Reading: a record is looked up in the bucket its global index score says (`ZSCORE`, then
//! `HGET`; listing has the scores from its index read and asks each bucket once with `HMGET`).
//! A record rewritten later (a retry) lands in a newer bucket with a newer score; the older copy
//! is stale, never read (the score picks the newest) and expires with its bucket. A record not in
//! its bucket, or there only in a version older than its score, is looked for under its old
//! `P delivery:<id>` key (one more round trip, on a miss only): records of the old layout stay
//! readable until they expire (docs/deployment.md, "Upgrading").
//!
//! Retention: a bucket lives until its end plus `WSS_HISTORY_MAX_AGE`, so each record lives at
//! least the age after its last write and at most an hour longer (the TTL's granularity is one
//! bucket). Up to four times a second the indexes touched are trimmed by age and to
//! `WSS_HISTORY_MAX_COUNT` members, and records that leave the global index are deleted at once
//! from their buckets (`HDEL`; the index scores say which; in slices, so that Redis serves others
//! in between): by count always, by age when their bucket ended over a minute ago (else a retry
//! might be rewriting them into it; with an age under an hour they wait for its expiry) — so both
//! the age and the count bound what Redis holds, the age to within a bucket; stale copies wait
//! for their bucket's expiry. The event index is trimmed by age and count the
//! same way (through its `age` twin). Index members whose record is gone are skipped when
//! listing.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use crate::redis_conn::Conn;
use redis::{Commands, Pipeline, RedisResult};
use serde::{Deserialize, Serialize};

use crate::{deadletter::AttemptRecord, keys::Keys};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Retrying,
    Delivered,
    DeadLettered,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: String,
    pub tenant_id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    pub stream_entry_id: String,
    pub status: Status,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// While retrying: when the next attempt is due.
    #[serde(default)]
    pub next_attempt_at_ms: u64,
    pub attempts: Vec<AttemptRecord>,
    #[serde(default)]
    pub dead_letter_reason: String,
}

pub fn delivery_id(stream_entry_id: &str, webhook_id: &str) -> String {
    format!("{stream_entry_id}:{webhook_id}")
}

/// How long and how many deliveries are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_count: usize,
}

/// The width of a record bucket: one hour. Every record written in the same hour goes into one
/// hash, so that a batch costs one `HSET` (and one `EXPIRE`) whatever its size — a batch spans
/// milliseconds, so it touches one bucket, two at an hour's turn. Why an hour rather than less:
/// a bucket lives until its end plus `WSS_HISTORY_MAX_AGE`, so the width is how long past the
/// age a record may stay in Redis when nothing deletes it earlier (0.6 % of the default 7 days;
/// trimming deletes records as they leave the global index by count, and by age once their hour
/// is over, so this is the overstay of stale copies, of an idle history, and of records under an
/// age shorter than the bucket); and a retry rewritten within the same hour
/// overwrites its field instead of leaving an older copy in another bucket. Narrower buckets
/// would only add keys (`max_age / width` of them) and per-bucket reads when listing. Readers
/// derive the bucket from the index score, so this must not change without a migration.
pub const BUCKET_MS: u64 = 3_600_000;

/// The start (ms) of the bucket that holds records written at `written_ms`.
pub fn bucket_of(written_ms: u64) -> u64 {
    written_ms - written_ms % BUCKET_MS
}

/// The TTL (s) to give the bucket starting at `start` when a record is written into it at
/// `written_ms`: until the bucket's end plus the retention age, rounded up — so every record
/// in it lives at least `max_age` after its write, and at most one bucket longer. Relative to
/// the write rather than absolute (`EXPIREAT`), so that a clock difference between wss and
/// Redis cannot shorten it.
fn bucket_ttl(start: u64, written_ms: u64, max_age: Duration) -> u64 {
    let until = start + BUCKET_MS + max_age.as_millis() as u64;
    until.saturating_sub(written_ms).div_ceil(1000).max(1)
}

/// Queues the writes of a batch of records on `pipe`; returns the index keys they touched.
///
/// The records are grouped by bucket: one `HSET` of all of a bucket's records and one `EXPIRE`
/// of it per batch — not a command per record. The index entries are grouped by key, so that a
/// batch costs one `ZADD` per index it touches: the global one, one per tenant and per webhook
/// in the batch, and the event index and its age twin. Redis parses and runs fewer commands
/// (docs/performance.md).
pub fn queue_writes<'r>(
    pipe: &mut Pipeline,
    keys: &Keys,
    retention: Retention,
    records: impl IntoIterator<Item = &'r DeliveryRecord>,
) -> Vec<String> {
    // (bucket start, earliest write into it, its HSET): a batch has one or two.
    let mut buckets: Vec<(u64, u64, redis::Cmd)> = Vec::new();
    let mut all: Vec<(u64, &str)> = Vec::new();
    let mut by_tenant = Groups::default();
    let mut by_webhook = Groups::default();
    let mut by_event: Vec<(u64, String)> = Vec::new();
    // Serialized first, so that each HSET is allocated once at its full size: grown argument by
    // argument, its buffer was copied over and over (a tenth of the outcome stage's time).
    let records: Vec<(&DeliveryRecord, Vec<u8>)> = records.into_iter().map(|record| (record, to_json(record))).collect();
    let bytes: usize = records.iter().map(|(record, json)| record.id.len() + json.len()).sum();
    for (record, json) in &records {
        let start = bucket_of(record.updated_at_ms);
        let at = match buckets.iter().position(|(s, ..)| *s == start) {
            Some(at) => at,
            None => {
                let mut hset = redis::Cmd::with_capacity(2 + 2 * records.len(), bytes + 64);
                hset.arg("HSET").arg(keys.delivery_records(start));
                buckets.push((start, record.updated_at_ms, hset));
                buckets.len() - 1
            }
        };
        let (_, earliest, hset) = &mut buckets[at];
        *earliest = (*earliest).min(record.updated_at_ms);
        hset.arg(&record.id).arg(json);
        let entry = (record.updated_at_ms, record.id.as_str());
        all.push(entry);
        by_tenant.add(&record.tenant_id, entry);
        by_webhook.add(&record.webhook_id, entry);
        by_event.push((record.updated_at_ms, event_member(&record.event_id, &record.id)));
    }
    if all.is_empty() {
        return Vec::new();
    }
    for (start, earliest, hset) in buckets {
        pipe.add_command(hset).ignore();
        pipe.expire(keys.delivery_records(start), bucket_ttl(start, earliest, retention.max_age) as i64).ignore();
    }
    let mut touched = Vec::with_capacity(1 + by_tenant.groups.len() + by_webhook.groups.len());
    let mut zadd = |index: String, members: &[(u64, &str)]| {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&index);
        for (score, member) in members {
            cmd.arg(*score).arg(*member);
        }
        pipe.add_command(cmd).ignore();
        touched.push(index);
    };
    zadd(keys.deliveries.clone(), &all);
    for (tenant, members) in &by_tenant.groups {
        zadd(keys.deliveries_of_tenant(tenant), members);
    }
    for (webhook, members) in &by_webhook.groups {
        zadd(keys.deliveries_of_webhook(webhook), members);
    }
    let mut lexical = redis::cmd("ZADD");
    let mut aged = redis::cmd("ZADD");
    lexical.arg(keys.deliveries_by_event());
    aged.arg(keys.deliveries_by_event_age());
    for (score, member) in &by_event {
        lexical.arg(0).arg(member);
        aged.arg(*score).arg(member);
    }
    pipe.add_command(lexical).ignore();
    pipe.add_command(aged).ignore();
    touched
}

/// A record as stored: its JSON, in a buffer sized for a typical record at once.
fn to_json(record: &DeliveryRecord) -> Vec<u8> {
    let mut json = Vec::with_capacity(768);
    serde_json::to_writer(&mut json, record).expect("delivery records always serialize");
    json
}

/// A member of the event index: the event id, a NUL, the delivery id.
fn event_member(event_id: &str, delivery_id: &str) -> String {
    format!("{event_id}\0{delivery_id}")
}

/// The deliveries of `event_id` in the event index: a `ZRANGEBYLEX` from `[<event>\0` to
/// `(<event>\x01`, the member's part after the NUL.
fn event_range(con: &mut Conn, keys: &Keys, event_id: &str) -> RedisResult<(Vec<String>, Vec<String>)> {
    let (members, old): (Vec<String>, Vec<String>) = redis::pipe()
        .cmd("ZRANGEBYLEX")
        .arg(keys.deliveries_by_event())
        .arg(format!("[{event_id}\0"))
        .arg(format!("({event_id}\x01"))
        .smembers(keys.deliveries_of_event(event_id))
        .query(con)?;
    let ids = members.into_iter().filter_map(|m| m.split_once('\0').filter(|(e, _)| *e == event_id).map(|(_, id)| id.to_owned())).collect();
    Ok((ids, old))
}

/// Index entries grouped by tenant, webhook or event, in first-seen order (so that the
/// commands come out in a fixed order).
#[derive(Default)]
struct Groups<'r> {
    groups: Vec<(&'r str, Vec<(u64, &'r str)>)>,
    at: HashMap<&'r str, usize>,
}

impl<'r> Groups<'r> {
    fn add(&mut self, key: &'r str, entry: (u64, &'r str)) {
        let next = self.groups.len();
        let at = *self.at.entry(key).or_insert(next);
        if at == next {
            self.groups.push((key, Vec::new()));
        }
        self.groups[at].1.push(entry);
    }
}

/// Trims the given indexes by age and count; deletes the records that leave the global index.
pub fn trim(con: &mut Conn, keys: &Keys, retention: Retention, touched: &HashSet<String>, now_ms: u64) -> RedisResult<()> {
    let cutoff = now_ms.saturating_sub(retention.max_age.as_millis() as u64);
    let mut pipe = redis::pipe();
    for index in touched {
        if *index != keys.deliveries {
            pipe.zrembyscore(index, "-inf", format!("({cutoff}")).ignore();
            pipe.zremrangebyrank(index, 0, -(retention.max_count as isize) - 1).ignore();
        }
    }
    if pipe.cmd_iter().next().is_some() {
        pipe.query::<()>(con)?;
    }
    if touched.contains(&keys.deliveries) {
        trim_global_by_age(con, keys, cutoff, now_ms)?;
    }
    let mut excess = con.zcard::<_, usize>(&keys.deliveries)?.saturating_sub(retention.max_count);
    // In slices, each its own round trip, so that other clients are served in between: evicting
    // a second's worth of records at once blocked Redis for milliseconds and was most of the
    // delivery latency's 99th percentile (docs/performance.md).
    while excess > 0 {
        let slice = excess.min(EVICTION_SLICE);
        let evicted: Vec<(String, f64)> = con.zpopmin(&keys.deliveries, slice as isize)?;
        if evicted.is_empty() {
            break;
        }
        let mut pipe = redis::pipe();
        queue_deletes(&mut pipe, keys, &evicted, true);
        pipe.query::<()>(con)?;
        excess -= slice;
    }
    trim_event_index(con, keys, retention, cutoff)
}

/// Removes the global index's members older than `cutoff`, in slices, and deletes their records
/// from their buckets — rather than leaving them until their bucket expires (up to a bucket's
/// width later) — when the bucket ended over a minute ago: a record rewritten meanwhile (a retry
/// due after the retention age) goes into the current bucket, and an `HDEL` there could delete
/// that new version. The members leave by score (`ZREMRANGEBYSCORE` up to the slice's last), so
/// one rewritten meanwhile, scored anew, stays. Records of the old layout expire by themselves
/// at this age.
fn trim_global_by_age(con: &mut Conn, keys: &Keys, cutoff: u64, now_ms: u64) -> RedisResult<()> {
    loop {
        let aged: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&keys.deliveries)
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(EVICTION_SLICE)
            .query(con)?;
        let Some((_, last)) = aged.last() else { break };
        let mut pipe = redis::pipe();
        pipe.zrembyscore(&keys.deliveries, "-inf", *last as u64).ignore();
        let ended: Vec<(String, f64)> =
            aged.iter().filter(|(_, score)| bucket_of(*score as u64) + BUCKET_MS + 60_000 <= now_ms).cloned().collect();
        queue_deletes(&mut pipe, keys, &ended, false);
        pipe.query::<()>(con)?;
        if aged.len() < EVICTION_SLICE {
            break;
        }
    }
    Ok(())
}

/// Queues the deletion of the records of `evicted` (delivery id, index score): one `HDEL` per
/// bucket — the score is the record's last write, which chose its bucket — and, with
/// `old_layout`, one `DEL` of their keys of the layout before 2026-12.
fn queue_deletes(pipe: &mut Pipeline, keys: &Keys, evicted: &[(String, f64)], old_layout: bool) {
    let mut buckets: Vec<(u64, redis::Cmd)> = Vec::new();
    for (id, score) in evicted {
        let start = bucket_of(*score as u64);
        let at = buckets.iter().position(|(s, _)| *s == start).unwrap_or_else(|| {
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(keys.delivery_records(start));
            buckets.push((start, hdel));
            buckets.len() - 1
        });
        buckets[at].1.arg(id);
    }
    for (_, hdel) in buckets {
        pipe.add_command(hdel).ignore();
    }
    if old_layout && !evicted.is_empty() {
        pipe.del(evicted.iter().map(|(id, _)| keys.delivery(id)).collect::<Vec<_>>()).ignore();
    }
}

/// Trims the event index by age and to the count, in slices: the members leave the lexical set
/// and its age twin together.
fn trim_event_index(con: &mut Conn, keys: &Keys, retention: Retention, cutoff: u64) -> RedisResult<()> {
    let (lexical, aged) = (keys.deliveries_by_event(), keys.deliveries_by_event_age());
    loop {
        let old: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&aged)
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .arg("LIMIT")
            .arg(0)
            .arg(EVICTION_SLICE)
            .query(con)?;
        if old.is_empty() {
            break;
        }
        redis::pipe().zrem(&lexical, &old).ignore().zrem(&aged, &old).ignore().query::<()>(con)?;
        if old.len() < EVICTION_SLICE {
            break;
        }
    }
    let mut excess = con.zcard::<_, usize>(&aged)?.saturating_sub(retention.max_count);
    while excess > 0 {
        let slice = excess.min(EVICTION_SLICE);
        let evicted: Vec<(String, f64)> = con.zpopmin(&aged, slice as isize)?;
        if evicted.is_empty() {
            break;
        }
        con.zrem::<_, _, ()>(&lexical, evicted.into_iter().map(|(m, _)| m).collect::<Vec<_>>())?;
        excess -= slice;
    }
    Ok(())
}

/// Records evicted per round trip when the history is over its count.
const EVICTION_SLICE: usize = 256;

/// What ListDeliveries asks for.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub tenant_id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub status: Option<Status>,
    /// Inclusive lower bound of `updated_at_ms`.
    pub updated_after_ms: Option<u64>,
    /// Exclusive upper bound of `updated_at_ms`.
    pub updated_before_ms: Option<u64>,
}

impl Query {
    fn keeps(&self, r: &DeliveryRecord) -> bool {
        (self.tenant_id.is_empty() || r.tenant_id == self.tenant_id)
            && (self.webhook_id.is_empty() || r.webhook_id == self.webhook_id)
            && (self.event_id.is_empty() || r.event_id == self.event_id)
            && self.status.is_none_or(|s| s == r.status)
            && self.updated_after_ms.is_none_or(|t| r.updated_at_ms >= t)
            && self.updated_before_ms.is_none_or(|t| r.updated_at_ms < t)
    }
}

/// A page token: the score and id of the last record of the previous page.
pub fn encode_token(record: &DeliveryRecord) -> String {
    format!("{}/{}", record.updated_at_ms, record.id)
}

pub fn decode_token(token: &str) -> Option<(u64, String)> {
    let (score, id) = token.split_once('/')?;
    Some((score.parse().ok()?, id.to_owned()))
}

/// Newest first. Reads the narrowest index the query allows, in batches, filtering the rest;
/// stops after scanning `scan_limit` index members (returning a token to continue).
pub fn list(
    con: &mut Conn,
    keys: &Keys,
    query: &Query,
    page_size: usize,
    token: Option<(u64, String)>,
    scan_limit: usize,
) -> RedisResult<(Vec<DeliveryRecord>, String)> {
    if !query.event_id.is_empty() {
        // The old layout's set, until it expires, beside the event index.
        let (mut ids, old) = event_range(con, keys, &query.event_id)?;
        for id in old {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut records: Vec<DeliveryRecord> = fetch(con, keys, &ids)?.into_iter().filter(|r| query.keeps(r)).collect();
        records.sort_by(|a, b| (b.updated_at_ms, &b.id).cmp(&(a.updated_at_ms, &a.id)));
        if let Some((score, id)) = &token {
            records.retain(|r| (r.updated_at_ms, &r.id) < (*score, id));
        }
        let more = records.len() > page_size;
        records.truncate(page_size);
        let next = if more { records.last().map(encode_token).unwrap_or_default() } else { String::new() };
        return Ok((records, next));
    }
    let index = if !query.webhook_id.is_empty() {
        keys.deliveries_of_webhook(&query.webhook_id)
    } else if !query.tenant_id.is_empty() {
        keys.deliveries_of_tenant(&query.tenant_id)
    } else {
        keys.deliveries.clone()
    };
    let upper = match (&token, query.updated_before_ms) {
        (Some((score, _)), Some(before)) => (*score).min(before.saturating_sub(1)),
        (Some((score, _)), None) => *score,
        (None, Some(before)) => before.saturating_sub(1),
        (None, None) => u64::MAX,
    };
    let lower = query.updated_after_ms.unwrap_or(0);
    let batch = (page_size * 2).clamp(64, 1000);
    let mut out = Vec::new();
    let mut offset = 0usize;
    let mut scanned = 0usize;
    let max = if upper == u64::MAX { "+inf".to_owned() } else { upper.to_string() };
    loop {
        let members: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(&index)
            .arg(&max)
            .arg(lower)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(offset)
            .arg(batch)
            .query(con)?;
        let exhausted = members.len() < batch;
        offset += members.len();
        scanned += members.len();
        // Skip what the previous page already returned (same score, id not after the token's).
        // Every index is scored by the record's last write, as the global one: the score says
        // the bucket.
        let entries: Vec<(&str, Option<u64>)> = members
            .iter()
            .map(|(id, score)| (id.as_str(), *score as u64))
            .filter(|(id, score)| match &token {
                Some((t_score, t_id)) => (*score, *id) < (*t_score, t_id.as_str()),
                None => true,
            })
            .map(|(id, score)| (id, Some(score)))
            .collect();
        for record in fetch_scored(con, keys, &entries)? {
            if query.keeps(&record) {
                out.push(record);
                if out.len() == page_size {
                    let next = out.last().map(encode_token).unwrap_or_default();
                    return Ok((out, next));
                }
            }
        }
        if exhausted {
            return Ok((out, String::new()));
        }
        if scanned >= scan_limit {
            // Continue after the last member scanned, whatever it was.
            let next = out.last().map(encode_token).unwrap_or_default();
            return Ok((out, next));
        }
    }
}

/// Loads records by id, in order, skipping expired ones: their scores in the global index
/// first (`ZMSCORE`), which say their buckets.
fn fetch(con: &mut Conn, keys: &Keys, ids: &[String]) -> RedisResult<Vec<DeliveryRecord>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE").arg(&keys.deliveries).arg(ids).query(con)?;
    let scored: Vec<(&str, Option<u64>)> = ids.iter().map(String::as_str).zip(scores.into_iter().map(|s| s.map(|s| s as u64))).collect();
    fetch_scored(con, keys, &scored)
}

/// Loads records by id and index score (the time of their last write, `None`: not indexed),
/// in order, skipping those gone: one `HMGET` per bucket, all in one round trip. A record the
/// buckets do not hold, or hold only in a version older than its score, is looked for under
/// its key of the layout before 2026-12 (one more round trip, only then), and the newer of the
/// two is taken.
fn fetch_scored(con: &mut Conn, keys: &Keys, entries: &[(&str, Option<u64>)]) -> RedisResult<Vec<DeliveryRecord>> {
    let mut found: Vec<Option<DeliveryRecord>> = vec![None; entries.len()];
    let mut buckets: Vec<(u64, Vec<usize>)> = Vec::new();
    for (at, (_, score)) in entries.iter().enumerate() {
        let Some(score) = score else { continue };
        let start = bucket_of(*score);
        match buckets.iter_mut().find(|(s, _)| *s == start) {
            Some((_, members)) => members.push(at),
            None => buckets.push((start, vec![at])),
        }
    }
    if !buckets.is_empty() {
        let mut pipe = redis::pipe();
        for (start, members) in &buckets {
            pipe.cmd("HMGET").arg(keys.delivery_records(*start)).arg(members.iter().map(|&at| entries[at].0).collect::<Vec<_>>());
        }
        let replies: Vec<Vec<Option<String>>> = pipe.query(con)?;
        for ((_, members), values) in buckets.iter().zip(replies) {
            for (&at, json) in members.iter().zip(values) {
                found[at] = json.and_then(|json| serde_json::from_str(&json).ok());
            }
        }
    }
    let current = |at: usize, record: &DeliveryRecord| entries[at].1 == Some(record.updated_at_ms);
    let missing: Vec<usize> = (0..entries.len()).filter(|&at| found[at].as_ref().is_none_or(|record| !current(at, record))).collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|&at| keys.delivery(entries[at].0)).collect();
        let raw: Vec<Option<String>> = redis::cmd("MGET").arg(&names).query(con)?;
        for (&at, json) in missing.iter().zip(raw) {
            let Some(old) = json.and_then(|json| serde_json::from_str::<DeliveryRecord>(&json).ok()) else { continue };
            let newer = match &found[at] {
                None => true,
                Some(bucketed) => (current(at, &old), old.updated_at_ms) > (current(at, bucketed), bucketed.updated_at_ms),
            };
            if newer {
                found[at] = Some(old);
            }
        }
    }
    Ok(found.into_iter().flatten().collect())
}

/// The record of delivery `id`: its score in the global index (the time of its last write)
/// says its bucket.
pub fn get(con: &mut Conn, keys: &Keys, id: &str) -> RedisResult<Option<DeliveryRecord>> {
    let score: Option<f64> = con.zscore(&keys.deliveries, id)?;
    Ok(fetch_scored(con, keys, &[(id, score.map(|s| s as u64))])?.pop())
}

/// Each command of a pipeline as text, e.g. `ZADD p:deliveries 5 a 6 b`: for tests of what a
/// batch writes.
#[cfg(test)]
pub(crate) fn pipeline_commands(pipe: &redis::Pipeline) -> Vec<String> {
    pipe.cmd_iter()
        .map(|cmd| {
            cmd.args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => "<not simple>".to_owned(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tenant: &str, status: Status, updated: u64) -> DeliveryRecord {
        DeliveryRecord {
            id: id.into(),
            tenant_id: tenant.into(),
            webhook_id: "wh_1".into(),
            event_id: "e1".into(),
            event_type: "t".into(),
            stream_entry_id: "1-0".into(),
            status,
            created_at_ms: 1,
            updated_at_ms: updated,
            next_attempt_at_ms: 0,
            attempts: Vec::new(),
            dead_letter_reason: String::new(),
        }
    }

    #[test]
    fn queries_filter_on_every_field() {
        let r = record("1-0:wh_1", "acme", Status::Delivered, 100);
        assert!(Query::default().keeps(&r));
        assert!(Query { tenant_id: "acme".into(), ..Default::default() }.keeps(&r));
        assert!(!Query { tenant_id: "other".into(), ..Default::default() }.keeps(&r));
        assert!(!Query { status: Some(Status::Retrying), ..Default::default() }.keeps(&r));
        assert!(Query { updated_after_ms: Some(100), ..Default::default() }.keeps(&r));
        assert!(!Query { updated_after_ms: Some(101), ..Default::default() }.keeps(&r));
        assert!(!Query { updated_before_ms: Some(100), ..Default::default() }.keeps(&r));
        assert!(!Query { webhook_id: "wh_2".into(), ..Default::default() }.keeps(&r));
    }

    #[test]
    fn a_batch_writes_each_index_once() {
        let keys = Keys::new("p:");
        let retention = Retention { max_age: Duration::from_secs(60), max_count: 100 };
        let mut a = record("1-0:wh_1", "acme", Status::Delivered, 5);
        a.event_id = "e1".into();
        let mut b = record("1-0:wh_2", "acme", Status::Retrying, 6);
        (b.webhook_id, b.event_id) = ("wh_2".into(), "e1".into());
        let mut c = record("2-0:wh_1", "globex", Status::Delivered, 7);
        c.event_id = "e2".into();
        let mut pipe = redis::pipe();
        let touched = queue_writes(&mut pipe, &keys, retention, [&a, &b, &c]);
        let commands = pipeline_commands(&pipe);
        assert!(!commands.iter().any(|c| c.starts_with("SET")), "no command per record: {commands:?}");
        let writes: Vec<&String> = commands.iter().filter(|c| c.starts_with("HSET")).collect();
        assert_eq!(writes.len(), 1, "one HSET for the bucket: {commands:?}");
        assert!(writes[0].starts_with("HSET p:deliveries:records:0 1-0:wh_1 {"), "{}", writes[0]);
        assert!(writes[0].contains(" 1-0:wh_2 {") && writes[0].contains(" 2-0:wh_1 {"), "{}", writes[0]);
        // Until the bucket's end (1 h) plus the retention age, from its earliest write (5 ms).
        assert_eq!(commands[1], "EXPIRE p:deliveries:records:0 3660");
        let rest: Vec<&str> = commands[2..].iter().map(String::as_str).collect();
        assert_eq!(
            rest,
            [
                "ZADD p:deliveries 5 1-0:wh_1 6 1-0:wh_2 7 2-0:wh_1",
                "ZADD p:deliveries:tenant:acme 5 1-0:wh_1 6 1-0:wh_2",
                "ZADD p:deliveries:tenant:globex 7 2-0:wh_1",
                "ZADD p:deliveries:webhook:wh_1 5 1-0:wh_1 7 2-0:wh_1",
                "ZADD p:deliveries:webhook:wh_2 6 1-0:wh_2",
                "ZADD p:deliveries:by-event 0 e1\x001-0:wh_1 0 e1\x001-0:wh_2 0 e2\x002-0:wh_1",
                "ZADD p:deliveries:by-event:age 5 e1\x001-0:wh_1 6 e1\x001-0:wh_2 7 e2\x002-0:wh_1",
            ]
        );
        let mut touched = touched;
        touched.sort();
        assert_eq!(
            touched,
            [
                "p:deliveries",
                "p:deliveries:tenant:acme",
                "p:deliveries:tenant:globex",
                "p:deliveries:webhook:wh_1",
                "p:deliveries:webhook:wh_2"
            ]
        );
    }

    #[test]
    fn buckets_are_hours_and_live_max_age_past_their_end() {
        let hour = 3_600_000;
        assert_eq!(BUCKET_MS, hour);
        assert_eq!((bucket_of(0), bucket_of(hour - 1), bucket_of(hour), bucket_of(5 * hour + 7)), (0, 0, hour, 5 * hour));
        let day = Duration::from_secs(86_400);
        // Written at the bucket's start: the whole hour plus the age; at its last millisecond:
        // the age (and that millisecond, rounded up to a second).
        assert_eq!(bucket_ttl(hour, hour, day), 3_600 + 86_400);
        assert_eq!(bucket_ttl(hour, 2 * hour - 1, day), 86_401);
        assert_eq!(bucket_ttl(hour, hour + 1_500, day), 3_599 + 86_400, "rounded up: 3,598.5 s");
        // A write is never given less than the age, whatever its place in the bucket.
        for written in [hour, hour + 1, hour + hour / 2, 2 * hour - 1] {
            assert!(bucket_ttl(bucket_of(written), written, day) >= day.as_secs(), "written at {written}");
        }
    }

    #[test]
    fn a_batch_across_an_hour_writes_each_bucket_once() {
        let keys = Keys::new("p:");
        let retention = Retention { max_age: Duration::from_secs(60), max_count: 100 };
        let hour = BUCKET_MS;
        let a = record("1-0:wh_1", "acme", Status::Delivered, hour - 2);
        let b = record("2-0:wh_1", "acme", Status::Delivered, hour + 10);
        let c = record("3-0:wh_1", "acme", Status::Retrying, hour - 1);
        let mut pipe = redis::pipe();
        queue_writes(&mut pipe, &keys, retention, [&a, &b, &c]);
        let commands = pipeline_commands(&pipe);
        let heads: Vec<String> = commands.iter().take(4).map(|c| c.split(" {").next().unwrap_or_default().to_owned()).collect();
        assert_eq!(
            heads,
            [
                "HSET p:deliveries:records:0 1-0:wh_1".to_owned(),
                "EXPIRE p:deliveries:records:0 61".to_owned(),
                format!("HSET p:deliveries:records:{hour} 2-0:wh_1"),
                format!("EXPIRE p:deliveries:records:{hour} 3660"), // 3,659.99 s, rounded up
            ]
        );
        assert!(commands[0].contains(" 3-0:wh_1 {"), "both of the first hour in one HSET: {}", commands[0]);
        assert_eq!(commands.iter().filter(|c| c.starts_with("HSET")).count(), 2, "{commands:?}");
    }

    #[test]
    fn evicted_records_are_deleted_from_their_buckets() {
        let keys = Keys::new("p:");
        let hour = BUCKET_MS as f64;
        let evicted = [("a".to_owned(), 5.0), ("b".to_owned(), hour + 1.0), ("c".to_owned(), 7.0)];
        let mut pipe = redis::pipe();
        queue_deletes(&mut pipe, &keys, &evicted, true);
        assert_eq!(
            pipeline_commands(&pipe),
            ["HDEL p:deliveries:records:0 a c", "HDEL p:deliveries:records:3600000 b", "DEL p:delivery:a p:delivery:b p:delivery:c"]
        );
        let mut pipe = redis::pipe();
        queue_deletes(&mut pipe, &keys, &evicted[..1], false);
        assert_eq!(pipeline_commands(&pipe), ["HDEL p:deliveries:records:0 a"], "no DEL of old keys when they expire anyway");
    }

    #[test]
    fn tokens_round_trip() {
        let r = record("1767225600000-0:wh_abc", "acme", Status::Delivered, 1_767_225_600_123);
        assert_eq!(decode_token(&encode_token(&r)), Some((1_767_225_600_123, "1767225600000-0:wh_abc".into())));
        assert_eq!(decode_token("garbage"), None);
    }
}
