//! The control plane: the five `wss.v1` gRPC services (SPEC.md §5), plus `grpc.health.v1.Health`
//! and server reflection (v1 and v1alpha) so that `grpcurl` works without proto files.
//!
//! Each service is thin: it validates the request, converts it into a domain type
//! ([`convert`] and the `validate_*` functions of [`crate::domain::model`]), calls the
//! [`Store`] on the blocking pool (the store speaks synchronous Redis), and converts the answer
//! back. Every domain error becomes a status in one place, [`status_of`]. After each successful
//! write the same blocking task reloads the routing snapshot, so the next event this instance
//! routes already sees the change; when that reload fails the refresher catches up within a
//! second, so it is only logged.
//!
//! Authentication: with an admin token configured, every `wss.v1` call must carry
//! `authorization: Bearer <token>`; health and reflection stay open so that probes and
//! `grpcurl list` need no secret. Without a token nothing is checked — the caller only allows that
//! on a loopback listener.
//!
//! Logs go to target `wss::grpc`: each mutation at INFO with resource ids only, never a secret or
//! a token.

pub mod convert;
mod deliveries;
mod events;
mod policies;
mod tenants;
mod webhooks;

use std::{future::Future, sync::Arc};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{metadata::MetadataMap, service::Interceptor, transport::server::TcpIncoming, Code, Request, Status};

use crate::{
    domain::{routing::RoutingHandle, store::Store, DomainError},
    proto::{
        delivery_service_server::DeliveryServiceServer, event_service_server::EventServiceServer,
        retry_policy_service_server::RetryPolicyServiceServer, tenant_service_server::TenantServiceServer,
        webhook_service_server::WebhookServiceServer,
    },
};

const TARGET: &str = "wss::grpc";

/// What the control plane serves from.
pub struct ControlPlane {
    pub store: Arc<Store>,
    /// Reloaded after every successful write.
    pub routing: Arc<RoutingHandle>,
    /// Accept `http://` webhook URLs (`WSS_ALLOW_HTTP`).
    pub allow_http: bool,
    /// Accept webhook URLs whose host is a loopback/private IP literal (`WSS_ALLOW_PRIVATE_TARGETS`).
    pub allow_private_targets: bool,
}

/// Serves all five wss.v1 services + grpc.health.v1.Health + reflection (BOTH v1 and v1alpha:
/// grpcurl 1.8.6 uses v1alpha) on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    plane: ControlPlane,
    admin_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let plane = Arc::new(plane);
    let auth = AdminAuth::new(admin_token.as_deref());

    let tenants = TenantServiceServer::with_interceptor(tenants::TenantApi::new(plane.clone()), auth.clone());
    let webhooks = WebhookServiceServer::with_interceptor(webhooks::WebhookApi::new(plane.clone()), auth.clone());
    let policies =
        RetryPolicyServiceServer::with_interceptor(policies::RetryPolicyApi::new(plane.clone()), auth.clone());
    let events = EventServiceServer::with_interceptor(events::EventApi::new(plane.clone()), auth.clone());
    let deliveries = DeliveryServiceServer::with_interceptor(deliveries::DeliveryApi::new(plane), auth);

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in [
        "",
        crate::proto::tenant_service_server::SERVICE_NAME,
        crate::proto::webhook_service_server::SERVICE_NAME,
        crate::proto::retry_policy_service_server::SERVICE_NAME,
        crate::proto::event_service_server::SERVICE_NAME,
        crate::proto::delivery_service_server::SERVICE_NAME,
    ] {
        health.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    }

    // The descriptor sets are compiled in, so a failure here is a build defect; serving the
    // control plane without reflection is still better than not serving it.
    let reflection_v1 = reflection()
        .build_v1()
        .inspect_err(|e| log::error!(target: TARGET, "gRPC reflection v1 is unavailable: {e}"))
        .ok();
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .inspect_err(|e| log::error!(target: TARGET, "gRPC reflection v1alpha is unavailable: {e}"))
        .ok();

    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(tenants)
        .add_service(webhooks)
        .add_service(policies)
        .add_service(events)
        .add_service(deliveries)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

// ---- errors ----

/// The one mapping from domain errors to gRPC statuses.
pub fn status_of(err: DomainError) -> Status {
    let code = match &err {
        DomainError::Invalid { .. } => Code::InvalidArgument,
        DomainError::NotFound { .. } => Code::NotFound,
        DomainError::AlreadyExists { .. } => Code::AlreadyExists,
        DomainError::FailedPrecondition(_) => Code::FailedPrecondition,
        DomainError::Unavailable { .. } => Code::Unavailable,
        DomainError::Corrupt { .. } => Code::Internal,
    };
    if code == Code::Internal {
        log::error!(target: TARGET, "{err}");
    }
    Status::new(code, err.to_string())
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

async fn run_blocking<T, F>(op: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DomainError> + Send + 'static,
{
    match tokio::task::spawn_blocking(op).await {
        Ok(result) => result.map_err(Status::from),
        Err(join) => {
            log::error!(target: TARGET, "a control-plane store call did not complete: {join}");
            Err(Status::internal("the store call did not complete; see the server log"))
        }
    }
}

// ---- authentication ----

const MISSING_AUTH: &str = "missing authorization metadata: send `authorization: Bearer <token>`";
const MALFORMED_AUTH: &str = "malformed authorization metadata: send `authorization: Bearer <token>`";
const UNKNOWN_TOKEN: &str = "unknown token";

/// Checks `authorization: Bearer <token>` on every call of a `wss.v1` service.
///
/// Only the SHA-256 digest of the admin token is kept; presented tokens are hashed the same way and
/// the digests compared in constant time, so neither the token's bytes nor its length leak
/// through timing.
#[derive(Clone)]
pub struct AdminAuth {
    expected: Option<[u8; 32]>,
}

impl AdminAuth {
    /// `None`: every call is let through.
    pub fn new(admin_token: Option<&str>) -> Self {
        Self { expected: admin_token.map(digest) }
    }

    /// `Ok` when no token is configured or the metadata carries the configured one.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(expected) = &self.expected else { return Ok(()) };
        let value = metadata.get("authorization").ok_or_else(|| Status::unauthenticated(MISSING_AUTH))?;
        let value = value.to_str().map_err(|_| Status::unauthenticated(MALFORMED_AUTH))?;
        let (scheme, token) = value.trim().split_once(' ').ok_or_else(|| Status::unauthenticated(MALFORMED_AUTH))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Status::unauthenticated(MALFORMED_AUTH));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(Status::unauthenticated(MALFORMED_AUTH));
        }
        if bool::from(digest(token).ct_eq(expected)) {
            Ok(())
        } else {
            Err(Status::unauthenticated(UNKNOWN_TOKEN))
        }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(authorization: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(value) = authorization {
            map.insert("authorization", value.parse().unwrap());
        }
        map
    }

    fn refusal(auth: &AdminAuth, authorization: Option<&str>) -> String {
        let status = auth.check(&metadata(authorization)).unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        status.message().to_owned()
    }

    #[test]
    fn without_a_token_everything_passes() {
        let auth = AdminAuth::new(None);
        assert!(auth.check(&metadata(None)).is_ok());
        assert!(auth.check(&metadata(Some("Bearer whatever"))).is_ok());
    }

    #[test]
    fn the_configured_token_passes_and_others_do_not() {
        let auth = AdminAuth::new(Some("s3cret-token"));
        assert!(auth.check(&metadata(Some("Bearer s3cret-token"))).is_ok());
        assert!(auth.check(&metadata(Some("bearer  s3cret-token "))).is_ok());
        assert_eq!(refusal(&auth, None), MISSING_AUTH);
        assert_eq!(refusal(&auth, Some("Bearer s3cret-tokem")), UNKNOWN_TOKEN);
        assert_eq!(refusal(&auth, Some("Bearer s3cret-token-longer")), UNKNOWN_TOKEN);
        assert_eq!(refusal(&auth, Some("Basic s3cret-token")), MALFORMED_AUTH);
        assert_eq!(refusal(&auth, Some("s3cret-token")), MALFORMED_AUTH);
        assert_eq!(refusal(&auth, Some("Bearer ")), MALFORMED_AUTH);
    }

    #[test]
    fn refusals_never_echo_the_token() {
        let auth = AdminAuth::new(Some("s3cret-token"));
        for presented in ["Bearer guess-token", "Token s3cret-token", "s3cret-token"] {
            let message = refusal(&auth, Some(presented));
            assert!(!message.contains("s3cret") && !message.contains("guess"), "{message}");
        }
    }

    #[test]
    fn domain_errors_map_to_their_codes() {
        let cases = [
            (DomainError::Invalid { field: "url", message: "is required".into() }, Code::InvalidArgument),
            (DomainError::NotFound { kind: "tenant", id: "acme".into() }, Code::NotFound),
            (DomainError::AlreadyExists { kind: "tenant", id: "acme".into() }, Code::AlreadyExists),
            (DomainError::FailedPrecondition("in use".into()), Code::FailedPrecondition),
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
