//! Publishing events into the tenant's stream (`P events`, or `P events:{k}` with shards, docs/contract.md §8;
//! `PublishEvent`): as an `XADD` by any other system would, or
//! once per tenant and event id within the dedupe window (`P published:<tenant>:<event id>`, in
//! the stream's slot: `P published:{k}:…` with shards).

use super::connection::Store;
use crate::{domain::DomainError, keys::eval};

/// What publishing an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The stream entry: new, or the first publication's for a duplicate.
    pub stream_entry_id: String,
    /// The same `event_id` was published for the tenant within the dedupe window: nothing was
    /// appended.
    pub duplicate: bool,
}

/// Appends an event unless its id was published for its tenant within the window, atomically:
/// two concurrent publications of one id append once.
///
/// KEYS: the dedupe key, the stream. ARGV: the window in ms, then the entry's fields.
const PUBLISH_ONCE_SCRIPT: &str = r#"
local first = redis.call('GET', KEYS[1])
if first then return {first, 1} end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return {id, 0}
"#;

impl Store {
    /// Appends an event of `tenant` to its stream (docs/contract.md §8) exactly as an `XADD` by
    /// another system would.
    pub fn publish_event(&self, tenant: &str, fields: &[(&str, &str)]) -> Result<String, DomainError> {
        self.with_conn(|con, keys| {
            redis::cmd("XADD").arg(keys.stream_of(tenant)).arg("*").arg(fields).query(con).map_err(|e| self.unavailable(e))
        })
    }

    /// [`Store::publish_event`] of an event with its own id (docs/contract.md §9): appended once per tenant
    /// and id within the dedupe window; a repeat answers the first publication's entry.
    pub fn publish_event_once(&self, tenant: &str, event_id: &str, fields: &[(&str, &str)]) -> Result<Published, DomainError> {
        let window_ms = self.dedupe_window.as_millis().max(1) as u64;
        self.with_conn(|con, keys| {
            let script_keys: [&str; 2] = [&keys.published(tenant, event_id), &keys.stream_of(tenant)];
            let (stream_entry_id, duplicate): (String, i64) =
                eval(PUBLISH_ONCE_SCRIPT, &script_keys, (window_ms, fields)).query(con).map_err(|e| self.unavailable(e))?;
            Ok(Published { stream_entry_id, duplicate: duplicate == 1 })
        })
    }
}
