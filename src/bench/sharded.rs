//! `wss bench --shards N [--instances M]`, and any run on a Redis Cluster
//! (`--redis-url redis+cluster://…`): sharded streams (docs/contract.md §8, docs/scaling.md).
//!
//! M services (`wss serve`, consumers of one group) on one key prefix with
//! `WSS_STREAM_SHARDS=N`; `--webhooks` tenants with a webhook each; `--events` events published
//! with pipelined `XADD`s, each to its tenant's shard stream (one pipeline per stream: on a
//! cluster a pipeline keeps to one slot). Measured: deliveries/s from the first `XADD` to the
//! last receipt, and what each part of the system spent on them — CPU per delivery of each
//! instance (`/proc`) and of each Redis master (`INFO cpu`, read on every master of a
//! cluster), and the events per shard. The single-Redis parts of the bench (commands per
//! delivery, memory, the bare pipeline) do not run here: on a cluster they would read one node.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use wss::{keys::Keys, redis_conn::Conn};

use super::{
    control::Control,
    receiver::Receiver,
    redis::{self, progress, EventShape, STALL},
    service::Service,
};

/// What a sharded run takes from the bench's plan and environment (passed in, so that this
/// module does not import the bench's root).
pub struct Run<'a> {
    pub events: u64,
    pub webhooks: usize,
    pub body_bytes: usize,
    pub quick: bool,
    pub run_id: &'a str,
    pub redis_url: &'a str,
    pub settings_file: &'a std::path::Path,
    /// `--wrap`, split at spaces.
    pub wrap: &'a [String],
}

/// The figures of a sharded run; the JSON object `--json` prints.
#[derive(Debug, Default, Serialize)]
pub struct ShardedReport {
    cluster: bool,
    shards: u32,
    instances: usize,
    events: u64,
    webhooks: u64,
    body_bytes: u64,
    deliveries_per_sec: f64,
    /// CPU time per delivery of each instance, µs (the instances' sum is the service's cost).
    instance_cpu_us_per_delivery: Vec<f64>,
    /// CPU time per delivery of each Redis master, µs, by address.
    redis_cpu_us_per_delivery: Vec<(String, f64)>,
    /// Events per shard stream.
    shard_events: Vec<u64>,
    /// The master holding the global keys' slot (control plane, history, stats, dead letters).
    global_master: Option<String>,
    cpus: u64,
    quick: bool,
}

/// The masters of the Redis at `url`: its own URL for one Redis, every master's for a cluster
/// (`CLUSTER NODES`; plain `redis://host:port`, credentials and TLS not carried over).
fn masters(url: &str, con: &mut Conn) -> anyhow::Result<Vec<String>> {
    if !con.is_cluster() {
        return Ok(vec![url.to_owned()]);
    }
    let nodes: String = ::redis::cmd("CLUSTER").arg("NODES").query(con).context("CLUSTER NODES")?;
    Ok(nodes
        .lines()
        .filter(|line| line.split_whitespace().nth(2).is_some_and(|flags| flags.split(',').any(|f| f == "master")))
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(|addr| format!("redis://{}", addr.split('@').next().unwrap_or(addr)))
        .collect())
}

/// The `host:port` of the master serving `key`'s slot on a cluster (`CLUSTER KEYSLOT`, `CLUSTER
/// SLOTS`): where the global keys live.
fn master_of(con: &mut Conn, key: &str) -> anyhow::Result<Option<String>> {
    if !con.is_cluster() {
        return Ok(None);
    }
    let slot: i64 = ::redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(con).context("CLUSTER KEYSLOT")?;
    let ranges: Vec<::redis::Value> = ::redis::cmd("CLUSTER").arg("SLOTS").query(con).context("CLUSTER SLOTS")?;
    for range in ranges {
        let ::redis::Value::Array(parts) = range else { continue };
        let (Some(::redis::Value::Int(from)), Some(::redis::Value::Int(to)), Some(::redis::Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        if (*from..=*to).contains(&slot) {
            let host = master.first().and_then(|h| ::redis::from_redis_value::<String>(h.clone()).ok()).unwrap_or_default();
            let port = master.get(1).and_then(|p| ::redis::from_redis_value::<i64>(p.clone()).ok()).unwrap_or_default();
            return Ok(Some(format!("{host}:{port}")));
        }
    }
    Ok(None)
}

/// `used_cpu_user + used_cpu_sys` of the Redis at `url`, seconds.
fn redis_cpu(url: &str) -> anyhow::Result<f64> {
    let mut con =
        ::redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5)).with_context(|| format!("connecting to {url}"))?;
    let info: String = ::redis::cmd("INFO").arg("cpu").query(&mut con).context("INFO cpu")?;
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0);
    Ok(field("used_cpu_user:") + field("used_cpu_sys:"))
}

/// Publishes `count` events numbered from `first`, each to its tenant's stream, in pipelines
/// of at most `batch` per stream.
fn publish(con: &mut Conn, keys: &Keys, shape: &EventShape, first: u64, count: u64, batch: u64) -> anyhow::Result<()> {
    let mut n = first;
    while n < first + count {
        let end = (n + batch * u64::from(keys.shards())).min(first + count);
        let mut by_stream: std::collections::BTreeMap<String, ::redis::Pipeline> = std::collections::BTreeMap::new();
        let data = shape.data(super::receiver::unix_micros());
        for i in n..end {
            let tenant = shape.tenant(i);
            by_stream
                .entry(keys.stream_of(&tenant))
                .or_insert_with(::redis::pipe)
                .cmd("XADD")
                .arg(keys.stream_of(&tenant))
                .arg("*")
                .arg("tenant")
                .arg(&tenant)
                .arg("type")
                .arg("bench.event")
                .arg("data")
                .arg(&data)
                .ignore();
        }
        for pipe in by_stream.values() {
            pipe.query::<()>(con).context("publishing events with XADD")?;
        }
        n = end;
    }
    Ok(())
}

/// Until nothing is pending in any shard's group (called once every event was received: all
/// were read, and only their acknowledgements may still be on the way).
fn wait_all_acknowledged(con: &mut Conn, keys: &Keys) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALL;
    for stream in keys.streams() {
        loop {
            let summary: ::redis::Value = ::redis::cmd("XPENDING").arg(&stream).arg("wss").query(con).context("XPENDING")?;
            let pending = match summary {
                ::redis::Value::Array(items) => match items.first() {
                    Some(::redis::Value::Int(n)) => *n,
                    _ => 0,
                },
                _ => 0,
            };
            if pending == 0 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "after {STALL:?}, {pending} entries of {stream} are still pending");
            thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// The sharded run; prints its table (or JSON) itself.
pub fn measure(plan: &Run, shards: u32, instances: usize, json: bool) -> anyhow::Result<()> {
    let prefix = format!("wssbench:{}:sharded:", plan.run_id);
    let mut con = redis::connect(plan.redis_url)?;
    let cluster = con.is_cluster();
    let keys = Keys::sharded(&prefix, shards, cluster);
    let masters = masters(plan.redis_url, &mut con)?;
    progress(format_args!(
        "sharded: {instances} instance(s), {shards} shard(s), {} with {} master(s)",
        if cluster { "a Redis Cluster" } else { "one Redis" },
        masters.len()
    ));
    let extra = [("WSS_STREAM_SHARDS", shards.to_string())];
    let mut services = Vec::new();
    for i in 0..instances.max(1) {
        services.push(Service::start(plan.wrap, plan.settings_file, plan.redis_url, &prefix, &format!("bench-sharded-{i}"), &extra)?);
    }
    let result = run(plan, plan.redis_url, &mut con, &keys, &services, &masters);
    drop(services);
    for master in &masters {
        if let Ok(mut con) = redis::connect(master) {
            let _ = redis::delete_keys(&mut con, &prefix);
        }
    }
    let mut report = result?;
    (report.cluster, report.shards, report.instances) = (cluster, shards, instances);
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

fn run(plan: &Run, url: &str, con: &mut Conn, keys: &Keys, services: &[Service], masters: &[String]) -> anyhow::Result<ShardedReport> {
    let fast = Receiver::start(200, Duration::ZERO)?;
    let shape = EventShape::new(plan.webhooks, plan.body_bytes);
    Control::connect(services[0].grpc)?.register(plan.webhooks, &fast, "")?;
    // Warm up: every instance's connections open, every webhook's routing loaded.
    let warm = (plan.webhooks as u64 * 2).max(200);
    publish(con, keys, &shape, 0, warm, 100)?;
    wait_for(&fast, warm)?;
    wait_all_acknowledged(con, keys)?;

    progress(format_args!("  {} events over {} webhooks", plan.events, plan.webhooks));
    let target = fast.stats.received() + plan.events;
    let cpu_before: Vec<f64> = services.iter().map(Service::cpu_secs).collect::<anyhow::Result<_>>()?;
    let redis_before: Vec<f64> = masters.iter().map(|m| redis_cpu(m)).collect::<anyhow::Result<_>>()?;
    let lengths_before: Vec<u64> = keys.streams().iter().map(|s| ::redis::cmd("XLEN").arg(s).query(con)).collect::<Result<_, _>>()?;
    let global_master = master_of(con, &keys.tenants)?;
    let start = Instant::now();
    let url_con = redis::connect(url)?;
    let (k, sh, events) = (keys.clone(), shape.clone(), plan.events);
    let publisher = thread::Builder::new().name("bench-publish".into()).spawn(move || {
        let mut con = url_con;
        publish(&mut con, &k, &sh, warm, events, 100)
    })?;
    wait_for(&fast, target)?;
    let elapsed = fast.stats.last_receipt().saturating_duration_since(start).as_secs_f64().max(1e-6);
    publisher.join().map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
    wait_all_acknowledged(con, keys)?;
    let per = |secs: f64| secs * 1e6 / plan.events as f64;
    let lengths: Vec<u64> = keys.streams().iter().map(|s| ::redis::cmd("XLEN").arg(s).query(con)).collect::<Result<_, _>>()?;
    let report = ShardedReport {
        events: plan.events,
        webhooks: plan.webhooks as u64,
        body_bytes: plan.body_bytes as u64,
        deliveries_per_sec: plan.events as f64 / elapsed,
        instance_cpu_us_per_delivery: services
            .iter()
            .zip(&cpu_before)
            .map(|(s, b)| s.cpu_secs().map(|c| per(c - b)))
            .collect::<anyhow::Result<_>>()?,
        redis_cpu_us_per_delivery: masters
            .iter()
            .zip(&redis_before)
            .map(|(m, b)| redis_cpu(m).map(|c| (m.trim_start_matches("redis://").to_owned(), per(c - b))))
            .collect::<anyhow::Result<_>>()?,
        shard_events: lengths.iter().zip(&lengths_before).map(|(a, b)| a.saturating_sub(*b)).collect(),
        global_master,
        cpus: thread::available_parallelism().map_or(1, |n| n.get() as u64),
        quick: plan.quick,
        ..Default::default()
    };
    anyhow::ensure!(fast.stats.bad_signatures() == 0, "{} sampled requests had a bad signature", fast.stats.bad_signatures());
    Ok(report)
}

/// Until `receiver` has had `target` requests; fails after [`STALL`] without progress.
fn wait_for(receiver: &Receiver, target: u64) -> anyhow::Result<()> {
    let mut seen = receiver.stats.received();
    let mut progress_at = Instant::now();
    while receiver.stats.received() < target {
        let now = receiver.stats.received();
        if now != seen {
            (seen, progress_at) = (now, Instant::now());
        }
        anyhow::ensure!(progress_at.elapsed() < STALL, "no delivery for {STALL:?} ({now} of {target} received)");
        thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn table(r: &ShardedReport) -> String {
    let instances: Vec<String> = r.instance_cpu_us_per_delivery.iter().map(|us| format!("{us:.0}")).collect();
    let masters: Vec<String> = r
        .redis_cpu_us_per_delivery
        .iter()
        .map(|(addr, us)| format!("{addr}{} {us:.1}", if r.global_master.as_deref() == Some(addr) { " (global keys)" } else { "" }))
        .collect();
    let shards: Vec<String> = r.shard_events.iter().map(u64::to_string).collect();
    format!(
        "sharded streams: {} shard(s), {} instance(s), {}\n\
         throughput ({} events, {} webhooks, {} B bodies)  {:.0} /s\n\
         CPU per delivery, each instance  {} µs\n\
         CPU per delivery, each Redis master  {} µs\n\
         events per shard  {}\n\
         {} CPU(s) on this machine{}\n",
        r.shards,
        r.instances,
        if r.cluster { "a Redis Cluster" } else { "one Redis" },
        r.events,
        r.webhooks,
        r.body_bytes,
        r.deliveries_per_sec,
        instances.join(" / "),
        masters.join(", "),
        shards.join(" "),
        r.cpus,
        if r.quick { " (--quick: figures mean little)" } else { "" }
    )
}
