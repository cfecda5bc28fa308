//! The bench's side of Redis: a private `redis-server` when none is given, publishing events
//! the way producers do (`XADD`, pipelined), waiting until the consumer group has acknowledged
//! everything, loading a large configuration straight into the stored hashes, and deleting a
//! scenario's keys afterwards when the Redis is someone else's.
//!
//! Events are `XADD <prefix>events * tenant t<i> type bench.event data {"t":<µs>,"pad":"…"}`:
//! event `n` goes to tenant `n % tenants`, `t` is the publish time in microseconds since the Unix
//! epoch (the receiver computes latencies from it) and `pad` brings the request body — the
//! envelope wss builds around `data` — to the size asked for.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use redis::Value;
use serde_json::json;
use wss::redis_conn::Conn;
use wss::{
    domain::model::{Tenant, Webhook},
    keys::Keys,
    pipeline::event::{envelope, Event},
};

use super::receiver::{secret_of, unix_micros};

/// A line of the bench's progress, on stderr.
pub(super) fn progress(what: impl std::fmt::Display) {
    eprintln!("bench: {what}");
}

/// A run that makes no progress for this long has failed.
pub(super) const STALL: Duration = Duration::from_secs(60);

/// XADDs per pipeline.
const PUBLISH_BATCH: usize = 500;

/// A `redis-server` of the bench's own on a free loopback port, without persistence; stopped
/// (and its directory removed) on drop.
pub struct PrivateRedis {
    child: Child,
    pid: u32,
    pub url: String,
    dir: PathBuf,
}

impl PrivateRedis {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut last_error = String::new();
        for _ in 0..5 {
            // A port the OS just handed out and took back: free, barring a race we retry.
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .args(["--logfile", "redis.log", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server (install it: apt-get install redis-server; or pass --redis-url)")?;
            let url = format!("redis://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!("redis-server exited with {status} (see {}/redis.log)", dir.display());
                    break;
                }
                let pong = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
                if pong.is_ok() {
                    let pid = child.id();
                    return Ok(Self { child, pid, url, dir: dir.to_owned() });
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("could not start a private redis-server: {last_error}")
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.join("redis.log"));
    }
}

/// A connection to the Redis (or Redis Cluster) at `url`.
pub fn connect(url: &str) -> anyhow::Result<Conn> {
    let target =
        wss::redis_conn::RedisTarget::new(url).with_context(|| format!("{} is not a Redis URL", wss::redis_conn::redact_url(url)))?;
    target.connect_quietly(Duration::from_secs(5)).with_context(|| format!("connecting to Redis at {}", target.display_url()))
}

/// What events look like: tenants `t0…t<n-1>`, bodies of about `body_bytes`.
#[derive(Clone)]
pub struct EventShape {
    pub tenants: usize,
    /// The first tenant's number: events go to `t<first>…t<first + tenants - 1>`.
    first: usize,
    /// Padding that brings the envelope to the body size asked for.
    pad: String,
}

impl EventShape {
    pub fn new(tenants: usize, body_bytes: usize) -> Self {
        // The envelope of an event with a typical stream id and tenant, without padding.
        let bare = sample_envelope_len(&format!("t{}", tenants.saturating_sub(1)), "");
        Self { tenants: tenants.max(1), first: 0, pad: "x".repeat(body_bytes.saturating_sub(bare)) }
    }

    /// The same shape over tenants from `t<first>` on.
    pub fn starting_at(mut self, first: usize) -> Self {
        self.first = first;
        self
    }

    /// The `data` of an event published at `t` (µs since the epoch).
    pub fn data(&self, t: u64) -> String {
        format!(r#"{{"t":{t},"pad":"{}"}}"#, self.pad)
    }

    pub fn tenant(&self, n: u64) -> String {
        format!("t{}", self.first as u64 + n % self.tenants as u64)
    }

    /// A body as wss would send it for webhook `i` (for the raw HTTP run; its publish time is
    /// a real one, so that it has the size of the pipeline's).
    pub fn body_for(&self, i: usize) -> Vec<u8> {
        let event = event(&format!("t{i}"), &self.data(unix_micros()));
        envelope(&event)
    }
}

fn event(tenant: &str, data: &str) -> Event {
    Event {
        stream_id: "1767225600000-0".into(),
        id: "1767225600000-0".into(),
        event_type: "bench.event".into(),
        tenant: tenant.into(),
        created_at_ms: 1_767_225_600_000,
        data: serde_json::value::RawValue::from_string(data.to_owned()).expect("the bench writes valid JSON"),
        attributes: Vec::new(),
        only_webhook: None,
    }
}

fn sample_envelope_len(tenant: &str, pad: &str) -> usize {
    envelope(&event(tenant, &format!(r#"{{"t":1767225600000000,"pad":"{pad}"}}"#))).len()
}

/// Publishes `count` events, numbered from `first`, in pipelines of [`PUBLISH_BATCH`] with
/// the publish time in each; returns the last entry id.
pub fn publish(con: &mut Conn, stream: &str, shape: &EventShape, first: u64, count: u64) -> anyhow::Result<String> {
    let mut last = String::new();
    let mut n = first;
    let end = first + count;
    while n < end {
        let batch = (end - n).min(PUBLISH_BATCH as u64);
        last = publish_batch(con, stream, shape, n, batch)?;
        n += batch;
    }
    Ok(last)
}

fn publish_batch(con: &mut Conn, stream: &str, shape: &EventShape, first: u64, count: u64) -> anyhow::Result<String> {
    let data = shape.data(unix_micros());
    let mut pipe = redis::pipe();
    for n in first..first + count {
        pipe.cmd("XADD").arg(stream).arg("*").arg("tenant").arg(shape.tenant(n)).arg("type").arg("bench.event").arg("data").arg(&data);
    }
    let ids: Vec<String> = pipe.query(con).context("publishing events with XADD")?;
    Ok(ids.last().cloned().unwrap_or_default())
}

/// Publishes open-loop at `rate` events per second for `duration`: every millisecond it sends
/// as many as are due, whether or not the earlier ones were delivered. Returns the number sent
/// and the last entry id.
pub fn publish_at_rate(con: &mut Conn, stream: &str, shape: &EventShape, rate: f64, duration: Duration) -> anyhow::Result<(u64, String)> {
    let start = Instant::now();
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let mut sent = 0u64;
    let mut last = String::new();
    while sent < total {
        let due = ((rate * start.elapsed().as_secs_f64()) as u64).min(total);
        if due > sent {
            let count = (due - sent).min(PUBLISH_BATCH as u64);
            last = publish_batch(con, stream, shape, sent, count)?;
            sent += count;
        } else {
            let next = start + Duration::from_secs_f64((sent + 1) as f64 / rate);
            thread::sleep(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(1)));
        }
    }
    Ok((sent, last))
}

/// Waits until consumer group `wss` has read through `last_id` and acknowledged everything.
pub fn wait_all_acknowledged(con: &mut Conn, stream: &str, last_id: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let target = parse_id(last_id);
    loop {
        let (read, pending) = group_state(con, stream)?;
        if read >= target && pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("after {within:?}, group wss on {stream} has read up to {read:?} (want {target:?}) with {pending} entries pending");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The group's last delivered id and its number of pending entries.
fn group_state(con: &mut Conn, stream: &str) -> anyhow::Result<((u64, u64), u64)> {
    let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(stream).query(con).context("XINFO GROUPS")?;
    let Value::Array(groups) = groups else { return Ok(((0, 0), 0)) };
    for group in groups {
        let fields: Vec<(String, Value)> = match group {
            Value::Array(items) => items.chunks(2).filter(|c| c.len() == 2).map(|c| (text(&c[0]), c[1].clone())).collect(),
            Value::Map(pairs) => pairs.into_iter().map(|(k, v)| (text(&k), v)).collect(),
            _ => continue,
        };
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        if get("name").map(|v| text(&v)).as_deref() != Some("wss") {
            continue;
        }
        let read = get("last-delivered-id").map(|v| parse_id(&text(&v))).unwrap_or((0, 0));
        let pending = match get("pending") {
            Some(Value::Int(n)) => n as u64,
            _ => 0,
        };
        return Ok((read, pending));
    }
    Ok(((0, 0), 0))
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

/// Writes `tenants` tenants with `per_tenant` webhooks each straight into the configuration
/// hashes, exactly as the control plane stores them (the JSON of `wss::domain::model`'s types,
/// secrets in clear as without `WSS_ENCRYPTION_KEY`, ids shaped like generated ones), then bumps
/// `<prefix>config:version`. Registering 100,000 webhooks through gRPC would take minutes (each
/// write reloads the whole snapshot); what is measured here is the service holding them.
pub fn load_configuration(con: &mut Conn, keys: &Keys, tenants: usize, per_tenant: usize, url: &str) -> anyhow::Result<()> {
    let now = wss::clock::now_ms();
    for chunk_start in (0..tenants).step_by(500) {
        let mut pipe = redis::pipe();
        for t in chunk_start..(chunk_start + 500).min(tenants) {
            // Through the model's own types, so that what is written is what the store writes
            // (fields this code does not name take their serde defaults).
            let tenant: Tenant = serde_json::from_value(json!({
                "id": format!("idle-{t:05}"),
                "display_name": format!("Idle tenant {t}"),
                "default_retry_policy_id": "",
                "disabled": false,
                "created_at_ms": now,
                "updated_at_ms": now,
            }))?;
            pipe.hset(&keys.tenants, &tenant.id, serde_json::to_string(&tenant)?).ignore();
            for w in 0..per_tenant {
                let n = t * per_tenant + w;
                let webhook: Webhook = serde_json::from_value(json!({
                    "id": webhook_id(n as u64),
                    "tenant_id": tenant.id,
                    "url": url,
                    "event_types": ["order.*"],
                    "retry_policy_id": "",
                    "headers": {},
                    "description": "",
                    "enabled": true,
                    "signature_scheme": "wss",
                    "secret": secret_of(n),
                    "created_at_ms": now,
                    "updated_at_ms": now,
                }))?;
                pipe.hset(&keys.webhooks, &webhook.id, serde_json::to_string(&webhook)?).ignore();
            }
        }
        pipe.query::<()>(con).context("writing the configuration hashes")?;
    }
    redis::cmd("INCR").arg(&keys.config_version).query::<u64>(con).context("bumping the config version")?;
    Ok(())
}

/// `wh_` + 26 lowercase base32 characters, like the ids the control plane generates.
fn webhook_id(n: u64) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n;
    let mut id = String::with_capacity(29);
    id.push_str("wh_");
    for i in 0..26 {
        if i == 12 {
            x = n; // the low part spells n itself, so that ids are unique
        }
        id.push(ALPHABET[(x & 31) as usize] as char);
        x >>= 5;
    }
    id
}

/// Commands Redis has run so far, by name (`INFO commandstats`), for the commands-per-delivery
/// figure: unlike CPU time, a count that the machine's load does not change.
pub fn command_counts(con: &mut Conn) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).context("INFO commandstats")?;
    let mut counts = std::collections::BTreeMap::new();
    for line in info.lines() {
        // cmdstat_xadd:calls=200200,usec=1062040,…
        let Some((name, stats)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
        let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|n| n.parse().ok()).unwrap_or(0);
        counts.insert(name.to_owned(), calls);
    }
    Ok(counts)
}

/// Deletes every key starting with `prefix` (SCAN + UNLINK).
pub fn delete_keys(con: &mut Conn, prefix: &str) -> anyhow::Result<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(format!("{prefix}*")).arg("COUNT").arg(2000).query(con)?;
        if !keys.is_empty() {
            redis::cmd("UNLINK").arg(&keys).query::<()>(con)?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// `INFO memory`'s `used_memory`: bytes Redis holds.
pub fn used_memory(con: &mut Conn) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query(con).context("INFO memory")?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory without used_memory")
}

/// `MEMORY USAGE <key> SAMPLES 0`: the bytes of one key, every element counted (0 when absent).
pub fn key_memory(con: &mut Conn, key: &str) -> anyhow::Result<u64> {
    let bytes: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0).query(con).context("MEMORY USAGE")?;
    Ok(bytes.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn bodies_have_the_size_asked_for() {
        let shape = EventShape::new(20, 1024);
        let body = shape.body_for(7);
        assert!((1020..=1028).contains(&body.len()), "{}", body.len());
    }

    #[test]
    fn generated_webhook_ids_are_unique_and_shaped_like_real_ones() {
        let ids: HashSet<String> = (0..100_000).map(webhook_id).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(ids.iter().all(|id| id.len() == 29 && id.starts_with("wh_")));
    }
}
