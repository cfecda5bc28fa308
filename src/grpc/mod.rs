//! The control plane: the six `wss.v1` gRPC services (docs/contract.md §5, plus `TokenService`), plus
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha) so that `grpcurl` works without
//! proto files.
//!
//! Each service is thin: it validates the request, converts it into a domain type
//! ([`convert`] and the `validate_*` functions of [`crate::domain::model`]), calls the
//! [`Store`] on the blocking pool (the store speaks synchronous Redis), and converts the answer
//! back. Every domain error becomes a status in one place, [`status_of`]. After each successful
//! write the same blocking task reloads the routing snapshot, so the next event this instance
//! routes already sees the change; when that reload fails the refresher catches up within a
//! second, so it is only logged.
//!
//! **Authentication and authorization** happen in two steps.
//!
//! 1. [`AuthLayer`], a tower layer in front of every service, decides *who* calls: it reads
//!    `authorization: Bearer <token>` and finds the admin token (its SHA-256 digest compared in
//!    constant time) or a tenant token (`tok_<id>.<secret>`: its record is read from Redis on
//!    every call, so a revocation holds at once on every instance, and its digest compared in
//!    constant time). It then checks the rpc against [`access_of`], a table of which rpcs a
//!    tenant token may use at all; every other rpc — including any added later and not listed —
//!    needs the admin token. Missing or unknown tokens are `UNAUTHENTICATED`, a tenant token on an
//!    admin rpc `PERMISSION_DENIED`. The [`Principal`] goes to the handler in the request's
//!    extensions. Health and reflection stay open, so probes and `grpcurl list` need no secret.
//! 2. The handlers of the rpcs a tenant may use restrict it to its own tenant's resources
//!    ([`Principal::scope`], [`Principal::require_tenant`]): another tenant's resource is
//!    `PERMISSION_DENIED`.
//!
//! Without an admin token configured, a call without a token is an admin call — the caller only
//! allows that on a loopback listener — but a tenant token is still checked and scopes the call,
//! so that tenant tokens can be tried locally.
//!
//! **Limits**: requests larger than [`MAX_MESSAGE_BYTES`] are refused before they are decoded, and
//! so are header blocks larger than [`MAX_HEADER_LIST_BYTES`]. **TLS** (optional): a certificate
//! and key, and a client CA for mutual TLS ([`ServeOptions::tls`]).
//!
//! Logs go to target `wss::grpc`: each mutation at INFO with resource ids only, and each refused
//! call at INFO with the rpc and the reason — never a secret, a token or the authorization header.

pub mod convert;
mod deliveries;
pub mod errors;
mod events;
pub mod paging;
mod policies;
mod tenants;
mod tokens;
mod webhooks;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{
    body::Body,
    transport::{server::TcpIncoming, Certificate, Identity, ServerTlsConfig},
    Code, Request, Status,
};

use crate::{
    config::TlsSettings,
    crypto,
    domain::{routing::RoutingHandle, store::Store, DomainError},
    pipeline::live::LiveView,
    proto::{
        delivery_service_server::DeliveryServiceServer, event_service_server::EventServiceServer,
        retry_policy_service_server::RetryPolicyServiceServer, tenant_service_server::TenantServiceServer,
        token_service_server::TokenServiceServer, webhook_service_server::WebhookServiceServer,
    },
};

const TARGET: &str = "wss::grpc";

/// Largest request message accepted (tonic's default, made explicit): a PublishEvent carries at
/// most one event, and every other request is small. Larger ones are refused before decoding.
/// Also the largest response sent (what a gRPC client accepts by default): List pages stop
/// short of it ([`paging::fit`]).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Largest HTTP/2 header block (metadata) accepted.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
/// Concurrent calls on one connection, at most.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// A TLS handshake that takes longer is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the control plane serves from.
pub struct ControlPlane {
    pub store: Arc<Store>,
    /// Reloaded after every successful write.
    pub routing: Arc<RoutingHandle>,
    /// What this instance's pipeline holds per webhook now (GetWebhookStats).
    pub live: Arc<LiveView>,
    /// Accept `http://` webhook URLs (`WSS_ALLOW_HTTP`).
    pub allow_http: bool,
    /// Accept webhook URLs whose host is a loopback/private IP literal (`WSS_ALLOW_PRIVATE_TARGETS`).
    pub allow_private_targets: bool,
    /// Private ranges accepted all the same (`WSS_ALLOWED_TARGET_CIDRS`).
    pub allowed_target_cidrs: Vec<crate::http::Cidr>,
    /// The delivery agents, built from the same settings as the sender's (address guard, proxy,
    /// trusted roots): SendTestEvent's attempts go through them.
    pub agents: crate::http::Agents,
    /// `WSS_MAX_EVENT_BYTES`: the size rule of test events and replayed entries.
    pub max_event_bytes: usize,
    /// How long and how many deliveries the history keeps (SendTestEvent writes one).
    pub history_retention: crate::history::Retention,
}

impl ControlPlane {
    /// Which addresses this instance lets webhooks reach, as the delivery agent sees it.
    pub fn target_policy(&self) -> crate::http::TargetPolicy {
        crate::http::TargetPolicy { allow_private: self.allow_private_targets, allowed: self.allowed_target_cidrs.clone() }
    }
}

/// How the control plane listens.
#[derive(Default)]
pub struct ServeOptions {
    /// Bearer token for admin calls; `None`: calls without a token are admin calls (loopback only).
    pub admin_token: Option<String>,
    /// Serve gRPC over TLS (and require client certificates when a client CA is given).
    pub tls: Option<TlsSettings>,
    /// What `grpc.health.v1.Health` answers from: `SERVING` only while [`crate::health::Health::ready`]
    /// (Redis reachable, pipeline running), `NOT_SERVING` otherwise. `None`: always `SERVING`.
    pub health: Option<Arc<crate::health::Health>>,
}

/// Serves all wss.v1 services + grpc.health.v1.Health + reflection on `listener` until
/// `shutdown` completes, with `admin_token` and no TLS. See [`serve_with`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    plane: ControlPlane,
    admin_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, plane, ServeOptions { admin_token, tls: None, health: None }, shutdown).await
}

/// The tonic TLS configuration of `tls`. Fails when the certificate or key is not usable; call
/// it before serving to report that at start-up.
pub fn tls_config(tls: &TlsSettings) -> Result<ServerTlsConfig, tonic::transport::Error> {
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)).timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &tls.client_ca_pem {
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    // Building the server checks the identity now rather than at the first connection.
    tonic::transport::Server::builder().tls_config(config.clone())?;
    Ok(config)
}

/// Serves all wss.v1 services + grpc.health.v1.Health + reflection (BOTH v1 and v1alpha:
/// grpcurl 1.8.6 uses v1alpha) on `listener` until `shutdown` completes.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    plane: ControlPlane,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let plane = Arc::new(plane);
    let auth = AuthLayer::new(options.admin_token.as_deref(), plane.store.clone());

    macro_rules! limited {
        ($server:expr) => {
            $server.max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
        };
    }
    let tenants = limited!(TenantServiceServer::new(tenants::TenantApi::new(plane.clone())));
    let webhooks = limited!(WebhookServiceServer::new(webhooks::WebhookApi::new(plane.clone())));
    let policies = limited!(RetryPolicyServiceServer::new(policies::RetryPolicyApi::new(plane.clone())));
    let events = limited!(EventServiceServer::new(events::EventApi::new(plane.clone())));
    let deliveries = limited!(DeliveryServiceServer::new(deliveries::DeliveryApi::new(plane.clone())));
    let tokens = limited!(TokenServiceServer::new(tokens::TokenApi::new(plane)));

    let (health, health_service) = tonic_health::server::health_reporter();
    const SERVICES: [&str; 7] = [
        "",
        crate::proto::tenant_service_server::SERVICE_NAME,
        crate::proto::webhook_service_server::SERVICE_NAME,
        crate::proto::retry_policy_service_server::SERVICE_NAME,
        crate::proto::event_service_server::SERVICE_NAME,
        crate::proto::delivery_service_server::SERVICE_NAME,
        crate::proto::token_service_server::SERVICE_NAME,
    ];
    let status_of = |ready: bool| if ready { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
    let ready_now = options.health.as_ref().is_none_or(|h| h.ready().is_ok());
    for name in SERVICES {
        health.set_service_status(name, status_of(ready_now)).await;
    }
    // Follows the process's health (Redis, pipeline) for as long as the runtime runs.
    if let Some(state) = options.health.clone() {
        let reporter = health.clone();
        state.attach_reporter();
        tokio::spawn(async move {
            let mut last = ready_now;
            loop {
                let generation = state.generation();
                let ready = state.ready().is_ok();
                if ready != last {
                    for name in SERVICES {
                        reporter.set_service_status(name, status_of(ready)).await;
                    }
                    last = ready;
                }
                state.reported(generation);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
    }

    // The descriptor sets are compiled in, so a failure here is a build defect; serving the
    // control plane without reflection is still better than not serving it.
    let reflection_v1 = reflection().build_v1().inspect_err(|e| log::error!(target: TARGET, "gRPC reflection v1 is unavailable: {e}")).ok();
    let reflection_v1alpha =
        reflection().build_v1alpha().inspect_err(|e| log::error!(target: TARGET, "gRPC reflection v1alpha is unavailable: {e}")).ok();

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls_config(tls)?)?;
    }
    builder
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .layer(auth)
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(tenants)
        .add_service(webhooks)
        .add_service(policies)
        .add_service(events)
        .add_service(deliveries)
        .add_service(tokens)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.ErrorInfo, BadRequest, ...: so that grpcurl shows errors' details decoded.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

// ---- errors ----

/// The one mapping from domain errors to gRPC statuses, with their `google.rpc` details
/// ([`errors`]).
pub fn status_of(err: DomainError) -> Status {
    let status = errors::rich(&err);
    if status.code() == Code::Internal {
        log::error!(target: TARGET, "{err}");
    }
    status
}

impl From<DomainError> for Status {
    fn from(err: DomainError) -> Self {
        status_of(err)
    }
}

// ---- running store calls ----

impl ControlPlane {
    /// Runs a read on the blocking pool.
    async fn read<T, F>(&self, op: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, DomainError> + Send + 'static,
    {
        let store = self.store.clone();
        run_blocking(move || op(&store)).await
    }

    /// Runs a write on the blocking pool, then reloads the routing snapshot in the same task.
    async fn write<T, F>(&self, op: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, DomainError> + Send + 'static,
    {
        let store = self.store.clone();
        let routing = self.routing.clone();
        run_blocking(move || {
            let value = op(&store)?;
            if let Err(err) = routing.reload(&store) {
                log::warn!(target: TARGET, "the write succeeded, but reloading the routing snapshot failed ({err}); the refresher will pick it up");
            }
            Ok(value)
        })
        .await
    }
}

/// Runs `op` on a thread of its own with the stack expression evaluation needs
/// ([`crate::expr::EVAL_STACK_BYTES`]; the blocking pool's threads have 2 MiB), handing it an
/// evaluator (ReplayEvents runs webhooks' filters).
async fn run_evaluating<T, F>(op: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(&crate::expr::Evaluator) -> Result<T, DomainError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("wss-grpc-eval".into()).stack_size(crate::expr::EVAL_STACK_BYTES).spawn(move || {
        let evaluator = crate::expr::Evaluator::new();
        let _ = tx.send(op(&evaluator));
    });
    if let Err(err) = spawned {
        log::error!(target: TARGET, "cannot start a thread to evaluate expressions: {err}");
        return Err(Status::unavailable("cannot start a worker thread now; try again"));
    }
    match rx.await {
        Ok(result) => result.map_err(Status::from),
        Err(_) => {
            log::error!(target: TARGET, "a control-plane evaluation did not complete (its thread panicked)");
            Err(Status::internal("the call did not complete; see the server log"))
        }
    }
}

async fn run_blocking<T, F>(op: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DomainError> + Send + 'static,
{
    match tokio::task::spawn_blocking(op).await {
        Ok(result) => result.map_err(Status::from),
        Err(join) => {
            log::error!(target: TARGET, "a control-plane store call did not complete: {join}");
            Err(errors::status(Code::Internal, "INTERNAL", "the store call did not complete; see the server log"))
        }
    }
}

// ---- authentication ----

const MISSING_AUTH: &str = "missing authorization metadata: send `authorization: Bearer <token>`";
const MALFORMED_AUTH: &str = "malformed authorization metadata: send `authorization: Bearer <token>`";
const UNKNOWN_TOKEN: &str = "unknown token: it was never issued, was revoked, or its tenant was deleted";

/// Who is calling, as the handlers see it (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin token, or any call when no admin token is configured.
    Admin,
    /// A tenant token: only this tenant's webhooks, deliveries and dead letters.
    Tenant(String),
}

impl Principal {
    /// The principal [`AuthLayer`] attached to `request`. Its absence means the service was served
    /// without the layer: refused, never treated as admin.
    pub fn of<T>(request: &Request<T>) -> Result<Principal, Status> {
        request.extensions().get::<Principal>().cloned().ok_or_else(|| {
            log::error!(target: TARGET, "a call reached a handler without passing authentication; refusing it");
            errors::status(Code::Internal, "INTERNAL", "the call was not authenticated; this is a bug in wss, see the server log")
        })
    }

    /// The tenant a List request covers. An admin gets what it asked for (empty: every tenant);
    /// a tenant token its own tenant, whether it named it or left `field` empty.
    pub fn scope(&self, field: &'static str, requested: &str) -> Result<String, DomainError> {
        match self {
            Principal::Admin => Ok(requested.to_owned()),
            Principal::Tenant(own) if requested.is_empty() || requested == own => Ok(own.clone()),
            Principal::Tenant(own) => Err(DomainError::PermissionDenied(format!(
                "{field}: this token belongs to tenant {own:?} and may only use that tenant's resources"
            ))),
        }
    }

    /// Ok when this principal may touch `kind` `id`, which belongs to `tenant_id`. The refusal
    /// does not say whose the resource is.
    pub fn require_tenant(&self, kind: &str, id: &str, tenant_id: &str) -> Result<(), DomainError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant(own) if own == tenant_id => Ok(()),
            Principal::Tenant(own) => Err(DomainError::PermissionDenied(format!(
                "{kind} {id:?} belongs to another tenant; this token may only use tenant {own:?}'s resources"
            ))),
        }
    }
}

/// Who may call an rpc at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health checks and reflection: no token.
    Open,
    /// The admin token, or a tenant token that the handler restricts to its own tenant.
    Tenant,
    /// The admin token only.
    Admin,
}

/// The access rule of an rpc, by its HTTP/2 path (`/wss.v1.WebhookService/GetWebhook`). Anything
/// not listed — every rpc added later included — needs the admin token.
pub fn access_of(path: &str) -> Access {
    if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
        return Access::Open;
    }
    match path {
        "/wss.v1.TenantService/GetTenant"
        | "/wss.v1.RetryPolicyService/GetRetryPolicy"
        | "/wss.v1.RetryPolicyService/ListRetryPolicies"
        | "/wss.v1.DeliveryService/ListDeliveries"
        | "/wss.v1.DeliveryService/GetDelivery"
        | "/wss.v1.DeliveryService/ListDeadLetters"
        | "/wss.v1.DeliveryService/RedeliverDeadLetter"
        | "/wss.v1.DeliveryService/ResendDelivery"
        | "/wss.v1.DeliveryService/ReplayEvents"
        | "/wss.v1.WebhookService/SendTestEvent"
        | "/wss.v1.WebhookService/CreateWebhook"
        | "/wss.v1.WebhookService/GetWebhook"
        | "/wss.v1.WebhookService/ListWebhooks"
        | "/wss.v1.WebhookService/UpdateWebhook"
        | "/wss.v1.WebhookService/DeleteWebhook"
        | "/wss.v1.WebhookService/RotateWebhookSecret"
        | "/wss.v1.WebhookService/GetWebhookStats" => Access::Tenant,
        _ => Access::Admin,
    }
}

/// What the authorization header says, before any lookup.
#[derive(Debug, PartialEq, Eq)]
enum Credential<'a> {
    /// No header.
    None,
    /// The configured admin token.
    Admin,
    /// Shaped like a tenant token; still to be looked up.
    TenantToken { id: &'a str, token: &'a str },
    /// A header that is no token we know (or not a bearer token at all).
    Unknown(&'static str),
}

/// The reason of an authentication refusal's message.
fn unauthenticated(message: &'static str) -> Status {
    let reason = if message == MISSING_AUTH {
        "MISSING_TOKEN"
    } else if message == MALFORMED_AUTH {
        "MALFORMED_TOKEN"
    } else {
        "UNKNOWN_TOKEN"
    };
    errors::status(Code::Unauthenticated, reason, message)
}

/// Reads the authorization value. Pure: the tenant-token lookup comes after.
fn credential<'a>(admin: Option<&[u8; 32]>, header: Option<&'a [u8]>) -> Credential<'a> {
    let Some(raw) = header else { return Credential::None };
    let Ok(value) = std::str::from_utf8(raw) else { return Credential::Unknown(MALFORMED_AUTH) };
    let Some((scheme, token)) = value.trim().split_once(' ') else { return Credential::Unknown(MALFORMED_AUTH) };
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Credential::Unknown(MALFORMED_AUTH);
    }
    if let Some(expected) = admin {
        if bool::from(digest(token).ct_eq(expected)) {
            return Credential::Admin;
        }
    }
    match crypto::token_id_of(token) {
        Some(id) => Credential::TenantToken { id, token },
        None => Credential::Unknown(UNKNOWN_TOKEN),
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Decides who calls (see the module docs). Shared by every connection.
struct Authenticator {
    /// SHA-256 of the admin token; only the digest is kept.
    admin: Option<[u8; 32]>,
    store: Arc<Store>,
}

impl Authenticator {
    /// `Ok(None)`: an open rpc. The error is the status to answer with.
    async fn authenticate(&self, path: &str, header: Option<&[u8]>) -> Result<Option<Principal>, Status> {
        let access = access_of(path);
        if access == Access::Open {
            return Ok(None);
        }
        let principal = match credential(self.admin.as_ref(), header) {
            Credential::Admin => Principal::Admin,
            Credential::None if self.admin.is_none() => Principal::Admin,
            Credential::Unknown(_) if self.admin.is_none() => Principal::Admin,
            Credential::None => return Err(refuse(path, unauthenticated(MISSING_AUTH), "no token")),
            Credential::Unknown(why) => return Err(refuse(path, unauthenticated(why), "not a known token")),
            Credential::TenantToken { id, token } => {
                let store = self.store.clone();
                let lookup_id = id.to_owned();
                let found = run_blocking(move || store.find_token(&lookup_id)).await.map_err(|status| {
                    log::warn!(target: TARGET, "cannot check token {id} for {path}: {}", status.message());
                    errors::status(
                        Code::Unavailable,
                        "TOKEN_CHECK_UNAVAILABLE",
                        format!("cannot check the token right now ({}); try again", status.message()),
                    )
                })?;
                match found {
                    Some(record) if crypto::token_matches(token, &record.digest) => Principal::Tenant(record.tenant_id),
                    Some(_) => return Err(refuse(path, unauthenticated(UNKNOWN_TOKEN), &format!("token {id} with a wrong secret"))),
                    None => return Err(refuse(path, unauthenticated(UNKNOWN_TOKEN), &format!("unknown or revoked token {id}"))),
                }
            }
        };
        if let (Access::Admin, Principal::Tenant(tenant)) = (access, &principal) {
            let status = errors::status(Code::PermissionDenied, "ADMIN_REQUIRED", format!(
                "this rpc needs the admin token; a tenant token (tenant {tenant:?}) may only use its own tenant's webhooks, deliveries and dead letters"
            ));
            return Err(refuse(path, status, &format!("a token of tenant {tenant} on an admin rpc")));
        }
        Ok(Some(principal))
    }
}

/// Logs a refused call (never the credential) and hands back its status.
fn refuse(path: &str, status: Status, why: &str) -> Status {
    log::info!(target: TARGET, "refused {path}: {why} ({:?})", status.code());
    status
}

/// The tower layer that authenticates every call before it reaches a service.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(admin_token: Option<&str>, store: Arc<Store>) -> Self {
        Self { auth: Arc::new(Authenticator { admin: admin_token.map(digest), store }) }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> tower::Service<::http::Request<Body>> for AuthService<S>
where
    S: tower::Service<::http::Request<Body>, Response = ::http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ::http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: ::http::Request<Body>) -> Self::Future {
        // The service that was polled ready is the one to call; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let header = request.headers().get(::http::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
            match auth.authenticate(request.uri().path(), header.as_deref()).await {
                Ok(Some(principal)) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Ok(None) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "s3cret-admin-token";

    fn cred(admin: Option<&str>, header: Option<&str>) -> Credential<'static> {
        let admin = admin.map(digest);
        let header: Option<&'static str> = header.map(|h| &*Box::leak(h.to_owned().into_boxed_str()));
        credential(admin.as_ref(), header.map(str::as_bytes))
    }

    #[test]
    fn the_admin_token_is_recognised_and_others_are_not() {
        let admin = Some(ADMIN);
        assert_eq!(cred(admin, Some("Bearer s3cret-admin-token")), Credential::Admin);
        assert_eq!(cred(admin, Some("bearer  s3cret-admin-token ")), Credential::Admin);
        assert_eq!(cred(admin, None), Credential::None);
        assert_eq!(cred(admin, Some("Bearer s3cret-admin-tokem")), Credential::Unknown(UNKNOWN_TOKEN));
        assert_eq!(cred(admin, Some("Bearer s3cret-admin-token-longer")), Credential::Unknown(UNKNOWN_TOKEN));
        assert_eq!(cred(admin, Some("Basic s3cret-admin-token")), Credential::Unknown(MALFORMED_AUTH));
        assert_eq!(cred(admin, Some("s3cret-admin-token")), Credential::Unknown(MALFORMED_AUTH));
        assert_eq!(cred(admin, Some("Bearer ")), Credential::Unknown(MALFORMED_AUTH));
        assert_eq!(cred(None, Some("Bearer s3cret-admin-token")), Credential::Unknown(UNKNOWN_TOKEN));
    }

    #[test]
    fn tenant_tokens_are_recognised_by_shape() {
        let issued = crypto::issue_token().unwrap();
        let header = format!("Bearer {}", issued.token);
        match cred(Some(ADMIN), Some(&header)) {
            Credential::TenantToken { id, token } => {
                assert_eq!(id, issued.id);
                assert_eq!(token, issued.token);
            }
            other => panic!("expected a tenant token, got {other:?}"),
        }
        assert!(matches!(cred(None, Some(&header)), Credential::TenantToken { .. }));
    }

    #[test]
    fn refusals_never_echo_the_token() {
        for presented in ["Bearer guess-token", "Token s3cret-admin-token", "s3cret-admin-token", "Bearer tok_x.guess"] {
            let message = match cred(Some(ADMIN), Some(presented)) {
                Credential::Unknown(message) => message,
                other => panic!("{presented}: {other:?}"),
            };
            assert!(!message.contains("s3cret") && !message.contains("guess"), "{message}");
        }
    }

    #[test]
    fn only_listed_rpcs_are_open_to_tenant_tokens() {
        assert_eq!(access_of("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(access_of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Access::Open);
        assert_eq!(access_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"), Access::Open);
        assert_eq!(access_of("/wss.v1.DeliveryService/ListDeadLetters"), Access::Tenant);
        assert_eq!(access_of("/wss.v1.DeliveryService/RedeliverDeadLetter"), Access::Tenant);
        assert_eq!(access_of("/wss.v1.TenantService/GetTenant"), Access::Tenant);
        assert_eq!(access_of("/wss.v1.WebhookService/GetWebhookStats"), Access::Tenant);
        assert_eq!(access_of("/wss.v1.DeliveryService/ResendDelivery"), Access::Tenant);
        assert_eq!(access_of("/wss.v1.DeliveryService/ReplayEvents"), Access::Tenant);
        assert_eq!(access_of("/wss.v1.WebhookService/SendTestEvent"), Access::Tenant);
        for admin in [
            "/wss.v1.TenantService/CreateTenant",
            "/wss.v1.TenantService/ListTenants",
            "/wss.v1.RetryPolicyService/CreateRetryPolicy",
            "/wss.v1.EventService/PublishEvent",
            "/wss.v1.TokenService/CreateToken",
            "/wss.v1.DeliveryService/SomethingAddedLater",
            "/wss.v1.TenantService/GetTenant/extra",
            "/grpc.health.v1.Healthy/Check",
            "/",
        ] {
            assert_eq!(access_of(admin), Access::Admin, "{admin}");
        }
    }

    #[test]
    fn principals_scope_lists_and_resources() {
        let tenant = Principal::Tenant("acme".into());
        assert_eq!(tenant.scope("tenant_id", "").unwrap(), "acme");
        assert_eq!(tenant.scope("tenant_id", "acme").unwrap(), "acme");
        let denied = tenant.scope("tenant_id", "globex").unwrap_err();
        assert!(matches!(&denied, DomainError::PermissionDenied(m) if m.starts_with("tenant_id: ")), "{denied}");
        assert_eq!(Principal::Admin.scope("tenant_id", "").unwrap(), "");
        assert_eq!(Principal::Admin.scope("tenant_id", "globex").unwrap(), "globex");
        assert!(tenant.require_tenant("webhook", "wh_1", "acme").is_ok());
        let denied = tenant.require_tenant("webhook", "wh_1", "globex").unwrap_err();
        assert!(!denied.to_string().contains("globex"), "the refusal must not name the owner: {denied}");
        assert!(Principal::Admin.require_tenant("webhook", "wh_1", "globex").is_ok());
    }

    #[test]
    fn domain_errors_map_to_their_codes() {
        let cases = [
            (DomainError::Invalid { field: "url", message: "is required".into() }, Code::InvalidArgument),
            (DomainError::NotFound { kind: "tenant", id: "acme".into() }, Code::NotFound),
            (DomainError::AlreadyExists { kind: "tenant", id: "acme".into() }, Code::AlreadyExists),
            (DomainError::FailedPrecondition("in use".into()), Code::FailedPrecondition),
            (DomainError::PermissionDenied("not yours".into()), Code::PermissionDenied),
            (DomainError::Sealed { kind: "webhook", id: "wh_1".into(), source: crypto::CryptoError::NoKey }, Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(status_of(err).code(), code);
        }
        let invalid = status_of(DomainError::Invalid { field: "url", message: "is required".into() });
        assert_eq!(invalid.message(), "url: is required");
        let corrupt = serde_json::from_str::<u32>("x").unwrap_err();
        let status = status_of(DomainError::Corrupt { kind: "tenant", id: "a".into(), source: corrupt });
        assert_eq!(status.code(), Code::Internal);
    }
}
