//! The broker-source chaos tests of issue 14 (`#[ignore]`d: `.ci/run` runs them in a step of
//! their own with `./run-tests --test sources_chaos -- --ignored --nocapture`).
//!
//! Per source (NATS JetStream, RabbitMQ), against a broker of the test's own on free loopback
//! ports, its store in a temporary directory that survives its restart:
//!
//! - 10,000 good events across 20 tenants (one webhook each), and 21 bad messages among them
//!   (7 without a tenant header, 7 whose data is not JSON, 7 of an unknown tenant), published in
//!   three parts: 40 % while wss reads, then 30 % while wss is down, then 30 % after the broker
//!   came back;
//! - wss is SIGKILLed midway (after 1,000 events, with events in hand and unacknowledged) and
//!   started again; the history's record of what was delivered is read while it is down;
//! - the broker is stopped midway (SIGTERM, as `systemctl restart` does) while wss works, and
//!   started again on the same port and store;
//! - at the end: every good event reached its tenant's webhook with a 2xx (duplicates are
//!   allowed, counted and printed with where they came from; but none of an event the history
//!   had recorded as delivered at the kill), no request went to the wrong tenant, every
//!   bad message is dead-lettered with its reason (`ListDeadLetters`) and no good one is, and no
//!   message is left unacknowledged — JetStream: the consumer's `num_pending` and
//!   `num_ack_pending` are 0; RabbitMQ: once wss has stopped (and with it its channel, so that
//!   whatever it held unacknowledged would be back in the queue), a passive `queue.declare`
//!   counts 0 consumers and 0 messages.
//!
//! Every wait polls with a deadline. The private RabbitMQ node (`OwnRabbit`) is the Debian
//! `rabbitmq-server` script run directly (not through the wrapper that switches to the
//! `rabbitmq` user), with a node name, ports, epmd, cookie, config, plugins file, Mnesia and log
//! directories of its own: the machine's RabbitMQ on :5672 is never touched.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream;
use common::{eventually, wait_until, Grpc, Keyspace, Service, WAIT};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Channel, Connection, ConnectionProperties,
};
use wss::http_listener::{self, Bytes, Listener, Options};

const TENANTS: usize = 20;
const GOOD: usize = 10_000;
/// Bad messages of each kind.
const BAD_EACH: usize = 7;
/// Where the kills and restarts happen, as parts of the published messages.
const FIRST_PHASE_PERCENT: usize = 40;
const SECOND_PHASE_PERCENT: usize = 30;
/// Unique deliveries before the SIGKILL, and more after the restart before the broker stops.
const BEFORE_KILL: usize = 1_000;
const BEFORE_BROKER_STOP: usize = 1_500;
/// Upper bound for everything to be delivered after the last disruption: generous for a loaded
/// 2-core machine running a debug build.
const CONVERGE: Duration = Duration::from_secs(150);
/// The stages of a test, for telling where duplicates come from.
const STAGES: [&str; 3] = ["before the SIGKILL", "after the restart of wss", "after the broker stopped"];

/// The two tests take turns (each runs two brokers' worth of processes on a 2-core machine, and
/// their timings are printed).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// The messages
// ---------------------------------------------------------------------------------------------

/// One message as published.
#[derive(Clone)]
struct Msg {
    id: String,
    /// `None`: published without a tenant header.
    tenant: Option<String>,
    data: String,
    /// For a bad message: the dead letter's reason.
    bad: Option<&'static str>,
}

fn tenant_name(t: usize) -> String {
    format!("tenant-{t:02}")
}

/// 10,000 good events (`ev-00000`…, tenant `n % 20`) with the bad ones spread among them.
fn messages() -> Vec<Msg> {
    let mut all: Vec<Msg> = (0..GOOD)
        .map(|n| Msg { id: format!("ev-{n:05}"), tenant: Some(tenant_name(n % TENANTS)), data: format!(r#"{{"n":{n}}}"#), bad: None })
        .collect();
    let bad_total = 3 * BAD_EACH;
    for k in (0..bad_total).rev() {
        let bad = match k % 3 {
            0 => Msg { id: format!("bad-notenant-{k}"), tenant: None, data: "{}".into(), bad: Some("missing_field") },
            1 => Msg {
                id: format!("bad-json-{k}"),
                tenant: Some(tenant_name(k % TENANTS)),
                data: "not json {".into(),
                bad: Some("data_not_json"),
            },
            _ => Msg { id: format!("bad-tenant-{k}"), tenant: Some("nobody".into()), data: "{}".into(), bad: Some("unknown_tenant") },
        };
        // Spread evenly, so that every phase has some.
        all.insert(k * GOOD / bad_total + GOOD / (2 * bad_total), bad);
    }
    all
}

/// The three phases' slices of `all`.
fn phases(all: &[Msg]) -> [&[Msg]; 3] {
    let first = all.len() * FIRST_PHASE_PERCENT / 100;
    let second = first + all.len() * SECOND_PHASE_PERCENT / 100;
    [&all[..first], &all[first..second], &all[second..]]
}

fn good_ids(msgs: &[Msg]) -> BTreeSet<String> {
    msgs.iter().filter(|m| m.bad.is_none()).map(|m| m.id.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// The receiver: counts 2xx answers per event id, checks each event came to its tenant's webhook
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Counts {
    /// 2xx answers written, per event id, and the stage of the test when the first was.
    ok: HashMap<String, (usize, usize)>,
    /// Duplicate 2xx answers by (stage of the event's first 2xx, stage of the duplicate).
    duplicates: BTreeMap<(usize, usize), usize>,
    /// Requests that came where they should not (wrong tenant's webhook, no event id).
    wrong: Vec<String>,
}

struct Counting {
    addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
    /// Distinct event ids answered 2xx (cheap to poll).
    unique: Arc<AtomicUsize>,
    /// The stage of the test: [`STAGES`].
    stage: Arc<AtomicUsize>,
    _server: Listener,
}

impl Counting {
    fn start() -> Self {
        let counts: Arc<Mutex<Counts>> = Arc::default();
        let unique = Arc::new(AtomicUsize::new(0));
        let stage = Arc::new(AtomicUsize::new(0));
        let (c, u, st) = (counts.clone(), unique.clone(), stage.clone());
        let server =
            Listener::bind_standalone(SocketAddr::from(([127, 0, 0, 1], 0)), Options::default(), move |request: http::Request<Bytes>| {
                let id = request.headers().get("X-WSS-Event-Id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let path_tenant = request.uri().path().trim_start_matches('/').to_owned();
                let body: serde_json::Value = serde_json::from_slice(request.body()).unwrap_or_default();
                let expected = id.strip_prefix("ev-").and_then(|n| n.parse::<usize>().ok()).map(|n| tenant_name(n % TENANTS));
                let wrong = (expected.as_deref() != Some(path_tenant.as_str()) || body["tenant"] != path_tenant.as_str())
                    .then(|| format!("event {id:?} (envelope tenant {}) at /{path_tenant}", body["tenant"]));
                // Counted as it is answered: the handler answers 200 at once, waiting for nothing.
                {
                    let mut counts = c.lock().unwrap();
                    if let Some(wrong) = wrong {
                        counts.wrong.push(wrong);
                    }
                    let now = st.load(Ordering::SeqCst);
                    let (n, first) = *counts.ok.entry(id).and_modify(|(n, _)| *n += 1).or_insert((1, now));
                    if n == 1 {
                        u.fetch_add(1, Ordering::SeqCst);
                    } else {
                        *counts.duplicates.entry((first, now)).or_default() += 1;
                    }
                }
                std::future::ready(http_listener::empty(http::StatusCode::OK))
            })
            .expect("binding a receiver on 127.0.0.1:0");
        Self { addr: server.local_addr(), counts, unique, stage, _server: server }
    }

    fn url(&self, tenant: &str) -> String {
        format!("http://{}/{tenant}", self.addr)
    }

    fn enter(&self, stage: usize) {
        self.stage.store(stage, Ordering::SeqCst);
    }

    /// The duplicates, by stages, as text.
    fn duplicates(&self) -> String {
        let counts = self.counts.lock().unwrap();
        let parts: Vec<String> = counts
            .duplicates
            .iter()
            .map(|((first, dup), n)| format!("{n} first delivered {}, again {}", STAGES[*first], STAGES[*dup]))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("; ")
        }
    }

    /// Event ids answered 2xx more than once.
    fn duplicated(&self) -> BTreeSet<String> {
        self.counts.lock().unwrap().ok.iter().filter(|(_, (n, _))| *n > 1).map(|(id, _)| id.clone()).collect()
    }

    fn unique(&self) -> usize {
        self.unique.load(Ordering::SeqCst)
    }

    async fn wait_unique(&self, n: usize, what: &str) {
        wait_until(CONVERGE, what, || match self.unique() {
            seen if seen >= n => Ok(()),
            seen => Err(format!("{seen} distinct events delivered")),
        })
        .await;
    }

    /// Waits until every id of `want` was answered 2xx; returns (requests answered 2xx,
    /// duplicates among them).
    async fn wait_all(&self, want: &BTreeSet<String>) -> (usize, usize) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            {
                let counts = self.counts.lock().unwrap();
                let missing: Vec<&String> = want.iter().filter(|id| !counts.ok.contains_key(*id)).collect();
                if missing.is_empty() {
                    let requests: usize = counts.ok.values().map(|(n, _)| n).sum();
                    return (requests, requests - counts.ok.len());
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out after {CONVERGE:?}: {} of {} events delivered; missing e.g. {:?}",
                    want.len() - missing.len(),
                    want.len(),
                    &missing[..missing.len().min(10)]
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What must hold at the end: only the good events, each at its tenant's webhook.
    fn assert_clean(&self, want: &BTreeSet<String>) {
        let counts = self.counts.lock().unwrap();
        assert!(
            counts.wrong.is_empty(),
            "{} misrouted requests, e.g. {:?}",
            counts.wrong.len(),
            &counts.wrong[..counts.wrong.len().min(5)]
        );
        let extra: Vec<&String> = counts.ok.keys().filter(|id| !want.contains(*id)).collect();
        assert!(extra.is_empty(), "events delivered that were not good ones: {:?}", &extra[..extra.len().min(10)]);
    }
}

// ---------------------------------------------------------------------------------------------
// wss
// ---------------------------------------------------------------------------------------------

fn service_env(ks: &Keyspace, consumer: &str, source: &str) -> Vec<(String, String)> {
    let mut env = Service::env(ks, consumer);
    for (k, v) in [("WSS_SOURCES", source), ("WSS_CLAIM_AFTER", "2s"), ("WSS_LOG_LEVEL", "info")] {
        env.retain(|(name, _)| name != k);
        env.push((k.into(), v.into()));
    }
    env
}

async fn start_wss(ks: &Keyspace, consumer: &str, source: &str, reading: &str) -> Service {
    let mut service = Service::spawn(consumer, service_env(ks, consumer, source));
    service.wait_for_control_plane().await;
    service.wait_for_log(reading, WAIT * 2).await;
    service
}

async fn create_tenants(grpc: &Grpc, receiver: &Counting) {
    for t in 0..TENANTS {
        let tenant = tenant_name(t);
        grpc.create_tenant(&tenant).await;
        grpc.create_webhook(&tenant, &receiver.url(&tenant), |_| {}).await;
    }
}

/// Every bad message dead-lettered with its reason, and nothing else; returns the number of
/// dead letters (a bad message read again after a crash may be dead-lettered twice).
async fn assert_dead_letters(grpc: &Grpc, all: &[Msg]) -> usize {
    let want: BTreeMap<&str, &str> = all.iter().filter_map(|m| Some((m.id.as_str(), m.bad?))).collect();
    let dead = eventually(WAIT * 2, "every bad message dead-lettered", || async {
        let dead = grpc.dead_letters("").await?;
        let seen: BTreeSet<&str> = dead.iter().map(|d| d.event_id.as_str()).collect();
        let missing: Vec<&&str> = want.keys().filter(|id| !seen.contains(**id)).collect();
        if missing.is_empty() {
            Ok(dead)
        } else {
            Err(format!("{} dead letters; missing {missing:?}", dead.len()))
        }
    })
    .await;
    for d in &dead {
        let expected = want.get(d.event_id.as_str()).unwrap_or_else(|| panic!("a dead letter of a good event: {d:?}"));
        assert_eq!(&d.reason, expected, "the reason of {}: {d:?}", d.event_id);
        assert!(!d.detail.is_empty(), "a dead letter says why: {d:?}");
    }
    dead.len()
}

/// SIGKILLs `service` and checks the kill came midway; returns the events delivered then, and
/// those the delivery history recorded as delivered (read while wss is down).
fn kill_midway(service: Service, receiver: &Counting, published_good: usize, ks: &Keyspace) -> (usize, BTreeSet<String>) {
    drop(service); // SIGKILL, then reaped
    let at_kill = receiver.unique();
    assert!(at_kill < published_good, "the kill came midway: {at_kill} of {published_good} published events were delivered");
    (at_kill, recorded_delivered(ks))
}

/// The events whose delivery the history (the records in `<prefix>deliveries:records:<hour>`,
/// JSON) records as delivered (one webhook per tenant: an event has one delivery).
fn recorded_delivered(ks: &Keyspace) -> BTreeSet<String> {
    ks.history_records()
        .into_iter()
        .filter(|record| record["status"] == "delivered")
        .map(|record| record["event_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Checks that no event the history had recorded as delivered when wss was killed was sent
/// again (its redelivered message is found done): duplicates are only deliveries whose 2xx was
/// not yet recorded. Returns the number of events recorded at the kill.
fn assert_recorded_not_resent(receiver: &Counting, recorded_at_kill: &BTreeSet<String>) -> usize {
    assert!(!recorded_at_kill.is_empty(), "the history recorded nothing as delivered at the kill: the check below proves nothing");
    let resent: Vec<String> = receiver.duplicated().intersection(recorded_at_kill).cloned().collect();
    assert!(
        resent.is_empty(),
        "{} events recorded as delivered before the SIGKILL were sent again after it, e.g. {:?}",
        resent.len(),
        &resent[..resent.len().min(10)]
    );
    recorded_at_kill.len()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free loopback port").local_addr().unwrap().port()
}

fn tag() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000_000;
    format!("{}_{nanos}", std::process::id())
}

/// A directory of the test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wss-{what}-{}", tag()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends SIGTERM to `child` and waits (up to `within`) for it to exit; SIGKILLs `group` (its
/// process group, when it has one of its own) or it after that.
async fn stop_child(child: &mut Child, within: Duration, group: bool, what: &str) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("{what} did not stop within {within:?} of SIGTERM: SIGKILL");
            let target = if group { format!("-{pid}") } else { pid.clone() };
            let _ = Command::new("kill").arg("-KILL").arg("--").arg(&target).status();
            let _ = child.wait();
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// NATS JetStream
// ---------------------------------------------------------------------------------------------

/// A nats-server with JetStream on a free port, its store in `dir`, which survives restarts.
struct OwnNats {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl OwnNats {
    fn start() -> Self {
        let mut own = Self { child: None, port: free_port(), dir: TempDir::new("nats-chaos") };
        own.launch();
        own
    }

    fn log(&self) -> PathBuf {
        self.dir.0.join("nats.log")
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).expect("the nats-server log");
        let store = self.dir.0.join("store");
        let child = Command::new(common::nats_server_bin())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd", &store.display().to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(20), false, "nats-server").await;
        }
    }

    /// A JetStream context once the server answers (and, with `stream`, once it has recovered
    /// that stream from its store).
    async fn context(&mut self, stream: Option<&str>) -> jetstream::Context {
        let url = self.url();
        let log = self.log();
        let child = self.child.as_mut().expect("launched");
        eventually(WAIT * 3, "the test's nats-server answering", || {
            let exited = child.try_wait().expect("try_wait");
            let url = url.clone();
            let log = log.clone();
            async move {
                if let Some(status) = exited {
                    panic!("nats-server exited ({status}); its log:\n{}", tail(&log));
                }
                let client = async_nats::connect(url.as_str()).await.map_err(|e| e.to_string())?;
                let js = jetstream::new(client);
                if let Some(stream) = stream {
                    js.get_stream(stream).await.map_err(|e| format!("stream {stream}: {e}"))?;
                }
                Ok(js)
            }
        })
        .await
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Publishes `msgs` to `<subject>.<tenant>` with the headers of docs/contract.md §7, waiting for
/// JetStream's acknowledgements a chunk at a time.
async fn nats_publish(js: &jetstream::Context, subject: &str, msgs: &[Msg]) {
    for chunk in msgs.chunks(250) {
        let mut acks = Vec::with_capacity(chunk.len());
        for m in chunk {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(tenant) = &m.tenant {
                headers.insert("WSS-Tenant", tenant.as_str());
            }
            headers.insert("WSS-Type", "order.created");
            headers.insert("WSS-Id", m.id.as_str());
            let to = format!("{subject}.{}", m.tenant.as_deref().unwrap_or("none"));
            acks.push(js.publish_with_headers(to, headers, m.data.clone().into()).await.expect("publish"));
        }
        for ack in acks {
            ack.await.expect("JetStream stored the message");
        }
    }
}

async fn nats_consumer_info(js: &jetstream::Context, stream: &str, consumer: &str) -> Result<jetstream::consumer::Info, String> {
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(consumer).await.map_err(|e| e.to_string())?;
    consumer.info().await.cloned().map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: 10,000 NATS events, a SIGKILL of wss and a restart of the broker; .ci/run runs it on its own (./run-tests --test sources_chaos -- --ignored)"]
async fn nats_10k_events_survive_a_sigkill_and_a_broker_restart() {
    let _turn = SERIAL.lock().await;
    let started = Instant::now();
    let ks = Keyspace::new("nats_chaos");
    let tag = tag();
    let (stream, subject, consumer) = (format!("CHAOS_{tag}"), format!("chaos.{tag}"), format!("chaos_{tag}"));
    let mut nats = OwnNats::start();
    nats.context(None).await;
    let source = format!("{}?stream={stream}&subjects={subject}.>&consumer={consumer}&ack_wait=5s", nats.url());
    let reading = "reading NATS JetStream stream";
    let receiver = Counting::start();
    let all = messages();
    let [first, second, third] = phases(&all);
    let want = good_ids(&all);

    let service = start_wss(&ks, "nats-chaos", &source, reading).await;
    create_tenants(&service.grpc().await, &receiver).await;
    // The stream and consumer exist now (wss created them).
    let js = nats.context(Some(&stream)).await;
    // Published while wss reads, so that the kill comes while most of it is still to do.
    let publishing = tokio::spawn({
        let (js, subject, first) = (js.clone(), subject.clone(), first.to_vec());
        async move { nats_publish(&js, &subject, &first).await }
    });
    receiver.wait_unique(BEFORE_KILL, "deliveries before the SIGKILL").await;
    let (at_kill, recorded_at_kill) = kill_midway(service, &receiver, good_ids(first).len(), &ks);
    receiver.enter(1);
    publishing.await.expect("publishing the first part");
    println!("nats: SIGKILL at {:.1?} with {at_kill} of {} published events delivered", started.elapsed(), good_ids(first).len());
    nats_publish(&js, &subject, second).await;
    drop(js);

    let mut service = start_wss(&ks, "nats-chaos", &source, reading).await;
    receiver.wait_unique(at_kill + BEFORE_BROKER_STOP, "deliveries before the broker stops").await;
    let at_stop = receiver.unique();
    receiver.enter(2);
    nats.stop().await;
    let published = first.len() + second.len();
    let published_good = good_ids(&all[..published]).len();
    assert!(at_stop < published_good, "the broker stopped midway: {at_stop} of {published_good} published events delivered");
    println!("nats: broker stopped at {:.1?} with {at_stop} of {published_good} published events delivered", started.elapsed());
    service.wait_for_log("unreachable", WAIT).await;
    nats.launch();
    let js = nats.context(Some(&stream)).await;
    println!("nats: broker back at {:.1?}", started.elapsed());
    nats_publish(&js, &subject, third).await;

    let (requests, duplicates) = receiver.wait_all(&want).await;
    receiver.assert_clean(&want);
    let recorded = assert_recorded_not_resent(&receiver, &recorded_at_kill);
    let grpc = service.grpc().await;
    let dead = assert_dead_letters(&grpc, &all).await;
    let info = eventually(WAIT * 2, "every message acknowledged (num_pending and num_ack_pending 0)", || async {
        let info = nats_consumer_info(&js, &stream, &consumer).await?;
        if (info.num_pending, info.num_ack_pending) == (0, 0) {
            Ok(info)
        } else {
            Err(format!("num_pending {}, num_ack_pending {}", info.num_pending, info.num_ack_pending))
        }
    })
    .await;
    assert_eq!(info.delivered.stream_sequence, all.len() as u64, "the consumer went through every message of the stream");
    println!(
        "nats chaos done in {:.1?}: {} events delivered ({requests} 2xx requests, {duplicates} duplicates), {} bad messages in {dead} dead letters, {} redeliveries by JetStream, 0 pending, 0 unacknowledged; duplicates: {}; none of the {} recorded as delivered at the kill sent again",
        started.elapsed(),
        want.len(),
        all.len() - want.len(),
        info.delivered.consumer_sequence - info.delivered.stream_sequence,
        receiver.duplicates(),
        recorded
    );
    let status = service.terminate().await;
    assert!(status.success(), "wss stopped cleanly: {status:?}");
    let _ = js.delete_stream(&stream).await;
    nats.stop().await;
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------------------------

/// The `rabbitmq-server` start script to run directly (Debian's /usr/sbin one is a wrapper that
/// switches to the `rabbitmq` user and its home; the real script is under /usr/lib/rabbitmq).
fn rabbitmq_server_bin() -> PathBuf {
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.exists() {
        return debian;
    }
    let found = Command::new("sh").args(["-c", "command -v rabbitmq-server"]).output().expect("sh");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    assert!(!path.is_empty(), "rabbitmq-server is installed (apt-get install -y rabbitmq-server; ./run-tests does)");
    PathBuf::from(path)
}

fn epmd_bin() -> String {
    ["epmd", "/usr/bin/epmd"]
        .iter()
        .find(|b| Command::new(b).arg("-help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
        .map(|b| (*b).to_owned())
        .expect("epmd is installed (erlang-base, a dependency of rabbitmq-server)")
}

/// A RabbitMQ node of the test's own: node name `wsschaos<pid>@localhost`, AMQP, distribution
/// and epmd ports free ones on 127.0.0.1, its cookie, config, plugins file (none), Mnesia and
/// logs in a temporary directory that survives its restarts (durable queues and persistent
/// messages with it).
struct OwnRabbit {
    server: Option<Child>,
    epmd: Option<Child>,
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    node: String,
    dir: TempDir,
}

impl OwnRabbit {
    async fn start() -> Self {
        let dir = TempDir::new("rabbit-chaos");
        let (port, dist_port, epmd_port) = (free_port(), free_port(), free_port());
        let d = &dir.0;
        std::fs::write(d.join("rabbitmq.conf"), format!("listeners.tcp.local = 127.0.0.1:{port}\n")).unwrap();
        std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(d.join("rabbitmq-env.conf"), "").unwrap();
        std::fs::create_dir_all(d.join("conf.d")).unwrap();
        let epmd = Command::new(epmd_bin())
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting epmd");
        let mut own = Self {
            server: None,
            epmd: Some(epmd),
            port,
            dist_port,
            epmd_port,
            node: format!("wsschaos{}@localhost", std::process::id()),
            dir,
        };
        wait_until(WAIT, "the test's epmd listening", || {
            TcpStream::connect(("127.0.0.1", own.epmd_port)).map(|_| ()).map_err(|e| e.to_string())
        })
        .await;
        own.launch();
        own.wait_ready().await;
        own
    }

    fn log(&self) -> PathBuf {
        self.dir.0.join("rabbitmq-server.log")
    }

    fn launch(&mut self) {
        let d = &self.dir.0;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).expect("the rabbitmq-server log");
        let path = |name: &str| d.join(name).display().to_string();
        let mut cmd = Command::new(rabbitmq_server_bin());
        // Nothing inherited (no RABBITMQ_* or ERL_* of the caller's), but a PATH for the script.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
            .env("LANG", "C.UTF-8")
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: a SIGKILL fallback reaches the Erlang VM under the script.
            .process_group(0)
            .env("HOME", d)
            .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_CONFIG_FILES", path("conf.d"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
        self.server = Some(cmd.spawn().expect("starting rabbitmq-server"));
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Waits until the node accepts an AMQP connection; returns it.
    async fn wait_ready(&mut self) -> Connection {
        let (url, log, port) = (self.url(), self.log(), self.port);
        let server = self.server.as_mut().expect("launched");
        eventually(Duration::from_secs(120), "the test's RabbitMQ node accepting AMQP connections", || {
            let exited = server.try_wait().expect("try_wait");
            let (url, log) = (url.clone(), log.clone());
            async move {
                if let Some(status) = exited {
                    panic!("rabbitmq-server exited ({status}); its output:\n{}", tail(&log));
                }
                // Only once the listener is there, and never waiting long on one attempt (an
                // attempt against a node still booting was seen to hang).
                TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("port {port}: {e}"))?;
                match tokio::time::timeout(Duration::from_secs(10), Connection::connect(&url, ConnectionProperties::default())).await {
                    Ok(connected) => connected.map_err(|e| e.to_string()),
                    Err(_) => Err("the AMQP handshake timed out".into()),
                }
            }
        })
        .await
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            stop_child(&mut child, Duration::from_secs(60), true, "rabbitmq-server").await;
        }
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            // The script forwards SIGTERM to the VM and waits for it (a few seconds).
            let pid = child.id().to_string();
            let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill").arg("-KILL").arg("--").arg(format!("-{pid}")).stderr(Stdio::null()).status();
            let _ = child.wait();
        }
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
    }
}

/// A publishing channel with publisher confirms, and the durable queue (declared as wss does).
async fn amqp_channel(connection: &Connection, queue: &str) -> Channel {
    let channel = connection.create_channel().await.expect("a channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm.select");
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("declaring the durable queue");
    channel
}

/// Publishes `msgs` persistent (delivery mode 2) to `queue` through the default exchange, waiting
/// for the broker's confirms a chunk at a time.
async fn amqp_publish(channel: &Channel, queue: &str, msgs: &[Msg]) {
    for chunk in msgs.chunks(250) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for m in chunk {
            let mut headers = FieldTable::default();
            if let Some(tenant) = &m.tenant {
                headers.insert(ShortString::from("wss-tenant"), AMQPValue::LongString(tenant.as_str().into()));
            }
            headers.insert(ShortString::from("wss-type"), AMQPValue::LongString("order.created".into()));
            headers.insert(ShortString::from("wss-id"), AMQPValue::LongString(m.id.as_str().into()));
            let properties = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions { mandatory: true, ..Default::default() },
                        m.data.as_bytes(),
                        properties,
                    )
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            let confirmation = confirm.await.expect("the broker's confirm");
            assert!(confirmation.is_ack(), "the broker took the message: {confirmation:?}");
            assert!(confirmation.take_message().is_none(), "the message was routed to the queue (not returned)");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: 10,000 RabbitMQ events, a SIGKILL of wss and a restart of a private RabbitMQ node; .ci/run runs it on its own (./run-tests --test sources_chaos -- --ignored)"]
async fn amqp_10k_events_survive_a_sigkill_and_a_broker_restart() {
    let _turn = SERIAL.lock().await;
    let started = Instant::now();
    let ks = Keyspace::new("amqp_chaos");
    let queue = format!("wsschaos.{}", tag());
    let mut rabbit = OwnRabbit::start().await;
    println!("amqp: private RabbitMQ node {} on 127.0.0.1:{} up at {:.1?}", rabbit.node, rabbit.port, started.elapsed());
    let source = format!("{}?queue={queue}", rabbit.url());
    let reading = "reading AMQP queue";
    let receiver = Counting::start();
    let all = messages();
    let [first, second, third] = phases(&all);
    let want = good_ids(&all);

    let connection = Connection::connect(&rabbit.url(), ConnectionProperties::default()).await.expect("connecting to the test's RabbitMQ");
    let channel = amqp_channel(&connection, &queue).await;
    let service = start_wss(&ks, "amqp-chaos", &source, reading).await;
    create_tenants(&service.grpc().await, &receiver).await;
    // Published while wss reads, so that the kill comes while most of it is still to do.
    let publishing = tokio::spawn({
        let (channel, queue, first) = (channel.clone(), queue.clone(), first.to_vec());
        async move { amqp_publish(&channel, &queue, &first).await }
    });
    receiver.wait_unique(BEFORE_KILL, "deliveries before the SIGKILL").await;
    let (at_kill, recorded_at_kill) = kill_midway(service, &receiver, good_ids(first).len(), &ks);
    receiver.enter(1);
    publishing.await.expect("publishing the first part");
    println!("amqp: SIGKILL at {:.1?} with {at_kill} of {} published events delivered", started.elapsed(), good_ids(first).len());
    amqp_publish(&channel, &queue, second).await;
    drop(channel);
    let _ = connection.close(0, "restarting the broker".into()).await;

    let mut service = start_wss(&ks, "amqp-chaos", &source, reading).await;
    receiver.wait_unique(at_kill + BEFORE_BROKER_STOP, "deliveries before the broker stops").await;
    let at_stop = receiver.unique();
    receiver.enter(2);
    rabbit.stop().await;
    let published = first.len() + second.len();
    let published_good = good_ids(&all[..published]).len();
    assert!(at_stop < published_good, "the broker stopped midway: {at_stop} of {published_good} published events delivered");
    println!("amqp: broker stopped at {:.1?} with {at_stop} of {published_good} published events delivered", started.elapsed());
    service.wait_for_log("unreachable", WAIT).await;
    rabbit.launch();
    let connection = rabbit.wait_ready().await;
    println!("amqp: broker back at {:.1?}", started.elapsed());
    let channel = amqp_channel(&connection, &queue).await;
    amqp_publish(&channel, &queue, third).await;

    let (requests, duplicates) = receiver.wait_all(&want).await;
    receiver.assert_clean(&want);
    let recorded = assert_recorded_not_resent(&receiver, &recorded_at_kill);
    let grpc = service.grpc().await;
    let dead = assert_dead_letters(&grpc, &all).await;
    drop(grpc);
    // Stopped, wss holds nothing: whatever it had not acknowledged is back in the queue once the
    // broker has closed its channel (which removes its consumer).
    let status = service.terminate().await;
    assert!(status.success(), "wss stopped cleanly: {status:?}");
    let (ready, consumers) = eventually(WAIT, "wss's consumer gone from the queue", || async {
        let q = channel
            .queue_declare(queue.as_str().into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
            .await
            .map_err(|e| e.to_string())?;
        match q.consumer_count() {
            0 => Ok((q.message_count(), 0)),
            n => Err(format!("{n} consumers")),
        }
    })
    .await;
    assert_eq!((ready, consumers), (0, 0), "no message left in the queue (ready or returned unacknowledged) after wss stopped");
    let failed_acks = service.lines().iter().filter(|l| l.contains("acknowledging an AMQP message failed")).count();
    println!(
        "amqp chaos done in {:.1?}: {} events delivered ({requests} 2xx requests, {duplicates} duplicates), {} bad messages in {dead} dead letters, {failed_acks} acknowledgements lost with the broker's restart (redelivered and found done), 0 ready, 0 unacknowledged; duplicates: {}; none of the {} recorded as delivered at the kill sent again",
        started.elapsed(),
        want.len(),
        all.len() - want.len(),
        receiver.duplicates(),
        recorded
    );
    let _ = connection.close(0, "done".into()).await;
    rabbit.stop().await;
}
