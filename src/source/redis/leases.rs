//! Leases: an entry stays pending until every delivery it produced is terminal, which for a
//! retry schedule can be hours. This thread, beside the reader and with its own connection, keeps
//! that safe across instances (`WSS_CLAIM_AFTER`, default 60 s):
//!
//! - every quarter of the lease it renews the entries this instance holds: a script that, for
//!   each one still owned by this consumer, `XCLAIM … 0 … JUSTID`s it, resetting its idle time
//!   (a bare `XCLAIM` would steal an entry back from a consumer that claimed it meanwhile);
//! - then it claims with `XAUTOCLAIM` the entries idle longer than the lease — those of instances
//!   that died or were cut off — as far as the in-flight window has room, and hands them on like
//!   the reader does, marked recovered: the signer checks their delivery history, so a delivery
//!   already made is not repeated and a retry resumes with its attempt count.
//!
//! It runs apart from the reader so that a reader waiting for room in the window never lets the
//! leases lapse. Redis errors drop the connection; the next round makes a new one.

use std::{sync::Arc, time::Duration};

use crate::redis_conn::Conn;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::{Script, Value};

use super::{ReadError, GROUP};
use crate::{
    pipeline::messages::{Admission, Completion, InFlight, Inbound},
    redis_conn::RedisTarget,
    source::hand_on,
    streams::{parse_entries, RawEntry},
};

/// Renews this consumer's lease on the given entries: resets the idle time of each one it still
/// owns (`XCLAIM … 0 … JUSTID` would otherwise steal it back from a consumer that claimed it),
/// and its delivery count to one: an entry being worked on is not poison (`super::poison`).
const RENEW_SCRIPT: &str = r#"
local renewed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'RETRYCOUNT', 1, 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"#;

pub struct Leases {
    pub redis: RedisTarget,
    /// Which stream (docs/contract.md §8): one leases thread per shard.
    pub shard: u32,
    pub stream: String,
    pub consumer: String,
    pub claim_after: Duration,
    pub batch: usize,
    pub max_event_bytes: usize,
    pub in_flight: Arc<InFlight>,
    /// `wss_events_read_total`: claimed entries are read again.
    pub events_read: prometheus::IntCounter,
}

impl Leases {
    pub fn run(self, out: Sender<Inbound>, done: Sender<Completion>, shutdown: Receiver<()>) {
        let renew = Script::new(RENEW_SCRIPT);
        let every = (self.claim_after / 4).max(Duration::from_millis(250));
        let mut conn: Option<Conn> = None;
        loop {
            match shutdown.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            if conn.is_none() {
                conn = self.redis.connect_once(Duration::from_secs(2)).ok();
            }
            let Some(con) = conn.as_mut() else { continue };
            match self.renew_and_claim(con, &renew).and_then(|claimed| {
                let ids: Vec<&str> = claimed.iter().map(|e| e.id.as_str()).collect();
                let reads = super::poison::delivery_counts(con, &self.stream, &ids)?;
                Ok((claimed, reads))
            }) {
                Ok((claimed, reads)) => {
                    self.events_read.inc_by(claimed.len() as u64);
                    for entry in claimed {
                        match self.in_flight.try_admit(self.shard, &entry.id) {
                            Admission::Admitted => {}
                            // Full window: it stays pending under this consumer and is claimed
                            // again after the lease.
                            Admission::AlreadyInFlight | Admission::Full | Admission::ShuttingDown => continue,
                        }
                        let count = reads.get(&entry.id).copied();
                        if !hand_on(self.shard, entry, true, count, self.max_event_bytes, &out, &done) {
                            return;
                        }
                    }
                }
                Err(err) => {
                    if let Some(lost) = err.connection_lost() {
                        self.redis.connection_lost(lost);
                    } else {
                        log::error!(target: "wss::leases", "renewing or claiming pending entries of {} failed: {err}", self.stream);
                    }
                    conn = None;
                }
            }
        }
    }

    /// Renews the leases of the entries in flight, then claims entries idle past the lease.
    fn renew_and_claim(&self, con: &mut Conn, renew: &Script) -> Result<Vec<RawEntry>, ReadError> {
        for chunk in self.in_flight.stream_ids(self.shard).chunks(500) {
            let ids: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            let _: i64 = renew.key(&self.stream).arg(GROUP).arg(&self.consumer).arg(ids).invoke(con)?;
        }
        let idle_ms = self.claim_after.as_millis() as u64;
        let room = self.in_flight.room();
        let mut claimed = Vec::new();
        if room == 0 {
            return Ok(claimed);
        }
        let mut start = "0-0".to_owned();
        let claim = super::poison::claim_script();
        loop {
            // Oversized entries come back stubbed, never whole (`super::poison`).
            let reply: Value = claim
                .key(&self.stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(idle_ms)
                .arg(&start)
                .arg(self.batch.min(room))
                .arg(self.max_event_bytes)
                .invoke(con)?;
            let Value::Array(mut parts) = reply else { break };
            if parts.len() < 2 {
                break;
            }
            let entries = parse_entries(parts.swap_remove(1)).map_err(ReadError::shape("XAUTOCLAIM"))?;
            claimed.extend(entries);
            start = match &parts[0] {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => break,
            };
            if start == "0-0" || claimed.len() >= room {
                break;
            }
        }
        let foreign = claimed.iter().filter(|e| !self.in_flight.contains(self.shard, &e.id)).count();
        if foreign > 0 {
            log::info!(target: "wss::leases", "claimed {foreign} entries of {} pending for over {} without a renewed lease", self.stream, humantime::format_duration(self.claim_after));
        }
        Ok(claimed)
    }
}
