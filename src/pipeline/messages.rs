//! The pipeline's vocabulary: the messages its stages hand each other (`Inbound` → `Delivery` →
//! `SignedDelivery` → `Completion`), the ticket that acknowledges a source entry once its last
//! delivery is terminal, and the in-flight window the sources admit entries into.
//!
//! These live apart from the builder (`super`, which creates the channels and spawns the
//! threads) so that the stages and the sources import the words they speak and never the
//! wiring: tests/architecture.rs fails on any stage that imports the builder.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;

use super::{event, isolation};
use crate::{
    deadletter::{AttemptRecord, Fields, Reason},
    domain::routing::Route,
    trace_context::EventTrace,
};

/// Set once when the pipeline is asked to stop. The sender threads check it after each `recv`
/// instead of selecting on the shutdown channel beside their queue: a `select!` registers and
/// unregisters each of 256 threads with both channels' wakers every delivery, and those wakers'
/// locks were a fifth of the senders' context switches (docs/performance.md). A sender blocked
/// on an empty queue is woken by the signer's exit, which drops the queue's only sender.
#[derive(Debug, Clone, Default)]
pub struct Stopping(Arc<AtomicBool>);

impl Stopping {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How a broker learns that an event is durably handed off. Called at most once, from the
/// outcome stage, after the transaction that recorded the event's last delivery.
pub trait Ack: Send + Sync {
    fn ack(&self);
}

/// What a broker-sourced event's ticket holds until it is acknowledged.
pub struct BrokerHold {
    /// The event's fields as docs/contract.md §1 names them (`tenant`, `type`, `data`, `id`, the reserved
    /// `_wss_created_at_ms`, attributes): what the backlog and a dead letter store.
    pub fields: Fields,
    pub ack: Box<dyn Ack>,
}

impl std::fmt::Debug for BrokerHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHold").field("fields", &self.fields.len()).finish_non_exhaustive()
    }
}

/// What a delivery taken from the backlog carries besides what every delivery does.
#[derive(Debug)]
pub struct Backlogged {
    /// Its source entry's fields, for a dead letter (the entry itself may be trimmed by now).
    pub fields: Fields,
    /// It is its FIFO webhook's head: finishing it or writing it back releases the webhook's
    /// hold (see `super::backlog::TAKE_SCRIPT`).
    pub fifo: bool,
}

/// Bookkeeping for one stream entry: acknowledged when its last delivery is terminal.
#[derive(Debug)]
pub struct EntryTicket {
    pub stream_id: String,
    /// The shard whose stream holds the entry (docs/contract.md §8; 0 with one stream, and for
    /// a broker's event): where it is acknowledged, and whose backlog its deliveries wait in.
    pub shard: u32,
    /// Read again after a restart or claimed from another consumer: some of its deliveries may
    /// already be done (the signer checks the delivery history before sending).
    pub recovered: bool,
    remaining: AtomicUsize,
    /// A broker-sourced event's fields and acknowledgement (`crate::source`); `None` for a
    /// Redis stream entry, acknowledged by `XACK` in the outcome stage's transaction.
    pub broker: Option<Box<BrokerHold>>,
}

impl EntryTicket {
    pub(crate) fn new(shard: u32, stream_id: String, recovered: bool) -> Arc<Self> {
        Self::with_hold(shard, stream_id, recovered, None)
    }

    pub(crate) fn with_hold(shard: u32, stream_id: String, recovered: bool, broker: Option<Box<BrokerHold>>) -> Arc<Self> {
        Arc::new(Self { stream_id, shard, recovered, remaining: AtomicUsize::new(0), broker })
    }

    /// The fields a broker-sourced event arrived with (`None` for a Redis stream entry).
    pub fn broker_fields(&self) -> Option<&Fields> {
        self.broker.as_ref().map(|hold| &hold.fields)
    }

    /// Called once, before the deliveries are handed on.
    pub(super) fn expect(&self, deliveries: usize) {
        self.remaining.store(deliveries, Ordering::SeqCst);
    }

    /// One delivery became terminal; true when it was the last.
    pub(super) fn finish_one(&self) -> bool {
        self.remaining.fetch_sub(1, Ordering::SeqCst) == 1
    }
}

/// The part of an event every delivery of it shares: its id, type and tenant, kept back to back
/// in one string. A waiting retry holds one, and a million may wait (docs/performance.md):
/// one allocation instead of three. Its trace context, when it has one, is a second.
#[derive(Debug)]
pub struct EventMeta {
    text: Box<str>,
    /// Where the type starts, then the tenant (event fields are far below 4 GiB).
    type_at: u32,
    tenant_at: u32,
    /// The event's W3C trace context (its `traceparent` attribute), when it has a valid one.
    trace: Option<Box<EventTrace>>,
}

impl EventMeta {
    pub fn new(id: &str, event_type: &str, tenant: &str) -> Self {
        let text = [id, event_type, tenant].concat().into_boxed_str();
        let type_at = u32::try_from(id.len()).expect("an event id is far below 4 GiB");
        let tenant_at = type_at + u32::try_from(event_type.len()).expect("an event type is far below 4 GiB");
        Self { text, type_at, tenant_at, trace: None }
    }

    /// The part of `event` its deliveries share, its trace context included.
    pub fn of(event: &event::Event) -> Self {
        Self::new(&event.id, &event.event_type, &event.tenant).with_trace(EventTrace::from_attributes(&event.attributes))
    }

    pub fn with_trace(mut self, trace: Option<Box<EventTrace>>) -> Self {
        self.trace = trace;
        self
    }

    /// The trace context the event came with (`crate::otel`).
    pub fn trace(&self) -> Option<&EventTrace> {
        self.trace.as_deref()
    }

    /// The id receivers dedupe on (`X-WSS-Event-Id`).
    pub fn id(&self) -> &str {
        &self.text[..self.type_at as usize]
    }

    pub fn event_type(&self) -> &str {
        &self.text[self.type_at as usize..self.tenant_at as usize]
    }

    pub fn tenant(&self) -> &str {
        &self.text[self.tenant_at as usize..]
    }
}

/// reader → transformer
pub struct Inbound {
    pub event: event::Event,
    pub ticket: Arc<EntryTicket>,
}

/// transformer / backlog pump → signer
#[derive(Debug)]
pub struct Delivery {
    pub ticket: Arc<EntryTicket>,
    pub event: Arc<EventMeta>,
    /// The route's own id (shared, not copied: a million retries may wait).
    pub webhook_id: Arc<str>,
    pub body: Arc<[u8]>,
    /// Number of the attempt about to be made, from 1.
    pub attempt: u32,
    pub history: Vec<AttemptRecord>,
    /// Taken from the backlog (its entry was acknowledged long ago: `ticket` only names it).
    pub backlog: Option<Box<Backlogged>>,
}

/// signer → sender
pub struct SignedDelivery {
    pub delivery: Delivery,
    pub route: Arc<Route>,
    pub headers: Vec<(&'static str, String)>,
}

/// How an attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Delivered,
    /// 410 Gone: the receiver asked to stop; the webhook is disabled.
    Gone,
    Retry {
        retry_after: Option<Duration>,
    },
}

/// anything → outcomes
pub enum Completion {
    /// `transition`: how the attempt changed the webhook's circuit (its slot is already free).
    Attempted { delivery: Delivery, route: Arc<Route>, record: AttemptRecord, verdict: Verdict, transition: Option<isolation::Transition> },
    /// The delivery cannot be attempted any more (webhook deleted or disabled meanwhile).
    Abandoned { delivery: Delivery, reason: Reason, detail: String },
    /// A recovered delivery that its history shows already delivered, dead-lettered or handed to
    /// the backlog, or a backlog delivery that its webhook no longer wants (types or filter
    /// changed): finished without any record, as the transformer's filtered-out deliveries.
    AlreadyTerminal { delivery: Delivery },
    /// The delivery cannot be attempted now (its webhook is at its cap, or its circuit is open):
    /// into the backlog, due at `due_ms` (ms since the epoch).
    Postponed { delivery: Delivery, due_ms: u64 },
    /// The entry broke the contract, or its tenant is unknown or disabled.
    Rejected { ticket: Arc<EntryTicket>, rejection: event::Rejection, raw_fields: Vec<(Vec<u8>, Vec<u8>)> },
    /// No webhook of the tenant wants this event.
    Unrouted { ticket: Arc<EntryTicket> },
}

/// The in-flight window: stream entries read and not yet acknowledged. Admission takes a permit
/// (a slot in a bounded channel), so the reader blocks when the window is full, and remembers
/// the id, so that re-reading pending entries after a reconnect skips those already in hand.
pub struct InFlight {
    permits: (Sender<()>, Receiver<()>),
    ids: Mutex<HashSet<EntryKey>>,
}

/// A stream entry id as the window remembers it: Redis's `<ms>-<seq>` as two numbers and the
/// shard whose stream it is in (two streams may hold the same id), 24 bytes in place rather than
/// a string on the heap — the window holds one per entry, a million when long retries wait
/// (docs/performance.md). Any other text (never from Redis) is kept as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum EntryKey {
    Id(u64, u64, u32),
    Text(Box<str>),
}

impl EntryKey {
    pub(super) fn of(shard: u32, id: &str) -> Self {
        // Only the canonical spelling (digits, no leading zero), so that the text comes back
        // unchanged from `Display`.
        let number = |part: &str| {
            let canonical = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && (part == "0" || !part.starts_with('0'));
            canonical.then(|| part.parse::<u64>().ok()).flatten()
        };
        match id.split_once('-').and_then(|(ms, seq)| Some((number(ms)?, number(seq)?))) {
            Some((ms, seq)) => EntryKey::Id(ms, seq, shard),
            None => EntryKey::Text(id.into()),
        }
    }
}

impl std::fmt::Display for EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryKey::Id(ms, seq, _) => write!(f, "{ms}-{seq}"),
            EntryKey::Text(text) => f.write_str(text),
        }
    }
}

pub enum Admission {
    Admitted,
    AlreadyInFlight,
    ShuttingDown,
    /// Only from `try_admit`: no room now.
    Full,
}

impl InFlight {
    pub(super) fn new(max: usize) -> Self {
        Self { permits: bounded(max), ids: Mutex::new(HashSet::new()) }
    }

    /// Admits entry `id` of shard `shard`'s stream (0 for a broker's event).
    pub(crate) fn admit(&self, shard: u32, id: &str, shutdown: &Receiver<()>) -> Admission {
        let key = EntryKey::of(shard, id);
        if self.ids.lock().contains(&key) {
            return Admission::AlreadyInFlight;
        }
        crossbeam_channel::select! {
            send(self.permits.0, ()) -> _ => {
                self.ids.lock().insert(key);
                Admission::Admitted
            }
            recv(shutdown) -> _ => Admission::ShuttingDown,
        }
    }

    /// Like [`InFlight::admit`], but never waits: a full window answers [`Admission::Full`].
    pub(crate) fn try_admit(&self, shard: u32, id: &str) -> Admission {
        let key = EntryKey::of(shard, id);
        let mut ids = self.ids.lock();
        if ids.contains(&key) {
            return Admission::AlreadyInFlight;
        }
        match self.permits.0.try_send(()) {
            Ok(()) => {
                ids.insert(key);
                Admission::Admitted
            }
            Err(_) => Admission::Full,
        }
    }

    /// Free places in the window.
    pub(crate) fn room(&self) -> usize {
        self.permits.0.capacity().unwrap_or(usize::MAX).saturating_sub(self.permits.0.len())
    }

    pub(super) fn release(&self, shard: u32, id: &str) {
        if self.ids.lock().remove(&EntryKey::of(shard, id)) {
            let _ = self.permits.1.try_recv();
        }
    }

    pub fn len(&self) -> usize {
        self.ids.lock().len()
    }

    pub(crate) fn contains(&self, shard: u32, id: &str) -> bool {
        self.ids.lock().contains(&EntryKey::of(shard, id))
    }

    /// The ids in flight now, for renewing their leases (as keys: a million of them are 24 MB
    /// here, where strings were 56).
    #[cfg(test)]
    pub(crate) fn ids(&self) -> Vec<EntryKey> {
        self.ids.lock().iter().cloned().collect()
    }

    /// The ids in the window that can be Redis stream entry ids (`<ms>-<seq>`) of shard
    /// `shard`'s stream: what the Redis source renews its leases on. A broker's event ids (any
    /// other text) are not the stream's, and one of them in `XCLAIM` would fail the whole renewal.
    pub(crate) fn stream_ids(&self, shard: u32) -> Vec<EntryKey> {
        self.ids.lock().iter().filter(|key| matches!(key, EntryKey::Id(_, _, k) if *k == shard)).cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_are_numbers_for_redis_ids_and_read_back_unchanged() {
        assert_eq!(EntryKey::of(0, "1767225600000-12"), EntryKey::Id(1_767_225_600_000, 12, 0));
        assert_eq!(EntryKey::of(3, "0-0"), EntryKey::Id(0, 0, 3));
        for odd in ["01-2", "1-+2", "1-", "-1", "x-1", "1-2-3", "18446744073709551616-0", "", "abc"] {
            assert_eq!(EntryKey::of(0, odd), EntryKey::Text(odd.into()), "{odd}");
        }
        for id in ["1767225600000-12", "0-0", "01-2", "abc", "18446744073709551615-7"] {
            assert_eq!(EntryKey::of(1, id).to_string(), id);
        }
    }

    #[test]
    fn the_window_admits_each_id_once_and_frees_its_place() {
        let window = InFlight::new(2);
        let (_stop_tx, stop) = bounded::<()>(0);
        assert!(matches!(window.admit(0, "1-0", &stop), Admission::Admitted));
        assert!(matches!(window.admit(0, "1-0", &stop), Admission::AlreadyInFlight));
        assert!(matches!(window.try_admit(0, "2-0"), Admission::Admitted));
        assert!(matches!(window.try_admit(0, "3-0"), Admission::Full));
        assert!(window.contains(0, "2-0") && !window.contains(0, "3-0"));
        let mut ids: Vec<String> = window.ids().iter().map(ToString::to_string).collect();
        ids.sort();
        assert_eq!(ids, ["1-0", "2-0"]);
        window.release(0, "1-0");
        assert_eq!((window.len(), window.room()), (1, 1));
        assert!(matches!(window.try_admit(0, "3-0"), Admission::Admitted));
    }

    #[test]
    fn the_same_id_in_two_shards_is_two_entries() {
        let window = InFlight::new(4);
        assert!(matches!(window.try_admit(0, "5-0"), Admission::Admitted));
        assert!(matches!(window.try_admit(1, "5-0"), Admission::Admitted));
        assert!(window.contains(1, "5-0") && !window.contains(2, "5-0"));
        let ids = |shard| window.stream_ids(shard).iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!((ids(0), ids(1), ids(2)), (vec!["5-0".to_owned()], vec!["5-0".to_owned()], vec![]));
        window.release(1, "5-0");
        assert!(window.contains(0, "5-0") && !window.contains(1, "5-0"));
    }

    #[test]
    fn leases_renew_only_the_ids_a_redis_stream_can_have() {
        // A broker's event id in XCLAIM fails the whole renewal ("Invalid stream ID").
        let window = InFlight::new(4);
        for id in ["1767225600000-3", "WSS_EVENTS:42", "wss.events:0123abcd", "5-0"] {
            assert!(matches!(window.try_admit(0, id), Admission::Admitted), "{id}");
        }
        let mut ids: Vec<String> = window.stream_ids(0).iter().map(ToString::to_string).collect();
        ids.sort();
        assert_eq!(ids, ["1767225600000-3", "5-0"]);
    }

    #[test]
    fn event_meta_gives_back_each_part() {
        let meta = EventMeta::new("evt-1", "order.created", "acme");
        assert_eq!((meta.id(), meta.event_type(), meta.tenant()), ("evt-1", "order.created", "acme"));
        let unicode = EventMeta::new("é-1", "", "tenant-ü");
        assert_eq!((unicode.id(), unicode.event_type(), unicode.tenant()), ("é-1", "", "tenant-ü"));
    }
}
