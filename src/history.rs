//! Delivery history: every delivery's status and every attempt's outcome, kept in Redis with
//! bounded retention, for `DeliveryService/ListDeliveries` and `GetDelivery`.
//!
//! Keys (prefix `P`):
//! - `P delivery:<id>` — the [`DeliveryRecord`] as JSON, expiring after the retention age; `<id>`
//!   is `<stream entry id>:<webhook id>`, stable across retries;
//! - `P deliveries` — index of all deliveries, a sorted set scored by last update (ms);
//! - `P deliveries:tenant:<t>`, `P deliveries:webhook:<w>` — the same, per tenant and per webhook;
//! - `P deliveries:by-event` — the event index: one sorted set whose members are
//!   `<event id>\0<delivery id>`, all at score 0, so that an event's deliveries are one lexical
//!   range (`ZRANGEBYLEX`); `P deliveries:by-event:age` holds the same members scored by last
//!   update, for trimming it;
//! - `P deliveries:event:<e>` — the event index of the layout before 2026-12 (a set per event,
//!   expiring with its records): no longer written, still read until it has expired.
//!
//! The outcome stage writes a record after every attempt (the delivery carries its attempts, so
//! this is a plain `SET`, no read-modify-write), pipelined with its batch; the index entries of a
//! batch are grouped by key ([`queue_writes`]): one `ZADD` per index, whatever the events — so a
//! record costs one command (its `SET … EX`) and a batch a few more (docs/performance.md, "Redis
//! commands per delivery"). An index per event cost a `SADD` and an `EXPIRE` per event, i.e.
//! per delivery when events have one webhook each.
//! Retention: records expire after `WSS_HISTORY_MAX_AGE`; up to four times a second the indexes
//! touched are trimmed by age and to `WSS_HISTORY_MAX_COUNT` members, and records pushed out of
//! the global index by the count are deleted at once (in slices, so that Redis serves others in
//! between) — so both the age and the count bound what Redis holds. The event index is trimmed
//! by age and count the same way (through its `age` twin). Index members whose record is gone are
//! skipped when listing.

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

/// Queues the writes of a batch of records on `pipe`; returns the index keys they touched.
///
/// Each record is one `SET … EX`; the index entries are grouped by key, so that a batch costs
/// one `ZADD` per index it touches: the global one, one per tenant and per webhook in the batch,
/// and the event index and its age twin — rather than six commands per record. Redis parses and
/// runs fewer commands (docs/performance.md).
pub fn queue_writes<'r>(
    pipe: &mut Pipeline,
    keys: &Keys,
    retention: Retention,
    records: impl IntoIterator<Item = &'r DeliveryRecord>,
) -> Vec<String> {
    let ttl = retention.max_age.as_secs().max(1);
    let mut all: Vec<(u64, &str)> = Vec::new();
    let mut by_tenant = Groups::default();
    let mut by_webhook = Groups::default();
    let mut by_event: Vec<(u64, String)> = Vec::new();
    for record in records {
        let json = serde_json::to_string(record).expect("delivery records always serialize");
        pipe.set_ex(keys.delivery(&record.id), json, ttl).ignore();
        let entry = (record.updated_at_ms, record.id.as_str());
        all.push(entry);
        by_tenant.add(&record.tenant_id, entry);
        by_webhook.add(&record.webhook_id, entry);
        by_event.push((record.updated_at_ms, event_member(&record.event_id, &record.id)));
    }
    if all.is_empty() {
        return Vec::new();
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

/// Trims the given indexes by age and count; deletes records pushed out of the global index.
pub fn trim(con: &mut Conn, keys: &Keys, retention: Retention, touched: &HashSet<String>, now_ms: u64) -> RedisResult<()> {
    let cutoff = now_ms.saturating_sub(retention.max_age.as_millis() as u64);
    let mut pipe = redis::pipe();
    for index in touched {
        pipe.zrembyscore(index, "-inf", format!("({cutoff}")).ignore();
        if *index != keys.deliveries {
            pipe.zremrangebyrank(index, 0, -(retention.max_count as isize) - 1).ignore();
        }
    }
    pipe.query::<()>(con)?;
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
        let doomed: Vec<String> = evicted.iter().map(|(id, _)| keys.delivery(id)).collect();
        con.del::<_, ()>(doomed)?;
        excess -= slice;
    }
    trim_event_index(con, keys, retention, cutoff)
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
        let ids: Vec<String> = members
            .into_iter()
            .filter(|(id, score)| match &token {
                Some((t_score, t_id)) => (*score as u64, id) < (*t_score, t_id),
                None => true,
            })
            .map(|(id, _)| id)
            .collect();
        for record in fetch(con, keys, &ids)? {
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

/// Loads records by id, in order, skipping expired ones.
fn fetch(con: &mut Conn, keys: &Keys, ids: &[String]) -> RedisResult<Vec<DeliveryRecord>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = ids.iter().map(|id| keys.delivery(id)).collect();
    let raw: Vec<Option<String>> = redis::cmd("MGET").arg(&names).query(con)?;
    Ok(raw.into_iter().flatten().filter_map(|json| serde_json::from_str(&json).ok()).collect())
}

pub fn get(con: &mut Conn, keys: &Keys, id: &str) -> RedisResult<Option<DeliveryRecord>> {
    let raw: Option<String> = con.get(keys.delivery(id))?;
    Ok(raw.and_then(|json| serde_json::from_str(&json).ok()))
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
        let writes: Vec<&String> = commands.iter().filter(|c| c.starts_with("SET")).collect();
        assert_eq!(writes.len(), 3, "one record each: {commands:?}");
        assert!(writes[0].starts_with("SETEX p:delivery:1-0:wh_1 60 {"), "{}", writes[0]);
        let rest: Vec<&str> = commands.iter().filter(|c| !c.starts_with("SET")).map(String::as_str).collect();
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
    fn tokens_round_trip() {
        let r = record("1767225600000-0:wh_abc", "acme", Status::Delivered, 1_767_225_600_123);
        assert_eq!(decode_token(&encode_token(&r)), Some((1_767_225_600_123, "1767225600000-0:wh_abc".into())));
        assert_eq!(decode_token("garbage"), None);
    }
}
