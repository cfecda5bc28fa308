//! Reader: the first stage. Reads `<prefix>events` as consumer `<consumer>` of group `wss`.
//!
//! On start, and after every reconnect, it first re-reads this consumer's own pending entries
//! (`XREADGROUP … STREAMS <key> 0`, page by page), skipping those already in flight; then it
//! reads new ones (`>`) with `BLOCK`. The group is created with `MKSTREAM` from id `0`, so entries
//! appended before the first start are delivered too.
//!
//! The connection's read timeout is BLOCK plus a margin: a shorter one would make redis-rs drop a
//! reply that arrives late, stranding its entries in the pending list.
//!
//! Each entry is parsed ([`super::event::parse_entry`]) and admitted to the in-flight window;
//! a valid one goes to the transformer, a bad one straight to the outcome stage as a rejection.
//! Redis errors: the connection is dropped and made anew (the outage is logged once).
//!
//! Entries re-read at start are marked recovered: the signer checks their delivery history so
//! that what was already delivered is not sent again. Leases and claiming: see `super::leases`.

use std::{sync::Arc, time::Duration};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use redis::{Connection, RedisError, Value};

use super::{event::parse_entry, poison, Admission, Completion, EntryTicket, InFlight, Inbound};
use crate::{
    redis_conn::{is_connection_error, RedisTarget},
    streams::{parse_read_reply, RawEntry},
};


pub const GROUP: &str = "wss";

pub struct Reader {
    pub redis: RedisTarget,
    pub stream: String,
    pub consumer: String,
    pub batch: usize,
    pub block: Duration,
    pub max_event_bytes: usize,
    pub in_flight: Arc<InFlight>,
    /// `wss_events_read_total`.
    pub events_read: prometheus::IntCounter,
}

/// Where the next read starts: this consumer's pending entries after an id, or new ones.
enum Cursor {
    Pending(String),
    New,
}

impl Reader {
    pub fn run(self, out: Sender<Inbound>, done: Sender<Completion>, shutdown: Receiver<()>) {
        let mut conn: Option<Connection> = None;
        let mut cursor = Cursor::Pending("0".into());
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
                    if is_connection_error(&err) {
                        self.redis.connection_lost(&err);
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
            if let Cursor::Pending(_) = cursor {
                cursor = match entries.last() {
                    Some(last) => Cursor::Pending(last.id.clone()),
                    None => Cursor::New,
                };
            }
            // Entries read again: how often Redis delivered each (poison entries, `super::poison`).
            let reads = if recovered { self.delivery_counts(con, &entries) } else { Default::default() };
            for entry in entries {
                match self.in_flight.admit(&entry.id, &shutdown) {
                    Admission::Admitted => {}
                    // (`admit` waits for room rather than answering `Full`.)
                    Admission::AlreadyInFlight | Admission::Full => continue,
                    Admission::ShuttingDown => return,
                }
                let count = reads.get(&entry.id).copied();
                if !hand_on(entry, recovered, count, self.max_event_bytes, &out, &done) {
                    return;
                }
            }
        }
    }

    /// Delivery counts of the entries not in flight; none when Redis cannot say (they are then
    /// processed, and counted at the next read).
    fn delivery_counts(&self, con: &mut Connection, entries: &[RawEntry]) -> std::collections::HashMap<String, u64> {
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).filter(|id| !self.in_flight.contains(id)).collect();
        poison::delivery_counts(con, &self.stream, &ids).unwrap_or_else(|err| {
            log::warn!(target: "wss::reader", "reading the delivery counts of {} pending entries failed ({err}); processing them anyway", ids.len());
            Default::default()
        })
    }

    fn connect(&self, shutdown: &Receiver<()>) -> Option<Connection> {
        loop {
            let mut con = self.redis.connect_with_retry(shutdown)?;
            let setup = con
                .set_read_timeout(Some(self.block + Duration::from_secs(5)))
                .and_then(|()| self.create_group(&mut con));
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
    fn create_group(&self, con: &mut Connection) -> Result<(), RedisError> {
        let created: Result<(), RedisError> =
            redis::cmd("XGROUP").arg("CREATE").arg(&self.stream).arg(GROUP).arg("0").arg("MKSTREAM").query(con);
        match created {
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    fn read(&self, con: &mut Connection, cursor: &Cursor) -> Result<Vec<RawEntry>, RedisError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(&self.consumer).arg("COUNT").arg(self.batch);
        let start = match cursor {
            Cursor::Pending(after) => after.as_str(),
            Cursor::New => {
                cmd.arg("BLOCK").arg(self.block.as_millis() as u64);
                ">"
            }
        };
        let reply: Value = cmd.arg("STREAMS").arg(&self.stream).arg(start).query(con)?;
        parse_read_reply(reply).map_err(|e| RedisError::from((redis::ErrorKind::UnexpectedReturnType, "XREADGROUP reply", e.to_string())))
    }

}

/// Parses and forwards one admitted entry; false when the next stage is gone (shutdown).
/// `reads`: how often Redis delivered it, for an entry read again (see `super::poison`).
pub(super) fn hand_on(entry: RawEntry, recovered: bool, reads: Option<u64>, max_event_bytes: usize, out: &Sender<Inbound>, done: &Sender<Completion>) -> bool {
    let ticket = EntryTicket::new(entry.id.clone(), recovered);
    let parsed = match reads {
        Some(reads) if reads >= poison::MAX_READS => Err(poison::poison_rejection(&entry, reads)),
        _ => parse_entry(&entry, max_event_bytes),
    };
    match parsed {
        Ok(event) => out.send(Inbound { event, ticket }).is_ok(),
        Err(mut rejection) => {
            let mut raw_fields = entry.fields.unwrap_or_default();
            // An oversized entry is not copied into its record: an excerpt and its size are.
            if entry_size(&raw_fields) > max_event_bytes {
                rejection.detail = format!("{}; {}", rejection.detail, poison::excerpt(&raw_fields));
                raw_fields = Vec::new();
            }
            done.send(Completion::Rejected { ticket, rejection, raw_fields }).is_ok()
        }
    }
}

fn entry_size(fields: &[(Vec<u8>, Vec<u8>)]) -> usize {
    fields.iter().map(|(k, v)| k.len() + v.len()).sum()
}
