//! Reader: the first stage. Reads `<prefix>events` (one reader per shard with sharded streams,
//! `<prefix>events:{k}`: a read cannot span slots on a cluster) as consumer `<consumer>` of group
//! `wss`.
//!
//! On start, and after every reconnect, it first re-reads this consumer's own pending entries
//! (`XREADGROUP … STREAMS <key> 0`, page by page), skipping those already in flight; then it
//! reads new ones (`>`). The group is created with `MKSTREAM` from id `0`, so entries appended
//! before the first start are delivered too.
//!
//! Every read goes through a script ([`poison::read_script`]) that stubs entries over
//! `WSS_MAX_EVENT_BYTES` inside Redis, so that an oversized entry is never pulled whole. A script
//! cannot block, so when nothing new came the reader waits 1 ms, then twice as long each time it
//! finds nothing, up to 10 ms (or `WSS_READ_BLOCK` if shorter): at most about 100 cheap reads a
//! second while idle (an empty read costs Redis microseconds), and at most 10 ms of latency for
//! the first event after a quiet spell. Under a steady flow the first wait sets the latency: at
//! half the throughput bench's peak, 1 ms gave p50 `XADD` → receipt 1.3 ms and p99 4.6 ms, where
//! 2 ms gave 2.1 ms and 6.7 ms (docs/performance.md, "The reader's first wait"), for about 600
//! more reads a second and no more Redis time spent reading. A 50 ms cap once gave an event
//! every 10 ms (`tests/backlog_neighbours.rs`) p99 15 ms.
//!
//! Entries re-read from the pending list carry Redis's delivery count (`XPENDING`): one read
//! too often without being finished is dead-lettered as poison ([`super::poison`]).
//!
//! Each entry is parsed ([`crate::pipeline::event::parse_entry`]) and admitted to the in-flight window;
//! a valid one goes to the transformer, a bad one straight to the outcome stage as a rejection.
//! Redis errors: the connection is dropped and made anew (the outage is logged once).
//!
//! Entries re-read at start are marked recovered: the signer checks their delivery history so
//! that what was already delivered is not sent again. Leases and claiming: see `super::leases`.

use std::{sync::Arc, time::Duration};

use crate::redis_conn::Conn;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use redis::{RedisError, Value};

use super::{poison, ReadError, GROUP};
use crate::{
    pipeline::messages::{Admission, Completion, InFlight, Inbound},
    redis_conn::RedisTarget,
    source::hand_on,
    streams::{parse_entries, RawEntry},
};

/// Shortest and longest wait between two reads that found nothing new.
const IDLE_POLL_MIN: Duration = Duration::from_millis(1);
const IDLE_POLL_MAX: Duration = Duration::from_millis(10);

pub struct Reader {
    pub redis: RedisTarget,
    /// Which stream (docs/contract.md §8): one reader per shard, each with its own connection.
    pub shard: u32,
    pub stream: String,
    pub consumer: String,
    pub batch: usize,
    pub block: Duration,
    pub max_event_bytes: usize,
    pub in_flight: Arc<InFlight>,
    /// `wss_events_read_total`.
    pub events_read: prometheus::IntCounter,
    /// [`poison::read_script`].
    pub script: redis::Script,
}

/// Where the next read starts: this consumer's pending entries after an id, or new ones.
enum Cursor {
    Pending(String),
    New,
}

impl Reader {
    pub fn run(self, out: Sender<Inbound>, done: Sender<Completion>, shutdown: Receiver<()>) {
        let mut conn: Option<Conn> = None;
        let mut cursor = Cursor::Pending("0".into());
        let mut idle = IDLE_POLL_MIN;
        loop {
            if !matches!(shutdown.try_recv(), Err(TryRecvError::Empty)) {
                return;
            }
            let con = match conn.as_mut() {
                Some(con) => con,
                None => match self.connect(&shutdown) {
                    Some(con) => {
                        cursor = Cursor::Pending("0".into());
                        conn.insert(con)
                    }
                    None => return,
                },
            };
            let recovered = matches!(cursor, Cursor::Pending(_));
            let entries = match self.read(con, &cursor) {
                Ok(entries) => entries,
                Err(err) => {
                    if let Some(lost) = err.connection_lost() {
                        self.redis.connection_lost(lost);
                    } else if err.code() == Some("NOGROUP") {
                        log::warn!(target: "wss::reader", "the consumer group vanished from {} (stream deleted?); recreating it", self.stream);
                    } else {
                        log::error!(target: "wss::reader", "XREADGROUP on {} failed: {err}; reconnecting", self.stream);
                    }
                    conn = None;
                    continue;
                }
            };
            self.events_read.inc_by(entries.len() as u64);
            // Nothing new: wait a little before asking again (the read cannot block, see `read`),
            // longer the longer it stays idle, up to [`IDLE_POLL_MAX`] or WSS_READ_BLOCK.
            if matches!(cursor, Cursor::New) {
                if entries.is_empty() {
                    if !matches!(shutdown.recv_timeout(idle), Err(crossbeam_channel::RecvTimeoutError::Timeout)) {
                        return;
                    }
                    idle = (idle * 2).min(IDLE_POLL_MAX.min(self.block));
                } else {
                    idle = IDLE_POLL_MIN;
                }
            }
            if let Cursor::Pending(_) = cursor {
                cursor = match entries.last() {
                    Some(last) => Cursor::Pending(last.id.clone()),
                    None => Cursor::New,
                };
            }
            // Entries read again: how often Redis delivered each (poison entries, `super::poison`).
            let reads = if recovered { self.delivery_counts(con, &entries) } else { Default::default() };
            for entry in entries {
                match self.in_flight.admit(self.shard, &entry.id, &shutdown) {
                    Admission::Admitted => {}
                    // (`admit` waits for room rather than answering `Full`.)
                    Admission::AlreadyInFlight | Admission::Full => continue,
                    Admission::ShuttingDown => return,
                }
                let count = reads.get(&entry.id).copied();
                if !hand_on(self.shard, entry, recovered, count, self.max_event_bytes, &out, &done) {
                    return;
                }
            }
        }
    }

    /// Delivery counts of the entries not in flight; none when Redis cannot say (they are then
    /// processed, and counted at the next read).
    fn delivery_counts(&self, con: &mut Conn, entries: &[RawEntry]) -> std::collections::HashMap<String, u64> {
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).filter(|id| !self.in_flight.contains(self.shard, id)).collect();
        poison::delivery_counts(con, &self.stream, &ids).unwrap_or_else(|err| {
            log::warn!(target: "wss::reader", "reading the delivery counts of {} pending entries failed ({err}); processing them anyway", ids.len());
            Default::default()
        })
    }

    fn connect(&self, shutdown: &Receiver<()>) -> Option<Conn> {
        loop {
            let mut con = self.redis.connect_with_retry(shutdown)?;
            let setup = con.set_read_timeout(Some(self.block + Duration::from_secs(5))).and_then(|()| self.create_group(&mut con));
            match setup {
                Ok(()) => return Some(con),
                Err(err) => {
                    log::error!(target: "wss::reader", "cannot prepare consumer group {GROUP} on {}: {err}", self.stream);
                    if shutdown.recv_timeout(Duration::from_secs(1)).is_ok() {
                        return None;
                    }
                }
            }
        }
    }

    /// `XGROUP CREATE <stream> wss 0 MKSTREAM`; an existing group is fine.
    fn create_group(&self, con: &mut Conn) -> Result<(), RedisError> {
        let created: Result<(), RedisError> =
            redis::cmd("XGROUP").arg("CREATE").arg(&self.stream).arg(GROUP).arg("0").arg("MKSTREAM").query(con);
        match created {
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// One page, through [`poison::read_script`]: an oversized entry arrives as a stub, never
    /// whole. The script cannot block; the caller waits when nothing new came.
    fn read(&self, con: &mut Conn, cursor: &Cursor) -> Result<Vec<RawEntry>, ReadError> {
        let start = match cursor {
            Cursor::Pending(after) => after.as_str(),
            Cursor::New => ">",
        };
        let reply: Value = self
            .script
            .key(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.batch)
            .arg(start)
            .arg(self.max_event_bytes)
            .invoke(con)?;
        parse_entries(reply).map_err(ReadError::shape("XREADGROUP"))
    }
}
