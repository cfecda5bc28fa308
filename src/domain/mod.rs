//! The control plane's domain: tenants, webhooks and retry policies ([`model`]), their storage in
//! Redis ([`store`]), and the in-memory routing snapshot the pipeline serves from ([`routing`]).
//!
//! State lives in Redis so that every instance sharing a key prefix sees the same configuration.
//! Each write bumps `<prefix>config:version`; every instance polls that counter four times a
//! second and reloads its snapshot when it moves, and the instance that made a write reloads at
//! once, so its own next event already sees the change.

pub mod model;
pub mod redelivery;
pub mod resend;
pub mod routing;
pub mod store;
pub mod token;

/// What can go wrong with a control-plane operation. The gRPC layer maps each variant to one
/// status code (`grpc::status_of`).
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("{kind} {id:?} does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    /// FAILED_PRECONDITION with a stable machine-readable reason (`POLICY_IN_USE`,
    /// `WEBHOOK_DISABLED`, ...: the `google.rpc.ErrorInfo` reason, docs/api.md).
    #[error("{message}")]
    Precondition { reason: &'static str, message: String },
    /// ABORTED: a concurrent change got there first (`STALE_ETAG`); read again and retry.
    #[error("{message}")]
    Aborted { reason: &'static str, message: String },
    /// The caller's token may not touch this resource (another tenant's, or an admin's).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("Redis at {url} is unavailable ({source}); check that it runs, then try again")]
    Unavailable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("stored {kind} {id:?} cannot be decoded ({source}); it was written by an incompatible version")]
    Corrupt {
        kind: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    /// A stored secret cannot be read with the configured `WSS_ENCRYPTION_KEY` (none, another
    /// one, or the value was tampered with). The message never carries the secret or the key.
    #[error("the stored secret of {kind} {id:?} {source}")]
    Sealed {
        kind: &'static str,
        id: String,
        #[source]
        source: crate::crypto::CryptoError,
    },
}

/// The field an `Invalid` error names, for tests that check validation field by field.
#[cfg(test)]
pub(crate) fn field_of(err: DomainError) -> &'static str {
    match err {
        DomainError::Invalid { field, .. } => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}
