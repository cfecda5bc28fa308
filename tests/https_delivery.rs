//! HTTPS delivery (issue 19), end to end: `wss serve` in its default https-only mode delivering to
//! HTTPS receivers on 127.0.0.1 whose certificates the test makes with `rcgen` — a private CA
//! trusted through `WSS_TARGET_CA_FILE`, leaves for `127.0.0.1` and for `localhost` — with
//! `WSS_ALLOWED_TARGET_CIDRS` opening the loopback hole the receivers need.
//!
//! - delivered, and keep-alive holds: the receiver counts TLS handshakes, fewer than deliveries;
//! - an expired certificate, a certificate for another name and one from an untrusted issuer each
//!   fail as error kind `tls` with their reason in words (in the dead letter's attempt, the log
//!   and `wss_delivery_attempt_errors_total{kind="tls"}`);
//! - a receiver that requires a client certificate refuses a webhook without one (`client
//!   certificate required`), and gets and verifies the webhook's certificate — the rotated one
//!   after an UpdateWebhook; the key is sealed at rest, never returned, never logged;
//! - certificate names are checked against the URL's host (`localhost`), while the address
//!   dialled is the one the resolver vetted, and trusting a CA opens no address;
//! - each trust setting end to end: `bundled` + the file, `system` + the file, `file-only`;
//! - a CA file that is not one stops the service at start-up, naming the variable.
//!
//! The receivers are a small blocking rustls server written here ([`TlsReceiver`]): a thread per
//! connection, HTTP/1.1 keep-alive, every request recorded with the client certificate its
//! connection presented.

mod common;
mod secure;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use common::{assert_status, wait_until, Grpc, Keyspace, Service, WAIT};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use rustls::{pki_types::CertificateDer, server::WebPkiClientVerifier, RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use secure::TempDir;
use tonic::Code;
use wss::proto::{DeadLetter, GetWebhookRequest, UpdateWebhookRequest};

/// `WSS_ENCRYPTION_KEY` of these tests: base64 of 32 bytes.
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A CA made now, that signs leaves.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, issuer: rcgen::Issuer::new(params, key) }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `dns` names and `ips`, for `purpose`; `expired`: valid in 2020 only.
    fn leaf(&self, dns: &[&str], ips: &[&str], purpose: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let mut params = CertificateParams::new(dns.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(ip.parse().unwrap()));
        }
        params.extended_key_usages = vec![purpose];
        params.distinguished_name.push(DnType::CommonName, dns.first().or(ips.first()).copied().unwrap_or("leaf"));
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    fn server(&self, dns: &[&str], ips: &[&str]) -> Leaf {
        self.leaf(dns, ips, ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], &[], ExtendedKeyUsagePurpose::ClientAuth, false)
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTPS receiver
// ---------------------------------------------------------------------------------------------

/// One request as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    body: Vec<u8>,
    /// The leaf certificate (DER) the client presented on this request's connection.
    client_cert: Option<Vec<u8>>,
}

#[derive(Default)]
struct Seen {
    handshakes: AtomicUsize,
    failed_handshakes: AtomicUsize,
    requests: Mutex<Vec<Got>>,
    open: Mutex<Vec<TcpStream>>,
    stopping: AtomicBool,
}

/// An HTTPS receiver on 127.0.0.1:0 answering every request with 200, keep-alive.
struct TlsReceiver {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl TlsReceiver {
    /// Serves `leaf`; with `client_ca`, requires a client certificate issued by it.
    fn start(leaf: &Leaf, client_ca: Option<&Ca>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(CertificateDer::from(ca.cert.der().to_vec())).unwrap();
                builder.with_client_cert_verifier(WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap())
            }
            None => builder.with_no_client_auth(),
        };
        let chain = vec![CertificateDer::from(leaf.der.clone())];
        let key = rustls::pki_types::PrivateKeyDer::try_from(KeyPair::from_pem(&leaf.key_pem).unwrap().serialize_der()).unwrap();
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let shared = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(handle) = stream.try_clone() {
                    shared.open.lock().unwrap().push(handle);
                }
                let (config, seen) = (config.clone(), shared.clone());
                thread::spawn(move || serve(stream, config, &seen));
            }
        });
        Self { addr, seen }
    }

    /// `https://127.0.0.1:<port>/hook`
    fn url(&self) -> String {
        format!("https://{}/hook", self.addr)
    }

    fn requests(&self) -> Vec<Got> {
        self.seen.requests.lock().unwrap().clone()
    }

    fn handshakes(&self) -> usize {
        self.seen.handshakes.load(Ordering::SeqCst)
    }

    async fn wait_for_requests(&self, n: usize, what: &str) -> Vec<Got> {
        wait_until(WAIT, &format!("{n} {what} at {}", self.addr), || {
            let got = self.requests();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} so far; {} handshakes failed", got.len(), self.seen.failed_handshakes.load(Ordering::SeqCst)))
            }
        })
        .await
    }
}

impl Drop for TlsReceiver {
    fn drop(&mut self) {
        self.seen.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        for stream in self.seen.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// One connection: the handshake, then requests until the client closes.
fn serve(tcp: TcpStream, config: Arc<ServerConfig>, seen: &Seen) {
    let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            seen.failed_handshakes.fetch_add(1, Ordering::SeqCst);
            // Send the alert, then read until the client hangs up: closing with its request
            // unread would reset the connection and could destroy the alert before it is read.
            while tls.conn.wants_write() && tls.conn.write_tls(&mut tls.sock).is_ok() {}
            let _ = tls.sock.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = std::io::copy(&mut tls.sock, &mut std::io::sink());
            return;
        }
    }
    seen.handshakes.fetch_add(1, Ordering::SeqCst);
    let client_cert = tls.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    let mut reader = BufReader::new(tls);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        let mut started = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return, // closed (or a TLS error after the handshake)
                Ok(_) => {}
            }
            if line == "\r\n" {
                if started {
                    break;
                }
                continue;
            }
            started = true;
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.requests.lock().unwrap().push(Got { body, client_cert: client_cert.clone() });
        let stream = reader.get_mut();
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The dead letter of `webhook_id`, once there is one.
async fn dead_letter_of(grpc: &Grpc, tenant: &str, webhook_id: &str) -> DeadLetter {
    common::eventually(WAIT, &format!("a dead letter of webhook {webhook_id}"), || async {
        let all = grpc.dead_letters(tenant).await?;
        all.into_iter().find(|d| d.webhook_id == webhook_id).ok_or_else(|| "none yet".to_owned())
    })
    .await
}

/// Asserts that the dead letter's one attempt failed as `tls` with `words` in its error.
fn assert_tls_failure(dead: &DeadLetter, words: &str) {
    let attempt = dead.attempts.first().unwrap_or_else(|| panic!("the dead letter has its attempt: {dead:?}"));
    assert_eq!(attempt.error_kind, "tls", "{words}: {attempt:?}");
    assert_eq!(attempt.status_code, 0, "{words}: {attempt:?}");
    assert!(attempt.error.starts_with(&format!("TLS {words}: ")), "the reason in words, {words:?}: {}", attempt.error);
}

/// The services of these tests: https-only (no `WSS_ALLOW_HTTP`), the given extra variables.
async fn https_service(ks: &Keyspace, label: &str, extra: &[(&str, &str)]) -> Service {
    let mut env = vec![("WSS_ALLOW_HTTP", "false"), ("WSS_ENCRYPTION_KEY", KEY)];
    env.extend_from_slice(extra);
    Service::start(ks, label, &env).await
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_delivers_with_a_private_ca_and_tls_failures_say_why() {
    let ca = Ca::new("wss test receivers CA");
    let stranger = Ca::new("a CA nobody trusts");
    let dir = TempDir::new("https");
    let ca_file = dir.write("receivers-ca.pem", ca.pem().as_bytes());
    let ks = Keyspace::new("https_private_ca");
    // The guard stays on: only 127.0.0.1 is let through, as an operator would for one internal range.
    let service = https_service(
        &ks,
        "https",
        &[("WSS_ALLOW_PRIVATE_TARGETS", "false"), ("WSS_ALLOWED_TARGET_CIDRS", "127.0.0.1/32"), ("WSS_TARGET_CA_FILE", &ca_file)],
    )
    .await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_policy("once", 1, 100, 100).await;

    let good = TlsReceiver::start(&ca.server(&[], &["127.0.0.1"]), None);
    let expired = TlsReceiver::start(&ca.leaf(&[], &["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, true), None);
    let wrong_name = TlsReceiver::start(&ca.server(&["elsewhere.example"], &["127.0.0.2"]), None);
    let untrusted = TlsReceiver::start(&stranger.server(&[], &["127.0.0.1"]), None);

    // Trusting a CA opens no address: 127.0.0.2 is still outside the one hole.
    let outside = grpc
        .webhooks()
        .create_webhook(wss::proto::CreateWebhookRequest {
            tenant_id: "acme".into(),
            url: format!("https://127.0.0.2:{}/hook", good.addr.port()),
            ..Default::default()
        })
        .await;
    assert_status(outside, Code::InvalidArgument, Some("url"), "a loopback address outside WSS_ALLOWED_TARGET_CIDRS");
    let plain = grpc
        .webhooks()
        .create_webhook(wss::proto::CreateWebhookRequest {
            tenant_id: "acme".into(),
            url: format!("http://{}/hook", good.addr),
            ..Default::default()
        })
        .await;
    assert_status(plain, Code::InvalidArgument, Some("url"), "http:// in the default https-only mode");
    let to_good = grpc.create_webhook("acme", &good.url(), |_| {}).await;
    let mut failing = Vec::new();
    for (receiver, words) in
        [(&expired, "certificate expired"), (&wrong_name, "certificate not valid for this name"), (&untrusted, "unknown issuer")]
    {
        let webhook = grpc.create_webhook("acme", &receiver.url(), |r| r.retry_policy_id = "once".into()).await;
        failing.push((webhook.webhook_id, words));
    }

    const EVENTS: usize = 30;
    for i in 0..EVENTS {
        ks.publish("acme", "order.created", &format!("{{\"n\":{i}}}"));
    }
    let got = good.wait_for_requests(EVENTS, "deliveries over HTTPS").await;
    assert!(got.iter().all(|g| g.client_cert.is_none()), "no client certificate unless the webhook has one");
    let mut numbers: Vec<u64> = got
        .iter()
        .map(|g| serde_json::from_slice::<serde_json::Value>(&g.body).unwrap()["data"]["n"].as_u64().expect("the envelope's data"))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..EVENTS as u64).collect::<Vec<_>>(), "every event arrived once, intact");
    let handshakes = good.handshakes();
    assert!(
        (1..=8).contains(&handshakes) && handshakes < got.len(),
        "keep-alive: {handshakes} handshakes for {} deliveries (8 sender threads at most)",
        got.len()
    );

    for (webhook_id, words) in &failing {
        let dead = dead_letter_of(&grpc, "acme", webhook_id).await;
        assert_tls_failure(&dead, words);
    }
    assert!(grpc.dead_letters("acme").await.unwrap().iter().all(|d| d.webhook_id != to_good.webhook_id));
    let line = service.wait_for_log("tls error: TLS unknown issuer", WAIT).await;
    assert!(line.contains("WSS_TARGET_CA_FILE"), "the log says what to do: {line}");

    let metrics = service.wait_for_metrics().await;
    // Each failing webhook's attempts are counted (how many there are depends on when its circuit
    // opens, WSS_CIRCUIT_FAILURES).
    wait_until(WAIT, "the failed attempts counted in wss_delivery_attempt_errors_total{kind=\"tls\"}", || {
        let (_, _, text) = common::http_get(metrics, "/metrics", None)?;
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("wss_delivery_attempt_errors_total{kind=\"tls\"} "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| "no tls series".to_owned())?;
        if count >= 3 && text.contains("wss_delivery_attempt_errors_total{kind=\"io\"} 0\n") {
            Ok(count)
        } else {
            Err(format!("{count} tls so far; none should be io: {text}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_presented_rotated_and_kept_secret() {
    let ca = Ca::new("wss test receivers CA");
    let client_ca = Ca::new("the receivers' client CA");
    let dir = TempDir::new("mtls");
    let ca_file = dir.write("receivers-ca.pem", ca.pem().as_bytes());
    let ks = Keyspace::new("https_client_certs");
    // The OS store plus the file (the machine's store has Debian's ca-certificates).
    let service = https_service(
        &ks,
        "mtls",
        &[
            ("WSS_ALLOW_PRIVATE_TARGETS", "false"),
            ("WSS_ALLOWED_TARGET_CIDRS", "127.0.0.1/32"),
            ("WSS_TARGET_ROOTS", "system"),
            ("WSS_TARGET_CA_FILE", &ca_file),
        ],
    )
    .await;
    let line = service.wait_for_log("receivers' certificates are verified against", WAIT).await;
    assert!(line.contains("the system trust store (") && line.contains("1 CA certificate from"), "{line}");
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_policy("once", 1, 100, 100).await;
    let receiver = TlsReceiver::start(&ca.server(&[], &["127.0.0.1"]), Some(&client_ca));
    let first = client_ca.client("acme-sender");
    let second = client_ca.client("acme-sender-2026");
    let other = client_ca.client("someone-else");

    // The control plane checks the pair and names the field at fault.
    let mismatched = grpc
        .webhooks()
        .create_webhook(wss::proto::CreateWebhookRequest {
            tenant_id: "acme".into(),
            url: receiver.url(),
            client_certificate: first.cert_pem.clone(),
            client_key: other.key_pem.clone(),
            ..Default::default()
        })
        .await;
    let status = assert_status(mismatched, Code::InvalidArgument, Some("client_key"), "a key that is not the certificate's");
    assert!(!status.message().contains("PRIVATE KEY"), "{status:?}");
    let alone = grpc
        .webhooks()
        .create_webhook(wss::proto::CreateWebhookRequest {
            tenant_id: "acme".into(),
            url: receiver.url(),
            client_certificate: first.cert_pem.clone(),
            ..Default::default()
        })
        .await;
    assert_status(alone, Code::InvalidArgument, Some("client_key"), "a certificate without its key");
    let not_pem = grpc
        .webhooks()
        .create_webhook(wss::proto::CreateWebhookRequest {
            tenant_id: "acme".into(),
            url: receiver.url(),
            client_certificate: "not a certificate".into(),
            client_key: first.key_pem.clone(),
            ..Default::default()
        })
        .await;
    assert_status(not_pem, Code::InvalidArgument, Some("client_certificate"), "a certificate that is not PEM");

    let without = grpc.create_webhook("acme", &receiver.url(), |r| r.retry_policy_id = "once".into()).await;
    let with = grpc
        .create_webhook("acme", &receiver.url(), |r| {
            r.client_certificate = first.cert_pem.clone();
            r.client_key = first.key_pem.clone();
        })
        .await;
    assert!(with.has_client_key && with.client_key.is_empty() && with.client_certificate == first.cert_pem, "{with:?}");
    let fetched = grpc.webhooks().get_webhook(GetWebhookRequest { webhook_id: with.webhook_id.clone() }).await.unwrap().into_inner();
    assert!(fetched.has_client_key && fetched.client_key.is_empty(), "the key is never returned: {fetched:?}");
    assert!(!without.has_client_key && without.client_certificate.is_empty());

    // Sealed at rest under WSS_ENCRYPTION_KEY.
    let stored: String = redis::cmd("HGET").arg(format!("{}webhooks", ks.prefix)).arg(&with.webhook_id).query(&mut ks.conn()).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert!(stored["client_key"].as_str().is_some_and(|k| k.starts_with("enc:v1:")), "sealed: {}", stored["client_key"]);
    assert_eq!(stored["client_certificate"].as_str(), Some(first.cert_pem.as_str()));

    ks.publish("acme", "order.created", r#"{"n":1}"#);
    let got = receiver.wait_for_requests(1, "a delivery with the client certificate").await;
    assert_eq!(got.len(), 1, "only the webhook with a certificate gets through: {got:?}");
    assert_eq!(got[0].client_cert.as_deref(), Some(first.der.as_slice()), "the receiver verified and saw the webhook's certificate");
    let dead = dead_letter_of(&grpc, "acme", &without.webhook_id).await;
    assert_tls_failure(&dead, "client certificate required");

    // Rotation: both together; one alone is refused.
    let half = grpc
        .webhooks()
        .update_webhook(UpdateWebhookRequest {
            webhook_id: with.webhook_id.clone(),
            client_key: Some(second.key_pem.clone()),
            ..Default::default()
        })
        .await;
    assert_status(half, Code::InvalidArgument, Some("client_certificate"), "a key alone");
    let rotated = grpc
        .webhooks()
        .update_webhook(UpdateWebhookRequest {
            webhook_id: with.webhook_id.clone(),
            client_certificate: Some(second.cert_pem.clone()),
            client_key: Some(second.key_pem.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.client_certificate == second.cert_pem && rotated.client_key.is_empty());
    ks.publish("acme", "order.created", r#"{"n":2}"#);
    let got = receiver.wait_for_requests(2, "a delivery with the rotated certificate").await;
    assert_eq!(got[1].client_cert.as_deref(), Some(second.der.as_slice()), "the rotated certificate is presented");

    let lines = service.lines();
    let key_line = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
    secure::assert_never_logged(
        &lines,
        &[("the first client key", &key_line(&first.key_pem)), ("the second client key", &key_line(&second.key_pem))],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_names_are_checked_against_the_url_host() {
    let ca = Ca::new("wss test receivers CA");
    let dir = TempDir::new("https-names");
    let ca_file = dir.write("receivers-ca.pem", ca.pem().as_bytes());
    let ks = Keyspace::new("https_names");
    // `localhost` is refused as a target unless private targets are allowed as a whole. The CA
    // file is the only trust here (`file-only`).
    let service = https_service(
        &ks,
        "names",
        &[("WSS_ALLOW_PRIVATE_TARGETS", "true"), ("WSS_TARGET_ROOTS", "file-only"), ("WSS_TARGET_CA_FILE", &ca_file)],
    )
    .await;
    let line = service.wait_for_log("receivers' certificates are verified against", WAIT).await;
    assert!(line.contains("1 CA certificate from") && !line.contains("Mozilla"), "file-only trusts the file alone: {line}");
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_policy("once", 1, 100, 100).await;
    let receiver = TlsReceiver::start(&ca.server(&["localhost"], &[]), None);
    let by_name = grpc.create_webhook("acme", &format!("https://localhost:{}/hook", receiver.addr.port()), |_| {}).await;
    let by_address = grpc.create_webhook("acme", &receiver.url(), |r| r.retry_policy_id = "once".into()).await;
    ks.publish("acme", "order.created", r#"{"n":1}"#);
    let got = receiver.wait_for_requests(1, "the delivery to localhost").await;
    assert_eq!(got.len(), 1, "{got:?}");
    let dead = dead_letter_of(&grpc, "acme", &by_address.webhook_id).await;
    assert_tls_failure(&dead, "certificate not valid for this name");
    assert!(grpc.dead_letters("acme").await.unwrap().iter().all(|d| d.webhook_id != by_name.webhook_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trust_configuration_stops_the_service_at_start_up() {
    let ks = Keyspace::new("https_bad_ca");
    let dir = TempDir::new("https-bad-ca");
    let ca = Ca::new("some CA");
    let key_instead = dir.write("key.pem", ca.client("x").key_pem.as_bytes());
    for (label, extra, needle) in [
        ("key-as-ca", vec![("WSS_TARGET_CA_FILE", key_instead.as_str())], "WSS_TARGET_CA_FILE (environment)"),
        ("missing-ca", vec![("WSS_TARGET_CA_FILE", "/nonexistent/ca.pem")], "cannot read the file"),
        ("file-only-alone", vec![("WSS_TARGET_ROOTS", "file-only")], "WSS_TARGET_ROOTS (environment)"),
        ("no-verification", vec![("WSS_TARGET_ROOTS", "none")], "expected bundled, system or file-only"),
    ] {
        let mut env = Service::env(&ks, label);
        env.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        let mut service = Service::spawn(label, env);
        service.wait_for_log(needle, WAIT).await;
        let status = wait_until(WAIT, "wss to exit", || service.try_wait().ok_or_else(|| "running".to_owned())).await;
        assert!(!status.success(), "{label}: {status:?}");
    }
}
