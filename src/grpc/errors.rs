//! Rich errors (AIP-193): every status the control plane answers carries `google.rpc` details
//! in `grpc-status-details-bin`, next to the unchanged code and message:
//!
//! - a `google.rpc.ErrorInfo` with domain [`DOMAIN`] and a stable UPPER_SNAKE reason (the table
//!   in docs/api.md lists every one; [`REASONS`] is that list, checked by a test);
//! - for `INVALID_ARGUMENT`, a `google.rpc.BadRequest` whose field violation names the request
//!   field (`url`, `filter.reason`, `page_token`, ...).
//!
//! Handlers never build statuses by hand: they return a [`DomainError`] (the `?` operator), and
//! [`super::status_of`] turns it into a status here; the few statuses made outside the domain
//! (authentication, internal failures) go through [`status`].

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::DomainError;

/// The `ErrorInfo.domain` of every wss error.
pub const DOMAIN: &str = "wss";

/// Every reason the control plane answers with, and its code (docs/api.md has the same table).
pub const REASONS: &[(&str, Code)] = &[
    ("INVALID_FIELD", Code::InvalidArgument),
    ("INVALID_PAGE_TOKEN", Code::InvalidArgument),
    ("INVALID_UPDATE_MASK", Code::InvalidArgument),
    ("TENANT_NOT_FOUND", Code::NotFound),
    ("WEBHOOK_NOT_FOUND", Code::NotFound),
    ("RETRY_POLICY_NOT_FOUND", Code::NotFound),
    ("TOKEN_NOT_FOUND", Code::NotFound),
    ("DELIVERY_NOT_FOUND", Code::NotFound),
    ("DEAD_LETTER_NOT_FOUND", Code::NotFound),
    ("NOT_FOUND", Code::NotFound),
    ("TENANT_ALREADY_EXISTS", Code::AlreadyExists),
    ("WEBHOOK_ALREADY_EXISTS", Code::AlreadyExists),
    ("RETRY_POLICY_ALREADY_EXISTS", Code::AlreadyExists),
    ("TOKEN_ALREADY_EXISTS", Code::AlreadyExists),
    ("ALREADY_EXISTS", Code::AlreadyExists),
    ("POLICY_IN_USE", Code::FailedPrecondition),
    ("BUILTIN_POLICY", Code::FailedPrecondition),
    ("TENANT_NOT_FOUND", Code::FailedPrecondition),
    ("TENANT_DISABLED", Code::FailedPrecondition),
    ("WEBHOOK_DISABLED", Code::FailedPrecondition),
    ("WEBHOOK_NOT_FOUND", Code::FailedPrecondition),
    ("WEBHOOK_MOVED", Code::FailedPrecondition),
    ("EVENT_NOT_STORED", Code::FailedPrecondition),
    ("EVENT_ALTERED", Code::FailedPrecondition),
    ("FAILED_PRECONDITION", Code::FailedPrecondition),
    ("STALE_ETAG", Code::Aborted),
    ("OTHER_TENANT", Code::PermissionDenied),
    ("ADMIN_REQUIRED", Code::PermissionDenied),
    ("MISSING_TOKEN", Code::Unauthenticated),
    ("MALFORMED_TOKEN", Code::Unauthenticated),
    ("UNKNOWN_TOKEN", Code::Unauthenticated),
    ("REDIS_UNAVAILABLE", Code::Unavailable),
    ("TOKEN_CHECK_UNAVAILABLE", Code::Unavailable),
    ("RESPONSE_TOO_LARGE", Code::ResourceExhausted),
    ("CORRUPT_RECORD", Code::Internal),
    ("SECRET_SEALED", Code::Internal),
    ("RANDOM_UNAVAILABLE", Code::Internal),
    ("INTERNAL", Code::Internal),
];

/// A status with an `ErrorInfo` of `reason` (and nothing else in its details).
pub fn status(code: Code, reason: &'static str, message: impl Into<String>) -> Status {
    debug_assert!(REASONS.contains(&(reason, code)), "{reason} with {code:?} is not in REASONS (and docs/api.md)");
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, DOMAIN, std::collections::HashMap::new()))
}

/// INVALID_ARGUMENT naming `field`, with an `ErrorInfo` of `reason` and a `BadRequest` field
/// violation (its description is the problem, without the field name).
pub fn invalid(field: &str, reason: &'static str, problem: &str, message: impl Into<String>) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, DOMAIN, [("field".to_owned(), field.to_owned())]);
    details.add_bad_request_violation(field, problem);
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The reason an `Invalid` error on `field` gets.
fn invalid_reason(field: &str) -> &'static str {
    match field {
        "page_token" => "INVALID_PAGE_TOKEN",
        "update_mask" => "INVALID_UPDATE_MASK",
        _ => "INVALID_FIELD",
    }
}

/// `<KIND>_NOT_FOUND` / `<KIND>_ALREADY_EXISTS` of a domain kind (`"retry policy"`).
fn kind_reason(kind: &str, not_found: bool) -> &'static str {
    match (kind, not_found) {
        ("tenant", true) => "TENANT_NOT_FOUND",
        ("webhook", true) => "WEBHOOK_NOT_FOUND",
        ("retry policy", true) => "RETRY_POLICY_NOT_FOUND",
        ("token", true) => "TOKEN_NOT_FOUND",
        ("delivery", true) => "DELIVERY_NOT_FOUND",
        ("dead letter", true) => "DEAD_LETTER_NOT_FOUND",
        ("tenant", false) => "TENANT_ALREADY_EXISTS",
        ("webhook", false) => "WEBHOOK_ALREADY_EXISTS",
        ("retry policy", false) => "RETRY_POLICY_ALREADY_EXISTS",
        ("token", false) => "TOKEN_ALREADY_EXISTS",
        // A kind added later and not listed yet: still a stable, generic reason.
        (_, true) => "NOT_FOUND",
        (_, false) => "ALREADY_EXISTS",
    }
}

/// The status of a domain error: its code, its message (unchanged) and its details.
pub(super) fn rich(err: &DomainError) -> Status {
    let message = err.to_string();
    match err {
        DomainError::Invalid { field, message: problem } => invalid(field, invalid_reason(field), problem, message),
        DomainError::NotFound { kind, id } => {
            let reason = kind_reason(kind, true);
            let info = [("kind".to_owned(), (*kind).to_owned()), ("id".to_owned(), id.clone())];
            Status::with_error_details(Code::NotFound, message, ErrorDetails::with_error_info(reason, DOMAIN, info))
        }
        DomainError::AlreadyExists { kind, id } => {
            let reason = kind_reason(kind, false);
            let info = [("kind".to_owned(), (*kind).to_owned()), ("id".to_owned(), id.clone())];
            Status::with_error_details(Code::AlreadyExists, message, ErrorDetails::with_error_info(reason, DOMAIN, info))
        }
        DomainError::FailedPrecondition(_) => status(Code::FailedPrecondition, "FAILED_PRECONDITION", message),
        DomainError::Precondition { reason, .. } => status(Code::FailedPrecondition, reason, message),
        DomainError::Aborted { reason, .. } => status(Code::Aborted, reason, message),
        DomainError::PermissionDenied(_) => status(Code::PermissionDenied, "OTHER_TENANT", message),
        DomainError::Unavailable { .. } => status(Code::Unavailable, "REDIS_UNAVAILABLE", message),
        DomainError::Corrupt { .. } => status(Code::Internal, "CORRUPT_RECORD", message),
        DomainError::Sealed { .. } => status(Code::Internal, "SECRET_SEALED", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(status: &Status) -> (String, String) {
        let details = status.get_error_details();
        let info = details.error_info().expect("every status carries an ErrorInfo");
        (info.reason.clone(), info.domain.clone())
    }

    #[test]
    fn invalid_arguments_name_their_field() {
        let status = rich(&DomainError::Invalid { field: "url", message: "is required".into() });
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "url: is required"));
        assert_eq!(info(&status), ("INVALID_FIELD".into(), "wss".into()));
        let details = status.get_error_details();
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert_eq!((violation.field.as_str(), violation.description.as_str()), ("url", "is required"));
        let token = rich(&DomainError::Invalid { field: "page_token", message: "x".into() });
        assert_eq!(info(&token).0, "INVALID_PAGE_TOKEN");
    }

    #[test]
    fn every_domain_error_has_a_listed_reason() {
        let cases = [
            DomainError::NotFound { kind: "tenant", id: "acme".into() },
            DomainError::NotFound { kind: "retry policy", id: "p".into() },
            DomainError::NotFound { kind: "dead letter", id: "1-0".into() },
            DomainError::AlreadyExists { kind: "webhook", id: "wh_1".into() },
            DomainError::FailedPrecondition("x".into()),
            DomainError::Precondition { reason: "POLICY_IN_USE", message: "in use".into() },
            DomainError::Aborted { reason: "STALE_ETAG", message: "stale".into() },
            DomainError::PermissionDenied("not yours".into()),
        ];
        for err in cases {
            let status = rich(&err);
            let (reason, domain) = info(&status);
            assert_eq!(domain, DOMAIN);
            assert!(REASONS.iter().any(|(r, c)| *r == reason && *c == status.code()), "{reason} {:?}", status.code());
            assert_eq!(status.message(), err.to_string(), "the message is unchanged");
        }
    }

    #[test]
    fn the_reason_table_in_docs_lists_every_reason() {
        let docs = include_str!("../../docs/api.md");
        for (reason, _) in REASONS {
            assert!(docs.contains(&format!("`{reason}`")), "docs/api.md does not list {reason}");
        }
    }
}
