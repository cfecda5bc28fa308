//! Helpers of the security tests (`tests/security.rs`, `tests/ssrf.rs`, `tests/tls.rs`), on top of
//! `tests/common`:
//!
//! - [`Authed`]: control-plane clients that send `authorization: Bearer <token>` on every call;
//! - [`TestPki`]: a CA, a server certificate for 127.0.0.1/localhost and a client certificate,
//!   made with `rcgen` when the test runs and written to a temporary directory;
//! - [`dead_letters_as`]: every dead letter visible to a token;
//! - [`assert_never_logged`]: the grep of a service's log for secrets.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::Channel,
    Request, Status,
};
use wss::proto::{
    delivery_service_client::DeliveryServiceClient, event_service_client::EventServiceClient,
    retry_policy_service_client::RetryPolicyServiceClient, tenant_service_client::TenantServiceClient,
    token_service_client::TokenServiceClient, webhook_service_client::WebhookServiceClient, CreateTokenRequest, DeadLetter,
    ListDeadLettersRequest, Token,
};

/// Adds `authorization: Bearer <token>` (or any raw value) to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Auth = InterceptedService<Channel, Bearer>;

/// Control-plane clients that all present the same credential.
#[derive(Clone)]
pub struct Authed {
    channel: Channel,
    bearer: Bearer,
}

impl Authed {
    /// `token`: sent as `Bearer <token>`; `None`: no authorization header at all.
    pub fn new(channel: &Channel, token: Option<&str>) -> Self {
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().expect("a token is ASCII")));
        Self { channel: channel.clone(), bearer }
    }

    /// Sends exactly `value` as the authorization header.
    pub fn raw(channel: &Channel, value: &str) -> Self {
        Self { channel: channel.clone(), bearer: Bearer(Some(value.parse().expect("ASCII"))) }
    }

    pub fn tenants(&self) -> TenantServiceClient<Auth> {
        TenantServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn webhooks(&self) -> WebhookServiceClient<Auth> {
        WebhookServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn policies(&self) -> RetryPolicyServiceClient<Auth> {
        RetryPolicyServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn events(&self) -> EventServiceClient<Auth> {
        EventServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn deliveries(&self) -> DeliveryServiceClient<Auth> {
        DeliveryServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn tokens(&self) -> TokenServiceClient<Auth> {
        TokenServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// Issues a token for `tenant_id` (this client must be the admin).
    pub async fn create_token(&self, tenant_id: &str) -> Token {
        let token = self
            .tokens()
            .create_token(CreateTokenRequest { tenant_id: tenant_id.into(), description: format!("token of {tenant_id}") })
            .await
            .unwrap_or_else(|s| panic!("CreateToken {tenant_id}: {s:?}"))
            .into_inner();
        assert!(token.token.starts_with(&format!("{}.", token.token_id)), "CreateToken returns the token: {token:?}");
        token
    }

    /// Every dead letter this credential may see, of `tenant_id` (empty: the default scope).
    pub async fn dead_letters(&self, tenant_id: &str) -> Result<Vec<DeadLetter>, Status> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .deliveries()
                .list_dead_letters(ListDeadLettersRequest {
                    tenant_id: tenant_id.into(),
                    page_size: 100,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            all.extend(page.dead_letters);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        // The counter keeps two tests of one process apart even when the clock reads the same
        // for both (it did once: two TestPkis wrote into one directory, and a server presented
        // the other test's certificate — BadSignature).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("wss-{label}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self(dir)
    }

    /// Writes `contents` to `name` in the directory and returns its path as a string.
    pub fn write(&self, name: &str, contents: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path.to_str().expect("a UTF-8 temp path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Certificates for the TLS tests, made now: a CA, a server certificate for `localhost` and
/// `127.0.0.1` signed by it, a client certificate signed by it, and a client certificate signed
/// by another CA.
pub struct TestPki {
    pub dir: TempDir,
    pub ca_pem: String,
    pub server_cert_file: String,
    pub server_key_file: String,
    pub ca_file: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub stranger_cert_pem: String,
    pub stranger_key_pem: String,
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};

        fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, KeyPair>) {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert, rcgen::Issuer::new(params, key))
        }

        fn leaf(names: &[&str], purpose: ExtendedKeyUsagePurpose, issuer: &rcgen::Issuer<'static, KeyPair>) -> (String, String) {
            let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            params.extended_key_usages = vec![purpose];
            params.distinguished_name.push(DnType::CommonName, names[0]);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }

        let (ca_cert, issuer) = ca("wss test CA");
        let (_, stranger_issuer) = ca("some other CA");
        let (server_cert, server_key) = leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth, &issuer);
        let (client_cert_pem, client_key_pem) = leaf(&["wss-admin-client"], ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        let (stranger_cert_pem, stranger_key_pem) = leaf(&["stranger"], ExtendedKeyUsagePurpose::ClientAuth, &stranger_issuer);
        let dir = TempDir::new("pki");
        let ca_pem = ca_cert.pem();
        Self {
            server_cert_file: dir.write("server.pem", server_cert.as_bytes()),
            server_key_file: dir.write("server.key", server_key.as_bytes()),
            ca_file: dir.write("ca.pem", ca_pem.as_bytes()),
            dir,
            ca_pem,
            client_cert_pem,
            client_key_pem,
            stranger_cert_pem,
            stranger_key_pem,
        }
    }
}

/// Panics naming the line when any `secret` appears in any of `lines` (every secret at least 6
/// characters, so that the check means something).
pub fn assert_never_logged(lines: &[String], secrets: &[(&str, &str)]) {
    assert!(lines.len() > 20, "the scenario should have produced a real log; got {} lines", lines.len());
    for (what, secret) in secrets {
        assert!(secret.len() >= 6, "{what} is too short to grep for meaningfully: {secret:?}");
        if let Some(line) = lines.iter().find(|l| l.contains(secret)) {
            panic!("{what} appears in the log: {line}");
        }
    }
}
