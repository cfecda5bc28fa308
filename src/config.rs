//! Configuration of `wss serve`: embedded defaults, then an optional TOML file (`--config`), then
//! `WSS_*` environment variables, then command-line flags — each layer overriding the one before.
//!
//! Every layer is reduced to the same thing, a value string per known key, and all of them are
//! parsed in one place, so a bad value reads the same wherever it came from and names its source
//! ("WSS_SENDER_THREADS=abc (environment): not a whole number"). All problems are reported at
//! once, before anything starts. Unknown keys in the file are an error naming the key.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use crate::redis_conn::RedisTls;
use crate::{
    crypto::SecretCipher,
    http::{looks_like_pem, Agents, Cidr, TargetPolicy, TargetRoots, TargetTrust},
};

/// One known setting: its key (in the TOML file; the environment variable is `WSS_` + upper
/// case), its default (`None`: unset), and a line for `wss serve --help`-style docs.
struct Key {
    name: &'static str,
    default: Option<&'static str>,
}

const KEYS: &[Key] = &[
    Key { name: "redis_url", default: Some("redis://127.0.0.1:6379") },
    Key { name: "redis_ca_file", default: None },
    Key { name: "redis_client_cert_file", default: None },
    Key { name: "redis_client_key_file", default: None },
    Key { name: "key_prefix", default: Some("wss:") },
    Key { name: "grpc_addr", default: Some("127.0.0.1:50051") },
    Key { name: "metrics_addr", default: Some("127.0.0.1:9464") },
    Key { name: "admin_token", default: None },
    Key { name: "admin_token_file", default: None },
    Key { name: "allow_private_targets", default: Some("false") },
    Key { name: "allow_http", default: Some("false") },
    Key { name: "allowed_target_cidrs", default: None },
    Key { name: "proxy", default: None },
    Key { name: "target_roots", default: Some("bundled") },
    Key { name: "target_ca_file", default: None },
    Key { name: "encryption_key", default: None },
    Key { name: "encryption_key_file", default: None },
    Key { name: "tls_cert_file", default: None },
    Key { name: "tls_key_file", default: None },
    Key { name: "tls_client_ca_file", default: None },
    Key { name: "consumer", default: None },
    Key { name: "claim_after", default: Some("60s") },
    Key { name: "stream_retention", default: Some("24h") },
    Key { name: "stream_shards", default: Some("1") },
    Key { name: "dedupe_window", default: Some("24h") },
    Key { name: "sender_threads", default: Some("256") },
    Key { name: "webhook_concurrency", default: Some("8") },
    Key { name: "circuit_failures", default: Some("5") },
    Key { name: "circuit_cooldown", default: Some("30s") },
    Key { name: "auto_disable_after", default: Some("off") },
    Key { name: "max_in_flight", default: Some("10000") },
    Key { name: "read_batch", default: Some("256") },
    Key { name: "read_block", default: Some("1s") },
    Key { name: "max_event_bytes", default: Some("262144") },
    Key { name: "dead_letter_maxlen", default: Some("1000000") },
    Key { name: "history_max_age", default: Some("7d") },
    Key { name: "history_max_count", default: Some("100000") },
    Key { name: "shutdown_grace", default: Some("30s") },
    Key { name: "log_format", default: Some("text") },
    Key { name: "log_level", default: Some("info") },
    Key { name: "otlp_endpoint", default: None },
    Key { name: "otlp_service_name", default: Some("wss") },
    Key { name: "trace_sample_ratio", default: Some("1") },
    Key { name: "sources", default: None },
];

/// Where a value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Environment,
    Flag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated settings of `wss serve`.
#[derive(Clone)]
pub struct Config {
    /// Redis to read events from and keep state in.
    pub redis_url: String,
    /// TLS material for a `rediss://` URL beyond the OS trust store.
    pub redis_tls: RedisTls,
    /// Prefix of every Redis key; the stream is `<prefix>events`.
    pub key_prefix: String,
    /// Control-plane listener.
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` and the status page (`crate::status`); `None` (`off` or empty):
    /// not served.
    pub metrics_addr: Option<SocketAddr>,
    /// Bearer token required on control-plane calls; `None`: no auth, loopback only.
    pub admin_token: Option<String>,
    /// Allow webhook targets that resolve to loopback/private addresses.
    pub allow_private_targets: bool,
    /// Allow `http://` webhook URLs.
    pub allow_http: bool,
    /// Private/special ranges that webhooks may reach all the same (`10.20.0.0/16,fd00:1::/64`).
    pub allowed_target_cidrs: Vec<Cidr>,
    /// An `http://` CONNECT proxy every delivery goes through (`WSS_PROXY`); it then resolves and
    /// dials webhook hosts, so it must refuse private targets itself. Environment proxies
    /// (`HTTPS_PROXY`, …) are never used.
    pub proxy: Option<String>,
    /// The roots receivers' certificates are verified against (`WSS_TARGET_ROOTS`,
    /// `WSS_TARGET_CA_FILE`), loaded at start-up.
    pub target_trust: TargetTrust,
    /// Seals webhook secrets at rest (`WSS_ENCRYPTION_KEY`: base64 of 32 bytes); `None`: in clear.
    pub encryption_key: Option<SecretCipher>,
    /// Serve the control plane over TLS (`WSS_TLS_CERT_FILE` + `WSS_TLS_KEY_FILE`, and
    /// `WSS_TLS_CLIENT_CA_FILE` for mutual TLS).
    pub tls: Option<TlsSettings>,
    /// This instance's consumer name in the group `wss`.
    pub consumer: String,
    /// An entry pending this long under a consumer that stopped renewing it is claimed.
    pub claim_after: Duration,
    /// Acknowledged entries of `<prefix>events` older than this are trimmed by wss, never one
    /// still pending or unread in any consumer group (`WSS_STREAM_RETENTION`, docs/contract.md §6); `None`
    /// (`off`): trimming is left to producers.
    pub stream_retention: Option<Duration>,
    /// Number of event streams (docs/contract.md §8): a tenant's events go to stream
    /// `<prefix>events:{crc32(tenant) mod N}`, or `<prefix>events` when 1.
    pub stream_shards: u32,
    /// How long a published `event_id` is remembered per tenant: publishing it again meanwhile
    /// appends nothing (`WSS_DEDUPE_WINDOW`, docs/contract.md §9).
    pub dedupe_window: Duration,
    /// Threads sending HTTP requests; size for latency, not cores.
    pub sender_threads: usize,
    /// Attempts to one webhook at once, at most; the excess waits (endpoint isolation).
    pub webhook_concurrency: usize,
    /// Consecutive failed attempts that open a webhook's circuit.
    pub circuit_failures: u32,
    /// How long an open circuit holds attempts back before one probe (doubling after a failed one).
    pub circuit_cooldown: Duration,
    /// Disable a webhook whose attempts have all failed for this long (`off`: never).
    pub auto_disable_after: Option<Duration>,
    /// Stream entries read but not yet acknowledged, at most; the reader waits beyond it.
    pub max_in_flight: usize,
    /// Entries per XREADGROUP.
    pub read_batch: usize,
    /// XREADGROUP BLOCK time; also how fast the reader notices shutdown.
    pub read_block: Duration,
    /// Largest accepted stream entry (all field names and values), bytes.
    pub max_event_bytes: usize,
    /// Approximate cap on the dead-letter stream's length.
    pub dead_letter_maxlen: usize,
    /// Delivery history is kept this long…
    pub history_max_age: Duration,
    /// …and at most this many deliveries (per index: all, per tenant, per webhook).
    pub history_max_count: usize,
    /// How long shutdown waits for in-flight sends before exiting anyway.
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter: `info`, or `warn,wss::pipeline=debug`.
    pub log_level: String,
    /// OpenTelemetry traces of delivery attempts, exported over OTLP/gRPC (`WSS_OTLP_ENDPOINT`,
    /// `crate::otel`); `None` (unset, empty or `off`): no tracing.
    pub otlp: Option<crate::otel::OtlpSettings>,
    /// Where events come from (`WSS_SOURCES`, or `[[sources]]` in the file; docs/contract.md §7): by
    /// default the Redis stream `<prefix>events` alone, as before sources existed. The Redis
    /// stream is read whether listed or not (PublishEvent and RedeliverDeadLetter append to it).
    pub sources: Vec<crate::source::SourceSpec>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("redis_url", &crate::redis_conn::redact_url(&self.redis_url))
            .field("key_prefix", &self.key_prefix)
            .field("grpc_addr", &self.grpc_addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("allow_private_targets", &self.allow_private_targets)
            .field("allow_http", &self.allow_http)
            .field("allowed_target_cidrs", &self.allowed_target_cidrs)
            .field("proxy", &self.proxy.as_deref().map(crate::redis_conn::redact_url))
            .field("target_trust", &self.target_trust)
            .field("encryption_key", &self.encryption_key)
            .field("tls", &self.tls)
            .field("consumer", &self.consumer)
            .field("sender_threads", &self.sender_threads)
            .field("otlp", &self.otlp)
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The delivery agents these settings ask for: the target policy
    /// (`WSS_ALLOW_PRIVATE_TARGETS`, `WSS_ALLOWED_TARGET_CIDRS`), the proxy (`WSS_PROXY`) and the
    /// trusted roots (`WSS_TARGET_ROOTS`, `WSS_TARGET_CA_FILE`). Made here rather than in
    /// `crate::http`, which then needs nothing of the configuration.
    pub fn agents(&self) -> Agents {
        let policy = TargetPolicy { allow_private: self.allow_private_targets, allowed: self.allowed_target_cidrs.clone() };
        Agents::configured(self.sender_threads, policy, self.proxy.as_deref(), self.target_trust.clone())
    }
}

/// The control plane's TLS material, read from the configured files at start-up. `Debug` shows
/// the file names only.
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Client certificates must chain to this CA (mutual TLS); `None`: no client certificates.
    pub client_ca_file: Option<PathBuf>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert_file", &self.cert_file)
            .field("client_ca_file", &self.client_ca_file)
            .finish_non_exhaustive()
    }
}

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

/// The raw layers, before parsing.
#[derive(Default)]
pub struct Layers {
    values: BTreeMap<&'static str, (String, Source)>,
    errors: Vec<String>,
    /// The file's `[[sources]]` tables, parsed in `build` (a `sources` string, from any layer,
    /// replaces them).
    source_tables: Vec<(toml::Table, String)>,
}

impl Layers {
    pub fn new() -> Self {
        let mut layers = Self::default();
        for key in KEYS {
            if let Some(default) = key.default {
                layers.values.insert(key.name, (default.to_owned(), Source::Default));
            }
        }
        layers
    }

    fn known(name: &str) -> Option<&'static str> {
        KEYS.iter().find(|k| k.name == name).map(|k| k.name)
    }

    /// Reads a TOML file of `key = value` lines.
    pub fn file(mut self, path: &Path) -> Self {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                self.errors.push(format!("cannot read config file {}: {e}", path.display()));
                return self;
            }
        };
        self.toml(&text, &path.display().to_string());
        self
    }

    fn toml(&mut self, text: &str, origin: &str) {
        let table: toml::Table = match toml::from_str(text) {
            Ok(table) => table,
            Err(e) => {
                self.errors.push(format!("config file {origin} is not valid TOML: {e}"));
                return;
            }
        };
        for (name, value) in table {
            let Some(key) = Self::known(&name) else {
                self.errors.push(format!(
                    "config file {origin}: unknown key {name:?} (known keys: {})",
                    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                ));
                continue;
            };
            let text = match value {
                toml::Value::Array(tables) if key == "sources" => {
                    for (i, table) in tables.into_iter().enumerate() {
                        match table {
                            toml::Value::Table(table) => {
                                self.source_tables.push((table, format!("config file {origin}: [[sources]] #{}", i + 1)))
                            }
                            other => self
                                .errors
                                .push(format!("config file {origin}: sources must be [[sources]] tables, not {}", other.type_str())),
                        }
                    }
                    continue;
                }
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    self.errors.push(format!("config file {origin}: {name} must be a string, number or boolean, not {}", other.type_str()));
                    continue;
                }
            };
            self.values.insert(key, (text, Source::File));
        }
    }

    /// Reads `WSS_<KEY>` for every known key through `lookup` (the process environment in
    /// production, a map in tests).
    pub fn environment(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        for key in KEYS {
            if let Some(value) = lookup(&env_name(key.name)) {
                self.values.insert(key.name, (value, Source::Environment));
            }
        }
        self
    }

    /// Applies a flag's value; `name` must be a known key.
    pub fn flag(mut self, name: &str, value: Option<String>) -> Self {
        if let Some(value) = value {
            let key = Self::known(name).unwrap_or_else(|| panic!("flag for unknown key {name}"));
            self.values.insert(key, (value, Source::Flag));
        }
        self
    }

    /// Parses every value, collecting all problems.
    pub fn build(self) -> Result<Config, ConfigErrors> {
        let mut p = Parser { layers: &self, errors: self.errors.clone() };
        let admin_token = match (p.opt_string("admin_token"), p.opt_string("admin_token_file")) {
            (Some(_), Some(_)) => {
                p.errors.push("set admin_token or admin_token_file, not both".into());
                None
            }
            (Some(token), None) => Some(token),
            (None, Some(file)) => match std::fs::read_to_string(&file) {
                Ok(token) => Some(token.trim().to_owned()),
                Err(e) => {
                    p.errors.push(format!("cannot read the admin token file {file}: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        if admin_token.as_deref().is_some_and(|t| t.len() < 16) {
            p.errors.push("the admin token must be at least 16 characters long".into());
        }
        let encryption_key = p.encryption_key();
        let tls = p.tls();
        let allowed_target_cidrs = p.cidrs("allowed_target_cidrs");
        let proxy = p.opt_string("proxy");
        if let Some(value) = &proxy {
            if let Err(e) = crate::http::parse_proxy(value) {
                let shown = crate::redis_conn::redact_url(value);
                p.error("proxy", &shown, &e.to_string());
            }
        }
        let target_trust = p.target_trust();
        let redis_tls = p.redis_tls();
        let config = Config {
            redis_url: p.string("redis_url"),
            redis_tls,
            key_prefix: p.string("key_prefix"),
            grpc_addr: p.parse("grpc_addr", "a socket address like 127.0.0.1:50051").unwrap_or_else(|| ([127, 0, 0, 1], 50051).into()),
            metrics_addr: match p.string("metrics_addr").trim() {
                "" | "off" => None,
                _ => p.parse("metrics_addr", "a socket address like 127.0.0.1:9464, or off"),
            },
            admin_token,
            allow_private_targets: p.boolean("allow_private_targets"),
            allow_http: p.boolean("allow_http"),
            allowed_target_cidrs,
            proxy,
            target_trust,
            encryption_key,
            tls,
            consumer: p.opt_string("consumer").unwrap_or_else(default_consumer),
            claim_after: p.duration("claim_after", Duration::from_secs(1), Duration::from_secs(86_400)),
            stream_retention: match p.string("stream_retention").trim() {
                "off" => None,
                _ => Some(p.duration("stream_retention", Duration::from_secs(1), Duration::from_secs(10 * 365 * 86_400))),
            },
            stream_shards: p.count("stream_shards", 1, 16_384) as u32,
            dedupe_window: p.duration("dedupe_window", Duration::from_secs(1), Duration::from_secs(365 * 86_400)),
            sender_threads: p.count("sender_threads", 1, 4096),
            webhook_concurrency: p.count("webhook_concurrency", 1, 4096),
            circuit_failures: p.count("circuit_failures", 1, 1_000_000) as u32,
            circuit_cooldown: p.duration("circuit_cooldown", Duration::from_millis(100), Duration::from_secs(86_400)),
            auto_disable_after: match p.string("auto_disable_after").trim() {
                "off" | "" | "0" => None,
                _ => Some(p.duration("auto_disable_after", Duration::from_secs(1), Duration::from_secs(365 * 86_400))),
            },
            max_in_flight: p.count("max_in_flight", 1, 10_000_000),
            read_batch: p.count("read_batch", 1, 10_000),
            read_block: p.duration("read_block", Duration::from_millis(10), Duration::from_secs(60)),
            max_event_bytes: p.count("max_event_bytes", 64, 64 << 20),
            dead_letter_maxlen: p.count("dead_letter_maxlen", 100, usize::MAX),
            history_max_age: p.duration("history_max_age", Duration::from_secs(60), Duration::from_secs(365 * 86_400)),
            history_max_count: p.count("history_max_count", 100, 100_000_000),
            shutdown_grace: p.duration("shutdown_grace", Duration::ZERO, Duration::from_secs(3600)),
            log_format: match p.string("log_format").as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    p.error("log_format", other, "must be text or json");
                    LogFormat::Text
                }
            },
            log_level: p.string("log_level"),
            otlp: p.otlp(),
            sources: p.sources(),
        };
        if config.key_prefix.is_empty() || config.key_prefix.contains(char::is_whitespace) {
            p.errors.push("key_prefix must be non-empty and without spaces".into());
        }
        let shown = crate::redis_conn::redact_url(&config.redis_url);
        match crate::redis_conn::cluster_nodes(&config.redis_url) {
            Some(Err(why)) => p.errors.push(format!("redis_url: {why}")),
            Some(Ok(nodes)) => {
                if let Some(e) = nodes.iter().find_map(|node| redis::Client::open(node.as_str()).err()) {
                    p.errors
                        .push(format!("redis_url {shown:?} is not a Redis Cluster URL ({e}); use redis+cluster://host1:port1,host2:port2"));
                }
                // A hash tag in the prefix would be every key's: one slot for all shards.
                if config.key_prefix.contains(['{', '}']) {
                    p.errors.push(format!(
                        "key_prefix {:?} holds a brace, which on a Redis Cluster would be a hash tag putting every key in one slot (docs/contract.md §8); choose a prefix without {{ or }}",
                        config.key_prefix
                    ));
                }
            }
            None => {
                if let Err(e) = redis::Client::open(config.redis_url.as_str()) {
                    p.errors.push(format!(
                        "redis_url {shown:?} is not a Redis URL ({e}); use redis://host:port or redis+cluster://host1:port1,host2:port2"
                    ));
                }
            }
        }
        if config.consumer.is_empty() || config.consumer.len() > 200 {
            p.errors.push("consumer must be 1 to 200 characters".into());
        }
        if p.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(p.errors))
        }
    }
}

impl Parser<'_> {
    /// `sources` (comma-separated URLs), else the file's `[[sources]]`, else the Redis stream.
    fn sources(&mut self) -> Vec<crate::source::SourceSpec> {
        use crate::source::SourceSpec;
        let redis_url = self.string("redis_url");
        let mut specs = Vec::new();
        if let Some(list) = self.opt_string("sources") {
            for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                match SourceSpec::from_url(url, &redis_url) {
                    Ok(spec) => specs.push(spec),
                    Err(problem) => {
                        let shown = crate::redis_conn::redact_url(url);
                        self.error("sources", &shown, &problem);
                    }
                }
            }
            if specs.is_empty() && self.errors.is_empty() {
                self.error("sources", &crate::redis_conn::redact_url(&list), "names no source");
            }
        } else {
            for (table, origin) in &self.layers.source_tables {
                match SourceSpec::from_table(table, &redis_url) {
                    Ok(spec) => specs.push(spec),
                    Err(problem) => self.errors.push(format!("{origin}: {problem}")),
                }
            }
        }
        if specs.is_empty() {
            specs.push(SourceSpec::Redis);
        }
        if specs.iter().filter(|s| **s == SourceSpec::Redis).count() > 1 {
            self.errors.push("sources: the Redis stream is listed more than once".into());
        }
        specs
    }
}

/// Keys whose values are never shown in an error.
fn is_secret_key(key: &str) -> bool {
    key.contains("token") || key == "encryption_key"
}

fn env_name(key: &str) -> String {
    format!("WSS_{}", key.to_ascii_uppercase())
}

/// `<hostname>-<pid>` (docs/contract.md §6).
fn default_consumer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wss".to_owned());
    format!("{host}-{}", std::process::id())
}

struct Parser<'a> {
    layers: &'a Layers,
    errors: Vec<String>,
}

impl Parser<'_> {
    fn raw(&self, key: &'static str) -> Option<&(String, Source)> {
        self.layers.values.get(key)
    }

    fn error(&mut self, key: &'static str, value: &str, problem: &str) {
        let (origin, shown) = match self.raw(key).map(|(_, s)| *s) {
            Some(Source::Environment) => (format!("{} (environment)", env_name(key)), value),
            Some(Source::File) => (format!("{key} (config file)"), value),
            Some(Source::Flag) => (format!("--{} (flag)", key.replace('_', "-")), value),
            _ => (format!("{key} (default)"), value),
        };
        let shown = if is_secret_key(key) { "***" } else { shown };
        self.errors.push(format!("{origin} = {shown:?}: {problem}"));
    }

    fn opt_string(&self, key: &'static str) -> Option<String> {
        self.raw(key).map(|(v, _)| v.clone()).filter(|v| !v.is_empty())
    }

    fn string(&self, key: &'static str) -> String {
        self.raw(key).map(|(v, _)| v.clone()).unwrap_or_default()
    }

    fn parse<T: std::str::FromStr>(&mut self, key: &'static str, expected: &str) -> Option<T> {
        let value = self.string(key);
        match value.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(key, &value, &format!("expected {expected}"));
                None
            }
        }
    }

    /// Reads a file named by `key`, reporting a failure under that key.
    fn read_file(&mut self, key: &'static str, path: &str) -> Option<Vec<u8>> {
        match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.error(key, path, &format!("cannot read the file: {e}"));
                None
            }
        }
    }

    /// `encryption_key` or `encryption_key_file` (not both): base64 of 32 bytes.
    fn encryption_key(&mut self) -> Option<SecretCipher> {
        let (key, text) = match (self.opt_string("encryption_key"), self.opt_string("encryption_key_file")) {
            (Some(_), Some(_)) => {
                self.errors.push("set encryption_key or encryption_key_file, not both".into());
                return None;
            }
            (Some(text), None) => ("encryption_key", text),
            (None, Some(file)) => {
                let bytes = self.read_file("encryption_key_file", &file)?;
                ("encryption_key_file", String::from_utf8_lossy(&bytes).into_owned())
            }
            (None, None) => return None,
        };
        match SecretCipher::from_base64(&text) {
            Ok(cipher) => Some(cipher),
            Err(e) => {
                // Never the value itself, whichever key it came from.
                let origin = match self.raw(key).map(|(_, s)| *s) {
                    Some(Source::Environment) => format!("{} (environment)", env_name(key)),
                    Some(Source::File) => format!("{key} (config file)"),
                    _ => key.to_owned(),
                };
                self.errors.push(format!("{origin}: the encryption key {e}"));
                None
            }
        }
    }

    /// `tls_cert_file` and `tls_key_file` together, `tls_client_ca_file` only with them.
    fn tls(&mut self) -> Option<TlsSettings> {
        let cert = self.opt_string("tls_cert_file");
        let key = self.opt_string("tls_key_file");
        let ca = self.opt_string("tls_client_ca_file");
        let (cert_file, key_file) = match (cert, key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => {
                if ca.is_some() {
                    self.errors.push("tls_client_ca_file needs tls_cert_file and tls_key_file: mutual TLS is TLS first".into());
                }
                return None;
            }
            _ => {
                self.errors
                    .push("set both tls_cert_file and tls_key_file (PEM files) to serve the control plane over TLS, or neither".into());
                return None;
            }
        };
        let cert_pem = self.read_file("tls_cert_file", &cert_file);
        let key_pem = self.read_file("tls_key_file", &key_file);
        let client_ca_pem = match &ca {
            Some(file) => Some(self.read_file("tls_client_ca_file", file)?),
            None => None,
        };
        for (name, pem) in [("tls_cert_file", &cert_pem), ("tls_key_file", &key_pem)] {
            if pem.as_deref().is_some_and(|bytes| !looks_like_pem(bytes)) {
                self.errors.push(format!("{name}: the file is not PEM (no -----BEGIN line)"));
            }
        }
        Some(TlsSettings {
            cert_file: cert_file.into(),
            cert_pem: cert_pem?,
            key_pem: key_pem?,
            client_ca_file: ca.map(PathBuf::from),
            client_ca_pem,
        })
    }

    /// `redis_ca_file`, `redis_client_cert_file` and `redis_client_key_file`, read: only with a
    /// `rediss://` URL, the certificate and key together.
    fn redis_tls(&mut self) -> RedisTls {
        let url = self.string("redis_url");
        let tls_url = url.starts_with("rediss://") || url.starts_with("rediss+cluster://");
        let ca = self.opt_string("redis_ca_file");
        let cert = self.opt_string("redis_client_cert_file");
        let key = self.opt_string("redis_client_key_file");
        let mut tls = RedisTls::default();
        if !tls_url && (ca.is_some() || cert.is_some() || key.is_some()) {
            self.errors.push(
                "redis_ca_file, redis_client_cert_file and redis_client_key_file are for TLS: write WSS_REDIS_URL as rediss://host:port"
                    .into(),
            );
            return tls;
        }
        let pem = |this: &mut Self, name: &'static str, path: &str| {
            let bytes = this.read_file(name, path)?;
            if !looks_like_pem(&bytes) {
                this.error(name, path, "the file is not PEM (no -----BEGIN line)");
                return None;
            }
            Some(bytes)
        };
        if let Some(path) = &ca {
            tls.ca_pem = pem(self, "redis_ca_file", path);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                if let (Some(cert), Some(key)) = (pem(self, "redis_client_cert_file", &cert), pem(self, "redis_client_key_file", &key)) {
                    tls.client = Some((cert, key));
                }
            }
            (None, None) => {}
            _ => self
                .errors
                .push("set both redis_client_cert_file and redis_client_key_file (PEM files) for mutual TLS with Redis, or neither".into()),
        }
        tls
    }

    /// `target_roots` and `target_ca_file`, loaded: the OS store read, the file parsed.
    fn target_trust(&mut self) -> TargetTrust {
        let roots_text = self.string("target_roots");
        let roots = match roots_text.parse::<TargetRoots>() {
            Ok(roots) => roots,
            Err(e) => {
                self.error("target_roots", &roots_text, &e);
                return TargetTrust::bundled();
            }
        };
        let file = self.opt_string("target_ca_file");
        let pem = match &file {
            Some(path) => match self.read_file("target_ca_file", path) {
                Some(pem) => Some(pem),
                None => return TargetTrust::bundled(),
            },
            None => None,
        };
        let ca_file = file.as_deref().zip(pem.as_deref());
        match TargetTrust::load(roots, ca_file) {
            Ok(trust) => trust,
            Err(e) => {
                match &file {
                    Some(path) if e.in_ca_file => self.error("target_ca_file", path, &e.message),
                    _ => self.error("target_roots", &roots_text, &e.message),
                }
                TargetTrust::bundled()
            }
        }
    }

    /// `otlp_endpoint` (an `http://` or `https://` URL; unset, empty or `off`: no tracing),
    /// `otlp_service_name` and `trace_sample_ratio` (0 to 1).
    fn otlp(&mut self) -> Option<crate::otel::OtlpSettings> {
        let endpoint = self.opt_string("otlp_endpoint").map(|e| e.trim().to_owned()).filter(|e| !e.is_empty() && e != "off");
        let service_name = self.string("otlp_service_name").trim().to_owned();
        if service_name.is_empty() {
            self.error("otlp_service_name", &service_name, "must not be empty");
        }
        let ratio_text = self.string("trace_sample_ratio");
        let sample_ratio = match ratio_text.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                self.error("trace_sample_ratio", &ratio_text, "must be a number from 0 to 1 (1: every trace, 0.1: one in ten)");
                1.0
            }
        };
        let endpoint = endpoint?;
        let parsed = endpoint.parse::<http::Uri>();
        match parsed {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => {
                self.error("otlp_endpoint", &endpoint, "must be the collector's OTLP/gRPC URL, like http://127.0.0.1:4317 (or off)");
                return None;
            }
        }
        Some(crate::otel::OtlpSettings { endpoint, service_name, sample_ratio })
    }

    /// A comma-separated list of CIDRs (`10.0.0.0/8, fd00::/8`; a bare address is one host).
    fn cidrs(&mut self, key: &'static str) -> Vec<Cidr> {
        let value = self.string(key);
        let mut out = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<Cidr>() {
                Ok(cidr) => out.push(cidr),
                Err(e) => self.error(key, part, &e),
            }
        }
        out
    }

    fn boolean(&mut self, key: &'static str) -> bool {
        let value = self.string(key);
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" | "" => false,
            _ => {
                self.error(key, &value, "expected true or false");
                false
            }
        }
    }

    fn count(&mut self, key: &'static str, min: usize, max: usize) -> usize {
        match self.parse::<usize>(key, "a whole number") {
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.error(key, &v.to_string(), &format!("must be between {min} and {max}"));
                min
            }
            None => min,
        }
    }

    fn duration(&mut self, key: &'static str, min: Duration, max: Duration) -> Duration {
        let value = self.string(key);
        match humantime::parse_duration(value.trim()) {
            Ok(d) if d >= min && d <= max => d,
            Ok(_) => {
                let range = format!("must be between {} and {}", humantime::format_duration(min), humantime::format_duration(max));
                self.error(key, &value, &range);
                min
            }
            Err(e) => {
                self.error(key, &value, &format!("not a duration ({e}); write e.g. 500ms, 30s, 5m"));
                min
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Layers::new().environment(env(&[])).build().unwrap();
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.key_prefix, "wss:");
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.metrics_addr.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9464"));
        assert!(!c.allow_http && !c.allow_private_targets && c.admin_token.is_none());
        assert!(c.consumer.ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn the_metrics_listener_can_be_turned_off_and_a_bad_address_names_its_variable() {
        for off in ["off", ""] {
            let c = Layers::new().environment(env(&[("WSS_METRICS_ADDR", off)])).build().unwrap();
            assert_eq!(c.metrics_addr, None, "{off:?}");
        }
        let c = Layers::new().flag("metrics_addr", Some("0.0.0.0:9000".into())).build().unwrap();
        assert_eq!(c.metrics_addr, Some(([0, 0, 0, 0], 9000).into()));
        let err = Layers::new().environment(env(&[("WSS_METRICS_ADDR", "localhost")])).build().err().unwrap().to_string();
        assert!(err.contains("WSS_METRICS_ADDR (environment) = \"localhost\"") && err.contains("or off"), "{err}");
    }

    #[test]
    fn later_layers_win() {
        let mut layers = Layers::new();
        layers.toml("key_prefix = \"file:\"\nsender_threads = 8\nallow_http = true\n", "test.toml");
        let c = layers
            .environment(env(&[("WSS_KEY_PREFIX", "env:"), ("WSS_SENDER_THREADS", "16")]))
            .flag("sender_threads", Some("32".into()))
            .build()
            .unwrap();
        assert_eq!(c.key_prefix, "env:");
        assert_eq!(c.sender_threads, 32);
        assert!(c.allow_http);
    }

    #[test]
    fn all_problems_are_reported_at_once_naming_their_source() {
        let mut layers = Layers::new();
        layers.toml("colour = \"blue\"\n", "test.toml");
        let err = layers
            .environment(env(&[("WSS_SENDER_THREADS", "abc"), ("WSS_READ_BLOCK", "soon"), ("WSS_ALLOW_HTTP", "maybe")]))
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 4, "{text}");
        assert!(text.contains("unknown key \"colour\""), "{text}");
        assert!(text.contains("WSS_SENDER_THREADS (environment) = \"abc\""), "{text}");
        assert!(text.contains("WSS_READ_BLOCK"), "{text}");
        assert!(text.contains("WSS_ALLOW_HTTP"), "{text}");
    }

    #[test]
    fn encryption_keys_are_checked_and_never_shown() {
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let c = Layers::new().environment(env(&[("WSS_ENCRYPTION_KEY", key)])).build().unwrap();
        assert!(c.encryption_key.is_some());
        assert!(!format!("{c:?}").contains(key));
        let err = Layers::new().environment(env(&[("WSS_ENCRYPTION_KEY", "c2hvcnQta2V5")])).build().unwrap_err().to_string();
        assert!(err.contains("WSS_ENCRYPTION_KEY (environment): the encryption key is not a valid key"), "{err}");
        assert!(!err.contains("c2hvcnQta2V5"), "{err}");
        let dir = std::env::temp_dir().join(format!("wss-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, format!("{key}\n")).unwrap();
        let c = Layers::new().environment(env(&[("WSS_ENCRYPTION_KEY_FILE", file.to_str().unwrap())])).build().unwrap();
        assert_eq!(c.encryption_key.unwrap().key_id(), SecretCipher::from_base64(key).unwrap().key_id());
        let both = Layers::new()
            .environment(env(&[("WSS_ENCRYPTION_KEY_FILE", file.to_str().unwrap()), ("WSS_ENCRYPTION_KEY", key)]))
            .build()
            .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_files_come_in_pairs_and_must_be_pem() {
        let dir = std::env::temp_dir().join(format!("wss-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("cert.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n").unwrap();
        let junk = dir.join("junk");
        std::fs::write(&junk, "hello").unwrap();
        let pem = pem.to_str().unwrap();
        let c = Layers::new().environment(env(&[("WSS_TLS_CERT_FILE", pem), ("WSS_TLS_KEY_FILE", pem)])).build().unwrap();
        let tls = c.tls.expect("TLS configured");
        assert!(tls.client_ca_pem.is_none());
        assert!(!format!("{tls:?}").contains("BEGIN"));

        let only_cert = Layers::new().environment(env(&[("WSS_TLS_CERT_FILE", pem)])).build().unwrap_err().to_string();
        assert!(only_cert.contains("set both tls_cert_file and tls_key_file"), "{only_cert}");
        let only_ca = Layers::new().environment(env(&[("WSS_TLS_CLIENT_CA_FILE", pem)])).build().unwrap_err().to_string();
        assert!(only_ca.contains("tls_client_ca_file needs"), "{only_ca}");
        let missing = Layers::new()
            .environment(env(&[("WSS_TLS_CERT_FILE", "/nonexistent/cert.pem"), ("WSS_TLS_KEY_FILE", junk.to_str().unwrap())]))
            .build()
            .unwrap_err();
        assert_eq!(missing.0.len(), 2, "{missing}");
        assert!(
            missing.to_string().contains("WSS_TLS_CERT_FILE (environment) = \"/nonexistent/cert.pem\": cannot read the file"),
            "{missing}"
        );
        assert!(missing.to_string().contains("tls_key_file: the file is not PEM"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn allowed_cidrs_parse_and_report_each_bad_one() {
        let c = Layers::new().environment(env(&[("WSS_ALLOWED_TARGET_CIDRS", "10.20.0.0/16, fd00:1::/64 ,192.168.1.7")])).build().unwrap();
        assert_eq!(c.allowed_target_cidrs.len(), 3);
        assert!(Layers::new().environment(env(&[])).build().unwrap().allowed_target_cidrs.is_empty());
        let err = Layers::new().environment(env(&[("WSS_ALLOWED_TARGET_CIDRS", "10.0.0.0/33,nonsense,10.0.0.0/8")])).build().unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.to_string().contains("WSS_ALLOWED_TARGET_CIDRS (environment) = \"10.0.0.0/33\""), "{err}");
    }

    #[test]
    fn target_trust_settings_are_checked_naming_their_variable() {
        let c = Layers::new().environment(env(&[])).build().unwrap();
        assert_eq!(format!("{:?}", c.target_trust), "the bundled Mozilla roots");
        let err = Layers::new().environment(env(&[("WSS_TARGET_ROOTS", "off")])).build().unwrap_err().to_string();
        assert!(err.contains("WSS_TARGET_ROOTS (environment) = \"off\": expected bundled, system or file-only"), "{err}");
        let err = Layers::new().environment(env(&[("WSS_TARGET_ROOTS", "file-only")])).build().unwrap_err().to_string();
        assert!(err.contains("WSS_TARGET_ROOTS (environment)") && err.contains("needs WSS_TARGET_CA_FILE"), "{err}");
        let dir = std::env::temp_dir().join(format!("wss-config-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = Layers::new().environment(env(&[("WSS_TARGET_CA_FILE", junk.to_str().unwrap())])).build().unwrap_err().to_string();
        assert!(err.contains("WSS_TARGET_CA_FILE (environment)") && err.contains("no PEM certificate"), "{err}");
        let err = Layers::new().environment(env(&[("WSS_TARGET_CA_FILE", "/nonexistent/ca.pem")])).build().unwrap_err().to_string();
        assert!(err.contains("WSS_TARGET_CA_FILE (environment) = \"/nonexistent/ca.pem\": cannot read the file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sources_come_from_the_file_s_tables_or_the_environment_and_default_to_the_redis_stream() {
        use crate::source::SourceSpec;
        assert_eq!(Layers::new().build().unwrap().sources, [SourceSpec::Redis], "docs/contract.md §7: unset, the Redis stream alone");
        let mut layers = Layers::new();
        layers.toml("key_prefix = \"x:\"\n[[sources]]\nkind = \"redis\"\n[[sources]]\nkind = \"nats\"\nstream = \"S\"\n[[sources]]\nkind = \"amqp\"\nqueue = \"q\"\n", "test.toml");
        let sources = layers.build().unwrap().sources;
        assert_eq!(
            sources.iter().map(SourceSpec::label).collect::<Vec<_>>(),
            ["redis", "nats://127.0.0.1:4222/S", "amqp://127.0.0.1:5672/q"]
        );
        let mut layers = Layers::new();
        layers.toml("[[sources]]\nkind = \"nats\"\n", "test.toml");
        let layers = layers.environment(env(&[("WSS_SOURCES", "amqp://u:secret@h/%2f?queue=a")]));
        let sources = layers.build().unwrap().sources;
        assert_eq!(sources.iter().map(SourceSpec::label).collect::<Vec<_>>(), ["amqp://h/a"], "the variable replaces the file's tables");
        let err = Layers::new().environment(env(&[("WSS_SOURCES", "nats://u:secret@h?bogus=1")])).build().unwrap_err().to_string();
        assert!(err.contains("WSS_SOURCES (environment)") && err.contains("unknown option") && !err.contains("secret"), "{err}");
        let mut layers = Layers::new();
        layers.toml("[[sources]]\nkind = \"kafka\"\n", "test.toml");
        let err = layers.build().unwrap_err().to_string();
        assert!(err.contains("[[sources]] #1") && err.contains("unknown kind"), "{err}");
    }

    #[test]
    fn stream_shards_and_cluster_urls_are_checked() {
        assert_eq!(Layers::new().environment(env(&[])).build().unwrap().stream_shards, 1, "docs/contract.md §6: 1 by default");
        let c = Layers::new()
            .environment(env(&[("WSS_STREAM_SHARDS", "8"), ("WSS_REDIS_URL", "redis+cluster://127.0.0.1:7000,127.0.0.1:7001")]))
            .build()
            .unwrap();
        assert_eq!((c.stream_shards, c.redis_url.as_str()), (8, "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"));
        let err = Layers::new().environment(env(&[("WSS_STREAM_SHARDS", "0")])).build().unwrap_err().to_string();
        assert!(err.contains("WSS_STREAM_SHARDS"), "{err}");
        // A hash tag in the prefix would put every shard in one slot.
        let cluster = ("WSS_REDIS_URL", "rediss+cluster://u:secret@h1:7000");
        let err = Layers::new().environment(env(&[cluster, ("WSS_KEY_PREFIX", "{wss}:")])).build().unwrap_err().to_string();
        assert!(err.contains("key_prefix") && err.contains("hash tag") && !err.contains("secret"), "{err}");
        assert!(Layers::new().environment(env(&[("WSS_KEY_PREFIX", "{wss}:")])).build().is_ok(), "one Redis has no slots");
        let err = Layers::new().environment(env(&[("WSS_REDIS_URL", "redis+cluster://")])).build().unwrap_err().to_string();
        assert!(err.contains("names no node"), "{err}");
    }

    #[test]
    fn stream_retention_is_a_duration_or_off() {
        let c = Layers::new().environment(env(&[])).build().unwrap();
        assert_eq!(c.stream_retention, Some(Duration::from_secs(86_400)), "docs/contract.md §6: 24h by default");
        let c = Layers::new().environment(env(&[("WSS_STREAM_RETENTION", "off")])).build().unwrap();
        assert_eq!(c.stream_retention, None);
        let mut layers = Layers::new();
        layers.toml("stream_retention = \"90s\"\n", "test.toml");
        assert_eq!(layers.build().unwrap().stream_retention, Some(Duration::from_secs(90)));
        for bad in ["soon", "0s", ""] {
            let err = Layers::new().environment(env(&[("WSS_STREAM_RETENTION", bad)])).build().unwrap_err().to_string();
            assert!(err.contains(&format!("WSS_STREAM_RETENTION (environment) = {bad:?}")), "{err}");
        }
    }

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_given_and_its_settings_are_checked() {
        assert_eq!(Layers::new().environment(env(&[])).build().unwrap().otlp, None);
        let off = Layers::new().environment(env(&[("WSS_OTLP_ENDPOINT", "off"), ("WSS_TRACE_SAMPLE_RATIO", "0.5")])).build().unwrap();
        assert_eq!(off.otlp, None);
        let mut layers = Layers::new();
        layers.toml("otlp_endpoint = \"http://collector:4317\"\ntrace_sample_ratio = 0.25\n", "test.toml");
        let on = layers.environment(env(&[("WSS_OTLP_SERVICE_NAME", "wss-eu")])).build().unwrap().otlp.unwrap();
        assert_eq!(
            on,
            crate::otel::OtlpSettings { endpoint: "http://collector:4317".into(), service_name: "wss-eu".into(), sample_ratio: 0.25 }
        );
        let err = Layers::new()
            .environment(env(&[("WSS_OTLP_ENDPOINT", "collector:4317"), ("WSS_TRACE_SAMPLE_RATIO", "2")]))
            .build()
            .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.to_string().contains("WSS_OTLP_ENDPOINT (environment) = \"collector:4317\""), "{err}");
        assert!(err.to_string().contains("WSS_TRACE_SAMPLE_RATIO (environment) = \"2\""), "{err}");
    }

    #[test]
    fn tokens_never_appear_in_errors() {
        let err = Layers::new().environment(env(&[("WSS_ADMIN_TOKEN", "short")])).build().unwrap_err();
        assert!(!err.to_string().contains("short"), "{err}");
    }
}
