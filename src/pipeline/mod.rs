//! The data plane: OS threads joined by bounded crossbeam channels (the senders' queue is a
//! [`work_queue`], and the completions edge is bounded by the in-flight window instead).
//!
//! ```text
//!  Redis stream ──► reader ──► transformer ──► signer ──► sender × N ──► outcomes ──► XACK
//!                     │ bad entry    │ unknown tenant ▲  │ over cap,             │ retry
//!                     └──────────────┴────────────────┼──┴ open circuit ► outcomes ▼
//!                                                     └──── backlog pump ◄── durable backlog (Redis)
//! ```
//!
//! - The sources (`crate::source`) feed it: the Redis stream's reader
//!   (`crate::source::redis::reader`) reads `<prefix>events` with XREADGROUP (its own pending
//!   entries first), a NATS JetStream source (`crate::source::nats`) pulls its consumer; each
//!   parses every event and admits it into the in-flight window, which bounds memory: when the
//!   window is full the source waits, so a slow sender pool slows reading instead of growing
//!   queues.
//! - [`transformer`] routes an event to its tenant's matching webhooks and serializes the body
//!   once, whatever the fan-out.
//! - [`signer`] signs every attempt afresh (new timestamp, current secret), whether it comes from
//!   the transformer or from the backlog. A delivery that cannot go now — its webhook at its
//!   in-flight cap beyond what it may park, or its circuit open — is *postponed*: handed to the
//!   outcome stage for the backlog.
//! - [`sender`] threads POST with ureq and classify the answer.
//! - [`outcomes`] acknowledges an entry once every delivery it produced is terminal or handed to
//!   the durable backlog (`super::backlog`), in the same transaction as the hand-off (a Redis
//!   entry's `XACK`), or to its broker right after it (a broker's message); writes
//!   retries and postponed deliveries into the backlog, and dead letters — batching its Redis
//!   writes.
//! - [`backlog`]'s pump takes due work from the backlog — fairly across webhooks, only as much as
//!   each webhook's cap and circuit allow — and feeds the signer. The window therefore bounds only
//!   work in progress, and a webhook's backlog, however large, waits in Redis.
//!
//! What the pipeline holds per webhook right now (in flight, parked, circuit) is kept up to date
//! in a [`live::LiveView`] that `main` builds and shares with the control plane, for
//! `GetWebhookStats`.
//!
//! A `wss-gauges` thread samples channel depths, the window, circuits, the backlog and the
//! stream's lag for `/metrics` and the status page ([`gauges`]); the stages count what happens in
//! `crate::metrics::Metrics`, on counters resolved once at start. A `wss-retention` thread
//! trims the stream of entries every group is done with (`WSS_STREAM_RETENTION`,
//! `crate::source::redis::retention`).
//!
//! This module alone creates channels and spawns threads. Shutdown is a channel whose sender is
//! dropped: every stage sees it disconnect, the reader stops reading, senders finish the request
//! at hand (they see [`messages::Stopping`], and their queue closes when the signer exits), and
//! the outcome stage drains what they report before it exits. Whatever was not
//! finished stays pending in the consumer group (or leased in the backlog) and is taken again
//! after a restart.

pub mod backlog;
pub(crate) mod decision;
pub mod event;
pub(crate) mod gauges;
pub mod isolation;
pub mod live;
pub mod messages;
mod outcomes;
pub(crate) mod sender;
pub(crate) mod signer;
pub(crate) mod test_event;
pub(crate) mod transformer;
pub(crate) mod work_queue;

use std::{
    sync::{atomic::AtomicUsize, Arc},
    thread::{self, JoinHandle},
    time::Duration,
};

use crossbeam_channel::{bounded, Receiver, Sender};

use self::messages::{Completion, Delivery, InFlight, Inbound, SignedDelivery, Stopping};
use crate::{
    clock::Clock,
    config::Config,
    domain::{routing::RoutingHandle, store::Store},
    keys::Keys,
    metrics::Metrics,
    redis_conn::RedisTarget,
};

/// What the pipeline needs from the rest of the service.
pub struct Deps {
    pub config: Config,
    pub redis: RedisTarget,
    pub keys: Keys,
    pub store: Arc<Store>,
    pub routing: Arc<RoutingHandle>,
    /// Built with [`live_view`]; the pipeline keeps it up to date.
    pub live: Arc<live::LiveView>,
    pub metrics: Arc<Metrics>,
    /// Spans of delivery attempts ([`crate::otel::Tracer::off`]: none).
    pub tracer: crate::otel::Tracer,
    /// Readiness: message-queue sources report their outages there.
    pub health: Arc<crate::health::Health>,
    /// Every stage reads the time here (`crate::clock`): [`Clock::System`] but in tests.
    pub clock: Clock,
}

/// The live view of a pipeline run with `config`, holding its isolation state (in-flight caps,
/// circuits), for [`Deps::live`] and the control plane.
pub fn live_view(config: &Config) -> Arc<live::LiveView> {
    let settings = isolation::Settings {
        max_in_flight: config.webhook_concurrency,
        failures_to_open: config.circuit_failures,
        cooldown: config.circuit_cooldown,
        auto_disable_after: config.auto_disable_after,
    };
    Arc::new(live::LiveView::new(settings, config.consumer.clone()))
}

/// A running pipeline.
pub struct Pipeline {
    shutdown: Option<Sender<()>>,
    stopping: Stopping,
    threads: Vec<JoinHandle<()>>,
    in_flight: Arc<InFlight>,
    died: Receiver<String>,
}

/// The threads that evaluate filters and transforms (the transformer, and the backlog pump
/// rebuilding a delivery by today's rules).
const EVALUATING_THREADS: &[&str] = &["wss-transformer", "wss-backlog"];

/// Spawns one pipeline thread that reports on `died` if it panics, or returns while `shutdown`
/// has not been signalled (its sender dropped). The threads that evaluate filters and transforms
/// get the stack [`crate::expr::EVAL_STACK_BYTES`] their deepest evaluation needs.
fn watched_thread(
    name: String,
    work: Box<dyn FnOnce() + Send>,
    died: Sender<String>,
    shutdown: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    let mut builder = thread::Builder::new().name(name.clone());
    if EVALUATING_THREADS.contains(&name.as_str()) {
        builder = builder.stack_size(crate::expr::EVAL_STACK_BYTES);
    }
    builder.spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let stopping = matches!(shutdown.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected));
        let why = match outcome {
            Err(panic) => {
                let text = panic.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| panic.downcast_ref::<String>().cloned());
                Some(format!("pipeline thread {name} panicked: {}", text.as_deref().unwrap_or("(no message)")))
            }
            Ok(()) if !stopping => Some(format!("pipeline thread {name} stopped without being asked to")),
            Ok(()) => None,
        };
        if let Some(why) = why {
            let _ = died.send(why);
        }
    })
}

/// Channel capacities between stages: enough to keep each busy, small enough to bound memory.
const STAGE_QUEUE: usize = 1024;

/// Spawns the pipeline's threads, each watched ([`watched_thread`]), and keeps their handles.
struct Spawner {
    threads: Vec<JoinHandle<()>>,
    died: Sender<String>,
    shutdown: Receiver<()>,
}

impl Spawner {
    fn spawn(&mut self, name: impl Into<String>, work: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        self.threads.push(watched_thread(name.into(), Box::new(work), self.died.clone(), self.shutdown.clone())?);
        Ok(())
    }

    /// The shutdown signal, for one more stage.
    fn stop(&self) -> Receiver<()> {
        self.shutdown.clone()
    }
}

/// Readers of each edge's depth, in [`crate::metrics::EDGES`]' order, for the gauges (which drop
/// these receiving ends on shutdown).
fn depth_probes(
    inbound: &Receiver<Inbound>,
    fresh: &Receiver<Delivery>,
    due: &Receiver<Delivery>,
    signed: &work_queue::Consumer<SignedDelivery>,
    done: &Receiver<Completion>,
) -> gauges::Depths {
    let (a, b, c, d, e) = (inbound.clone(), fresh.clone(), due.clone(), signed.clone(), done.clone());
    let depths: Vec<Box<dyn Fn() -> usize + Send>> = vec![
        Box::new(move || a.len()),
        Box::new(move || b.len()),
        Box::new(move || c.len()),
        Box::new(move || d.len()),
        Box::new(move || e.len()),
    ];
    debug_assert_eq!(depths.len(), crate::metrics::EDGES.len());
    gauges::Depths(depths)
}

/// Spawns the sources: the Redis stream's reader and leases, always, and each configured broker
/// source, all admitting into `in_flight` and feeding `inbound` (bad entries to `done`).
fn spawn_sources(
    sp: &mut Spawner,
    deps: &Deps,
    in_flight: &Arc<InFlight>,
    inbound: &Sender<Inbound>,
    completions: &Sender<Completion>,
) -> std::io::Result<()> {
    // The Redis stream is always read, whatever else is: the control plane's PublishEvent
    // and RedeliverDeadLetter append to it (an idle stream costs a cheap read every 10 ms).
    // With sharded streams (docs/contract.md §8) a reader and a leases thread per shard: a
    // read cannot span streams in different slots of a cluster, and each one's own
    // connection keeps a slow shard from holding up the others.
    let (config, keys) = (&deps.config, &deps.keys);
    for shard in 0..keys.shards() {
        let name = |stage: &str| if keys.shards() == 1 { format!("wss-{stage}") } else { format!("wss-{stage}-{shard}") };
        let reader = crate::source::redis::reader::Reader {
            redis: deps.redis.clone(),
            shard,
            stream: keys.stream(shard),
            consumer: config.consumer.clone(),
            batch: config.read_batch,
            block: config.read_block,
            max_event_bytes: config.max_event_bytes,
            in_flight: in_flight.clone(),
            events_read: deps.metrics.events_read.clone(),
            script: crate::source::redis::poison::read_script(),
        };
        let (out, done, stop) = (inbound.clone(), completions.clone(), sp.stop());
        sp.spawn(name("reader"), move || reader.run(out, done, stop))?;

        let leases = crate::source::redis::leases::Leases {
            redis: deps.redis.clone(),
            shard,
            stream: keys.stream(shard),
            consumer: config.consumer.clone(),
            claim_after: config.claim_after,
            batch: config.read_batch,
            max_event_bytes: config.max_event_bytes,
            in_flight: in_flight.clone(),
            events_read: deps.metrics.events_read.clone(),
        };
        let (out, done, stop) = (inbound.clone(), completions.clone(), sp.stop());
        sp.spawn(name("leases"), move || leases.run(out, done, stop))?;

        if let Some(keep_for) = config.stream_retention {
            let retention = crate::source::redis::retention::Retention {
                redis: deps.redis.clone(),
                stream: keys.stream(shard),
                keep_for,
                trimmed: deps.metrics.stream_trimmed.clone(),
                clock: deps.clock.clone(),
            };
            let stop = sp.stop();
            sp.spawn(name("retention"), move || retention.run(stop))?;
        }
    }
    if config.stream_retention.is_none() {
        log::info!(target: "wss::retention", "WSS_STREAM_RETENTION=off: wss does not trim {}, leaving that to producers (XADD … MAXLEN or MINID)", keys.events);
    }
    let started_ms = deps.clock.now_ms();
    for (n, spec) in deps.config.sources.iter().enumerate() {
        let label = spec.label();
        let status = crate::source::SourceStatus {
            label: label.clone(),
            health: deps.health.clone(),
            events_read: deps.metrics.events_read.clone(),
            up: deps.metrics.source_up.with_label_values(&[&label]),
            outages: deps.metrics.source_outages.with_label_values(&[&label]),
            pending: deps.metrics.source_pending.with_label_values(&[&label]),
        };
        let intake = crate::source::Intake {
            max_event_bytes: deps.config.max_event_bytes,
            window: deps.config.max_in_flight,
            in_flight: in_flight.clone(),
            status,
            started_ms,
            clock: deps.clock.clone(),
        };
        let (out, done, stop) = (inbound.clone(), completions.clone(), sp.stop());
        match spec {
            // Read above, whether listed or not.
            crate::source::SourceSpec::Redis => {}
            crate::source::SourceSpec::Nats(spec) => {
                let source = crate::source::nats::NatsSource { spec: (**spec).clone(), batch: deps.config.read_batch, intake };
                sp.spawn(format!("wss-nats-{n}"), move || source.run(out, done, stop))?;
            }
            crate::source::SourceSpec::Amqp(spec) => {
                let source = crate::source::amqp::AmqpSource { spec: (**spec).clone(), intake };
                sp.spawn(format!("wss-amqp-{n}"), move || source.run(out, done, stop))?;
            }
        }
    }
    Ok(())
}

impl Pipeline {
    /// Builds every channel and worker, then spawns the threads.
    pub fn start(deps: Deps) -> std::io::Result<Self> {
        let config = &deps.config;
        let (shutdown_tx, shutdown_rx) = bounded::<()>(0);
        let (inbound_tx, inbound_rx) = bounded::<Inbound>(STAGE_QUEUE);
        let (fresh_tx, fresh_rx) = bounded::<Delivery>(STAGE_QUEUE);
        let (due_tx, due_rx) = bounded::<Delivery>(STAGE_QUEUE);
        let (signed_tx, signed_rx) = work_queue::bounded::<SignedDelivery>(config.sender_threads.max(STAGE_QUEUE / 4));
        // Unbounded, yet bounded in fact: a completion stands for a delivery in hand, and those
        // are bounded by the in-flight window (entries) and their webhooks. Bounded, it filled
        // whenever Redis was slower than the senders, and 256 sender threads then spun and
        // yielded on a full channel: a third of wss's CPU went to context switches
        // (docs/performance.md, "Context switches"). The window is what holds the reader back.
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<Completion>();
        // Hand-offs due soon wake the backlog's pump (one pending wake-up is enough).
        let (wake_tx, wake_rx) = bounded::<()>(1);
        let in_flight = Arc::new(InFlight::new(config.max_in_flight));
        deps.metrics.in_flight_limit.set(config.max_in_flight as i64);
        let depths = depth_probes(&inbound_rx, &fresh_rx, &due_rx, &signed_rx, &done_rx);
        let agent = config.agents();

        let (died_tx, died_rx) = crossbeam_channel::unbounded::<String>();
        let mut sp = Spawner { threads: Vec::new(), died: died_tx, shutdown: shutdown_rx.clone() };

        spawn_sources(&mut sp, &deps, &in_flight, &inbound_tx, &done_tx)?;
        drop(inbound_tx);
        let Deps { config, redis, keys, store, routing, live, metrics, tracer, health: _, clock } = deps;

        let (r, input, out, done, stop) = (routing.clone(), inbound_rx, fresh_tx, done_tx.clone(), shutdown_rx.clone());
        let (s, c) = (store.clone(), clock.clone());
        sp.spawn("wss-transformer", move || transformer::run(&c, &r, &s, input, out, done, stop))?;

        let isolation = live.isolation().clone();
        // Unbounded, yet bounded in fact: one message per finished attempt, and attempts in
        // progress are bounded by the sender queue and pool. Bounded, it could close a cycle.
        let (freed_tx, freed_rx) = crossbeam_channel::unbounded::<String>();
        let signer = signer::Signer {
            routing: routing.clone(),
            isolation: isolation.clone(),
            redis: redis.clone(),
            keys: keys.clone(),
            clock: clock.clone(),
        };
        let outputs = signer::Outputs { out: signed_tx, done: done_tx.clone() };
        let stop = shutdown_rx.clone();
        sp.spawn("wss-signer", move || signer.run(fresh_rx, due_rx, freed_rx, outputs, stop))?;

        let backlog_in_progress = Arc::new(AtomicUsize::new(0));
        let pump = backlog::Pump {
            redis: redis.clone(),
            keys: keys.clone(),
            routing: routing.clone(),
            isolation: isolation.clone(),
            claim_after: config.claim_after,
            max_event_bytes: config.max_event_bytes,
            taken: metrics.backlog_taken.clone(),
            budget: (config.sender_threads / 2).max(1),
            in_progress: backlog_in_progress.clone(),
            clock: clock.clone(),
        };
        let (done, stop) = (done_tx.clone(), shutdown_rx.clone());
        sp.spawn("wss-backlog", move || pump.run(wake_rx, due_tx, done, stop))?;

        let stopping = Stopping::default();
        for i in 0..config.sender_threads {
            let (agent, errors, iso, input, done, freed, stop) = (
                agent.clone(),
                metrics.attempt_errors.clone(),
                isolation.clone(),
                signed_rx.clone(),
                done_tx.clone(),
                freed_tx.clone(),
                stopping.clone(),
            );
            let (tracer, clock) = (tracer.clone(), clock.clone());
            sp.spawn(format!("wss-sender-{i}"), move || sender::run(&clock, &agent, i, &errors, &iso, &tracer, input, done, freed, &stop))?;
        }
        drop(signed_rx);
        drop(done_tx);

        let outcomes = outcomes::Outcomes {
            redis: redis.clone(),
            keys: keys.clone(),
            dead_letter_maxlen: config.dead_letter_maxlen,
            retention: crate::history::Retention { max_age: config.history_max_age, max_count: config.history_max_count },
            store: store.clone(),
            routing: routing.clone(),
            in_flight: in_flight.clone(),
            freed: freed_tx,
            wake: wake_tx,
            backlog_in_progress,
            draw: crate::retry::random_draw,
            isolation: isolation.clone(),
            instance: config.consumer.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
        };
        let stop = shutdown_rx.clone();
        sp.spawn("wss-outcomes", move || outcomes.run(done_rx, stop))?;

        let gauges = gauges::Gauges {
            metrics,
            isolation,
            in_flight: in_flight.clone(),
            routing: routing.clone(),
            redis: redis.clone(),
            keys: keys.clone(),
            depths,
            clock,
        };
        let stop = shutdown_rx.clone();
        sp.spawn("wss-gauges", move || gauges.run(stop))?;

        let (r, s, stop) = (routing, store, shutdown_rx);
        sp.spawn("wss-config", move || crate::domain::routing::run_refresher(r, s, Duration::from_millis(250), stop))?;

        Ok(Self { shutdown: Some(shutdown_tx), stopping, threads: sp.threads, in_flight, died: died_rx })
    }

    /// Says, once for each, why a pipeline thread ended when it was not asked to (a panic, or a
    /// return without shutdown). The process must not go on half alive: `main` exits on the
    /// first message.
    pub fn failures(&self) -> &Receiver<String> {
        &self.died
    }

    /// Entries read and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Signals every stage to stop, then waits up to `grace` for them. Returns false when threads
    /// were still busy (their entries stay pending in Redis and are delivered after a restart).
    pub fn stop(mut self, grace: Duration) -> bool {
        self.stopping.set();
        drop(self.shutdown.take());
        let (done_tx, done_rx) = bounded::<()>(1);
        let threads = std::mem::take(&mut self.threads);
        thread::spawn(move || {
            for t in threads {
                let _ = t.join();
            }
            let _ = done_tx.send(());
        });
        done_rx.recv_timeout(grace).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_dies_says_why_and_one_stopped_on_request_says_nothing() {
        let (died_tx, died) = crossbeam_channel::unbounded::<String>();
        let (shutdown_tx, shutdown) = bounded::<()>(0);
        let panicking = watched_thread("wss-test-panic".into(), Box::new(|| panic!("boom")), died_tx.clone(), shutdown.clone()).unwrap();
        let returning = watched_thread("wss-test-return".into(), Box::new(|| {}), died_tx.clone(), shutdown.clone()).unwrap();
        let _ = panicking.join();
        let _ = returning.join();
        let mut reasons: Vec<String> = died.try_iter().collect();
        reasons.sort();
        assert_eq!(
            reasons,
            ["pipeline thread wss-test-panic panicked: boom", "pipeline thread wss-test-return stopped without being asked to"]
        );
        drop(shutdown_tx);
        let stopped = watched_thread("wss-test-stopped".into(), Box::new(|| {}), died_tx, shutdown).unwrap();
        let _ = stopped.join();
        assert!(died.try_recv().is_err(), "a thread ending after shutdown is not a failure");
    }
}
