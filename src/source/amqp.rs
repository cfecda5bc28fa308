//! AMQP 0-9-1 (RabbitMQ) source (docs/contract.md §7), thread `wss-amqp-<n>`.
//!
//! A durable queue (default `wss.events`), declared when missing, consumed with manual
//! acknowledgements and `basic.qos` prefetch sized to the in-flight window (at most 65,535, the
//! protocol's limit): RabbitMQ never hands wss more than it may hold. Each delivery becomes the
//! fields of docs/contract.md §1 ([`fields_of`]) and goes through the pipeline like a Redis entry; its
//! ticket's [`BrokerHold`] keeps its fields (for the backlog and dead letters) and its
//! acknowledger, which the outcome stage calls once the event's last delivery is terminal or
//! durably in the backlog. A malformed message is dead-lettered with its reason and
//! acknowledged; no message is ever rejected with requeue (the requeue loop).
//!
//! **Ids.** `wss-id` header, else the `message_id` property; with neither, wss assigns
//! `<queue>:<hash>`, the first 32 hex digits of the SHA-256 of the message's body, headers and
//! `type` — stable without any storage: a redelivery of the same message (after a crash or a
//! reconnect) gets the same id, so receivers dedupe it (the price: two messages identical in
//! every byte are one event). `created_at`: the `timestamp` property, else when wss first read
//! it (a redelivery then has a later `created_at`; producers that care set `timestamp`).
//!
//! **Reconnects.** A channel's delivery tags die with it: a message in hand when the
//! connection drops cannot be acknowledged any more, and RabbitMQ delivers it again on the new
//! channel. That copy finds its event in the window; it is acknowledged as soon as the event
//! leaves it (the first copy's work is then durably recorded), so it is neither processed twice
//! nor left unacknowledged. Failures are retried with backoff (100 ms doubling to 5 s), logged
//! once per outage, counted, and shown in `/readyz` ([`super::SourceStatus`]).

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    Acker, Connection, ConnectionProperties,
};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::{
    event_fields, hand_on_held, run_on_own_runtime, stop_requested, Ack, AmqpSpec, BrokerHold, Fields, Intake, MessageParts, Owed,
    RawEntry, Retrying, Wiring,
};
use crate::pipeline::messages::{Admission, Completion, Inbound};

/// How long the thread waits for the next delivery before it looks at shutdown again.
const POLL: Duration = Duration::from_millis(250);
/// How often the queue's depth is read for the gauges.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// What the AMQP thread needs. A message's `timestamp` property is its publication time, for
/// [`Intake::started_ms`].
pub struct AmqpSource {
    pub spec: AmqpSpec,
    pub intake: Intake,
}

/// The ticket's acknowledger: a `basic.ack` of the delivery's tag on its channel, sent on the
/// client's runtime.
struct DeliveryAck {
    acker: Acker,
    owed: Mutex<Option<Owed>>,
    runtime: tokio::runtime::Handle,
}

impl Ack for DeliveryAck {
    fn ack(&self) {
        let Some(owed) = self.owed.lock().take() else { return };
        let acker = self.acker.clone();
        self.runtime.spawn(async move {
            let _owed = owed;
            if let Err(err) = acker.ack(BasicAckOptions::default()).await {
                // Its channel is gone: RabbitMQ delivers it again, and that copy is found done.
                log::warn!(target: "wss::source", "acknowledging an AMQP message failed ({err}); it will be redelivered and found done");
            }
        });
    }
}

impl AmqpSource {
    pub fn run(self, out: Sender<Inbound>, done: Sender<Completion>, shutdown: Receiver<()>) {
        run_on_own_runtime(&self.intake, "wss-amqp-io", out, done, &shutdown, |wiring| self.read(wiring));
    }

    fn read(&self, wiring: &Wiring<'_>) {
        let runtime = wiring.runtime;
        let mut retrying = Retrying::new(&self.intake.status, wiring.shutdown);
        let stopping = || stop_requested(wiring.shutdown);
        loop {
            if stopping() {
                return;
            }
            let (connection, channel, mut consumer) = match runtime.block_on(self.connect()) {
                Ok(pair) => pair,
                Err(err) => {
                    if retrying.failed("connecting and declaring the queue", &err) {
                        return;
                    }
                    continue;
                }
            };
            retrying.succeeded();
            log::info!(target: "wss::source", "reading AMQP queue {} ({})", self.spec.queue, self.intake.status.label);
            // Deliveries until the connection fails or shutdown.
            let mut lag_at = self.intake.clock.now();
            let failure = loop {
                if stopping() {
                    return;
                }
                if self.intake.clock.elapsed(lag_at) >= LAG_EVERY {
                    lag_at = self.intake.clock.now();
                    self.read_lag(runtime, &channel);
                }
                let next = runtime.block_on(tokio::time::timeout(POLL, consumer.next()));
                let delivery = match next {
                    Err(_) => continue,
                    Ok(None) => break "the consumer was cancelled".to_owned(),
                    Ok(Some(Err(err))) => break err.to_string(),
                    Ok(Some(Ok(delivery))) => delivery,
                };
                self.intake.status.events_read.inc();
                if !self.hand_on(delivery, wiring) {
                    return;
                }
            };
            drop(consumer);
            let _ = runtime.block_on(tokio::time::timeout(Duration::from_secs(1), connection.close(0, "reconnecting".into())));
            if retrying.failed("consuming", &failure) {
                return;
            }
        }
    }

    /// `wss_source_pending`: the queue's ready messages (a passive declare; RabbitMQ does not
    /// tell a client how many are delivered and unacknowledged: at most the prefetch).
    fn read_lag(&self, runtime: &tokio::runtime::Runtime, channel: &lapin::Channel) {
        let declare = channel.queue_declare(
            self.spec.queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        );
        if let Ok(Ok(queue)) = runtime.block_on(tokio::time::timeout(Duration::from_secs(2), declare)) {
            self.intake.status.pending.set(i64::from(queue.message_count()));
        }
    }

    async fn connect(&self) -> Result<(Connection, lapin::Channel, lapin::Consumer), String> {
        let properties = ConnectionProperties::default().with_connection_name("wss".into());
        let connect = async {
            match &self.spec.ca_file {
                Some(file) => {
                    let pem = std::fs::read_to_string(file).map_err(|e| format!("ca_file {}: {e}", file.display()))?;
                    let tls = lapin::tcp::OwnedTLSConfig { identity: None, cert_chain: Some(pem) };
                    Connection::connect_with_config(
                        &self.spec.url,
                        properties,
                        tls,
                        lapin::runtime::default_runtime().map_err(|e| e.to_string())?,
                    )
                    .await
                    .map_err(|e| e.to_string())
                }
                None => Connection::connect(&self.spec.url, properties).await.map_err(|e| e.to_string()),
            }
        };
        let connection = tokio::time::timeout(Duration::from_secs(5), connect).await.map_err(|_| "connecting timed out".to_owned())??;
        let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
        let prefetch = u16::try_from(self.intake.window).unwrap_or(u16::MAX);
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(|e| format!("basic.qos: {e}"))?;
        channel
            .queue_declare(
                self.spec.queue.as_str().into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("queue {}: {e}", self.spec.queue))?;
        let consumer = channel
            .basic_consume(self.spec.queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|e| format!("basic.consume on {}: {e}", self.spec.queue))?;
        Ok((connection, channel, consumer))
    }

    /// One delivery into the pipeline; false when shutting down.
    fn hand_on(&self, delivery: Delivery, wiring: &Wiring<'_>) -> bool {
        let Wiring { runtime, outstanding, out, done, shutdown } = *wiring;
        let (id, fields) = fields_of(&delivery, &self.spec.queue, self.intake.clock.now_ms());
        match self.intake.in_flight.admit(0, &id, shutdown) {
            Admission::Admitted => {}
            Admission::AlreadyInFlight | Admission::Full => {
                // A copy of an event in hand (redelivered after a reconnect, or the same id
                // twice): acknowledged once the event leaves the window, its work recorded.
                let (in_flight, acker) = (self.intake.in_flight.clone(), delivery.acker);
                runtime.spawn(async move {
                    while in_flight.contains(0, &id) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let _ = acker.ack(BasicAckOptions::default()).await;
                });
                return true;
            }
            Admission::ShuttingDown => return false,
        }
        // Quorum queues count deliveries (`x-delivery-count`, 0 on the first): one delivered too
        // often without being finished is poison, as for the other sources.
        let reads = delivery_count(&delivery).map(|before| before + 1);
        let ack = DeliveryAck { acker: delivery.acker, owed: Mutex::new(Some(outstanding.owe())), runtime: runtime.handle().clone() };
        let broker = BrokerHold { fields: fields.clone(), ack: Box::new(ack) };
        let entry = RawEntry { id, fields: Some(fields) };
        let before_start = delivery.properties.timestamp().is_some_and(|seconds| seconds.saturating_mul(1000) < self.intake.started_ms);
        hand_on_held(0, entry, delivery.redelivered || before_start, reads, self.intake.max_event_bytes, Some(broker), out, done)
    }
}

/// The `x-delivery-count` header RabbitMQ's quorum queues add (earlier deliveries).
fn delivery_count(delivery: &Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    let value = headers.inner().iter().find(|(name, _)| name.as_str() == "x-delivery-count")?.1;
    std::str::from_utf8(&value_bytes(value)?).ok()?.parse().ok()
}

/// A header's value as bytes: strings as they are, numbers and booleans as text; `None` for
/// tables, arrays and the like (not an event field).
fn value_bytes(value: &AMQPValue) -> Option<Vec<u8>> {
    Some(match value {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        AMQPValue::ByteArray(b) => b.as_slice().to_vec(),
        AMQPValue::Boolean(b) => b.to_string().into_bytes(),
        AMQPValue::ShortShortInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortShortUInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortUInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongUInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongLongInt(n) => n.to_string().into_bytes(),
        AMQPValue::Timestamp(n) => n.to_string().into_bytes(),
        _ => return None,
    })
}

/// A delivery's event id and fields by docs/contract.md §7: header `wss-tenant` → `tenant`, `wss-type`
/// (else the `type` property) → `type`, `wss-id` (else `message_id`, else wss's stable id, see
/// the module) → `id`, the body → `data`, the `timestamp` property (else `now_ms`) →
/// `_wss_created_at_ms`, `wss-attr-<name>` → `<name>` lowercased. Header names are matched
/// without regard to case.
pub fn fields_of(delivery: &Delivery, queue: &str, now_ms: u64) -> (String, Fields) {
    let properties = &delivery.properties;
    let mut tenant = Vec::new();
    let mut event_type = Vec::new();
    let mut ids = Vec::new();
    let mut attributes: Fields = Vec::new();
    let mut hasher = Sha256::new();
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            let Some(value) = value_bytes(value) else { continue };
            hasher.update((name.as_str().len() as u64).to_be_bytes());
            hasher.update(name.as_str().as_bytes());
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(&value);
            let lower = name.as_str().to_ascii_lowercase();
            match lower.as_str() {
                "wss-tenant" => tenant.push(value),
                "wss-type" => event_type.push(value),
                "wss-id" => ids.push(value),
                other => {
                    if let Some(attribute) = other.strip_prefix("wss-attr-") {
                        attributes.push((attribute.as_bytes().to_vec(), value));
                    }
                }
            }
        }
    }
    attributes.sort();
    if event_type.is_empty() {
        if let Some(kind) = properties.kind() {
            hasher.update(b"type");
            hasher.update(kind.as_str().as_bytes());
            event_type.push(kind.as_str().as_bytes().to_vec());
        }
    }
    if ids.is_empty() {
        if let Some(message_id) = properties.message_id() {
            ids.push(message_id.as_str().as_bytes().to_vec());
        }
    }
    hasher.update(&delivery.data);
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let assigned = format!("{queue}:{hex}");
    let created_at_ms = properties.timestamp().map_or(now_ms, |secs| secs.saturating_mul(1000));
    event_fields(MessageParts { tenant, event_type, ids, data: delivery.data.clone(), created_at_ms, attributes }, assigned)
}
