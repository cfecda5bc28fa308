//! `wss bench`: measures the whole system on the machine it runs on — throughput, latency, the
//! machine's raw HTTP limit, slow receivers, memory — and prints a table, or one JSON object.
//!
//! # Why it is built this way
//!
//! A webhook sender is chosen for throughput, latency and footprint, and those depend on the
//! machine, so the figures must be reproducible by anyone with one command, and honest: the
//! service runs as it does in production (`wss serve`, a child process with default settings,
//! registered through its gRPC control plane, fed by `XADD`), the receivers verify signatures,
//! and the pipeline's throughput is set against what the same HTTP client achieves on the same
//! machine in the same run — the figure that says how much the pipeline costs.
//!
//! - **Redis**: a private `redis-server` on a free loopback port (no persistence), or the one
//!   `--redis-url` names — then every key the bench wrote is deleted afterwards.
//! - **The service**: `wss serve` started from this executable ([`service`]), once per scenario,
//!   with a key prefix of its own, so that its memory is the scenario's alone.
//! - **Receivers** ([`receiver`]): in this process, on `127.0.0.1:0`, `wss::http_listener`
//!   (hyper on a two-thread runtime of its own, keep-alive). Publish times travel in the events,
//!   so latency is measured on one clock.
//!
//! # What is measured
//!
//! 1. **Throughput**: `--events` events (1 KiB bodies) over `--webhooks` webhooks (one tenant
//!    each), published with pipelined `XADD`; deliveries/s from the first `XADD` to the last
//!    receipt. CPU time of the service, Redis and the bench process is read from `/proc` to show
//!    where the machine's cores went.
//! 2. **Latency**: the same service, publishing open-loop at half the measured throughput for
//!    `--latency-time`; `XADD` → receipt percentiles.
//! 3. **Raw limit** ([`raw`]): the same client and thread count POSTing pre-signed bodies straight
//!    to the same receiver; `ratio = throughput / raw`.
//!    **Bare pipeline** ([`bare`], issue 18), in the same part, after the raw limit: the least
//!    pipeline that does the unavoidable work with wss's ingredients — `XREADGROUP` in batches,
//!    sign, POST with the same agent and thread count to the same receiver, `XACK` in batches —
//!    as a child process (`wss bench-bare`) measured like the service: the same events,
//!    deliveries/s, CPU and context switches from `/proc`, Redis commands;
//!    `ratio_to_bare = throughput / bare`.
//! 4. **Slow receivers**: 50 webhooks answering after 100 ms, the default sender pool;
//!    deliveries/s and the service's largest RSS during the run.
//! 5. **Scaling**: deliveries/s with 1, 20 and 1000 webhooks (`--scaling`).
//! 6. **Idle footprint**: RSS with `--idle-tenants` tenants × 10 webhooks loaded (written straight
//!    into the stored hashes, see [`redis::load_configuration`]) and nothing to do.
//! 7. **Isolation**: 100 webhooks (one tenant each), all healthy, against the same 100 with
//!    one whose receiver accepts and never answers ([`receiver::Receiver::hanging`]); the same
//!    `--isolation-events` events in both, so the 99 healthy webhooks get the same deliveries.
//!    Deliveries/s of the 99 from the first `XADD` to their last receipt, a fresh service per
//!    run, three pairs in ABBAAB order (medians) so that neither a drift in the machine's load
//!    nor going first or second in a pair favours one side. The hanging webhook runs under the default policy, whose attempt timeout
//!    bounds its requests; the run does not wait for them — it stops counting when the healthy
//!    deliveries are all in, and the service is killed with its hanging entries still pending.
//! 8. **Backlog**: two tenants' huge backlogs beside a healthy neighbour (issue 12): `--backlog-events`
//!    small events, half to a webhook that answers 500 to everything and half to one that takes
//!    1 s per request, all under the default policy; once every one is handed to the durable
//!    backlog (its entry acknowledged), a third tenant publishes open-loop at 100 events/s for
//!    `--latency-time`. Reported: the neighbour's `XADD` → receipt p99, the service's largest RSS
//!    over the part, how fast the backlog filled, and the Redis memory each waiting delivery
//!    costs (`used_memory` grown, less what the stream itself grew, over the deliveries waiting).
//! 9. **HTTPS** ([`https_throughput`]): the throughput run's events and webhooks over HTTPS, to
//!    the same receiver speaking TLS (`wss::http_listener` with rustls) with a certificate for
//!    127.0.0.1 from a CA the bench makes, trusted through `WSS_TARGET_CA_FILE` — the production
//!    path, https-only included; deliveries/s beside the plain figure, and the TLS connections
//!    (handshakes) the receiver accepted, which keep-alive keeps near the sender pool's size.
//! 10. **FIFO** ([`fifo`]): `--fifo-events` events to one FIFO webhook (`ORDERING_FIFO`, one
//!     attempt at a time in stream order), with receivers answering at once and after 5 ms;
//!     deliveries/s of each. The cost of the order: every delivery goes through the durable
//!     backlog and waits for the one before it to be recorded. Unordered webhooks never take that
//!     path: the throughput run above is their figure, unchanged by FIFO's existence.
//!
//! `--quick` shrinks everything to a smoke run of seconds; its figures mean little.

pub mod bare;
mod broker;
mod control;
mod raw;
mod receiver;
mod redis;
mod service;
mod sharded;

use std::{
    fmt::Write as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::Serialize;
use wss::{config::Layers, keys::Keys};

use self::{
    control::Control,
    receiver::Receiver,
    receiver::ReceiverPki,
    redis::{progress, EventShape, PrivateRedis, STALL},
    service::Service,
};

/// `wss bench`'s flags. Unset sizes take the full-run default, or the `--quick` one.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Use this Redis instead of starting a private redis-server; every key the bench writes
    /// (under `wssbench:<pid>:`) is deleted afterwards.
    #[arg(long)]
    redis_url: Option<String>,
    /// Events in the throughput run [default: 100000; --quick: 2000].
    #[arg(long)]
    events: Option<u64>,
    /// Webhooks (one tenant each) the throughput run spreads its events over [default: 20; --quick: 4].
    #[arg(long)]
    webhooks: Option<usize>,
    /// Request body size of the throughput, latency and scaling runs, bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// How long the open-loop latency run publishes [default: 5s; --quick: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    latency_time: Option<Duration>,
    /// About how long the slow-receiver run lasts [default: 5s; --quick: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    slow_time: Option<Duration>,
    /// Webhook counts of the scaling series, comma-separated [default: 1,20,1000; --quick: 1,20,100].
    #[arg(long, value_delimiter = ',')]
    scaling: Option<Vec<usize>>,
    /// Events per run of the scaling series [default: 20000; --quick: 1000].
    #[arg(long)]
    scaling_events: Option<u64>,
    /// Tenants, with 10 webhooks each, loaded for the idle footprint [default: 10000; --quick: 100].
    #[arg(long)]
    idle_tenants: Option<usize>,
    /// Events of each isolation run, spread over its 100 webhooks [default: 50000; --quick: 2000].
    #[arg(long)]
    isolation_events: Option<u64>,
    /// Events of the backlog part, half to a failing webhook and half to a slow one [default: 200000; --quick: 2000].
    #[arg(long)]
    backlog_events: Option<u64>,
    /// Events of each FIFO run, to one FIFO webhook [default: 2000; --quick: 200].
    #[arg(long)]
    fifo_events: Option<u64>,
    /// A smoke run: every size small, seconds instead of minutes. The figures mean little.
    #[arg(long)]
    quick: bool,
    /// Where the events come from: the Redis stream, or a broker (docs/sources.md): with nats
    /// or amqp only the throughput part runs (throughput, then latency at half of it), its
    /// events published to the broker [default: redis].
    #[arg(long, default_value = "redis", value_parser = ["redis", "nats", "amqp"])]
    source: String,
    /// The NATS server (with JetStream) of `--source nats`.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The RabbitMQ of `--source amqp`.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Sharded streams (docs/scaling.md): with more than 1, or with a Redis Cluster URL
    /// (`--redis-url redis+cluster://host:port,…`, default 8 there), only the sharded part runs:
    /// `--instances` services with `WSS_STREAM_SHARDS` set to this, the throughput of
    /// `--events` over `--webhooks`, CPU per delivery of each instance and each Redis master.
    #[arg(long)]
    shards: Option<u32>,
    /// Services sharing the work in the sharded part.
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Print one JSON object (the figures) instead of the table.
    #[arg(long)]
    json: bool,
    /// Run only these parts, comma-separated: throughput (with latency, the raw limit and the bare
    /// pipeline), slow, scaling, isolation, idle, backlog, https, fifo [default: all].
    #[arg(long, value_delimiter = ',', value_parser = ["throughput", "slow", "scaling", "isolation", "idle", "backlog", "https", "fifo"])]
    only: Vec<String>,
    /// Run the service under this command, split at spaces (`--wrap "valgrind --tool=callgrind"`,
    /// `--wrap "perf record -g -o perf.data"`): for profiling; memory and CPU figures are then
    /// the wrapper's.
    #[arg(long)]
    wrap: Option<String>,
    /// A setting of the service under test, `KEY=VALUE` with a key of docs/configuration.md's
    /// table (`--set sender_threads=128`); repeatable. Without it the defaults are measured.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

/// The sizes of one run, resolved from the flags.
#[derive(Debug, Clone)]
struct Plan {
    events: u64,
    webhooks: usize,
    body_bytes: usize,
    latency_time: Duration,
    slow_time: Duration,
    scaling: Vec<usize>,
    scaling_events: u64,
    idle_tenants: usize,
    isolation_events: u64,
    isolation_rounds: usize,
    backlog_events: u64,
    fifo_events: u64,
    quick: bool,
    only: Vec<String>,
}

/// Webhooks of the slow-receiver run (the 50).
const SLOW_WEBHOOKS: usize = 50;
/// The slow receivers' answer time.
const SLOW_DELAY: Duration = Duration::from_millis(100);
/// Webhooks of the isolation runs (issue 4's 100); the last one is the one that hangs.
const ISOLATION_WEBHOOKS: usize = 100;
/// Webhooks per tenant in the idle-footprint run.
const IDLE_WEBHOOKS_PER_TENANT: usize = 10;
/// The backlog part's slow webhook's answer time.
const BACKLOG_SLOW_DELAY: Duration = Duration::from_secs(1);
/// The backlog part's neighbour's publishing rate, events/s.
const NEIGHBOUR_RATE: f64 = 100.0;
/// The FIFO part's receiver answer times.
const FIFO_DELAYS: [Duration; 2] = [Duration::ZERO, Duration::from_millis(5)];

impl Plan {
    fn new(args: &Args) -> Self {
        fn pick<T>(quick: bool, small: T, full: T) -> T {
            if quick {
                small
            } else {
                full
            }
        }
        let q = args.quick;
        Self {
            events: args.events.unwrap_or(pick(q, 2_000, 100_000)).max(1),
            webhooks: args.webhooks.unwrap_or(pick(q, 4, 20)).max(1),
            body_bytes: args.body_bytes,
            latency_time: args.latency_time.unwrap_or(pick(q, Duration::from_secs(1), Duration::from_secs(5))),
            slow_time: args.slow_time.unwrap_or(pick(q, Duration::from_secs(1), Duration::from_secs(5))),
            scaling: args.scaling.clone().unwrap_or_else(|| pick(q, vec![1, 20, 100], vec![1, 20, 1000])),
            scaling_events: args.scaling_events.unwrap_or(pick(q, 1_000, 20_000)).max(1),
            idle_tenants: args.idle_tenants.unwrap_or(pick(q, 100, 10_000)),
            // At least one event per webhook, so that the hanging one gets requests.
            isolation_events: args.isolation_events.unwrap_or(pick(q, 2_000, 50_000)).max(ISOLATION_WEBHOOKS as u64),
            isolation_rounds: pick(q, 1, 3),
            backlog_events: args.backlog_events.unwrap_or(pick(q, 2_000, 200_000)).max(2),
            fifo_events: args.fifo_events.unwrap_or(pick(q, 200, 2_000)).max(1),
            quick: q,
            only: args.only.clone(),
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

/// Everything a scenario needs from the run: where Redis is, the validated settings file, the
/// sender pool size those settings give.
struct Env {
    dir: PathBuf,
    settings_file: PathBuf,
    redis_url: String,
    /// Ours, when no `--redis-url` was given: its CPU time is part of the picture.
    private_redis: Option<PrivateRedis>,
    sender_threads: usize,
    /// The settings the bare pipeline shares with the service.
    bare: bare::Setup,
    run_id: String,
    /// `--wrap`, split at spaces.
    wrap: Vec<String>,
}

impl Env {
    fn prepare(args: &Args) -> anyhow::Result<Self> {
        let run_id = std::process::id().to_string();
        let dir = std::env::temp_dir().join(format!("wss-bench-{run_id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The service's settings go through a file it reads with `--config`, checked here first
        // by the same code, so that an unknown key or a bad value stops the bench at once.
        let mut toml = String::new();
        for setting in &args.settings {
            let Some((key, value)) = setting.split_once('=') else {
                bail!("--set {setting:?}: write KEY=VALUE, e.g. --set sender_threads=128");
            };
            writeln!(toml, "{} = {}", key.trim(), serde_json::to_string(value.trim())?)?;
        }
        let settings_file = dir.join("settings.toml");
        std::fs::write(&settings_file, toml).with_context(|| format!("writing {}", settings_file.display()))?;
        let config = Layers::new().file(&settings_file).build().context("--set")?;
        let (redis_url, private_redis) = match &args.redis_url {
            Some(url) => (url.clone(), None),
            None => {
                let redis = PrivateRedis::start(&dir.join("redis"))?;
                (redis.url.clone(), Some(redis))
            }
        };
        let wrap = args.wrap.iter().flat_map(|w| w.split_whitespace().map(str::to_owned)).collect();
        let bare = bare::Setup { threads: config.sender_threads, read_batch: config.read_batch, max_event_bytes: config.max_event_bytes };
        Ok(Self { dir, settings_file, redis_url, private_redis, sender_threads: config.sender_threads, bare, run_id, wrap })
    }

    fn redis_cpu_secs(&self) -> f64 {
        self.private_redis.as_ref().and_then(|r| service::cpu_secs(r.pid()).ok()).unwrap_or(0.0)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        drop(self.private_redis.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One service on a key prefix of its own; killed, and its keys deleted from a Redis that is
/// not ours, when dropped.
struct Scenario<'e> {
    env: &'e Env,
    prefix: String,
    keys: Keys,
    service: Service,
}

impl<'e> Scenario<'e> {
    /// Starts the service; `prepare` runs on Redis first (loading a configuration, say).
    fn start(
        env: &'e Env,
        name: &str,
        extra: &[(&str, String)],
        prepare: impl FnOnce(&mut wss::redis_conn::Conn, &Keys) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let prefix = format!("wssbench:{}:{name}:", env.run_id);
        let keys = Keys::new(&prefix);
        prepare(&mut redis::connect(&env.redis_url)?, &keys)?;
        let consumer = format!("bench-{name}");
        let service = Service::start(&env.wrap, &env.settings_file, &env.redis_url, &prefix, &consumer, extra)?;
        Ok(Self { env, prefix, keys, service })
    }

    fn control(&self) -> anyhow::Result<Control> {
        Control::connect(self.service.grpc)
    }

    fn redis(&self) -> anyhow::Result<wss::redis_conn::Conn> {
        redis::connect(&self.env.redis_url)
    }
}

impl Drop for Scenario<'_> {
    fn drop(&mut self) {
        if self.env.private_redis.is_none() {
            if let Ok(mut con) = redis::connect(&self.env.redis_url) {
                let _ = redis::delete_keys(&mut con, &self.prefix);
            }
        }
    }
}

/// A burst's outcome.
struct Burst {
    per_sec: f64,
    /// Redis commands per delivery, by name (a private Redis only: a shared one counts others').
    redis_commands: std::collections::BTreeMap<String, f64>,
    service_cpu: f64,
    /// Context switches of the service per delivery.
    service_switches: f64,
    /// The part of `service_cpu` spent in the kernel.
    service_system_cpu: f64,
    redis_cpu: f64,
    bench_cpu: f64,
    max_rss_mib: f64,
}

/// Publishes `events` as fast as Redis takes them (on a thread of its own) and waits until the
/// receiver has them all; then until the group has acknowledged them, so the next run starts
/// from quiet.
fn burst(scn: &mut Scenario<'_>, receiver: &Receiver, shape: &EventShape, events: u64) -> anyhow::Result<Burst> {
    let target = receiver.stats.received() + events;
    let private = scn.env.private_redis.is_some();
    let commands_before = if private { redis::command_counts(&mut scn.redis()?)? } else { Default::default() };
    let (service_cpu, redis_cpu, bench_cpu) = (scn.service.cpu_secs()?, scn.env.redis_cpu_secs(), service::cpu_secs(std::process::id())?);
    let switches = scn.service.context_switches();
    let service_system = service::cpu_split(scn.service.pid())?.1;
    let mut con = scn.redis()?;
    let stream = scn.keys.events.clone();
    let shape_for_publisher = shape.clone();
    let start = Instant::now();
    let publisher = thread::Builder::new()
        .name("bench-publish".into())
        .spawn(move || redis::publish(&mut con, &stream, &shape_for_publisher, 0, events))?;
    let max_rss_mib = wait_for_receipts(scn, receiver, target)?;
    let elapsed = receiver.stats.last_receipt().saturating_duration_since(start);
    let last_id = publisher.join().map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
    redis::wait_all_acknowledged(&mut scn.redis()?, &scn.keys.events, &last_id, STALL)?;
    let mut redis_commands = std::collections::BTreeMap::new();
    if private {
        for (name, calls) in redis::command_counts(&mut scn.redis()?)? {
            let delta = calls.saturating_sub(commands_before.get(&name).copied().unwrap_or(0));
            // The bench's own polling (XINFO, INFO) is not the service's work.
            if delta > 0 && !name.starts_with("xinfo") && name != "info" {
                redis_commands.insert(name, delta as f64 / events as f64);
            }
        }
    }
    let burst = Burst {
        per_sec: events as f64 / elapsed.as_secs_f64().max(1e-6),
        redis_commands,
        service_cpu: scn.service.cpu_secs()? - service_cpu,
        service_switches: scn.service.context_switches().saturating_sub(switches) as f64 / events as f64,
        service_system_cpu: service::cpu_split(scn.service.pid())?.1 - service_system,
        redis_cpu: scn.env.redis_cpu_secs() - redis_cpu,
        bench_cpu: service::cpu_secs(std::process::id())? - bench_cpu,
        max_rss_mib,
    };
    Ok(burst)
}

/// Waits until `receiver` has had `target` requests, watching the service; returns the
/// largest RSS seen meanwhile (sampled every 100 ms).
fn wait_for_receipts(scn: &mut Scenario<'_>, receiver: &Receiver, target: u64) -> anyhow::Result<f64> {
    let mut max_rss: f64 = scn.service.rss_mib()?;
    let mut seen = receiver.stats.received();
    let mut progress_at = Instant::now();
    let mut sampled_at = Instant::now();
    loop {
        let now = receiver.stats.received();
        if now >= target {
            return Ok(max_rss.max(scn.service.rss_mib()?));
        }
        if now != seen {
            seen = now;
            progress_at = Instant::now();
        } else if progress_at.elapsed() > STALL {
            bail!("no delivery for {STALL:?} ({now} of {target} received); the service's last lines:\n{}", scn.service.tail());
        }
        if sampled_at.elapsed() >= Duration::from_millis(100) {
            scn.service.check_alive()?;
            max_rss = max_rss.max(scn.service.rss_mib()?);
            sampled_at = Instant::now();
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Registers `webhooks` tenants with a webhook each, then delivers a few events to each so that
/// connections are open before anything is timed.
fn set_up(scn: &mut Scenario<'_>, receiver: &Receiver, webhooks: usize, shape: &EventShape) -> anyhow::Result<()> {
    scn.control()?.register(webhooks, receiver, "")?;
    let warm = (webhooks as u64 * 2).max(200);
    let target = receiver.stats.received() + warm;
    let last = redis::publish(&mut scn.redis()?, &scn.keys.events, shape, 0, warm)?;
    wait_for_receipts(scn, receiver, target)?;
    redis::wait_all_acknowledged(&mut scn.redis()?, &scn.keys.events, &last, STALL)
}

/// The figures; the JSON object `--json` prints.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Where the events came from (`--source`): empty for the Redis stream.
    #[serde(skip_serializing_if = "String::is_empty")]
    source: String,
    /// Throughput: deliveries/s from the first XADD to the last receipt.
    deliveries_per_sec: f64,
    /// The same client and threads straight to the receiver.
    raw_per_sec: f64,
    ratio: f64,
    /// The bare pipeline ([`bare`]) on the same events, receiver, agent and thread count.
    bare_per_sec: f64,
    /// Its CPU time per delivery, µs, read from `/proc` as the service's is.
    bare_cpu_us_per_delivery: f64,
    bare_context_switches_per_delivery: f64,
    /// Its Redis commands per delivery, the producer's XADD included (a private Redis only).
    bare_redis_commands_per_delivery: f64,
    /// Redis's CPU time per delivery of the bare run, µs (a private Redis only): beside
    /// `redis_cpu_us_per_delivery`, what wss's own Redis work costs.
    bare_redis_cpu_us_per_delivery: f64,
    /// `deliveries_per_sec / bare_per_sec`; issue 18 asks ≥ 0.8.
    ratio_to_bare: f64,
    /// XADD → receipt at half the throughput, open loop.
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    latency_rate_per_sec: f64,
    latency_samples: u64,
    /// 100 ms receivers, 50 webhooks, default pool.
    slow_receiver_per_sec: f64,
    slow_receiver_rss_mib: f64,
    /// VmHWM of the throughput run's service.
    peak_rss_mib: f64,
    /// RSS with `idle_webhooks` webhooks loaded and nothing to do.
    idle_rss_mib_10k_webhooks: f64,
    idle_tenants: u64,
    idle_webhooks: u64,
    idle_start_secs: f64,
    /// Isolation: deliveries/s of 99 healthy webhooks beside a healthy 100th (medians).
    isolation_baseline_per_sec: f64,
    /// The same beside a 100th that never answers.
    isolation_hanging_per_sec: f64,
    /// `isolation_hanging_per_sec / isolation_baseline_per_sec`; issue 4 asks ≥ 0.9.
    isolation_ratio: f64,
    isolation_events: u64,
    /// Requests the hanging receiver got (and never answered) over all rounds.
    isolation_hanging_requests: u64,
    /// Backlog: the neighbour's XADD → receipt p99 (and p50) beside two huge backlogs.
    neighbor_p99_ms: f64,
    neighbor_p50_ms: f64,
    neighbor_events: u64,
    /// The service's largest RSS (VmHWM) over the backlog part.
    backlog_rss_mib: f64,
    /// Deliveries waiting in the backlog when the neighbour published.
    backlog_waiting: u64,
    /// Events handed to the backlog per second, from the first XADD to the last XACK.
    backlog_fill_per_sec: f64,
    /// Redis memory per waiting delivery, bytes.
    redis_bytes_per_waiting_delivery: f64,
    /// Deliveries/s by number of webhooks.
    scaling: Vec<ScalingPoint>,
    /// Where the CPU went in the throughput run, µs per delivery.
    service_cpu_us_per_delivery: f64,
    redis_cpu_us_per_delivery: f64,
    bench_cpu_us_per_delivery: f64,
    raw_bench_cpu_us_per_request: f64,
    service_context_switches_per_delivery: f64,
    /// The same figure under the name issue #18 and docs/performance.md use.
    context_switches_per_delivery: f64,
    /// The kernel's part of `service_cpu_us_per_delivery` (system calls, scheduling).
    service_system_cpu_us_per_delivery: f64,
    /// Redis commands per delivery in the throughput run, the producer's XADD included (with a
    /// private Redis only), in all and by command.
    redis_commands_per_delivery: f64,
    redis_commands: std::collections::BTreeMap<String, f64>,
    signatures_verified: u64,
    /// The run.
    events: u64,
    webhooks: u64,
    body_bytes: u64,
    sender_threads: u64,
    cpus: u64,
    load_before: String,
    load_after: String,
    quick: bool,
    /// HTTPS: the throughput run's events over TLS to a receiver with a private CA's certificate.
    https_per_sec: f64,
    /// TLS connections (handshakes) the HTTPS receiver accepted, warm-up included.
    https_connections: u64,
    https_service_cpu_us_per_delivery: f64,
    /// FIFO: deliveries/s to one FIFO webhook, by receiver answer time.
    fifo: Vec<FifoPoint>,
    fifo_events: u64,
}

#[derive(Debug, Serialize)]
struct FifoPoint {
    receiver_ms: u64,
    deliveries_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct ScalingPoint {
    webhooks: u64,
    deliveries_per_sec: f64,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// Runs the bench and prints its figures.
pub fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::new(&args);
    let env = Env::prepare(&args)?;
    let cluster = wss::redis_conn::cluster_nodes(&env.redis_url).is_some();
    let shards = args.shards.unwrap_or(if cluster { 8 } else { 1 }).max(1);
    if cluster || shards > 1 {
        let run = sharded::Run {
            events: plan.events,
            webhooks: plan.webhooks,
            body_bytes: plan.body_bytes,
            quick: plan.quick,
            run_id: &env.run_id,
            redis_url: &env.redis_url,
            settings_file: &env.settings_file,
            wrap: &env.wrap,
        };
        return sharded::measure(&run, shards, args.instances, args.json);
    }
    let report = match args.source.as_str() {
        "redis" => measure(&plan, &env)?,
        source => {
            let url = if source == "nats" { &args.nats_url } else { &args.amqp_url };
            measure_broker(&plan, &env, source, url)?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else if !report.source.is_empty() {
        print!("{}", broker_table(&report));
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

impl Report {
    /// A report of a run of `plan` in `env`, its figures still to come.
    fn of_run(plan: &Plan, env: &Env) -> Self {
        Report {
            events: plan.events,
            webhooks: plan.webhooks as u64,
            body_bytes: plan.body_bytes as u64,
            sender_threads: env.sender_threads as u64,
            cpus: thread::available_parallelism().map_or(1, |n| n.get() as u64),
            load_before: load_average(),
            quick: plan.quick,
            ..Default::default()
        }
    }

    /// The latency part's figures: percentiles of `latencies`, measured at `rate` events/s.
    fn record_latencies(&mut self, latencies: &Latencies, rate: f64) {
        (self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms) =
            (latencies.ms_at(0.50), latencies.ms_at(0.90), latencies.ms_at(0.99), latencies.ms_at(1.0));
        self.latency_rate_per_sec = rate;
        self.latency_samples = latencies.count();
        progress(format_args!("  p50 {:.2} ms, p99 {:.2} ms over {} events", self.p50_ms, self.p99_ms, self.latency_samples));
    }

    /// Counts the receiver's verified signatures; fails when a sampled request had a bad one
    /// (`what`: which requests, for the message).
    fn check_signatures(&mut self, receiver: &Receiver, what: &str) -> anyhow::Result<()> {
        self.signatures_verified += receiver.stats.verified();
        let bad = receiver.stats.bad_signatures();
        anyhow::ensure!(bad == 0, "{bad} sampled {what} had a bad signature");
        Ok(())
    }
}

fn measure(plan: &Plan, env: &Env) -> anyhow::Result<Report> {
    let mut report = Report::of_run(plan, env);
    progress(format_args!("Redis at {}, {} sender threads, load {}", env.redis_url, env.sender_threads, report.load_before));
    let fast = Receiver::start(200, Duration::ZERO)?;
    if plan.runs("throughput") {
        throughput_latency_raw(plan, env, &fast, &mut report)?;
    }
    if plan.runs("slow") {
        slow_receivers(plan, env, &mut report)?;
    }
    if plan.runs("scaling") {
        scaling(plan, env, &fast, &mut report)?;
    }
    if plan.runs("isolation") {
        isolation(plan, env, &mut report)?;
    }
    if plan.runs("https") {
        https_throughput(plan, env, &mut report)?;
    }
    if plan.runs("fifo") {
        fifo(plan, env, &mut report)?;
    }
    report.check_signatures(&fast, "requests")?;
    drop(fast);
    if plan.runs("idle") {
        idle(plan, env, &mut report)?;
    }
    if plan.runs("backlog") {
        backlog(plan, env, &mut report)?;
    }
    report.load_after = load_average();
    Ok(report)
}

/// Latency samples (µs, as the receiver records them), sorted.
struct Latencies(Vec<u64>);

impl Latencies {
    fn of(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    /// The nearest-rank percentile `p` (0..=1), in ms; 0 without samples.
    fn ms_at(&self, p: f64) -> f64 {
        let rank = ((self.0.len() as f64 * p).ceil() as usize).saturating_sub(1);
        self.0.get(rank).map_or(0.0, |us| *us as f64 / 1000.0)
    }

    fn count(&self) -> u64 {
        self.0.len() as u64
    }
}

/// `--source nats|amqp`: the throughput part with events published to the broker.
fn measure_broker(plan: &Plan, env: &Env, source: &str, url: &str) -> anyhow::Result<Report> {
    let mut report = Report { source: source.to_owned(), ..Report::of_run(plan, env) };
    let broker = broker::Broker::connect(source, url)?;
    progress(format_args!(
        "{source} at {}, {} sender threads, load {}",
        wss::redis_conn::redact_url(url),
        env.sender_threads,
        report.load_before
    ));
    let fast = Receiver::start(200, Duration::ZERO)?;
    let shape = EventShape::new(plan.webhooks, plan.body_bytes);
    let mut scn = Scenario::start(env, source, &[("WSS_SOURCES", broker.source_url())], |_, _| Ok(()))?;
    // Registers the webhooks and warms up through the Redis stream, which wss always reads.
    set_up(&mut scn, &fast, plan.webhooks, &shape)?;
    progress(format_args!("throughput from {source}: {} events over {} webhooks", plan.events, plan.webhooks));
    let target = fast.stats.received() + plan.events;
    let service_cpu = scn.service.cpu_secs()?;
    let start = Instant::now();
    let published = thread::scope(|scope| -> anyhow::Result<f64> {
        let publisher = scope.spawn(|| broker.publish(&shape, 0, plan.events));
        report.peak_rss_mib = wait_for_receipts(&mut scn, &fast, target)?;
        publisher.join().map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
        Ok(fast.stats.last_receipt().saturating_duration_since(start).as_secs_f64())
    })?;
    report.deliveries_per_sec = plan.events as f64 / published.max(1e-6);
    report.service_cpu_us_per_delivery = (scn.service.cpu_secs()? - service_cpu) * 1e6 / plan.events as f64;
    broker.wait_all_acknowledged(STALL)?;
    progress(format_args!(
        "  {:.0} deliveries/s; service CPU {:.0} µs per delivery; every message acknowledged",
        report.deliveries_per_sec, report.service_cpu_us_per_delivery
    ));
    let rate = (report.deliveries_per_sec / 2.0).max(1.0);
    progress(format_args!("latency from {source}: open loop at {rate:.0} events/s for {:?}", plan.latency_time));
    let base = fast.stats.received();
    fast.stats.record_latencies();
    let sent = broker.publish_at_rate(&shape, plan.events, rate, plan.latency_time)?;
    wait_for_receipts(&mut scn, &fast, base + sent)?;
    let latencies = Latencies::of(fast.stats.take_latencies());
    broker.wait_all_acknowledged(STALL)?;
    report.record_latencies(&latencies, rate);
    report.check_signatures(&fast, "requests")?;
    drop(scn);
    report.load_after = load_average();
    Ok(report)
}

/// Throughput, then latency at half of it on the same service, then the raw limit.
fn throughput_latency_raw(plan: &Plan, env: &Env, fast: &Receiver, report: &mut Report) -> anyhow::Result<()> {
    let shape = EventShape::new(plan.webhooks, plan.body_bytes);
    let mut scn = Scenario::start(env, "throughput", &[], |_, _| Ok(()))?;
    set_up(&mut scn, fast, plan.webhooks, &shape)?;
    progress(format_args!("throughput: {} events over {} webhooks", plan.events, plan.webhooks));
    let b = burst(&mut scn, fast, &shape, plan.events)?;
    report.deliveries_per_sec = b.per_sec;
    let per = |cpu: f64| cpu * 1e6 / plan.events as f64;
    report.service_cpu_us_per_delivery = per(b.service_cpu);
    report.redis_cpu_us_per_delivery = per(b.redis_cpu);
    report.bench_cpu_us_per_delivery = per(b.bench_cpu);
    report.service_context_switches_per_delivery = b.service_switches;
    report.context_switches_per_delivery = b.service_switches;
    report.service_system_cpu_us_per_delivery = per(b.service_system_cpu);
    report.redis_commands_per_delivery = b.redis_commands.values().sum();
    report.redis_commands = b.redis_commands;
    progress(format_args!(
        "  {:.0} deliveries/s; CPU per delivery: service {:.0} µs ({:.0} in the kernel), Redis {:.0} µs, bench {:.0} µs; {:.1} context switches",
        b.per_sec,
        report.service_cpu_us_per_delivery,
        report.service_system_cpu_us_per_delivery,
        report.redis_cpu_us_per_delivery,
        report.bench_cpu_us_per_delivery,
        b.service_switches
    ));

    let rate = (b.per_sec / 2.0).max(1.0);
    progress(format_args!("latency: open loop at {rate:.0} events/s for {:?}", plan.latency_time));
    let target_base = fast.stats.received();
    fast.stats.record_latencies();
    let (sent, last) = redis::publish_at_rate(&mut scn.redis()?, &scn.keys.events, &shape, rate, plan.latency_time)?;
    wait_for_receipts(&mut scn, fast, target_base + sent)?;
    let latencies = Latencies::of(fast.stats.take_latencies());
    redis::wait_all_acknowledged(&mut scn.redis()?, &scn.keys.events, &last, STALL)?;
    report.record_latencies(&latencies, rate);
    report.peak_rss_mib = scn.service.peak_rss_mib()?;
    drop(scn);

    progress(format_args!("raw HTTP: {} requests from {} threads", plan.events, env.sender_threads));
    let (raw, raw_cpu) = raw::run(fast, env.sender_threads, plan.webhooks, plan.events, &shape)?;
    report.raw_per_sec = raw;
    report.raw_bench_cpu_us_per_request = raw_cpu;
    report.ratio = report.deliveries_per_sec / raw;
    progress(format_args!("  {raw:.0} requests/s ({raw_cpu:.0} µs CPU each); ratio {:.2}", report.ratio));

    progress(format_args!("bare pipeline: {} events over {} webhooks, {} sender threads", plan.events, plan.webhooks, env.sender_threads));
    let stream = format!("wssbench:{}:bare:events", env.run_id);
    let redis_cpu_secs = || env.redis_cpu_secs();
    let run = bare::Run {
        wrap: &env.wrap,
        redis_url: &env.redis_url,
        private_redis: env.private_redis.is_some(),
        redis_cpu_secs: &redis_cpu_secs,
        setup: env.bare,
    };
    let measured = bare::measure(&run, &stream, fast, &shape, plan.events);
    if env.private_redis.is_none() {
        if let Ok(mut con) = redis::connect(&env.redis_url) {
            let _ = redis::delete_keys(&mut con, &format!("wssbench:{}:bare:", env.run_id));
        }
    }
    let bare = measured?;
    report.bare_per_sec = bare.per_sec;
    report.bare_cpu_us_per_delivery = bare.cpu_us_per_delivery;
    report.bare_context_switches_per_delivery = bare.context_switches_per_delivery;
    report.bare_redis_commands_per_delivery = bare.redis_commands_per_delivery;
    report.bare_redis_cpu_us_per_delivery = bare.redis_cpu_us_per_delivery;
    report.ratio_to_bare = report.deliveries_per_sec / bare.per_sec;
    progress(format_args!(
        "  {:.0} deliveries/s; CPU {:.0} µs, {:.1} context switches, {:.2} Redis commands per delivery; wss/bare {:.2} (CPU {:.2}×)",
        bare.per_sec,
        bare.cpu_us_per_delivery,
        bare.context_switches_per_delivery,
        bare.redis_commands_per_delivery,
        report.ratio_to_bare,
        report.service_cpu_us_per_delivery / bare.cpu_us_per_delivery.max(1e-9)
    ));
    Ok(())
}

/// The throughput run over HTTPS: a receiver with a certificate from a CA made now, which the
/// service trusts through `WSS_TARGET_CA_FILE`, in its default https-only mode.
fn https_throughput(plan: &Plan, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let pki = ReceiverPki::new().context("making the HTTPS receiver's certificates")?;
    let ca_file = env.dir.join("receivers-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).with_context(|| format!("writing {}", ca_file.display()))?;
    let receiver = Receiver::start_tls(200, Duration::ZERO, pki.server)?;
    let shape = EventShape::new(plan.webhooks, plan.body_bytes);
    let extra = [("WSS_TARGET_CA_FILE", ca_file.display().to_string()), ("WSS_ALLOW_HTTP", "false".to_owned())];
    let mut scn = Scenario::start(env, "https", &extra, |_, _| Ok(()))?;
    set_up(&mut scn, &receiver, plan.webhooks, &shape)?;
    progress(format_args!("https: {} events over {} webhooks, TLS to a private CA's certificate", plan.events, plan.webhooks));
    let b = burst(&mut scn, &receiver, &shape, plan.events)?;
    report.https_per_sec = b.per_sec;
    report.https_service_cpu_us_per_delivery = b.service_cpu * 1e6 / plan.events as f64;
    report.https_connections = receiver.connections();
    progress(format_args!(
        "  {:.0} deliveries/s over {} TLS connections; service CPU {:.0} µs per delivery",
        b.per_sec, report.https_connections, report.https_service_cpu_us_per_delivery
    ));
    report.check_signatures(&receiver, "HTTPS requests")?;
    Ok(())
}

/// 50 webhooks answering after 100 ms, the default pool.
fn slow_receivers(plan: &Plan, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let slow = Receiver::start(200, SLOW_DELAY)?;
    let mut scn = Scenario::start(env, "slow", &[], |_, _| Ok(()))?;
    let shape = EventShape::new(SLOW_WEBHOOKS, plan.body_bytes);
    set_up(&mut scn, &slow, SLOW_WEBHOOKS, &shape)?;
    // About `slow_time` if the pool were the only bound: threads ÷ 100 ms.
    let events = ((env.sender_threads as f64 / SLOW_DELAY.as_secs_f64()) * plan.slow_time.as_secs_f64()).max(SLOW_WEBHOOKS as f64) as u64;
    progress(format_args!("slow receivers: {events} events over {SLOW_WEBHOOKS} webhooks answering after {SLOW_DELAY:?}"));
    let b = burst(&mut scn, &slow, &shape, events)?;
    report.slow_receiver_per_sec = b.per_sec;
    report.slow_receiver_rss_mib = b.max_rss_mib;
    progress(format_args!("  {:.0} deliveries/s, RSS up to {:.1} MiB", b.per_sec, b.max_rss_mib));
    report.check_signatures(&slow, "requests to the slow receiver")?;
    Ok(())
}

/// Deliveries/s to one FIFO webhook, a fresh service and receiver for each answer time.
fn fifo(plan: &Plan, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    report.fifo_events = plan.fifo_events;
    for delay in FIFO_DELAYS {
        let receiver = Receiver::start(200, delay)?;
        let mut scn = Scenario::start(env, &format!("fifo-{}ms", delay.as_millis()), &[], |_, _| Ok(()))?;
        scn.control()?.register_fifo(&receiver)?;
        let shape = EventShape::new(1, plan.body_bytes);
        progress(format_args!("fifo: {} events to one FIFO webhook answering after {delay:?}", plan.fifo_events));
        let b = burst(&mut scn, &receiver, &shape, plan.fifo_events)?;
        report.fifo.push(FifoPoint { receiver_ms: delay.as_millis() as u64, deliveries_per_sec: b.per_sec });
        progress(format_args!("  {:.0} deliveries/s", b.per_sec));
        report.check_signatures(&receiver, "FIFO requests")?;
    }
    Ok(())
}

/// Deliveries/s by number of webhooks, a fresh service each.
fn scaling(plan: &Plan, env: &Env, fast: &Receiver, report: &mut Report) -> anyhow::Result<()> {
    for &webhooks in &plan.scaling {
        let mut scn = Scenario::start(env, &format!("scaling-{webhooks}"), &[], |_, _| Ok(()))?;
        let shape = EventShape::new(webhooks, plan.body_bytes);
        let registering = Instant::now();
        set_up(&mut scn, fast, webhooks, &shape)?;
        progress(format_args!(
            "scaling: {} events over {webhooks} webhooks (registered in {:.1} s)",
            plan.scaling_events,
            registering.elapsed().as_secs_f64()
        ));
        let b = burst(&mut scn, fast, &shape, plan.scaling_events)?;
        report.scaling.push(ScalingPoint { webhooks: webhooks as u64, deliveries_per_sec: b.per_sec });
        progress(format_args!("  {:.0} deliveries/s", b.per_sec));
    }
    Ok(())
}

/// Deliveries/s of 99 healthy webhooks beside a healthy 100th and beside a hanging one,
/// `isolation_rounds` pairs in ABBA order, medians reported.
fn isolation(plan: &Plan, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let healthy = Receiver::start(200, Duration::ZERO)?;
    let hanging = Receiver::hanging()?;
    let events = plan.isolation_events;
    progress(format_args!(
        "isolation: {events} events over {ISOLATION_WEBHOOKS} webhooks, all healthy and with one that never answers ({} pairs)",
        plan.isolation_rounds
    ));
    let (mut baseline, mut with_hanging) = (Vec::new(), Vec::new());
    for round in 0..plan.isolation_rounds {
        // A healthy 100th of its own, so that `healthy` counts the 99 alone in both runs.
        let hundredth = Receiver::start(200, Duration::ZERO)?;
        let run_baseline = || isolation_run(plan, env, &format!("isolation-baseline-{round}"), &healthy, &hundredth);
        let run_hanging = || isolation_run(plan, env, &format!("isolation-hanging-{round}"), &healthy, &hanging);
        // Every other round the hanging run goes first (ABBA…), so that whatever favours the
        // first or the second run of a pair does not favour one side.
        if round % 2 == 0 {
            baseline.push(run_baseline()?);
            with_hanging.push(run_hanging()?);
        } else {
            with_hanging.push(run_hanging()?);
            baseline.push(run_baseline()?);
        }
        progress(format_args!(
            "  round {round}: {:.0} deliveries/s to the 99 all healthy, {:.0} beside the hanging one",
            baseline[round], with_hanging[round]
        ));
    }
    // Without requests to the hanging receiver the second run measured nothing of interest.
    report.isolation_hanging_requests = hanging.stats.received();
    anyhow::ensure!(report.isolation_hanging_requests > 0, "the hanging webhook got no request: the isolation run measured nothing");
    report.check_signatures(&healthy, "requests in the isolation runs")?;
    report.isolation_events = events;
    report.isolation_baseline_per_sec = median(&mut baseline);
    report.isolation_hanging_per_sec = median(&mut with_hanging);
    report.isolation_ratio = report.isolation_hanging_per_sec / report.isolation_baseline_per_sec;
    progress(format_args!(
        "  medians: {:.0} / {:.0} deliveries/s, ratio {:.2}; the hanging receiver got {} requests",
        report.isolation_baseline_per_sec, report.isolation_hanging_per_sec, report.isolation_ratio, report.isolation_hanging_requests
    ));
    Ok(())
}

/// One isolation run on a fresh service: webhooks 0–98 at `healthy`, webhook 99 at `last`;
/// publishes `isolation_events` events over the 100 tenants and returns the deliveries/s of the
/// 99, from the first `XADD` to the last of their receipts.
fn isolation_run(plan: &Plan, env: &Env, name: &str, healthy: &Receiver, last: &Receiver) -> anyhow::Result<f64> {
    let last_index = ISOLATION_WEBHOOKS - 1;
    let mut scn = Scenario::start(env, name, &[], |_, _| Ok(()))?;
    scn.control()?.register_at(ISOLATION_WEBHOOKS, |i| if i == last_index { last.url(i) } else { healthy.url(i) }, "")?;
    // Connections to the 99 are opened before the clock starts, by events to their tenants only
    // (t0…t98): the hanging webhook's entries would never be acknowledged.
    let warm_shape = EventShape::new(last_index, plan.body_bytes);
    let warm = last_index as u64 * 2;
    let target = healthy.stats.received() + warm;
    let warm_last = redis::publish(&mut scn.redis()?, &scn.keys.events, &warm_shape, 0, warm)?;
    wait_for_receipts(&mut scn, healthy, target)?;
    redis::wait_all_acknowledged(&mut scn.redis()?, &scn.keys.events, &warm_last, STALL)?;

    // Event n goes to tenant n % 100: those with n % 100 == 99 to the last webhook.
    let shape = EventShape::new(ISOLATION_WEBHOOKS, plan.body_bytes);
    let events = plan.isolation_events;
    let to_healthy = events - events / ISOLATION_WEBHOOKS as u64;
    let target = healthy.stats.received() + to_healthy;
    let mut con = scn.redis()?;
    let stream = scn.keys.events.clone();
    let start = Instant::now();
    let publisher =
        thread::Builder::new().name("bench-publish".into()).spawn(move || redis::publish(&mut con, &stream, &shape, 0, events))?;
    wait_for_receipts(&mut scn, healthy, target)?;
    let elapsed = healthy.stats.last_receipt().saturating_duration_since(start);
    publisher.join().map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
    // Dropping the scenario kills the service, whatever it still holds for the last webhook.
    Ok(to_healthy as f64 / elapsed.as_secs_f64().max(1e-6))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// RSS with a large configuration loaded and nothing to do.
fn idle(plan: &Plan, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let webhooks = plan.idle_tenants * IDLE_WEBHOOKS_PER_TENANT;
    progress(format_args!("idle: loading {} tenants × {IDLE_WEBHOOKS_PER_TENANT} webhooks", plan.idle_tenants));
    let url = "http://127.0.0.1:9/idle".to_owned();
    let mut loaded_at = Instant::now();
    let scn = Scenario::start(env, "idle", &[], |con, keys| {
        redis::load_configuration(con, keys, plan.idle_tenants, IDLE_WEBHOOKS_PER_TENANT, &url)?;
        loaded_at = Instant::now();
        Ok(())
    })?;
    report.idle_start_secs = loaded_at.elapsed().as_secs_f64();
    scn.service.wait_idle(Duration::from_secs(1), STALL)?;
    report.idle_rss_mib_10k_webhooks = scn.service.rss_mib()?;
    report.idle_tenants = plan.idle_tenants as u64;
    report.idle_webhooks = webhooks as u64;
    progress(format_args!(
        "  RSS {:.1} MiB idle (peak {:.1} MiB; service ready {:.1} s after the load)",
        report.idle_rss_mib_10k_webhooks,
        scn.service.peak_rss_mib()?,
        report.idle_start_secs
    ));
    Ok(())
}

/// Two huge backlogs — a webhook that fails everything, one that takes a second a request —
/// beside a healthy neighbour, all under the default policy: how fast the backlog fills, what it
/// costs Redis per waiting delivery and the service in memory, and the neighbour's latency.
fn backlog(plan: &Plan, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let failing = Receiver::start(500, Duration::ZERO)?;
    let slow = Receiver::start(200, BACKLOG_SLOW_DELAY)?;
    let neighbour = Receiver::start(200, Duration::ZERO)?;
    let mut scn = Scenario::start(env, "backlog", &[], |_, _| Ok(()))?;
    // t0 fails, t1 is slow, t2 is the neighbour.
    scn.control()?.register_at(3, |i| [&failing, &slow, &neighbour][i].url(i), "")?;
    let neighbour_shape = EventShape::new(1, 0).starting_at(2);
    let warm_last = redis::publish(&mut scn.redis()?, &scn.keys.events, &neighbour_shape, 0, 200)?;
    wait_for_receipts(&mut scn, &neighbour, 200)?;
    redis::wait_all_acknowledged(&mut scn.redis()?, &scn.keys.events, &warm_last, STALL)?;

    let mut con = scn.redis()?;
    let (memory_before, stream_before) = (redis::used_memory(&mut con)?, redis::key_memory(&mut con, &scn.keys.events)?);
    let events = plan.backlog_events;
    progress(format_args!("backlog: {events} small events, half to a webhook answering 500, half to one taking {BACKLOG_SLOW_DELAY:?}"));
    let start = Instant::now();
    let last = redis::publish(&mut con, &scn.keys.events, &EventShape::new(2, 0), 0, events)?;
    // Every entry acknowledged: each delivery went out once, or waits in the backlog.
    redis::wait_all_acknowledged(&mut con, &scn.keys.events, &last, STALL * 5)?;
    report.backlog_fill_per_sec = events as f64 / start.elapsed().as_secs_f64();
    let waiting: u64 = wss::pipeline::backlog::depths(&mut con, &scn.keys, 0, 10)?.iter().map(|(_, d)| d.deliveries).sum();
    let grown = redis::used_memory(&mut con)?.saturating_sub(memory_before);
    let stream_grown = redis::key_memory(&mut con, &scn.keys.events)?.saturating_sub(stream_before);
    report.backlog_waiting = waiting;
    report.redis_bytes_per_waiting_delivery = grown.saturating_sub(stream_grown) as f64 / waiting.max(1) as f64;
    progress(format_args!(
        "  {:.0} events/s handed off; {waiting} deliveries waiting; Redis grew {:.1} MiB besides the stream: {:.0} B per waiting delivery",
        report.backlog_fill_per_sec,
        grown.saturating_sub(stream_grown) as f64 / 1_048_576.0,
        report.redis_bytes_per_waiting_delivery
    ));

    progress(format_args!("  the neighbour publishes at {NEIGHBOUR_RATE:.0} events/s for {:?}", plan.latency_time));
    let target = neighbour.stats.received();
    neighbour.stats.record_latencies();
    let (sent, _) = redis::publish_at_rate(&mut con, &scn.keys.events, &neighbour_shape, NEIGHBOUR_RATE, plan.latency_time)?;
    wait_for_receipts(&mut scn, &neighbour, target + sent)?;
    let latencies = Latencies::of(neighbour.stats.take_latencies());
    (report.neighbor_p50_ms, report.neighbor_p99_ms) = (latencies.ms_at(0.5), latencies.ms_at(0.99));
    report.neighbor_events = latencies.count();
    report.backlog_rss_mib = scn.service.peak_rss_mib()?;
    let still: u64 = wss::pipeline::backlog::depths(&mut con, &scn.keys, 0, 10)?.iter().map(|(_, d)| d.deliveries).sum();
    progress(format_args!(
        "  neighbour p50 {:.1} ms, p99 {:.1} ms over {} events, with {still} deliveries still in the backlog; service peak RSS {:.1} MiB",
        report.neighbor_p50_ms, report.neighbor_p99_ms, report.neighbor_events, report.backlog_rss_mib
    ));
    report.check_signatures(&neighbour, "requests to the neighbour")?;
    report.signatures_verified += slow.stats.verified();
    Ok(())
}

/// The human-readable form of the report.
/// The figures of a `--source nats|amqp` run.
fn broker_table(r: &Report) -> String {
    format!(
        "source {}: throughput ({} events, {} webhooks, {} B bodies)  {:.0} /s\n\
         latency p50 / p90 / p99 / max at {:.0} /s  {:.1} / {:.1} / {:.1} / {:.1} ms\n\
         service CPU per delivery  {:.0} µs\n\
         peak RSS  {:.1} MiB\n\
         signatures verified  {}\n{}",
        r.source,
        r.events,
        r.webhooks,
        r.body_bytes,
        r.deliveries_per_sec,
        r.latency_rate_per_sec,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.max_ms,
        r.service_cpu_us_per_delivery,
        r.peak_rss_mib,
        r.signatures_verified,
        if r.quick { "(--quick: figures mean little)\n" } else { "" }
    )
}

fn table(r: &Report) -> String {
    let mut out = String::new();
    let rows: Vec<(String, String, &str)> = vec![
        (
            format!("throughput ({} events, {} webhooks, {} B bodies)", r.events, r.webhooks, r.body_bytes),
            format!("{:.0} /s", r.deliveries_per_sec),
            "",
        ),
        (format!("raw HTTP limit (same client, {} threads)", r.sender_threads), format!("{:.0} /s", r.raw_per_sec), ""),
        ("ratio".into(), format!("{:.2}", r.ratio), "≥ 0.70"),
        (format!("bare pipeline (same ingredients, {} threads)", r.sender_threads), format!("{:.0} /s", r.bare_per_sec), ""),
        ("ratio to bare".into(), format!("{:.2}", r.ratio_to_bare), "≥ 0.80"),
        (format!("HTTPS throughput (private CA, {} TLS connections)", r.https_connections), format!("{:.0} /s", r.https_per_sec), ""),
        (
            format!("latency p50 / p90 / p99 / max at {:.0} /s", r.latency_rate_per_sec),
            format!("{:.1} / {:.1} / {:.1} / {:.1} ms", r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms),
            "p99 ≤ 10 ms",
        ),
        (format!("slow receivers (100 ms, {SLOW_WEBHOOKS} webhooks)"), format!("{:.0} /s", r.slow_receiver_per_sec), "≥ 2,000 /s"),
        ("  RSS during that run".into(), format!("{:.1} MiB", r.slow_receiver_rss_mib), "≤ 128 MiB"),
        ("peak RSS (throughput and latency runs)".into(), format!("{:.1} MiB", r.peak_rss_mib), ""),
        (format!("idle RSS, {} tenants × 10 webhooks", r.idle_tenants), format!("{:.1} MiB", r.idle_rss_mib_10k_webhooks), "≤ 64 MiB"),
        (
            format!("backlog: neighbour p99 beside {} waiting deliveries", r.backlog_waiting),
            format!("{:.1} ms", r.neighbor_p99_ms),
            "≤ 1,000 ms",
        ),
        ("  service peak RSS over the part".into(), format!("{:.1} MiB", r.backlog_rss_mib), "≤ 128 MiB"),
        ("  Redis per waiting delivery".into(), format!("{:.0} B", r.redis_bytes_per_waiting_delivery), ""),
        ("  hand-off rate (events into the backlog)".into(), format!("{:.0} /s", r.backlog_fill_per_sec), ""),
        (
            format!("isolation: 99 of 100 webhooks, all healthy ({} events)", r.isolation_events),
            format!("{:.0} /s", r.isolation_baseline_per_sec),
            "",
        ),
        ("  the same 99 beside one that never answers".into(), format!("{:.0} /s", r.isolation_hanging_per_sec), ""),
        ("  ratio".into(), format!("{:.2}", r.isolation_ratio), "≥ 0.9"),
    ];
    let mut rows = rows;
    for point in &r.scaling {
        rows.push((format!("scaling: {} webhook(s)", point.webhooks), format!("{:.0} /s", point.deliveries_per_sec), ""));
    }
    for point in &r.fifo {
        rows.push((
            format!("FIFO: one webhook, receiver answering in {} ms ({} events)", point.receiver_ms, r.fifo_events),
            format!("{:.0} /s", point.deliveries_per_sec),
            "",
        ));
    }
    rows.push((
        "CPU per delivery: service (kernel) / Redis / bench".into(),
        format!(
            "{:.0} ({:.0}) / {:.0} / {:.0} µs",
            r.service_cpu_us_per_delivery, r.service_system_cpu_us_per_delivery, r.redis_cpu_us_per_delivery, r.bench_cpu_us_per_delivery
        ),
        "",
    ));
    rows.push(("CPU per raw request (client + receiver)".into(), format!("{:.0} µs", r.raw_bench_cpu_us_per_request), ""));
    rows.push((
        "CPU per delivery: bare pipeline / its Redis".into(),
        format!("{:.0} / {:.0} µs", r.bare_cpu_us_per_delivery, r.bare_redis_cpu_us_per_delivery),
        "service ≤ 1.5 × bare",
    ));
    rows.push(("service context switches per delivery".into(), format!("{:.1}", r.service_context_switches_per_delivery), "≤ 2"));
    rows.push(("bare pipeline context switches per delivery".into(), format!("{:.1}", r.bare_context_switches_per_delivery), ""));
    if r.redis_commands_per_delivery > 0.0 {
        rows.push(("Redis commands per delivery (XADD included)".into(), format!("{:.2}", r.redis_commands_per_delivery), ""));
    }
    let width = rows.iter().map(|(l, _, _)| l.chars().count()).max().unwrap_or(0);
    let value_width = rows.iter().map(|(_, v, _)| v.chars().count()).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "wss bench — {} CPUs, load {} before, {} after{}",
        r.cpus,
        r.load_before,
        r.load_after,
        if r.quick { " (--quick: figures mean little)" } else { "" }
    );
    let _ = writeln!(out, "{:width$}  {:>value_width$}  target", "measure", "value");
    for (label, value, target) in rows {
        let pad = width - label.chars().count();
        let vpad = value_width - value.chars().count();
        let _ = writeln!(out, "{label}{}  {}{value}  {target}", " ".repeat(pad), " ".repeat(vpad));
    }
    if !r.redis_commands.is_empty() {
        let mut by_name: Vec<(&String, &f64)> = r.redis_commands.iter().filter(|(_, n)| **n >= 0.01).collect();
        by_name.sort_by(|a, b| b.1.total_cmp(a.1));
        let listed = by_name.iter().map(|(name, n)| format!("{name} {n:.2}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "Redis commands per delivery: {listed}");
    }
    out
}
