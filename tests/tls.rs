//! TLS for the control plane (issue 5): with a certificate and key the gRPC listener speaks TLS
//! only; with a client CA as well, it also requires a client certificate signed by that CA
//! (mutual TLS). Certificates are made when the test runs (`secure::TestPki`).

mod common;
mod secure;

use std::time::Duration;

use common::{Keyspace, Service};
use secure::{Authed, TestPki};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use wss::proto::{CreateTenantRequest, ListTenantsRequest};

const ADMIN: &str = "tls-test-admin-token-0123456789";

/// A channel to the control plane over TLS, trusting the test CA, optionally with a client
/// certificate; `Err` when the connection (or its handshake) fails.
async fn tls_channel(port: u16, pki: &TestPki, client: Option<(&str, &str)>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    // The address the service listens on (127.0.0.1), not `localhost`, which may resolve to ::1
    // first, where another process may hold the same port; the name checked stays `localhost`.
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("a valid URI")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A channel without TLS; the connect itself may succeed, calls must not.
async fn plaintext_channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}")).expect("a valid URI").timeout(Duration::from_secs(5)).connect_lazy()
}

async fn list_tenants(channel: &Channel) -> Result<usize, tonic::Status> {
    let reply = Authed::new(channel, Some(ADMIN)).tenants().list_tenants(ListTenantsRequest::default()).await?;
    Ok(reply.into_inner().tenants.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_speaks_tls_only_when_configured() {
    let pki = TestPki::new();
    let ks = Keyspace::new("tls");
    let service = Service::start(
        &ks,
        "tls",
        &[("WSS_ADMIN_TOKEN", ADMIN), ("WSS_TLS_CERT_FILE", &pki.server_cert_file), ("WSS_TLS_KEY_FILE", &pki.server_key_file)],
    )
    .await;
    let line = service.wait_for_log("control plane listening on", common::WAIT).await;
    assert!(line.contains("TLS"), "the start-up line says TLS is on: {line}");
    let port = service.grpc_addr.unwrap().port();

    let channel = tls_channel(port, &pki, None).await.expect("a TLS connection trusting the test CA");
    let admin = Authed::new(&channel, Some(ADMIN));
    admin.tenants().create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await.unwrap();
    assert_eq!(list_tenants(&channel).await.unwrap(), 1);
    let health =
        tonic_health::pb::health_client::HealthClient::new(channel.clone()).check(tonic_health::pb::HealthCheckRequest::default()).await;
    assert!(health.is_ok(), "health over TLS: {health:?}");

    let plain = plaintext_channel(port).await;
    assert!(list_tenants(&plain).await.is_err(), "a plaintext call to a TLS listener must fail");
    // And the listener is still fine afterwards.
    assert_eq!(list_tenants(&channel).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_configured_ca() {
    let pki = TestPki::new();
    let ks = Keyspace::new("mtls");
    let service = Service::start(
        &ks,
        "mtls",
        &[
            ("WSS_ADMIN_TOKEN", ADMIN),
            ("WSS_TLS_CERT_FILE", &pki.server_cert_file),
            ("WSS_TLS_KEY_FILE", &pki.server_key_file),
            ("WSS_TLS_CLIENT_CA_FILE", &pki.ca_file),
        ],
    )
    .await;
    let line = service.wait_for_log("control plane listening on", common::WAIT).await;
    assert!(line.contains("client certificates required"), "{line}");
    let port = service.grpc_addr.unwrap().port();

    let refused = match tls_channel(port, &pki, None).await {
        Ok(channel) => list_tenants(&channel).await.map_err(|s| s.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(refused.is_err(), "no client certificate: refused, got {refused:?}");
    let stranger = match tls_channel(port, &pki, Some((&pki.stranger_cert_pem, &pki.stranger_key_pem))).await {
        Ok(channel) => list_tenants(&channel).await.map_err(|s| s.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(stranger.is_err(), "a certificate of another CA: refused, got {stranger:?}");

    let channel = tls_channel(port, &pki, Some((&pki.client_cert_pem, &pki.client_key_pem))).await.expect("with the client certificate");
    assert_eq!(list_tenants(&channel).await.unwrap(), 0);
    // The token is still required on top of the certificate.
    let anonymous = Authed::new(&channel, None).tenants().list_tenants(ListTenantsRequest::default()).await;
    assert_eq!(anonymous.unwrap_err().code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_stop_the_start_with_a_reason() {
    let pki = TestPki::new();
    let ks = Keyspace::new("tls_bad");
    // The key of another certificate: the pair does not match.
    let junk_key = pki.dir.write("junk.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let mut env = Service::env(&ks, "tls-bad");
    env.push(("WSS_TLS_CERT_FILE".into(), pki.server_cert_file.clone()));
    env.push(("WSS_TLS_KEY_FILE".into(), junk_key));
    let mut service = Service::spawn("tls-bad", env);
    let line = service.wait_for_log("WSS_TLS_KEY_FILE", common::WAIT).await;
    assert!(line.contains("TLS"), "{line}");
    let status = common::wait_until(common::WAIT, "wss to exit", || service.try_wait().ok_or_else(|| "running".to_owned())).await;
    assert!(!status.success());

    let mut env = Service::env(&ks, "tls-half");
    env.push(("WSS_TLS_CERT_FILE".into(), pki.server_cert_file.clone()));
    let mut service = Service::spawn("tls-half", env);
    service.wait_for_log("set both tls_cert_file and tls_key_file", common::WAIT).await;
    let status = common::wait_until(common::WAIT, "wss to exit", || service.try_wait().ok_or_else(|| "running".to_owned())).await;
    assert!(!status.success());
}
