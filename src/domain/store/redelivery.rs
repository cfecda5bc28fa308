//! Putting events back into their tenant's stream (`P events`, or `P events:{k}` with shards): a dead letter's redelivery (appended and its record
//! deleted in one step), a resend or replay's copies, and the reads they start from (one entry,
//! a range).

use super::connection::Store;
use crate::{
    deadletter::{Fields, REDELIVER_SCRIPT},
    domain::DomainError,
    keys::eval,
    streams::RawEntry,
};

impl Store {
    /// The fields of stream entry `id` of `tenant`'s stream, if it is still there.
    pub fn event_entry(&self, tenant: &str, id: &str) -> Result<Option<Fields>, DomainError> {
        self.with_conn(|con, keys| {
            let entries = self.range(con, &keys.stream_of(tenant), (id, id), None, false)?;
            Ok(entries.into_iter().next().and_then(|e| e.fields))
        })
    }

    /// Appends `fields` to `tenant`'s stream and deletes dead letter `id`, atomically and only
    /// if it still exists ([`crate::deadletter::REDELIVER_SCRIPT`]). `None`: it was gone already.
    ///
    /// On a Redis Cluster the two streams are in different slots: the event is appended first,
    /// then the record deleted; when another redelivery deleted it meanwhile, the new entry is
    /// deleted again (read already, it is delivered twice: at least once, as always).
    pub fn redeliver_dead_letter(&self, tenant: &str, id: &str, fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<String>, DomainError> {
        self.with_conn(|con, keys| {
            let stream = keys.stream_of(tenant);
            if keys.cluster() && keys.shard_slot(keys.shard_of(tenant)).is_some() {
                let entry: String = redis::cmd("XADD").arg(&stream).arg("*").arg(fields).query(con).map_err(|e| self.unavailable(e))?;
                let deleted: i64 = redis::cmd("XDEL").arg(&keys.dead_letters).arg(id).query(con).map_err(|e| self.unavailable(e))?;
                if deleted == 0 {
                    let _: i64 = redis::cmd("XDEL").arg(&stream).arg(&entry).query(con).map_err(|e| self.unavailable(e))?;
                    return Ok(None);
                }
                return Ok(Some(entry));
            }
            eval(REDELIVER_SCRIPT, &[&keys.dead_letters, &stream], (id, fields)).query(con).map_err(|e| self.unavailable(e))
        })
    }

    /// Entries of `tenant`'s stream oldest first, from `start` to `end` (`XRANGE` bounds), at
    /// most `count` (ReplayEvents).
    pub fn events_between(&self, tenant: &str, start: &str, end: &str, count: usize) -> Result<Vec<RawEntry>, DomainError> {
        self.with_conn(|con, keys| self.range(con, &keys.stream_of(tenant), (start, end), Some(count), false))
    }

    /// Appends every entry of `entries`, events of `tenant`, to its stream, all or none
    /// (`MULTI … EXEC`), and returns their new ids in order (ResendDelivery, ReplayEvents).
    pub fn append_events(&self, tenant: &str, entries: &[Fields]) -> Result<Vec<String>, DomainError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.with_conn(|con, keys| {
            let stream = keys.stream_of(tenant);
            let mut pipe = redis::pipe();
            pipe.atomic();
            for fields in entries {
                pipe.cmd("XADD").arg(&stream).arg("*").arg(fields);
            }
            pipe.query(con).map_err(|e| self.unavailable(e))
        })
    }
}
