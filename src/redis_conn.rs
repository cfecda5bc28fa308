//! Connecting to Redis, and waiting for it when it is away.
//!
//! Every pipeline thread owns its own connection, made through one [`RedisTarget`]. When Redis is
//! unreachable, each thread retries with capped exponential backoff, but the outage is logged once
//! — naming the URL and how to start a Redis — and its end once, however many threads notice it.
//! Only a failed *connect* declares an outage: a command failing on an existing connection just
//! makes its owner reconnect. Waits between attempts end early on shutdown.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use redis::{Client, Connection, RedisError};

#[derive(Clone)]
pub struct RedisTarget {
    client: Client,
    display_url: Arc<str>,
    outage: Arc<Outage>,
}

#[derive(Default)]
struct Outage {
    down: AtomicBool,
    since: Mutex<Option<Instant>>,
    /// `wss_redis_outages_total`, once `serve` set it.
    counter: OnceLock<prometheus::IntCounter>,
}

impl RedisTarget {
    pub fn new(url: &str) -> Result<Self, RedisError> {
        Ok(Self {
            client: Client::open(url)?,
            display_url: redact_url(url).into(),
            outage: Arc::default(),
        })
    }

    /// Counts every outage (logged once, however many threads notice it) on `counter`; shared by
    /// every clone of this target.
    pub fn count_outages(&self, counter: prometheus::IntCounter) {
        let _ = self.outage.counter.set(counter);
    }

    /// The URL with any password replaced by `***`, fit for logs and error messages.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One attempt; notes the outage (logged once) or its end.
    pub fn connect_once(&self, timeout: Duration) -> Result<Connection, RedisError> {
        match self.client.get_connection_with_timeout(timeout) {
            Ok(conn) => {
                self.note_up();
                Ok(conn)
            }
            Err(err) => {
                self.note_down(&err);
                Err(err)
            }
        }
    }

    /// [`RedisTarget::connect_once`], with every later read and write bounded by `io`: for a
    /// stage that would rather drop the connection and try again than wait for ever on a Redis
    /// that stopped answering (a network cut without a reset).
    pub fn connect_bounded(&self, connect: Duration, io: Duration) -> Result<Connection, RedisError> {
        let con = self.connect_once(connect)?;
        con.set_read_timeout(Some(io))?;
        con.set_write_timeout(Some(io))?;
        Ok(con)
    }

    /// Retries until connected, or returns `None` once `shutdown` fires (its sender dropped).
    pub fn connect_with_retry(&self, shutdown: &Receiver<()>) -> Option<Connection> {
        let mut delay = Duration::from_millis(100);
        loop {
            if let Ok(conn) = self.connect_once(Duration::from_secs(2)) {
                return Some(conn);
            }
            match shutdown.recv_timeout(delay) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return None,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Called by users of a connection when a command failed for connection reasons. Only
    /// logged at debug: the caller reconnects, and a failed connect is what declares an outage.
    /// (A connection gone stale during an outage fails once after Redis is back; treating that as
    /// a new outage would log it again.)
    pub fn connection_lost(&self, err: &RedisError) {
        log::debug!(target: "wss::redis", "a connection to Redis at {} failed ({err}); reconnecting", self.display_url);
    }

    fn note_down(&self, err: &RedisError) {
        if !self.outage.down.swap(true, Ordering::SeqCst) {
            *self.outage.since.lock() = Some(Instant::now());
            if let Some(counter) = self.outage.counter.get() {
                counter.inc();
            }
            log::error!(
                target: "wss::redis",
                "Redis at {} is unreachable ({err}). Start one (e.g. `redis-server --port 6379`) or point WSS_REDIS_URL at one; retrying in the background",
                self.display_url
            );
        }
    }

    fn note_up(&self) {
        if self.outage.down.swap(false, Ordering::SeqCst) {
            let since = self.outage.since.lock().take();
            let after = since.map(|s| humantime::format_duration(Duration::from_secs(s.elapsed().as_secs())).to_string());
            log::info!(target: "wss::redis", "Redis at {} is reachable again (outage lasted {})", self.display_url, after.as_deref().unwrap_or("?"));
        }
    }
}

/// Hides the password part of `redis://user:password@host`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_owned() };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// True for errors that mean "the connection is gone" rather than "the command was wrong".
pub fn is_connection_error(err: &RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_display_url() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://:hunter2@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact_url("rediss://user:pw@host"), "rediss://***@host");
        assert_eq!(redact_url("redis+unix:///tmp/redis.sock"), "redis+unix:///tmp/redis.sock");
    }
}
