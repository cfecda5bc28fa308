//! The operations listener (`WSS_METRICS_ADDR`, default `127.0.0.1:9464`): Prometheus
//! `/metrics`, and a read-only status page (`/`, with its data at `/status.json`).
//!
//! It runs on [`crate::http_server`], the project's own small HTTP/1.1 server: one thread per
//! connection, no idle timeout. That suits a scraper and a few browsers, which is who this
//! listener is for; like the control plane it refuses a non-loopback address without an admin
//! token (`main`).
//!
//! - `/metrics` is open: counters and gauges (names and labels in `crate::metrics`), no secret.
//! - `/` is a static page — inline CSS and JS, no data, no external asset — that fetches
//!   `/status.json` every few seconds with `Authorization: Bearer <token>` (the token is typed
//!   once into the page and kept in `sessionStorage`).
//! - `/status/auth.json` (open) says whether a token is needed, so the page asks for one only then.
//! - `/status.json` needs the admin token when one is configured (401 otherwise; the token is
//!   compared by its SHA-256 digest in constant time, as the control plane does). It never shows
//!   a secret: no webhook secret, header or URL path — a webhook is shown by id, host and
//!   description.
//!
//! Per-webhook health is this instance's view: [`Health`] is fed by this instance's outcome
//! stage (attempts it made) and `wss-gauges` thread (circuits of this instance's isolation
//! state). Several instances each show their own share.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    domain::routing::{Routing, RoutingHandle},
    http_server::{Request, Responder, Response, Server},
    metrics::{self, Metrics},
    pipeline::isolation::{Circuit, EndpointView},
};

/// The attempts window of the page's success rate: this many one-minute buckets.
const WINDOW_MINUTES: usize = 5;
/// At most this many tenants are counted by name in [`Health`]'s dead-letter counts; entries for
/// other unknown tenants (a producer writing garbage tenant ids) are counted together.
const MAX_TENANTS: usize = 10_000;
/// What the page calls "other tenants" past [`MAX_TENANTS`].
const OTHER_TENANTS: &str = "(other tenants)";
/// A success rate below this, over at least [`MIN_ATTEMPTS_FOR_RATE`] attempts, marks a webhook failing.
const FAILING_RATE: f64 = 0.5;
const MIN_ATTEMPTS_FOR_RATE: u64 = 4;

/// The page: static, no data in it.
const PAGE: &str = include_str!("status.html");

/// Attempts of one minute.
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    minute: u64,
    succeeded: u64,
    failed: u64,
}

/// One webhook's health as this instance saw it.
#[derive(Debug, Default)]
struct WebhookHealth {
    buckets: [Bucket; WINDOW_MINUTES],
    last_success_ms: u64,
    last_failure_ms: u64,
    last_error: String,
    dead_letters: u64,
    circuit: CircuitState,
    in_flight: usize,
    parked: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn of(circuit: Circuit) -> Self {
        match circuit {
            Circuit::Closed => Self::Closed,
            Circuit::Open { .. } => Self::Open,
            Circuit::HalfOpen { .. } => Self::HalfOpen,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Per-webhook and per-tenant health, kept in memory for the status page. Written by the
/// outcome stage (one short lock per attempt; an allocation only for a webhook's first attempt
/// and on failures, for the error text) and the gauges thread (circuits, once a second).
#[derive(Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    webhooks: HashMap<String, WebhookHealth>,
    /// Dead letters by tenant, rejected entries included.
    tenant_dead_letters: HashMap<String, u64>,
}

impl HealthState {
    fn webhook(&mut self, id: &str) -> &mut WebhookHealth {
        if !self.webhooks.contains_key(id) {
            self.webhooks.insert(id.to_owned(), WebhookHealth::default());
        }
        self.webhooks.get_mut(id).expect("just inserted")
    }
}

impl Health {
    /// An attempt to `webhook` ended at `now_ms`; `error` is read only when it failed.
    pub fn attempt(&self, webhook: &str, succeeded: bool, error: impl FnOnce() -> String, now_ms: u64) {
        let minute = now_ms / 60_000;
        let mut state = self.state.lock();
        let health = state.webhook(webhook);
        let bucket = &mut health.buckets[(minute % WINDOW_MINUTES as u64) as usize];
        if bucket.minute != minute {
            *bucket = Bucket { minute, ..Bucket::default() };
        }
        if succeeded {
            bucket.succeeded += 1;
            health.last_success_ms = now_ms;
        } else {
            bucket.failed += 1;
            health.last_failure_ms = now_ms;
            health.last_error = error();
        }
    }

    /// A dead letter of `tenant` (empty when the entry named none), for `webhook` (empty for an
    /// entry rejected before routing).
    pub fn dead_letter(&self, tenant: &str, webhook: &str) {
        let mut state = self.state.lock();
        if !webhook.is_empty() {
            state.webhook(webhook).dead_letters += 1;
        }
        let known = state.tenant_dead_letters.contains_key(tenant);
        let key = if known || state.tenant_dead_letters.len() < MAX_TENANTS { tenant } else { OTHER_TENANTS };
        match state.tenant_dead_letters.get_mut(key) {
            Some(count) => *count += 1,
            None => {
                state.tenant_dead_letters.insert(key.to_owned(), 1);
            }
        }
    }

    /// Circuits, attempts in flight and parked deliveries now (from the isolation state):
    /// webhooks not listed are closed and idle. Webhooks that no longer exist in `routing` are
    /// forgotten.
    pub fn set_endpoints(&self, endpoints: &[EndpointView], routing: &Routing) {
        let mut state = self.state.lock();
        state.webhooks.retain(|id, _| routing.webhooks.contains_key(id));
        for health in state.webhooks.values_mut() {
            health.circuit = CircuitState::Closed;
            health.in_flight = 0;
            health.parked = 0;
        }
        for endpoint in endpoints {
            if routing.webhooks.contains_key(&endpoint.webhook) {
                let health = state.webhook(&endpoint.webhook);
                health.circuit = CircuitState::of(endpoint.circuit);
                health.in_flight = endpoint.in_flight;
                health.parked = endpoint.parked;
            }
        }
    }
}

/// Is a webhook shown as failing (red)? Pure, so the rule is tested here.
fn failing(circuit: CircuitState, last_success_ms: u64, last_failure_ms: u64, succeeded: u64, failed: u64, auto_disabled: bool) -> bool {
    let attempts = succeeded + failed;
    let low_rate = attempts >= MIN_ATTEMPTS_FOR_RATE && (succeeded as f64) < FAILING_RATE * attempts as f64;
    circuit != CircuitState::Closed || last_failure_ms > last_success_ms || low_rate || auto_disabled
}

/// The host of a webhook URL: enough to recognise it, without a path or query that may carry a
/// credential, nor `user:password@`.
fn url_host(url: &str) -> String {
    url.parse::<http::Uri>().ok().and_then(|u| u.authority().map(|a| a.as_str().rsplit('@').next().unwrap_or_default().to_owned())).unwrap_or_default()
}

/// Instance-wide figures shown on the page (read from the gauges).
fn pipeline_figures(m: &Metrics) -> Value {
    json!({
        "stream_lag": (m.stream_lag.get() >= 0).then(|| m.stream_lag.get()),
        "stream_pending": m.stream_pending.get(),
        "retry_heap_size": m.retry_heap_size.get(),
        "in_flight": m.in_flight.get(),
        "in_flight_limit": m.in_flight_limit.get(),
        "parked": m.parked.get(),
        "dead_letter_stream_length": m.dead_letter_stream_length.get(),
    })
}

/// The data of the status page.
pub fn status_json(routing: &Routing, health: &Health, metrics: &Metrics, instance: &str, now_ms: u64) -> Value {
    let state = health.state.lock();
    let minute = now_ms / 60_000;
    let mut tenants: BTreeMap<&str, (Option<bool>, Vec<Value>)> = BTreeMap::new();
    for (id, tenant) in &routing.tenants {
        tenants.entry(id.as_str()).or_default().0 = Some(tenant.tenant.disabled);
    }
    let mut routes: Vec<_> = routing.webhooks.values().collect();
    routes.sort_by(|a, b| a.webhook.id.cmp(&b.webhook.id));
    let empty = WebhookHealth::default();
    for route in routes {
        let webhook = &route.webhook;
        let h = state.webhooks.get(&webhook.id).unwrap_or(&empty);
        let recent = h.buckets.iter().filter(|b| b.minute + WINDOW_MINUTES as u64 > minute);
        let (succeeded, failed) = recent.fold((0, 0), |(s, f), b| (s + b.succeeded, f + b.failed));
        let rate = (succeeded + failed > 0).then(|| succeeded as f64 / (succeeded + failed) as f64);
        let auto_disabled = !webhook.enabled && !webhook.disabled_reason.is_empty();
        let row = json!({
            "webhook_id": webhook.id,
            "host": url_host(&webhook.url),
            "description": webhook.description,
            "enabled": webhook.enabled,
            "disabled_reason": webhook.disabled_reason,
            "succeeded": succeeded,
            "failed": failed,
            "success_rate": rate,
            "last_success_at_ms": (h.last_success_ms > 0).then_some(h.last_success_ms),
            "last_failure_at_ms": (h.last_failure_ms > 0).then_some(h.last_failure_ms),
            "last_error": h.last_error,
            "circuit": h.circuit.as_str(),
            "in_flight": h.in_flight,
            "parked": h.parked,
            "dead_letters": h.dead_letters,
            "failing": failing(h.circuit, h.last_success_ms, h.last_failure_ms, succeeded, failed, auto_disabled),
        });
        tenants.entry(webhook.tenant_id.as_str()).or_default().1.push(row);
    }
    for tenant in state.tenant_dead_letters.keys() {
        tenants.entry(tenant.as_str()).or_default();
    }
    let tenants: Vec<Value> = tenants
        .into_iter()
        .map(|(id, (disabled, webhooks))| {
            json!({
                "tenant_id": id,
                "known": disabled.is_some(),
                "disabled": disabled.unwrap_or(false),
                "dead_letters": state.tenant_dead_letters.get(id).copied().unwrap_or(0),
                "webhooks": webhooks,
            })
        })
        .collect();
    json!({
        "instance": instance,
        "generated_at_ms": now_ms,
        "window_seconds": WINDOW_MINUTES * 60,
        "config_version": routing.version,
        "pipeline": pipeline_figures(metrics),
        "tenants": tenants,
    })
}

/// What the listener serves from.
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub routing: Arc<RoutingHandle>,
    /// SHA-256 of the admin token; `None`: no token configured (the listener is on loopback).
    pub admin_token_digest: Option<[u8; 32]>,
    /// This instance's consumer name, shown on the page.
    pub instance: String,
}

impl Sources {
    pub fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    fn authorized(&self, request: &Request<'_>) -> bool {
        let Some(expected) = &self.admin_token_digest else { return true };
        let token = request.header("authorization").and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        token.is_some_and(|t| bool::from(Self::digest(t).ct_eq(expected)))
    }

    /// Answers one request.
    pub fn answer(&self, request: &Request<'_>) -> Response {
        if request.method != "GET" && request.method != "HEAD" {
            let mut response = Response::text(405, "only GET and HEAD\n");
            response.headers.push(("Allow".into(), "GET, HEAD".into()));
            return response;
        }
        let path = request.path.split('?').next().unwrap_or_default();
        match path {
            "/metrics" => with_type(200, metrics::CONTENT_TYPE, self.metrics.render()),
            "/" | "/index.html" => {
                let mut response = with_type(200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec());
                // Inline script and style only; nothing loaded from anywhere else.
                response.headers.push((
                    "Content-Security-Policy".into(),
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'".into(),
                ));
                response
            }
            "/status.json" => {
                if !self.authorized(request) {
                    let mut response = Response::text(401, "send `Authorization: Bearer <admin token>` (WSS_ADMIN_TOKEN)\n");
                    response.headers.push(("WWW-Authenticate".into(), "Bearer realm=\"wss\"".into()));
                    return response;
                }
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let body = status_json(&self.routing.current(), &self.health, &self.metrics, &self.instance, now_ms);
                let mut response = with_type(200, "application/json", body.to_string().into_bytes());
                response.headers.push(("Cache-Control".into(), "no-store".into()));
                response
            }
            // Open: lets the page ask for the token only when one is needed.
            "/status/auth.json" => {
                let body = json!({ "token_required": self.admin_token_digest.is_some() }).to_string();
                with_type(200, "application/json", body.into_bytes())
            }
            "/favicon.ico" => Response::empty(204),
            _ => Response::text(404, "not found: this listener serves /metrics, / (the status page) and /status.json\n"),
        }
    }
}

fn with_type(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut response = Response::empty(status);
    response.content_type = Some(content_type);
    response.body = body.into();
    response
}

/// Starts the listener on `addr`.
pub fn serve(addr: SocketAddr, sources: Sources) -> std::io::Result<Server> {
    let sources = Arc::new(sources);
    Server::bind(addr, move |request: &Request<'_>, responder: Responder<'_>| {
        let _ = responder.send(sources.answer(request));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_is_failing_when_its_circuit_is_open_its_last_attempt_failed_or_most_fail() {
        assert!(!failing(CircuitState::Closed, 0, 0, 0, 0, false), "never tried");
        assert!(!failing(CircuitState::Closed, 20, 10, 9, 1, false), "recovered");
        assert!(failing(CircuitState::Closed, 10, 20, 9, 1, false), "last attempt failed");
        assert!(failing(CircuitState::Open, 20, 10, 9, 1, false));
        assert!(failing(CircuitState::HalfOpen, 20, 10, 9, 1, false));
        assert!(failing(CircuitState::Closed, 20, 10, 1, 3, false), "success rate 25 %");
        assert!(!failing(CircuitState::Closed, 20, 10, 1, 2, false), "too few attempts for a rate");
        assert!(failing(CircuitState::Closed, 0, 0, 0, 0, true), "disabled by wss");
    }

    #[test]
    fn hosts_never_carry_credentials_or_paths() {
        assert_eq!(url_host("https://user:pw@hooks.example.com:8443/p?token=x"), "hooks.example.com:8443");
        assert_eq!(url_host("http://127.0.0.1:8787/hook"), "127.0.0.1:8787");
        assert_eq!(url_host("not a url"), "");
    }

    #[test]
    fn attempts_older_than_the_window_drop_out() {
        let health = Health::default();
        let t0 = 1_000 * 60_000;
        health.attempt("wh", false, || "HTTP 500".into(), t0);
        health.attempt("wh", true, String::new, t0 + 1);
        let state = health.state.lock();
        let h = &state.webhooks["wh"];
        assert_eq!((h.last_error.as_str(), h.last_success_ms, h.last_failure_ms), ("HTTP 500", t0 + 1, t0));
        let b = h.buckets[(1_000 % WINDOW_MINUTES as u64) as usize];
        assert_eq!((b.succeeded, b.failed), (1, 1));
        drop(state);
        // The same bucket, WINDOW_MINUTES later, starts over.
        health.attempt("wh", true, String::new, t0 + WINDOW_MINUTES as u64 * 60_000);
        let state = health.state.lock();
        let b = state.webhooks["wh"].buckets[(1_000 % WINDOW_MINUTES as u64) as usize];
        assert_eq!((b.succeeded, b.failed), (1, 0));
    }

    #[test]
    fn dead_letters_by_tenant_are_bounded() {
        let health = Health::default();
        for i in 0..MAX_TENANTS + 5 {
            health.dead_letter(&format!("t{i}"), "");
        }
        health.dead_letter("t0", "");
        let state = health.state.lock();
        assert_eq!(state.tenant_dead_letters.len(), MAX_TENANTS + 1);
        assert_eq!(state.tenant_dead_letters[OTHER_TENANTS], 5);
        assert_eq!(state.tenant_dead_letters["t0"], 2);
    }
}
