//! Shared harness of the integration tests: the real `wss` binary against a real Redis and real
//! HTTP receivers on loopback.
//!
//! - [`Keyspace`]: a unique key prefix per test (`wsstest:<test>:<pid>:<nanos>:`) on the Redis of
//!   `WSS_TEST_REDIS_URL`, with stream helpers; its keys are deleted when it is dropped.
//! - [`Service`]: `wss serve` as a child process; every stderr line is kept (and printed when the
//!   test fails), the gRPC address is read from the log; SIGKILL on drop, SIGTERM on request.
//! - [`Receiver`]: `wss::http_listener` on `127.0.0.1:0`, its answers scripted per request number,
//!   recording every request (headers, raw body, arrival time).
//! - [`Grpc`]: tonic clients for the control plane.
//! - [`eventually`]: polls a check until it passes or a deadline expires; tests never sleep to
//!   wait for work.
//! - [`wss_signature`]: HMAC-SHA256 computed here with the `hmac`/`sha2` crates, independently of
//!   `wss::signature`.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    future::Future,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use http::StatusCode;
use sha2::Sha256;
use tonic::{transport::Channel, Code, Status};
use wss::http_listener::{self, Bytes, Listener, Options};
use wss::proto::{
    delivery_service_client::DeliveryServiceClient, event_service_client::EventServiceClient,
    retry_policy_service_client::RetryPolicyServiceClient, tenant_service_client::TenantServiceClient,
    webhook_service_client::WebhookServiceClient, CreateRetryPolicyRequest, CreateTenantRequest, CreateWebhookRequest, DeadLetter,
    ListDeadLettersRequest, RetryPolicy, Tenant, Webhook,
};

/// How long a test waits for something the service should do "soon". Generous: the machine is a
/// loaded 2-core box running several services at once. Only an upper bound for giving up.
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------------

/// Runs `check` until it returns `Ok`, with short pauses between tries; panics after `within`
/// with `what` was expected and the last thing `check` saw.
pub async fn eventually<T, Fut>(within: Duration, what: &str, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {within:?}: expected {what}; last seen: {seen}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for a synchronous check.
pub async fn wait_until<T>(within: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    eventually(within, what, || std::future::ready(check())).await
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

pub fn redis_url() -> String {
    std::env::var("WSS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A stream entry id as `(milliseconds, sequence)`, for ordering.
pub fn parse_stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or_else(|| panic!("{id:?} is not a stream id"));
    (
        ms.parse().unwrap_or_else(|_| panic!("{id:?} is not a stream id")),
        seq.parse().unwrap_or_else(|_| panic!("{id:?} is not a stream id")),
    )
}

/// The state of consumer group `wss` on a stream.
#[derive(Debug, Clone)]
pub struct GroupState {
    pub last_delivered: (u64, u64),
    pub pending: u64,
}

/// This test's corner of Redis: every key it or its services touch starts with `prefix`.
pub struct Keyspace {
    pub prefix: String,
    client: redis::Client,
}

impl Keyspace {
    /// A fresh prefix `wsstest:<test>:<pid>:<nanos>:`; checks that Redis answers.
    pub fn new(test: &str) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos();
        let prefix = format!("wsstest:{test}:{}:{nanos}:", std::process::id());
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| panic!("WSS_TEST_REDIS_URL={url:?} is not a Redis URL: {e}"));
        let ks = Self { prefix, client };
        let pong: String = redis::cmd("PING").query(&mut ks.conn()).unwrap_or_else(|e| panic!("Redis at {url} does not answer PING: {e}"));
        assert_eq!(pong, "PONG");
        ks
    }

    pub fn conn(&self) -> redis::Connection {
        self.client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("cannot connect to the test Redis at {}: {e}; set WSS_TEST_REDIS_URL", redis_url()))
    }

    /// `<prefix>events`, the stream the service reads.
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// `XADD <prefix>events * <fields>`; returns the entry id.
    pub fn xadd(&self, fields: &[(&str, &str)]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.events()).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query(&mut self.conn()).unwrap_or_else(|e| panic!("XADD {fields:?} failed: {e}"))
    }

    /// An event in the usual shape: tenant, type, data.
    pub fn publish(&self, tenant: &str, event_type: &str, data: &str) -> String {
        self.xadd(&[("tenant", tenant), ("type", event_type), ("data", data)])
    }

    /// Group `wss` on `<prefix>events`: the last id handed to a consumer and the number pending.
    pub fn group_state(&self) -> Result<GroupState, String> {
        let mut con = self.conn();
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.events())
            .query(&mut con)
            .map_err(|e| format!("XINFO GROUPS {}: {e}", self.events()))?;
        let group = as_list(&groups)
            .into_iter()
            .map(|g| as_map(&g))
            .find(|g| g.get("name").map(String::as_str) == Some("wss"))
            .ok_or_else(|| format!("no consumer group wss on {} (yet): {groups:?}", self.events()))?;
        let last = group.get("last-delivered-id").ok_or_else(|| format!("XINFO GROUPS without last-delivered-id: {group:?}"))?;
        let pending: redis::Value =
            redis::cmd("XPENDING").arg(self.events()).arg("wss").query(&mut con).map_err(|e| format!("XPENDING: {e}"))?;
        let count = match as_list(&pending).first() {
            Some(redis::Value::Int(n)) => *n as u64,
            other => return Err(format!("unexpected XPENDING reply {other:?}")),
        };
        Ok(GroupState { last_delivered: parse_stream_id(last), pending: count })
    }

    /// Ok when the group has read up to `last_id` at least and nothing is pending: every entry up
    /// to it was handled and acknowledged.
    pub fn all_acknowledged_through(&self, last_id: &str) -> Result<(), String> {
        let state = self.group_state()?;
        if state.last_delivered < parse_stream_id(last_id) {
            return Err(format!("group wss has only read up to {:?}, not yet {last_id}", state.last_delivered));
        }
        if state.pending != 0 {
            return Err(format!("XPENDING {} wss = {} (expected 0)", self.events(), state.pending));
        }
        Ok(())
    }

    /// Every key of this test, via SCAN MATCH (never KEYS).
    pub fn keys(&self) -> Vec<String> {
        let mut con = self.conn();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) =
                match redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(format!("{}*", self.prefix)).arg("COUNT").arg(500).query(&mut con) {
                    Ok(reply) => reply,
                    Err(_) => return keys,
                };
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }
}

impl Drop for Keyspace {
    /// Best effort: a test that cannot clean up must not fail for it.
    fn drop(&mut self) {
        let Ok(mut con) = self.client.get_connection_with_timeout(Duration::from_secs(2)) else { return };
        for chunk in self.keys().chunks(100) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut con);
        }
    }
}

fn text(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::VerbatimString { text, .. } => text.clone(),
        redis::Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn as_list(value: &redis::Value) -> Vec<redis::Value> {
    match value {
        redis::Value::Array(items) | redis::Value::Set(items) => items.clone(),
        _ => Vec::new(),
    }
}

/// A RESP3 map, or a RESP2 flat list of key, value, key, value…
fn as_map(value: &redis::Value) -> BTreeMap<String, String> {
    match value {
        redis::Value::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), text(v))).collect(),
        redis::Value::Array(items) => items.chunks(2).filter(|c| c.len() == 2).map(|c| (text(&c[0]), text(&c[1]))).collect(),
        _ => BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The delivery history as stored (src/history.rs's layout, spelled here on its own: the tests
// that read records behind the API's back all go through these)
// ---------------------------------------------------------------------------------------------

/// The width of a history bucket (`wss::history::BUCKET_MS`): records written in the same hour
/// share the hash `<prefix>deliveries:records:<the hour's start, ms>`.
pub const HISTORY_BUCKET_MS: u64 = 3_600_000;

/// The hash that holds delivery `id`'s current record: the bucket of its score in the global
/// index `<prefix>deliveries` (the time of its last write). `None` when it is not indexed.
pub fn history_bucket_in(con: &mut redis::Connection, prefix: &str, id: &str) -> Option<String> {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{prefix}deliveries"))
        .arg(id)
        .query(con)
        .unwrap_or_else(|e| panic!("ZSCORE of delivery {id}: {e}"));
    let written = score? as u64;
    Some(format!("{prefix}deliveries:records:{}", written - written % HISTORY_BUCKET_MS))
}

/// Delivery `id`'s current history record (JSON), read from its bucket; `None` when it has none.
pub fn history_record_in(con: &mut redis::Connection, prefix: &str, id: &str) -> Option<serde_json::Value> {
    let bucket = history_bucket_in(con, prefix, id)?;
    let json: Option<String> = redis::cmd("HGET").arg(&bucket).arg(id).query(con).unwrap_or_else(|e| panic!("HGET {bucket} {id}: {e}"));
    json.map(|json| serde_json::from_str(&json).unwrap_or_else(|e| panic!("a history record is not JSON ({e}): {json}")))
}

impl Keyspace {
    /// See [`history_bucket_in`].
    pub fn history_bucket(&self, id: &str) -> Option<String> {
        history_bucket_in(&mut self.conn(), &self.prefix, id)
    }

    /// See [`history_record_in`].
    pub fn history_record(&self, id: &str) -> Option<serde_json::Value> {
        history_record_in(&mut self.conn(), &self.prefix, id)
    }

    /// Every delivery's history record in the buckets, the newest copy of each (a record
    /// rewritten in a later hour leaves an older copy in the earlier bucket until it expires).
    pub fn history_records(&self) -> Vec<serde_json::Value> {
        let buckets: Vec<String> =
            self.keys().into_iter().filter(|k| k.starts_with(&format!("{}deliveries:records:", self.prefix))).collect();
        let mut newest: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut con = self.conn();
        for bucket in buckets {
            let fields: BTreeMap<String, String> =
                redis::cmd("HGETALL").arg(&bucket).query(&mut con).unwrap_or_else(|e| panic!("HGETALL {bucket}: {e}"));
            for (id, json) in fields {
                let record: serde_json::Value =
                    serde_json::from_str(&json).unwrap_or_else(|e| panic!("a history record is not JSON ({e}): {json}"));
                let written = |r: &serde_json::Value| r["updated_at_ms"].as_u64().unwrap_or_default();
                if newest.get(&id).is_none_or(|known| written(known) < written(&record)) {
                    newest.insert(id, record);
                }
            }
        }
        newest.into_values().collect()
    }

    /// How many deliveries have a record in the buckets.
    pub fn history_record_count(&self) -> usize {
        self.history_records().len()
    }
}

// ---------------------------------------------------------------------------------------------
// The service process
// ---------------------------------------------------------------------------------------------

/// Lines of a child's stderr, kept whole.
#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<String>>,
    /// stderr reached EOF: the process has exited (or closed it).
    closed: AtomicBool,
}

/// `wss serve` running as a child process.
pub struct Service {
    child: Child,
    label: String,
    logs: Arc<Logs>,
    reader: Option<JoinHandle<()>>,
    /// The control plane's address, once its log line was seen.
    pub grpc_addr: Option<SocketAddr>,
}

impl Service {
    /// The environment of a test service on `ks`: loopback receivers over http, 8 senders,
    /// quick reads, debug logs, the gRPC port chosen by the OS.
    pub fn env(ks: &Keyspace, consumer: &str) -> Vec<(String, String)> {
        [
            ("WSS_REDIS_URL", redis_url()),
            ("WSS_KEY_PREFIX", ks.prefix.clone()),
            ("WSS_GRPC_ADDR", "127.0.0.1:0".into()),
            ("WSS_CONSUMER", consumer.into()),
            ("WSS_ALLOW_PRIVATE_TARGETS", "true".into()),
            ("WSS_ALLOW_HTTP", "true".into()),
            ("WSS_SENDER_THREADS", "8".into()),
            ("WSS_READ_BLOCK", "200ms".into()),
            ("WSS_LOG_LEVEL", "debug".into()),
            // A free port for /metrics and the status page (read back with `wait_for_metrics`), so
            // that parallel services do not collide.
            ("WSS_METRICS_ADDR", "127.0.0.1:0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Starts `wss serve` with exactly `env` (inherited `WSS_*`/`RUST_LOG` variables removed)
    /// and waits for nothing.
    pub fn spawn(label: &str, env: Vec<(String, String)>) -> Self {
        Self::spawn_with(label, &[], env)
    }

    /// [`Service::spawn`] with arguments after `serve` (flags, `--config FILE`).
    pub fn spawn_with(label: &str, args: &[&str], env: Vec<(String, String)>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wss"));
        cmd.arg("serve").args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WSS_") || name == "RUST_LOG" {
                cmd.env_remove(&name);
            }
        }
        cmd.envs(env);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", env!("CARGO_BIN_EXE_wss")));
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Logs::default());
        let sink = logs.clone();
        let reader = thread::spawn(move || {
            let mut stderr = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match stderr.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
                        sink.lines.lock().unwrap().push(text);
                    }
                }
            }
            sink.closed.store(true, Ordering::SeqCst);
        });
        Self { child, label: label.to_owned(), logs, reader: Some(reader), grpc_addr: None }
    }

    /// Starts a service on `ks` (plus `extra` variables) and waits until its control plane
    /// listens and its pipeline reads.
    pub async fn start(ks: &Keyspace, consumer: &str, extra: &[(&str, &str)]) -> Self {
        let mut env = Self::env(ks, consumer);
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut service = Self::spawn(consumer, env);
        service.wait_for_control_plane().await;
        service
            .wait_for(WAIT, "the pipeline to start (a line with `reading ` and `as consumer`)", |l| {
                l.contains("reading ") && l.contains("as consumer")
            })
            .await;
        service
    }

    /// Waits for `control plane listening on <addr>` and returns (and keeps) the address.
    pub async fn wait_for_control_plane(&mut self) -> SocketAddr {
        const MARK: &str = "control plane listening on ";
        let line = self.wait_for_log(MARK, WAIT).await;
        let rest = &line[line.find(MARK).expect("the line has the mark") + MARK.len()..];
        let addr = rest.split_whitespace().next().unwrap_or_default();
        let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("cannot read the gRPC address from {line:?}: {e}"));
        self.grpc_addr = Some(addr);
        addr
    }

    /// Waits for `metrics listening on <addr>` (the `/metrics` and status page listener, which
    /// the test environment binds to a free port) and returns the address.
    pub async fn wait_for_metrics(&self) -> SocketAddr {
        const MARK: &str = "metrics listening on ";
        let line = self.wait_for_log(MARK, WAIT).await;
        let rest = &line[line.find(MARK).expect("the line has the mark") + MARK.len()..];
        let addr = rest.split_whitespace().next().unwrap_or_default();
        addr.parse().unwrap_or_else(|e| panic!("cannot read the metrics address from {line:?}: {e}"))
    }

    /// Connects the control-plane clients.
    pub async fn grpc(&self) -> Grpc {
        Grpc::connect(self.grpc_addr.expect("wait_for_control_plane first")).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.logs.lines.lock().unwrap().clone()
    }

    /// Waits until a stderr line contains `needle`; returns that line.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        self.wait_for(within, &format!("a log line containing {needle:?}"), |l| l.contains(needle)).await
    }

    /// Waits until a stderr line satisfies `matches`; fails early when the process exited.
    pub async fn wait_for(&self, within: Duration, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let logs = self.logs.clone();
        wait_until(within, &format!("{what} from wss {}", self.label), || {
            // Read `closed` first: a line that arrives before EOF is then surely in `lines`.
            let closed = logs.closed.load(Ordering::SeqCst);
            if let Some(line) = logs.lines.lock().unwrap().iter().find(|l| matches(l)) {
                return Ok(line.clone());
            }
            if closed {
                panic!("wss {} exited (stderr closed) before logging {what}", self.label);
            }
            Err("no such line yet".into())
        })
        .await
    }

    /// `None` while the process runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on the child")
    }

    /// Sends SIGTERM and waits (up to 40 s: the shutdown grace is 30 s) for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").arg("-TERM").arg(&pid).status().expect("running kill");
        assert!(status.success(), "kill -TERM {pid} failed: {status}");
        let child = &mut self.child;
        let status = wait_until(Duration::from_secs(40), &format!("wss {} to exit after SIGTERM", self.label), || {
            child.try_wait().expect("try_wait").ok_or_else(|| "still running".to_owned())
        })
        .await;
        // All of stderr is in `lines` once the reader thread saw EOF.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }

    pub fn dump_logs(&self) {
        eprintln!("----- stderr of wss {} (pid {}) -----", self.label, self.child.id());
        for line in self.lines() {
            eprintln!("{line}");
        }
        eprintln!("----- end of wss {} -----", self.label);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        // On failure, or on request (`WSS_TEST_SHOW_LOGS=1 cargo test -- --nocapture`).
        if thread::panicking() || std::env::var_os("WSS_TEST_SHOW_LOGS").is_some() {
            self.dump_logs();
        }
    }
}

/// `GET http://<addr><path>` with an optional bearer token: (status, content type, body). Any
/// status is returned, not turned into an error.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, String, String), String> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).proxy(None).timeout_global(Some(Duration::from_secs(10))).build().into();
    let mut request = agent.get(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().map_err(|e| format!("GET {path}: {e}"))?;
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = response.body_mut().read_to_string().map_err(|e| format!("GET {path}: reading the body: {e}"))?;
    Ok((response.status().as_u16(), content_type, body))
}

// ---------------------------------------------------------------------------------------------
// HTTP receivers
// ---------------------------------------------------------------------------------------------

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self { status, delay: Duration::ZERO }
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// 0 for the first request this receiver got.
    pub index: usize,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the whole request (head and body) had been read.
    pub arrived: Instant,
    /// The status of the answer, once it was handed to the connection (None while the answer is
    /// pending, or when the client closed the connection before it).
    pub answered: Option<u16>,
}

impl Recorded {
    /// A header's value, by case-insensitive name; panics with the headers seen when absent.
    pub fn header(&self, name: &str) -> &str {
        self.opt_header(name).unwrap_or_else(|| panic!("request #{} has no {name} header; headers: {:?}", self.index, self.headers))
    }

    pub fn opt_header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn event_id(&self) -> &str {
        self.header("X-WSS-Event-Id")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("request #{} body is not JSON ({e}): {}", self.index, String::from_utf8_lossy(&self.body)))
    }

    /// Delivered: answered with a 2xx.
    pub fn delivered(&self) -> bool {
        self.answered.is_some_and(|s| (200..300).contains(&s))
    }
}

/// A webhook receiver on `127.0.0.1:<port>`: a [`Listener`] on a small runtime of its own
/// (keep-alive, connections served concurrently) answering request number `n` with `script(n)`
/// and recording it.
pub struct Receiver {
    pub addr: SocketAddr,
    records: Arc<Mutex<Vec<Recorded>>>,
    /// Dropping it stops the receiver and closes its connections.
    listener: Listener,
}

impl Receiver {
    /// Answers request number `n` (from 0) with `script(n)`. The script may block (some tests
    /// hold an answer back until they let it go): it runs on a blocking thread, not on the
    /// receiver's runtime.
    pub fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        let records: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let recs = records.clone();
        let script = Arc::new(script);
        let listener =
            Listener::bind_standalone(SocketAddr::from(([127, 0, 0, 1], 0)), Options::default(), move |request: http::Request<Bytes>| {
                let (recs, script) = (recs.clone(), script.clone());
                async move {
                    let arrived = Instant::now();
                    let index = {
                        let mut records = recs.lock().unwrap();
                        let index = records.len();
                        records.push(Recorded {
                            index,
                            method: request.method().to_string(),
                            path: request.uri().to_string(),
                            headers: request
                                .headers()
                                .iter()
                                .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
                                .collect(),
                            body: request.body().to_vec(),
                            arrived,
                            answered: None,
                        });
                        index
                    };
                    let reply = tokio::task::spawn_blocking(move || script(index)).await.expect("the receiver's script panicked");
                    if !reply.delay.is_zero() {
                        tokio::time::sleep(reply.delay).await; // the receiver's own slowness, not a test waiting for work
                    }
                    // Not reached when the client closed the connection meanwhile: the listener
                    // drops the answer with it.
                    recs.lock().unwrap()[index].answered = Some(reply.status);
                    let status = StatusCode::from_u16(reply.status).expect("a script answers with a valid status");
                    http_listener::text(status, format!("status {}", reply.status))
                }
            })
            .expect("binding a receiver on 127.0.0.1:0");
        Self { addr: listener.local_addr(), records, listener }
    }

    /// Always 200.
    pub fn ok() -> Self {
        Self::start(|_| Reply::status(200))
    }

    /// 500 for the first `n` requests, then 200.
    pub fn failing_first(n: usize) -> Self {
        Self::start(move |i| Reply::status(if i < n { 500 } else { 200 }))
    }

    /// Always `status`.
    pub fn always(status: u16) -> Self {
        Self::start(move |_| Reply::status(status))
    }

    /// 200 after `delay`.
    pub fn slow(delay: Duration) -> Self {
        Self::start(move |_| Reply { status: 200, delay })
    }

    /// `http://127.0.0.1:<port>/hook`
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until the receiver has at least `n` requests satisfying `filter`; returns all of
    /// them (not just the filtered ones).
    pub async fn wait_for_requests(&self, n: usize, what: &str, filter: impl Fn(&Recorded) -> bool) -> Vec<Recorded> {
        wait_until(WAIT, &format!("{n} {what} at receiver {}", self.addr), || {
            let all = self.requests();
            let seen = all.iter().filter(|r| filter(r)).count();
            if seen >= n {
                Ok(all)
            } else {
                Err(format!("{seen} so far, {} requests in all", all.len()))
            }
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures (an implementation independent of wss::signature)
// ---------------------------------------------------------------------------------------------

/// lowercase hex(HMAC-SHA256(secret, timestamp ++ body)), docs/contract.md §3.
pub fn wss_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks X-WSS-Signature against X-WSS-Timestamp and the raw body of `request`, and that the
/// timestamp is Unix seconds near now; panics naming what is wrong.
pub fn assert_signed(secret: &str, request: &Recorded) {
    let timestamp = request.header("X-WSS-Timestamp");
    let signature = request.header("X-WSS-Signature");
    let expected = wss_signature(secret, timestamp, &request.body);
    assert!(
        signature.split(',').any(|s| s.trim() == expected),
        "request #{}: X-WSS-Signature {signature:?} is not HMAC-SHA256(secret, {timestamp:?} ++ body) = {expected:?}; body: {}",
        request.index,
        String::from_utf8_lossy(&request.body)
    );
    let secs: u64 = timestamp.parse().unwrap_or_else(|_| panic!("X-WSS-Timestamp {timestamp:?} is not Unix seconds"));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(secs.abs_diff(now) < 600, "X-WSS-Timestamp {secs} is far from now ({now})");
}

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

/// Clients of the control plane, sharing one connection.
#[derive(Clone)]
pub struct Grpc {
    pub channel: Channel,
}

impl Grpc {
    pub async fn connect(addr: SocketAddr) -> Self {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the control plane at {addr}: {e:?}"));
        Self { channel }
    }

    pub fn tenants(&self) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(self.channel.clone())
    }

    pub fn webhooks(&self) -> WebhookServiceClient<Channel> {
        WebhookServiceClient::new(self.channel.clone())
    }

    pub fn policies(&self) -> RetryPolicyServiceClient<Channel> {
        RetryPolicyServiceClient::new(self.channel.clone())
    }

    pub fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel.clone())
    }

    pub fn deliveries(&self) -> DeliveryServiceClient<Channel> {
        DeliveryServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        tonic_health::pb::health_client::HealthClient::new(self.channel.clone())
    }

    pub async fn create_tenant(&self, tenant_id: &str) -> Tenant {
        self.tenants()
            .create_tenant(CreateTenantRequest {
                tenant_id: tenant_id.into(),
                display_name: format!("Tenant {tenant_id}"),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("CreateTenant {tenant_id}: {s:?}"))
            .into_inner()
    }

    /// A webhook of `tenant_id` on `url`; `edit` adjusts the request first.
    pub async fn create_webhook(&self, tenant_id: &str, url: &str, edit: impl FnOnce(&mut CreateWebhookRequest)) -> Webhook {
        let mut req = CreateWebhookRequest { tenant_id: tenant_id.into(), url: url.into(), ..Default::default() };
        edit(&mut req);
        let webhook = self.webhooks().create_webhook(req).await.unwrap_or_else(|s| panic!("CreateWebhook: {s:?}")).into_inner();
        assert!(!webhook.secret.is_empty(), "CreateWebhook must return the secret: {webhook:?}");
        webhook
    }

    /// A policy with the given attempts and backoffs, no jitter, 2 s attempt timeout.
    pub async fn create_policy(&self, policy_id: &str, max_attempts: u32, initial_backoff_ms: u64, max_backoff_ms: u64) -> RetryPolicy {
        self.policies()
            .create_retry_policy(CreateRetryPolicyRequest {
                policy_id: policy_id.into(),
                max_attempts: Some(max_attempts),
                initial_backoff: Some(pb_ms(initial_backoff_ms)),
                max_backoff: Some(pb_ms(max_backoff_ms)),
                multiplier: Some(2.0),
                jitter: Some(0.0),
                attempt_timeout: Some(pb_ms(2000)),
            })
            .await
            .unwrap_or_else(|s| panic!("CreateRetryPolicy {policy_id}: {s:?}"))
            .into_inner()
    }

    /// Every dead letter, of `tenant_id` or (empty) of all tenants, newest first.
    pub async fn dead_letters(&self, tenant_id: &str) -> Result<Vec<DeadLetter>, String> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .deliveries()
                .list_dead_letters(ListDeadLettersRequest {
                    tenant_id: tenant_id.into(),
                    page_size: 100,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("ListDeadLetters: {s:?}"))?
                .into_inner();
            all.extend(page.dead_letters);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }
}

/// Milliseconds as a google.protobuf.Duration.
pub fn pb_ms(ms: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// Asserts that `result` failed with `code` and, when `field` is given, that the message names it.
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, field: Option<&str>, what: &str) -> Status {
    let status = match result {
        Ok(value) => panic!("{what}: expected {code:?}, got success: {value:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{what}: expected {code:?}, got {:?}: {}", status.code(), status.message());
    if let Some(field) = field {
        assert!(status.message().contains(field), "{what}: the {code:?} message should name `{field}`: {:?}", status.message());
    }
    status
}

/// The nats-server binary (on PATH, or where Debian's package puts it), for the tests that run a
/// nats-server of their own.
pub fn nats_server_bin() -> String {
    ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .find(|b| Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
        .map(|b| (*b).to_owned())
        .expect("nats-server is installed (apt-get install -y nats-server; ./run-tests does)")
}
