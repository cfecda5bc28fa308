//! `wss bench --source nats|amqp`: the throughput part with events published to a message
//! broker (docs/contract.md §7) instead of the Redis stream — same receivers, shapes and measures. The bench
//! makes its own stream/subjects/consumer (NATS) or queue (AMQP), named after its process, and
//! deletes them afterwards.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use async_nats::jetstream;
use lapin::{
    options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties,
};

use super::{receiver::unix_micros, redis::EventShape};

/// Messages published before their confirmations are awaited.
const WINDOW: usize = 256;

/// The broker the bench publishes to, and what wss is told to read.
pub struct Broker {
    runtime: tokio::runtime::Runtime,
    kind: Kind,
}

enum Kind {
    Nats { url: String, js: jetstream::Context, stream: String, subject: String, consumer: String },
    Amqp { url: String, _connection: lapin::Connection, channel: lapin::Channel, queue: String },
}

impl Broker {
    /// Connects to `url` and makes the stream (NATS) or queue (AMQP) of this run.
    pub fn connect(source: &str, url: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let tag = format!("wssbench_{}", std::process::id());
        let kind = runtime.block_on(async {
            match source {
                "nats" => {
                    let client = async_nats::connect(url).await.with_context(|| format!("connecting to NATS at {url}"))?;
                    let js = jetstream::new(client);
                    let (stream, subject) = (tag.to_uppercase(), format!("{tag}.events"));
                    js.get_or_create_stream(jetstream::stream::Config {
                        name: stream.clone(),
                        subjects: vec![format!("{subject}.>")],
                        ..Default::default()
                    })
                    .await
                    .context("creating the bench's JetStream stream")?;
                    anyhow::Ok(Kind::Nats { url: url.to_owned(), js, stream, subject, consumer: tag.clone() })
                }
                "amqp" => {
                    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
                        .await
                        .with_context(|| format!("connecting to RabbitMQ at {}", wss::redis_conn::redact_url(url)))?;
                    let channel = connection.create_channel().await?;
                    let queue = tag.replace('_', ".");
                    channel
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions { durable: true, ..Default::default() },
                            FieldTable::default(),
                        )
                        .await?;
                    Ok(Kind::Amqp { url: url.to_owned(), _connection: connection, channel, queue })
                }
                other => bail!("unknown source {other:?}"),
            }
        })?;
        Ok(Self { runtime, kind })
    }

    /// `WSS_SOURCES` for the service under test.
    pub fn source_url(&self) -> String {
        match &self.kind {
            Kind::Nats { url, stream, subject, consumer, .. } => format!("{url}?stream={stream}&subjects={subject}.>&consumer={consumer}"),
            Kind::Amqp { url, queue, .. } => format!("{url}?queue={queue}"),
        }
    }

    /// Publishes `count` events numbered from `first`, [`WINDOW`] at a time, each stored by the
    /// broker (JetStream's acknowledgement; RabbitMQ's publisher confirm is not asked for).
    pub fn publish(&self, shape: &EventShape, first: u64, count: u64) -> anyhow::Result<()> {
        let mut n = first;
        while n < first + count {
            let batch = (first + count - n).min(WINDOW as u64);
            self.publish_batch(shape, n, batch)?;
            n += batch;
        }
        Ok(())
    }

    fn publish_batch(&self, shape: &EventShape, first: u64, count: u64) -> anyhow::Result<()> {
        let data = shape.data(unix_micros());
        self.runtime.block_on(async {
            match &self.kind {
                Kind::Nats { js, subject, .. } => {
                    let mut acks = Vec::with_capacity(count as usize);
                    for n in first..first + count {
                        let tenant = shape.tenant(n);
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("WSS-Tenant", tenant.as_str());
                        headers.insert("WSS-Type", "bench.event");
                        acks.push(js.publish_with_headers(format!("{subject}.{tenant}"), headers, data.clone().into()).await?);
                    }
                    for ack in acks {
                        ack.await?;
                    }
                }
                Kind::Amqp { channel, queue, .. } => {
                    for n in first..first + count {
                        let mut headers = FieldTable::default();
                        headers.insert(ShortString::from("wss-tenant"), AMQPValue::LongString(shape.tenant(n).as_str().into()));
                        headers.insert(ShortString::from("wss-type"), AMQPValue::LongString("bench.event".into()));
                        let properties = BasicProperties::default()
                            .with_headers(headers)
                            .with_delivery_mode(2)
                            .with_message_id(format!("bench-{n}").into());
                        channel
                            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), data.as_bytes(), properties)
                            .await?;
                    }
                }
            }
            anyhow::Ok(())
        })
    }

    /// Publishes open-loop at `rate` events per second for `duration`, numbering from `first`;
    /// returns how many were sent.
    pub fn publish_at_rate(&self, shape: &EventShape, first: u64, rate: f64, duration: Duration) -> anyhow::Result<u64> {
        let start = Instant::now();
        let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        let mut sent = 0u64;
        while sent < total {
            let due = ((rate * start.elapsed().as_secs_f64()) as u64).min(total);
            if due > sent {
                let count = (due - sent).min(WINDOW as u64);
                self.publish_batch(shape, first + sent, count)?;
                sent += count;
            } else {
                let next = start + Duration::from_secs_f64((sent + 1) as f64 / rate);
                thread::sleep(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(1)));
            }
        }
        Ok(sent)
    }

    /// Waits until wss has acknowledged every message (NATS: the consumer's pending and
    /// unacknowledged counts; AMQP: no message ready in the queue).
    pub fn wait_all_acknowledged(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let left: u64 = self.runtime.block_on(async {
                match &self.kind {
                    Kind::Nats { js, stream, consumer, .. } => {
                        let stream = js.get_stream(stream).await?;
                        let mut consumer: jetstream::consumer::PullConsumer =
                            stream.get_consumer(consumer).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                        let info = consumer.info().await?;
                        anyhow::Ok(info.num_pending + info.num_ack_pending as u64)
                    }
                    Kind::Amqp { channel, queue, .. } => {
                        let declared = channel
                            .queue_declare(
                                queue.as_str().into(),
                                QueueDeclareOptions { passive: true, ..Default::default() },
                                FieldTable::default(),
                            )
                            .await?;
                        Ok(u64::from(declared.message_count()))
                    }
                }
            })?;
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("after {within:?}, {left} messages not yet acknowledged by wss");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.runtime.block_on(async {
            match &self.kind {
                Kind::Nats { js, stream, .. } => {
                    let _ = js.delete_stream(stream).await;
                }
                Kind::Amqp { channel, queue, .. } => {
                    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
                }
            }
        });
    }
}
