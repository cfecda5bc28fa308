//! The bare pipeline (issue 18): the least pipeline that does a webhook sender's unavoidable
//! work with wss's own ingredients, to set the service's throughput and CPU against.
//!
//! It reads the stream with `XREADGROUP … COUNT <read_batch>` (the service's default batch),
//! turns each entry into the body wss sends (`wss::pipeline::event::{parse_entry, envelope}`),
//! signs it with the project's signer (`WssSigner`, one per webhook, made once, as routing
//! snapshots do), POSTs it from the service's number of sender threads with the delivery agents
//! (`wss::http::agents`, each thread in its lane as a sender is, the requests made as the sender
//! makes them: [`super::raw`]'s `post`) to
//! the same receivers, and acknowledges with one `XACK` per batch of completions. No routing,
//! filters, history, statistics, isolation, retries or dead letters: a failed request is
//! counted and acknowledged all the same.
//!
//! It runs as a child process (`wss bench-bare`, hidden), as `wss serve` does, so that its CPU
//! time and context switches are read from `/proc/<pid>/` the same way ([`super::service`]):
//! the reader (main thread), the sender threads and one acknowledging thread, like the service's
//! reader, senders and outcome stage.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use redis::Value;
use wss::{
    pipeline::event::{envelope, parse_entry},
    signature::{WssSigner, SIGNATURE_HEADER, TIMESTAMP_HEADER},
    streams::parse_read_reply,
};

use super::{
    raw::{post, Prepared},
    receiver::{secret_of, Receiver},
    redis::{self as bench_redis, EventShape, STALL},
    service,
};

/// The consumer group the service reads with (`wss::pipeline::reader::GROUP`), so that the
/// bench waits for acknowledgements the same way.
const GROUP: &str = "wss";
/// How long an empty read blocks (the service polls every 2–10 ms when idle).
const READ_BLOCK_MS: u64 = 10;
/// Most entry ids in one `XACK`.
const ACK_BATCH: usize = 1024;

/// `wss bench-bare`'s flags: set by the bench, not for people.
#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    #[arg(long)]
    redis_url: String,
    #[arg(long)]
    stream: String,
    /// The receivers' base URL: webhook `i` (tenant `t<i>`) is `<base>/w<i>`.
    #[arg(long)]
    receiver: String,
    #[arg(long)]
    threads: usize,
    #[arg(long)]
    read_batch: usize,
    #[arg(long)]
    max_event_bytes: usize,
}

/// One signed request, with the entry it acknowledges.
struct Job {
    entry: String,
    prepared: Prepared,
}

/// `wss bench-bare`: runs until killed; logs `bare pipeline ready` once its group exists and its
/// threads run.
pub fn run_child(args: ChildArgs) -> anyhow::Result<()> {
    let client = redis::Client::open(args.redis_url.as_str()).context("--redis-url")?;
    let mut con = client.get_connection().context("connecting to Redis")?;
    let created: redis::RedisResult<()> =
        redis::cmd("XGROUP").arg("CREATE").arg(&args.stream).arg(GROUP).arg("$").arg("MKSTREAM").query(&mut con);
    if let Err(err) = created {
        if err.code() != Some("BUSYGROUP") {
            return Err(err).context("XGROUP CREATE");
        }
    }
    let agents = wss::http::agents(args.threads, true);
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(args.read_batch * 4);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<String>();
    let failed = Arc::new(AtomicU64::new(0));
    for slot in 0..args.threads.max(1) {
        let (agents, jobs, done, failed) = (agents.clone(), jobs_rx.clone(), done_tx.clone(), failed.clone());
        thread::Builder::new().name("bare-sender".into()).spawn(move || {
            for job in jobs {
                if let Err(err) = post(&agents, slot, &job.prepared) {
                    if failed.fetch_add(1, Ordering::Relaxed) < 10 {
                        eprintln!("bare: POST {} failed: {err:#}", job.prepared.url);
                    }
                }
                if done.send(job.entry).is_err() {
                    return;
                }
            }
        })?;
    }
    drop(done_tx);
    let mut ack_con = client.get_connection().context("connecting to Redis")?;
    let stream = args.stream.clone();
    thread::Builder::new().name("bare-ack".into()).spawn(move || {
        while let Ok(first) = done_rx.recv() {
            let mut ids = vec![first];
            ids.extend(done_rx.try_iter().take(ACK_BATCH - 1));
            if let Err(err) = redis::cmd("XACK").arg(&stream).arg(GROUP).arg(&ids).query::<u64>(&mut ack_con) {
                eprintln!("bare: XACK failed: {err}");
                return;
            }
        }
    })?;
    eprintln!("bare pipeline ready");

    // Webhook i's URL and signer, made once.
    let mut webhooks: HashMap<String, (String, WssSigner)> = HashMap::new();
    loop {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("bare")
            .arg("COUNT")
            .arg(args.read_batch)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS")
            .arg(&args.stream)
            .arg(">")
            .query(&mut con)
            .context("XREADGROUP")?;
        let entries = parse_read_reply(reply).map_err(|e| anyhow::anyhow!("XREADGROUP reply: {e}"))?;
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string();
        for entry in entries {
            let event = parse_entry(&entry, args.max_event_bytes).map_err(|r| anyhow::anyhow!("entry {}: {}", entry.id, r.detail))?;
            let (url, signer) = webhooks.entry(event.tenant.clone()).or_insert_with(|| {
                let i: usize = event.tenant.trim_start_matches('t').parse().unwrap_or(0);
                (format!("{}/w{i}", args.receiver), WssSigner::new(secret_of(i).as_bytes()))
            });
            let body = envelope(&event);
            let headers = vec![
                ("Content-Type", "application/json".to_owned()),
                (SIGNATURE_HEADER, signer.sign(&timestamp, &body)),
                (TIMESTAMP_HEADER, timestamp.clone()),
                ("X-WSS-Event-Id", event.id.clone()),
                ("X-WSS-Event-Type", event.event_type.clone()),
                ("X-WSS-Attempt", "1".to_owned()),
            ];
            let job = Job { entry: entry.id, prepared: Prepared { url: url.clone(), body, headers } };
            if jobs_tx.send(job).is_err() {
                bail!("the sender threads stopped");
            }
        }
    }
}

/// The bare pipeline as the bench runs it: a child process, killed when dropped (a wrapper — a
/// profiler — gets SIGINT first and time to write its output).
struct Bare {
    child: Child,
    wrapped: bool,
}

impl Bare {
    fn start(wrap: &[String], redis_url: &str, stream: &str, receiver: &Receiver, setup: Setup) -> anyhow::Result<Self> {
        let mut cmd = super::service::this_executable(wrap, "wss bench-bare")?;
        let base = receiver.url(0);
        let base = base.strip_suffix("/w0").unwrap_or(&base);
        cmd.arg("bench-bare")
            .args(["--redis-url", redis_url, "--stream", stream, "--receiver", base])
            .args(["--threads", &setup.threads.to_string()])
            .args(["--read-batch", &setup.read_batch.to_string()])
            .args(["--max-event-bytes", &setup.max_event_bytes.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting `wss bench-bare`")?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(1);
        thread::Builder::new().name("bench-bare-log".into()).spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("bare pipeline ready") {
                    let _ = ready_tx.try_send(());
                } else {
                    eprintln!("bench: {line}");
                }
            }
        })?;
        let mut bare = Self { child, wrapped: !wrap.is_empty() };
        if ready_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let status = bare.child.try_wait().ok().flatten();
            bail!("`wss bench-bare` was not ready within 120 s (exit status {status:?})");
        }
        Ok(bare)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        service::end_child(&mut self.child, self.wrapped, || {});
    }
}

/// The service's settings the bare pipeline takes: sender threads, read batch, largest event.
#[derive(Debug, Clone, Copy)]
pub(super) struct Setup {
    pub threads: usize,
    pub read_batch: usize,
    pub max_event_bytes: usize,
}

/// What the bare pipeline did with `events` events.
pub(super) struct Figures {
    pub per_sec: f64,
    /// CPU time of the process per delivery, µs.
    pub cpu_us_per_delivery: f64,
    pub context_switches_per_delivery: f64,
    /// Redis commands per delivery, `XADD` included (a private Redis only, else 0).
    pub redis_commands_per_delivery: f64,
    /// Redis's CPU time per delivery, µs, the producer's `XADD` included (a private Redis
    /// only, else 0).
    pub redis_cpu_us_per_delivery: f64,
}

/// What of the bench's run the bare pipeline is measured in.
pub(super) struct Run<'a> {
    /// `--wrap`, split at spaces.
    pub wrap: &'a [String],
    pub redis_url: &'a str,
    /// The Redis is the bench's own: its command counts are the pipeline's.
    pub private_redis: bool,
    /// Its CPU time so far, in seconds (0 when it is not the bench's own).
    pub redis_cpu_secs: &'a dyn Fn() -> f64,
    pub setup: Setup,
}

/// Runs the bare pipeline on a stream of its own against `receiver`: warms it up (connections
/// open), then times `events` events published as the throughput run publishes them.
pub(super) fn measure(run: &Run, stream: &str, receiver: &Receiver, shape: &EventShape, events: u64) -> anyhow::Result<Figures> {
    let (redis_url, private_redis) = (run.redis_url, run.private_redis);
    let mut bare = Bare::start(run.wrap, redis_url, stream, receiver, run.setup)?;
    let mut con = bench_redis::connect(redis_url)?;
    let warm = (shape.tenants as u64 * 2).max(200);
    let target = receiver.stats.received() + warm;
    let last = bench_redis::publish(&mut con, stream, shape, 0, warm)?;
    wait_for(&mut bare, receiver, target)?;
    bench_redis::wait_all_acknowledged(&mut con, stream, &last, STALL)?;

    let commands_before = if private_redis { bench_redis::command_counts(&mut con)? } else { Default::default() };
    let (cpu, switches, redis_cpu) = (service::cpu_secs(bare.pid())?, service::context_switches(bare.pid()), (run.redis_cpu_secs)());
    let target = receiver.stats.received() + events;
    let mut publishing = bench_redis::connect(redis_url)?;
    let (stream_name, shape_for_publisher) = (stream.to_owned(), shape.clone());
    let start = Instant::now();
    let publisher = thread::Builder::new()
        .name("bench-publish".into())
        .spawn(move || bench_redis::publish(&mut publishing, &stream_name, &shape_for_publisher, 0, events))?;
    wait_for(&mut bare, receiver, target)?;
    let elapsed = receiver.stats.last_receipt().saturating_duration_since(start);
    let last = publisher.join().map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
    bench_redis::wait_all_acknowledged(&mut con, stream, &last, STALL)?;
    let cpu = service::cpu_secs(bare.pid())? - cpu;
    let redis_cpu = (run.redis_cpu_secs)() - redis_cpu;
    let switches = service::context_switches(bare.pid()).saturating_sub(switches);
    let mut commands = 0;
    if private_redis {
        for (name, calls) in bench_redis::command_counts(&mut con)? {
            // The bench's own polling (XINFO, INFO) is not the pipeline's work.
            if !name.starts_with("xinfo") && name != "info" {
                commands += calls.saturating_sub(commands_before.get(&name).copied().unwrap_or(0));
            }
        }
    }
    drop(bare);
    let n = events as f64;
    Ok(Figures {
        per_sec: n / elapsed.as_secs_f64().max(1e-6),
        cpu_us_per_delivery: cpu * 1e6 / n,
        context_switches_per_delivery: switches as f64 / n,
        redis_commands_per_delivery: commands as f64 / n,
        redis_cpu_us_per_delivery: redis_cpu * 1e6 / n,
    })
}

/// Waits until `receiver` has had `target` requests; fails when nothing arrives for
/// [`STALL`] or the child exits.
fn wait_for(bare: &mut Bare, receiver: &Receiver, target: u64) -> anyhow::Result<()> {
    let mut seen = receiver.stats.received();
    let mut progress_at = Instant::now();
    loop {
        let now = receiver.stats.received();
        if now >= target {
            return Ok(());
        }
        if now != seen {
            (seen, progress_at) = (now, Instant::now());
        } else if progress_at.elapsed() > STALL {
            bail!("the bare pipeline delivered nothing for {:?} ({now} of {target} received)", STALL);
        }
        if let Some(status) = bare.child.try_wait()? {
            bail!("`wss bench-bare` exited ({status})");
        }
        thread::sleep(Duration::from_millis(2));
    }
}
