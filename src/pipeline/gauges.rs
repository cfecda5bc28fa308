//! Gauges: a thread of its own (`wss-gauges`) that samples the pipeline's state about once a
//! second for `/metrics` and the status page, so that the stages themselves only count events.
//!
//! - Every [`TICK`]: the depth of every channel, the in-flight window, and from the isolation
//!   state the deliveries parked (`wss_parked_deliveries`) and the circuits
//!   (`wss_circuit_open{webhook}`, whose series of webhooks that went back to healthy and idle,
//!   or were deleted, are removed).
//! - Every [`POLL_REDIS`] (2 s): `XINFO GROUPS <prefix>events` for group `wss`'s `lag` (Redis ≥ 7; -1
//!   when Redis cannot tell, e.g. after an `XDEL`) and `pending`, `XLEN <prefix>deadletters`, and
//!   `XPENDING <prefix>events wss` for the oldest pending entry (`wss_oldest_pending_age_seconds`).
//!   On its own connection with a short timeout; a failure leaves the last figures and is
//!   logged at debug only (the stages that depend on Redis log outages).
//! - Every [`POLL_BACKLOG`] (5 s): the durable backlog (`super::backlog`) — how many webhooks
//!   have one (`ZCARD`), and for at most [`BACKLOG_SERIES`] of them their depth and the age of
//!   their oldest delivery (`wss_backlog_depth{webhook}`, `wss_backlog_oldest_age_seconds{webhook}`;
//!   series of webhooks whose backlog emptied are removed), in one pipelined round trip.

use std::{collections::HashSet, sync::Arc, time::Duration};

use crate::redis_conn::Conn;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::Value;

use super::{
    backlog,
    isolation::{Circuit, Isolation},
    messages::InFlight,
};
use crate::{
    clock::Clock,
    domain::routing::RoutingHandle,
    keys::Keys,
    metrics::Metrics,
    redis_conn::RedisTarget,
    streams::{pairs, text},
};

const TICK: Duration = Duration::from_secs(1);
const POLL_REDIS: Duration = Duration::from_secs(2);
const POLL_BACKLOG: Duration = Duration::from_secs(5);
/// Webhooks whose backlog gets a series of its own, at most.
const BACKLOG_SERIES: usize = 1000;
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The channels whose depth is sampled, in the order of `crate::metrics::EDGES`.
pub struct Depths(pub Vec<Box<dyn Fn() -> usize + Send>>);

pub struct Gauges {
    pub metrics: Arc<Metrics>,
    pub isolation: Arc<Isolation>,
    pub in_flight: Arc<InFlight>,
    pub routing: Arc<RoutingHandle>,
    pub redis: RedisTarget,
    pub keys: Keys,
    pub depths: Depths,
    /// Where the sampling times and entry ages are measured.
    pub clock: Clock,
}

impl Gauges {
    pub fn run(self, shutdown: Receiver<()>) {
        let mut conn: Option<Conn> = None;
        let mut open_series: HashSet<String> = HashSet::new();
        let mut backlog_series: HashSet<String> = HashSet::new();
        let mut next_poll = self.clock.now();
        let mut next_backlog = next_poll;
        loop {
            for (edge, depth) in self.depths.0.iter().enumerate() {
                self.metrics.channel_depth(edge, depth());
            }
            self.metrics.in_flight.set(self.in_flight.len() as i64);
            self.circuits(&mut open_series);
            if self.clock.now() >= next_poll {
                next_poll = self.clock.now() + POLL_REDIS;
                if let Err(err) = self.poll_redis(&mut conn) {
                    log::debug!(target: "wss::gauges", "reading the stream's lag failed ({err}); it is -1 (unknown) until Redis answers");
                    self.metrics.stream_lag.set(-1);
                    conn = None;
                }
            }
            if conn.is_some() && self.clock.now() >= next_backlog {
                next_backlog = self.clock.now() + POLL_BACKLOG;
                if let Err(err) = self.poll_backlog(conn.as_mut().expect("checked above"), &mut backlog_series) {
                    log::debug!(target: "wss::gauges", "reading the backlog's depth failed ({err}); keeping the last figures");
                    conn = None;
                }
            }
            match shutdown.recv_timeout(TICK) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    fn circuits(&self, open_series: &mut HashSet<String>) {
        let routing = self.routing.current();
        let mut endpoints = self.isolation.snapshot();
        // The signer counts what it parks per webhook (`Isolation::set_waiting`); the total is theirs.
        self.metrics.parked.set(endpoints.iter().map(|e| e.parked as i64).sum());
        endpoints.retain(|e| routing.webhooks.contains_key(e.webhook.as_str()));
        let mut now: HashSet<String> = HashSet::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let open = !matches!(endpoint.circuit, Circuit::Closed);
            self.metrics.circuit_open.with_label_values(&[endpoint.webhook.as_str()]).set(i64::from(open));
            now.insert(endpoint.webhook);
        }
        for gone in open_series.difference(&now) {
            let _ = self.metrics.circuit_open.remove_label_values(&[gone.as_str()]);
        }
        *open_series = now;
    }

    fn poll_redis(&self, conn: &mut Option<Conn>) -> redis::RedisResult<()> {
        if conn.is_none() {
            *conn = Some(self.redis.connect_bounded(REDIS_TIMEOUT, REDIS_TIMEOUT)?);
        }
        let con = conn.as_mut().expect("connected above");
        let dead: i64 = redis::cmd("XLEN").arg(&self.keys.dead_letters).query(con)?;
        // Per stream (one slot each on a cluster): summed over the shards.
        let (mut lag, mut pending, mut oldest_id): (Option<i64>, i64, Option<String>) = (Some(0), 0, None);
        let mut known = false;
        for stream in self.keys.streams() {
            let (groups, summary): (Value, Value) = redis::pipe()
                .cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .cmd("XPENDING")
                .arg(&stream)
                .arg(crate::source::redis::GROUP)
                .query(con)?;
            if let Some((shard_lag, shard_pending)) = group_figures(&groups, crate::source::redis::GROUP) {
                known = true;
                lag = lag.zip(shard_lag).map(|(a, b)| a + b);
                pending += shard_pending;
            }
            if let Some(id) = oldest_pending(&summary) {
                let older = oldest_id.as_deref().is_none_or(|o| entry_ms(&id) < entry_ms(o));
                if older {
                    oldest_id = Some(id);
                }
            }
        }
        if known {
            self.metrics.stream_lag.set(lag.unwrap_or(-1));
            self.metrics.stream_pending.set(pending);
        }
        let oldest = oldest_id.and_then(|id| crate::metrics::entry_age_seconds(&id, self.clock.now_ms()));
        self.metrics.oldest_pending_age.set(oldest.unwrap_or(0.0));
        self.metrics.dead_letter_stream_length.set(dead);
        Ok(())
    }

    fn poll_backlog(&self, con: &mut Conn, series: &mut HashSet<String>) -> redis::RedisResult<()> {
        let mut webhooks: i64 = 0;
        let mut depths = Vec::new();
        for shard in 0..self.keys.shards() {
            webhooks += redis::cmd("ZCARD").arg(self.keys.backlog_index(shard)).query::<i64>(con)?;
            depths.extend(backlog::depths(con, &self.keys, shard, BACKLOG_SERIES)?);
        }
        let now = self.clock.now_ms();
        let mut seen = HashSet::with_capacity(depths.len());
        let mut total = 0u64;
        for (webhook, depth) in depths {
            if depth.deliveries == 0 {
                continue;
            }
            total += depth.deliveries;
            let age = depth.oldest_since_ms.map_or(0, |since| now.saturating_sub(since) / 1000);
            self.metrics.backlog_depth.with_label_values(&[webhook.as_str()]).set(i64::try_from(depth.deliveries).unwrap_or(i64::MAX));
            self.metrics.backlog_oldest_age.with_label_values(&[webhook.as_str()]).set(i64::try_from(age).unwrap_or(i64::MAX));
            seen.insert(webhook);
        }
        for gone in series.difference(&seen) {
            let _ = self.metrics.backlog_depth.remove_label_values(&[gone.as_str()]);
            let _ = self.metrics.backlog_oldest_age.remove_label_values(&[gone.as_str()]);
        }
        *series = seen;
        self.metrics.backlog_webhooks.set(webhooks);
        self.metrics.backlog_deliveries.set(i64::try_from(total).unwrap_or(i64::MAX));
        Ok(())
    }
}

/// The milliseconds part of a stream entry id, for ordering ids of different streams.
fn entry_ms(id: &str) -> u64 {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok()).unwrap_or(u64::MAX)
}

/// `lag` (`None` when Redis answers nil, or is older than 7) and `pending` of `group` in an
/// `XINFO GROUPS` reply (RESP2 flat lists or RESP3 maps).
fn group_figures(reply: &Value, group: &str) -> Option<(Option<i64>, i64)> {
    let Value::Array(groups) = reply else { return None };
    groups.iter().find_map(|g| {
        let fields = pairs(g);
        let name = fields.iter().find(|(k, _)| k == "name").and_then(|(_, v)| text(v))?;
        if name != group {
            return None;
        }
        let number = |key: &str| fields.iter().find(|(k, _)| k == key).and_then(|(_, v)| integer(v));
        Some((number("lag"), number("pending").unwrap_or(0)))
    })
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

/// The smallest pending id in an `XPENDING <key> <group>` summary (`[count, smallest, greatest,
/// consumers]`); `None` when nothing is pending (its ids are nil).
fn oldest_pending(summary: &Value) -> Option<String> {
    match summary {
        Value::Array(items) => items.get(1).and_then(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::replies::{bulk, flat};

    #[test]
    fn lag_and_pending_are_read_from_either_protocol() {
        let resp2 = Value::Array(vec![
            flat(vec![("name", bulk("other")), ("pending", Value::Int(9)), ("lag", Value::Int(9))]),
            flat(vec![("name", bulk("wss")), ("consumers", Value::Int(1)), ("pending", Value::Int(3)), ("lag", Value::Int(7))]),
        ]);
        assert_eq!(group_figures(&resp2, "wss"), Some((Some(7), 3)));
        let nil_lag =
            Value::Array(vec![Value::Map(vec![(bulk("name"), bulk("wss")), (bulk("pending"), Value::Int(0)), (bulk("lag"), Value::Nil)])]);
        assert_eq!(group_figures(&nil_lag, "wss"), Some((None, 0)));
        assert_eq!(group_figures(&Value::Array(vec![]), "wss"), None);
    }

    #[test]
    fn the_oldest_pending_id_is_the_summary_s_smallest() {
        let summary = Value::Array(vec![Value::Int(2), bulk("1700000000000-0"), bulk("1700000000500-1"), Value::Array(vec![])]);
        assert_eq!(oldest_pending(&summary).as_deref(), Some("1700000000000-0"));
        let empty = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(oldest_pending(&empty), None);
    }
}
