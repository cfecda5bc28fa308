//! Putting events back into `P events`: a dead letter's redelivery (appended and its record
//! deleted in one step), a resend or replay's copies, and the reads they start from (one entry,
//! a range).

use super::connection::Store;
use crate::{
    deadletter::{Fields, REDELIVER_SCRIPT},
    domain::DomainError,
    streams::RawEntry,
};

impl Store {
    /// The fields of stream entry `id` of `<prefix>events`, if it is still there.
    pub fn event_entry(&self, id: &str) -> Result<Option<Fields>, DomainError> {
        self.with_conn(|con, keys| {
            let entries = self.range(con, &keys.events, (id, id), None, false)?;
            Ok(entries.into_iter().next().and_then(|e| e.fields))
        })
    }

    /// Appends `fields` to `<prefix>events` and deletes dead letter `id`, atomically and only if
    /// it still exists ([`crate::deadletter::REDELIVER_SCRIPT`]). `None`: it was gone already.
    pub fn redeliver_dead_letter(&self, id: &str, fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<String>, DomainError> {
        self.with_conn(|con, keys| {
            redis::cmd("EVAL")
                .arg(REDELIVER_SCRIPT)
                .arg(2)
                .arg(&keys.dead_letters)
                .arg(&keys.events)
                .arg(id)
                .arg(fields)
                .query(con)
                .map_err(|e| self.unavailable(e))
        })
    }

    /// Entries of `<prefix>events` oldest first, from `start` to `end` (`XRANGE` bounds), at
    /// most `count` (ReplayEvents).
    pub fn events_between(&self, start: &str, end: &str, count: usize) -> Result<Vec<RawEntry>, DomainError> {
        self.with_conn(|con, keys| self.range(con, &keys.events, (start, end), Some(count), false))
    }

    /// Appends every entry of `entries` to `<prefix>events`, all or none (`MULTI … EXEC`), and
    /// returns their new ids in order (ResendDelivery, ReplayEvents).
    pub fn append_events(&self, entries: &[Fields]) -> Result<Vec<String>, DomainError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.with_conn(|con, keys| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for fields in entries {
                pipe.cmd("XADD").arg(&keys.events).arg("*").arg(fields);
            }
            pipe.query(con).map_err(|e| self.unavailable(e))
        })
    }
}
