//! The Redis key names, derived from the configured prefix: the one place that spells them.
//!
//! **Shards** (docs/contract.md §8, `crate::shard`). With `WSS_STREAM_SHARDS=N` above 1, shard
//! `k`'s stream is `<prefix>events:{k}`, and every key a script or transaction uses together
//! with that stream — the durable backlog, the publish dedupe keys — carries the same hash tag
//! `{k}`, so that on a Redis Cluster they share the stream's slot. With N = 1 on one Redis every
//! name is what it always was (existing deployments keep their keys).
//!
//! **On a Redis Cluster** every other key (the control plane, the delivery history, the stats,
//! the dead letters: the *global* keys) carries one hash tag, `{<prefix>events}` — the slot of
//! the unsharded stream — so that all of them live in one slot and every transaction among them
//! works as on one Redis. With N = 1 the shard keys carry that tag too: everything is one slot.
//! What that costs: the master holding that slot holds the control plane and the history; the
//! streams and the backlog spread (docs/scaling.md).

/// Redis keys derived from the prefix; the one place that spells them.
#[derive(Debug, Clone)]
pub struct Keys {
    /// What every global key starts with: the configured prefix, followed on a Redis Cluster by
    /// the global hash tag.
    pub prefix: String,
    /// The unsharded stream, `<prefix>events` (N = 1); see [`Keys::stream`].
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
    /// The configured prefix (`WSS_KEY_PREFIX`), untagged.
    base: String,
    shards: u32,
    cluster: bool,
}

impl Keys {
    /// The keys of one Redis and one stream, as before shards existed.
    pub fn new(prefix: &str) -> Self {
        Self::sharded(prefix, 1, false)
    }

    /// The keys of `shards` streams (at least 1), on a Redis Cluster when `cluster`. The prefix
    /// must hold no `{` or `}` there (the configuration refuses it): a hash tag in it would put
    /// every key in one slot.
    pub fn sharded(base: &str, shards: u32, cluster: bool) -> Self {
        let prefix = if cluster { format!("{base}{{{base}events}}") } else { base.to_owned() };
        Self {
            base: base.to_owned(),
            shards: shards.max(1),
            cluster,
            events: format!("{base}events"),
            dead_letters: format!("{prefix}deadletters"),
            tenants: format!("{prefix}tenants"),
            webhooks: format!("{prefix}webhooks"),
            policies: format!("{prefix}policies"),
            tokens: format!("{prefix}tokens"),
            config_version: format!("{prefix}config:version"),
            deliveries: format!("{prefix}deliveries"),
            prefix,
        }
    }

    /// Number of event streams (`WSS_STREAM_SHARDS`).
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// On a Redis Cluster: transactions and scripts must not mix the global slot and a shard's.
    pub fn cluster(&self) -> bool {
        self.cluster
    }

    /// Shard `shard`'s stream: `<prefix>events:{k}`, or `<prefix>events` when there is one.
    pub fn stream(&self, shard: u32) -> String {
        if self.shards == 1 {
            self.events.clone()
        } else {
            format!("{}events:{{{shard}}}", self.base)
        }
    }

    /// Every stream, by shard.
    pub fn streams(&self) -> Vec<String> {
        (0..self.shards).map(|k| self.stream(k)).collect()
    }

    /// The shard of `tenant`'s events (`crate::shard::shard_of`).
    pub fn shard_of(&self, tenant: &str) -> u32 {
        crate::shard::shard_of(tenant, self.shards)
    }

    /// The stream `tenant`'s events go to (docs/contract.md §8).
    pub fn stream_of(&self, tenant: &str) -> String {
        self.stream(self.shard_of(tenant))
    }

    /// The hash tag of shard `shard`'s keys, with its separator: none on one Redis with one
    /// stream, `{k}:` with several, and the global tag on a cluster with one stream (the stream
    /// `<prefix>events` hashes as `{<prefix>events}` does).
    fn shard_tag(&self, shard: u32) -> String {
        match (self.shards, self.cluster) {
            (1, false) => String::new(),
            (1, true) => format!("{{{}events}}:", self.base),
            _ => format!("{{{shard}}}:"),
        }
    }

    /// The slot group of shard `shard`'s keys on a cluster: `None` when it is the global keys'
    /// (one stream), else the shard. What splits a transaction on a cluster.
    pub fn shard_slot(&self, shard: u32) -> Option<u32> {
        (self.shards > 1).then_some(shard)
    }

    /// A delivery's record in the layout before 2026-12 (one string per record): no longer
    /// written, still read until it has expired (see `crate::history`).
    pub fn delivery(&self, id: &str) -> String {
        format!("{}delivery:{id}", self.prefix)
    }

    /// The hash of the history records last written in the time bucket starting at `start_ms`
    /// (field: delivery id, value: the record as JSON; see `crate::history`).
    pub fn delivery_records(&self, start_ms: u64) -> String {
        format!("{}deliveries:records:{start_ms}", self.prefix)
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

    /// The entry a tenant's `event_id` was first published as, while the dedupe window lasts
    /// (in the slot of the tenant's stream: the publish script writes both).
    pub fn published(&self, tenant: &str, event_id: &str) -> String {
        format!("{}published:{}{tenant}:{event_id}", self.base, self.shard_tag(self.shard_of(tenant)))
    }

    /// A webhook's delivery statistics (see `crate::stats`).
    pub fn webhook_stats(&self, webhook: &str) -> String {
        format!("{}stats:webhook:{webhook}", self.prefix)
    }

    // The durable backlog (`crate::pipeline::backlog`), one per shard: a delivery waits in the
    // backlog of the shard its entry was read from. Every backlog key starts with
    // `backlog_base`, which carries the shard's hash tag (`{k}`, docs/contract.md §8), so that
    // the keys of one shard share a slot with its stream.

    fn backlog_base(&self, shard: u32) -> String {
        format!("{}backlog:{}", self.base, self.shard_tag(shard))
    }

    /// Webhooks with deliveries in the backlog, scored by when to look at them next.
    pub fn backlog_index(&self, shard: u32) -> String {
        format!("{}webhooks", self.backlog_base(shard))
    }

    /// One webhook's waiting deliveries by due time (a leased one: its lease's end).
    pub fn backlog_due(&self, shard: u32, webhook: &str) -> String {
        format!("{}due:{webhook}", self.backlog_base(shard))
    }

    /// One webhook's waiting deliveries by when they entered the backlog (for their age).
    pub fn backlog_since(&self, shard: u32, webhook: &str) -> String {
        format!("{}since:{webhook}", self.backlog_base(shard))
    }

    /// A FIFO webhook's waiting deliveries in stream entry order (members: padded entry ids, all
    /// scored 0, so that the lexicographic order is the entry order).
    pub fn backlog_fifo(&self, shard: u32, webhook: &str) -> String {
        format!("{}fifo:{webhook}", self.backlog_base(shard))
    }

    /// A FIFO webhook's hold: the entry id of its head while an attempt of it is out (expiring
    /// with the lease) or while it waits for its retry (expiring at the due time).
    pub fn backlog_hold(&self, shard: u32, webhook: &str) -> String {
        format!("{}hold:{webhook}", self.backlog_base(shard))
    }

    /// A rate-limited webhook's token bucket (a hash: tokens, and when they were counted).
    pub fn backlog_rate(&self, shard: u32, webhook: &str) -> String {
        format!("{}rate:{webhook}", self.backlog_base(shard))
    }

    /// The deliveries of a rate-limited webhook already counted as held back by its limit.
    pub fn backlog_throttled(&self, shard: u32, webhook: &str) -> String {
        format!("{}throttled:{webhook}", self.backlog_base(shard))
    }

    /// One waiting delivery (of `webhook`, from stream entry `entry`): its state and its source
    /// entry's fields.
    pub fn backlog_item(&self, shard: u32, webhook: &str, entry: &str) -> String {
        format!("{}item:{webhook}:{entry}", self.backlog_base(shard))
    }
}

/// `EVAL <script> <numkeys> <keys…> <args…>`, numkeys counted from `keys`: every key a script
/// touches is passed as a key (a cluster routes the call by them), and a numkeys written by
/// hand can drift from the keys that follow it. `EVAL`, not `EVALSHA`: a script missing from
/// Redis's cache would fail a whole transaction.
pub fn eval(script: &str, keys: &[&str], args: impl redis::ToRedisArgs) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
    cmd
}

/// The hash that holds the versions of the records of hash `key`.
pub fn versions_key(key: &str) -> String {
    format!("{key}:versions")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stream_on_one_redis_keeps_every_name() {
        let keys = Keys::new("wss:");
        assert_eq!((keys.stream(0), keys.streams()), ("wss:events".to_owned(), vec!["wss:events".to_owned()]));
        assert_eq!(keys.backlog_due(0, "wh"), "wss:backlog:due:wh");
        assert_eq!(keys.backlog_index(0), "wss:backlog:webhooks");
        assert_eq!(keys.published("acme", "e1"), "wss:published:acme:e1");
        assert_eq!((keys.tenants.as_str(), keys.delivery("d").as_str()), ("wss:tenants", "wss:delivery:d"));
    }

    #[test]
    fn shard_keys_carry_the_shard_s_tag() {
        let keys = Keys::sharded("wss:", 8, false);
        assert_eq!(keys.stream(3), "wss:events:{3}");
        assert_eq!(keys.streams().len(), 8);
        assert_eq!(keys.backlog_item(3, "wh", "1-0"), "wss:backlog:{3}:item:wh:1-0");
        assert_eq!(keys.backlog_index(5), "wss:backlog:{5}:webhooks");
        // acme is in shard 6 of 8 (tests/vectors/shards.json).
        assert_eq!(keys.published("acme", "e1"), "wss:published:{6}:acme:e1");
        assert_eq!(keys.tenants, "wss:tenants", "global keys are untagged on one Redis");
    }

    #[test]
    fn on_a_cluster_global_keys_share_one_tag() {
        let keys = Keys::sharded("wss:", 8, true);
        assert_eq!(keys.tenants, "wss:{wss:events}tenants");
        assert_eq!(keys.delivery("d"), "wss:{wss:events}delivery:d");
        assert_eq!(keys.delivery_records(3_600_000), "wss:{wss:events}deliveries:records:3600000");
        assert_eq!(keys.stream(2), "wss:events:{2}");
        let one = Keys::sharded("wss:", 1, true);
        assert_eq!(one.stream(0), "wss:events");
        assert_eq!(one.backlog_due(0, "wh"), "wss:backlog:{wss:events}:due:wh", "one stream: its keys in its slot");
    }
}
