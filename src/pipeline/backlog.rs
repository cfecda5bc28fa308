//! Backlog: the durable home of deliveries that cannot be attempted now — a retry waiting for
//! its backoff, a delivery parked behind its webhook's in-flight cap, one held back by an open
//! circuit — so that they leave the shared in-flight window and one tenant's failing or slow
//! endpoint never stops the reader for everybody (docs/reliability.md, "Endpoint isolation").
//!
//! **Hand-off.** The outcome stage writes a waiting delivery into the backlog in the same
//! `MULTI … EXEC` as its history record and, when it was its entry's last unfinished delivery,
//! the entry's `XACK` ([`queue_hand_off`]). An entry is therefore acknowledged once every
//! delivery it produced is terminal *or* durably handed off, and never before. Deliveries that go
//! out at once never touch the backlog.
//!
//! **Keys** (see `Keys::backlog_*`; every one starts with `<prefix>backlog:`, followed with
//! sharded streams by the shard's hash tag `{k}:` — one backlog per shard, in its stream's slot,
//! a delivery waiting in the backlog of the shard its entry was read from):
//! - `backlog:item:<webhook id>:<entry id>` — one string: the delivery's state as JSON
//!   ([`ItemMeta`]: webhook, source entry id, event id, type and tenant, next attempt number,
//!   attempts so far), then every field of its source entry, name and value, in order — each
//!   part written `<length>:<bytes>`, so any bytes go through. The fields are copied from the
//!   stream by the hand-off script (so the entry may be trimmed) — what a dead letter and a
//!   redelivery need. A source that is not a Redis stream (a message queue, docs/contract.md §7) hands the
//!   fields over in [`HandOff::fields`] instead, and acknowledges its message once the hand-off
//!   is written. One string rather than a hash: a hash whose values outgrow 64 bytes leaves
//!   Redis's compact encoding and costs several times the memory. The delivery's place (webhook,
//!   entry) makes a hand-off idempotent: an entry read again after a crash hands off to the same
//!   item.
//! - `backlog:due:<webhook>` — a sorted set of the webhook's waiting deliveries (members: entry
//!   ids) by due time (ms). A leased one's score is its lease's end.
//! - `backlog:since:<webhook>` — the same members by when they entered the backlog, for the age
//!   of the oldest.
//! - `backlog:webhooks` — webhooks with waiting deliveries, scored by when to look at them next.
//! - `backlog:fifo:<webhook>` — a FIFO webhook's (`ORDERING_FIFO`) waiting deliveries in stream
//!   entry order ([`fifo_member`]), instead of the due set; `backlog:hold:<webhook>` — the entry
//!   id of its head while an attempt of it is out (expiring with the lease) or while its retry
//!   waits (expiring at the due time). See docs/ordering.md.
//! - `backlog:rate:<webhook>` — a rate-limited webhook's token bucket (tokens, when counted;
//!   expires once full); `backlog:throttled:<webhook>` — its deliveries already counted in the
//!   stats' `rate_limited`. See docs/rate-limits.md.
//!
//! **FIFO and rate-limited webhooks** send *every* delivery through the backlog (the signer
//! postpones their fresh deliveries at once): the take script alone decides, atomically for all
//! instances, which of their deliveries may go — a FIFO webhook's head only, one at a time, and
//! only once no earlier stream entry is still pending in the consumer group (it might be an
//! event for this webhook on its way to the backlog); and as many as the webhook's tokens allow.
//! Unordered, unlimited webhooks never come here unless they must wait.
//!
//! **Taking due work** ([`Pump`], thread `wss-backlog`, one per instance, all sharing the
//! backlog): every poll reads the webhooks whose time has come, and for each asks the isolation
//! state how many attempts it may start now (in-flight cap minus attempts on the wire; none while
//! its circuit is open or a probe is out). A script ([`TAKE_SCRIPT`]) then takes at most that many
//! due items of each, atomically, by pushing their score to the lease's end — WebhookX's
//! approach — and moves each served webhook behind the others that wait (round robin), so a
//! webhook with a million due deliveries gets its cap's worth of attempts per round, not the
//! senders; backlog work as a whole may occupy at most half the sender pool ([`Pump::budget`],
//! shared out among the webhooks with due work), so fresh deliveries always find senders. The
//! items are read (`GET`), rebuilt — routed again by the transformer's rules, as
//! the webhook stands now — and handed to the signer, which signs them afresh. An instance that
//! crashes leaves its leased items to come due again when the lease ends (`WSS_CLAIM_AFTER` plus
//! the attempt timeout), and any instance takes them. Memory holds only what is being attempted:
//! the backlog can be as large as Redis.
//!
//! **Finishing.** A backlog delivery that is delivered or dead-lettered is removed (`ZREM`,
//! `ZREM`, `DEL`) in the outcome stage's transaction with its records; one that must wait again
//! is written back with its new due time and attempts.
//!
//! While Redis is away the pump waits with backoff (the outage is logged once by the
//! connection); nothing leaves the backlog meanwhile.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::redis_conn::Conn;
use crossbeam_channel::{select, Receiver, Sender};
use redis::{RedisError, Value};
use serde::{Deserialize, Serialize};

use super::{
    event::{envelope, parse_entry},
    isolation::{Isolation, Room},
    messages::{Backlogged, Completion, Delivery, EntryTicket, EventMeta},
    transformer::{self, Plan},
};
use crate::{
    clock::Clock,
    deadletter::{AttemptRecord, Reason},
    domain::routing::{Route, RoutingHandle},
    expr::Evaluator,
    keys::{eval, Keys},
    redis_conn::{is_connection_error, RedisTarget},
    streams::RawEntry,
};

/// An entry's fields, names and values as bytes.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Webhooks looked at per poll, at most.
const CANDIDATES: usize = 1000;
/// Items taken of one webhook per poll, at most (its free slots bound it first).
const PER_WEBHOOK: usize = 64;
/// Items taken per poll in all, at most.
const PER_POLL: usize = 1024;
/// Longest wait between polls: the backlog is shared, so other instances' hand-offs are seen
/// this late at worst.
const POLL_IDLE: Duration = Duration::from_millis(250);
/// Wait between polls while there is due work this instance has no room for yet.
const POLL_BUSY: Duration = Duration::from_millis(20);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest wait for a reply before the connection is dropped and the poll made anew.
const REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// A waiting delivery's state, stored as JSON in its item (short names: a million may wait).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemMeta {
    #[serde(rename = "w")]
    pub webhook: String,
    /// The source entry's id (the history's and dead letters' `stream_entry_id`).
    #[serde(rename = "s")]
    pub source: String,
    #[serde(rename = "e")]
    pub event_id: String,
    #[serde(rename = "t")]
    pub event_type: String,
    #[serde(rename = "n")]
    pub tenant: String,
    /// Number of the attempt to make next, from 1.
    #[serde(rename = "a")]
    pub attempt: u32,
    #[serde(rename = "h", default)]
    pub attempts: Vec<AttemptRecord>,
    /// Waits in its webhook's FIFO set (`backlog:fifo:<webhook>`) rather than its due set; stays
    /// so until it is finished, whatever the webhook's ordering becomes meanwhile.
    #[serde(rename = "o", default, skip_serializing_if = "std::ops::Not::not")]
    pub fifo: bool,
}

impl ItemMeta {
    pub fn of(delivery: &Delivery, fifo: bool) -> Self {
        Self {
            webhook: delivery.webhook_id.to_string(),
            source: delivery.ticket.stream_id.clone(),
            event_id: delivery.event.id().to_owned(),
            event_type: delivery.event.event_type().to_owned(),
            tenant: delivery.event.tenant().to_owned(),
            attempt: delivery.attempt,
            attempts: delivery.history.clone(),
            fifo,
        }
    }
}

/// An entry id as a member of a FIFO set: `<ms>-<seq>` with both numbers zero-padded to 20
/// digits, so that the set's lexicographic order (every score is 0) is the stream's order.
/// Anything else (never from a Redis stream) is kept as it is.
pub fn fifo_member(entry: &str) -> String {
    match entry.split_once('-').and_then(|(ms, seq)| Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?))) {
        Some((ms, seq)) if format!("{ms}-{seq}") == entry => format!("{ms:020}-{seq:020}"),
        _ => entry.to_owned(),
    }
}

/// Writes a fresh delivery into the backlog: its state, then its source entry's fields copied
/// from the stream (none when the entry is gone), as one string; its due time — or, for a FIFO
/// webhook, its place in the webhook's FIFO set, in entry order, due now; its entry time (kept
/// from the first hand-off); and its webhook's next look no later than the due time.
///
/// KEYS: item, due set, since set, index, events stream, FIFO set.
/// ARGV: member (entry id), webhook id, due ms, now ms, state JSON, FIFO member ("": unordered).
pub const HAND_OFF_SCRIPT: &str = r#"
local parts = {string.len(ARGV[5]), ':', ARGV[5]}
local source = redis.call('XRANGE', KEYS[5], ARGV[1], ARGV[1])
if source[1] then
  local fields = source[1][2]
  for i = 1, #fields do
    parts[#parts + 1] = string.len(fields[i])
    parts[#parts + 1] = ':'
    parts[#parts + 1] = fields[i]
  end
end
redis.call('SET', KEYS[1], table.concat(parts))
local due = ARGV[3]
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[6], 0, ARGV[6])
  due = ARGV[4]
else
  redis.call('ZADD', KEYS[2], due, ARGV[1])
end
redis.call('ZADD', KEYS[3], 'NX', ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], 'LT', due, ARGV[2])
return 1
"#;

/// Writes a FIFO webhook's head back after an attempt or a postponement: it keeps the webhook's
/// hold until its due time (a retry, an open circuit), or releases it when it is due now. A hold
/// of another entry is left alone (a lease that ended and was taken over).
///
/// KEYS: hold, index. ARGV: entry id, due ms, now ms, webhook id.
const FIFO_WRITE_BACK_SCRIPT: &str = r#"
local due, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('GET', KEYS[1])
if due > now then
  if (not held) or held == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', due - now) end
elseif held == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if due < now then due = now end
redis.call('ZADD', KEYS[2], 'LT', due, ARGV[4])
return 1
"#;

/// Takes due items of some webhooks under a lease, atomically.
///
/// KEYS: the index, the shard's stream, then five per webhook: due set, FIFO set, hold, token
/// bucket, throttled set (all of one shard: one slot). ARGV: now ms, lease end ms, consumer
/// group, (unused), then per webhook its id, how many to take, and its rate limit (0: none).
///
/// For each webhook:
/// - **FIFO head** (when its FIFO set exists): the first member, in entry order, is taken only
///   when the webhook has no hold (no attempt of its head out, no retry of it waiting) and no
///   entry *before* it is still pending in the consumer group — an earlier event for this
///   webhook may still be on its way to the backlog, read by some instance and not yet handed
///   off (docs/ordering.md). Taking it sets the hold, expiring with the lease.
/// - **Due items**: its first `n` items due by now get the lease's end as score.
/// - **Rate limit**: each item taken needs a token of the webhook's bucket (refilled at `rate`
///   per second up to `rate`: a second's worth of burst, by Redis's clock, `TIME`); an item
///   that is due but finds none waits, and is counted once in the stats' `rate_limited`.
///
/// Then the webhook's next look is its earliest item or hold's end — not before now when it was
/// served, so that it queues behind webhooks not served yet, and not before its next token
/// when it was throttled — or, with nothing left, it leaves the index. Returns the webhook id
/// and item id pairs taken, flat, and the webhooks with deliveries newly held back by their rate
/// limit and how many (for the stats' `rate_limited`: global keys, written by the caller).
pub const TAKE_SCRIPT: &str = r#"
local out = {}
local limited = {}
local now = tonumber(ARGV[1])
local lease_end = tonumber(ARGV[2])
local function entry_of(member)
  local ms, seq = string.match(member, '^(%d+)-(%d+)$')
  if not ms then return member end
  return (string.gsub(ms, '^0+(%d)', '%1')) .. '-' .. (string.gsub(seq, '^0+(%d)', '%1'))
end
for w = 0, (#KEYS - 2) / 5 - 1 do
  local k = 3 + w * 5
  local due, fifo, hold, bucket, throttled = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local webhook = ARGV[5 + w * 3]
  local n = tonumber(ARGV[6 + w * 3])
  local rate = tonumber(ARGV[7 + w * 3])
  local tokens, clock = nil, 0
  if rate > 0 then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local b = redis.call('HMGET', bucket, 't', 'at')
    tokens = rate
    if b[1] then tokens = math.min(rate, tonumber(b[1]) + math.max(0, clock - tonumber(b[2])) * rate / 1000) end
  else
    redis.call('DEL', throttled)
  end
  local throttled_now, counted, took = false, 0, 0
  local function grant(item)
    if tokens == nil then return true end
    if tokens >= 1 then
      tokens = tokens - 1
      redis.call('SREM', throttled, item)
      return true
    end
    throttled_now = true
    if redis.call('SADD', throttled, item) == 1 then counted = counted + 1 end
    return false
  end
  local next_fifo = nil
  if redis.call('EXISTS', fifo) == 1 then
    local ttl = redis.call('PTTL', hold)
    if ttl > 0 then
      next_fifo = now + ttl
    elseif ttl == -1 then
      redis.call('DEL', hold)
      next_fifo = now
    else
      local entry = entry_of(redis.call('ZRANGE', fifo, 0, 0)[1])
      local ok, earlier = pcall(redis.call, 'XPENDING', KEYS[2], ARGV[3], '-', '(' .. entry, 1)
      if ok and earlier[1] then
        next_fifo = now + 20
      elseif n > 0 and grant(entry) then
        redis.call('SET', hold, entry, 'PX', math.max(1, lease_end - now))
        out[#out + 1] = webhook
        out[#out + 1] = entry
        n = n - 1
        took = took + 1
        next_fifo = lease_end
      else
        next_fifo = now
      end
    end
  end
  if n > 0 then
    local items = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, n)
    for _, item in ipairs(items) do
      if not grant(item) then break end
      redis.call('ZADD', due, lease_end, item)
      out[#out + 1] = webhook
      out[#out + 1] = item
      took = took + 1
    end
  end
  if rate > 0 then
    redis.call('HSET', bucket, 't', tostring(tokens), 'at', clock)
    redis.call('PEXPIRE', bucket, 2000)
  end
  if counted > 0 then
    limited[#limited + 1] = webhook
    limited[#limited + 1] = counted
  end
  local next = nil
  local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if first[1] then next = tonumber(first[2]) end
  if next_fifo and ((not next) or next_fifo < next) then next = next_fifo end
  if next then
    if took > 0 and next < now then next = now end
    if throttled_now then
      local token_at = clock + math.ceil((1 - tokens) * 1000 / rate)
      local wait = now + (token_at - clock)
      if next < wait then next = wait end
    end
    redis.call('ZADD', KEYS[1], next, webhook)
  else
    redis.call('ZREM', KEYS[1], webhook)
  end
end
return {out, limited}
"#;

/// A hand-off the outcome stage owes Redis.
#[derive(Debug)]
pub struct HandOff {
    /// The shard of its entry: whose backlog it waits in.
    pub shard: u32,
    pub webhook: Arc<str>,
    /// The source entry's id: the delivery's member in its webhook's sets.
    pub entry: String,
    pub due_ms: u64,
    pub meta: ItemMeta,
    /// The fields of a delivery taken from the backlog, written back with its state, or of a
    /// broker-sourced event's; `None` for a fresh delivery of a Redis stream entry, whose fields
    /// the hand-off script copies from the stream.
    pub fields: Option<Fields>,
}

impl HandOff {
    /// The hand-off of `delivery`, due at `due_ms`; its attempts and attempt number as they
    /// stand. `fifo`: into its webhook's FIFO set (a fresh one is then due at once: its turn,
    /// not a time, decides when it goes).
    pub fn of(delivery: &Delivery, due_ms: u64, fifo: bool) -> Self {
        Self {
            shard: delivery.ticket.shard,
            webhook: delivery.webhook_id.clone(),
            entry: delivery.ticket.stream_id.clone(),
            due_ms,
            meta: ItemMeta::of(delivery, fifo),
            // A broker's event hands over its fields from memory: no stream entry to copy.
            fields: match &delivery.backlog {
                Some(backlogged) => Some(backlogged.fields.clone()),
                None => delivery.ticket.broker_fields().cloned(),
            },
        }
    }
}

/// Queues `hand_off` in `pipe` (the outcome stage's transaction).
pub fn queue_hand_off(pipe: &mut redis::Pipeline, keys: &Keys, hand_off: &HandOff, now_ms: u64) {
    let meta = serde_json::to_string(&hand_off.meta).expect("an item's state always serializes");
    let k = hand_off.shard;
    let (item, due, since) = (
        keys.backlog_item(k, &hand_off.webhook, &hand_off.entry),
        keys.backlog_due(k, &hand_off.webhook),
        keys.backlog_since(k, &hand_off.webhook),
    );
    let fifo = hand_off.meta.fifo;
    match &hand_off.fields {
        None => {
            let script_keys: [&str; 6] =
                [&item, &due, &since, &keys.backlog_index(k), &keys.stream(k), &keys.backlog_fifo(k, &hand_off.webhook)];
            let member = if fifo { fifo_member(&hand_off.entry) } else { String::new() };
            let args = (&hand_off.entry, &*hand_off.webhook, hand_off.due_ms, now_ms, meta, member);
            pipe.add_command(eval(HAND_OFF_SCRIPT, &script_keys, args)).ignore();
        }
        Some(fields) if fifo => {
            pipe.cmd("SET").arg(item).arg(encode_item(&meta, fields)).ignore();
            pipe.cmd("ZADD").arg(since).arg("NX").arg(now_ms).arg(&hand_off.entry).ignore();
            pipe.cmd("ZADD").arg(keys.backlog_fifo(k, &hand_off.webhook)).arg(0).arg(fifo_member(&hand_off.entry)).ignore();
            let script_keys: [&str; 2] = [&keys.backlog_hold(k, &hand_off.webhook), &keys.backlog_index(k)];
            let args = (&hand_off.entry, hand_off.due_ms, now_ms, &*hand_off.webhook);
            pipe.add_command(eval(FIFO_WRITE_BACK_SCRIPT, &script_keys, args)).ignore();
        }
        Some(fields) => {
            pipe.cmd("SET").arg(item).arg(encode_item(&meta, fields)).ignore();
            pipe.cmd("ZADD").arg(due).arg(hand_off.due_ms).arg(&hand_off.entry).ignore();
            pipe.cmd("ZADD").arg(since).arg("NX").arg(now_ms).arg(&hand_off.entry).ignore();
            pipe.cmd("ZADD").arg(keys.backlog_index(k)).arg("LT").arg(hand_off.due_ms).arg(&*hand_off.webhook).ignore();
        }
    }
}

/// Releases a FIFO webhook's hold if `ARGV[1]` holds it, and has the webhook looked at now (its
/// next head). KEYS: hold, index. ARGV: entry id, now ms, webhook id.
const FIFO_DONE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZADD', KEYS[2], 'LT', ARGV[2], ARGV[3])
return 1
"#;

/// Queues the removal of a finished backlog delivery (its webhook leaves the index at the next
/// take that finds nothing). `fifo`: it was its FIFO webhook's head, whose hold is released so
/// that the next one may go.
pub fn queue_done(pipe: &mut redis::Pipeline, keys: &Keys, shard: u32, webhook: &str, entry: &str, fifo: bool, now_ms: u64) {
    pipe.cmd("ZREM").arg(keys.backlog_due(shard, webhook)).arg(entry).ignore();
    pipe.cmd("ZREM").arg(keys.backlog_since(shard, webhook)).arg(entry).ignore();
    pipe.cmd("DEL").arg(keys.backlog_item(shard, webhook, entry)).ignore();
    if fifo {
        pipe.cmd("ZREM").arg(keys.backlog_fifo(shard, webhook)).arg(fifo_member(entry)).ignore();
        let script_keys: [&str; 2] = [&keys.backlog_hold(shard, webhook), &keys.backlog_index(shard)];
        pipe.add_command(eval(FIFO_DONE_SCRIPT, &script_keys, (entry, now_ms, webhook))).ignore();
    }
}

/// An item as stored: its state JSON and its fields, each part `<length>:<bytes>`.
fn encode_item(meta: &str, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size = meta.len() + fields.iter().map(|(k, v)| k.len() + v.len() + 16).sum::<usize>() + 8;
    let mut out = Vec::with_capacity(size);
    let mut part = |bytes: &[u8]| {
        out.extend_from_slice(bytes.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(bytes);
    };
    part(meta.as_bytes());
    for (name, value) in fields {
        part(name);
        part(value);
    }
    out
}

/// An item's state and fields; `None` when it does not decode (written by hand, or cut short).
fn decode_item(mut bytes: &[u8]) -> Option<(ItemMeta, Fields)> {
    let mut next = || -> Option<Option<Vec<u8>>> {
        if bytes.is_empty() {
            return Some(None);
        }
        let colon = bytes.iter().position(|b| *b == b':')?;
        let len: usize = std::str::from_utf8(&bytes[..colon]).ok()?.parse().ok()?;
        let rest = &bytes[colon + 1..];
        let part = rest.get(..len)?.to_vec();
        bytes = &rest[len..];
        Some(Some(part))
    };
    let meta: ItemMeta = serde_json::from_slice(&next()??).ok()?;
    let mut fields = Vec::new();
    while let Some(name) = next()? {
        let value = next()??;
        fields.push((name, value));
    }
    Some((meta, fields))
}

/// One webhook's backlog: how many deliveries wait, and since when the oldest does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub deliveries: u64,
    /// When the oldest entered the backlog (ms since the epoch); `None` when it is empty.
    pub oldest_since_ms: Option<u64>,
}

/// Queues the two reads [`depth_from`] answers: `ZCARD` of the since set (every waiting
/// delivery, in the due set or the FIFO set), and its first.
pub fn queue_depth(pipe: &mut redis::Pipeline, keys: &Keys, shard: u32, webhook: &str) {
    pipe.cmd("ZCARD").arg(keys.backlog_since(shard, webhook));
    pipe.cmd("ZRANGE").arg(keys.backlog_since(shard, webhook)).arg(0).arg(0).arg("WITHSCORES");
}

/// The depth from the two replies [`queue_depth`] asked for.
pub fn depth_from(count: &Value, first: &Value) -> Depth {
    let deliveries = match count {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let oldest_since_ms = match first {
        Value::Array(pair) => match pair.get(1) {
            Some(Value::BulkString(score)) => std::str::from_utf8(score).ok().and_then(|s| s.parse::<f64>().ok()).map(|ms| ms as u64),
            Some(Value::Double(score)) => Some(*score as u64),
            _ => None,
        },
        _ => None,
    };
    Depth { deliveries, oldest_since_ms: oldest_since_ms.filter(|_| deliveries > 0) }
}

/// The depth of `webhook`'s backlog, read now.
pub fn depth(con: &mut Conn, keys: &Keys, webhook: &str) -> redis::RedisResult<Depth> {
    Ok(depths_of(con, keys, &[webhook])?.pop().unwrap_or_default())
}

/// The webhooks with a backlog (at most `limit`, by next look) and each one's depth.
pub fn depths(con: &mut Conn, keys: &Keys, shard: u32, limit: usize) -> redis::RedisResult<Vec<(String, Depth)>> {
    let webhooks: Vec<String> = redis::cmd("ZRANGE").arg(keys.backlog_index(shard)).arg(0).arg(limit.saturating_sub(1)).query(con)?;
    let ids: Vec<&str> = webhooks.iter().map(String::as_str).collect();
    let depths = depths_in(con, keys, shard, &ids)?;
    Ok(webhooks.into_iter().zip(depths).collect())
}

/// The depths of `webhooks` over every shard's backlog (a webhook's deliveries wait in the
/// backlog of the shard their entries came from: its tenant's, unless a producer erred).
pub fn depths_of(con: &mut Conn, keys: &Keys, webhooks: &[&str]) -> redis::RedisResult<Vec<Depth>> {
    let mut total = vec![Depth::default(); webhooks.len()];
    for shard in 0..keys.shards() {
        for (sum, depth) in total.iter_mut().zip(depths_in(con, keys, shard, webhooks)?) {
            sum.deliveries += depth.deliveries;
            sum.oldest_since_ms = match (sum.oldest_since_ms, depth.oldest_since_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    Ok(total)
}

/// The depth of each of `webhooks`, in their order, in one round trip.
/// The depths of `webhooks` in shard `shard`'s backlog (one slot: one pipeline).
fn depths_in(con: &mut Conn, keys: &Keys, shard: u32, webhooks: &[&str]) -> redis::RedisResult<Vec<Depth>> {
    if webhooks.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for webhook in webhooks {
        queue_depth(&mut pipe, keys, shard, webhook);
    }
    let replies: Vec<Value> = pipe.query(con)?;
    if replies.len() != webhooks.len() * 2 {
        return Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "backlog depths",
            format!("{} replies for {} commands", replies.len(), webhooks.len() * 2),
        )));
    }
    Ok(replies.chunks(2).map(|pair| depth_from(&pair[0], &pair[1])).collect())
}

/// An item as read back: its place, state and source entry's fields (`None`: it was finished
/// meanwhile, or it does not decode).
struct Taken {
    webhook: String,
    entry: String,
    state: Option<(ItemMeta, Fields)>,
}

/// The pump's share of the pipeline: takes due work from the backlog and feeds the signer.
pub struct Pump {
    pub redis: RedisTarget,
    pub keys: Keys,
    pub routing: Arc<RoutingHandle>,
    pub isolation: Arc<Isolation>,
    /// A leased item comes back to the backlog this long after its attempt's timeout.
    pub claim_after: Duration,
    pub max_event_bytes: usize,
    /// `wss_backlog_taken_total`.
    pub taken: prometheus::IntCounter,
    /// Backlog deliveries in progress on this instance, at most: half the sender pool.
    pub budget: usize,
    /// Backlog deliveries handed to the signer and not yet finished (the outcome stage counts
    /// them down as their completions arrive).
    pub in_progress: Arc<AtomicUsize>,
    /// Where due times and lease ends are measured from.
    pub clock: Clock,
}

/// Members with their scores, as `ZRANGE … WITHSCORES` answers.
type Scored = Vec<(String, f64)>;

/// What a poll found.
struct Poll {
    took: usize,
    /// Due work was left for lack of room on this instance.
    left_due: bool,
    /// When the earliest webhook in the index is next due (ms), if any.
    next_ms: Option<u64>,
    /// A full page of candidates gave nothing to take: look at the next page next time, so that
    /// more than [`CANDIDATES`] webhooks at their caps cannot hide the others.
    next_offset: usize,
}

impl Pump {
    /// `wake` says a hand-off or a freed slot may have made work takeable; `out` is the
    /// signer's queue, `done` the outcome stage's.
    pub fn run(self, wake: Receiver<()>, out: Sender<Delivery>, done: Sender<Completion>, shutdown: Receiver<()>) {
        let evaluator = Evaluator::new();
        let mut conn: Option<Conn> = None;
        let mut wait = Duration::ZERO;
        let mut backoff = BACKOFF_MIN;
        let shards = self.keys.shards();
        let mut offsets = vec![0; shards as usize];
        let mut round: u32 = 0;
        loop {
            select! {
                recv(shutdown) -> _ => return,
                recv(wake) -> msg => if msg.is_err() { return },
                default(wait) => {}
            }
            // What was handed to the signer is admitted first (it takes the slots the next poll
            // counts).
            if !out.is_empty() {
                wait = POLL_BUSY;
                continue;
            }
            // Every shard's backlog, starting with another each round so that none goes first
            // for ever when the budget runs short.
            round = round.wrapping_add(1);
            let mut polled = Ok(Some(Poll { took: 0, left_due: false, next_ms: None, next_offset: 0 }));
            for shard in (0..shards).map(|k| (k + round) % shards) {
                let offset = offsets[shard as usize];
                match (&mut polled, self.poll(&mut conn, shard, &evaluator, &out, &done, offset)) {
                    (Ok(Some(total)), Ok(Some(poll))) => {
                        offsets[shard as usize] = poll.next_offset;
                        total.took += poll.took;
                        total.left_due |= poll.left_due;
                        total.next_ms = match (total.next_ms, poll.next_ms) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    (_, other) => {
                        polled = other;
                        break;
                    }
                }
            }
            match polled {
                Ok(Some(poll)) => {
                    backoff = BACKOFF_MIN;
                    wait = if poll.took > 0 || poll.left_due {
                        POLL_BUSY
                    } else {
                        let until_next =
                            poll.next_ms.map_or(POLL_IDLE, |next| Duration::from_millis(next.saturating_sub(self.clock.now_ms())));
                        until_next.clamp(Duration::from_millis(1), POLL_IDLE)
                    };
                }
                Ok(None) => return,
                Err(err) => {
                    if is_connection_error(&err) {
                        self.redis.connection_lost(&err);
                        log::debug!(target: "wss::backlog", "cannot read the backlog ({err}); trying again in {} ms", backoff.as_millis());
                    } else {
                        log::error!(target: "wss::backlog", "cannot read the backlog ({err}); trying again in {} ms", backoff.as_millis());
                    }
                    conn = None;
                    wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One poll; `Ok(None)` when a next stage is gone (shutdown).
    fn poll(
        &self,
        conn: &mut Option<Conn>,
        shard: u32,
        evaluator: &Evaluator,
        out: &Sender<Delivery>,
        done: &Sender<Completion>,
        offset: usize,
    ) -> Result<Option<Poll>, RedisError> {
        if conn.is_none() {
            *conn = Some(self.redis.connect_bounded(Duration::from_secs(2), REDIS_TIMEOUT)?);
        }
        let con = conn.as_mut().expect("just connected");
        let now = self.clock.now_ms();
        let index = self.keys.backlog_index(shard);
        let (candidates, first): (Scored, Scored) = redis::pipe()
            .cmd("ZRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(now)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(offset)
            .arg(CANDIDATES)
            .cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query(con)?;
        let next_ms = first.first().map(|(_, score)| *score as u64);
        let full_page = candidates.len() == CANDIDATES;
        if candidates.is_empty() {
            // Past the last page (or nothing due): from the first page again.
            return Ok(Some(Poll { took: 0, left_due: offset > 0, next_ms, next_offset: 0 }));
        }
        let page_after = |took: usize| if took == 0 && full_page { offset + CANDIDATES } else { 0 };
        let routing = self.routing.current();
        let at = self.clock.now();
        // Webhook, how many to take, its rate limit (0: none).
        let mut wanted: Vec<(String, usize, u32)> = Vec::new();
        let mut deferred: Vec<(String, u64)> = Vec::new();
        let mut left_due = false;
        let mut total = 0;
        let mut longest_timeout = Duration::ZERO;
        // What the budget allows now, shared out: every webhook with due work gets a turn.
        let allowed = self.budget.saturating_sub(self.in_progress.load(Ordering::SeqCst)).min(PER_POLL);
        let fair = (self.budget / candidates.len()).max(1);
        for (webhook, _) in candidates {
            if total >= allowed {
                left_due = true;
                break;
            }
            let rate = routing.webhooks.get(webhook.as_str()).map_or(0, |route| route.rate_limit);
            let n = match routing.webhooks.get(webhook.as_str()) {
                // Deleted or disabled: taken at once, for the signer to dead-letter with the reason.
                None => PER_WEBHOOK,
                Some(route) if !route.is_active() => PER_WEBHOOK,
                Some(route) => match self.isolation.room(&webhook, at) {
                    Room::Free(free) => {
                        longest_timeout = longest_timeout.max(route.policy.attempt_timeout);
                        if free == 0 {
                            left_due = true;
                        }
                        free.min(PER_WEBHOOK).min(fair)
                    }
                    Room::OpenUntil(until) => {
                        deferred.push((webhook, self.clock.wall_ms(until)));
                        continue;
                    }
                },
            };
            let n = n.min(allowed - total);
            if n > 0 {
                total += n;
                wanted.push((webhook, n, rate));
            }
        }
        let lease_until = now + (self.claim_after + longest_timeout).as_millis() as u64;
        let mut pipe = redis::pipe();
        // An open circuit: its webhook's next look is the end of the cool-down.
        for (webhook, until_ms) in &deferred {
            pipe.cmd("ZADD").arg(&index).arg("XX").arg("GT").arg(until_ms).arg(webhook).ignore();
        }
        if !wanted.is_empty() {
            let take = pipe.cmd("EVAL").arg(TAKE_SCRIPT).arg(wanted.len() * 5 + 2).arg(&index).arg(self.keys.stream(shard));
            for (webhook, _, _) in &wanted {
                take.arg(self.keys.backlog_due(shard, webhook))
                    .arg(self.keys.backlog_fifo(shard, webhook))
                    .arg(self.keys.backlog_hold(shard, webhook))
                    .arg(self.keys.backlog_rate(shard, webhook))
                    .arg(self.keys.backlog_throttled(shard, webhook));
            }
            take.arg(now).arg(lease_until).arg(crate::source::redis::GROUP).arg(crate::stats::KEY_TTL.as_secs());
            for (webhook, n, rate) in &wanted {
                take.arg(webhook).arg(*n).arg(*rate);
            }
        }
        if pipe.cmd_iter().next().is_none() {
            return Ok(Some(Poll { took: 0, left_due, next_ms, next_offset: page_after(0) }));
        }
        let replies: Vec<Value> = pipe.query(con)?;
        let (pairs, limited): (Vec<String>, Vec<(String, i64)>) = match replies.into_iter().last() {
            Some(reply) if !wanted.is_empty() => redis::from_redis_value(reply)?,
            _ => Default::default(),
        };
        self.count_rate_limited(con, &limited)?;
        if pairs.is_empty() {
            return Ok(Some(Poll { took: 0, left_due, next_ms, next_offset: page_after(0) }));
        }
        let taken = self.read_items(con, shard, &pairs)?;
        let count = taken.len();
        self.in_progress.fetch_add(count, Ordering::SeqCst);
        self.taken.inc_by(count as u64);
        log::debug!(target: "wss::backlog", "took {count} due deliveries from the backlog");
        let routing = self.routing.current();
        for item in taken {
            let Some((meta, fields)) = item.state else {
                self.in_progress.fetch_sub(1, Ordering::SeqCst);
                // Finished meanwhile by another instance whose lease had ended: drop its traces.
                let mut pipe = redis::pipe();
                // (As a FIFO head too, harmlessly for an unordered one: its hold must not stay.)
                queue_done(&mut pipe, &self.keys, shard, &item.webhook, &item.entry, true, self.clock.now_ms());
                pipe.query::<()>(con)?;
                continue;
            };
            let route = routing.webhooks.get(meta.webhook.as_str());
            let sent = match rebuild(shard, meta, fields, route, evaluator, self.max_event_bytes) {
                Rebuilt::Send(delivery) => out.send(delivery).is_ok(),
                Rebuilt::Done(completion) => done.send(completion).is_ok(),
            };
            if !sent {
                return Ok(None);
            }
        }
        Ok(Some(Poll { took: count, left_due, next_ms, next_offset: page_after(count) }))
    }

    /// Reads the items `pairs` (webhook id, entry id, flat) names, in one round trip.
    /// Counts in the webhooks' stats the deliveries the take found held back by a rate limit
    /// for the first time. Not inside the take script: the stats are global keys, in another
    /// slot than a shard's backlog on a cluster.
    fn count_rate_limited(&self, con: &mut Conn, limited: &[(String, i64)]) -> Result<(), RedisError> {
        if limited.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (webhook, count) in limited {
            let key = self.keys.webhook_stats(webhook);
            pipe.cmd("HINCRBY").arg(&key).arg("rate_limited").arg(*count).ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(crate::stats::KEY_TTL.as_secs()).ignore();
        }
        pipe.query(con)
    }

    fn read_items(&self, con: &mut Conn, shard: u32, pairs: &[String]) -> Result<Vec<Taken>, RedisError> {
        let mut pipe = redis::pipe();
        for pair in pairs.chunks(2) {
            pipe.cmd("GET").arg(self.keys.backlog_item(shard, &pair[0], &pair[1]));
        }
        let replies: Vec<Option<Vec<u8>>> = pipe.query(con)?;
        Ok(pairs
            .chunks(2)
            .zip(replies)
            .map(|(pair, stored)| Taken {
                webhook: pair[0].clone(),
                entry: pair[1].clone(),
                state: stored.as_deref().and_then(decode_item),
            })
            .collect())
    }
}

/// What an item becomes.
enum Rebuilt {
    /// To the signer.
    Send(Delivery),
    /// To the outcome stage.
    Done(Completion),
}

/// Rebuilds an item's delivery with its webhook's current route (`None`: deleted): routed again
/// by the transformer's rules ([`transformer::plan_one`]), so that a webhook whose types or
/// filter no longer want the event does not get it, and a changed transform applies.
fn rebuild(
    shard: u32,
    meta: ItemMeta,
    fields: Fields,
    route: Option<&Arc<Route>>,
    evaluator: &Evaluator,
    max_event_bytes: usize,
) -> Rebuilt {
    let ticket = EntryTicket::new(shard, meta.source.clone(), false);
    let webhook_id: Arc<str> = match route {
        Some(route) => route.id.clone(),
        None => meta.webhook.as_str().into(),
    };
    let attempt = meta.attempt.max(1);
    let fifo = meta.fifo;
    let entry = RawEntry { id: meta.source.clone(), fields: Some(fields) };
    let parsed = if entry.fields.as_ref().is_some_and(|f| !f.is_empty()) { Some(parse_entry(&entry, max_event_bytes)) } else { None };
    let fields = entry.fields.unwrap_or_default();
    let delivery = |event: Arc<EventMeta>, body: Arc<[u8]>, history: Vec<AttemptRecord>, fields: Fields| Delivery {
        ticket: ticket.clone(),
        event,
        webhook_id: webhook_id.clone(),
        body,
        attempt,
        history,
        backlog: Some(Box::new(Backlogged { fields, fifo })),
    };
    let event = match parsed {
        Some(Ok(event)) => event,
        failed => {
            let (reason, detail) = match failed {
                Some(Err(rejection)) => (rejection.reason, rejection.detail),
                _ => (
                    Reason::EntryDeleted,
                    format!(
                        "stream entry {} was deleted (XDEL or trimming) before its delivery to webhook {} was handed to the backlog",
                        meta.source, meta.webhook
                    ),
                ),
            };
            let event = Arc::new(EventMeta::new(&meta.event_id, &meta.event_type, &meta.tenant));
            return Rebuilt::Done(Completion::Abandoned {
                delivery: delivery(event, Arc::from(&[][..]), meta.attempts, fields),
                reason,
                detail,
            });
        }
    };
    let event_meta = Arc::new(EventMeta::of(&event));
    let Some(route) = route.filter(|route| route.is_active()) else {
        // Deleted or disabled: the signer abandons it with the reason, as it does any delivery.
        return Rebuilt::Send(delivery(event_meta, envelope(&event).into(), meta.attempts, fields));
    };
    match transformer::plan_one(evaluator, &event, route) {
        None => {
            log::info!(target: "wss::backlog", tenant = event.tenant.as_str(), webhook = &*webhook_id, event_id = event.id.as_str(), outcome = "unrouted";
                "waiting delivery of event {} to webhook {webhook_id} is not sent: the webhook no longer wants it (event types or filter changed)", event.id);
            Rebuilt::Done(Completion::AlreadyTerminal { delivery: delivery(event_meta, Arc::from(&[][..]), meta.attempts, fields) })
        }
        Some(Plan::Send(body)) => Rebuilt::Send(delivery(event_meta, body, meta.attempts, fields)),
        Some(Plan::DeadLetter { reason, detail, body }) => {
            Rebuilt::Done(Completion::Abandoned { delivery: delivery(event_meta, body, meta.attempts, fields), reason, detail })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::routing::test_route;

    fn meta(attempt: u32) -> ItemMeta {
        ItemMeta {
            webhook: "wh_1".into(),
            source: "1767225600000-0".into(),
            event_id: "1767225600000-0".into(),
            event_type: "order.created".into(),
            tenant: "acme".into(),
            attempt,
            attempts: vec![AttemptRecord {
                attempt: 1,
                status: 500,
                error_kind: crate::deadletter::ErrorKind::HttpStatus,
                ..Default::default()
            }],
            fifo: false,
        }
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn an_item_round_trips_any_bytes_in_order() {
        let json = serde_json::to_string(&meta(2)).unwrap();
        let fields =
            vec![(b"tenant".to_vec(), b"acme".to_vec()), (b"data".to_vec(), vec![0xff, b':', b'9']), (b"x:y".to_vec(), Vec::new())];
        let stored = encode_item(&json, &fields);
        assert!(stored.starts_with(format!("{}:{json}6:tenant4:acme", json.len()).as_bytes()), "{}", String::from_utf8_lossy(&stored));
        assert_eq!(decode_item(&stored), Some((meta(2), fields.clone())));
        assert_eq!(decode_item(&encode_item(&json, &[])), Some((meta(2), Vec::new())), "an item whose entry was gone");
        for broken in [&b""[..], b"{}", b"5:{", b"2:{}", b"x:{}"] {
            assert_eq!(decode_item(broken), None, "{}", String::from_utf8_lossy(broken));
        }
        let mut cut = stored.clone();
        cut.truncate(stored.len() - 1);
        assert_eq!(decode_item(&cut), None, "cut short");
        let mut odd = encode_item(&json, &fields);
        odd.extend_from_slice(b"4:name");
        assert_eq!(decode_item(&odd), None, "a name without a value");
    }

    #[test]
    fn an_item_is_rebuilt_at_its_attempt_with_its_attempts() {
        let entry = fields(&[("tenant", "acme"), ("type", "order.created"), ("data", r#"{"n":1}"#)]);
        match rebuild(0, meta(2), entry.clone(), Some(&test_route("wh_1", None, None)), &Evaluator::new(), 1 << 20) {
            Rebuilt::Send(delivery) => {
                assert_eq!((delivery.attempt, delivery.history.len()), (2, 1));
                assert_eq!(delivery.ticket.stream_id, "1767225600000-0");
                assert!(std::str::from_utf8(&delivery.body).unwrap().contains(r#""data":{"n":1}"#));
                assert_eq!(delivery.backlog.unwrap().fields, entry);
            }
            Rebuilt::Done(_) => panic!("a due item of an active webhook is sent"),
        }
        // Its filter now says no: finished without an attempt.
        let no = test_route("wh_1", Some("event.data.n == 2"), None);
        assert!(matches!(
            rebuild(0, meta(2), entry.clone(), Some(&no), &Evaluator::new(), 1 << 20),
            Rebuilt::Done(Completion::AlreadyTerminal { .. })
        ));
        // Deleted webhook: to the signer, which dead-letters it with the reason.
        assert!(matches!(rebuild(0, meta(2), entry, None, &Evaluator::new(), 1 << 20), Rebuilt::Send(_)));
        // The source entry was gone when it was handed off.
        match rebuild(0, meta(3), Vec::new(), Some(&test_route("wh_1", None, None)), &Evaluator::new(), 1 << 20) {
            Rebuilt::Done(Completion::Abandoned { reason, delivery, .. }) => {
                assert_eq!(reason, Reason::EntryDeleted);
                assert_eq!((delivery.event.id(), delivery.attempt), ("1767225600000-0", 3));
            }
            _ => panic!("an item without its fields is dead-lettered"),
        }
    }

    #[test]
    fn fifo_members_sort_as_the_stream_does() {
        let mut ids = ["1767225600000-10", "1767225600000-9", "999-0", "1767225600001-0"];
        ids.sort_by_key(|id| fifo_member(id));
        assert_eq!(ids, ["999-0", "1767225600000-9", "1767225600000-10", "1767225600001-0"]);
        assert_eq!(fifo_member("12-3"), "00000000000000000012-00000000000000000003");
        for odd in ["abc", "01-2", "1-2-3", "-1"] {
            assert_eq!(fifo_member(odd), odd, "kept as it is");
        }
        // The state says FIFO only when it is; older items read back as unordered.
        let fifo = ItemMeta { fifo: true, ..meta(1) };
        let json = serde_json::to_string(&fifo).unwrap();
        assert!(json.contains(r#""o":true"#), "{json}");
        assert!(!serde_json::to_string(&meta(1)).unwrap().contains(r#""o""#));
        assert_eq!(serde_json::from_str::<ItemMeta>(&json).unwrap(), fifo);
    }

    #[test]
    fn depths_read_from_replies() {
        let first = Value::Array(vec![Value::BulkString(b"item".to_vec()), Value::BulkString(b"1767225600000".to_vec())]);
        assert_eq!(depth_from(&Value::Int(3), &first), Depth { deliveries: 3, oldest_since_ms: Some(1_767_225_600_000) });
        assert_eq!(depth_from(&Value::Int(0), &Value::Array(vec![])), Depth::default());
    }
}
