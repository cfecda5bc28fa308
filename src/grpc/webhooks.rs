//! `wss.v1.WebhookService`: the URLs a tenant's events go to.
//!
//! The server assigns webhook ids (`wh_` + 26 random base32 characters, 130 bits) and, unless the
//! caller brings one, the signing secret. The secret is shown once, in the CreateWebhook (or
//! RotateWebhookSecret) response; every other answer carries `secret: ""`, and no log line ever
//! names it.
//!
//! RotateWebhookSecret replaces the secret and keeps the old one for an overlap (default 24 h, at
//! most 7 days, `0s` for none): meanwhile the signer sends both signatures, the new one first.
//!
//! A URL whose host is a literal private or loopback address is refused here, with a message
//! saying how to allow it; a host *name* is checked again at every connect by the HTTP layer's
//! guarded resolver, since what a name resolves to can change after it was registered.
//!
//! A tenant token manages only its own tenant's webhooks: CreateWebhook for another tenant, and
//! any rpc on another tenant's webhook, is `PERMISSION_DENIED` (a tenant token may leave
//! `tenant_id` empty to mean its own); ListWebhooks shows only its own.
//!
//! GetWebhookStats joins two sources: the counts, last times and last circuit change stored in
//! Redis by every instance's outcome stage (`crate::stats`), and what this instance's pipeline
//! holds for the webhook now — its circuit, attempts in flight, deliveries parked and retries
//! waiting (`crate::pipeline::live`). The answer says which instance that is. It follows
//! GetWebhook's rules: a tenant token reads only its own tenant's webhooks.
//!
//! A client certificate (`client_certificate` + `client_key`, for receivers that require mutual
//! TLS) is checked here — both PEM, the key the leaf's (`crate::http::ClientIdentity`) — and
//! given together or not at all; UpdateWebhook replaces (rotates) or removes both at once. The
//! key is write-only: no answer carries it (`has_client_key` says one is stored), no log line
//! names it, and the store seals it like the secret.
//!
//! SendTestEvent makes one signed attempt now (`crate::pipeline::test_event`), on the blocking
//! pool since it waits for the receiver, and records it in the history and stats; it follows
//! GetWebhook's rules for tenant tokens.
//!
//! `filter` and `transform` are compiled here, before anything is stored, so that an invalid
//! expression is `INVALID_ARGUMENT` naming the field, with the compiler's message, line, column
//! and caret; the routing snapshot compiles the stored text again for the pipeline.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

use super::{
    auth::Principal,
    convert::{
        duration_from_proto, duration_to_proto, etag_from_proto, headers_from_proto, masked, max_chars, optional_id, ordering_from_proto,
        page_size, required_ref, scheme_from_proto, timestamp, update_mask, versioned_webhook_to_proto,
    },
    paging::{fit, PageQuery, MAX_PAGE_BYTES},
    plane::{ControlPlane, TARGET},
};
use crate::{
    clock::wall_ms,
    domain::{
        model::{self, invalid, Secret, SignatureScheme, Webhook},
        DomainError,
    },
    http::TargetPolicy,
    pipeline::{
        backlog::Depth,
        isolation::{Circuit, CircuitState},
        live::LiveStats,
        test_event::{self, TestEvent},
    },
    proto::{self, webhook_service_server::WebhookService},
    signature::{generate_secret, StandardSigner},
    stats::{self, Stored},
};

/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 1024;
/// RotateWebhookSecret's overlap when the request has none.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// Longest overlap a rotation may ask for.
const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest secret a caller may bring, in bytes.
const MIN_SECRET_LEN: usize = 16;
/// Longest secret a caller may bring, in bytes; generous, but it bounds what is stored and hashed.
const MAX_SECRET_LEN: usize = 1024;
const ID_PREFIX: &str = "wh_";
const ID_RANDOM_LEN: usize = 26;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

pub(super) struct WebhookApi {
    plane: Arc<ControlPlane>,
}

impl WebhookApi {
    pub(super) fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }

    fn url_rules(&self) -> UrlRules {
        UrlRules { allow_http: self.plane.allow_http, targets: self.plane.target_policy() }
    }
}

/// Which webhook URLs this instance accepts.
#[derive(Debug, Clone)]
struct UrlRules {
    allow_http: bool,
    /// The addresses deliveries may reach (`WSS_ALLOW_PRIVATE_TARGETS`, `WSS_ALLOWED_TARGET_CIDRS`).
    targets: TargetPolicy,
}

/// A new webhook id: `wh_` + 26 characters of lowercase base32. Each random byte picks one of 32
/// characters by its low five bits, so every character is uniform.
fn new_webhook_id() -> Result<String, getrandom::Error> {
    let mut random = [0u8; ID_RANDOM_LEN];
    getrandom::fill(&mut random)?;
    let mut id = String::with_capacity(ID_PREFIX.len() + ID_RANDOM_LEN);
    id.push_str(ID_PREFIX);
    id.extend(random.iter().map(|b| BASE32[usize::from(b & 31)] as char));
    Ok(id)
}

/// Checks a webhook URL: its form (`model::validate_url`), and — unless the target policy allows
/// it — that its host is not a private address literal in any spelling the C library would
/// dial (`127.0.0.1`, `127.1`, `0x7f.1`, `2130706433`, `[::ffff:127.0.0.1]`) nor a name that
/// always means this machine (`localhost`). Other names are vetted at every connect.
fn check_url(url: &str, rules: UrlRules) -> Result<(), DomainError> {
    model::validate_url(url, rules.allow_http)?;
    let Some(host) = url_host(url) else { return Ok(()) };
    if let Some(ip) = crate::http::literal_ip(&host) {
        if let Some(reason) = rules.targets.refusal(ip) {
            let what = if host.trim_start_matches('[').trim_end_matches(']') == ip.to_string() {
                format!("{ip} is")
            } else {
                format!("{host} is {ip},")
            };
            return Err(invalid(
                "url",
                format!(
                    "{what} {} {reason} address; wss refuses private targets unless WSS_ALLOWED_TARGET_CIDRS lists them or WSS_ALLOW_PRIVATE_TARGETS=true",
                    article(reason)
                ),
            ));
        }
    } else if !rules.targets.allow_private && crate::http::is_local_name(&host) {
        return Err(invalid(
            "url",
            format!("{host} always means this machine; wss refuses loopback targets unless WSS_ALLOW_PRIVATE_TARGETS=true"),
        ));
    }
    Ok(())
}

/// The URL's host as written (`[::1]` keeps its brackets).
fn url_host(url: &str) -> Option<String> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    uri.host().map(str::to_owned)
}

/// "a" or "an" before one of `forbidden_reason`'s words ("an unspecified", "an IPv4-mapped
/// private", "a unique local").
fn article(word: &str) -> &'static str {
    let lower = word.to_ascii_lowercase();
    let vowel = lower.starts_with(['a', 'e', 'i', 'o']) || (lower.starts_with("un") && !lower.starts_with("uni"));
    if vowel {
        "an"
    } else {
        "a"
    }
}

/// A rotation's overlap: absent is [`DEFAULT_OVERLAP`], otherwise 0 to [`MAX_OVERLAP`].
fn overlap_from_proto(value: Option<&prost_types::Duration>) -> Result<Duration, DomainError> {
    let Some(value) = value else { return Ok(DEFAULT_OVERLAP) };
    let overlap = duration_from_proto("overlap", value)?;
    if overlap > MAX_OVERLAP {
        return Err(invalid("overlap", "must be at most 7 days (604800s); 0s switches to the new secret at once"));
    }
    Ok(overlap)
}

/// A secret the caller brought. The messages never include it.
fn check_secret(secret: &str, scheme: SignatureScheme) -> Result<(), DomainError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(invalid(
            "secret",
            format!("is {} bytes long; use at least {MIN_SECRET_LEN}, or leave it empty to have one generated", secret.len()),
        ));
    }
    if secret.len() > MAX_SECRET_LEN {
        return Err(invalid("secret", format!("is {} bytes long; at most {MAX_SECRET_LEN} are allowed", secret.len())));
    }
    if scheme == SignatureScheme::StandardWebhooks {
        StandardSigner::new(secret).map_err(|e| invalid("secret", e.to_string()))?;
    }
    Ok(())
}

/// A client certificate and its key, given together (or neither), checked: both parse and the
/// key is the leaf's. Messages name the field and never quote the key.
fn check_client_identity(certificate: &str, key: &str) -> Result<(), DomainError> {
    match (certificate.trim().is_empty(), key.trim().is_empty()) {
        (true, true) => Ok(()),
        (false, true) => Err(invalid("client_key", "is missing: a client_certificate needs its private key (PEM)")),
        (true, false) => Err(invalid("client_certificate", "is missing: a client_key needs its certificate chain (PEM, leaf first)")),
        (false, false) => crate::http::ClientIdentity::from_pem(certificate, key).map(drop).map_err(|e| invalid(e.field, e.message)),
    }
}

/// GetWebhookStats's window: absent is [`stats::DEFAULT_WINDOW`], otherwise from
/// [`stats::MIN_WINDOW`] to [`stats::MAX_WINDOW`], rounded up to whole minutes.
fn window_from_proto(value: Option<&prost_types::Duration>) -> Result<Duration, DomainError> {
    let Some(value) = value else { return Ok(stats::DEFAULT_WINDOW) };
    let window = duration_from_proto("window", value)?;
    if window < stats::MIN_WINDOW || window > stats::MAX_WINDOW {
        return Err(invalid("window", "must be from 60s to 3600s (counts are kept per minute for an hour); leave it out for 3600s"));
    }
    Ok(Duration::from_secs(stats::window_minutes(window) * 60))
}

fn circuit_state_to_proto(state: CircuitState) -> proto::CircuitState {
    match state {
        CircuitState::Closed => proto::CircuitState::Closed,
        CircuitState::Open => proto::CircuitState::Open,
        CircuitState::HalfOpen => proto::CircuitState::HalfOpen,
    }
}

/// The answer of GetWebhookStats, from the stored stats read at `now_ms` and this instance's
/// live view.
fn stats_to_proto(
    webhook: &Webhook,
    stored: &Stored,
    live: LiveStats,
    backlog: Depth,
    instance: &str,
    window: Duration,
    now_ms: u64,
) -> proto::WebhookStats {
    let counts = stats::summarize(stored, now_ms, window);
    let failure = stored.last_failure.clone().unwrap_or_default();
    let open_until = match live.circuit {
        Circuit::Open { until, .. } => timestamp(wall_ms(until)),
        Circuit::Closed | Circuit::HalfOpen { .. } => None,
    };
    proto::WebhookStats {
        webhook_id: webhook.id.clone(),
        tenant_id: webhook.tenant_id.clone(),
        window: Some(duration_to_proto(window)),
        attempts_succeeded: counts.succeeded,
        attempts_failed: counts.failed,
        success_rate: stats::success_rate(&counts),
        last_success_at: timestamp(stored.last_success_ms),
        last_failure_at: timestamp(failure.at_ms),
        last_failure_status_code: u32::from(failure.status),
        last_failure_error_kind_code: super::convert::error_kind_to_proto(&crate::deadletter::ErrorKind::parse(&failure.kind)).into(),
        last_failure_error_kind: failure.kind,
        last_failure_error: failure.error,
        dead_letters: counts.dead_letters,
        circuit_state: circuit_state_to_proto(live.circuit.state()).into(),
        circuit_open_until: open_until,
        last_circuit_change: stored.last_circuit_change.as_ref().map(|c| proto::CircuitChange {
            state: circuit_state_to_proto(c.state).into(),
            changed_at: timestamp(c.at_ms),
            open_until: timestamp(c.open_until_ms),
            instance: c.instance.clone(),
        }),
        in_flight: u32::try_from(live.in_flight).unwrap_or(u32::MAX),
        queued: live.parked + backlog.deliveries,
        parked: live.parked,
        retries_waiting: backlog.deliveries,
        instance: instance.to_owned(),
        backlog_depth: backlog.deliveries,
        rate_limited: stored.rate_limited,
        backlog_oldest_age: backlog.oldest_since_ms.map(|since| duration_to_proto(Duration::from_millis(now_ms.saturating_sub(since)))),
    }
}

/// Checks a create request and builds the webhook; the secret is generated when not given.
/// The webhook a create request asks for, made at `now` (ms).
fn webhook_from_create(req: proto::CreateWebhookRequest, id: String, rules: UrlRules, now: u64) -> Result<Webhook, DomainError> {
    model::validate_id("tenant_id", &req.tenant_id)?;
    check_url(&req.url, rules)?;
    model::validate_event_types(&req.event_types)?;
    let filter = model::normalize_expression(req.filter);
    model::compile_filter(&filter)?;
    let transform = model::normalize_expression(req.transform);
    model::compile_transform(&transform)?;
    optional_id("retry_policy_id", &req.retry_policy_id)?;
    let headers = headers_from_proto(req.headers);
    model::validate_headers(&headers)?;
    max_chars("description", &req.description, MAX_DESCRIPTION)?;
    let signature_scheme = scheme_from_proto(req.signature_scheme)?;
    let secret = if req.secret.is_empty() {
        generate_secret()
    } else {
        check_secret(&req.secret, signature_scheme)?;
        req.secret
    };
    check_client_identity(&req.client_certificate, &req.client_key)?;
    let ordering = ordering_from_proto(req.ordering)?;
    model::validate_rate_limit(req.rate_limit_per_second)?;
    let has_client = !req.client_certificate.trim().is_empty();
    Ok(Webhook {
        id,
        tenant_id: req.tenant_id,
        url: req.url,
        event_types: req.event_types,
        filter,
        transform,
        retry_policy_id: req.retry_policy_id,
        headers,
        description: req.description,
        enabled: req.enabled.unwrap_or(true),
        disabled_reason: String::new(),
        signature_scheme,
        secret: Secret::new(secret),
        previous_secret: None,
        previous_secret_until_ms: 0,
        client_certificate: if has_client { req.client_certificate } else { String::new() },
        client_key: has_client.then(|| Secret::new(req.client_key)),
        ordering,
        rate_limit_per_second: req.rate_limit_per_second,
        created_at_ms: now,
        updated_at_ms: now,
    })
}

/// The fields an update sets, already checked.
#[derive(Debug, Clone, Default)]
struct WebhookPatch {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    filter: Option<String>,
    transform: Option<String>,
    retry_policy_id: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    description: Option<String>,
    enabled: Option<bool>,
    /// A new client certificate and key (both empty: remove them).
    client_identity: Option<(String, Secret)>,
    ordering: Option<model::Ordering>,
    rate_limit_per_second: Option<u32>,
    signature_scheme: Option<SignatureScheme>,
}

/// The paths an UpdateWebhookRequest's update_mask may name.
const UPDATE_PATHS: &[&str] = &[
    "url",
    "event_types",
    "filter",
    "transform",
    "retry_policy_id",
    "headers",
    "description",
    "enabled",
    "signature_scheme",
    "client_certificate",
    "client_key",
    "ordering",
    "rate_limit_per_second",
];

/// The request as it applies under its update mask: each field the mask names, set or reset to
/// its default; every other field unset. Without a mask, the request as it is.
fn under_mask(req: proto::UpdateWebhookRequest) -> Result<proto::UpdateWebhookRequest, DomainError> {
    let mask = update_mask(req.update_mask.as_ref(), UPDATE_PATHS)?;
    if mask.is_none() {
        return Ok(req);
    }
    Ok(proto::UpdateWebhookRequest {
        webhook_id: req.webhook_id,
        url: masked(&mask, "url", req.url),
        event_types: masked(&mask, "event_types", req.event_types),
        filter: masked(&mask, "filter", req.filter),
        transform: masked(&mask, "transform", req.transform),
        retry_policy_id: masked(&mask, "retry_policy_id", req.retry_policy_id),
        headers: masked(&mask, "headers", req.headers),
        description: masked(&mask, "description", req.description),
        enabled: masked(&mask, "enabled", req.enabled),
        client_certificate: masked(&mask, "client_certificate", req.client_certificate),
        client_key: masked(&mask, "client_key", req.client_key),
        signature_scheme: masked(&mask, "signature_scheme", req.signature_scheme),
        ordering: masked(&mask, "ordering", req.ordering),
        rate_limit_per_second: masked(&mask, "rate_limit_per_second", req.rate_limit_per_second),
        update_mask: None,
        etag: req.etag,
    })
}

impl WebhookPatch {
    fn from_request(req: proto::UpdateWebhookRequest, rules: UrlRules) -> Result<Self, DomainError> {
        let req = under_mask(req)?;
        let signature_scheme = req.signature_scheme.map(scheme_from_proto).transpose()?;
        if let Some(url) = &req.url {
            check_url(url, rules)?;
        }
        let event_types = req.event_types.map(|e| e.patterns);
        if let Some(patterns) = &event_types {
            model::validate_event_types(patterns)?;
        }
        let filter = req.filter.map(model::normalize_expression);
        if let Some(filter) = &filter {
            model::compile_filter(filter)?;
        }
        let transform = req.transform.map(model::normalize_expression);
        if let Some(transform) = &transform {
            model::compile_transform(transform)?;
        }
        if let Some(id) = &req.retry_policy_id {
            optional_id("retry_policy_id", id)?;
        }
        let headers = req.headers.map(|h| headers_from_proto(h.headers));
        if let Some(headers) = &headers {
            model::validate_headers(headers)?;
        }
        if let Some(description) = &req.description {
            max_chars("description", description, MAX_DESCRIPTION)?;
        }
        let client_identity = match (req.client_certificate, req.client_key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid("client_key", "is missing: set client_certificate and client_key together (both empty to remove them)"))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "client_certificate",
                    "is missing: set client_certificate and client_key together (both empty to remove them)",
                ))
            }
            (Some(certificate), Some(key)) => {
                check_client_identity(&certificate, &key)?;
                Some((certificate, Secret::new(key)))
            }
        };
        let ordering = req.ordering.map(ordering_from_proto).transpose()?;
        if let Some(rate) = req.rate_limit_per_second {
            model::validate_rate_limit(rate)?;
        }
        Ok(Self {
            client_identity,
            ordering,
            rate_limit_per_second: req.rate_limit_per_second,
            signature_scheme,
            url: req.url,
            event_types,
            filter,
            transform,
            retry_policy_id: req.retry_policy_id,
            headers,
            description: req.description,
            enabled: req.enabled,
        })
    }

    /// Fails only when a new signature scheme does not suit the stored secret(s).
    fn apply(&self, webhook: &mut Webhook) -> Result<(), DomainError> {
        if let Some(scheme) = self.signature_scheme {
            let secrets = std::iter::once(&webhook.secret).chain(webhook.previous_secret.as_ref());
            for secret in secrets {
                if scheme == SignatureScheme::StandardWebhooks && StandardSigner::new(secret.expose()).is_err() {
                    return Err(invalid(
                        "signature_scheme",
                        "the webhook's secret is not a Standard Webhooks secret (`whsec_` + base64 of at least 16 bytes); \
                         rotate it to one (RotateWebhookSecret with such a secret and overlap 0s), then change the scheme",
                    ));
                }
            }
            webhook.signature_scheme = scheme;
        }
        if let Some(url) = &self.url {
            webhook.url.clone_from(url);
        }
        if let Some(patterns) = &self.event_types {
            webhook.event_types.clone_from(patterns);
        }
        if let Some(filter) = &self.filter {
            webhook.filter.clone_from(filter);
        }
        if let Some(transform) = &self.transform {
            webhook.transform.clone_from(transform);
        }
        if let Some(id) = &self.retry_policy_id {
            webhook.retry_policy_id.clone_from(id);
        }
        if let Some(headers) = &self.headers {
            webhook.headers.clone_from(headers);
        }
        if let Some(description) = &self.description {
            webhook.description.clone_from(description);
        }
        if let Some((certificate, key)) = &self.client_identity {
            if certificate.trim().is_empty() {
                webhook.client_certificate.clear();
                webhook.client_key = None;
            } else {
                webhook.client_certificate.clone_from(certificate);
                webhook.client_key = Some(key.clone());
            }
        }
        if let Some(ordering) = self.ordering {
            webhook.ordering = ordering;
        }
        if let Some(rate) = self.rate_limit_per_second {
            webhook.rate_limit_per_second = rate;
        }
        if let Some(enabled) = self.enabled {
            webhook.enabled = enabled;
            // An operator's decision either way replaces the service's own: the proto keeps
            // disabled_reason empty when enabled or when disabled by an operator.
            webhook.disabled_reason.clear();
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook(&self, request: Request<proto::CreateWebhookRequest>) -> Result<Response<proto::Webhook>, Status> {
        let id = new_webhook_id().map_err(|e| super::plane::random_unavailable("a webhook id", e))?;
        let principal = Principal::of(&request)?;
        let mut req = request.into_inner();
        if let Principal::Tenant(own) = &principal {
            if req.tenant_id.is_empty() {
                req.tenant_id.clone_from(own);
            }
        }
        principal.scope("tenant_id", &req.tenant_id)?;
        let webhook = webhook_from_create(req, id, self.url_rules(), self.plane.clock.now_ms())?;
        let created = self.plane.write(move |store| store.create_webhook_versioned(webhook)).await?;
        log::info!(target: TARGET, "created webhook {} of tenant {}", created.value.id, created.value.tenant_id);
        let secret = created.value.secret.expose().to_owned();
        let mut out = versioned_webhook_to_proto(created);
        out.secret = secret; // the one answer that shows it
        Ok(Response::new(out))
    }

    async fn get_webhook(&self, request: Request<proto::GetWebhookRequest>) -> Result<Response<proto::Webhook>, Status> {
        let principal = Principal::of(&request)?;
        let id = request.into_inner().webhook_id;
        required_ref("webhook_id", &id)?;
        let webhook = self.plane.read(move |store| store.get_webhook_versioned(&id)).await?;
        principal.require_tenant("webhook", &webhook.value.id, &webhook.value.tenant_id)?;
        Ok(Response::new(versioned_webhook_to_proto(webhook)))
    }

    async fn list_webhooks(&self, request: Request<proto::ListWebhooksRequest>) -> Result<Response<proto::ListWebhooksResponse>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        optional_id("tenant_id", &req.tenant_id)?;
        let tenant_id = principal.scope("tenant_id", &req.tenant_id)?;
        let size = page_size(req.page_size);
        let query = PageQuery::new("ListWebhooks", &[("tenant_id", &tenant_id)]);
        let cursor = query.open(&req.page_token)?;
        let page = self.plane.read(move |store| store.list_webhooks_versioned(&tenant_id, size, &cursor)).await?;
        let (webhooks, next) = fit(page.items, page.next_token, MAX_PAGE_BYTES, versioned_webhook_to_proto, |w| w.value.id.clone())?;
        Ok(Response::new(proto::ListWebhooksResponse { webhooks, next_page_token: query.seal(next) }))
    }

    async fn update_webhook(&self, request: Request<proto::UpdateWebhookRequest>) -> Result<Response<proto::Webhook>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        required_ref("webhook_id", &req.webhook_id)?;
        let id = req.webhook_id.clone();
        let expected = etag_from_proto(&req.etag)?;
        let patch = WebhookPatch::from_request(req, self.url_rules())?;
        let updated = self
            .plane
            .write(move |store| {
                store.update_webhook_versioned(&id, expected, |webhook| {
                    principal.require_tenant("webhook", &webhook.id, &webhook.tenant_id)?;
                    patch.apply(webhook)
                })
            })
            .await?;
        log::info!(target: TARGET, "updated webhook {} of tenant {}", updated.value.id, updated.value.tenant_id);
        Ok(Response::new(versioned_webhook_to_proto(updated)))
    }

    async fn rotate_webhook_secret(&self, request: Request<proto::RotateWebhookSecretRequest>) -> Result<Response<proto::Webhook>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        required_ref("webhook_id", &req.webhook_id)?;
        let overlap = overlap_from_proto(req.overlap.as_ref())?;
        let id = req.webhook_id;
        let supplied = req.secret;
        let clock = self.plane.clock.clone();
        let rotated = self
            .plane
            .write(move |store| {
                store.update_webhook_versioned(&id, None, |webhook| {
                    principal.require_tenant("webhook", &webhook.id, &webhook.tenant_id)?;
                    let secret = if supplied.is_empty() {
                        generate_secret()
                    } else {
                        check_secret(&supplied, webhook.signature_scheme)?;
                        supplied.clone()
                    };
                    webhook.rotate_secret(Secret::new(secret), overlap, clock.now_ms());
                    Ok(())
                })
            })
            .await?;
        log::info!(
            target: TARGET,
            "rotated the secret of webhook {} of tenant {} (the old one signs too for {})",
            rotated.value.id,
            rotated.value.tenant_id,
            humantime::format_duration(overlap)
        );
        let secret = rotated.value.secret.expose().to_owned();
        let mut out = versioned_webhook_to_proto(rotated);
        out.secret = secret; // the one answer that shows it
        Ok(Response::new(out))
    }

    async fn get_webhook_stats(&self, request: Request<proto::GetWebhookStatsRequest>) -> Result<Response<proto::WebhookStats>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        required_ref("webhook_id", &req.webhook_id)?;
        let window = window_from_proto(req.window.as_ref())?;
        let id = req.webhook_id;
        let clock = self.plane.clock.clone();
        let (webhook, stored, backlog, now) = self
            .plane
            .read(move |store| {
                let webhook = store.get_webhook(&id)?;
                principal.require_tenant("webhook", &webhook.id, &webhook.tenant_id)?;
                let now = clock.now_ms();
                let stored = store.webhook_stats(&id, now)?;
                let backlog = store.backlog_depth(&id)?;
                Ok((webhook, stored, backlog, now))
            })
            .await?;
        let live = self.plane.live.of(&webhook.id);
        Ok(Response::new(stats_to_proto(&webhook, &stored, live, backlog, self.plane.live.instance(), window, now)))
    }

    async fn delete_webhook(
        &self,
        request: Request<proto::DeleteWebhookRequest>,
    ) -> Result<Response<proto::DeleteWebhookResponse>, Status> {
        let principal = Principal::of(&request)?;
        let id = request.into_inner().webhook_id;
        required_ref("webhook_id", &id)?;
        let log_id = id.clone();
        // A webhook's tenant never changes and ids are never reused, so checking it before the
        // delete is as good as checking it inside.
        self.plane
            .write(move |store| {
                let webhook = store.get_webhook(&id)?;
                principal.require_tenant("webhook", &webhook.id, &webhook.tenant_id)?;
                store.delete_webhook(&id)
            })
            .await?;
        log::info!(target: TARGET, "deleted webhook {log_id}");
        Ok(Response::new(proto::DeleteWebhookResponse {}))
    }

    async fn send_test_event(
        &self,
        request: Request<proto::SendTestEventRequest>,
    ) -> Result<Response<proto::SendTestEventResponse>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        required_ref("webhook_id", &req.webhook_id)?;
        let plane = self.plane.clone();
        // On the blocking pool, the attempt included: it waits for the receiver (at most the
        // webhook's attempt timeout).
        let (event, outcome) = self
            .plane
            .read(move |store| {
                let webhook = store.get_webhook(&req.webhook_id)?;
                principal.require_tenant("webhook", &webhook.id, &webhook.tenant_id)?;
                if store.config_version()? != plane.routing.current().version {
                    plane.routing.reload(store)?;
                }
                let routing = plane.routing.current();
                let target = crate::deadletter::DeadLetter {
                    tenant_id: webhook.tenant_id.clone(),
                    webhook_id: webhook.id.clone(),
                    ..Default::default()
                };
                if let Some((reason, why)) = crate::domain::redelivery::hindrance(&routing, &target) {
                    return Err(DomainError::Precondition { reason, message: format!("cannot send a test event: {why}") });
                }
                let route = routing.webhooks.get(webhook.id.as_str()).cloned().ok_or_else(|| DomainError::NotFound { kind: "webhook", id: webhook.id.clone() })?;
                let event = TestEvent::new(&plane.clock, &webhook.tenant_id, &webhook.id, &req.event_type, &req.data, plane.max_event_bytes).map_err(|rejection| {
                    let field = if rejection.detail.starts_with("type") { "event_type" } else { "data" };
                    invalid(field, rejection.detail)
                })?;
                let outcome = test_event::send(&plane.clock, &plane.agents, &route, &event);
                if let Err(err) = store.record_attempt(&outcome.record, plane.history_retention, outcome.succeeded) {
                    log::warn!(target: TARGET, "test event {} to webhook {} was sent, but recording it failed: {err}", event.id, webhook.id);
                }
                log::info!(target: TARGET, tenant = webhook.tenant_id.as_str(), webhook = webhook.id.as_str(), event_id = event.id.as_str(), outcome = if outcome.succeeded { "delivered" } else { "failed" };
                    "test event {} to webhook {}: status {} in {} ms", event.id, webhook.id, outcome.attempt.status, outcome.attempt.duration_ms);
                Ok((event, outcome))
            })
            .await?;
        let attempt = outcome.attempt;
        Ok(Response::new(proto::SendTestEventResponse {
            delivery_id: outcome.record.id,
            event_id: event.id,
            succeeded: outcome.succeeded,
            status_code: attempt.status.into(),
            latency: Some(duration_to_proto(Duration::from_millis(attempt.duration_ms))),
            error_kind: attempt.error_kind.to_string(),
            error: attempt.error,
            response_body: attempt.response_excerpt,
            sent_at: timestamp(attempt.started_at_ms),
            request_body: String::from_utf8_lossy(&event.body).into_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600_000;
    const STRICT: UrlRules = UrlRules { allow_http: false, targets: TargetPolicy { allow_private: false, allowed: Vec::new() } };
    const LAX: UrlRules = UrlRules { allow_http: true, targets: TargetPolicy { allow_private: true, allowed: Vec::new() } };

    fn invalid_of(err: DomainError) -> (&'static str, String) {
        match err {
            DomainError::Invalid { field, message } => (field, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn create(secret: &str, scheme: proto::SignatureScheme) -> proto::CreateWebhookRequest {
        proto::CreateWebhookRequest {
            tenant_id: "acme".into(),
            url: "https://hooks.example.com/in".into(),
            signature_scheme: scheme as i32,
            secret: secret.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ordering_and_rate_limit_are_checked_and_kept() {
        let mut req = create("", proto::SignatureScheme::Wss);
        req.ordering = proto::Ordering::Fifo as i32;
        req.rate_limit_per_second = 50;
        let webhook = webhook_from_create(req.clone(), "wh_1".into(), STRICT, NOW).unwrap();
        assert_eq!((webhook.ordering, webhook.rate_limit_per_second), (model::Ordering::Fifo, 50));
        let (field, _) = invalid_of(
            webhook_from_create(proto::CreateWebhookRequest { ordering: 9, ..req.clone() }, "wh_1".into(), STRICT, NOW).unwrap_err(),
        );
        assert_eq!(field, "ordering");
        let too_many = proto::CreateWebhookRequest { rate_limit_per_second: model::MAX_RATE_LIMIT_PER_SECOND + 1, ..req };
        let (field, message) = invalid_of(webhook_from_create(too_many, "wh_1".into(), STRICT, NOW).unwrap_err());
        assert_eq!(field, "rate_limit_per_second");
        assert!(message.contains("use 0 for no limit"), "{message}");

        // An update changes only what it sets.
        let mut stored = webhook_from_create(create("", proto::SignatureScheme::Wss), "wh_1".into(), STRICT, NOW).unwrap();
        let update = |ordering, rate| proto::UpdateWebhookRequest {
            webhook_id: "wh_1".into(),
            ordering,
            rate_limit_per_second: rate,
            ..Default::default()
        };
        WebhookPatch::from_request(update(Some(proto::Ordering::Fifo as i32), None), STRICT).unwrap().apply(&mut stored).unwrap();
        assert_eq!((stored.ordering, stored.rate_limit_per_second), (model::Ordering::Fifo, 0));
        WebhookPatch::from_request(update(None, Some(7)), STRICT).unwrap().apply(&mut stored).unwrap();
        assert_eq!((stored.ordering, stored.rate_limit_per_second), (model::Ordering::Fifo, 7));
        WebhookPatch::from_request(update(Some(proto::Ordering::Unordered as i32), Some(0)), STRICT).unwrap().apply(&mut stored).unwrap();
        assert_eq!((stored.ordering, stored.rate_limit_per_second), (model::Ordering::Unordered, 0));
        assert_eq!(invalid_of(WebhookPatch::from_request(update(Some(5), None), STRICT).unwrap_err()).0, "ordering");
    }

    #[test]
    fn ids_are_prefixed_base32_and_distinct() {
        let a = new_webhook_id().unwrap();
        let b = new_webhook_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 26);
        assert!(a.starts_with("wh_"));
        assert!(a[3..].bytes().all(|c| BASE32.contains(&c)), "{a}");
    }

    #[test]
    fn private_ip_literals_are_refused_unless_allowed() {
        for url in ["https://127.0.0.1/x", "https://10.1.2.3:8443/", "https://[::1]/x", "https://169.254.169.254/latest"] {
            let (field, message) = invalid_of(check_url(url, STRICT).unwrap_err());
            assert_eq!(field, "url");
            assert!(message.contains("WSS_ALLOW_PRIVATE_TARGETS=true"), "{message}");
            assert!(check_url(url, LAX).is_ok(), "{url}");
        }
        let (_, message) = invalid_of(check_url("https://127.0.0.1/", STRICT).unwrap_err());
        assert!(message.starts_with("127.0.0.1 is a loopback address;"), "{message}");
        let (_, message) = invalid_of(check_url("https://[::1]/", STRICT).unwrap_err());
        assert!(message.starts_with("::1 is a loopback address;"), "{message}");
        assert!(check_url("https://93.184.215.14/", STRICT).is_ok());
        assert!(check_url("https://localhost.example.com/", STRICT).is_ok()); // names: checked at connect
        for odd in ["https://2130706433/", "https://0x7f.1/", "https://127.1/", "https://017700000001/", "https://[::ffff:7f00:1]/"] {
            let (field, message) = invalid_of(check_url(odd, STRICT).unwrap_err());
            assert_eq!(field, "url");
            assert!(message.contains("127.0.0.1, a loopback address") || message.contains("IPv4-mapped"), "{odd}: {message}");
        }
        let (_, message) = invalid_of(check_url("https://localhost:8443/", STRICT).unwrap_err());
        assert!(message.starts_with("localhost always means this machine"), "{message}");
        assert!(check_url("https://localhost:8443/", LAX).is_ok());
        let holed =
            UrlRules { allow_http: false, targets: TargetPolicy { allow_private: false, allowed: vec!["10.20.0.0/16".parse().unwrap()] } };
        assert!(check_url("https://10.20.1.1/", holed.clone()).is_ok());
        assert!(check_url("https://10.21.1.1/", holed).is_err());
        assert_eq!(invalid_of(check_url("http://example.com/", STRICT).unwrap_err()).0, "url");
    }

    #[test]
    fn overlaps_default_to_a_day_and_stay_within_a_week() {
        let d = |seconds| prost_types::Duration { seconds, nanos: 0 };
        assert_eq!(overlap_from_proto(None).unwrap(), DEFAULT_OVERLAP);
        assert_eq!(overlap_from_proto(Some(&d(0))).unwrap(), Duration::ZERO);
        assert_eq!(overlap_from_proto(Some(&d(604_800))).unwrap(), MAX_OVERLAP);
        assert_eq!(invalid_of(overlap_from_proto(Some(&d(604_801))).unwrap_err()).0, "overlap");
        assert_eq!(invalid_of(overlap_from_proto(Some(&d(-1))).unwrap_err()).0, "overlap");
    }

    #[test]
    fn stats_windows_default_to_an_hour_and_round_up_to_minutes() {
        let d = |seconds| prost_types::Duration { seconds, nanos: 0 };
        assert_eq!(window_from_proto(None).unwrap(), Duration::from_secs(3600));
        assert_eq!(window_from_proto(Some(&d(60))).unwrap(), Duration::from_secs(60));
        assert_eq!(window_from_proto(Some(&d(90))).unwrap(), Duration::from_secs(120));
        assert_eq!(window_from_proto(Some(&d(3600))).unwrap(), Duration::from_secs(3600));
        for bad in [d(0), d(59), d(3601), d(-60)] {
            assert_eq!(invalid_of(window_from_proto(Some(&bad)).unwrap_err()).0, "window", "{bad:?}");
        }
    }

    #[test]
    fn stats_join_the_stored_counts_and_this_instance_s_live_view() {
        use crate::stats::{CircuitRecord, Counts, Failure};
        let webhook = webhook_from_create(create("", proto::SignatureScheme::Wss), "wh_x".into(), STRICT, NOW).unwrap();
        let now = 1_767_225_630_000;
        let minute = now / 60_000;
        let mut stored = Stored { last_success_ms: now - 5000, ..Default::default() };
        stored.buckets.insert(minute, Counts { succeeded: 3, failed: 1, dead_letters: 1 });
        stored.buckets.insert(minute - 30, Counts { succeeded: 4, failed: 0, dead_letters: 0 });
        stored.last_failure =
            Some(Failure { at_ms: now - 1000, status: 503, kind: "http_status".into(), error: "HTTP 503 Service Unavailable".into() });
        stored.last_circuit_change =
            Some(CircuitRecord { state: CircuitState::Open, at_ms: now - 900, open_until_ms: now + 29_100, instance: "b-1".into() });
        let until = std::time::Instant::now() + Duration::from_secs(30);
        let live = LiveStats { in_flight: 2, parked: 3, circuit: Circuit::Open { until, cooldown: Duration::from_secs(30) } };
        let backlog = Depth { deliveries: 4, oldest_since_ms: Some(now - 90_000) };

        let out = stats_to_proto(&webhook, &stored, live, backlog, "a-1", Duration::from_secs(3600), now);
        assert_eq!((out.webhook_id.as_str(), out.tenant_id.as_str()), ("wh_x", "acme"));
        assert_eq!((out.attempts_succeeded, out.attempts_failed, out.dead_letters), (7, 1, 1));
        assert_eq!(out.success_rate, Some(0.875));
        assert_eq!(out.window, Some(prost_types::Duration { seconds: 3600, nanos: 0 }));
        assert_eq!(out.last_success_at, timestamp(now - 5000));
        assert_eq!(out.last_failure_at, timestamp(now - 1000));
        assert_eq!((out.last_failure_status_code, out.last_failure_error.as_str()), (503, "HTTP 503 Service Unavailable"));
        assert_eq!(out.circuit_state, proto::CircuitState::Open as i32);
        assert!(out.circuit_open_until.is_some());
        let change = out.last_circuit_change.unwrap();
        assert_eq!((change.state, change.instance.as_str()), (proto::CircuitState::Open as i32, "b-1"));
        assert_eq!((out.in_flight, out.parked, out.retries_waiting, out.queued), (2, 3, 4, 7));
        assert_eq!((out.backlog_depth, out.backlog_oldest_age), (4, Some(prost_types::Duration { seconds: 90, nanos: 0 })));
        assert_eq!(out.instance, "a-1");

        let short = stats_to_proto(&webhook, &stored, live, backlog, "a-1", Duration::from_secs(60), now);
        assert_eq!((short.attempts_succeeded, short.attempts_failed), (3, 1), "the old bucket is outside a minute's window");

        let idle = LiveStats { in_flight: 0, parked: 0, circuit: Circuit::Closed };
        let none = stats_to_proto(&webhook, &Stored::default(), idle, Depth::default(), "a-1", Duration::from_secs(3600), now);
        assert_eq!((none.backlog_depth, none.backlog_oldest_age), (0, None));
        assert_eq!(none.success_rate, None, "no attempts: no rate");
        assert_eq!((none.last_success_at, none.last_failure_at, none.last_circuit_change), (None, None, None));
        assert_eq!((none.circuit_state, none.circuit_open_until), (proto::CircuitState::Closed as i32, None));
    }

    #[test]
    fn articles_fit_the_reasons() {
        assert_eq!(article("loopback"), "a");
        assert_eq!(article("unspecified"), "an");
        assert_eq!(article("unique local"), "a");
        assert_eq!(article("IPv4-mapped private"), "an");
        assert_eq!(article("IETF protocol assignment"), "an");
    }

    #[test]
    fn secrets_are_generated_or_checked_and_never_echoed() {
        let generated = webhook_from_create(create("", proto::SignatureScheme::Unspecified), "wh_x".into(), STRICT, NOW).unwrap();
        assert!(generated.secret.expose().starts_with("whsec_"));
        assert_eq!(generated.signature_scheme, SignatureScheme::Wss);
        assert!(generated.enabled);

        let short = "tooshort";
        let (field, message) =
            invalid_of(webhook_from_create(create(short, proto::SignatureScheme::Wss), "wh_x".into(), STRICT, NOW).unwrap_err());
        assert_eq!(field, "secret");
        assert!(!message.contains(short));

        let not_whsec = "a-long-enough-plain-secret";
        assert!(webhook_from_create(create(not_whsec, proto::SignatureScheme::Wss), "wh_x".into(), STRICT, NOW).is_ok());
        let (field, message) = invalid_of(
            webhook_from_create(create(not_whsec, proto::SignatureScheme::StandardWebhooks), "wh_x".into(), STRICT, NOW).unwrap_err(),
        );
        assert_eq!(field, "secret");
        assert!(!message.contains(not_whsec), "{message}");

        let standard = generate_secret();
        let ok = webhook_from_create(create(&standard, proto::SignatureScheme::StandardWebhooks), "wh_x".into(), STRICT, NOW).unwrap();
        assert_eq!(ok.secret.expose(), standard);
    }

    #[test]
    fn create_checks_scheme_and_other_fields() {
        let mut req = create("", proto::SignatureScheme::Wss);
        req.signature_scheme = 42;
        assert_eq!(invalid_of(webhook_from_create(req, "wh_x".into(), STRICT, NOW).unwrap_err()).0, "signature_scheme");
        let mut req = create("", proto::SignatureScheme::Wss);
        req.description = "d".repeat(1025);
        assert_eq!(invalid_of(webhook_from_create(req, "wh_x".into(), STRICT, NOW).unwrap_err()).0, "description");
        let mut req = create("", proto::SignatureScheme::Wss);
        req.headers.insert("X-WSS-Signature".into(), "forged".into());
        assert_eq!(invalid_of(webhook_from_create(req, "wh_x".into(), STRICT, NOW).unwrap_err()).0, "headers");
        let mut req = create("", proto::SignatureScheme::Wss);
        req.enabled = Some(false);
        assert!(!webhook_from_create(req, "wh_x".into(), STRICT, NOW).unwrap().enabled);
    }

    #[test]
    fn updates_apply_present_fields_and_enabling_clears_the_reason() {
        let mut webhook = webhook_from_create(create("", proto::SignatureScheme::Wss), "wh_x".into(), STRICT, NOW).unwrap();
        webhook.enabled = false;
        webhook.disabled_reason = "gone".into();
        webhook.event_types = vec!["order.*".into()];
        webhook.headers.insert("X-Keep".into(), "1".into());
        let req = proto::UpdateWebhookRequest {
            webhook_id: "wh_x".into(),
            enabled: Some(true),
            event_types: Some(proto::EventTypes { patterns: vec![] }),
            description: Some("new".into()),
            ..Default::default()
        };
        WebhookPatch::from_request(req, STRICT).unwrap().apply(&mut webhook).unwrap();
        assert!(webhook.enabled);
        assert_eq!(webhook.disabled_reason, "");
        assert!(webhook.event_types.is_empty());
        assert_eq!(webhook.description, "new");
        assert_eq!(webhook.headers.get("X-Keep").map(String::as_str), Some("1"));
        assert_eq!(webhook.url, "https://hooks.example.com/in");

        let req = proto::UpdateWebhookRequest { url: Some("https://192.168.0.1/".into()), ..Default::default() };
        assert_eq!(invalid_of(WebhookPatch::from_request(req, STRICT).unwrap_err()).0, "url");
        let req = proto::UpdateWebhookRequest { retry_policy_id: Some("Bad Id".into()), ..Default::default() };
        assert_eq!(invalid_of(WebhookPatch::from_request(req, STRICT).unwrap_err()).0, "retry_policy_id");
    }

    #[test]
    fn expressions_are_compiled_at_create_and_update() {
        let mut req = create("", proto::SignatureScheme::Wss);
        req.filter = "event.data.status == 'shipped'".into();
        req.transform = "{'status': event.data.status}".into();
        let webhook = webhook_from_create(req, "wh_x".into(), STRICT, NOW).unwrap();
        assert_eq!(webhook.filter, "event.data.status == 'shipped'");
        assert_eq!(webhook.transform, "{'status': event.data.status}");

        let mut req = create("", proto::SignatureScheme::Wss);
        req.filter = "event.data.status ==".into();
        let (field, message) = invalid_of(webhook_from_create(req, "wh_x".into(), STRICT, NOW).unwrap_err());
        assert_eq!(field, "filter");
        assert!(message.starts_with("syntax error at line 1, column 21: "), "{message}");
        assert!(message.contains("\n| event.data.status ==\n| ....................^"), "{message}");

        let mut req = create("", proto::SignatureScheme::Wss);
        req.transform = "{'a': evnt.id}".into();
        let (field, message) = invalid_of(webhook_from_create(req, "wh_x".into(), STRICT, NOW).unwrap_err());
        assert_eq!(field, "transform");
        assert!(message.starts_with("unknown variable \"evnt\" at line 1, column 7"), "{message}");

        let mut req = create("", proto::SignatureScheme::Wss);
        req.filter = " \n ".into();
        assert_eq!(webhook_from_create(req, "wh_x".into(), STRICT, NOW).unwrap().filter, "", "blank means none");

        // Update: absent leaves alone, "" clears, anything else is compiled first.
        let mut webhook = webhook;
        let req = proto::UpdateWebhookRequest { description: Some("d".into()), ..Default::default() };
        WebhookPatch::from_request(req, STRICT).unwrap().apply(&mut webhook).unwrap();
        assert_eq!(webhook.filter, "event.data.status == 'shipped'");
        let req = proto::UpdateWebhookRequest { filter: Some(String::new()), transform: Some("event.data".into()), ..Default::default() };
        WebhookPatch::from_request(req, STRICT).unwrap().apply(&mut webhook).unwrap();
        assert_eq!((webhook.filter.as_str(), webhook.transform.as_str()), ("", "event.data"));
        let req = proto::UpdateWebhookRequest { filter: Some("1 + 1".into()), ..Default::default() };
        assert_eq!(invalid_of(WebhookPatch::from_request(req, STRICT).unwrap_err()).0, "filter");
        let req = proto::UpdateWebhookRequest { transform: Some("x".repeat(5000)), ..Default::default() };
        assert_eq!(invalid_of(WebhookPatch::from_request(req, STRICT).unwrap_err()).0, "transform");
    }

    #[test]
    fn masked_updates_touch_only_the_named_fields() {
        let mut webhook = webhook_from_create(create("", proto::SignatureScheme::Wss), "wh_x".into(), STRICT, NOW).unwrap();
        webhook.description = "keep me".into();
        webhook.event_types = vec!["order.*".into()];
        let mask = |paths: &[&str]| Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() });
        let req = proto::UpdateWebhookRequest {
            webhook_id: "wh_x".into(),
            description: Some("not named".into()),
            enabled: Some(true),
            update_mask: mask(&["event_types", "enabled"]),
            ..Default::default()
        };
        WebhookPatch::from_request(req, STRICT).unwrap().apply(&mut webhook).unwrap();
        assert_eq!(webhook.description, "keep me", "set but not named: untouched");
        assert!(webhook.event_types.is_empty(), "named and unset: cleared");
        assert!(webhook.enabled);
        let req = proto::UpdateWebhookRequest { update_mask: mask(&["secret"]), ..Default::default() };
        assert_eq!(invalid_of(WebhookPatch::from_request(req, STRICT).unwrap_err()).0, "update_mask");
        // One of the client identity's two fields alone is refused, as without a mask.
        let req = proto::UpdateWebhookRequest { update_mask: mask(&["client_key"]), ..Default::default() };
        assert_eq!(invalid_of(WebhookPatch::from_request(req, STRICT).unwrap_err()).0, "client_certificate");
    }

    #[test]
    fn the_signature_scheme_changes_only_to_one_the_secret_suits() {
        let mut webhook = webhook_from_create(create("", proto::SignatureScheme::Wss), "wh_x".into(), STRICT, NOW).unwrap();
        let to_standard =
            proto::UpdateWebhookRequest { signature_scheme: Some(proto::SignatureScheme::StandardWebhooks.into()), ..Default::default() };
        // A generated secret is `whsec_` + base64: it suits Standard Webhooks.
        WebhookPatch::from_request(to_standard.clone(), STRICT).unwrap().apply(&mut webhook).unwrap();
        assert_eq!(webhook.signature_scheme, SignatureScheme::StandardWebhooks);
        webhook.secret = Secret::new("a-plain-secret-of-enough-bytes".into());
        let err = WebhookPatch::from_request(to_standard, STRICT).unwrap().apply(&mut webhook).unwrap_err();
        assert_eq!(invalid_of(err).0, "signature_scheme");
        let back = proto::UpdateWebhookRequest { signature_scheme: Some(proto::SignatureScheme::Wss.into()), ..Default::default() };
        WebhookPatch::from_request(back, STRICT).unwrap().apply(&mut webhook).unwrap();
        assert_eq!(webhook.signature_scheme, SignatureScheme::Wss);
    }
}
