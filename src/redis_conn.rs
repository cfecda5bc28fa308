//! Connecting to Redis, and waiting for it when it is away.
//!
//! Every pipeline thread owns its own connection, made through one [`RedisTarget`]. When Redis is
//! unreachable, each thread retries with capped exponential backoff, but the outage is logged once
//! — naming the URL and how to start a Redis — and its end once, however many threads notice it.
//! Only a failed *connect* declares an outage: a command failing on an existing connection just
//! makes its owner reconnect. Waits between attempts end early on shutdown.
//!
//! `rediss://` URLs speak TLS (rustls): the server's certificate is verified against the OS trust
//! store, or the CA of `WSS_REDIS_CA_FILE`, and its name against the URL's host; a client
//! certificate is presented when `WSS_REDIS_CLIENT_CERT_FILE`/`_KEY_FILE` are set.
//! `redis://user:password@host` authenticates as an ACL user. A failed connect says which of
//! these went wrong — refused credentials, a TLS handshake that failed and why, or nobody
//! answering — and what to do about it ([`explain`]).
//!
//! `redis+cluster://[user:password@]host1:port1,host2:port2` (`rediss+cluster://` for TLS) names
//! the seed nodes of a Redis Cluster (docs/contract.md §8): a connection is then the redis
//! crate's `ClusterConnection`, which follows `MOVED`/`ASK` redirections and refreshes the slot
//! map after a failover. Both kinds are one [`Conn`], so every stage works on either. On a
//! cluster a pipeline or a transaction goes whole to the node of its *first* key: the rule the
//! code keeps is that each touches one slot (`crate::keys`, [`Conn::is_cluster`]).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use redis::{cluster::ClusterClient, Client, ConnectionLike, RedisError, RedisResult, Value};

/// TLS material for Redis (`WSS_REDIS_CA_FILE`, `WSS_REDIS_CLIENT_CERT_FILE`,
/// `WSS_REDIS_CLIENT_KEY_FILE`), read at start-up: the CA that signed the server's certificate
/// (else the OS trust store verifies it), and a client certificate and key for mutual TLS.
/// `Debug` shows neither.
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca_pem: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls").field("ca", &self.ca_pem.is_some()).field("client_certificate", &self.client.is_some()).finish()
    }
}

/// A connection to one Redis or to a Redis Cluster.
pub enum Conn {
    Single(redis::Connection),
    /// Boxed: it is several times the size of a single connection, and each thread holds one.
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    /// Bounds every later read (`None`: wait for ever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> RedisResult<()> {
        match self {
            Conn::Single(con) => con.set_read_timeout(timeout),
            Conn::Cluster(con) => con.set_read_timeout(timeout),
        }
    }

    /// Bounds every later write (`None`: wait for ever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> RedisResult<()> {
        match self {
            Conn::Single(con) => con.set_write_timeout(timeout),
            Conn::Cluster(con) => con.set_write_timeout(timeout),
        }
    }

    /// A Redis Cluster: a pipeline or transaction must keep to one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    fn inner(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(con) => con,
            Conn::Cluster(con) => con.as_mut(),
        }
    }
}

/// Delegates to the connection. Pipelining is claimed for a cluster too (the crate's
/// `ClusterConnection` denies it so that `Pipeline::query` refuses it): its packed pipeline goes
/// to the node of the first command's key, which serves it whole when every key of it is in
/// that slot — the rule every caller keeps.
impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.inner().req_packed_command(cmd)
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        self.inner().req_packed_commands(cmd, offset, count)
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        self.inner().req_command(cmd)
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(con) => con.get_db(),
            Conn::Cluster(con) => con.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        true
    }

    fn check_connection(&mut self) -> bool {
        self.inner().check_connection()
    }

    fn is_open(&self) -> bool {
        match self {
            Conn::Single(con) => con.is_open(),
            Conn::Cluster(con) => con.is_open(),
        }
    }
}

/// One Redis, or the seed nodes of a Redis Cluster.
#[derive(Clone)]
enum Target {
    Single(Client),
    Cluster(ClusterClient),
}

/// The node URLs of a `redis+cluster://` or `rediss+cluster://` URL (`None` for any other):
/// `redis+cluster://user:pw@h1:p1,h2:p2/` gives `redis://user:pw@h1:p1/` and
/// `redis://user:pw@h2:p2/`.
pub fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else {
        ("rediss", url.strip_prefix("rediss+cluster://")?)
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (credentials, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let nodes: Vec<String> =
        hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{credentials}{h}{tail}")).collect();
    if nodes.is_empty() {
        return Some(Err(format!("{} names no node: write {scheme}+cluster://host1:port1,host2:port2", redact_url(url))));
    }
    Some(Ok(nodes))
}

#[derive(Clone)]
pub struct RedisTarget {
    target: Target,
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
        Self::with_tls(url, &RedisTls::default())
    }

    /// A target whose `rediss://` connections use `tls`'s CA and client certificate.
    pub fn with_tls(url: &str, tls: &RedisTls) -> Result<Self, RedisError> {
        let custom_tls = tls.ca_pem.is_some() || tls.client.is_some();
        let certificates = || redis::TlsCertificates {
            client_tls: tls
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
            root_cert: tls.ca_pem.clone(),
        };
        let target = match cluster_nodes(url) {
            Some(nodes) => {
                let nodes = nodes.map_err(|why| RedisError::from((redis::ErrorKind::InvalidClientConfig, "not a cluster URL", why)))?;
                let mut builder = ClusterClient::builder(nodes).connection_timeout(Duration::from_secs(2));
                if custom_tls {
                    builder = builder.certs(certificates());
                }
                Target::Cluster(builder.build()?)
            }
            None if custom_tls => Target::Single(Client::build_with_tls(url, certificates())?),
            None => Target::Single(Client::open(url)?),
        };
        Ok(Self { target, display_url: redact_url(url).into(), outage: Arc::default() })
    }

    /// A Redis Cluster (`redis+cluster://`).
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
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

    /// A connection, without noting an outage (a probe's).
    pub fn connect_quietly(&self, timeout: Duration) -> Result<Conn, RedisError> {
        match &self.target {
            Target::Single(client) => client.get_connection_with_timeout(timeout).map(Conn::Single),
            Target::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new().set_connection_timeout(timeout);
                client.get_connection_with_config(config).map(|con| Conn::Cluster(Box::new(con)))
            }
        }
    }

    /// One attempt; notes the outage (logged once) or its end.
    pub fn connect_once(&self, timeout: Duration) -> Result<Conn, RedisError> {
        match self.connect_quietly(timeout) {
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
    pub fn connect_bounded(&self, connect: Duration, io: Duration) -> Result<Conn, RedisError> {
        let con = self.connect_once(connect)?;
        con.set_read_timeout(Some(io))?;
        con.set_write_timeout(Some(io))?;
        Ok(con)
    }

    /// Retries until connected, or returns `None` once `shutdown` fires (its sender dropped).
    pub fn connect_with_retry(&self, shutdown: &Receiver<()>) -> Option<Conn> {
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
            log::error!(target: "wss::redis", "{}; retrying in the background", explain(&self.display_url, err));
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

/// Why connecting to Redis at `url` (as displayed: no password) failed, and what to do.
pub fn explain(url: &str, err: &RedisError) -> String {
    if err.kind() == redis::ErrorKind::AuthenticationFailed
        || err.code().is_some_and(|code| matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM"))
    {
        return format!(
            "Redis at {url} refused the credentials ({}): check the user and password in WSS_REDIS_URL (redis://user:password@host:port) against the server's ACL (ACL LIST)",
            without_secrets(err)
        );
    }
    if let Some(tls) = rustls_error(err) {
        let reason = crate::http::tls_reason(tls);
        let advice = match reason {
            crate::http::TlsReason::UnknownIssuer | crate::http::TlsReason::BadCertificate => {
                "set WSS_REDIS_CA_FILE to the CA that signed the server's certificate (without it the OS trust store decides)"
            }
            crate::http::TlsReason::NotValidForName => "connect by a host name (or address) the server's certificate names",
            crate::http::TlsReason::Expired | crate::http::TlsReason::NotYetValid => {
                "renew the server's certificate (or check this machine's clock)"
            }
            crate::http::TlsReason::ClientCertificateRequired | crate::http::TlsReason::ClientCertificateRejected => {
                "set WSS_REDIS_CLIENT_CERT_FILE and WSS_REDIS_CLIENT_KEY_FILE to a certificate the server's tls-ca-cert-file trusts"
            }
            _ => "check that the port speaks TLS (redis-server --tls-port) and that both sides share a TLS version and cipher",
        };
        return format!("the TLS handshake with Redis at {url} failed: {} ({tls}); {advice}", reason.words());
    }
    if (url.starts_with("rediss://") || url.starts_with("rediss+cluster://")) && err.is_io_error() && !err.is_connection_refusal() {
        return format!(
            "Redis at {url} did not complete a TLS connection ({err}): check that the port speaks TLS (redis-server --tls-port), not plain TCP, and whether the server requires client certificates (tls-auth-clients): then set WSS_REDIS_CLIENT_CERT_FILE and WSS_REDIS_CLIENT_KEY_FILE"
        );
    }
    format!("Redis at {url} is unreachable ({err}). Start one (e.g. `redis-server --port 6379`) or point WSS_REDIS_URL at one")
}

/// The rustls error under a connect error, if the TLS handshake is what failed. (redis-rs keeps
/// an I/O error behind an `Arc<dyn Error>`, which is what its `source()` hands out; rustls's
/// error is that I/O error's payload.)
fn rustls_error(err: &RedisError) -> Option<&rustls::Error> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let source = std::error::Error::source(err)?;
    let inner: &(dyn std::error::Error + 'static) = match source.downcast_ref::<Shared>() {
        Some(shared) => shared.as_ref(),
        None => source,
    };
    if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    inner.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<rustls::Error>()
}

/// An authentication error's text, which never carries the password (Redis's own words).
fn without_secrets(err: &RedisError) -> String {
    err.detail().map_or_else(|| err.to_string(), ToOwned::to_owned)
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

/// True for errors that mean "the connection is gone" rather than "the command was wrong" —
/// on a cluster also "the slot moved": a redirection the crate does not follow (inside a
/// transaction, which Redis aborts whole), after a failover or a resharding. Either way the
/// caller reconnects (a new cluster connection reads the new slot map) and tries again.
pub fn is_connection_error(err: &RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout() || is_redirection(err)
}

/// A cluster redirection or a cluster not ready, alone or as the cause of an aborted
/// transaction.
fn is_redirection(err: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    let cluster = |kind: Option<ServerErrorKind>| {
        matches!(kind, Some(ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain | ServerErrorKind::ClusterDown))
    };
    err.is_cluster_error()
        || (err.kind() == ErrorKind::Server(ServerErrorKind::ExecAbort)
            && err.clone().into_server_errors().is_some_and(|errors| errors.iter().any(|(_, e)| cluster(e.kind()))))
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
        assert_eq!(redact_url("rediss+cluster://u:pw@h1:1,h2:2"), "rediss+cluster://***@h1:1,h2:2");
    }

    #[test]
    fn a_cluster_url_names_its_seed_nodes() {
        assert_eq!(cluster_nodes("redis://h:1"), None);
        assert_eq!(cluster_nodes("redis+cluster://h1:7000,h2:7001"), Some(Ok(vec!["redis://h1:7000".into(), "redis://h2:7001".into()])));
        assert_eq!(
            cluster_nodes("rediss+cluster://wss:pw@h1:7000,h2:7001/"),
            Some(Ok(vec!["rediss://wss:pw@h1:7000/".into(), "rediss://wss:pw@h2:7001/".into()]))
        );
        assert!(matches!(cluster_nodes("redis+cluster://"), Some(Err(_))));
        assert!(RedisTarget::new("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").is_ok_and(|t| t.is_cluster()));
        assert!(RedisTarget::new("rediss+cluster://u:p@127.0.0.1:7000").is_ok_and(|t| t.is_cluster()));
        assert!(!RedisTarget::new("redis://127.0.0.1:7000").unwrap().is_cluster());
    }
}
