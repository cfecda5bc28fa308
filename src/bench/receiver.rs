//! The bench's webhook receivers: [`wss::http_listener::Listener`] (hyper, on a two-thread tokio
//! runtime of its own) on `127.0.0.1:0`, in the bench's own process, so that receipt times and
//! publish times come from the same clock.
//!
//! A receiver answers every request alike — a status after a delay (`200` at once for the fast
//! receiver, `200` after 100 ms for the slow one, `500` at once for the failing one) — and
//! counts what it gets: the number of requests, the time of the latest receipt, and, while
//! recording is on, each request's latency (now minus the publish time the event carries in
//! `data.t`, in microseconds since the Unix epoch). One request in [`VERIFY_EVERY`] has its
//! signature checked with the webhook's secret (the secret of webhook `i` is [`secret_of`]`(i)`,
//! and its URL path is `/w<i>`), so a bench that measures unsigned or wrongly signed deliveries
//! says so instead of reporting a figure.
//!
//! An HTTPS receiver ([`Receiver::start_tls`]) is the same server speaking TLS with a
//! certificate for 127.0.0.1 from a CA made when the bench runs ([`ReceiverPki`]); the service
//! trusts that CA through `WSS_TARGET_CA_FILE`, as an operator trusts a company CA.
//!
//! A hanging receiver ([`Receiver::hanging`]) counts what it gets and never answers: each request
//! holds its connection open until the receiver is dropped. It is the bad webhook of the
//! isolation run.
//!
//! A receiver's answer waits without a thread: the delay is a tokio timer, and the hanging
//! receiver's answer a future that never completes, dropped with its connection.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use http::{Request, StatusCode};
use parking_lot::Mutex;
use wss::{
    http_listener::{self, Bytes, Listener, Options},
    signature::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER},
};

/// One request in this many has its signature verified.
pub const VERIFY_EVERY: u64 = 64;

/// The secret the bench registers for webhook number `i` (the same for every scenario: the
/// receiver finds it from the URL path alone).
pub fn secret_of(i: usize) -> String {
    format!("whsec_bench_{i:07}_0123456789abcdef")
}

/// Microseconds since the Unix epoch: the clock events carry and receipts are compared with.
pub fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// What a receiver has seen.
pub struct Stats {
    epoch: Instant,
    received: AtomicU64,
    /// Microseconds after `epoch` of the latest receipt.
    last_us: AtomicU64,
    recording: AtomicBool,
    latencies_us: Mutex<Vec<u64>>,
    verified: AtomicU64,
    bad_signatures: AtomicU64,
}

impl Stats {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// When the latest request arrived.
    pub fn last_receipt(&self) -> Instant {
        self.epoch + Duration::from_micros(self.last_us.load(Ordering::SeqCst))
    }

    /// Starts recording latencies afresh.
    pub fn record_latencies(&self) {
        self.latencies_us.lock().clear();
        self.recording.store(true, Ordering::SeqCst);
    }

    /// Stops recording; returns what was recorded.
    pub fn take_latencies(&self) -> Vec<u64> {
        self.recording.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.latencies_us.lock())
    }

    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::SeqCst)
    }

    pub fn bad_signatures(&self) -> u64 {
        self.bad_signatures.load(Ordering::SeqCst)
    }

    fn on_request(&self, request: &Request<Bytes>) {
        let n = self.received.fetch_add(1, Ordering::SeqCst);
        self.last_us.fetch_max(self.epoch.elapsed().as_micros() as u64, Ordering::SeqCst);
        if self.recording.load(Ordering::Relaxed) {
            if let Some(sent) = publish_time(request.body()) {
                self.latencies_us.lock().push(unix_micros().saturating_sub(sent));
            }
        }
        if n % VERIFY_EVERY == 0 {
            let index = request.uri().path().strip_prefix("/w").and_then(|i| i.parse::<usize>().ok());
            let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
            let valid = index.is_some_and(|i| {
                signature::verify(
                    secret_of(i).as_bytes(),
                    header(TIMESTAMP_HEADER),
                    header(SIGNATURE_HEADER),
                    request.body(),
                    signature::DEFAULT_TOLERANCE,
                    SystemTime::now(),
                )
                .is_ok()
            });
            let counter = if valid { &self.verified } else { &self.bad_signatures };
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The publish time an event's `data` carries: the body is the envelope, whose `data` the bench
/// writes as `{"t":<µs>,…}`.
fn publish_time(body: &[u8]) -> Option<u64> {
    const MARK: &[u8] = br#""data":{"t":"#;
    let at = body.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits]).ok()?.parse().ok().filter(|t| *t > 0)
}

/// A CA and a server certificate for 127.0.0.1 it signed, made now (`rcgen`).
pub struct ReceiverPki {
    /// The CA's certificate, PEM: what the service must trust.
    pub ca_pem: String,
    /// The receiver's TLS configuration: the certificate and its key.
    pub server: Arc<rustls::ServerConfig>,
}

impl ReceiverPki {
    pub fn new() -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "wss bench receivers CA");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(Vec::<String>::new())?;
        leaf.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(anyhow::Error::msg)?;
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf_cert.der().clone()], key)?;
        Ok(Self { ca_pem: ca_cert.pem(), server: Arc::new(server) })
    }
}

/// A listening receiver; dropping it closes it.
pub struct Receiver {
    listener: Listener,
    /// `http` or `https`.
    scheme: &'static str,
    pub stats: Arc<Stats>,
}

impl Receiver {
    /// Answers every request with `status` after `delay`.
    pub fn start(status: u16, delay: Duration) -> std::io::Result<Self> {
        Self::answering(status, delay, None)
    }

    /// [`Receiver::start`] over HTTPS with `tls` (see [`ReceiverPki`]).
    pub fn start_tls(status: u16, delay: Duration, tls: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        Self::answering(status, delay, Some(tls))
    }

    fn answering(status: u16, delay: Duration, tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<Self> {
        let status = StatusCode::from_u16(status).map_err(std::io::Error::other)?;
        let stats = Self::new_stats();
        let seen = stats.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let options = Options { tls, ..Options::default() };
        let listener = Listener::bind_standalone(([127, 0, 0, 1], 0).into(), options, move |request: Request<Bytes>| {
            seen.on_request(&request);
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await; // the receiver's own slowness
                }
                http_listener::empty(status)
            }
        })?;
        Ok(Self { listener, scheme, stats })
    }

    /// Connections the receiver accepted (over HTTPS: TLS handshakes).
    pub fn connections(&self) -> u64 {
        self.listener.connections_accepted()
    }

    /// Accepts every request, reads it, counts it, and never answers: the request's connection
    /// stays open, silent, until the sender gives up (its attempt timeout) or the receiver is
    /// dropped.
    pub fn hanging() -> std::io::Result<Self> {
        let stats = Self::new_stats();
        let seen = stats.clone();
        let listener = Listener::bind_standalone(([127, 0, 0, 1], 0).into(), Options::default(), move |request: Request<Bytes>| {
            seen.on_request(&request);
            std::future::pending::<http::Response<http_body_util::Full<Bytes>>>()
        })?;
        Ok(Self { listener, scheme: "http", stats })
    }

    fn new_stats() -> Arc<Stats> {
        Arc::new(Stats {
            epoch: Instant::now(),
            received: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            recording: AtomicBool::new(false),
            latencies_us: Mutex::new(Vec::new()),
            verified: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
        })
    }

    /// The URL of webhook number `i`.
    pub fn url(&self, i: usize) -> String {
        format!("{}://{}/w{i}", self.scheme, self.listener.local_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_time_is_read_from_the_envelope() {
        let body = br#"{"id":"1-0","type":"bench.event","tenant":"t","created_at":"2026-01-01T00:00:00Z","data":{"t":1767225600123456,"pad":"xx"}}"#;
        assert_eq!(publish_time(body), Some(1_767_225_600_123_456));
        assert_eq!(publish_time(br#"{"data":{"t":0}}"#), None);
        assert_eq!(publish_time(br#"{"data":{"x":1}}"#), None);
    }
}
