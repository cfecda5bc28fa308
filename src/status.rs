//! The operations listener (`WSS_METRICS_ADDR`, default `127.0.0.1:9464`): Prometheus
//! `/metrics`, and a read-only status page (`/`, with its data at `/status.json`).
//!
//! It is an axum router on [`crate::http_listener`] (hyper), on the service's tokio runtime;
//! the handlers that read Redis run on the runtime's blocking threads. It is for a scraper and a
//! few browsers, and its limits say so: at most [`MAX_CONNECTIONS`] open at once, a request head
//! within [`HEADER_TIMEOUT`] (idle kept-alive connections are closed after it too), 64 KiB of
//! head, [`MAX_BODY`] of body. Like the control plane it refuses a non-loopback address without
//! an admin token (`main`).
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
//! - `/status/webhook.json?id=<webhook id>` (the same token) answers "why is it red": the
//!   webhook's last [`RECENT_DELIVERIES`] deliveries with every attempt (time, status, duration,
//!   error), read from the delivery history when the page opens a webhook.
//! - `/status.json` also carries this instance's dead letters by reason since it started, those
//!   rejected before routing (unknown tenant, bad entries) included.
//!
//! Per-webhook counts, last success and last failure are cluster-wide: they are the stats every
//! instance's outcome stage writes to Redis (`crate::stats`, the same as `GetWebhookStats`),
//! read with the stored webhooks on each refresh (one `HSCAN` pass and one pipelined round
//! trip). Circuit, attempts in flight and parked deliveries are this instance's
//! (`crate::pipeline::live`).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::Response,
    routing::get,
    Router,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::runtime::Handle;

use crate::{
    clock::now_ms,
    domain::{
        model::Webhook,
        routing::{Routing, RoutingHandle},
        store::Store,
    },
    http_listener::{Bytes, Listener, Options},
    metrics::{self, Metrics},
    pipeline::{isolation::CircuitState, live::LiveView},
    stats::{self, Failure, Stored},
};

/// The window of the page's counts and success rate.
const WINDOW: Duration = Duration::from_secs(5 * 60);
/// A success rate below this, over at least [`MIN_ATTEMPTS_FOR_RATE`] attempts, marks a webhook failing.
const FAILING_RATE: f64 = 0.5;
const MIN_ATTEMPTS_FOR_RATE: u64 = 4;

/// Deliveries shown when the page opens a webhook, newest first.
const RECENT_DELIVERIES: usize = 10;

/// The page: static, no data in it.
const PAGE: &str = include_str!("status.html");

/// Connections open at once; more wait in the kernel's accept queue. A scraper and a few
/// browsers (six connections each at most) need far fewer.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request head, or keep a connection idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Every request here is a GET: a body is never read, and a large one is refused (413).
pub const MAX_BODY: usize = 64 * 1024;

/// Is a webhook shown as failing (red)? Pure, so the rule is tested here.
fn failing(circuit: CircuitState, last_success_ms: u64, last_failure_ms: u64, succeeded: u64, failed: u64, auto_disabled: bool) -> bool {
    let attempts = succeeded + failed;
    let low_rate = attempts >= MIN_ATTEMPTS_FOR_RATE && (succeeded as f64) < FAILING_RATE * attempts as f64;
    circuit != CircuitState::Closed || last_failure_ms > last_success_ms || low_rate || auto_disabled
}

/// The host of a webhook URL: enough to recognise it, without a path or query that may carry a
/// credential, nor `user:password@`.
fn url_host(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.as_str().rsplit('@').next().unwrap_or_default().to_owned()))
        .unwrap_or_default()
}

/// The `id` of a query string, when it looks like a webhook id (letters, digits, `_`, at most 64).
fn webhook_id_of(query: &str) -> Option<&str> {
    let id = query.split('&').find_map(|pair| pair.strip_prefix("id="))?;
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(id)
}

/// Instance-wide figures shown on the page (read from the gauges).
fn pipeline_figures(m: &Metrics) -> Value {
    json!({
        "stream_lag": (m.stream_lag.get() >= 0).then(|| m.stream_lag.get()),
        "stream_pending": m.stream_pending.get(),
        "backlog_deliveries": m.backlog_deliveries.get(),
        "backlog_webhooks": m.backlog_webhooks.get(),
        "in_flight": m.in_flight.get(),
        "in_flight_limit": m.in_flight_limit.get(),
        "parked": m.parked.get(),
        "dead_letter_stream_length": m.dead_letter_stream_length.get(),
    })
}

/// The data of the status page: every stored webhook with its stats (empty when Redis could not
/// be read; `stats_error` says why), tenants as `routing` knows them, and this instance's `live`
/// view.
pub fn status_json(routing: &Routing, stats: &StatsRead, live: &LiveView, metrics: &Metrics, now_ms: u64) -> Value {
    let mut tenants: BTreeMap<&str, (Option<bool>, u64, Vec<Value>)> = BTreeMap::new();
    for (id, tenant) in &routing.tenants {
        tenants.entry(id.as_str()).or_default().0 = Some(tenant.tenant.disabled);
    }
    let empty = Stored::default();
    for (i, webhook) in stats.webhooks.iter().enumerate() {
        let stored = stats.stored.get(i).unwrap_or(&empty);
        let backlog = stats.backlog.get(i).copied().unwrap_or_default();
        let counts = stats::summarize(stored, now_ms, WINDOW);
        let failure = stored.last_failure.clone().unwrap_or_default();
        let here = live.of(&webhook.id);
        let auto_disabled = !webhook.enabled && !webhook.disabled_reason.is_empty();
        let row = json!({
            "webhook_id": webhook.id,
            "host": url_host(&webhook.url),
            "description": webhook.description,
            "enabled": webhook.enabled,
            "disabled_reason": webhook.disabled_reason,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "success_rate": stats::success_rate(&counts),
            "last_success_at_ms": (stored.last_success_ms > 0).then_some(stored.last_success_ms),
            "last_failure_at_ms": (failure.at_ms > 0).then_some(failure.at_ms),
            "last_error": failure_text(&failure),
            "circuit": here.circuit.state().as_str(),
            "in_flight": here.in_flight,
            "parked": here.parked,
            "backlog": backlog.deliveries,
            "backlog_oldest_age_ms": backlog.oldest_since_ms.map(|since| now_ms.saturating_sub(since)),
            "dead_letters": counts.dead_letters,
            "fifo": webhook.ordering == crate::domain::model::Ordering::Fifo,
            "rate_limit_per_second": webhook.rate_limit_per_second,
            "rate_limited": stored.rate_limited,
            "failing": failing(here.circuit.state(), stored.last_success_ms, failure.at_ms, counts.succeeded, counts.failed, auto_disabled),
        });
        let tenant = tenants.entry(webhook.tenant_id.as_str()).or_default();
        tenant.1 += counts.dead_letters;
        tenant.2.push(row);
    }
    let tenants: Vec<Value> = tenants
        .into_iter()
        .map(|(id, (disabled, dead_letters, webhooks))| {
            json!({
                "tenant_id": id,
                "known": disabled.is_some(),
                "disabled": disabled.unwrap_or(false),
                "dead_letters": dead_letters,
                "webhooks": webhooks,
            })
        })
        .collect();
    json!({
        "instance": live.instance(),
        "generated_at_ms": now_ms,
        "window_seconds": WINDOW.as_secs(),
        "config_version": routing.version,
        "stats_error": stats.error,
        "pipeline": pipeline_figures(metrics),
        "dead_letters_by_reason": metrics.dead_letter_counts().into_iter().map(|(reason, n)| (reason.to_owned(), Value::from(n))).collect::<serde_json::Map<_, _>>(),
        "tenants": tenants,
    })
}

/// What the page shows of a failure: `HTTP 500 Internal Server Error`, or the error class and
/// text when no answer came.
fn failure_text(failure: &Failure) -> String {
    if failure.status != 0 || failure.kind.is_empty() {
        failure.error.clone()
    } else {
        format!("{}: {}", failure.kind, failure.error)
    }
}

/// The stored webhooks and their stats, read for one refresh. The routing snapshot keeps only
/// what delivery needs, so descriptions and disabled reasons are read from the store.
#[derive(Default)]
pub struct StatsRead {
    /// By id.
    pub webhooks: Vec<Webhook>,
    /// `webhooks[i]`'s stats.
    pub stored: Vec<Stored>,
    /// `webhooks[i]`'s durable backlog.
    pub backlog: Vec<crate::pipeline::backlog::Depth>,
    /// Why they could not be read (Redis away); the page says so and shows the rest.
    pub error: Option<String>,
}

/// What the listener serves from.
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveView>,
    pub routing: Arc<RoutingHandle>,
    pub store: Arc<Store>,
    /// What `/healthz` and `/readyz` answer from.
    pub health: Arc<crate::health::Health>,
    /// SHA-256 of the admin token; `None`: no token configured (the listener is on loopback).
    pub admin_token_digest: Option<[u8; 32]>,
}

impl Sources {
    pub fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// Does `authorization` (the header's value) carry the admin token, when one is needed?
    fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(expected) = &self.admin_token_digest else { return true };
        let token = authorization.and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        token.is_some_and(|t| bool::from(Self::digest(t).ct_eq(expected)))
    }

    /// Every stored webhook and its stats; what could not be read is said in `error`.
    fn read_stats(&self, now_ms: u64) -> StatsRead {
        let mut webhooks = Vec::new();
        let read = self.store.scan_webhooks(|w| webhooks.push(w)).and_then(|()| {
            // A scan may hand a webhook over twice.
            webhooks.sort_by(|a, b| a.id.cmp(&b.id));
            webhooks.dedup_by(|a, b| a.id == b.id);
            let ids: Vec<&str> = webhooks.iter().map(|w| w.id.as_str()).collect();
            Ok((self.store.webhooks_stats(&ids, now_ms)?, self.store.backlog_depths(&ids)?))
        });
        match read {
            Ok((stored, backlog)) => StatsRead { webhooks, stored, backlog, error: None },
            Err(err) => StatsRead {
                webhooks: Vec::new(),
                stored: Vec::new(),
                backlog: Vec::new(),
                error: Some(format!("the webhooks and their stats cannot be read ({err})")),
            },
        }
    }

    /// `/status/webhook.json?id=…`: the webhook's last deliveries, with their attempts.
    fn recent_deliveries(&self, query: &str) -> Response {
        let Some(id) = webhook_id_of(query) else {
            return plain(StatusCode::BAD_REQUEST, "give the webhook: /status/webhook.json?id=wh_…\n");
        };
        let wanted = crate::history::Query { webhook_id: id.to_owned(), ..Default::default() };
        match self.store.list_deliveries(&wanted, RECENT_DELIVERIES, "") {
            Ok(page) => json_no_store(json!({ "webhook_id": id, "deliveries": page.items })),
            Err(err) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("the delivery history cannot be read ({err})\n")),
        }
    }

    /// `/status.json`: the page's data.
    fn status(&self) -> Response {
        let now_ms = now_ms();
        let routing = self.routing.current();
        let stats = self.read_stats(now_ms);
        json_no_store(status_json(&routing, &stats, &self.live, &self.metrics, now_ms))
    }
}

/// The listener's routes. Every path answers GET and HEAD (axum answers HEAD as GET without the
/// body); any other method gets 405, on any path.
pub fn router(sources: Arc<Sources>) -> Router {
    Router::new()
        .route("/metrics", get(|State(s): State<Arc<Sources>>| async move { typed(metrics::CONTENT_TYPE, s.metrics.render()) }))
        // Open, like /metrics: they say nothing about tenants. 503 with the reason when not.
        .route("/healthz", get(|State(s): State<Arc<Sources>>| async move { health_answer(s.health.alive()) }))
        .route("/readyz", get(|State(s): State<Arc<Sources>>| async move { health_answer(s.health.ready()) }))
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/status.json", get(|State(s): State<Arc<Sources>>, headers: HeaderMap| behind_token(s, headers, |s| s.status())))
        .route(
            "/status/webhook.json",
            get(|State(s): State<Arc<Sources>>, headers: HeaderMap, RawQuery(query): RawQuery| {
                behind_token(s, headers, move |s| s.recent_deliveries(query.as_deref().unwrap_or_default()))
            }),
        )
        // Open: lets the page ask for the token only when one is needed.
        .route(
            "/status/auth.json",
            get(|State(s): State<Arc<Sources>>| async move {
                typed("application/json", json!({ "token_required": s.admin_token_digest.is_some() }).to_string())
            }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .method_not_allowed_fallback(only_get_and_head)
        .fallback(|method: Method| async move {
            if method == Method::GET || method == Method::HEAD {
                plain(
                    StatusCode::NOT_FOUND,
                    "not found: this listener serves /metrics, /healthz, /readyz, / (the status page) and /status.json\n",
                )
            } else {
                only_get_and_head().await
            }
        })
        .with_state(sources)
}

/// The page: static, its data fetched by its script.
async fn page() -> Response {
    let mut response = typed("text/html; charset=utf-8", PAGE);
    // Inline script and style only; nothing loaded from anywhere else.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    response
}

async fn only_get_and_head() -> Response {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// `answer(sources)` when the request carries the admin token, 401 otherwise. `answer` reads
/// Redis, so it runs on the runtime's blocking threads.
async fn behind_token(sources: Arc<Sources>, headers: HeaderMap, answer: impl FnOnce(&Sources) -> Response + Send + 'static) -> Response {
    let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !sources.authorized(token) {
        let mut response = plain(StatusCode::UNAUTHORIZED, "send `Authorization: Bearer <admin token>` (WSS_ADMIN_TOKEN)\n");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"wss\""));
        return response;
    }
    tokio::task::spawn_blocking(move || answer(&sources)).await.unwrap_or_else(|err| {
        log::error!(target: "wss::status", "answering a status request failed: {err}");
        plain(StatusCode::INTERNAL_SERVER_ERROR, "the status could not be read; see the service's log\n")
    })
}

fn health_answer(state: Result<(), String>) -> Response {
    let mut response = match state {
        Ok(()) => plain(StatusCode::OK, "ok\n"),
        Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 200 with `body` as `content_type`.
fn typed(content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn plain(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = typed("text/plain; charset=utf-8", body);
    *response.status_mut() = status;
    response
}

/// Live data: JSON, never cached.
fn json_no_store(body: Value) -> Response {
    let mut response = typed("application/json", body.to_string());
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Starts the listener on `addr`, on `runtime`: bound now, so that a taken port fails the start.
pub fn serve(addr: SocketAddr, sources: Sources, runtime: &Handle) -> std::io::Result<Listener> {
    let router = router(Arc::new(sources));
    let options =
        Options { max_body: MAX_BODY, max_connections: MAX_CONNECTIONS, header_timeout: Some(HEADER_TIMEOUT), ..Options::default() };
    Listener::bind(addr, options, runtime, move |request: http::Request<Bytes>| {
        // `Router` is ready at once and cheap to clone (an `Arc`).
        let mut router = router.clone();
        async move {
            let request = request.map(Body::from);
            match tower::Service::call(&mut router, request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
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
    fn the_webhook_of_a_query_must_look_like_a_webhook_id() {
        assert_eq!(webhook_id_of("id=wh_abc123"), Some("wh_abc123"));
        assert_eq!(webhook_id_of("x=1&id=wh_abc"), Some("wh_abc"));
        assert_eq!(webhook_id_of("id="), None);
        assert_eq!(webhook_id_of("id=wh_a%2F..%2F"), None);
        assert_eq!(webhook_id_of(""), None);
    }

    #[test]
    fn hosts_never_carry_credentials_or_paths() {
        assert_eq!(url_host("https://user:pw@hooks.example.com:8443/p?token=x"), "hooks.example.com:8443");
        assert_eq!(url_host("http://127.0.0.1:8787/hook"), "127.0.0.1:8787");
        assert_eq!(url_host("not a url"), "");
    }
}
