//! Delivery history: every delivery's status and every attempt's outcome, kept in Redis with
//! bounded retention, for `DeliveryService/ListDeliveries` and `GetDelivery`.
//!
//! Keys (prefix `P`):
//! - `P delivery:<id>` — the [`DeliveryRecord`] as JSON, expiring after the retention age; `<id>`
//!   is `<stream entry id>:<webhook id>`, stable across retries;
//! - `P deliveries` — index of all deliveries, a sorted set scored by last update (ms);
//! - `P deliveries:tenant:<t>`, `P deliveries:webhook:<w>` — the same, per tenant and per webhook;
//! - `P deliveries:event:<e>` — the set of one event's deliveries, expiring with them.
//!
//! The outcome stage writes a record after every attempt (the delivery carries its attempts, so
//! this is a plain `SET`, no read-modify-write), pipelined with its batch. Retention: records
//! expire after `WSS_HISTORY_MAX_AGE`; at most once a second the indexes touched are trimmed by
//! age and to `WSS_HISTORY_MAX_COUNT` members, and records pushed out of the global index by the
//! count are deleted at once — so both the age and the count bound what Redis holds. Index
//! members whose record is gone are skipped when listing.

use std::{collections::HashSet, time::Duration};

use redis::{Commands, Connection, Pipeline, RedisResult};
use serde::{Deserialize, Serialize};

use crate::{deadletter::AttemptRecord, domain::store::Keys};

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

/// Queues the writes of one record on `pipe`; returns the index keys it touched.
pub fn queue_write(pipe: &mut Pipeline, keys: &Keys, retention: Retention, record: &DeliveryRecord) -> [String; 3] {
    let json = serde_json::to_string(record).expect("delivery records always serialize");
    let ttl = retention.max_age.as_secs().max(1);
    let score = record.updated_at_ms;
    let tenant_index = keys.deliveries_of_tenant(&record.tenant_id);
    let webhook_index = keys.deliveries_of_webhook(&record.webhook_id);
    let event_index = keys.deliveries_of_event(&record.event_id);
    pipe.set_ex(keys.delivery(&record.id), json, ttl).ignore();
    pipe.zadd(&keys.deliveries, &record.id, score).ignore();
    pipe.zadd(&tenant_index, &record.id, score).ignore();
    pipe.zadd(&webhook_index, &record.id, score).ignore();
    pipe.sadd(&event_index, &record.id).ignore();
    pipe.expire(&event_index, ttl as i64).ignore();
    [keys.deliveries.clone(), tenant_index, webhook_index]
}

/// Trims the given indexes by age and count; deletes records pushed out of the global index.
pub fn trim(con: &mut Connection, keys: &Keys, retention: Retention, touched: &HashSet<String>, now_ms: u64) -> RedisResult<()> {
    let cutoff = now_ms.saturating_sub(retention.max_age.as_millis() as u64);
    let mut pipe = redis::pipe();
    for index in touched {
        pipe.zrembyscore(index, "-inf", format!("({cutoff}")).ignore();
        if *index != keys.deliveries {
            pipe.zremrangebyrank(index, 0, -(retention.max_count as isize) - 1).ignore();
        }
    }
    pipe.query::<()>(con)?;
    let total: usize = con.zcard(&keys.deliveries)?;
    if total > retention.max_count {
        let evicted: Vec<(String, f64)> = con.zpopmin(&keys.deliveries, (total - retention.max_count) as isize)?;
        if !evicted.is_empty() {
            let doomed: Vec<String> = evicted.iter().map(|(id, _)| keys.delivery(id)).collect();
            con.del::<_, ()>(doomed)?;
        }
    }
    Ok(())
}

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
    con: &mut Connection,
    keys: &Keys,
    query: &Query,
    page_size: usize,
    token: Option<(u64, String)>,
    scan_limit: usize,
) -> RedisResult<(Vec<DeliveryRecord>, String)> {
    if !query.event_id.is_empty() {
        let ids: Vec<String> = con.smembers(keys.deliveries_of_event(&query.event_id))?;
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
        let members: Vec<(String, f64)> =
            redis::cmd("ZREVRANGEBYSCORE").arg(&index).arg(&max).arg(lower).arg("WITHSCORES").arg("LIMIT").arg(offset).arg(batch).query(con)?;
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
fn fetch(con: &mut Connection, keys: &Keys, ids: &[String]) -> RedisResult<Vec<DeliveryRecord>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = ids.iter().map(|id| keys.delivery(id)).collect();
    let raw: Vec<Option<String>> = redis::cmd("MGET").arg(&names).query(con)?;
    Ok(raw.into_iter().flatten().filter_map(|json| serde_json::from_str(&json).ok()).collect())
}

pub fn get(con: &mut Connection, keys: &Keys, id: &str) -> RedisResult<Option<DeliveryRecord>> {
    let raw: Option<String> = con.get(keys.delivery(id))?;
    Ok(raw.and_then(|json| serde_json::from_str(&json).ok()))
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
    fn tokens_round_trip() {
        let r = record("1767225600000-0:wh_abc", "acme", Status::Delivered, 1_767_225_600_123);
        assert_eq!(decode_token(&encode_token(&r)), Some((1_767_225_600_123, "1767225600000-0:wh_abc".into())));
        assert_eq!(decode_token("garbage"), None);
    }
}
