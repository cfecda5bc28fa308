//! Tenant tokens' records (`P tokens`: hash from token id to the record, its SHA-256 digest,
//! never the token: see `crate::crypto`). A token is checked on every call that carries it, so
//! that a revocation holds at once on every instance.

use redis::Commands;

use super::{connection::Store, records::Page};
use crate::domain::{token::ApiToken, DomainError};

impl Store {
    /// Stores a new tenant token's record (its digest, never the token).
    pub fn create_token(&self, token: ApiToken) -> Result<ApiToken, DomainError> {
        self.mutate(|con, keys, pipe| {
            self.require_tenant(con, keys, &token.tenant_id)?;
            if con.hexists(&keys.tokens, &token.id).map_err(|e| self.unavailable(e))? {
                return Err(DomainError::AlreadyExists { kind: "token", id: token.id.clone() });
            }
            pipe.hset(&keys.tokens, &token.id, self.encode(&token)?).ignore();
            Ok(token.clone())
        })
    }

    /// A token's record by id; `None` when there is none (never issued, revoked, or its tenant
    /// deleted). One `HGET`: the control plane calls it for every call carrying a tenant token,
    /// so that a revocation holds at once on every instance.
    pub fn find_token(&self, id: &str) -> Result<Option<ApiToken>, DomainError> {
        self.with_conn(|con, keys| match self.fetch(con, &keys.tokens, "token", id) {
            Ok(token) => Ok(Some(token)),
            Err(DomainError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        })
    }

    pub fn list_tokens(&self, tenant_id: &str, page_size: usize, token: &str) -> Result<Page<ApiToken>, DomainError> {
        self.with_conn(|con, keys| {
            self.list(
                con,
                &keys.tokens,
                "token",
                page_size,
                token,
                |t: &ApiToken| tenant_id.is_empty() || t.tenant_id == tenant_id,
                |t| &t.id,
            )
        })
    }

    /// Revokes a token; returns its record.
    pub fn revoke_token(&self, id: &str) -> Result<ApiToken, DomainError> {
        self.mutate(|con, keys, pipe| {
            let token: ApiToken = self.fetch(con, &keys.tokens, "token", id)?;
            pipe.hdel(&keys.tokens, id).ignore();
            Ok(token)
        })
    }
}
