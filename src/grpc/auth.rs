//! Who calls the control plane and what it may do: the tower layer in front of every service
//! ([`AuthLayer`]) and the [`Principal`] it hands the handlers (see `grpc/mod.rs` for the whole
//! story).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{body::Body, Code, Request, Status};

use super::{
    errors,
    plane::{run_blocking, TARGET},
};
use crate::{
    crypto,
    domain::{store::Store, DomainError},
};

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
}
