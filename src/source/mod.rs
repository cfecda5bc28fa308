//! Sources: where events come from (docs/contract.md §1 and §7).
//!
//! A source does three things for the pipeline: it reads a batch of raw events (each one a
//! [`RawEntry`]: an id and the fields of docs/contract.md §1), it acknowledges an event once every delivery
//! it produced is terminal or durably handed to the backlog, and it reports its lag. Everything
//! else — parsing, the in-flight window, routing, signing, sending, the backlog — is the same
//! whatever the source, so a receiver cannot tell where an event came from.
//!
//! - **Redis Streams** (`<prefix>events`, consumer group `wss`): the reader and leases threads
//!   of `crate::pipeline`. Their acknowledgement is an `XACK` that rides in the outcome stage's
//!   `MULTI` with the hand-offs and records (one transaction per batch, no extra command per
//!   delivery); a Redis entry's ticket carries no [`BrokerHold`], which is how the outcome stage
//!   tells it apart.
//! - **NATS JetStream** ([`nats`]): a durable pull consumer. A message's ticket carries a
//!   [`BrokerHold`]: the event's fields, kept in memory — a hand-off to the backlog and a dead
//!   letter store them from there, as no stream entry exists to copy them from — and its
//!   acknowledgement, called by the outcome stage once the batch that finished the event is
//!   written.
//!
//! A broker event's id (its ticket's `stream_id`, the history's and dead letters'
//! `stream_entry_id`, its member in the backlog) is its event id by the rules of docs/contract.md §7.

pub mod amqp;
pub mod nats;
pub mod redis;

use std::{path::PathBuf, time::Duration};

use crossbeam_channel::Sender;

use self::redis::poison;
use crate::pipeline::{
    event::parse_entry,
    messages::{Completion, EntryTicket, InFlight, Inbound},
};
pub use crate::streams::RawEntry;

/// Parses and forwards one admitted entry of shard `shard`'s stream; false when the next stage
/// is gone (shutdown). `reads`: how often Redis delivered it, for an entry read again (see
/// `redis::poison`).
pub(crate) fn hand_on(
    shard: u32,
    entry: RawEntry,
    recovered: bool,
    reads: Option<u64>,
    max_event_bytes: usize,
    out: &Sender<Inbound>,
    done: &Sender<Completion>,
) -> bool {
    hand_on_held(shard, entry, recovered, reads, max_event_bytes, None, out, done)
}

/// [`hand_on`] for an event of any source: a broker's (shard 0) carries its [`BrokerHold`] (its
/// fields and its acknowledgement, `crate::source`), a Redis entry none.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hand_on_held(
    shard: u32,
    entry: RawEntry,
    recovered: bool,
    reads: Option<u64>,
    max_event_bytes: usize,
    broker: Option<BrokerHold>,
    out: &Sender<Inbound>,
    done: &Sender<Completion>,
) -> bool {
    let ticket = EntryTicket::with_hold(shard, entry.id.clone(), recovered, broker.map(Box::new));
    let stubbed = entry.fields.as_deref().and_then(poison::oversized).map(|(size, fields)| (size, poison::excerpt(fields)));
    let parsed = match (stubbed, reads) {
        (Some((size, excerpt)), _) => {
            let mut rejection = poison::poison_rejection(&entry, 0);
            rejection.reason = crate::deadletter::Reason::TooLarge;
            rejection.detail = format!(
                "the entry is {size} bytes; the limit is {max_event_bytes} (WSS_MAX_EVENT_BYTES); it was not read whole; {excerpt}"
            );
            return done.send(Completion::Rejected { ticket, rejection, raw_fields: Vec::new() }).is_ok();
        }
        (None, Some(reads)) if reads >= poison::MAX_READS => Err(poison::poison_rejection(&entry, reads)),
        (None, _) => parse_entry(&entry, max_event_bytes),
    };
    match parsed {
        Ok(event) => out.send(Inbound { event, ticket }).is_ok(),
        Err(mut rejection) => {
            let mut raw_fields = entry.fields.unwrap_or_default();
            // An oversized entry is not copied into its record: an excerpt and its size are.
            if entry_size(&raw_fields) > max_event_bytes {
                rejection.detail = format!("{}; {}", rejection.detail, poison::excerpt(&raw_fields));
                raw_fields = Vec::new();
            }
            done.send(Completion::Rejected { ticket, rejection, raw_fields }).is_ok()
        }
    }
}

fn entry_size(fields: &[(Vec<u8>, Vec<u8>)]) -> usize {
    fields.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// An event's fields, names and values as bytes (as a Redis stream entry has them).
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

pub use crate::pipeline::messages::{Ack, BrokerHold};

/// How a source reports itself: counters and gauges labelled with its name, and readiness.
#[derive(Clone)]
pub struct SourceStatus {
    pub label: String,
    pub health: std::sync::Arc<crate::health::Health>,
    /// `wss_events_read_total`.
    pub events_read: prometheus::IntCounter,
    /// `wss_source_up{source}`.
    pub up: prometheus::IntGauge,
    /// `wss_source_outages_total{source}`.
    pub outages: prometheus::IntCounter,
    /// `wss_source_pending{source}`: messages not yet delivered to wss, plus those delivered and
    /// not yet acknowledged.
    pub pending: prometheus::IntGauge,
}

impl SourceStatus {
    /// A failure; logged and counted only when it starts an outage.
    pub(crate) fn failed(&self, down: &mut bool, what: &str, err: &dyn std::fmt::Display) {
        if !*down {
            *down = true;
            self.outages.inc();
            log::warn!(target: "wss::source", "source {} unreachable: {what} failed: {err}; retrying with backoff (logged once per outage)", self.label);
        } else {
            log::debug!(target: "wss::source", "source {}: {what} failed again: {err}", self.label);
        }
        self.up.set(0);
        self.health.set_source_up(&self.label, false);
    }

    pub(crate) fn succeeded(&self, down: &mut bool) {
        if *down {
            *down = false;
            log::info!(target: "wss::source", "source {} reachable again", self.label);
        }
        self.up.set(1);
        self.health.set_source_up(&self.label, true);
    }
}

/// What a broker source (NATS, AMQP) is given besides its own settings: the same for each.
pub struct Intake {
    pub max_event_bytes: usize,
    /// `WSS_MAX_IN_FLIGHT`: also the broker's own window of unacknowledged messages (the NATS
    /// consumer's `MaxAckPending`, the AMQP channel's prefetch, capped at 65,535).
    pub window: usize,
    pub in_flight: std::sync::Arc<InFlight>,
    pub status: SourceStatus,
    /// When this process started (ms): a message published before it may have been in the
    /// hands of an instance that died (a delivery count is not enough: a broker restart can
    /// reset it), so it is handed on as recovered and the signer checks its history first.
    pub started_ms: u64,
    /// Where event times (of messages without their own), the times of messages in hand and
    /// of the lag's sampling come from.
    pub clock: crate::clock::Clock,
}

/// Broker acknowledgements not yet sent: a source's thread waits for them at shutdown before
/// its runtime (which sends them) goes, so that a graceful stop acknowledges what it finished.
#[derive(Clone, Default)]
pub(crate) struct Outstanding(std::sync::Arc<std::sync::atomic::AtomicUsize>);

/// One acknowledgement owed; dropped when it is sent, or when its event is dropped unfinished.
pub(crate) struct Owed(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Outstanding {
    pub(crate) fn owe(&self) -> Owed {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Owed(self.0.clone())
    }

    /// Waits until none is owed, at most `within`.
    pub(crate) fn wait_settled(&self, clock: &crate::clock::Clock, within: Duration) {
        let deadline = clock.now() + within;
        while self.0.load(std::sync::atomic::Ordering::SeqCst) > 0 && clock.now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How long a source waits at shutdown for the acknowledgements of what the pipeline finishes.
pub(crate) const SETTLE: Duration = Duration::from_secs(10);

/// A broker source's wait before it tries to connect or read again after a failure: from the
/// first, doubling, to the longest.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A broker source's standing across failures: whether it is in an outage (logged once per
/// outage, see [`SourceStatus::failed`]) and the wait before its next attempt: [`BACKOFF_MIN`],
/// doubling each time, up to [`BACKOFF_MAX`]; back to the first once the source works again.
pub(crate) struct Retrying<'a> {
    status: &'a SourceStatus,
    shutdown: &'a crossbeam_channel::Receiver<()>,
    down: bool,
    delay: Duration,
}

impl<'a> Retrying<'a> {
    pub(crate) fn new(status: &'a SourceStatus, shutdown: &'a crossbeam_channel::Receiver<()>) -> Self {
        Self { status, shutdown, down: false, delay: BACKOFF_MIN }
    }

    /// `what` failed: reported, then the current delay waited and the next doubled; true when
    /// the pipeline asked the source to stop meanwhile (the source then returns).
    pub(crate) fn failed(&mut self, what: &str, err: &dyn std::fmt::Display) -> bool {
        self.status.failed(&mut self.down, what, err);
        let stop = !matches!(self.shutdown.recv_timeout(self.delay), Err(crossbeam_channel::RecvTimeoutError::Timeout));
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        stop
    }

    /// The source works (again).
    pub(crate) fn succeeded(&mut self) {
        self.status.succeeded(&mut self.down);
        self.delay = BACKOFF_MIN;
    }
}

/// What a broker source's reading loop works with, lent by [`run_on_own_runtime`]: the runtime
/// its client runs on, the acknowledgements it owes, where events (and rejections) go, and the
/// pipeline's stop signal.
pub(crate) struct Wiring<'a> {
    pub runtime: &'a tokio::runtime::Runtime,
    pub outstanding: &'a Outstanding,
    pub out: &'a Sender<Inbound>,
    pub done: &'a Sender<Completion>,
    pub shutdown: &'a crossbeam_channel::Receiver<()>,
}

/// Runs a broker source on a one-thread runtime of its own (its threads named `thread_name`):
/// `read` until shutdown, then waits (at most [`SETTLE`]) for what the pipeline finishes after
/// the stop to be acknowledged, before the runtime goes.
pub(crate) fn run_on_own_runtime(
    intake: &Intake,
    thread_name: &str,
    out: Sender<Inbound>,
    done: Sender<Completion>,
    shutdown: &crossbeam_channel::Receiver<()>,
    read: impl FnOnce(&Wiring<'_>),
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name(thread_name).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            log::error!(target: "wss::source", "cannot start the runtime of source {}: {err}", intake.status.label);
            return;
        }
    };
    // The clients' types expect a runtime context also where they are built and dropped.
    let _context = runtime.enter();
    let outstanding = Outstanding::default();
    read(&Wiring { runtime: &runtime, outstanding: &outstanding, out: &out, done: &done, shutdown });
    drop((out, done));
    outstanding.wait_settled(&intake.clock, SETTLE);
}

/// What a broker message's headers and properties name, before it becomes an event's fields.
/// Each of `tenant`, `event_type` and `ids` holds every value given (more than one, or none,
/// is the parser's to refuse, as in a stream entry).
pub(crate) struct MessageParts {
    pub tenant: Vec<Vec<u8>>,
    pub event_type: Vec<Vec<u8>>,
    pub ids: Vec<Vec<u8>>,
    pub data: Vec<u8>,
    pub created_at_ms: u64,
    /// Sorted by the caller.
    pub attributes: Fields,
}

/// Longest event id a broker message may bring (docs/contract.md §1).
const MAX_MESSAGE_ID: usize = 128;

/// The event id and fields of a broker message (docs/contract.md §7): its id is the one it
/// names when that is a valid id (printable ASCII, at most 128 bytes), else `fallback`, which
/// is also its `id` field when it names none.
pub(crate) fn event_fields(parts: MessageParts, fallback: String) -> (String, Fields) {
    let MessageParts { tenant, event_type, ids, data, created_at_ms, attributes } = parts;
    let id = match ids.as_slice() {
        [one] if !one.is_empty() && one.len() <= MAX_MESSAGE_ID && one.iter().all(|b| (0x21..=0x7e).contains(b)) => {
            String::from_utf8(one.clone()).unwrap_or_else(|_| fallback.clone())
        }
        _ => fallback.clone(),
    };
    let mut fields: Fields = Vec::with_capacity(5 + attributes.len());
    fields.extend(tenant.into_iter().map(|v| (b"tenant".to_vec(), v)));
    fields.extend(event_type.into_iter().map(|v| (b"type".to_vec(), v)));
    if ids.is_empty() {
        fields.push((b"id".to_vec(), fallback.into_bytes()));
    } else {
        fields.extend(ids.into_iter().map(|v| (b"id".to_vec(), v)));
    }
    fields.push((b"data".to_vec(), data));
    fields.push((crate::reserved::CREATED_AT_FIELD.as_bytes().to_vec(), created_at_ms.to_string().into_bytes()));
    fields.extend(attributes);
    (id, fields)
}

/// Whether the pipeline asked a source's thread to stop (or is gone).
pub(crate) fn stop_requested(shutdown: &crossbeam_channel::Receiver<()>) -> bool {
    !matches!(shutdown.try_recv(), Err(crossbeam_channel::TryRecvError::Empty))
}

/// Defaults of docs/contract.md §7.
pub const NATS_STREAM: &str = "WSS_EVENTS";
pub const NATS_SUBJECTS: &str = "wss.events.>";
pub const NATS_CONSUMER: &str = "wss";
/// How long JetStream waits for an acknowledgement before it delivers a message again; wss
/// sends progress acknowledgements every third of it while an event is in hand.
pub const NATS_ACK_WAIT: Duration = Duration::from_secs(30);

/// One configured source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// The stream `<prefix>events` on the Redis of `WSS_REDIS_URL`.
    Redis,
    Nats(Box<NatsSpec>),
    Amqp(Box<AmqpSpec>),
}

/// Default AMQP queue (docs/contract.md §7).
pub const AMQP_QUEUE: &str = "wss.events";

/// An AMQP 0-9-1 (RabbitMQ) source: a durable queue, consumed with manual acknowledgements.
#[derive(Clone, PartialEq)]
pub struct AmqpSpec {
    /// `amqp://user:password@host:port/vhost` (or `amqps://`), credentials included, without
    /// wss's own query options.
    pub url: String,
    pub queue: String,
    /// PEM CA bundle the server's certificate must chain to (`amqps://`).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for AmqpSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSpec")
            .field("url", &crate::redis_conn::redact_url(&self.url))
            .field("queue", &self.queue)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl AmqpSpec {
    /// What logs and metrics call it (never a credential).
    pub fn label(&self) -> String {
        let scheme = self.url.split_once("://").map_or("amqp", |(s, _)| s);
        format!("{scheme}://{}/{}", host_of(&self.url), self.queue)
    }

    fn parse(text: &str, ca_file: Option<PathBuf>, queue: Option<String>) -> Result<Self, String> {
        let mut url = url::Url::parse(text).map_err(|e| format!("{}: {e}", crate::redis_conn::redact_url(text)))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err("no host".into());
        }
        let mut spec = Self { url: String::new(), queue: queue.unwrap_or_else(|| AMQP_QUEUE.into()), ca_file };
        let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        for (name, value) in pairs {
            match name.as_str() {
                "queue" => spec.queue = value,
                "ca_file" => spec.ca_file = Some(value.into()),
                other => return Err(format!("unknown option {other:?} (known: queue, ca_file)")),
            }
        }
        url.set_query(None);
        spec.url = url.to_string();
        if spec.queue.is_empty() || spec.queue.len() > 255 {
            return Err(format!("queue {:?} must be 1 to 255 bytes", spec.queue));
        }
        if spec.ca_file.is_some() && !spec.url.starts_with("amqps://") {
            return Err("ca_file needs an amqps:// URL".into());
        }
        Ok(spec)
    }
}

/// A NATS JetStream source.
#[derive(Clone, PartialEq)]
pub struct NatsSpec {
    /// `nats://host:port` or `tls://host:port` (several servers comma-separated in the TOML
    /// file's `url`), without credentials.
    pub servers: Vec<String>,
    pub stream: String,
    pub subjects: Vec<String>,
    pub consumer: String,
    pub ack_wait: Duration,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// PEM CA bundle the server's certificate must chain to (TLS is then required).
    pub ca_file: Option<PathBuf>,
    /// Require TLS even without a CA file (the OS trust store verifies the server).
    pub tls: bool,
}

impl std::fmt::Debug for NatsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSpec")
            .field("servers", &self.servers)
            .field("stream", &self.stream)
            .field("subjects", &self.subjects)
            .field("consumer", &self.consumer)
            .field("ack_wait", &self.ack_wait)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .field("tls", &self.tls)
            .finish()
    }
}

impl NatsSpec {
    fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            stream: NATS_STREAM.into(),
            subjects: vec![NATS_SUBJECTS.into()],
            consumer: NATS_CONSUMER.into(),
            ack_wait: NATS_ACK_WAIT,
            user: None,
            password: None,
            token: None,
            ca_file: None,
            tls: false,
        }
    }

    /// What logs and metrics call it: the first server and the stream (never a credential).
    pub fn label(&self) -> String {
        format!("nats://{}/{}", self.servers.first().map_or("", |s| host_of(s)), self.stream)
    }

    fn check(&self) -> Result<(), String> {
        let name_ok = |n: &str| !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok(&self.stream) {
            return Err(format!("stream {:?} must be 1 to 64 letters, digits, '_' or '-'", self.stream));
        }
        if !name_ok(&self.consumer) {
            return Err(format!("consumer {:?} must be 1 to 64 letters, digits, '_' or '-'", self.consumer));
        }
        if self.subjects.is_empty() || self.subjects.iter().any(|s| s.is_empty() || s.contains(char::is_whitespace)) {
            return Err("subjects must be one or more NATS subjects without spaces".into());
        }
        if self.servers.is_empty() {
            return Err("no server given".into());
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err("ack_wait must be at least 1s".into());
        }
        Ok(())
    }
}

/// `host:port` of a server URL (whatever its scheme).
fn host_of(server: &str) -> &str {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

impl SourceSpec {
    /// What logs and metrics call it.
    pub fn label(&self) -> String {
        match self {
            SourceSpec::Redis => "redis".into(),
            SourceSpec::Nats(spec) => spec.label(),
            SourceSpec::Amqp(spec) => spec.label(),
        }
    }

    /// One URL of `WSS_SOURCES` (docs/contract.md §7): the scheme names the kind. `redis_url` is
    /// `WSS_REDIS_URL`: a Redis source must name the same Redis (its stream is
    /// `<prefix>events`, acknowledged in the transactions that write wss's own keys).
    pub fn from_url(text: &str, redis_url: &str) -> Result<Self, String> {
        let text = text.trim();
        let (scheme, _) = text.split_once("://").ok_or_else(|| format!("{text:?} is not a URL (scheme://host:port)"))?;
        match scheme {
            "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
                if text.split('?').next() != redis_url.split('?').next() {
                    return Err(format!(
                        "a Redis source must be the Redis of WSS_REDIS_URL ({}), where wss keeps its state",
                        crate::redis_conn::redact_url(redis_url)
                    ));
                }
                Ok(SourceSpec::Redis)
            }
            "nats" | "tls" => {
                let url = url::Url::parse(text).map_err(|e| format!("{}: {e}", crate::redis_conn::redact_url(text)))?;
                let host = url.host_str().ok_or("no host")?;
                let port = url.port().unwrap_or(4222);
                let mut spec = NatsSpec::new(vec![format!("{scheme}://{host}:{port}")]);
                spec.tls = scheme == "tls";
                if !url.username().is_empty() {
                    let user = percent_decode(url.username());
                    match url.password() {
                        Some(password) => {
                            spec.user = Some(user);
                            spec.password = Some(percent_decode(password));
                        }
                        None => spec.token = Some(user),
                    }
                }
                for (name, value) in url.query_pairs() {
                    match &*name {
                        "stream" => spec.stream = value.into_owned(),
                        "subjects" => spec.subjects = value.split(',').map(str::to_owned).collect(),
                        "consumer" => spec.consumer = value.into_owned(),
                        "ack_wait" => spec.ack_wait = parse_duration(&value)?,
                        "ca_file" => {
                            spec.ca_file = Some(value.into_owned().into());
                            spec.tls = true;
                        }
                        other => return Err(format!("unknown option {other:?} (known: stream, subjects, consumer, ack_wait, ca_file)")),
                    }
                }
                spec.check()?;
                Ok(SourceSpec::Nats(Box::new(spec)))
            }
            "amqp" | "amqps" => Ok(SourceSpec::Amqp(Box::new(AmqpSpec::parse(text, None, None)?))),
            other => Err(format!("unknown source scheme {other:?} (redis, rediss, nats, tls, amqp, amqps)")),
        }
    }

    /// One `[[sources]]` table of the TOML file: `kind` (`redis`, `nats`, `amqp`) and its options.
    pub fn from_table(table: &toml::Table, redis_url: &str) -> Result<Self, String> {
        let text = |key: &str| -> Result<Option<String>, String> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!("{key} must be a string, not {}", other.type_str())),
            }
        };
        let kind = text("kind")?.ok_or("kind is missing (redis, nats or amqp)")?;
        let known: &[&str] = match kind.as_str() {
            "redis" => &["kind"],
            "nats" => &["kind", "url", "stream", "subjects", "consumer", "ack_wait", "user", "password", "token", "ca_file", "tls"],
            "amqp" => &["kind", "url", "queue", "user", "password", "ca_file"],
            other => return Err(format!("unknown kind {other:?} (redis, nats or amqp)")),
        };
        if let Some(unknown) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!("unknown key {unknown:?} for kind {kind} (known: {})", known.join(", ")));
        }
        if kind == "redis" {
            return Ok(SourceSpec::Redis);
        }
        if kind == "amqp" {
            let url = text("url")?.unwrap_or_else(|| "amqp://127.0.0.1:5672/%2f".into());
            let mut parsed = url::Url::parse(&url).map_err(|e| format!("url: {e}"))?;
            match (text("user")?, text("password")?) {
                (Some(user), Some(password)) => {
                    if parsed.set_username(&user).is_err() || parsed.set_password(Some(&password)).is_err() {
                        return Err("url cannot take credentials".into());
                    }
                }
                (None, None) => {}
                _ => return Err("set user and password together".into()),
            }
            let ca_file = text("ca_file")?.map(PathBuf::from);
            if let Some(file) = &ca_file {
                let pem = std::fs::read(file).map_err(|e| format!("ca_file {}: cannot read the file: {e}", file.display()))?;
                if !crate::http::looks_like_pem(&pem) {
                    return Err(format!("ca_file {}: the file is not PEM (no -----BEGIN line)", file.display()));
                }
            }
            return Ok(SourceSpec::Amqp(Box::new(AmqpSpec::parse(parsed.as_str(), ca_file, text("queue")?)?)));
        }
        let _ = redis_url;
        let url = text("url")?.unwrap_or_else(|| "nats://127.0.0.1:4222".into());
        let servers: Vec<String> = url.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        if servers.iter().any(|s| s.contains('@')) {
            return Err("put credentials in user/password or token, not in url".into());
        }
        let mut spec = NatsSpec::new(servers);
        if let Some(stream) = text("stream")? {
            spec.stream = stream;
        }
        match table.get("subjects") {
            None => {}
            Some(toml::Value::String(s)) => spec.subjects = s.split(',').map(|s| s.trim().to_owned()).collect(),
            Some(toml::Value::Array(items)) => {
                spec.subjects =
                    items.iter().map(|v| v.as_str().map(str::to_owned).ok_or("subjects must be strings")).collect::<Result<_, _>>()?;
            }
            Some(other) => return Err(format!("subjects must be a list of strings, not {}", other.type_str())),
        }
        if let Some(consumer) = text("consumer")? {
            spec.consumer = consumer;
        }
        if let Some(wait) = text("ack_wait")? {
            spec.ack_wait = parse_duration(&wait)?;
        }
        spec.user = text("user")?;
        spec.password = text("password")?;
        spec.token = text("token")?;
        if spec.user.is_some() != spec.password.is_some() {
            return Err("set user and password together".into());
        }
        spec.ca_file = text("ca_file")?.map(PathBuf::from);
        spec.tls = match table.get("tls") {
            None => spec.ca_file.is_some() || spec.servers.iter().any(|s| s.starts_with("tls://")),
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => return Err(format!("tls must be true or false, not {}", other.type_str())),
        };
        if let Some(file) = &spec.ca_file {
            let pem = std::fs::read(file).map_err(|e| format!("ca_file {}: cannot read the file: {e}", file.display()))?;
            if !crate::http::looks_like_pem(&pem) {
                return Err(format!("ca_file {}: the file is not PEM (no -----BEGIN line)", file.display()));
            }
        }
        spec.check()?;
        Ok(SourceSpec::Nats(Box::new(spec)))
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?} is not a duration like 30s: {e}"))
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS: &str = "redis://127.0.0.1:6379";

    #[test]
    fn a_nats_url_takes_the_defaults_of_spec_7_and_its_query_overrides_them() {
        let SourceSpec::Nats(spec) = SourceSpec::from_url("nats://127.0.0.1:4222", REDIS).unwrap() else { panic!() };
        assert_eq!(
            (spec.stream.as_str(), spec.subjects.as_slice(), spec.consumer.as_str()),
            ("WSS_EVENTS", &["wss.events.>".to_owned()][..], "wss")
        );
        assert_eq!(spec.servers, ["nats://127.0.0.1:4222"]);
        let url = "nats://me:s%40cret@broker:4333?stream=S1&subjects=a.>,b.c&consumer=c1&ack_wait=5s";
        let SourceSpec::Nats(spec) = SourceSpec::from_url(url, REDIS).unwrap() else { panic!() };
        assert_eq!((spec.stream.as_str(), spec.consumer.as_str(), spec.ack_wait), ("S1", "c1", Duration::from_secs(5)));
        assert_eq!(spec.subjects, ["a.>", "b.c"]);
        assert_eq!((spec.user.as_deref(), spec.password.as_deref()), (Some("me"), Some("s@cret")));
        assert_eq!(spec.label(), "nats://broker:4333/S1");
        assert!(!format!("{spec:?}").contains("s@cret"));
        let SourceSpec::Nats(spec) = SourceSpec::from_url("nats://tok@h", REDIS).unwrap() else { panic!() };
        assert_eq!((spec.token.as_deref(), spec.servers[0].as_str()), (Some("tok"), "nats://h:4222"));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert_eq!(SourceSpec::from_url(REDIS, REDIS), Ok(SourceSpec::Redis));
        for (url, says) in [
            ("redis://other:6379", "must be the Redis of WSS_REDIS_URL"),
            ("nats://h?bogus=1", "unknown option \"bogus\""),
            ("nats://h?stream=a.b", "stream \"a.b\""),
            ("kafka://h", "unknown source scheme"),
            ("amqp://h?bogus=1", "unknown option \"bogus\""),
            ("amqp://g:p@h?ca_file=/x", "needs an amqps"),
            ("h:4222", "not a URL"),
        ] {
            let err = SourceSpec::from_url(url, REDIS).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn an_amqp_url_takes_its_queue_and_keeps_credentials_out_of_its_label() {
        let SourceSpec::Amqp(spec) = SourceSpec::from_url("amqp://guest:guest@127.0.0.1:5672/%2f?queue=q1", REDIS).unwrap() else {
            panic!()
        };
        assert_eq!((spec.queue.as_str(), spec.url.as_str()), ("q1", "amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert_eq!(spec.label(), "amqp://127.0.0.1:5672/q1");
        let SourceSpec::Amqp(spec) = SourceSpec::from_url("amqp://h", REDIS).unwrap() else { panic!() };
        assert_eq!(spec.queue, "wss.events");
        let table: toml::Table =
            toml::from_str("kind = \"amqp\"\nurl = \"amqp://h:5672/%2f\"\nuser = \"u\"\npassword = \"p w\"\nqueue = \"q\"").unwrap();
        let SourceSpec::Amqp(spec) = SourceSpec::from_table(&table, REDIS).unwrap() else { panic!() };
        assert_eq!((spec.url.as_str(), spec.queue.as_str()), ("amqp://u:p%20w@h:5672/%2f", "q"));
        assert!(!format!("{spec:?}").contains("p%20w"));
    }

    #[test]
    fn a_sources_table_has_every_option() {
        let table: toml::Table = toml::from_str(
            r#"kind = "nats"
url = "nats://a:4222, nats://b:4222"
stream = "S"
subjects = ["x.>", "y"]
consumer = "c"
ack_wait = "10s"
user = "u"
password = "p""#,
        )
        .unwrap();
        let SourceSpec::Nats(spec) = SourceSpec::from_table(&table, REDIS).unwrap() else { panic!() };
        assert_eq!(spec.servers, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!((spec.stream.as_str(), spec.consumer.as_str(), spec.subjects.len()), ("S", "c", 2));
        let bad: toml::Table = toml::from_str("kind = \"nats\"\nqueue = \"q\"").unwrap();
        assert!(SourceSpec::from_table(&bad, REDIS).unwrap_err().contains("unknown key \"queue\""));
        let lone: toml::Table = toml::from_str("kind = \"nats\"\nuser = \"u\"").unwrap();
        assert!(SourceSpec::from_table(&lone, REDIS).unwrap_err().contains("together"));
    }
}
