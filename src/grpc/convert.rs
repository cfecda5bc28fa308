//! Conversions between the wire types of [`crate::proto`] and the domain types, and the checks on
//! request fields shared by several services (pagination, optional ids, lengths, durations).
//!
//! Everything here is pure and tested here. Errors are `DomainError::Invalid` naming the field by
//! its proto (snake_case) name, so they reach the caller as `INVALID_ARGUMENT "field: problem"`.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use prost_types::{Duration as PbDuration, Timestamp};

use crate::{
    deadletter::{AttemptRecord, DeadLetter, ErrorKind},
    domain::{
        model::{self, invalid, Ordering, RetryPolicy, SignatureScheme, Tenant, Webhook},
        store::Versioned,
        DomainError,
    },
    proto,
};

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// `page_size` of a List request: 0 means [`DEFAULT_PAGE_SIZE`], more than [`MAX_PAGE_SIZE`] is
/// clamped to it (AIP-158: the page is just shorter; `next_page_token` leads on).
pub fn page_size(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE) as usize,
    }
}

/// An id field that may be empty ("inherit"); when given it must be a valid id.
pub fn optional_id(field: &'static str, value: &str) -> Result<(), DomainError> {
    if value.is_empty() {
        Ok(())
    } else {
        model::validate_id(field, value)
    }
}

/// A free-text field of at most `max` characters.
pub fn max_chars(field: &'static str, value: &str, max: usize) -> Result<(), DomainError> {
    let count = value.chars().count();
    if count > max {
        return Err(invalid(field, format!("is {count} characters long; at most {max} are allowed")));
    }
    Ok(())
}

/// A required reference to a server-assigned id (`webhook_id`): non-empty and short; whether it
/// exists is the store's answer.
pub fn required_ref(field: &'static str, value: &str) -> Result<(), DomainError> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(field, "is not an id this service assigned"));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch as a Timestamp; 0 (unknown) as none.
pub fn timestamp(ms: u64) -> Option<Timestamp> {
    if ms == 0 {
        return None;
    }
    Some(Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

pub fn duration_to_proto(value: Duration) -> PbDuration {
    PbDuration { seconds: i64::try_from(value.as_secs()).unwrap_or(i64::MAX), nanos: value.subsec_nanos() as i32 }
}

/// A google.protobuf.Duration as a std Duration; negative values and `nanos` outside
/// 0..=999,999,999 are refused, naming `field`.
pub fn duration_from_proto(field: &'static str, value: &PbDuration) -> Result<Duration, DomainError> {
    if value.seconds < 0 || value.nanos < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    if value.nanos > 999_999_999 {
        return Err(invalid(field, "has nanos outside 0..=999999999; it is not a valid Duration"));
    }
    Ok(Duration::new(value.seconds as u64, value.nanos as u32))
}

/// The wire enum as the domain's. UNSPECIFIED means WSS (see the proto); unknown numbers are
/// refused.
pub fn scheme_from_proto(value: i32) -> Result<SignatureScheme, DomainError> {
    match proto::SignatureScheme::try_from(value) {
        Ok(proto::SignatureScheme::Unspecified | proto::SignatureScheme::Wss) => Ok(SignatureScheme::Wss),
        Ok(proto::SignatureScheme::StandardWebhooks) => Ok(SignatureScheme::StandardWebhooks),
        Err(_) => Err(invalid(
            "signature_scheme",
            format!("{value} is not a known scheme; use SIGNATURE_SCHEME_WSS or SIGNATURE_SCHEME_STANDARD_WEBHOOKS"),
        )),
    }
}

pub fn ordering_from_proto(value: i32) -> Result<Ordering, DomainError> {
    match proto::Ordering::try_from(value) {
        Ok(proto::Ordering::Unordered) => Ok(Ordering::Unordered),
        Ok(proto::Ordering::Fifo) => Ok(Ordering::Fifo),
        Err(_) => Err(invalid("ordering", format!("{value} is not a known ordering; use ORDERING_UNORDERED or ORDERING_FIFO"))),
    }
}

pub fn ordering_to_proto(value: Ordering) -> proto::Ordering {
    match value {
        Ordering::Unordered => proto::Ordering::Unordered,
        Ordering::Fifo => proto::Ordering::Fifo,
    }
}

pub fn scheme_to_proto(value: SignatureScheme) -> proto::SignatureScheme {
    match value {
        SignatureScheme::Wss => proto::SignatureScheme::Wss,
        SignatureScheme::StandardWebhooks => proto::SignatureScheme::StandardWebhooks,
    }
}

pub fn headers_from_proto(headers: HashMap<String, String>) -> BTreeMap<String, String> {
    headers.into_iter().collect()
}

pub fn tenant_to_proto(tenant: Tenant) -> proto::Tenant {
    proto::Tenant {
        tenant_id: tenant.id,
        display_name: tenant.display_name,
        default_retry_policy_id: tenant.default_retry_policy_id,
        disabled: tenant.disabled,
        created_at: timestamp(tenant.created_at_ms),
        updated_at: timestamp(tenant.updated_at_ms),
        etag: String::new(),
    }
}

/// A record's version as its etag: opaque to clients, who only pass it back.
pub fn etag(version: u64) -> String {
    version.to_string()
}

/// An etag a client passed back; empty: no check.
pub fn etag_from_proto(value: &str) -> Result<Option<u64>, DomainError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| invalid("etag", "is not an etag this service returned; pass the resource's etag unchanged"))
}

pub fn versioned_tenant_to_proto(tenant: Versioned<Tenant>) -> proto::Tenant {
    proto::Tenant { etag: etag(tenant.version), ..tenant_to_proto(tenant.value) }
}

pub fn versioned_webhook_to_proto(webhook: Versioned<Webhook>) -> proto::Webhook {
    proto::Webhook { etag: etag(webhook.version), ..webhook_to_proto(webhook.value) }
}

pub fn versioned_policy_to_proto(policy: Versioned<RetryPolicy>) -> proto::RetryPolicy {
    proto::RetryPolicy { etag: etag(policy.version), ..policy_to_proto(policy.value) }
}

/// The paths an update mask names, checked against the fields the request may change. `None`:
/// no mask (every field set in the request changes).
pub fn update_mask(mask: Option<&prost_types::FieldMask>, allowed: &[&str]) -> Result<Option<Vec<String>>, DomainError> {
    let Some(mask) = mask else { return Ok(None) };
    for path in &mask.paths {
        if !allowed.contains(&path.as_str()) {
            return Err(invalid(
                "update_mask",
                format!("{path:?} is not a field this update can change; use one of: {}", allowed.join(", ")),
            ));
        }
    }
    Ok(Some(mask.paths.clone()))
}

/// What an update does with one optional field under `mask`: without a mask, the request's value
/// when set; with one, the value (or the default when unset) if the mask names `path`, else
/// nothing.
pub fn masked<T: Default>(mask: &Option<Vec<String>>, path: &str, value: Option<T>) -> Option<T> {
    match mask {
        None => value,
        Some(paths) if paths.iter().any(|p| p == path) => Some(value.unwrap_or_default()),
        Some(_) => None,
    }
}

/// The wire enum of a dead-letter reason string (UNSPECIFIED for one this release does not know).
pub fn reason_to_proto(reason: &str) -> proto::DeadLetterReason {
    use crate::deadletter::Reason;
    let Some(reason) = Reason::parse(reason) else { return proto::DeadLetterReason::Unspecified };
    match reason {
        Reason::MaxAttemptsExhausted => proto::DeadLetterReason::MaxAttemptsExhausted,
        Reason::Gone => proto::DeadLetterReason::Gone,
        Reason::WebhookDeleted => proto::DeadLetterReason::WebhookDeleted,
        Reason::WebhookDisabled => proto::DeadLetterReason::WebhookDisabled,
        Reason::TenantDisabled => proto::DeadLetterReason::TenantDisabled,
        Reason::UnknownTenant => proto::DeadLetterReason::UnknownTenant,
        Reason::MissingField => proto::DeadLetterReason::MissingField,
        Reason::InvalidField => proto::DeadLetterReason::InvalidField,
        Reason::DataNotJson => proto::DeadLetterReason::DataNotJson,
        Reason::TooLarge => proto::DeadLetterReason::TooLarge,
        Reason::TooManyFields => proto::DeadLetterReason::TooManyFields,
        Reason::TooDeep => proto::DeadLetterReason::TooDeep,
        Reason::EntryDeleted => proto::DeadLetterReason::EntryDeleted,
        Reason::FilterError => proto::DeadLetterReason::FilterError,
        Reason::TransformError => proto::DeadLetterReason::TransformError,
        Reason::Poison => proto::DeadLetterReason::Poison,
    }
}

/// The reason string of a wire enum value; `None` for UNSPECIFIED, an error for an unknown number.
pub fn reason_from_proto(field: &'static str, value: i32) -> Result<Option<crate::deadletter::Reason>, DomainError> {
    use crate::deadletter::Reason;
    match proto::DeadLetterReason::try_from(value) {
        Ok(proto::DeadLetterReason::Unspecified) => Ok(None),
        Ok(known) => Ok(Reason::ALL.into_iter().find(|r| reason_to_proto(r.as_str()) == known)),
        Err(_) => Err(invalid(field, format!("{value} is not a DeadLetterReason"))),
    }
}

/// The wire enum of an attempt's error class.
pub fn error_kind_to_proto(kind: &ErrorKind) -> proto::ErrorKind {
    match kind {
        ErrorKind::Connect => proto::ErrorKind::Connect,
        ErrorKind::Timeout => proto::ErrorKind::Timeout,
        ErrorKind::Io => proto::ErrorKind::Io,
        ErrorKind::Tls => proto::ErrorKind::Tls,
        ErrorKind::Protocol => proto::ErrorKind::Protocol,
        ErrorKind::Dns => proto::ErrorKind::Dns,
        ErrorKind::RefusedTarget => proto::ErrorKind::RefusedTarget,
        ErrorKind::HttpStatus => proto::ErrorKind::HttpStatus,
        ErrorKind::Other => proto::ErrorKind::Other,
        ErrorKind::None | ErrorKind::Unknown(_) => proto::ErrorKind::Unspecified,
    }
}

/// A webhook as Get/List/Update return it: without its secret. CreateWebhook and
/// RotateWebhookSecret fill the secret in themselves, the only places it is shown.
pub fn webhook_to_proto(webhook: Webhook) -> proto::Webhook {
    let previous_secret_expires_at = webhook.previous_secret_at(crate::clock::now_ms()).and(timestamp(webhook.previous_secret_until_ms));
    proto::Webhook {
        previous_secret_expires_at,
        webhook_id: webhook.id,
        tenant_id: webhook.tenant_id,
        url: webhook.url,
        event_types: webhook.event_types,
        filter: webhook.filter,
        transform: webhook.transform,
        retry_policy_id: webhook.retry_policy_id,
        headers: webhook.headers.into_iter().collect(),
        description: webhook.description,
        enabled: webhook.enabled,
        signature_scheme: scheme_to_proto(webhook.signature_scheme) as i32,
        secret: String::new(),
        has_client_key: webhook.client_key.is_some(),
        client_certificate: webhook.client_certificate,
        // Write-only, like the secret.
        client_key: String::new(),
        disabled_reason: webhook.disabled_reason,
        ordering: ordering_to_proto(webhook.ordering) as i32,
        rate_limit_per_second: webhook.rate_limit_per_second,
        created_at: timestamp(webhook.created_at_ms),
        updated_at: timestamp(webhook.updated_at_ms),
        etag: String::new(),
    }
}

pub fn policy_to_proto(policy: RetryPolicy) -> proto::RetryPolicy {
    proto::RetryPolicy {
        policy_id: policy.id,
        max_attempts: policy.max_attempts,
        initial_backoff: Some(duration_to_proto(policy.initial_backoff)),
        max_backoff: Some(duration_to_proto(policy.max_backoff)),
        multiplier: policy.multiplier,
        jitter: policy.jitter,
        attempt_timeout: Some(duration_to_proto(policy.attempt_timeout)),
        etag: String::new(),
    }
}

pub fn attempt_to_proto(attempt: AttemptRecord) -> proto::Attempt {
    proto::Attempt {
        attempt: attempt.attempt,
        started_at: timestamp(attempt.started_at_ms),
        duration: Some(duration_to_proto(Duration::from_millis(attempt.duration_ms))),
        status_code: u32::from(attempt.status),
        error_kind_code: error_kind_to_proto(&attempt.error_kind).into(),
        error_kind: attempt.error_kind.to_string(),
        error: attempt.error,
        response_excerpt: attempt.response_excerpt,
    }
}

/// A dead-letter record as listed. `raw_fields` has no wire field of its own: for a rejected
/// entry the writer already rendered them into `body`.
pub fn dead_letter_to_proto(record: DeadLetter) -> proto::DeadLetter {
    proto::DeadLetter {
        dead_letter_id: record.id,
        reason_code: reason_to_proto(&record.reason).into(),
        reason: record.reason,
        detail: record.detail,
        tenant_id: record.tenant_id,
        webhook_id: record.webhook_id,
        event_id: record.event_id,
        event_type: record.event_type,
        stream_entry_id: record.stream_entry_id,
        dead_lettered_at: timestamp(record.dead_lettered_at_ms),
        body: record.body,
        attempts: record.attempts.into_iter().map(attempt_to_proto).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_of(err: DomainError) -> String {
        match err {
            DomainError::Invalid { .. } => err.to_string(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn page_size_defaults_to_100_and_clamps_to_1000() {
        assert_eq!(page_size(0), 100);
        assert_eq!(page_size(1), 1);
        assert_eq!(page_size(1000), 1000);
        assert_eq!(page_size(1001), 1000);
        assert_eq!(page_size(u32::MAX), 1000);
    }

    #[test]
    fn durations_convert_both_ways_and_refuse_invalid_values() {
        let d = |seconds, nanos| PbDuration { seconds, nanos };
        assert_eq!(duration_from_proto("x", &d(5, 0)).unwrap(), Duration::from_secs(5));
        assert_eq!(duration_from_proto("x", &d(0, 250_000_000)).unwrap(), Duration::from_millis(250));
        assert_eq!(duration_from_proto("x", &d(1, 999_999_999)).unwrap(), Duration::new(1, 999_999_999));
        assert!(message_of(duration_from_proto("initial_backoff", &d(-1, 0)).unwrap_err()).starts_with("initial_backoff: "));
        assert!(duration_from_proto("x", &d(0, -5)).is_err());
        assert!(message_of(duration_from_proto("max_backoff", &d(0, 1_000_000_000)).unwrap_err()).starts_with("max_backoff: "));
        let back = duration_to_proto(Duration::from_millis(1500));
        assert_eq!((back.seconds, back.nanos), (1, 500_000_000));
        let round = Duration::new(36_000, 123);
        assert_eq!(duration_from_proto("x", &duration_to_proto(round)).unwrap(), round);
    }

    #[test]
    fn timestamps_split_milliseconds() {
        let ts = timestamp(1_767_225_600_123).unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1_767_225_600, 123_000_000));
        assert!(timestamp(0).is_none());
    }

    #[test]
    fn schemes_map_unspecified_to_wss_and_refuse_unknown_numbers() {
        assert_eq!(scheme_from_proto(0).unwrap(), SignatureScheme::Wss);
        assert_eq!(scheme_from_proto(1).unwrap(), SignatureScheme::Wss);
        assert_eq!(scheme_from_proto(2).unwrap(), SignatureScheme::StandardWebhooks);
        assert!(message_of(scheme_from_proto(7).unwrap_err()).starts_with("signature_scheme: "));
        assert_eq!(scheme_to_proto(SignatureScheme::Wss) as i32, 1);
    }

    #[test]
    fn orderings_map_both_ways_and_refuse_unknown_numbers() {
        assert_eq!(ordering_from_proto(0).unwrap(), Ordering::Unordered);
        assert_eq!(ordering_from_proto(1).unwrap(), Ordering::Fifo);
        assert!(message_of(ordering_from_proto(2).unwrap_err()).starts_with("ordering: "));
        assert_eq!(ordering_to_proto(Ordering::Fifo) as i32, 1);
    }

    #[test]
    fn optional_ids_and_lengths() {
        assert!(optional_id("default_retry_policy_id", "").is_ok());
        assert!(optional_id("default_retry_policy_id", "fast").is_ok());
        assert!(message_of(optional_id("retry_policy_id", "Fast!").unwrap_err()).starts_with("retry_policy_id: "));
        assert!(max_chars("display_name", &"é".repeat(256), 256).is_ok());
        assert!(max_chars("display_name", &"é".repeat(257), 256).is_err());
        assert!(required_ref("webhook_id", "").is_err());
        assert!(required_ref("webhook_id", "wh abc").is_err());
        assert!(required_ref("webhook_id", "wh_abc").is_ok());
    }

    #[test]
    fn webhooks_leave_the_secret_out() {
        let webhook = Webhook {
            id: "wh_1".into(),
            tenant_id: "acme".into(),
            url: "https://example.com/".into(),
            event_types: vec!["order.*".into()],
            filter: "event.data.n > 1".into(),
            transform: String::new(),
            retry_policy_id: String::new(),
            headers: BTreeMap::from([("X-A".to_owned(), "1".to_owned())]),
            description: String::new(),
            enabled: true,
            disabled_reason: String::new(),
            signature_scheme: SignatureScheme::StandardWebhooks,
            secret: model::Secret::new("whsec_c2VjcmV0c2VjcmV0c2VjcmV0".into()),
            previous_secret: None,
            previous_secret_until_ms: 0,
            client_certificate: String::new(),
            client_key: None,
            ordering: Ordering::Fifo,
            rate_limit_per_second: 20,
            created_at_ms: 1000,
            updated_at_ms: 2000,
        };
        let out = webhook_to_proto(webhook);
        assert_eq!(out.secret, "");
        assert_eq!((out.ordering, out.rate_limit_per_second), (proto::Ordering::Fifo as i32, 20));
        assert_eq!(out.signature_scheme, proto::SignatureScheme::StandardWebhooks as i32);
        assert_eq!(out.headers.get("X-A").map(String::as_str), Some("1"));
        assert_eq!((out.filter.as_str(), out.transform.as_str()), ("event.data.n > 1", ""));
        assert_eq!(out.updated_at.unwrap().seconds, 2);
    }

    #[test]
    fn dead_letters_carry_their_attempts() {
        let record = DeadLetter {
            id: "9-0".into(),
            reason: "max_attempts_exhausted".into(),
            dead_lettered_at_ms: 5_000,
            attempts: vec![AttemptRecord { attempt: 1, started_at_ms: 4_000, duration_ms: 1_250, status: 503, ..Default::default() }],
            ..Default::default()
        };
        let out = dead_letter_to_proto(record);
        assert_eq!(out.dead_letter_id, "9-0");
        assert_eq!(out.dead_lettered_at.unwrap().seconds, 5);
        let attempt = &out.attempts[0];
        assert_eq!(attempt.status_code, 503);
        let duration = attempt.duration.unwrap();
        assert_eq!((duration.seconds, duration.nanos), (1, 250_000_000));
    }
}
