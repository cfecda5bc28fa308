//! NATS JetStream source (docs/contract.md §7), thread `wss-nats-<n>`.
//!
//! A durable pull consumer (default `wss` on stream `WSS_EVENTS`, subjects `wss.events.>`),
//! created with the stream when missing, explicit acknowledgement, `MaxAckPending` the in-flight
//! window (`WSS_MAX_IN_FLIGHT`): JetStream never hands wss more than it may hold. The thread
//! pulls batches of at most the window's free room, turns each message into the fields of docs/contract.md
//! §1 ([`fields_of`]) and hands it to the pipeline exactly as the Redis reader hands an entry:
//! parsed, admitted to the window, to the transformer (or, malformed, to the outcome stage to be
//! dead-lettered with its reason, then acknowledged — never left to be redelivered for ever).
//!
//! **Acknowledgement.** The message's ticket holds a [`BrokerHold`]: the event's fields (what
//! the backlog and dead letters store: there is no stream entry to copy them from) and its
//! acknowledger. The outcome stage calls it once the transaction that finished the event's last
//! delivery (delivered, dead-lettered or handed to the durable backlog) is written; the `+ACK`
//! is then sent on the client's runtime. While an event is in hand longer than a third of
//! `AckWait`, a progress acknowledgement (`+WPI`) goes out every third of it, so JetStream does
//! not deliver it again meanwhile. A crash before the acknowledgement means a redelivery after
//! `AckWait`, with the same event id; a redelivered message (JetStream's delivery count above 1)
//! is marked recovered, so the signer checks the delivery history before sending again, and one
//! delivered [`super::super::pipeline`]'s poison limit of times without being finished is
//! dead-lettered as poison.
//!
//! **Outages.** The client (async-nats) reconnects by itself; a failed connect, setup or pull is
//! retried with backoff (100 ms doubling to 5 s). The first failure of an outage is logged at
//! WARN, counted in `wss_source_outages_total{source}`, and shown in `wss_source_up{source}` and
//! `/readyz`; the first success after it is logged at INFO.
//!
//! The async-nats client runs on a small tokio runtime of its own (one worker thread), so that
//! neither the control plane nor this pipeline thread waits on the other.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Weak,
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use crossbeam_channel::{Receiver, Sender};
use futures_util::StreamExt;
use parking_lot::Mutex;

pub use super::SourceStatus;
use super::{
    event_fields, hand_on_held, run_on_own_runtime, stop_requested, Ack, BrokerHold, Fields, Intake, MessageParts, NatsSpec, Owed,
    RawEntry, Retrying, Wiring, BACKOFF_MAX, BACKOFF_MIN,
};
use crate::{
    clock::Clock,
    pipeline::messages::{Admission, Completion, Inbound},
};

/// How long one pull waits for messages before it ends (an empty pull is cheap); also how soon
/// an idle reader notices shutdown.
const PULL_EXPIRES: Duration = Duration::from_millis(500);
/// How often the consumer's lag is read for the gauges.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// What the NATS thread needs.
pub struct NatsSource {
    pub spec: NatsSpec,
    /// Messages per pull, at most (`WSS_READ_BATCH`).
    pub batch: usize,
    pub intake: Intake,
}

/// A message in hand: what acknowledging it (or telling JetStream that work goes on) needs.
struct Held {
    /// The message without its payload and headers (its reply subject is its acknowledgement
    /// address; its context the client to send it with).
    message: jetstream::Message,
    acked: AtomicBool,
    owed: Mutex<Option<Owed>>,
    since: Instant,
    runtime: tokio::runtime::Handle,
}

/// The ticket's acknowledger; shares [`Held`] with the progress task.
struct HeldAck(Arc<Held>);

impl Ack for HeldAck {
    fn ack(&self) {
        if self.0.acked.swap(true, Ordering::SeqCst) {
            return;
        }
        let owed = self.0.owed.lock().take();
        let message = self.0.message.clone();
        self.0.runtime.spawn(async move {
            let _owed = owed;
            if let Err(err) = message.ack().await {
                // Not acknowledged: JetStream delivers it again after AckWait, and the history
                // says it was done (the signer checks a redelivered message's history).
                log::warn!(target: "wss::source", "acknowledging a NATS message failed ({err}); it will be redelivered and found done");
            }
        });
    }
}

/// Messages in hand, for the progress acknowledgements.
type HeldList = Arc<Mutex<Vec<Weak<Held>>>>;

impl NatsSource {
    pub fn run(self, out: Sender<Inbound>, done: Sender<Completion>, shutdown: Receiver<()>) {
        run_on_own_runtime(&self.intake, "wss-nats-io", out, done, &shutdown, |wiring| {
            let held: HeldList = Arc::default();
            wiring.runtime.spawn(progress(held.clone(), self.spec.ack_wait, self.intake.clock.clone()));
            self.read(wiring, &held)
        });
    }

    fn read(&self, wiring: &Wiring<'_>, held: &HeldList) {
        let Wiring { runtime, shutdown, .. } = *wiring;
        let mut retrying = Retrying::new(&self.intake.status, shutdown);
        // Connect (the client then reconnects by itself), and create what is missing.
        let mut consumer = loop {
            if stop_requested(shutdown) {
                return;
            }
            match runtime.block_on(self.connect()) {
                Ok(consumer) => break consumer,
                Err(err) => {
                    if retrying.failed("connecting and preparing the stream and consumer", &err) {
                        return;
                    }
                }
            }
        };
        retrying.succeeded();
        log::info!(target: "wss::source", "reading NATS JetStream stream {} (subjects {}) as durable consumer {}", self.spec.stream, self.spec.subjects.join(","), self.spec.consumer);
        let mut lag_at = self.intake.clock.now();
        loop {
            if stop_requested(shutdown) {
                return;
            }
            if self.intake.clock.elapsed(lag_at) >= LAG_EVERY {
                lag_at = self.intake.clock.now();
                if let Ok(Ok(info)) = runtime.block_on(tokio::time::timeout(Duration::from_secs(2), consumer.info())) {
                    self.intake.status.pending.set((info.num_pending as i64).saturating_add(info.num_ack_pending as i64));
                }
            }
            let want = self.batch.min(self.intake.in_flight.room().max(1));
            let pulled = runtime.block_on(async {
                let request = consumer.batch().max_messages(want).expires(PULL_EXPIRES).messages();
                tokio::time::timeout(PULL_EXPIRES * 4, request).await.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())
            });
            let mut messages = match pulled {
                Ok(messages) => messages,
                Err(err) => {
                    if retrying.failed("pulling messages", &err) {
                        return;
                    }
                    continue;
                }
            };
            let mut failed = None;
            loop {
                let next = runtime.block_on(tokio::time::timeout(PULL_EXPIRES * 4, messages.next()));
                let message = match next {
                    Ok(Some(Ok(message))) => message,
                    Ok(Some(Err(err))) => {
                        failed = Some(err.to_string());
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        failed = Some("the pull timed out".to_owned());
                        break;
                    }
                };
                self.intake.status.events_read.inc();
                match self.hand_on(message, wiring, held) {
                    Some(true) => {}
                    Some(false) => continue,
                    None => return,
                }
            }
            match failed {
                Some(err) => {
                    if retrying.failed("pulling messages", &err) {
                        return;
                    }
                }
                None => retrying.succeeded(),
            }
        }
    }

    async fn connect(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
        let spec = &self.spec;
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("wss {}", spec.consumer))
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| BACKOFF_MIN.saturating_mul(1 << attempts.min(6) as u32).min(BACKOFF_MAX));
        if let (Some(user), Some(password)) = (&spec.user, &spec.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &spec.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &spec.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if spec.tls {
            options = options.require_tls(true);
        }
        let servers: Vec<async_nats::ServerAddr> = spec
            .servers
            .iter()
            .map(|s| s.parse::<async_nats::ServerAddr>().map_err(|e| format!("server {s:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let client = options.connect(servers).await.map_err(|e| e.to_string())?;
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: spec.stream.clone(),
                subjects: spec.subjects.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("stream {}: {e}", spec.stream))?;
        let consumer = stream
            .get_or_create_consumer(
                &spec.consumer,
                pull::Config {
                    durable_name: Some(spec.consumer.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: spec.ack_wait,
                    max_ack_pending: i64::try_from(self.intake.window).unwrap_or(i64::MAX),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("consumer {}: {e}", spec.consumer))?;
        Ok(consumer)
    }

    /// One message into the pipeline: `Some(true)` handed on, `Some(false)` skipped (already
    /// in hand), `None` shutting down.
    fn hand_on(&self, message: jetstream::Message, wiring: &Wiring<'_>, held: &HeldList) -> Option<bool> {
        let Wiring { runtime, outstanding, out, done, shutdown } = *wiring;
        let (sequence, published_ms, delivered) = match message.info() {
            Ok(info) => {
                (info.stream_sequence, (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64, info.delivered.max(1) as u64)
            }
            // Not a JetStream delivery (cannot happen on a pull consumer): taken as first seen now.
            Err(_) => (0, self.intake.clock.now_ms(), 1),
        };
        let (id, fields) = fields_of(&message.message, &self.spec.stream, sequence, published_ms);
        match self.intake.in_flight.admit(0, &id, shutdown) {
            Admission::Admitted => {}
            // The same event is in hand (a redelivery, or another message with its id): this
            // copy is left unacknowledged; the one in hand is acknowledged when done, and
            // JetStream drops the pending copy then or redelivers it to be found done.
            Admission::AlreadyInFlight | Admission::Full => return Some(false),
            Admission::ShuttingDown => return None,
        }
        let mut bare = message;
        bare.message.payload = Default::default();
        bare.message.headers = None;
        let hold = Arc::new(Held {
            message: bare,
            acked: AtomicBool::new(false),
            owed: Mutex::new(Some(outstanding.owe())),
            since: self.intake.clock.now(),
            runtime: runtime.handle().clone(),
        });
        held.lock().push(Arc::downgrade(&hold));
        let broker = BrokerHold { fields: fields.clone(), ack: Box::new(HeldAck(hold)) };
        let entry = RawEntry { id, fields: Some(fields) };
        let reads = (delivered > 1).then_some(delivered);
        let recovered = delivered > 1 || published_ms < self.intake.started_ms;
        hand_on_held(0, entry, recovered, reads, self.intake.max_event_bytes, Some(broker), out, done).then_some(true)
    }
}

/// Every third of `ack_wait`, tells JetStream that work goes on for each message in hand for
/// longer than that (`+WPI`), and forgets those acknowledged or dropped.
async fn progress(held: HeldList, ack_wait: Duration, clock: Clock) {
    let every = (ack_wait / 3).max(Duration::from_millis(300));
    loop {
        tokio::time::sleep(every).await;
        let due: Vec<jetstream::Message> = {
            let mut list = held.lock();
            list.retain(|weak| weak.upgrade().is_some_and(|h| !h.acked.load(Ordering::SeqCst)));
            list.iter().filter_map(Weak::upgrade).filter(|h| clock.elapsed(h.since) >= every).map(|h| h.message.clone()).collect()
        };
        for message in due {
            if let Err(err) = message.ack_with(AckKind::Progress).await {
                log::debug!(target: "wss::source", "a progress acknowledgement failed: {err}");
            }
        }
    }
}

/// A message's event id and fields by docs/contract.md §7: `WSS-Tenant` → `tenant`, `WSS-Type` → `type`,
/// `WSS-Id` (else `Nats-Msg-Id`, else `<stream>:<sequence>`) → `id`, the body → `data`, the
/// JetStream timestamp → `_wss_created_at_ms`, `WSS-Attr-<name>` → `<name>` lowercased. Header
/// names are matched without regard to case; a header given twice gives its field twice (the
/// parser then rejects the event). The id returned is the event's id when it is a valid one,
/// else `<stream>:<sequence>` (the event is then rejected for its `id` field, under that name).
pub fn fields_of(message: &async_nats::Message, stream: &str, sequence: u64, published_ms: u64) -> (String, Fields) {
    let mut tenant = Vec::new();
    let mut event_type = Vec::new();
    let mut wss_id = Vec::new();
    let mut msg_id = None;
    let mut attributes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if let Some(headers) = &message.headers {
        for (name, values) in headers.iter() {
            let lower = AsRef::<str>::as_ref(name).to_ascii_lowercase();
            for value in values {
                let value = value.as_str().as_bytes().to_vec();
                match lower.as_str() {
                    "wss-tenant" => tenant.push(value),
                    "wss-type" => event_type.push(value),
                    "wss-id" => wss_id.push(value),
                    "nats-msg-id" => msg_id = Some(value),
                    other => {
                        if let Some(attribute) = other.strip_prefix("wss-attr-") {
                            attributes.push((attribute.as_bytes().to_vec(), value));
                        }
                    }
                }
            }
        }
    }
    attributes.sort();
    let fallback = format!("{stream}:{sequence}");
    let ids = if wss_id.is_empty() { msg_id.into_iter().collect() } else { wss_id };
    event_fields(
        MessageParts { tenant, event_type, ids, data: message.payload.to_vec(), created_at_ms: published_ms, attributes },
        fallback,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: &[(&str, &str)], body: &str) -> async_nats::Message {
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.append(*k, *v);
        }
        async_nats::Message {
            subject: "wss.events.x".into(),
            reply: None,
            payload: body.to_owned().into(),
            headers: Some(map),
            status: None,
            description: None,
            length: 0,
        }
    }

    fn text(fields: &Fields) -> Vec<(String, String)> {
        fields.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned())).collect()
    }

    #[test]
    fn headers_become_the_fields_of_spec_1() {
        let m = message(&[("WSS-Tenant", "acme"), ("wss-type", "order.created"), ("WSS-Attr-Region", "EU"), ("Other", "x")], r#"{"n":1}"#);
        let (id, fields) = fields_of(&m, "WSS_EVENTS", 42, 1_767_225_600_000);
        assert_eq!(id, "WSS_EVENTS:42");
        let want: Vec<(String, String)> = [
            ("tenant", "acme"),
            ("type", "order.created"),
            ("id", "WSS_EVENTS:42"),
            ("data", r#"{"n":1}"#),
            ("_wss_created_at_ms", "1767225600000"),
            ("region", "EU"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(text(&fields), want);
        let event = crate::pipeline::event::parse_entry(&RawEntry { id: id.clone(), fields: Some(fields) }, 1 << 20).unwrap();
        assert_eq!((event.id.as_str(), event.tenant.as_str(), event.created_at_ms), ("WSS_EVENTS:42", "acme", 1_767_225_600_000));
        assert_eq!(event.attributes, [("region".to_owned(), "EU".to_owned())]);
    }

    #[test]
    fn the_id_is_wss_id_else_nats_msg_id_else_stream_and_sequence() {
        let (id, _) = fields_of(&message(&[("WSS-Id", "evt-1"), ("Nats-Msg-Id", "m-1")], "{}"), "S", 1, 0);
        assert_eq!(id, "evt-1");
        let (id, _) = fields_of(&message(&[("Nats-Msg-Id", "m-1")], "{}"), "S", 1, 0);
        assert_eq!(id, "m-1");
        // An id that breaks docs/contract.md §1: the message is known by its place, and rejected for its id.
        let long = "x".repeat(129);
        let (id, fields) = fields_of(&message(&[("WSS-Id", &long), ("WSS-Tenant", "acme"), ("WSS-Type", "t")], "{}"), "S", 7, 0);
        assert_eq!(id, "S:7");
        let rejection = crate::pipeline::event::parse_entry(&RawEntry { id, fields: Some(fields) }, 1 << 20).unwrap_err();
        assert_eq!(rejection.reason, crate::deadletter::Reason::InvalidField);
    }

    #[test]
    fn a_message_without_headers_is_rejected_for_the_missing_fields() {
        let m = async_nats::Message { headers: None, ..message(&[], "{}") };
        let (id, fields) = fields_of(&m, "S", 3, 0);
        let rejection = crate::pipeline::event::parse_entry(&RawEntry { id, fields: Some(fields) }, 1 << 20).unwrap_err();
        assert_eq!(rejection.reason, crate::deadletter::Reason::MissingField);
        assert!(rejection.detail.contains("tenant, type"), "{}", rejection.detail);
    }
}
