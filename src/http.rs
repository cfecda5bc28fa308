//! The HTTP client that delivers webhooks: ureq 3 agents shared by every sender thread ([`Agents`]),
//! the trust they verify receivers with, and the guard that keeps tenants' URLs away from the
//! network wss runs in (SSRF).
//!
//! Why ureq and how it is set up (docs/decisions.md, "Why ureq"): keep-alive connections pooled per host (at
//! least as many idle ones as sender threads), no redirects (a 3xx is the receiver's answer, and
//! a failure), no environment proxies (`WSS_PROXY` only), non-2xx statuses returned as responses
//! rather than errors, and our own [`GuardedResolver`], which resolves on the calling thread
//! (ureq's default spawns a thread per lookup when a timeout is set) and vets every address it
//! returns — so the address that is checked is the address that is dialled, whatever DNS says
//! next time (DNS rebinding cannot slip a private address in between).
//!
//! **What is refused** ([`forbidden_reason`]): every address that is not ordinary public unicast —
//! loopback, RFC 1918, link-local (169.254.169.254, the cloud metadata service, included), CGNAT,
//! unspecified, multicast, broadcast, reserved, documentation and benchmarking ranges; for IPv6
//! also unique-local, link-local, site-local, discard-only, Teredo, and every form that embeds an
//! IPv4 address (IPv4-mapped, IPv4-compatible, IPv4-translated, 6to4, NAT64) when the embedded
//! address is refused. The check is on the parsed address, and hosts are parsed the way the C
//! library would (`2130706433`, `0x7f.1`, `127.1`, `017700000001` are all 127.0.0.1:
//! [`parse_ipv4_lenient`]), so odd spellings change nothing.
//!
//! **Holes, opened deliberately**: `WSS_ALLOW_PRIVATE_TARGETS=true` turns the guard off;
//! `WSS_ALLOWED_TARGET_CIDRS` lets through the listed ranges only ([`TargetPolicy`]).
//!
//! **A proxy** (`WSS_PROXY`, an `http://` or `https://` CONNECT proxy) becomes the egress point:
//! wss then resolves and vets only the proxy's own address (which may be private — it is the
//! operator's), and the proxy resolves and dials the webhook's host. The guard cannot see that
//! address, so the proxy must enforce the same rules itself (docs/security.md, "Delivery targets").
//!
//! **HTTPS** (docs/security.md, "HTTPS delivery"; docs/https.md). Receivers' certificates are always
//! verified — there is no switch to turn that off — against the roots `WSS_TARGET_ROOTS` names
//! ([`TargetTrust`]): the Mozilla roots compiled in (`bundled`, the default), the operating
//! system's store read once at start-up through `rustls-native-certs` (`system`), or none; plus
//! the PEM file `WSS_TARGET_CA_FILE` (a company CA), or that file alone (`file-only`). ureq's own
//! `platform-verifier` feature is not used: it cannot take the extra file. SNI and the
//! certificate's name check use the URL's host, while the address dialled is the one the guarded
//! resolver vetted, so a name check never widens what the guard allows.
//!
//! **Client certificates.** A webhook may carry a certificate chain and key to present to a
//! receiver that asks for one ([`ClientIdentity`], checked when it is registered: both parse, and
//! the key is the certificate's). ureq ties a client certificate to an agent's TLS
//! configuration, and its connection pool to the agent, so [`Agents`] keeps one agent per
//! distinct certificate chain beside the default one (its lanes, below), made on first use and
//! kept while it is used: each has its own keep-alive pool, and a connection made with one
//! identity is never reused for another.
//!
//! **Connection pools, in lanes.** The default agent is [`LANES`] agents, each with its own
//! keep-alive pool, and a request picks one by its URL's host and the sending thread
//! ([`Agents::agent`]): a host's connections live in a few neighbouring lanes
//! ([`AgentsInner::spread`] of them, so that the sender threads share each lane's connections to
//! it), and different hosts mostly in different lanes. Why: each time a connection goes back to
//! a ureq pool, the pool recounts its idle connections per host, comparing the keys of all of
//! them once per host it holds — with 256 sender threads' idle connections to one receiver, that
//! scan was about 14 % of wss's CPU in the throughput bench (docs/performance.md, "Connection
//! pools in lanes"), and with many hosts it grows as their product. One pool's lock is also no longer
//! taken by every sender thread. The cost: a request reuses a connection only from its own lane,
//! so a host that gets a request now and then opens a few more connections than with one pool.
//!
//! **TLS failures** are told apart from other I/O errors by rustls's own error types, never by
//! their text ([`tls_failure`]): unknown issuer, expired, not valid for this name, client
//! certificate required or rejected, handshake failure.

use std::{
    collections::HashMap,
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::RwLock;
use rustls::{pki_types::CertificateDer, AlertDescription, CertificateError};
use sha2::{Digest, Sha256};
use ureq::{
    config::Config as UreqConfig,
    http::Uri,
    tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig},
    unversioned::{
        resolver::{ResolvedSocketAddrs, Resolver},
        transport::{ConnectionDetails, Connector, DefaultConnector, NextTimeout},
    },
    Agent, Proxy,
};

/// ureq keeps at most this many resolved addresses.
const MAX_ADDRS: usize = 16;

/// The largest response head (status line and headers) accepted; a larger one fails the attempt
/// (`protocol`). Receivers answer a webhook with a few hundred bytes of headers; 16 KiB is what
/// common servers allow themselves (nginx's large header buffers are 8 KiB each).
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Each pooled connection's read buffer. ureq's default is 128 KiB, zero-filled when the
/// connection is first used: with 256 sender threads busy that was 32 MiB for input alone. It
/// must hold a whole response head (ureq does not grow it), and a little more than
/// [`MAX_RESPONSE_HEAD`] so that a head over the limit is reported as too large rather than as
/// a connection that stopped making progress.
const INPUT_BUFFER: usize = MAX_RESPONSE_HEAD + 1024;
/// Each pooled connection's write buffer (ureq's default: 128 KiB). The request line and each
/// header line are written into it whole, so it must hold the longest: a 2 KiB URL, a static
/// header's 8 KiB value (`crate::domain::model::validate_headers`). Bodies go through it in
/// pieces of its size.
const OUTPUT_BUFFER: usize = 16 * 1024;

/// The delivery agents as the service has them ([`Agents`], in lanes) with the guard on (unless
/// `allow_private_targets`), no proxy and the bundled roots.
pub fn agents(sender_threads: usize, allow_private_targets: bool) -> Agents {
    let policy = TargetPolicy { allow_private: allow_private_targets, allowed: Vec::new() };
    Agents::with(sender_threads, policy, None, TargetTrust::bundled()).expect("without a proxy there is nothing to refuse")
}

/// Whether `bytes` has a PEM `-----BEGIN` line: enough to tell a PEM file from a wrong one
/// before its contents are parsed where they are used.
pub fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Builds the delivery agent; fails only on a proxy URL that ureq refuses.
pub fn agent_with(sender_threads: usize, policy: TargetPolicy, proxy: Option<&str>) -> Result<Agent, ProxyError> {
    let proxy = proxy.map(parse_proxy).transpose()?;
    let setup = AgentSetup { sender_threads, policy, proxy, trust: TargetTrust::bundled() };
    Ok(setup.build(None, setup.one_pool()))
}

/// How many connections an agent's pool keeps idle: in all, and to one host.
#[derive(Clone, Copy)]
struct PoolSize {
    idle: usize,
    per_host: usize,
}

/// Everything an agent is built from but the client certificate.
#[derive(Clone)]
struct AgentSetup {
    sender_threads: usize,
    policy: TargetPolicy,
    proxy: Option<Proxy>,
    trust: TargetTrust,
}

impl AgentSetup {
    /// One pool for every sender thread: at least as many idle connections to a host as there
    /// are threads, and four times that in all.
    fn one_pool(&self) -> PoolSize {
        PoolSize { idle: self.sender_threads.max(16) * 4, per_host: self.sender_threads.max(4) }
    }

    /// One of [`LANES`] pools, where a host's connections are spread over `spread` lanes: the
    /// threads' share of a host, and the lane's share of [`Self::one_pool`]'s total.
    fn lane_pool(&self, spread: usize) -> PoolSize {
        let per_host = self.sender_threads.div_ceil(spread).max(4);
        PoolSize { idle: self.one_pool().idle.div_ceil(LANES).max(per_host), per_host }
    }

    fn build(&self, client: Option<&ClientIdentity>, pool: PoolSize) -> Agent {
        self.build_on(client, pool, DefaultConnector::default())
    }

    /// [`Self::build`] dialling through `connector`: the lanes share one, and so the TLS
    /// configuration it builds on first use (the roots parsed once, one session cache).
    fn build_on(&self, client: Option<&ClientIdentity>, pool: PoolSize, connector: impl Connector) -> Agent {
        let proxy_host = self.proxy.as_ref().map(|p| (p.host().to_ascii_lowercase(), p.port()));
        // Verification stays on: `disable_verification` is never set, whatever the configuration.
        let tls = TlsConfig::builder().root_certs(self.trust.roots.clone()).client_cert(client.map(|c| c.cert.clone())).build();
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(self.proxy.clone())
            .user_agent(concat!("wss/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections(pool.idle)
            .max_idle_connections_per_host(pool.per_host)
            .max_response_header_size(MAX_RESPONSE_HEAD)
            .input_buffer_size(INPUT_BUFFER)
            .output_buffer_size(OUTPUT_BUFFER)
            .tls_config(tls)
            .build();
        Agent::with_parts(config, connector, GuardedResolver { policy: self.policy.clone(), proxy: proxy_host })
    }
}

/// Agents with a client certificate are dropped when unused for this long once there are more
/// than [`KEEP_IDENTITY_AGENTS`] of them (a webhook's certificate was rotated or removed).
const IDLE_IDENTITY_AGENT_MS: u64 = 10 * 60 * 1000;
const KEEP_IDENTITY_AGENTS: usize = 64;

/// The default agent's lanes (the module's note, "Connection pools, in lanes").
pub const LANES: usize = 32;

/// The delivery agents: the default one in [`LANES`] lanes, and one per client certificate in
/// use (see the module's note). Cloning shares them.
#[derive(Clone)]
pub struct Agents(Arc<AgentsInner>);

struct AgentsInner {
    lanes: Vec<Agent>,
    /// Over how many neighbouring lanes one host's connections are spread: one per 32 sender
    /// threads, at most 8 (256 threads: 32 a lane).
    spread: usize,
    setup: AgentSetup,
    /// By [`ClientIdentity::fingerprint`]: the agent and when it was last handed out (ms).
    by_identity: RwLock<HashMap<[u8; 32], (Agent, AtomicU64)>>,
}

impl Agents {
    /// The agents the service delivers with (`crate::config::Config::agents` gathers the
    /// settings); logs what receivers' certificates are verified against.
    pub fn configured(sender_threads: usize, policy: TargetPolicy, proxy: Option<&str>, trust: TargetTrust) -> Self {
        // The proxy URL was checked when the configuration was built.
        let proxy = proxy
            .map(parse_proxy)
            .transpose()
            .unwrap_or_else(|e| panic!("the proxy URL was checked at start-up, yet ureq refuses it: {e}"));
        let setup = AgentSetup { sender_threads, policy, proxy, trust };
        log::info!(target: "wss::http", "receivers' certificates are verified against {:?}", setup.trust);
        Self::from_setup(setup)
    }

    /// Plain agents as [`agent_with`] builds them, with `trust` for HTTPS.
    pub fn with(sender_threads: usize, policy: TargetPolicy, proxy: Option<&str>, trust: TargetTrust) -> Result<Self, ProxyError> {
        let proxy = proxy.map(parse_proxy).transpose()?;
        Ok(Self::from_setup(AgentSetup { sender_threads, policy, proxy, trust }))
    }

    fn from_setup(setup: AgentSetup) -> Self {
        let spread = setup.sender_threads.div_ceil(32).clamp(1, 8);
        let connector = SharedConnector(Arc::new(DefaultConnector::default()));
        let lanes = (0..LANES).map(|_| setup.build_on(None, setup.lane_pool(spread), connector.clone())).collect();
        Self(Arc::new(AgentsInner { lanes, spread, setup, by_identity: RwLock::default() }))
    }

    /// The agent for a request to `url` from sender thread `slot`: the one that presents
    /// `client`, made on first use; without one, the default agent's lane for the URL's host and
    /// the thread ([`Self::lane`]).
    pub fn agent(&self, client: Option<&ClientIdentity>, url: &str, slot: usize) -> Agent {
        let Some(client) = client else { return self.0.lanes[self.lane(url, slot)].clone() };
        let now = crate::clock::now_ms();
        if let Some((agent, used)) = self.0.by_identity.read().get(&client.fingerprint) {
            used.store(now, Ordering::Relaxed);
            return agent.clone();
        }
        let mut agents = self.0.by_identity.write();
        if let Some((agent, _)) = agents.get(&client.fingerprint) {
            return agent.clone();
        }
        if agents.len() >= KEEP_IDENTITY_AGENTS {
            agents.retain(|_, (_, used)| now.saturating_sub(used.load(Ordering::Relaxed)) < IDLE_IDENTITY_AGENT_MS);
        }
        let agent = self.0.setup.build(Some(client), self.0.setup.one_pool());
        agents.insert(client.fingerprint, (agent.clone(), AtomicU64::new(now)));
        agent
    }

    /// The lane of a request to `url` from thread `slot`: the host's first lane (a hash of the
    /// URL's authority), and one of the [`AgentsInner::spread`] lanes after it by the thread.
    pub fn lane(&self, url: &str, slot: usize) -> usize {
        (authority_hash(url) as usize).wrapping_add(slot % self.0.spread) % LANES
    }

    /// Agents with a client certificate held now.
    pub fn identity_agents(&self) -> usize {
        self.0.by_identity.read().len()
    }
}

/// One connector for every lane: they have the same TLS configuration, which the connector
/// builds once and caches. (An agent with a client certificate has a connector of its own: the
/// cache holds one configuration.)
#[derive(Debug, Clone)]
struct SharedConnector(Arc<DefaultConnector>);

impl Connector for SharedConnector {
    type Out = <DefaultConnector as Connector>::Out;

    fn connect(&self, details: &ConnectionDetails, chained: Option<()>) -> Result<Option<Self::Out>, ureq::Error> {
        self.0.connect(details, chained)
    }
}

/// CRC-32 of the URL's authority (what follows `://` up to the path, query or fragment; the
/// whole string when it has no `://`), as `crate::shard` hashes tenants: cheap, and only ever
/// used to pick a lane.
fn authority_hash(url: &str) -> u32 {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    crc32fast::hash(authority.as_bytes())
}

/// A `WSS_PROXY` value wss cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{0}; give an http:// or https:// CONNECT proxy like http://proxy.internal:3128")]
pub struct ProxyError(String);

/// Parses `WSS_PROXY`: an `http://` or `https://` CONNECT proxy (ureq's SOCKS support is not
/// built in).
pub fn parse_proxy(value: &str) -> Result<Proxy, ProxyError> {
    let uri: Uri = value.parse().map_err(|_| ProxyError("not a URL".into()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(ProxyError("the scheme must be http or https".into())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ProxyError("it has no host".into()));
    }
    Proxy::new(value).map_err(|e| ProxyError(format!("ureq refuses it ({e})")))
}

/// Which roots verify receivers' certificates (`WSS_TARGET_ROOTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetRoots {
    /// The Mozilla roots compiled into wss (`webpki-roots`), plus `WSS_TARGET_CA_FILE` if given.
    #[default]
    Bundled,
    /// The operating system's trust store (on Debian, the `ca-certificates` package, or
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR`), read at start-up, plus `WSS_TARGET_CA_FILE` if given.
    System,
    /// `WSS_TARGET_CA_FILE` alone.
    FileOnly,
}

impl FromStr for TargetRoots {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "bundled" | "" => Ok(Self::Bundled),
            "system" => Ok(Self::System),
            "file-only" => Ok(Self::FileOnly),
            _ => Err("expected bundled, system or file-only".into()),
        }
    }
}

/// The roots receivers' certificates are verified against, resolved once at start-up (the OS
/// store read, the CA file parsed). Cloning shares them.
#[derive(Clone)]
pub struct TargetTrust {
    roots: RootCerts,
    description: Arc<str>,
}

impl fmt::Debug for TargetTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl Default for TargetTrust {
    fn default() -> Self {
        Self::bundled()
    }
}

impl TargetTrust {
    /// The compiled-in Mozilla roots alone (the default).
    pub fn bundled() -> Self {
        Self { roots: RootCerts::WebPki, description: "the bundled Mozilla roots".into() }
    }

    /// `roots`, plus the certificates of `ca_file` (its name, for messages, and its contents).
    /// Errors say what is wrong and what to do, and which setting is at fault.
    pub fn load(roots: TargetRoots, ca_file: Option<(&str, &[u8])>) -> Result<Self, TrustError> {
        let extra = match ca_file {
            Some((name, pem)) => Some((name, parse_ca_file(pem).map_err(|message| TrustError { in_ca_file: true, message })?)),
            None => None,
        };
        let roots_error = |message: String| TrustError { in_ca_file: false, message };
        let (mut certs, mut description): (Vec<Certificate<'static>>, String) = match roots {
            TargetRoots::Bundled if extra.is_none() => return Ok(Self::bundled()),
            TargetRoots::Bundled => (
                webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect(),
                "the bundled Mozilla roots".into(),
            ),
            TargetRoots::System => {
                let found = rustls_native_certs::load_native_certs();
                let usable: Vec<Certificate<'static>> =
                    found.certs.iter().filter(|c| anchor_usable(c)).map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
                if usable.is_empty() {
                    let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                    return Err(roots_error(format!(
                        "the operating system's trust store has no usable certificate{}; install it (Debian: apt-get install ca-certificates), point SSL_CERT_FILE at a PEM bundle, or use WSS_TARGET_ROOTS=bundled",
                        if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) }
                    )));
                }
                let n = usable.len();
                (usable, format!("the system trust store ({n} roots)"))
            }
            TargetRoots::FileOnly if extra.is_none() => {
                return Err(roots_error("file-only needs WSS_TARGET_CA_FILE (a PEM file of the CAs to trust)".into()))
            }
            TargetRoots::FileOnly => (Vec::new(), String::new()),
        };
        if let Some((name, file_certs)) = extra {
            let n = file_certs.len();
            certs.extend(file_certs);
            let file = format!("{n} CA certificate{} from {name}", if n == 1 { "" } else { "s" });
            description = if description.is_empty() { file } else { format!("{description} and {file}") };
        }
        Ok(Self { roots: RootCerts::new_with_certs(&certs), description: description.into() })
    }
}

/// Why the configured trust cannot be loaded; `in_ca_file`: the fault is in `WSS_TARGET_CA_FILE`
/// (else in `WSS_TARGET_ROOTS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustError {
    pub in_ca_file: bool,
    pub message: String,
}

/// The certificates of a `WSS_TARGET_CA_FILE`: at least one, each usable as a trust anchor.
fn parse_ca_file(pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for (i, item) in parse_pem(pem).enumerate() {
        match item {
            Ok(PemItem::Certificate(cert)) => {
                if !anchor_usable(&CertificateDer::from(cert.der())) {
                    return Err(format!("PEM block {} is not a certificate wss can trust as a root (it does not parse as X.509)", i + 1));
                }
                certs.push(cert);
            }
            Ok(_) => return Err(format!("PEM block {} is not a CERTIFICATE (a private key does not belong in a CA file)", i + 1)),
            Err(e) => return Err(format!("the file is not valid PEM ({e})")),
        }
    }
    if certs.is_empty() {
        return Err("the file holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

fn anchor_usable(der: &CertificateDer<'_>) -> bool {
    rustls::RootCertStore::empty().add(der.clone().into_owned()).is_ok()
}

/// The crypto provider ureq's rustls uses: the process default if one was installed, else ring.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A webhook's client certificate: the chain (leaf first) and its private key, checked. `Debug`
/// shows the fingerprint only, never the key.
#[derive(Clone)]
pub struct ClientIdentity {
    cert: ClientCert,
    /// SHA-256 of the chain's DER: names the identity (its key is the leaf's, so the chain alone
    /// tells identities apart without hashing the key).
    fingerprint: [u8; 32],
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientIdentity(sha256:{})", self.fingerprint[..8].iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
}

/// Why a client certificate or key was refused; `field` names the request field at fault. The
/// message never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct IdentityError {
    pub field: &'static str,
    pub message: String,
}

/// Longest client certificate chain accepted (PEM), bytes: a leaf and two intermediates with
/// 4096-bit RSA keys take about 7 KiB; the chain is returned with every webhook listed, so a page
/// of them stays well inside a client's 4 MiB message limit.
pub const MAX_CLIENT_CERTIFICATE_PEM: usize = 16 * 1024;
/// Longest client key accepted (PEM), bytes.
pub const MAX_CLIENT_KEY_PEM: usize = 16 * 1024;

impl ClientIdentity {
    /// Parses and checks a chain (`client_certificate`: PEM certificates, leaf first) and its key
    /// (`client_key`: one PEM private key, PKCS#8, PKCS#1 or SEC1): both parse, and the key is the
    /// leaf's — the same check rustls makes when it loads them.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let cert_err = |message: String| IdentityError { field: "client_certificate", message };
        let key_err = |message: String| IdentityError { field: "client_key", message };
        if chain_pem.len() > MAX_CLIENT_CERTIFICATE_PEM {
            return Err(cert_err(format!("is {} bytes long; at most {MAX_CLIENT_CERTIFICATE_PEM} are allowed", chain_pem.len())));
        }
        if key_pem.len() > MAX_CLIENT_KEY_PEM {
            return Err(key_err(format!("is {} bytes long; at most {MAX_CLIENT_KEY_PEM} are allowed", key_pem.len())));
        }
        let mut chain = Vec::new();
        for (i, item) in parse_pem(chain_pem.as_bytes()).enumerate() {
            match item {
                Ok(PemItem::Certificate(cert)) => chain.push(cert),
                Ok(_) => return Err(cert_err(format!("PEM block {} is not a CERTIFICATE; the key goes in client_key", i + 1))),
                Err(e) => return Err(cert_err(format!("is not valid PEM ({e})"))),
            }
        }
        if chain.is_empty() {
            return Err(cert_err("holds no PEM certificate; give the chain, leaf first (-----BEGIN CERTIFICATE-----)".into()));
        }
        let mut keys = Vec::new();
        for item in parse_pem(key_pem.as_bytes()) {
            match item {
                Ok(PemItem::PrivateKey(key)) => keys.push(key),
                Ok(_) => return Err(key_err("holds something other than a private key; give one PEM private key".into())),
                // The PEM error names a section kind or a base64 problem, never the key's bytes.
                Err(e) => return Err(key_err(format!("is not valid PEM ({e})"))),
            }
        }
        let key: PrivateKey<'static> = match keys.len() {
            1 => keys.remove(0),
            0 => return Err(key_err("holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)".into())),
            n => return Err(key_err(format!("holds {n} private keys; give exactly one, the certificate's"))),
        };
        let der_chain: Vec<CertificateDer<'static>> = chain.iter().map(|c| CertificateDer::from(c.der()).into_owned()).collect();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.der().to_vec())
            .map_err(|e| key_err(format!("is not a private key rustls can read ({e})")))?;
        match rustls::sign::CertifiedKey::from_der(der_chain, key_der, &crypto_provider()) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(key_err("does not belong to the certificate: the leaf's public key is another key's".into()))
            }
            Err(rustls::Error::InvalidCertificate(e)) => return Err(cert_err(format!("the leaf certificate does not parse ({e:?})"))),
            Err(e) => return Err(key_err(format!("cannot be used ({e})"))),
        }
        let mut hasher = Sha256::new();
        for cert in &chain {
            hasher.update((cert.der().len() as u64).to_be_bytes());
            hasher.update(cert.der());
        }
        Ok(Self { cert: ClientCert::new_with_certs(&chain, key), fingerprint: hasher.finalize().into() })
    }

    /// Names the identity: SHA-256 of its certificate chain.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }
}

/// Why a TLS connection to a receiver failed, from rustls's error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsReason {
    UnknownIssuer,
    Expired,
    NotYetValid,
    NotValidForName,
    Revoked,
    /// Another problem with the receiver's certificate (bad signature, a CA certificate used as
    /// the server's, an unsupported algorithm, …).
    BadCertificate,
    /// The receiver wants a client certificate and the webhook has none.
    ClientCertificateRequired,
    /// The receiver refused the client certificate presented.
    ClientCertificateRejected,
    /// No protocol version or cipher suite in common, or the receiver ended the handshake.
    HandshakeFailure,
    /// The receiver broke the TLS protocol.
    Protocol,
    Other,
}

impl TlsReason {
    /// The reason in words, as attempts and logs carry it.
    pub fn words(self) -> &'static str {
        match self {
            Self::UnknownIssuer => "unknown issuer",
            Self::Expired => "certificate expired",
            Self::NotYetValid => "certificate not yet valid",
            Self::NotValidForName => "certificate not valid for this name",
            Self::Revoked => "certificate revoked",
            Self::BadCertificate => "invalid certificate",
            Self::ClientCertificateRequired => "client certificate required",
            Self::ClientCertificateRejected => "client certificate rejected",
            Self::HandshakeFailure => "handshake failure",
            Self::Protocol => "protocol violation",
            Self::Other => "TLS error",
        }
    }

    /// What to do about it.
    fn advice(self) -> &'static str {
        match self {
            Self::UnknownIssuer => "the receiver's certificate does not chain to a trusted root; if it is issued by a private CA, add that CA with WSS_TARGET_CA_FILE",
            Self::Expired => "the receiver's certificate has expired; the receiver must renew it",
            Self::NotYetValid => "the receiver's certificate is not valid yet (or this machine's clock is wrong)",
            Self::NotValidForName => "the receiver's certificate does not name the webhook URL's host; use the name the certificate was issued for",
            Self::Revoked => "the receiver's certificate was revoked",
            Self::BadCertificate => "the receiver's certificate cannot be used",
            Self::ClientCertificateRequired => "the receiver asks for a client certificate; set the webhook's client_certificate and client_key",
            Self::ClientCertificateRejected => "the receiver refused the webhook's client certificate; check that it is issued by a CA the receiver trusts and has not expired",
            Self::HandshakeFailure => "the receiver ended the TLS handshake (no protocol version or cipher suite in common, or it wants a client certificate)",
            Self::Protocol => "the receiver broke the TLS protocol (is it speaking TLS on this port?)",
            Self::Other => "the TLS connection failed",
        }
    }
}

/// A TLS failure found in a ureq error: the reason, and the library's own description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    pub reason: TlsReason,
    pub detail: String,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS {}: {} ({})", self.reason.words(), self.reason.advice(), self.detail)
    }
}

/// The TLS failure behind `err`, if it is one: rustls's error, whether ureq returned it directly
/// or inside the I/O error of a handshake, read or write.
pub fn tls_failure(err: &ureq::Error) -> Option<TlsFailure> {
    let rustls_error = match err {
        ureq::Error::Rustls(e) => e,
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        ureq::Error::Tls(what) => return Some(TlsFailure { reason: TlsReason::Other, detail: (*what).to_owned() }),
        _ => return None,
    };
    Some(TlsFailure { reason: tls_reason(rustls_error), detail: format!("rustls: {rustls_error}") })
}

/// The reason of a rustls error.
pub fn tls_reason(err: &rustls::Error) -> TlsReason {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => TlsReason::UnknownIssuer,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => TlsReason::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => TlsReason::NotYetValid,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => TlsReason::NotValidForName,
            CertificateError::Revoked => TlsReason::Revoked,
            _ => TlsReason::BadCertificate,
        },
        E::NoCertificatesPresented => TlsReason::BadCertificate,
        E::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => TlsReason::ClientCertificateRequired,
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied => TlsReason::ClientCertificateRejected,
            _ => TlsReason::HandshakeFailure,
        },
        E::PeerIncompatible(_) => TlsReason::HandshakeFailure,
        E::InvalidMessage(_) | E::PeerMisbehaved(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            TlsReason::Protocol
        }
        _ => TlsReason::Other,
    }
}

/// Which addresses a tenant's webhook may reach.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    /// `WSS_ALLOW_PRIVATE_TARGETS`: everything.
    pub allow_private: bool,
    /// `WSS_ALLOWED_TARGET_CIDRS`: these ranges even though they are private or special.
    pub allowed: Vec<Cidr>,
}

impl TargetPolicy {
    /// Why `ip` may not be dialled, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow_private {
            return None;
        }
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        if self.allowed.iter().any(|c| c.contains(ip) || mapped.is_some_and(|m| c.contains(m))) {
            return None;
        }
        forbidden_reason(ip)
    }
}

/// An address range, `10.0.0.0/8` or `fd00::/8`; a bare address is a range of one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => masked(u32::from(ip).into(), 32, self.prefix) == u32::from(net).into(),
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(ip), 128, self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

fn masked(value: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(bits - prefix);
    (value >> keep) << keep
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr =
            addr.trim().parse().map_err(|_| format!("{addr:?} is not an IP address; write CIDRs like 10.20.0.0/16 or fd00::/8"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= bits => p,
                _ => return Err(format!("the prefix length must be 0 to {bits}")),
            },
        };
        let value = match network {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        if masked(value, bits, prefix) != value {
            return Err(format!("{text} has host bits set; did you mean its network address?"));
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Resolves on the calling thread and refuses addresses that a tenant must not reach.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: TargetPolicy,
    /// The configured proxy's host (lowercase) and port: resolved without vetting, since it is
    /// the operator's own egress point.
    pub proxy: Option<(String, u16)>,
}

impl Resolver for GuardedResolver {
    fn resolve(&self, uri: &Uri, config: &UreqConfig, _timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or_else(|| ureq::Error::BadUri(format!("{uri} has no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
        let is_proxy = self.proxy.as_ref().is_some_and(|(h, p)| h.eq_ignore_ascii_case(host) && *p == port);
        let found: Vec<SocketAddr> = match literal_ip(host) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => (host, port).to_socket_addrs().map_err(ureq::Error::Io)?.collect(),
        };
        match vet_answer(&self.policy, is_proxy, config.ip_family().keep_wanted(found.into_iter())) {
            Ok(kept) => {
                let mut result = self.empty();
                for addr in kept {
                    result.push(addr);
                }
                Ok(result)
            }
            Err(Some((ip, reason))) => Err(ureq::Error::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{host} resolves to {ip}, a {reason} address; set WSS_ALLOWED_TARGET_CIDRS (or WSS_ALLOW_PRIVATE_TARGETS=true) to allow it"),
            ))),
            Err(None) => Err(ureq::Error::HostNotFound),
        }
    }
}

/// Vets a host's DNS answer: the addresses that may be dialled, in the answer's order and at
/// most [`MAX_ADDRS`] — a name that resolves to both public and private addresses is dialled on
/// its public ones only — or, when none may, the last refused address and why (`None`: the
/// answer was empty). `exempt`: the configured proxy, which is never vetted.
fn vet_answer(
    policy: &TargetPolicy,
    exempt: bool,
    found: impl Iterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, Option<(IpAddr, &'static str)>> {
    let mut kept = Vec::new();
    let mut refused = None;
    for addr in found {
        if !exempt {
            if let Some(reason) = policy.refusal(addr.ip()) {
                refused = Some((addr.ip(), reason));
                continue;
            }
        }
        if kept.len() < MAX_ADDRS {
            kept.push(addr);
        }
    }
    if kept.is_empty() {
        Err(refused)
    } else {
        Ok(kept)
    }
}

/// The address a URL host denotes when it is an IP literal in any spelling the C library
/// accepts (`[::1]`, `::1`, `127.0.0.1`, `127.1`, `0x7f.1`, `2130706433`, `017700000001`);
/// `None` for a name.
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip);
    }
    parse_ipv4_lenient(bare).map(IpAddr::V4)
}

/// IPv4 as `inet_aton` reads it: one to four parts separated by dots, each decimal, octal
/// (leading `0`) or hexadecimal (`0x`); the last part fills the remaining bytes (`127.1` is
/// 127.0.0.1, `2130706433` is 127.0.0.1). A trailing dot is allowed, as resolvers do.
pub fn parse_ipv4_lenient(text: &str) -> Option<Ipv4Addr> {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.is_empty() {
        return None;
    }
    let parts: Vec<u64> = text.split('.').map(parse_c_number).collect::<Option<_>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|&p| p > 0xff) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut value: u64 = 0;
    for (i, part) in leading.iter().enumerate() {
        value |= part << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from((value | last) as u32))
}

/// One part of an `inet_aton` address: `0x1f`, `017`, `31`. At most 32 bits.
fn parse_c_number(part: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        // "0x" alone is 0 for inet_aton; "" (from "1..2") is not a number.
        return (radix == 16).then_some(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok().filter(|v| *v <= u64::from(u32::MAX))
}

/// Names that always mean this machine (RFC 6761): refused at registration like 127.0.0.1.
pub fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Why wss refuses to dial `ip` for a tenant, or `None` for a public address. The check is on
/// the parsed address, so odd spellings (`2130706433`, `0x7f.1`) are caught once parsed.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() || a == 0 => "unspecified",
        _ if ip.is_private() => "private (RFC 1918)",
        _ if ip.is_link_local() => "link-local",
        (100, 64..=127, _) => "shared (CGNAT)",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (192, 88, 99) => "reserved (6to4 relay)",
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4).map(|_| "IPv4-mapped private");
    }
    Some(match s {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible",
        // ::ffff:0:a.b.c.d, IPv4-translated (SIIT).
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => return v4_reason(embedded(hi, lo)).map(|_| "IPv4-translated private"),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return v4_reason(embedded(hi, lo)).map(|_| "NAT64 of a private"),
        [0x64, 0xff9b, 1, ..] => "local-use NAT64",
        [0x100, 0, 0, 0, ..] => "discard-only",
        [0x2001, 0, ..] => "Teredo tunnel",
        [0x2001, 2, 0, ..] => "benchmarking",
        [0x2001, x, ..] if x & 0xfff0 == 0x10 || x & 0xfff0 == 0x20 => "reserved (ORCHID)",
        [0x2001, 0xdb8, ..] => "documentation",
        [0x3fff, y, ..] if y & 0xf000 == 0 => "documentation",
        [0x2002, hi, lo, ..] => return v4_reason(embedded(hi, lo)).map(|_| "6to4 of a private"),
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique local",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "192.88.99.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2001:db8::1",
            "3fff::1",
            "ff02::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "::ffff:0:7f00:1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(forbidden_reason(parsed).is_some(), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "1.1.1.1",
            "2a00:1450:4001::1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden_reason(parsed), None, "{ip}");
        }
    }

    #[test]
    fn odd_ipv4_spellings_parse_like_inet_aton() {
        let loopback = Some(Ipv4Addr::new(127, 0, 0, 1));
        for text in ["127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f.1", "0x7f000001", "017700000001", "0177.0.0.01", "127.0.0.1."] {
            assert_eq!(parse_ipv4_lenient(text), loopback, "{text}");
        }
        assert_eq!(parse_ipv4_lenient("0xa9.0xfe.0xa9.0xfe"), Some(Ipv4Addr::new(169, 254, 169, 254)));
        assert_eq!(parse_ipv4_lenient("0"), Some(Ipv4Addr::UNSPECIFIED));
        for name in ["", "example.com", "1.2.3.4.5", "256.1.1.1", "1.16777216", "4294967296", "08.1.1.1", "1..2", "0xg", "-1", "1.2.3.256"]
        {
            assert_eq!(parse_ipv4_lenient(name), None, "{name}");
        }
        assert_eq!(literal_ip("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(literal_ip("hooks.example.com"), None);
    }

    #[test]
    fn local_names_are_recognised() {
        for name in ["localhost", "LOCALHOST", "localhost.", "api.localhost"] {
            assert!(is_local_name(name), "{name}");
        }
        for name in ["localhost.example.com", "mylocalhost", "example.com"] {
            assert!(!is_local_name(name), "{name}");
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.20.0.0/16".parse().unwrap();
        assert!(net.contains("10.20.3.4".parse().unwrap()));
        assert!(!net.contains("10.21.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00:1::/64".parse().unwrap();
        assert!(v6.contains("fd00:1::5".parse().unwrap()) && !v6.contains("fd00:2::5".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert_eq!(v6.to_string(), "fd00:1::/64");
        for bad in ["10.0.0.0/33", "10.0.0.1/8", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_policy_opens_only_the_listed_holes() {
        let strict = TargetPolicy::default();
        assert_eq!(strict.refusal("10.20.0.5".parse().unwrap()), Some("private (RFC 1918)"));
        let holes = TargetPolicy { allow_private: false, allowed: vec!["10.20.0.0/16".parse().unwrap(), "127.0.0.1/32".parse().unwrap()] };
        assert_eq!(holes.refusal("10.20.0.5".parse().unwrap()), None);
        assert_eq!(holes.refusal("::ffff:127.0.0.1".parse().unwrap()), None, "mapped forms of an allowed address");
        assert!(holes.refusal("10.21.0.5".parse().unwrap()).is_some());
        assert!(holes.refusal("169.254.169.254".parse().unwrap()).is_some());
        let open = TargetPolicy { allow_private: true, allowed: Vec::new() };
        assert_eq!(open.refusal("169.254.169.254".parse().unwrap()), None);
    }

    /// A CA and a leaf for `names` signed by it, as PEM: (ca cert, leaf cert, leaf key).
    fn pki(names: &[&str]) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap().signed_by(&leaf_key, &issuer).unwrap();
        (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
    }

    #[test]
    fn trust_is_loaded_from_the_roots_and_the_file_and_bad_files_are_refused() {
        let (ca, _, key) = pki(&["hooks.internal"]);
        assert!(matches!(TargetTrust::load(TargetRoots::Bundled, None).unwrap().roots, RootCerts::WebPki));
        let with_file = TargetTrust::load(TargetRoots::Bundled, Some(("ca.pem", ca.as_bytes()))).unwrap();
        match &with_file.roots {
            RootCerts::Specific(certs) => assert_eq!(certs.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() + 1),
            other => panic!("bundled + file: {other:?}"),
        }
        assert!(format!("{with_file:?}").contains("1 CA certificate from ca.pem"), "{with_file:?}");
        let only = TargetTrust::load(TargetRoots::FileOnly, Some(("ca.pem", ca.as_bytes()))).unwrap();
        assert!(matches!(&only.roots, RootCerts::Specific(certs) if certs.len() == 1));
        let missing = TargetTrust::load(TargetRoots::FileOnly, None).unwrap_err();
        assert!(!missing.in_ca_file && missing.message.contains("WSS_TARGET_CA_FILE"), "{missing:?}");
        for (bad, why) in [
            (key.as_str(), "not a CERTIFICATE"),
            ("hello", "no PEM certificate"),
            ("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "not valid PEM"),
            ("-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n", "does not parse"),
        ] {
            let err = TargetTrust::load(TargetRoots::Bundled, Some(("ca.pem", bad.as_bytes()))).unwrap_err();
            assert!(err.in_ca_file && err.message.contains(why), "{why}: {err:?}");
        }
        assert_eq!("file-only".parse(), Ok(TargetRoots::FileOnly));
        assert_eq!(" System ".parse(), Ok(TargetRoots::System));
        assert!("none".parse::<TargetRoots>().is_err(), "there is no setting without verification");
    }

    #[test]
    fn the_system_store_is_read_when_the_os_has_one() {
        // Debian's ca-certificates bundle; without it `system` must fail with advice instead.
        let has_store = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").exists() || std::env::var_os("SSL_CERT_FILE").is_some();
        match TargetTrust::load(TargetRoots::System, None) {
            Ok(trust) => {
                assert!(matches!(&trust.roots, RootCerts::Specific(certs) if !certs.is_empty()));
                assert!(format!("{trust:?}").starts_with("the system trust store ("), "{trust:?}");
            }
            Err(e) => assert!(!has_store && e.message.contains("ca-certificates"), "{e:?}"),
        }
    }

    #[test]
    fn client_identities_need_a_matching_key() {
        let (_, cert, key) = pki(&["client"]);
        let (_, other_cert, other_key) = pki(&["other"]);
        let identity = ClientIdentity::from_pem(&cert, &key).unwrap();
        assert_eq!(
            identity.fingerprint(),
            ClientIdentity::from_pem(&cert, &key).unwrap().fingerprint(),
            "the same chain, the same identity"
        );
        assert_ne!(identity.fingerprint(), ClientIdentity::from_pem(&other_cert, &other_key).unwrap().fingerprint());
        assert!(!format!("{identity:?}").contains("PRIVATE"), "{identity:?}");
        let two_keys = format!("{key}{other_key}");
        for (chain, key_pem, field, why) in [
            (cert.as_str(), other_key.as_str(), "client_key", "does not belong to the certificate"),
            (key.as_str(), key.as_str(), "client_certificate", "not a CERTIFICATE"),
            ("", key.as_str(), "client_certificate", "no PEM certificate"),
            (cert.as_str(), "", "client_key", "no PEM private key"),
            (cert.as_str(), cert.as_str(), "client_key", "other than a private key"),
            (cert.as_str(), two_keys.as_str(), "client_key", "2 private keys"),
        ] {
            let err = ClientIdentity::from_pem(chain, key_pem).unwrap_err();
            assert_eq!(err.field, field, "{why}: {err}");
            assert!(err.message.contains(why), "{why}: {err}");
            assert!(!err.to_string().contains("PRIVATE KEY-----\nM"), "the key is never quoted: {err}");
        }
        let long = "x".repeat(MAX_CLIENT_KEY_PEM + 1);
        assert_eq!(ClientIdentity::from_pem(&cert, &long).unwrap_err().field, "client_key");
        let long_chain = cert.repeat(MAX_CLIENT_CERTIFICATE_PEM / cert.len() + 1);
        assert_eq!(ClientIdentity::from_pem(&long_chain, &key).unwrap_err().field, "client_certificate");
    }

    #[test]
    fn agents_are_made_once_per_client_identity() {
        let agents = Agents::with(2, TargetPolicy::default(), None, TargetTrust::bundled()).unwrap();
        let (_, cert, key) = pki(&["client"]);
        let (_, other_cert, other_key) = pki(&["other"]);
        let first = ClientIdentity::from_pem(&cert, &key).unwrap();
        let again = ClientIdentity::from_pem(&cert, &key).unwrap();
        let other = ClientIdentity::from_pem(&other_cert, &other_key).unwrap();
        let url = "https://receiver.example/hook";
        let _ = agents.agent(None, url, 0);
        assert_eq!(agents.identity_agents(), 0, "the default agent serves webhooks without a certificate");
        let _ = agents.agent(Some(&first), url, 0);
        let _ = agents.agent(Some(&again), url, 1);
        assert_eq!(agents.identity_agents(), 1, "the same chain (parsed twice, e.g. by two snapshots) shares one agent and its pool");
        let _ = agents.agent(Some(&other), url, 0);
        assert_eq!(agents.identity_agents(), 2);
    }

    #[test]
    fn a_hosts_requests_keep_to_its_spread_of_lanes() {
        use std::collections::HashSet;
        let agents = Agents::with(256, TargetPolicy::default(), None, TargetTrust::bundled()).unwrap();
        let lanes_of = |url: &str| (0..256).map(|slot| agents.lane(url, slot)).collect::<HashSet<_>>();
        let one = lanes_of("http://10.0.0.1:8080/a");
        assert_eq!(one.len(), 8, "256 threads: a host over 8 lanes, 32 threads each");
        assert_eq!(lanes_of("http://10.0.0.1:8080/b?c=d"), one, "the path and query do not move a host");
        let hosts: HashSet<usize> = (0..64).map(|i| agents.lane(&format!("https://host-{i}.example/hook"), 0)).collect();
        assert!(hosts.len() > 16, "hosts scatter over the lanes: {hosts:?}");
        let few = Agents::with(4, TargetPolicy::default(), None, TargetTrust::bundled()).unwrap();
        assert_eq!((0..4).map(|slot| few.lane("http://h/", slot)).collect::<HashSet<_>>().len(), 1, "few threads share one lane per host");
    }

    #[test]
    fn tls_failures_are_read_from_rustls_errors() {
        use rustls::Error as E;
        let cases = [
            (E::InvalidCertificate(CertificateError::UnknownIssuer), TlsReason::UnknownIssuer, "unknown issuer"),
            (E::InvalidCertificate(CertificateError::Expired), TlsReason::Expired, "certificate expired"),
            (E::InvalidCertificate(CertificateError::NotValidForName), TlsReason::NotValidForName, "certificate not valid for this name"),
            (E::InvalidCertificate(CertificateError::BadSignature), TlsReason::BadCertificate, "invalid certificate"),
            (E::AlertReceived(AlertDescription::CertificateRequired), TlsReason::ClientCertificateRequired, "client certificate required"),
            (E::AlertReceived(AlertDescription::UnknownCA), TlsReason::ClientCertificateRejected, "client certificate rejected"),
            (E::AlertReceived(AlertDescription::HandshakeFailure), TlsReason::HandshakeFailure, "handshake failure"),
        ];
        for (error, reason, words) in cases {
            let wrapped = ureq::Error::Io(io::Error::new(io::ErrorKind::InvalidData, error.clone()));
            let failure = tls_failure(&wrapped).unwrap_or_else(|| panic!("{error:?} inside an I/O error is a TLS failure"));
            assert_eq!(failure.reason, reason, "{error:?}");
            assert!(failure.to_string().starts_with(&format!("TLS {words}: ")), "{failure}");
            assert_eq!(tls_failure(&ureq::Error::Rustls(error)).map(|f| f.reason), Some(reason));
        }
        // Not TLS, whatever the text says.
        let refused = ureq::Error::Io(io::Error::new(io::ErrorKind::ConnectionRefused, "tls tls tls"));
        assert_eq!(tls_failure(&refused), None);
        assert_eq!(tls_failure(&ureq::Error::HostNotFound), None);
    }

    fn resolver(policy: TargetPolicy) -> GuardedResolver {
        GuardedResolver { policy, proxy: None }
    }

    #[test]
    fn the_resolver_refuses_loopback_unless_allowed() {
        let config = UreqConfig::default();
        for url in
            ["http://127.0.0.1:9/", "http://2130706433:9/", "http://0x7f.1:9/", "http://localhost:9/", "http://[::ffff:127.0.0.1]:9/"]
        {
            let uri: Uri = url.parse().unwrap();
            let err = resolver(TargetPolicy::default()).resolve(&uri, &config, NextTimeout::default()).unwrap_err();
            assert!(matches!(&err, ureq::Error::Io(e) if e.kind() == io::ErrorKind::PermissionDenied), "{url}: {err}");
        }
        let uri: Uri = "http://2130706433:9/".parse().unwrap();
        let open = resolver(TargetPolicy { allow_private: true, allowed: Vec::new() });
        let addrs = open.resolve(&uri, &config, NextTimeout::default()).unwrap();
        assert_eq!(addrs[0], "127.0.0.1:9".parse::<SocketAddr>().unwrap());
        let hole = resolver(TargetPolicy { allow_private: false, allowed: vec!["127.0.0.1/32".parse().unwrap()] });
        assert!(hole.resolve(&uri, &config, NextTimeout::default()).is_ok());
    }

    #[test]
    fn a_mixed_answer_is_dialled_on_its_public_addresses_only() {
        let addrs = |list: &[&str]| list.iter().map(|a| a.parse::<SocketAddr>().unwrap()).collect::<Vec<_>>();
        // A name answering with public and private addresses, as a rebinding attacker's would.
        let mixed = addrs(&[
            "127.0.0.1:443",
            "93.184.215.14:443",
            "10.0.0.7:443",
            "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443",
            "[::1]:443",
            "169.254.169.254:443",
            "[::ffff:192.168.1.1]:443",
        ]);
        let strict = TargetPolicy::default();
        assert_eq!(
            vet_answer(&strict, false, mixed.clone().into_iter()),
            Ok(addrs(&["93.184.215.14:443", "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443"]))
        );
        // Only private ones: refused, naming the last one refused.
        let private = addrs(&["10.0.0.7:443", "[fd00::1]:443"]);
        assert_eq!(vet_answer(&strict, false, private.clone().into_iter()), Err(Some(("fd00::1".parse().unwrap(), "unique local"))));
        assert_eq!(vet_answer(&strict, false, std::iter::empty()), Err(None));
        // A hole lets its range through and nothing else; allowing private targets, everything.
        let hole = TargetPolicy { allow_private: false, allowed: vec!["10.0.0.0/24".parse().unwrap()] };
        assert_eq!(
            vet_answer(&hole, false, mixed.clone().into_iter()),
            Ok(addrs(&["93.184.215.14:443", "10.0.0.7:443", "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443"]))
        );
        let open = TargetPolicy { allow_private: true, allowed: Vec::new() };
        assert_eq!(vet_answer(&open, false, mixed.clone().into_iter()), Ok(mixed.clone()));
        // The proxy is never vetted; answers are capped.
        assert_eq!(vet_answer(&strict, true, private.clone().into_iter()), Ok(private));
        let many = (1..=40u8).map(|i| SocketAddr::from(([93, 184, 215, i], 443)));
        assert_eq!(vet_answer(&strict, false, many).map(|kept| kept.len()), Ok(MAX_ADDRS));
    }

    #[test]
    fn the_proxy_is_resolved_without_vetting_and_only_it() {
        let config = UreqConfig::default();
        let guarded = GuardedResolver { policy: TargetPolicy::default(), proxy: Some(("127.0.0.1".into(), 3128)) };
        let proxy: Uri = "http://127.0.0.1:3128".parse().unwrap();
        assert!(guarded.resolve(&proxy, &config, NextTimeout::default()).is_ok());
        let other_port: Uri = "http://127.0.0.1:3129".parse().unwrap();
        assert!(guarded.resolve(&other_port, &config, NextTimeout::default()).is_err());
    }

    #[test]
    fn proxies_must_be_http_connect_proxies() {
        assert!(parse_proxy("http://proxy.internal:3128").is_ok());
        assert!(parse_proxy("https://proxy.internal").is_ok());
        for bad in ["socks5://proxy:1080", "proxy:3128", "http://", "not a url"] {
            assert!(parse_proxy(bad).is_err(), "{bad}");
        }
    }
}
