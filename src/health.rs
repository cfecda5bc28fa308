//! Whether this process is well, told the same way everywhere: `GET /healthz` and `GET /readyz`
//! on the metrics listener, the gRPC `grpc.health.v1.Health` service, and the `wss_redis_up`
//! gauge.
//!
//! - **Alive** (`/healthz`): the process answers and its pipeline has not failed. A pipeline
//!   thread that dies makes the process exit non-zero (`main`), so "not alive" is only ever seen
//!   in the moments before that exit; a supervisor restarts it.
//! - **Ready** (`/readyz`, gRPC `SERVING`): alive, the pipeline is running (started after the
//!   configuration was loaded), and Redis answered a `PING` within the last probe. Without
//!   Redis every control-plane call fails `UNAVAILABLE` and nothing is delivered, so a load
//!   balancer or orchestrator should send nothing here and wait.
//!
//! Redis is probed by a `wss-health` thread of its own, with its own connection, once a second
//! ([`PROBE_EVERY`]), each connect, read and write bounded by a second: an outage shows within two
//! seconds, whether or not any other thread happens to be talking to Redis.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;

use crate::redis_conn::RedisTarget;

/// How often Redis is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Bound on each probe's connect, read and write.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const FAILED: u8 = 2;

/// The process's health, shared by everything that reports it.
#[derive(Default)]
pub struct Health {
    redis_up: AtomicBool,
    pipeline: AtomicU8,
    /// Why the pipeline failed, once it did.
    failure: Mutex<Option<String>>,
    /// Bumped at every change; the gRPC health reporter records the last one it applied, so
    /// that `main` can wait for it ([`Health::wait_reported`]).
    generation: AtomicU64,
    reported: AtomicU64,
    reporter_attached: AtomicBool,
    /// Message-queue sources (`crate::source`) that failed their last operation, by name.
    sources_down: Mutex<std::collections::BTreeSet<String>>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set_redis_up(&self, up: bool) {
        if self.redis_up.swap(up, Ordering::SeqCst) != up {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The current generation (bumped at every change).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A reporter (gRPC health) follows this state from now on.
    pub fn attach_reporter(&self) {
        self.reporter_attached.store(true, Ordering::SeqCst);
    }

    /// The reporter has applied the state of `generation`.
    pub fn reported(&self, generation: u64) {
        self.reported.fetch_max(generation, Ordering::SeqCst);
    }

    /// Waits (at most `within`) until an attached reporter shows the state as it is now, so
    /// that what is logged next (`reading … as consumer …`) is also what gRPC health answers.
    pub fn wait_reported(&self, within: Duration) {
        if !self.reporter_attached.load(Ordering::SeqCst) {
            return;
        }
        let target = self.generation();
        let deadline = std::time::Instant::now() + within;
        while self.reported.load(Ordering::SeqCst) < target && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A message-queue source's last operation succeeded (`up`) or failed.
    pub fn set_source_up(&self, source: &str, up: bool) {
        let mut down = self.sources_down.lock();
        let changed = if up { down.remove(source) } else { down.insert(source.to_owned()) };
        if changed {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::SeqCst)
    }

    /// The pipeline's threads are running.
    pub fn pipeline_started(&self) {
        let _ = self.pipeline.compare_exchange(NOT_STARTED, RUNNING, Ordering::SeqCst, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A pipeline thread died; the process is about to exit.
    pub fn pipeline_failed(&self, why: &str) {
        self.pipeline.store(FAILED, Ordering::SeqCst);
        self.failure.lock().get_or_insert_with(|| why.to_owned());
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Not alive only once the pipeline failed.
    pub fn alive(&self) -> Result<(), String> {
        match self.pipeline.load(Ordering::SeqCst) {
            FAILED => Err(format!("the pipeline failed: {}", self.failure.lock().as_deref().unwrap_or("?"))),
            _ => Ok(()),
        }
    }

    /// Ready to serve, or why not.
    pub fn ready(&self) -> Result<(), String> {
        self.alive()?;
        if !self.redis_up() {
            return Err("Redis is unreachable".into());
        }
        if let Some(source) = self.sources_down.lock().iter().next() {
            return Err(format!("source {source} is unreachable"));
        }
        match self.pipeline.load(Ordering::SeqCst) {
            RUNNING => Ok(()),
            _ => Err("the pipeline has not started yet (waiting for the configuration in Redis)".into()),
        }
    }
}

/// Starts the `wss-health` thread: PINGs Redis every [`PROBE_EVERY`] and records the answer in
/// `health` and `gauge` (`wss_redis_up`), until `shutdown` disconnects.
pub fn spawn_prober(
    redis: RedisTarget,
    health: Arc<Health>,
    gauge: prometheus::IntGauge,
    shutdown: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("wss-health".into()).spawn(move || {
        let mut conn: Option<crate::redis_conn::Conn> = None;
        loop {
            if conn.is_none() {
                // Not `connect_once`: a failed probe is not the pipeline's outage to announce.
                conn = redis
                    .connect_quietly(PROBE_TIMEOUT)
                    .ok()
                    .filter(|con| con.set_read_timeout(Some(PROBE_TIMEOUT)).is_ok() && con.set_write_timeout(Some(PROBE_TIMEOUT)).is_ok());
            }
            let up = match conn.as_mut() {
                Some(con) => redis::cmd("PING").query::<String>(con).is_ok(),
                None => false,
            };
            if !up {
                conn = None;
            }
            health.set_redis_up(up);
            gauge.set(i64::from(up));
            match shutdown.recv_timeout(PROBE_EVERY) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_redis_and_a_running_pipeline_and_a_failure_ends_both() {
        let health = Health::new();
        assert!(health.alive().is_ok());
        assert_eq!(health.ready(), Err("Redis is unreachable".into()));
        health.set_redis_up(true);
        assert!(health.ready().unwrap_err().starts_with("the pipeline has not started"));
        health.pipeline_started();
        assert_eq!(health.ready(), Ok(()));
        health.set_source_up("nats://127.0.0.1:4222/WSS_EVENTS", false);
        assert_eq!(health.ready(), Err("source nats://127.0.0.1:4222/WSS_EVENTS is unreachable".into()));
        health.set_source_up("nats://127.0.0.1:4222/WSS_EVENTS", true);
        assert_eq!(health.ready(), Ok(()));
        health.set_redis_up(false);
        assert_eq!(health.ready(), Err("Redis is unreachable".into()));
        health.set_redis_up(true);
        health.pipeline_failed("thread wss-transformer panicked: boom");
        health.pipeline_started(); // no way back
        assert_eq!(health.alive(), Err("the pipeline failed: thread wss-transformer panicked: boom".into()));
        assert_eq!(health.ready(), health.alive());
    }
}
