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

mod auth;
pub mod convert;
mod deliveries;
pub mod errors;
mod events;
pub mod paging;
mod plane;
mod policies;
mod tenants;
mod tokens;
mod webhooks;

use std::{future::Future, sync::Arc, time::Duration};

use tonic::transport::{server::TcpIncoming, Certificate, Identity, ServerTlsConfig};

use crate::{
    config::TlsSettings,
    proto::{
        delivery_service_server::DeliveryServiceServer, event_service_server::EventServiceServer,
        retry_policy_service_server::RetryPolicyServiceServer, tenant_service_server::TenantServiceServer,
        token_service_server::TokenServiceServer, webhook_service_server::WebhookServiceServer,
    },
};

use self::plane::TARGET;
pub use self::{
    auth::{access_of, Access, AuthLayer, Principal},
    plane::{status_of, ControlPlane, MAX_MESSAGE_BYTES},
};

/// Largest HTTP/2 header block (metadata) accepted.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
/// Concurrent calls on one connection, at most.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// A TLS handshake that takes longer is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
