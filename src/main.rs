//! The `wss` command: `serve` runs the service; `sign`, `verify` and `receive` are small tools for
//! people building or testing a receiver; `check-expr` tries a filter and a transform on a sample
//! event before they are registered; `tenant`, `webhook`, … `config check` are the admin CLI
//! (`cli`).
#![forbid(unsafe_code)]

mod bench;
mod cli;

use std::{
    io::Read,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use crossbeam_channel::{bounded, RecvTimeoutError};
use wss::{
    config::{Config, Layers},
    domain::{routing::RoutingHandle, store::Store},
    grpc::{self, ControlPlane},
    keys::Keys,
    metrics::Metrics,
    pipeline::{self, Deps, Pipeline},
    receive::{self, ReceiveOptions},
    redis_conn::RedisTarget,
    signature, status,
};

#[derive(Parser)]
#[command(
    name = "wss",
    version,
    about = "Webhook Sender Service: delivers events from Redis Streams to tenants' webhooks, signed and retried"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: read <prefix>events, deliver to webhooks, serve the gRPC control plane.
    ///
    /// Settings come from embedded defaults, then --config FILE (TOML), then WSS_* environment
    /// variables, then these flags. Every setting: docs/configuration.md.
    Serve(ServeArgs),
    /// Print the signature headers for a body read from stdin (docs/contract.md §3).
    Sign {
        /// The webhook's secret.
        #[arg(long)]
        secret: String,
        /// Unix seconds to sign with (default: now).
        #[arg(long)]
        timestamp: Option<String>,
    },
    /// Check a signature over a body read from stdin; exits 0 when valid, 1 with the reason.
    Verify {
        #[arg(long)]
        secret: String,
        /// The X-WSS-Timestamp value as received (Unix seconds or RFC 3339).
        #[arg(long)]
        timestamp: String,
        /// The X-WSS-Signature value as received (one or more, comma-separated).
        #[arg(long)]
        signature: String,
        /// How far the timestamp may be from now, either way.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        tolerance: Duration,
    },
    /// A demo receiver: verifies every request it gets and prints it (your first endpoint).
    Receive {
        /// Port to listen on.
        #[arg(long)]
        port: u16,
        /// The webhook's secret, to verify with.
        #[arg(long)]
        secret: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        tolerance: Duration,
        /// Signature scheme the webhook uses.
        #[arg(long, value_enum, default_value_t = Scheme::Wss)]
        scheme: Scheme,
    },
    /// Try a filter and a transform on a sample event read from stdin, exactly as the
    /// transformer evaluates them; prints the filter's answer and the body the webhook would get.
    CheckExpr(CheckExprArgs),
    /// Measure this machine: throughput, latency, the raw HTTP limit, slow receivers and memory
    /// of `wss serve` against a private redis-server and in-process receivers (docs/performance.md). `--quick` is a smoke run of seconds.
    Bench(bench::Args),
    /// The bench's bare pipeline (docs/performance.md): started by `wss bench`, not by people.
    #[command(hide = true)]
    BenchBare(bench::bare::ChildArgs),
    /// The admin CLI: `wss tenant|webhook|policy|token|delivery|dead-letter|event <verb>` over
    /// gRPC, and `wss config check FILE` (docs/cli.md).
    #[command(flatten)]
    Admin(cli::Admin),
}

/// `wss check-expr`: the flags, and what stdin holds.
#[derive(clap::Args)]
#[command(after_help = "stdin: the event as a receiver gets it, {\"id\", \"type\", \"tenant\", \"created_at\", \"data\"}, \
plus \"attributes\" (an object of strings) if the stream entry has other fields. Only \"data\" is required; \
absent strings are empty and an absent created_at is now.\n\n\
Prints `filter: true|false` and `body: <the request body>` (the transform's value, else the envelope). \
Exit status: 0 when both evaluated (whatever the filter said), 1 when an expression is refused or fails \
on the event (the delivery would be dead-lettered), 2 when stdin is not such an event.\n\n\
Example: echo '{\"type\":\"order.shipped\",\"data\":{\"order_id\":\"A-1\",\"status\":\"shipped\"}}' | \
wss check-expr --filter 'event.data.status == \"shipped\"' --transform '{\"id\": event.data.order_id}'")]
struct CheckExprArgs {
    /// A filter: CEL boolean expression over `event`.
    #[arg(long, default_value = "")]
    filter: String,
    /// A transform: CEL expression over `event` whose value is the body.
    #[arg(long, default_value = "")]
    transform: String,
}

/// The sample event `check-expr` reads.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleEvent {
    #[serde(default)]
    id: String,
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    tenant: String,
    created_at: Option<String>,
    data: Box<serde_json::value::RawValue>,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scheme {
    Wss,
    StandardWebhooks,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with settings (keys as in docs/configuration.md, e.g. `redis_url = "redis://…"`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Redis URL [env: WSS_REDIS_URL] (default redis://127.0.0.1:6379).
    #[arg(long)]
    redis_url: Option<String>,
    /// Key prefix [env: WSS_KEY_PREFIX] (default wss:).
    #[arg(long)]
    key_prefix: Option<String>,
    /// Control-plane address [env: WSS_GRPC_ADDR] (default 127.0.0.1:50051).
    #[arg(long)]
    grpc_addr: Option<String>,
    /// Prometheus /metrics and the status page [env: WSS_METRICS_ADDR] (default 127.0.0.1:9464; off: none).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Consumer name in group `wss` [env: WSS_CONSUMER] (default <hostname>-<pid>).
    #[arg(long)]
    consumer: Option<String>,
    /// Sender threads [env: WSS_SENDER_THREADS] (default 256).
    #[arg(long)]
    sender_threads: Option<String>,
    /// text or json [env: WSS_LOG_FORMAT].
    #[arg(long)]
    log_format: Option<String>,
    /// OpenTelemetry collector (OTLP/gRPC) for traces of delivery attempts, e.g.
    /// http://127.0.0.1:4317 [env: WSS_OTLP_ENDPOINT] (default: off).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Local trials: allow http:// and loopback/private webhook targets (logs a loud warning).
    #[arg(long)]
    dev: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Sign { secret, timestamp } => sign(&secret, timestamp),
        Command::Verify { secret, timestamp, signature, tolerance } => return verify(&secret, &timestamp, &signature, tolerance),
        Command::Receive { port, secret, bind, tolerance, scheme } => receive::run(ReceiveOptions {
            bind: SocketAddr::new(bind, port),
            secret,
            tolerance,
            standard_webhooks: matches!(scheme, Scheme::StandardWebhooks),
        }),
        // On a thread with the stack the transformer evaluates on (its deepest expressions need it).
        Command::CheckExpr(args) => {
            let evaluating = std::thread::Builder::new().stack_size(wss::expr::EVAL_STACK_BYTES).spawn(move || check_expr(&args));
            return match evaluating.map(std::thread::JoinHandle::join) {
                Ok(Ok(status)) => status,
                _ => ExitCode::from(2),
            };
        }
        Command::Bench(args) => bench::run(args),
        Command::BenchBare(args) => bench::bare::run_child(args),
        Command::Admin(admin) => return cli::run(admin),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wss: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body).context("reading the body from stdin")?;
    Ok(body)
}

fn sign(secret: &str, timestamp: Option<String>) -> anyhow::Result<()> {
    let body = read_stdin()?;
    let timestamp = timestamp.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string());
    println!("{}: {timestamp}", signature::TIMESTAMP_HEADER);
    println!("{}: {}", signature::SIGNATURE_HEADER, signature::sign(secret.as_bytes(), &timestamp, &body));
    Ok(())
}

fn verify(secret: &str, timestamp: &str, sig: &str, tolerance: Duration) -> ExitCode {
    let body = match read_stdin() {
        Ok(body) => body,
        Err(err) => {
            eprintln!("wss: {err:#}");
            return ExitCode::from(2);
        }
    };
    match signature::verify(secret.as_bytes(), Some(timestamp), Some(sig), &body, tolerance, SystemTime::now()) {
        Ok(()) => {
            println!("valid");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("invalid: {reason}");
            ExitCode::from(1)
        }
    }
}

fn check_expr(args: &CheckExprArgs) -> ExitCode {
    use wss::{
        domain::model::{compile_filter, compile_transform},
        expr::Evaluator,
        pipeline::event::envelope,
    };
    let event = match read_stdin().and_then(|input| sample_event(&input)) {
        Ok(event) => event,
        Err(err) => {
            eprintln!("wss: {err:#}");
            return ExitCode::from(2);
        }
    };
    let compiled = compile_filter(&args.filter).and_then(|f| Ok((f, compile_transform(&args.transform)?)));
    let (filter, transform) = match compiled {
        Ok(both) => both,
        Err(err) => {
            println!("{err}"); // "filter: …" or "transform: …", as CreateWebhook would answer
            return ExitCode::from(1);
        }
    };
    let created_at = event.created_at();
    let evaluator = Evaluator::new();
    let view = event.view(&created_at);
    let bound = match evaluator.bind(&view) {
        Ok(bound) => bound,
        Err(err) => {
            println!("error: {err}");
            return ExitCode::from(1);
        }
    };
    let mut status = ExitCode::SUCCESS;
    if let Some(filter) = &filter {
        match bound.filter(filter) {
            Ok(true) => println!("filter: true"),
            Ok(false) => println!("filter: false (the webhook would not get this event)"),
            Err(err) => {
                println!("filter: error: {err} (the delivery would be dead-lettered with reason filter_error)");
                status = ExitCode::from(1);
            }
        }
    }
    match &transform {
        Some(transform) => match bound.transform(transform) {
            Ok(body) => println!("body: {}", String::from_utf8_lossy(&body)),
            Err(err) => {
                println!("transform: error: {err} (the delivery would be dead-lettered with reason transform_error)");
                status = ExitCode::from(1);
            }
        },
        None => println!("body: {}", String::from_utf8_lossy(&envelope(&event))),
    }
    status
}

/// stdin as the event the pipeline would have parsed from a stream entry.
fn sample_event(input: &[u8]) -> anyhow::Result<wss::pipeline::event::Event> {
    let sample: SampleEvent = serde_json::from_slice(input)
        .context("stdin must be a JSON object with \"data\" and optionally \"id\", \"type\", \"tenant\", \"created_at\", \"attributes\"")?;
    let created_at = match &sample.created_at {
        Some(text) => humantime::parse_rfc3339_weak(text).with_context(|| format!("created_at {text:?} is not RFC 3339"))?,
        None => SystemTime::now(),
    };
    Ok(wss::pipeline::event::Event {
        stream_id: sample.id.clone(),
        id: sample.id,
        event_type: sample.event_type,
        tenant: sample.tenant,
        created_at_ms: created_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        data: sample.data,
        attributes: sample.attributes.into_iter().collect(),
        only_webhook: None,
    })
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut layers = Layers::new();
    if let Some(path) = &args.config {
        layers = layers.file(path);
    }
    let mut layers = layers
        .environment(|name| std::env::var(name).ok())
        .flag("redis_url", args.redis_url.clone())
        .flag("key_prefix", args.key_prefix.clone())
        .flag("grpc_addr", args.grpc_addr.clone())
        .flag("metrics_addr", args.metrics_addr.clone())
        .flag("consumer", args.consumer.clone())
        .flag("sender_threads", args.sender_threads.clone())
        .flag("log_format", args.log_format.clone())
        .flag("otlp_endpoint", args.otlp_endpoint.clone());
    if let Ok(filter) = std::env::var("RUST_LOG") {
        if std::env::var_os("WSS_LOG_LEVEL").is_none() {
            layers = layers.flag("log_level", Some(filter));
        }
    }
    if args.dev {
        layers = layers.flag("allow_http", Some("true".into())).flag("allow_private_targets", Some("true".into()));
    }
    Ok(layers.build()?)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    wss::logging::init(config.log_format, &config.log_level).map_err(|e| anyhow::anyhow!("log_level: {e}"))?;
    if args.dev {
        log::warn!(target: "wss", "DEV MODE: http:// URLs and loopback/private targets are allowed. Never run a shared or production instance with --dev");
    }
    refuse_unguarded(&config)?;
    let shared = Shared::open(&config)?;
    check_tls(&config)?;
    let background = Background::start(&config, &shared)?;
    match load_configuration(&shared, &background.signals) {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(err) => {
            let _ = background.control_plane.stop.send(());
            return Err(err);
        }
    }
    if config.encryption_key.is_some() {
        seal_clear_secrets(&shared.store);
    }
    let pipeline = Pipeline::start(Deps {
        redis: shared.redis.clone(),
        keys: shared.keys.clone(),
        store: shared.store.clone(),
        routing: shared.routing.clone(),
        live: shared.live.clone(),
        config: config.clone(),
        metrics: shared.metrics.clone(),
        tracer: background.tracer(),
        health: shared.health.clone(),
        clock: shared.clock.clone(),
    })
    .context("starting the pipeline threads")?;
    shared.health.pipeline_started();
    // gRPC health says SERVING before the line that says the pipeline reads.
    shared.health.wait_reported(Duration::from_secs(2));
    log_reading(&config, &shared.keys);
    run_until_stopped(pipeline, background, &shared.health, config.shutdown_grace)
}

/// What the pipeline, the control plane and the status page share: Redis, its keys, the store,
/// the routing snapshot, the metrics, what each webhook has in flight, and readiness.
struct Shared {
    redis: RedisTarget,
    keys: Keys,
    store: Arc<Store>,
    routing: Arc<RoutingHandle>,
    metrics: Arc<Metrics>,
    /// Kept up to date by the pipeline; read by GetWebhookStats and the status page.
    live: Arc<wss::pipeline::live::LiveView>,
    health: Arc<wss::health::Health>,
    /// The system's: every part reads the time from it.
    clock: wss::clock::Clock,
    /// Dropped when `serve` returns: the health probe then stops.
    _stop_probe: crossbeam_channel::Sender<()>,
}

impl Shared {
    fn open(config: &Config) -> anyhow::Result<Self> {
        let redis = RedisTarget::with_tls(&config.redis_url, &config.redis_tls).with_context(|| {
            format!(
                "opening the Redis client for {} (WSS_REDIS_URL, WSS_REDIS_CA_FILE, WSS_REDIS_CLIENT_CERT_FILE)",
                wss::redis_conn::redact_url(&config.redis_url)
            )
        })?;
        let keys = Keys::sharded(&config.key_prefix, config.stream_shards, redis.is_cluster());
        let clock = wss::clock::Clock::System;
        let store = Arc::new(
            Store::new(redis.clone(), keys.clone())
                .with_cipher(config.encryption_key.clone())
                .with_dedupe_window(config.dedupe_window)
                .with_clock(clock.clone()),
        );
        let metrics = Arc::new(Metrics::new());
        redis.count_outages(metrics.redis_outages.clone());
        // Probes Redis from now on, for /readyz, gRPC health and wss_redis_up.
        let health = wss::health::Health::new();
        let (stop_probe, probe_stop) = bounded::<()>(0);
        wss::health::spawn_prober(redis.clone(), health.clone(), metrics.redis_up.clone(), probe_stop)
            .context("starting the health probe thread")?;
        match &config.encryption_key {
            Some(key) => log::info!(target: "wss", "webhook secrets are sealed at rest with WSS_ENCRYPTION_KEY (key id {})", key.key_id()),
            None => log::info!(target: "wss", "no WSS_ENCRYPTION_KEY: webhook secrets are stored in Redis in clear"),
        }
        let routing = Arc::new(RoutingHandle::default());
        let live = pipeline::live_view(config);
        Ok(Self { redis, keys, store, routing, metrics, live, health, clock, _stop_probe: stop_probe })
    }
}

/// Refuses to open the control plane, or the status page (it shows every tenant's health), to
/// other machines without an admin token.
fn refuse_unguarded(config: &Config) -> anyhow::Result<()> {
    if config.admin_token.is_some() {
        return Ok(());
    }
    if !config.grpc_addr.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve the control plane on {} without a token: set WSS_ADMIN_TOKEN (or admin_token_file), or bind to 127.0.0.1",
            config.grpc_addr
        );
    }
    log::warn!(target: "wss", "no WSS_ADMIN_TOKEN set: the control plane accepts every call from this machine (loopback only)");
    if let Some(addr) = config.metrics_addr.filter(|a| !a.ip().is_loopback()) {
        anyhow::bail!(
            "refusing to serve the status page on {addr} (WSS_METRICS_ADDR) without a token: set WSS_ADMIN_TOKEN (or admin_token_file), bind to 127.0.0.1, or set WSS_METRICS_ADDR=off"
        );
    }
    Ok(())
}

/// A certificate or key that cannot serve is reported now, not at the first connection.
fn check_tls(config: &Config) -> anyhow::Result<()> {
    let Some(tls) = &config.tls else { return Ok(()) };
    grpc::tls_config(tls).map_err(|e| {
        anyhow::anyhow!(
            "WSS_TLS_CERT_FILE / WSS_TLS_KEY_FILE ({}): the TLS certificate and key cannot be used ({e}); give a PEM certificate chain and its PEM private key",
            tls.cert_file.display()
        )
    })?;
    Ok(())
}

/// The metrics and status page listener (`WSS_METRICS_ADDR`), unless it is off. Bound before
/// anything starts, so that a taken port is a start-up error; it serves metrics at once, and
/// the page's data as soon as the configuration is loaded.
fn start_ops_listener(
    config: &Config,
    sources: status::Sources,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<wss::http_listener::Listener>> {
    let Some(addr) = config.metrics_addr else {
        log::info!(target: "wss", "WSS_METRICS_ADDR=off: no /metrics and no status page");
        return Ok(None);
    };
    let server = status::serve(addr, sources, runtime.handle()).with_context(|| {
        format!("binding the metrics and status page listener to {addr} (WSS_METRICS_ADDR); is another wss running? Pick a free address, or set WSS_METRICS_ADDR=off")
    })?;
    let bound = server.local_addr();
    log::info!(target: "wss", "metrics listening on {bound} (Prometheus /metrics; status page http://{bound}/)");
    Ok(Some(server))
}

/// Traces of delivery attempts (`WSS_OTLP_ENDPOINT`), unless off: the exporter's gRPC channel
/// runs on `runtime`, so it is shut down (its last spans exported) before the runtime is.
fn start_tracing(config: &Config, metrics: &Metrics, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Option<wss::otel::Exporting>> {
    let Some(otlp) = &config.otlp else { return Ok(None) };
    let exporting = wss::otel::Exporting::start(otlp, &config.consumer, metrics.trace_spans.clone(), runtime.handle())
        .with_context(|| format!("setting up the OTLP trace exporter for {} (WSS_OTLP_ENDPOINT)", otlp.endpoint))?;
    log::info!(target: "wss", "tracing delivery attempts: spans go to {} over OTLP/gRPC (service.name {:?}, sample ratio {})",
        otlp.endpoint, otlp.service_name, otlp.sample_ratio);
    Ok(Some(exporting))
}

/// The control plane serving on the runtime, and what stops it.
struct ControlPlaneTask {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlPlaneTask {
    fn start(
        config: &Config,
        listener: TcpListener,
        plane: ControlPlane,
        health: &Arc<wss::health::Health>,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Self> {
        let grpc_addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = grpc::ServeOptions { admin_token: config.admin_token.clone(), tls: config.tls.clone(), health: Some(health.clone()) };
        let transport = match &config.tls {
            None => "plaintext",
            Some(tls) if tls.client_ca_pem.is_some() => "TLS, client certificates required",
            Some(_) => "TLS",
        };
        let task = runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a non-blocking std listener converts");
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(err) = grpc::serve_with(listener, plane, options, shutdown).await {
                log::error!(target: "wss::grpc", "the control plane stopped: {err}");
            }
        });
        log::info!(target: "wss", "control plane listening on {grpc_addr} (gRPC, reflection on, {transport})");
        Ok(Self { stop, task })
    }
}

/// Loads the configuration, retrying while Redis is away: the pipeline must not route before,
/// as an empty snapshot would dead-letter every event as "unknown tenant". False when a signal
/// came first.
fn load_configuration(shared: &Shared, signals: &crossbeam_channel::Receiver<&'static str>) -> anyhow::Result<bool> {
    let mut wait = Duration::from_millis(200);
    loop {
        match shared.routing.reload(&shared.store) {
            Ok(version) => {
                log::info!(target: "wss", "configuration loaded from Redis at {} (version {version})", shared.redis.display_url());
                return Ok(true);
            }
            // A secret this key cannot open: delivering would mean sending unsigned or
            // wrongly-signed requests, so stop and say which key is needed.
            Err(err @ wss::domain::DomainError::Sealed { .. }) => return Err(anyhow::anyhow!("{err}")),
            Err(err) => log::debug!(target: "wss", "configuration not loaded yet: {err}"),
        }
        match signals.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => wait = (wait * 2).min(Duration::from_secs(5)),
            _ => {
                log::info!(target: "wss", "stopped before Redis became reachable");
                return Ok(false);
            }
        }
    }
}

/// Seals the webhook secrets stored in clear before `WSS_ENCRYPTION_KEY` was set.
fn seal_clear_secrets(store: &Store) {
    match store.seal_clear_secrets() {
        Ok(0) => {}
        Ok(n) => log::info!(target: "wss", "sealed {n} webhook secret(s) stored in clear before WSS_ENCRYPTION_KEY was set"),
        Err(err) => {
            log::warn!(target: "wss", "could not seal the webhook secrets stored in clear ({err}); they stay readable, and are sealed at the next start")
        }
    }
}

/// The line that says what the pipeline reads, and one per other source.
fn log_reading(config: &Config, keys: &Keys) {
    let streams = if keys.shards() == 1 {
        keys.events.clone()
    } else {
        format!("{} streams {}", keys.shards(), keys.stream(0).replace("{0}", "{0..}"))
    };
    log::info!(target: "wss", "reading {streams} as consumer {:?} of group wss with {} sender threads{}", config.consumer, config.sender_threads, if keys.cluster() { " on a Redis Cluster" } else { "" });
    for source in config.sources.iter().filter(|s| **s != wss::source::SourceSpec::Redis) {
        log::info!(target: "wss", "reading source {} with {} sender threads", source.label(), config.sender_threads);
    }
}

/// What runs on the control-plane runtime: the control plane, the signal watch, the trace
/// exporter and the metrics and status page listener. Its fields drop in this order: the
/// listener before the runtime it runs on.
struct Background {
    control_plane: ControlPlaneTask,
    /// SIGTERM and SIGINT, as one channel the main thread waits on.
    signals: crossbeam_channel::Receiver<&'static str>,
    exporting: Option<wss::otel::Exporting>,
    _ops_listener: Option<wss::http_listener::Listener>,
    runtime: tokio::runtime::Runtime,
}

impl Background {
    fn start(config: &Config, shared: &Shared) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.grpc_addr)
            .with_context(|| format!("binding the control plane to {} (WSS_GRPC_ADDR); is another wss running?", config.grpc_addr))?;
        listener.set_nonblocking(true)?;
        // The control plane's, the operations listener's and the trace exporter's.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wss-grpc")
            .enable_all()
            .build()
            .context("starting the control-plane runtime")?;
        let sources = status::Sources {
            metrics: shared.metrics.clone(),
            live: shared.live.clone(),
            routing: shared.routing.clone(),
            store: shared.store.clone(),
            health: shared.health.clone(),
            admin_token_digest: config.admin_token.as_deref().map(status::Sources::digest),
        };
        let ops_listener = start_ops_listener(config, sources, &runtime)?;
        let exporting = start_tracing(config, &shared.metrics, &runtime)?;
        let (signal_tx, signals) = bounded::<&'static str>(1);
        runtime.spawn(async move {
            let name = wait_for_signal().await;
            let _ = signal_tx.try_send(name);
        });
        let plane = ControlPlane {
            store: shared.store.clone(),
            routing: shared.routing.clone(),
            live: shared.live.clone(),
            allow_http: config.allow_http,
            allow_private_targets: config.allow_private_targets,
            allowed_target_cidrs: config.allowed_target_cidrs.clone(),
            agents: config.agents(),
            max_event_bytes: config.max_event_bytes,
            history_retention: wss::history::Retention { max_age: config.history_max_age, max_count: config.history_max_count },
            clock: shared.clock.clone(),
        };
        let control_plane = ControlPlaneTask::start(config, listener, plane, &shared.health, &runtime)?;
        Ok(Self { control_plane, signals, exporting, _ops_listener: ops_listener, runtime })
    }

    /// Where the pipeline's spans of delivery attempts go (nowhere without an exporter).
    fn tracer(&self) -> wss::otel::Tracer {
        self.exporting.as_ref().map_or_else(wss::otel::Tracer::off, wss::otel::Exporting::tracer)
    }

    /// Stops it all, after the pipeline: the trace exporter (its last spans exported), the
    /// control plane (calls in progress get 5 s), then the runtime.
    fn stop(self) {
        let Background { control_plane, exporting, runtime, _ops_listener, .. } = self;
        if let Some(exporting) = &exporting {
            exporting.shutdown();
        }
        let _ = control_plane.stop.send(());
        let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), control_plane.task).await });
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Runs until a signal, or until a pipeline thread dies: then the process exits non-zero
/// rather than stay half alive (a supervisor restarts it).
fn run_until_stopped(pipeline: Pipeline, background: Background, health: &wss::health::Health, grace: Duration) -> anyhow::Result<()> {
    let stopped = crossbeam_channel::select! {
        recv(background.signals) -> signal => Ok(signal.unwrap_or("shutdown")),
        recv(pipeline.failures()) -> why => Err(why.unwrap_or_else(|_| "every pipeline thread stopped".into())),
    };
    let signal = match stopped {
        Ok(signal) => signal,
        Err(why) => {
            health.pipeline_failed(&why);
            log::error!(target: "wss", "{why}; stopping with a failure status so that a supervisor restarts wss (unfinished entries stay pending and are read again; an entry that keeps failing is dead-lettered as poison)");
            let _ = pipeline.stop(grace);
            background.stop();
            anyhow::bail!("{why}");
        }
    };
    log::info!(target: "wss", "{signal} received: stopping the reader, finishing sends in flight (grace {})", humantime::format_duration(grace));
    let in_flight = pipeline.in_flight();
    if pipeline.stop(grace) {
        log::info!(target: "wss", "pipeline stopped; entries not finished stay pending and are delivered after a restart");
    } else {
        log::warn!(target: "wss", "grace period over with sends still running ({in_flight} entries were in flight); unfinished entries stay pending and are delivered after a restart");
    }
    background.stop();
    log::info!(target: "wss", "bye");
    Ok(())
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
