//! The Redis key names, derived from the configured prefix: the one place that spells them.

/// Redis keys derived from the prefix; the one place that spells them.
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
    pub events: String,
    pub dead_letters: String,
    pub tenants: String,
    pub webhooks: String,
    pub policies: String,
    /// Tenant tokens by id.
    pub tokens: String,
    pub config_version: String,
    /// Index of all deliveries (see `crate::history`).
    pub deliveries: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            events: format!("{prefix}events"),
            dead_letters: format!("{prefix}deadletters"),
            tenants: format!("{prefix}tenants"),
            webhooks: format!("{prefix}webhooks"),
            policies: format!("{prefix}policies"),
            tokens: format!("{prefix}tokens"),
            config_version: format!("{prefix}config:version"),
            deliveries: format!("{prefix}deliveries"),
        }
    }

    pub fn delivery(&self, id: &str) -> String {
        format!("{}delivery:{id}", self.prefix)
    }

    pub fn deliveries_of_tenant(&self, tenant: &str) -> String {
        format!("{}deliveries:tenant:{tenant}", self.prefix)
    }

    pub fn deliveries_of_webhook(&self, webhook: &str) -> String {
        format!("{}deliveries:webhook:{webhook}", self.prefix)
    }

    /// The event index of the layout before 2026-12 (a set per event); read until it expires.
    pub fn deliveries_of_event(&self, event: &str) -> String {
        format!("{}deliveries:event:{event}", self.prefix)
    }

    /// The event index: one sorted set, every member `<event id>\0<delivery id>` at score 0, so
    /// that one event's deliveries are a lexical range (see `crate::history`).
    pub fn deliveries_by_event(&self) -> String {
        format!("{}deliveries:by-event", self.prefix)
    }

    /// The event index's members scored by last update (ms): what trimming it by age and count
    /// reads.
    pub fn deliveries_by_event_age(&self) -> String {
        format!("{}deliveries:by-event:age", self.prefix)
    }

    /// The entry a tenant's `event_id` was first published as, while the dedupe window lasts.
    pub fn published(&self, tenant: &str, event_id: &str) -> String {
        format!("{}published:{tenant}:{event_id}", self.prefix)
    }

    /// A webhook's delivery statistics (see `crate::stats`).
    pub fn webhook_stats(&self, webhook: &str) -> String {
        format!("{}stats:webhook:{webhook}", self.prefix)
    }

    // The durable backlog (`crate::pipeline::backlog`). Every backlog key starts with
    // `backlog_base`, the one place a Redis Cluster hash tag per shard (`{k}`, docs/contract.md §8) goes, so
    // that the keys of one shard share a slot with its stream.

    fn backlog_base(&self) -> String {
        format!("{}backlog:", self.prefix)
    }

    /// Webhooks with deliveries in the backlog, scored by when to look at them next.
    pub fn backlog_index(&self) -> String {
        format!("{}webhooks", self.backlog_base())
    }

    /// One webhook's waiting deliveries by due time (a leased one: its lease's end).
    pub fn backlog_due(&self, webhook: &str) -> String {
        format!("{}due:{webhook}", self.backlog_base())
    }

    /// One webhook's waiting deliveries by when they entered the backlog (for their age).
    pub fn backlog_since(&self, webhook: &str) -> String {
        format!("{}since:{webhook}", self.backlog_base())
    }

    /// A FIFO webhook's waiting deliveries in stream entry order (members: padded entry ids, all
    /// scored 0, so that the lexicographic order is the entry order).
    pub fn backlog_fifo(&self, webhook: &str) -> String {
        format!("{}fifo:{webhook}", self.backlog_base())
    }

    /// A FIFO webhook's hold: the entry id of its head while an attempt of it is out (expiring
    /// with the lease) or while it waits for its retry (expiring at the due time).
    pub fn backlog_hold(&self, webhook: &str) -> String {
        format!("{}hold:{webhook}", self.backlog_base())
    }

    /// A rate-limited webhook's token bucket (a hash: tokens, and when they were counted).
    pub fn backlog_rate(&self, webhook: &str) -> String {
        format!("{}rate:{webhook}", self.backlog_base())
    }

    /// The deliveries of a rate-limited webhook already counted as held back by its limit.
    pub fn backlog_throttled(&self, webhook: &str) -> String {
        format!("{}throttled:{webhook}", self.backlog_base())
    }

    /// One waiting delivery (of `webhook`, from stream entry `entry`): its state and its source
    /// entry's fields.
    pub fn backlog_item(&self, webhook: &str, entry: &str) -> String {
        format!("{}item:{webhook}:{entry}", self.backlog_base())
    }
}

/// The hash that holds the versions of the records of hash `key`.
pub fn versions_key(key: &str) -> String {
    format!("{key}:versions")
}
