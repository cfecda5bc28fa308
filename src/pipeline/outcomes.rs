//! Outcomes: the last stage. For every completion it decides what happens next — acknowledge,
//! retry later, or dead-letter — and writes the result to Redis.
//!
//! - An entry is acknowledged (`XACK <prefix>events wss <id>`) only when every delivery it
//!   produced is terminal — delivered or dead-lettered — or handed to the durable backlog
//!   (`super::backlog`). Rejected and unrouted entries are acknowledged at once, rejected ones
//!   after their dead letter is written.
//! - A failed attempt with attempts left is handed to the backlog, due after the policy's delay
//!   (or the receiver's `Retry-After`, capped); so is a delivery the signer postponed (webhook at
//!   its cap, circuit open). The last failure is dead-lettered with every attempt's outcome. A
//!   delivery taken from the backlog is removed from it when it becomes terminal, or written back
//!   with its new due time.
//! - `410 Gone` disables the webhook (reason visible in `GetWebhook`) and dead-letters.
//!
//! Writes are batched: the completions that arrive within 5 ms of the first ([`LINGER`]) are
//! handled together, then one transaction (`MULTI … EXEC`) writes their dead letters (`XADD <prefix>deadletters MAXLEN ~ N`),
//! with the source entry's fields copied in for a delivery's ([`deadletter::queue_write`]),
//! their delivery history, their backlog hand-offs and removals, and their `XACK`s, so that no
//! crash leaves an entry acknowledged without its records or its waiting deliveries, or recorded
//! as finished but unacknowledged and unrecorded as dead.
//! Each attempt and dead letter is also tallied per webhook in memory, and the tally — with
//! the circuit changes `super::isolation` queued — joins one of these transactions at most once
//! a second (`crate::stats`: counts per minute, last success and failure, last circuit change,
//! for `GetWebhookStats`). Webhooks no longer in the routing snapshot (deleted) are left out.
//! When Redis is away the stage keeps the batch (one history record per delivery, the latest) and retries with backoff, while
//! it goes on handling completions — scheduling retries — so deliveries already in hand keep
//! flowing (webhook slots are freed by the senders, whatever Redis does). Reading stops by itself: nothing is acknowledged, so the
//! in-flight window fills (and the batch stays bounded by it).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering as AtomicOrdering},
        Arc,
    },
    time::{Duration, Instant},
};

use std::collections::{HashMap, HashSet};

use crate::redis_conn::Conn;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{
    backlog::{self, HandOff},
    decision::{decide, Attempt, Disable, Next},
    isolation::{Isolation, Transition},
    messages::{Completion, Delivery, EntryTicket, InFlight, Verdict},
};
use crate::{
    clock::Clock,
    deadletter::{self, AttemptRecord, DeadLetter, Reason},
    domain::{routing::RoutingHandle, store::Store},
    history::{self, DeliveryRecord, Retention, Status},
    keys::Keys,
    metrics::Metrics,
    redis_conn::RedisTarget,
    stats::{self, CircuitRecord, Tally, Trims},
};

const MAX_BATCH: usize = 512;
/// How long a batch waits for more completions after its first. Delivery is not delayed by it,
/// only the acknowledgement and the records (which a crash in this window leaves undone, so
/// those deliveries are repeated: at-least-once). Measured at 5,500 deliveries/s (`wss bench`'s
/// latency run, `INFO commandstats`): 54 completions per transaction instead of 2.6, and with
/// the index writes grouped by key ([`history::queue_writes`]) 4.4 Redis commands per delivery
/// instead of 7.8 at the time (since then the records themselves are one `HSET` per batch:
/// docs/performance.md).
const LINGER: Duration = Duration::from_millis(5);
/// How often the history is trimmed: often enough that each trim evicts little (an eviction
/// blocks Redis while it runs), seldom enough that its index commands stay a small share.
const TRIM_EVERY: Duration = Duration::from_millis(250);
/// Waits between attempts to write a batch while Redis is away.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Outcomes {
    pub redis: RedisTarget,
    pub keys: Keys,
    pub dead_letter_maxlen: usize,
    pub retention: Retention,
    pub store: Arc<Store>,
    pub routing: Arc<RoutingHandle>,
    pub in_flight: Arc<InFlight>,
    /// Tells the signer that a webhook disabled for failing too long has its slot back, so its
    /// parked deliveries may go (and be dead-lettered). Other slots are freed by the senders.
    pub freed: Sender<String>,
    /// Wakes the backlog's pump after hand-offs that are due soon.
    pub wake: Sender<()>,
    /// Backlog deliveries in progress (`super::backlog::Pump::in_progress`): one less for each
    /// completion of one.
    pub backlog_in_progress: Arc<AtomicUsize>,
    /// Source of jitter draws in [-1, 1]; injected so tests can fix it.
    pub draw: fn() -> f64,
    /// Where circuit changes wait to be recorded in the stats.
    pub isolation: Arc<Isolation>,
    /// This instance's name (its consumer name), recorded with the circuit changes it saw.
    pub instance: String,
    /// Counted as completions are handled (before their batch is written: a crash before the
    /// write repeats those deliveries, and counts them again).
    pub metrics: Arc<Metrics>,
    /// Where due times, record times and the batch's timers come from.
    pub clock: Clock,
}

/// Redis writes owed by the completions handled since the last flush.
#[derive(Default)]
struct Batch {
    /// With the shard of the entry each came from (a delivery's source fields are read there).
    dead: Vec<(u32, DeadLetter)>,
    /// Stream entries to acknowledge: (shard, entry id).
    acks: Vec<(u32, String)>,
    /// Broker-sourced events to acknowledge to their broker once this batch is written
    /// (`crate::source`): no Redis command, a message to the source after the transaction.
    broker_acks: Vec<Arc<EntryTicket>>,
    /// By delivery id: only a delivery's latest record needs writing, which also bounds the
    /// batch while Redis is away and retries keep failing.
    history: HashMap<String, DeliveryRecord>,
    /// Deliveries into the backlog (or back into it), by item: only the latest state counts.
    hand_offs: HashMap<String, HandOff>,
    /// Backlog deliveries that became terminal: (shard, webhook, entry, FIFO head) to remove.
    backlog_done: Vec<(u32, Arc<str>, String, bool)>,
    /// Stats since they were last written; not counted in `len`: they wait for
    /// [`StatsWriting::due`] (or ride along with a batch written after it).
    stats: Tally,
}

impl Batch {
    fn record(&mut self, record: DeliveryRecord) {
        self.history.insert(record.id.clone(), record);
    }

    fn hand_off(&mut self, hand_off: HandOff) {
        self.hand_offs.insert(history::delivery_id(&hand_off.entry, &hand_off.webhook), hand_off);
    }

    /// A FIFO webhook's head was finished: its next delivery waits for this batch.
    fn finished_fifo_head(&self) -> bool {
        self.backlog_done.iter().any(|(_, _, _, fifo)| *fifo)
    }

    fn len(&self) -> usize {
        self.dead.len() + self.acks.len() + self.broker_acks.len() + self.history.len() + self.hand_offs.len() + self.backlog_done.len()
    }

    /// Acknowledges `ticket`'s event with this batch: an `XACK` in its transaction for a Redis
    /// entry, its broker's acknowledgement after it for a broker's message.
    fn ack(&mut self, ticket: &Arc<EntryTicket>) {
        if ticket.broker.is_some() {
            self.broker_acks.push(ticket.clone());
        } else {
            self.acks.push((ticket.shard, ticket.stream_id.clone()));
        }
    }
}

/// When the stats are written next, and what this instance trimmed of them.
struct StatsWriting {
    due: Instant,
    trims: Trims,
}

/// History indexes written since they were last trimmed.
struct Trimming {
    touched: HashSet<String>,
    last: Instant,
}

impl Outcomes {
    /// Runs until every producer of completions is gone (they stop on shutdown), so that what
    /// the senders finished is still recorded.
    pub fn run(self, input: Receiver<Completion>, shutdown: Receiver<()>) {
        let mut conn: Option<Conn> = None;
        let mut batch = Batch::default();
        let mut trimming = Trimming { touched: HashSet::new(), last: self.clock.now() };
        let mut stats = StatsWriting { due: self.clock.now() + stats::WRITE_EVERY, trims: Trims::default() };
        // While Redis is away the batch is kept and written later; completions are still
        // handled meanwhile (retries scheduled), so what wss holds keeps being delivered.
        let mut backoff = BACKOFF_MIN;
        loop {
            let first = if batch.len() > 0 {
                input.recv_timeout(backoff)
            } else if !batch.stats.is_empty() {
                // Nothing else to write: wake up for the stats alone.
                input.recv_deadline(stats.due.max(self.clock.now() + backoff))
            } else {
                input.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            match first {
                Ok(completion) => self.handle(completion, &mut batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Group commit: what arrives within LINGER of the first joins its transaction, so
            // that the fixed costs (MULTI/EXEC, XACK, one ZADD per index) are shared.
            // Except behind a finished FIFO head: its webhook's next delivery waits for this
            // write, so it goes at once (docs/ordering.md).
            let linger_until = self.clock.now() + LINGER;
            while batch.len() < MAX_BATCH && !batch.finished_fifo_head() {
                match input.recv_deadline(linger_until) {
                    Ok(next) => self.handle(next, &mut batch),
                    Err(_) => break,
                }
            }
            if self.flush(&mut conn, &mut batch, &mut trimming, &mut stats, false) {
                backoff = BACKOFF_MIN;
            } else {
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        // Every producer is gone (shutdown): a last few tries to record what was done.
        for _ in 0..3 {
            if self.flush(&mut conn, &mut batch, &mut trimming, &mut stats, true) {
                return;
            }
            if conn.is_none() && shutdown.recv_timeout(backoff).is_ok() {
                break;
            }
        }
        if batch.len() > 0 {
            log::warn!(target: "wss::outcomes", "stopping with Redis unreachable: {} acknowledgements and {} dead letters not written; those entries stay pending and will be finished after a restart", batch.acks.len() + batch.broker_acks.len(), batch.dead.len());
        }
    }

    fn handle(&self, completion: Completion, batch: &mut Batch) {
        let from_backlog = match &completion {
            Completion::Attempted { delivery, .. }
            | Completion::Abandoned { delivery, .. }
            | Completion::AlreadyTerminal { delivery }
            | Completion::Postponed { delivery, .. } => delivery.backlog.is_some(),
            Completion::Rejected { .. } | Completion::Unrouted { .. } => false,
        };
        if from_backlog {
            self.backlog_in_progress.fetch_sub(1, AtomicOrdering::SeqCst);
        }
        match completion {
            Completion::Attempted { mut delivery, route, record, verdict, transition } => {
                let now_ms = self.clock.now_ms();
                let attempt = Attempt { number: delivery.attempt, verdict, transition };
                let step = decide(attempt, &route.policy, now_ms, self.draw);
                if let Some(transition) = step.circuit {
                    log_circuit(&delivery.webhook_id, transition);
                }
                if let Some(disable) = step.disable {
                    if disable != Disable::Gone {
                        log::warn!(target: "wss::outcomes", "disabling webhook {}: {}", delivery.webhook_id, disable.reason());
                    }
                    self.disable_webhook(&delivery.webhook_id, disable);
                }
                if step.release_parked {
                    let _ = self.freed.send(delivery.webhook_id.to_string());
                }
                batch.stats.attempt(&delivery.webhook_id, &record, verdict == Verdict::Delivered);
                self.metrics.attempt(record.status, record.duration_ms as f64 / 1000.0);
                match step.next {
                    Next::Delivered => {
                        self.metrics.delivered.inc();
                        self.metrics.event_delivered(&delivery.ticket.stream_id, now_ms);
                        log::debug!(target: "wss::outcomes",
                            tenant = delivery.event.tenant(), webhook = &*delivery.webhook_id, event_id = delivery.event.id(),
                            attempt = record.attempt, outcome = "delivered", status = record.status;
                            "delivered event {} to webhook {} (tenant {}) on attempt {} in {} ms",
                            delivery.event.id(), delivery.webhook_id, delivery.event.tenant(), record.attempt, record.duration_ms);
                        push_attempt(&mut delivery.history, record);
                        batch.record(history_record(&delivery, Status::Delivered, 0, "", now_ms));
                        finish(&delivery, batch);
                    }
                    Next::DeadLetter(reason @ Reason::Gone) => {
                        log_failure(&delivery, &record, "dead_lettered", "the receiver answered 410 Gone: disabling the webhook");
                        push_attempt(&mut delivery.history, record);
                        let detail = format!(
                            "the receiver answered 410 Gone on attempt {}; webhook {} was disabled",
                            delivery.attempt, delivery.webhook_id
                        );
                        self.dead_letter(delivery, reason, detail, batch);
                    }
                    Next::Retry { delay, due_ms } => {
                        log_failure(
                            &delivery,
                            &record,
                            "retrying",
                            &format!("retrying in {}", humantime::format_duration(round_ms(delay))),
                        );
                        push_attempt(&mut delivery.history, record);
                        batch.record(history_record(&delivery, Status::Retrying, due_ms, "", now_ms));
                        self.metrics.retried.inc();
                        delivery.attempt += 1;
                        self.hand_off(delivery, due_ms, batch);
                    }
                    Next::DeadLetter(reason) => {
                        log_failure(&delivery, &record, "dead_lettered", "no attempts left: dead-lettering");
                        push_attempt(&mut delivery.history, record);
                        let detail =
                            format!("all {} attempts failed; the last: {}", route.policy.max_attempts, last_error(&delivery.history));
                        self.dead_letter(delivery, reason, detail, batch);
                    }
                }
            }
            Completion::AlreadyTerminal { delivery } => finish(&delivery, batch),
            Completion::Postponed { delivery, due_ms } => {
                log::debug!(target: "wss::outcomes", "delivery of event {} to webhook {} postponed to the backlog, due in {} ms",
                    delivery.event.id(), delivery.webhook_id, due_ms.saturating_sub(self.clock.now_ms()));
                self.hand_off(delivery, due_ms, batch);
            }
            Completion::Abandoned { delivery, reason, detail } => {
                log::warn!(target: "wss::outcomes",
                    tenant = delivery.event.tenant(), webhook = &*delivery.webhook_id, event_id = delivery.event.id(),
                    attempt = delivery.attempt, outcome = "dead_lettered", reason = reason.as_str();
                    "event {} for webhook {} (tenant {}) dead-lettered: {detail}", delivery.event.id(), delivery.webhook_id, delivery.event.tenant());
                self.dead_letter(delivery, reason, detail, batch);
            }
            Completion::Rejected { ticket, rejection, mut raw_fields } => {
                // A broker's event: the fields it arrived with (the transformer rebuilds them
                // from the parsed event, which for a broker's loses its id); not when they were
                // left out for their size.
                if let (false, Some(fields)) = (raw_fields.is_empty(), ticket.broker_fields()) {
                    raw_fields = fields.clone();
                }
                // The tenant and event id are what could be read of the entry (perhaps nothing).
                log::warn!(target: "wss::outcomes",
                    tenant = rejection.tenant.as_str(), event_id = rejection.event_id.as_str(), outcome = "rejected", reason = rejection.reason.as_str();
                    "stream entry {} rejected ({}): {}; dead-lettered and acknowledged",
                    ticket.stream_id, rejection.reason.as_str(), rejection.detail);
                self.metrics.bad_entry(rejection.reason);
                self.metrics.dead_letter(rejection.reason);
                let body = fields_as_json(&raw_fields);
                batch.dead.push((
                    ticket.shard,
                    DeadLetter {
                        reason: rejection.reason.as_str().into(),
                        detail: rejection.detail,
                        tenant_id: rejection.tenant,
                        event_id: rejection.event_id,
                        event_type: rejection.event_type,
                        stream_entry_id: ticket.stream_id.clone(),
                        dead_lettered_at_ms: self.clock.now_ms(),
                        body,
                        raw_fields,
                        ..Default::default()
                    },
                ));
                batch.ack(&ticket);
            }
            Completion::Unrouted { ticket } => {
                self.metrics.events_unrouted.inc();
                batch.ack(&ticket);
            }
        }
    }

    fn dead_letter(&self, mut delivery: Delivery, reason: Reason, detail: String, batch: &mut Batch) {
        self.metrics.dead_lettered.inc();
        self.metrics.dead_letter(reason);
        let now_ms = self.clock.now_ms();
        batch.record(history_record(&delivery, Status::DeadLettered, 0, reason.as_str(), now_ms));
        batch.stats.dead_letter(&delivery.webhook_id, now_ms);
        batch.dead.push((
            delivery.ticket.shard,
            DeadLetter {
                reason: reason.as_str().into(),
                detail,
                tenant_id: delivery.event.tenant().to_owned(),
                webhook_id: delivery.webhook_id.to_string(),
                event_id: delivery.event.id().to_owned(),
                event_type: delivery.event.event_type().to_owned(),
                stream_entry_id: delivery.ticket.stream_id.clone(),
                dead_lettered_at_ms: now_ms,
                body: String::from_utf8_lossy(&delivery.body).into_owned(),
                attempts: std::mem::take(&mut delivery.history),
                // A broker's event has no stream entry to copy its fields from: they come from memory.
                raw_fields: match delivery.backlog.as_mut() {
                    Some(backlogged) => std::mem::take(&mut backlogged.fields),
                    None => delivery.ticket.broker_fields().cloned().unwrap_or_default(),
                },
                ..Default::default()
            },
        ));
        finish(&delivery, batch);
    }

    /// Writes `delivery` into the backlog, due at `due_ms`: for a fresh delivery that finishes
    /// its share of the entry (acknowledged with the hand-off when it was the last).
    fn hand_off(&self, delivery: Delivery, due_ms: u64, batch: &mut Batch) {
        self.metrics.backlog_handed_off.inc();
        // A FIFO item stays one until it is finished; a fresh delivery goes by its webhook now.
        let fifo = match &delivery.backlog {
            Some(taken) => taken.fifo,
            None => self.routing.current().webhooks.get(&*delivery.webhook_id).is_some_and(|route| route.fifo),
        };
        batch.hand_off(HandOff::of(&delivery, due_ms, fifo));
        if delivery.backlog.is_none() && delivery.ticket.finish_one() {
            batch.ack(&delivery.ticket);
        }
    }

    fn disable_webhook(&self, webhook_id: &str, why: Disable) {
        let reason = why.reason();
        let result = self.store.update_webhook(webhook_id, |w| {
            w.enabled = false;
            w.disabled_reason = reason.clone();
            Ok(())
        });
        match result {
            Ok(_) => {
                if let Err(err) = self.routing.reload(&self.store) {
                    log::warn!(target: "wss::outcomes", "webhook {webhook_id} disabled, but reloading the routing failed: {err}");
                }
            }
            Err(err) => log::error!(target: "wss::outcomes", "could not disable webhook {webhook_id} ({reason}): {err}"),
        }
    }

    /// One attempt to write the batch in one transaction; true when it is written (or empty).
    /// On failure the batch is kept for the next attempt. The stats join when they are due
    /// (or `force`d, at shutdown).
    fn flush(&self, conn: &mut Option<Conn>, batch: &mut Batch, trimming: &mut Trimming, stats: &mut StatsWriting, force: bool) -> bool {
        self.take_circuit_changes(&mut batch.stats);
        let write_stats = !batch.stats.is_empty() && (force || self.clock.now() >= stats.due);
        if batch.len() == 0 && !write_stats {
            return true;
        }
        if conn.is_none() {
            // A failed connect is what logs the outage (once).
            *conn = self.redis.connect_once(Duration::from_secs(2)).ok();
        }
        let Some(con) = conn.as_mut() else { return false };
        match self.write(con, batch, trimming, stats, write_stats) {
            Ok(()) => {
                self.trim_history(con, trimming);
                true
            }
            Err(err) => {
                if crate::redis_conn::is_connection_error(&err) {
                    self.redis.connection_lost(&err);
                } else {
                    log::error!(target: "wss::outcomes", "writing acknowledgements, history and dead letters failed: {err}; will retry");
                }
                *conn = None;
                false
            }
        }
    }

    /// Writes the batch. On one Redis: one MULTI/EXEC — dead letters, history and
    /// acknowledgements land together or not at all, so a crash can never leave an entry
    /// acknowledged without its records. On a Redis Cluster a transaction cannot span slots:
    /// the global keys' transaction (dead letters, history, stats) goes first, then one per
    /// shard (its hand-offs, backlog removals and `XACK`s) — an entry is still never
    /// acknowledged before its records are written; a crash between the two leaves it pending,
    /// read again and checked against the history (like any recovered entry). What was written
    /// leaves the batch as it lands, so a retry writes only the rest.
    fn write(
        &self,
        con: &mut Conn,
        batch: &mut Batch,
        trimming: &mut Trimming,
        stats: &mut StatsWriting,
        write_stats: bool,
    ) -> redis::RedisResult<()> {
        let split = con.is_cluster();
        if split {
            self.read_dead_letter_sources(con, &mut batch.dead)?;
        }
        let mut global = redis::pipe();
        global.atomic();
        let mut shards: std::collections::BTreeMap<u32, redis::Pipeline> = std::collections::BTreeMap::new();
        let keys = &self.keys;
        let slot = |shard: u32| keys.shard_slot(shard).filter(|_| split);
        let now = self.clock.now_ms();
        for hand_off in batch.hand_offs.values() {
            backlog::queue_hand_off(pipe_for(slot(hand_off.shard), &mut global, &mut shards), keys, hand_off, now);
        }
        for (shard, webhook, entry, fifo) in &batch.backlog_done {
            backlog::queue_done(pipe_for(slot(*shard), &mut global, &mut shards), keys, *shard, webhook, entry, *fifo, now);
        }
        let mut acks: std::collections::BTreeMap<u32, Vec<String>> = std::collections::BTreeMap::new();
        for (shard, id) in &batch.acks {
            acks.entry(*shard).or_default().push(id.clone());
        }
        for (shard, ids) in &acks {
            crate::source::redis::queue_ack(pipe_for(slot(*shard), &mut global, &mut shards), &keys.stream(*shard), ids);
        }
        // The global keys' part: queued after the shards' (a shard's pipeline may be the global
        // one, on one Redis), sent first.
        for (shard, record) in &batch.dead {
            deadletter::queue_write(&mut global, &keys.dead_letters, &keys.stream(*shard), self.dead_letter_maxlen, record);
        }
        let touched = history::queue_writes(&mut global, keys, self.retention, batch.history.values());
        if write_stats {
            // A deleted webhook's stats were deleted with it: do not write them again.
            let routing = self.routing.current();
            batch.stats.retain(|webhook| routing.webhooks.contains_key(webhook));
            stats::queue_writes(&mut global, keys, &batch.stats, &mut stats.trims, now, stats::KEY_TTL);
        }
        if global.cmd_iter().next().is_some() {
            global.query::<()>(con)?;
        }
        if write_stats {
            batch.stats.clear();
            stats.due = self.clock.now() + stats::WRITE_EVERY;
        }
        batch.dead.clear();
        batch.history.clear();
        trimming.touched.extend(touched);
        let mut wake = false;
        if !split {
            wake = self.shard_written(batch, None, now);
        }
        for (shard, pipe) in shards {
            pipe.query::<()>(con)?;
            wake |= self.shard_written(batch, Some(shard), now);
        }
        if wake {
            let _ = self.wake.try_send(());
        }
        // A broker's message once its hand-offs are written too.
        for ticket in batch.broker_acks.drain(..) {
            if let Some(hold) = &ticket.broker {
                hold.ack.ack();
            }
            self.in_flight.release(ticket.shard, &ticket.stream_id);
        }
        Ok(())
    }

    /// Drops from the batch what was written of shard `shard` (`None`: of every shard), and
    /// releases its acknowledged entries; true when the backlog's pump should look now (a
    /// hand-off due soon, a FIFO head finished).
    fn shard_written(&self, batch: &mut Batch, shard: Option<u32>, now: u64) -> bool {
        let mine = |k: u32| shard.is_none() || shard == Some(k);
        let soon = now + 1000;
        // A FIFO head finished: its webhook's next one may go at once.
        let mut wake = batch.backlog_done.iter().any(|(k, _, _, fifo)| *fifo && mine(*k));
        batch.backlog_done.retain(|(k, ..)| !mine(*k));
        batch.hand_offs.retain(|_, h| {
            let written = mine(h.shard);
            wake |= written && h.due_ms <= soon;
            !written
        });
        batch.acks.retain(|(k, id)| {
            let written = mine(*k);
            if written {
                self.in_flight.release(*k, id);
            }
            !written
        });
        wake
    }

    /// On a cluster the dead-letter stream and a shard's stream are in different slots: a
    /// delivery's dead letter gets its source entry's fields read first (what the write script
    /// copies on one Redis). A source trimmed away meanwhile is simply not copied.
    fn read_dead_letter_sources(&self, con: &mut Conn, dead: &mut [(u32, DeadLetter)]) -> redis::RedisResult<()> {
        for (shard, record) in dead.iter_mut().filter(|(_, r)| !r.webhook_id.is_empty() && r.raw_fields.is_empty()) {
            let reply: redis::Value =
                redis::cmd("XRANGE").arg(self.keys.stream(*shard)).arg(&record.stream_entry_id).arg(&record.stream_entry_id).query(con)?;
            let entries = crate::streams::parse_entries(reply)
                .map_err(|e| redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "XRANGE reply", e.to_string())))?;
            if let Some(fields) = entries.into_iter().next().and_then(|entry| entry.fields) {
                record.raw_fields = fields;
            }
        }
        Ok(())
    }
}

impl Outcomes {
    /// Moves the circuit changes the isolation state queued into the stats tally.
    fn take_circuit_changes(&self, tally: &mut Tally) {
        for change in self.isolation.take_changes() {
            let record = CircuitRecord {
                state: change.state,
                at_ms: self.clock.wall_ms(change.at),
                open_until_ms: change.open_until.map_or(0, |at| self.clock.wall_ms(at)),
                instance: self.instance.clone(),
            };
            tally.circuit(&change.webhook, record);
        }
    }

    /// At most every [`TRIM_EVERY`]: trims the history indexes written since the last trim.
    fn trim_history(&self, con: &mut Conn, trimming: &mut Trimming) {
        if self.clock.elapsed(trimming.last) < TRIM_EVERY || trimming.touched.is_empty() {
            return;
        }
        trimming.last = self.clock.now();
        let touched = std::mem::take(&mut trimming.touched);
        if let Err(err) = history::trim(con, &self.keys, self.retention, &touched, self.clock.now_ms()) {
            log::warn!(target: "wss::outcomes", "trimming the delivery history failed ({err}); will try again");
            trimming.touched = touched;
        }
    }
}

/// The transaction of slot group `slot` (`None`: the global keys', which is every key's on one
/// Redis).
fn pipe_for<'a>(
    slot: Option<u32>,
    global: &'a mut redis::Pipeline,
    shards: &'a mut std::collections::BTreeMap<u32, redis::Pipeline>,
) -> &'a mut redis::Pipeline {
    match slot {
        Some(k) => shards.entry(k).or_insert_with(|| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe
        }),
        None => global,
    }
}

/// Logs a change of the webhook's circuit (its sender already updated it and freed the slot).
/// A webhook failing too long is disabled instead ([`Disable::FailingTooLong`]).
fn log_circuit(webhook_id: &str, transition: Transition) {
    match transition {
        Transition::Opened { failures, cooldown } => {
            log::warn!(target: "wss::outcomes", webhook = webhook_id, outcome = "circuit_opened";
            "circuit of webhook {webhook_id} opened after {failures} consecutive failures: no attempts for {}, then one probe",
            humantime::format_duration(cooldown))
        }
        Transition::Closed => {
            log::info!(target: "wss::outcomes", webhook = webhook_id, outcome = "circuit_closed"; "circuit of webhook {webhook_id} closed: the probe succeeded")
        }
        Transition::FailingTooLong { .. } => {}
    }
}

/// The history record of a delivery whose attempts so far are in `delivery.history`.
fn history_record(delivery: &Delivery, status: Status, next_attempt_at_ms: u64, dead_letter_reason: &str, now: u64) -> DeliveryRecord {
    DeliveryRecord {
        id: history::delivery_id(&delivery.ticket.stream_id, &delivery.webhook_id),
        tenant_id: delivery.event.tenant().to_owned(),
        webhook_id: delivery.webhook_id.to_string(),
        event_id: delivery.event.id().to_owned(),
        event_type: delivery.event.event_type().to_owned(),
        stream_entry_id: delivery.ticket.stream_id.clone(),
        status,
        created_at_ms: delivery.history.first().map_or(now, |a| a.started_at_ms),
        updated_at_ms: now,
        next_attempt_at_ms,
        attempts: delivery.history.clone(),
        dead_letter_reason: dead_letter_reason.to_owned(),
    }
}

/// Appends an attempt without the spare capacity `Vec::push` would add: a first push makes room
/// for four records, and a delivery waiting for its retry keeps its vector for hours — with a
/// million retries waiting that was 290 MB of empty slots (measured with `wss bench`).
fn push_attempt(history: &mut Vec<AttemptRecord>, record: AttemptRecord) {
    history.reserve_exact(1);
    history.push(record);
}

/// A delivery became terminal: its entry is acknowledged when it was the last, or, taken from
/// the backlog, it leaves the backlog (and a hand-off of it earlier in this batch is dropped).
fn finish(delivery: &Delivery, batch: &mut Batch) {
    if let Some(taken) = &delivery.backlog {
        batch.hand_offs.remove(&history::delivery_id(&delivery.ticket.stream_id, &delivery.webhook_id));
        batch.backlog_done.push((delivery.ticket.shard, delivery.webhook_id.clone(), delivery.ticket.stream_id.clone(), taken.fifo));
    } else if delivery.ticket.finish_one() {
        batch.ack(&delivery.ticket);
    }
}

/// Logs a failed attempt once, with its fields; `outcome`: what happens to the delivery now.
fn log_failure(delivery: &Delivery, record: &AttemptRecord, outcome: &str, next: &str) {
    let what =
        if record.status != 0 { format!("HTTP {}", record.status) } else { format!("{} error: {}", record.error_kind, record.error) };
    let error = if record.status != 0 { "http_status" } else { record.error_kind.as_str() };
    log::warn!(target: "wss::outcomes",
        tenant = delivery.event.tenant(), webhook = &*delivery.webhook_id, event_id = delivery.event.id(),
        attempt = record.attempt, outcome = outcome, status = record.status, error = error;
        "attempt {} of event {} to webhook {} (tenant {}) failed: {what}; {next}",
        record.attempt, delivery.event.id(), delivery.webhook_id, delivery.event.tenant());
}

fn last_error(history: &[AttemptRecord]) -> String {
    history.last().map_or_else(String::new, |r| if r.error.is_empty() { format!("HTTP {}", r.status) } else { r.error.clone() })
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A rejected entry's fields as a JSON object of (lossily decoded) strings, for reading.
fn fields_as_json(fields: &[(Vec<u8>, Vec<u8>)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), serde_json::Value::String(String::from_utf8_lossy(v).into_owned())))
        .collect();
    serde_json::Value::Object(map).to_string()
}
