//! Tenant-scoped control-plane tokens, as stored: everything but the token itself, of which only
//! the SHA-256 digest is kept (see `crate::crypto` for the format and the comparison).
//!
//! Stored in the hash `<prefix>tokens`, from token id to this record's JSON. A token dies with
//! its tenant: DeleteTenant revokes the tenant's tokens in the same transaction.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// `tok_` + 26 base32 characters; public (the part before the dot of the token).
    pub id: String,
    /// The tenant whose webhooks, deliveries and dead letters this token may manage.
    pub tenant_id: String,
    pub description: String,
    pub created_at_ms: u64,
    /// Lowercase hex SHA-256 of the whole token.
    pub digest: String,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("description", &self.description)
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}
