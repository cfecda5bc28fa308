//! A webhook's statistics (`crate::stats` owns their layout) and the depth of its durable backlog,
//! as the control plane reads them.

use super::connection::Store;
use crate::{domain::DomainError, stats};

impl Store {
    /// A webhook's stored statistics (empty when it has none yet), read at `now_ms`.
    pub fn webhook_stats(&self, id: &str, now_ms: u64) -> Result<stats::Stored, DomainError> {
        self.with_conn(|con, keys| stats::read(con, keys, id, now_ms).map_err(|e| self.unavailable(e)))
    }

    /// [`Store::webhook_stats`] of several webhooks, in their order, in one round trip.
    pub fn webhooks_stats(&self, ids: &[&str], now_ms: u64) -> Result<Vec<stats::Stored>, DomainError> {
        self.with_conn(|con, keys| stats::read_many(con, keys, ids, now_ms).map_err(|e| self.unavailable(e)))
    }

    /// How many deliveries of webhook `id` wait in the durable backlog, and since when the oldest.
    pub fn backlog_depth(&self, id: &str) -> Result<crate::pipeline::backlog::Depth, DomainError> {
        self.with_conn(|con, keys| crate::pipeline::backlog::depth(con, keys, id).map_err(|e| self.unavailable(e)))
    }

    /// [`Store::backlog_depth`] of several webhooks, in their order, in one round trip.
    pub fn backlog_depths(&self, ids: &[&str]) -> Result<Vec<crate::pipeline::backlog::Depth>, DomainError> {
        self.with_conn(|con, keys| crate::pipeline::backlog::depths_of(con, keys, ids).map_err(|e| self.unavailable(e)))
    }
}
