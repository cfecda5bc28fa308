//! `wss.v1.TokenService`: tenant-scoped control-plane tokens, issued and revoked by an admin.
//!
//! A token is drawn from the operating system's CSPRNG (`crate::crypto::issue_token`), returned
//! once by CreateToken, and stored only as its SHA-256 digest. The token id — the public part
//! before the dot — names it everywhere else: in ListTokens, in RevokeToken and in log lines.
//! Every rpc here is admin-only (see `super::auth::access_of`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    convert::{max_chars, optional_id, page_size, timestamp},
    plane::{ControlPlane, TARGET},
};
use crate::{
    crypto,
    domain::{
        model::{invalid, validate_id},
        token::ApiToken,
        DomainError,
    },
    proto::{self, token_service_server::TokenService},
};

/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 256;

pub(super) struct TokenApi {
    plane: Arc<ControlPlane>,
}

impl TokenApi {
    pub(super) fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }
}

/// A token as listed: without the token itself.
fn token_to_proto(token: ApiToken) -> proto::Token {
    proto::Token {
        token_id: token.id,
        tenant_id: token.tenant_id,
        description: token.description,
        created_at: timestamp(token.created_at_ms),
        token: String::new(),
    }
}

fn check_create(req: &proto::CreateTokenRequest) -> Result<(), DomainError> {
    validate_id("tenant_id", &req.tenant_id)?;
    max_chars("description", &req.description, MAX_DESCRIPTION)?;
    if req.description.chars().any(char::is_control) {
        return Err(invalid("description", "must not contain control characters"));
    }
    Ok(())
}

fn check_token_id(id: &str) -> Result<(), DomainError> {
    if id.is_empty() {
        return Err(invalid("token_id", "is required"));
    }
    if !crypto::is_token_id(id) {
        return Err(invalid(
            "token_id",
            "is not a token id this service issued (tok_ + 26 characters; the part of the token before the dot)",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(&self, request: Request<proto::CreateTokenRequest>) -> Result<Response<proto::Token>, Status> {
        let req = request.into_inner();
        check_create(&req)?;
        let issued = crypto::issue_token().map_err(|e| super::plane::random_unavailable("a token", e))?;
        let record = ApiToken {
            id: issued.id.clone(),
            tenant_id: req.tenant_id,
            description: req.description,
            created_at_ms: self.plane.clock.now_ms(),
            digest: crypto::token_digest_hex(&issued.token),
        };
        let created = self.plane.write(move |store| store.create_token(record)).await?;
        log::info!(target: TARGET, "issued token {} for tenant {}", created.id, created.tenant_id);
        let mut out = token_to_proto(created);
        out.token = issued.token; // the one answer that shows it
        Ok(Response::new(out))
    }

    async fn list_tokens(&self, request: Request<proto::ListTokensRequest>) -> Result<Response<proto::ListTokensResponse>, Status> {
        let req = request.into_inner();
        optional_id("tenant_id", &req.tenant_id)?;
        let size = page_size(req.page_size);
        let query = super::paging::PageQuery::new("ListTokens", &[("tenant_id", &req.tenant_id)]);
        let cursor = query.open(&req.page_token)?;
        let page = self.plane.read(move |store| store.list_tokens(&req.tenant_id, size, &cursor)).await?;
        let (tokens, next) =
            super::paging::fit(page.items, page.next_token, super::paging::MAX_PAGE_BYTES, token_to_proto, |t| t.id.clone())?;
        Ok(Response::new(proto::ListTokensResponse { tokens, next_page_token: query.seal(next) }))
    }

    async fn revoke_token(&self, request: Request<proto::RevokeTokenRequest>) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let id = request.into_inner().token_id;
        check_token_id(&id)?;
        let revoked = self.plane.write(move |store| store.revoke_token(&id)).await?;
        log::info!(target: TARGET, "revoked token {} of tenant {}", revoked.id, revoked.tenant_id);
        Ok(Response::new(proto::RevokeTokenResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::field_of;

    #[test]
    fn create_requests_are_checked() {
        let ok = proto::CreateTokenRequest { tenant_id: "acme".into(), description: "CI deploys".into() };
        assert!(check_create(&ok).is_ok());
        let bad = proto::CreateTokenRequest { tenant_id: "".into(), ..ok.clone() };
        assert_eq!(field_of(check_create(&bad).unwrap_err()), "tenant_id");
        let bad = proto::CreateTokenRequest { tenant_id: "Acme!".into(), ..ok.clone() };
        assert_eq!(field_of(check_create(&bad).unwrap_err()), "tenant_id");
        let bad = proto::CreateTokenRequest { description: "x".repeat(257), ..ok.clone() };
        assert_eq!(field_of(check_create(&bad).unwrap_err()), "description");
        let bad = proto::CreateTokenRequest { description: "a\nb".into(), ..ok };
        assert_eq!(field_of(check_create(&bad).unwrap_err()), "description");
    }

    #[test]
    fn token_ids_are_checked_and_listing_hides_the_digest() {
        let issued = crypto::issue_token().unwrap();
        assert!(check_token_id(&issued.id).is_ok());
        for bad in ["", "tok_", "wh_abc", &issued.token] {
            assert_eq!(field_of(check_token_id(bad).unwrap_err()), "token_id", "{bad}");
        }
        let listed = token_to_proto(ApiToken {
            id: issued.id.clone(),
            tenant_id: "acme".into(),
            description: String::new(),
            created_at_ms: 1000,
            digest: crypto::token_digest_hex(&issued.token),
        });
        assert_eq!(listed.token, "");
        assert_eq!(listed.token_id, issued.id);
    }
}
