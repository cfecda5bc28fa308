//! What the control plane manages — tenants, webhooks and retry policies — and the rules a value
//! must satisfy before it is stored.
//!
//! Every value that reaches Redis has passed through one of the `validate_*` functions here, so the
//! pipeline can trust what it loads. Validation errors name the gRPC field they concern, because
//! they travel back to the caller as `INVALID_ARGUMENT` with that name.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::DomainError;
use crate::expr::{Filter, Transform};

/// Longest accepted webhook URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Most event-type patterns one webhook may list.
pub const MAX_EVENT_TYPES: usize = 64;
/// Most static headers one webhook may carry.
pub const MAX_HEADERS: usize = 32;
/// The built-in retry policy's id.
pub const DEFAULT_POLICY_ID: &str = "default";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub display_name: String,
    /// Empty: the built-in `default` policy.
    pub default_retry_policy_id: String,
    pub disabled: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// How a webhook's requests are signed (docs/contract.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureScheme {
    #[default]
    Wss,
    StandardWebhooks,
}

/// How attempts to one webhook are ordered (docs/contract.md §9, docs/ordering.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Attempts may overlap, up to the webhook's in-flight cap.
    #[default]
    Unordered,
    /// One attempt at a time, in stream entry order; a failing event holds back the ones after it.
    Fifo,
}

/// The highest `rate_limit_per_second` accepted: beyond it the limit is no limit in practice
/// (the backlog pump takes at most 64 deliveries of a webhook per poll).
pub const MAX_RATE_LIMIT_PER_SECOND: u32 = 100_000;

/// Checks a webhook's rate limit (0: unlimited).
pub fn validate_rate_limit(rate: u32) -> Result<(), DomainError> {
    if rate > MAX_RATE_LIMIT_PER_SECOND {
        return Err(DomainError::Invalid {
            field: "rate_limit_per_second",
            message: format!("{rate} is over the maximum of {MAX_RATE_LIMIT_PER_SECOND}; use 0 for no limit"),
        });
    }
    Ok(())
}

/// A webhook's signing secret. Its `Debug` never shows the value, so a secret cannot reach a log
/// line through `{:?}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    pub event_types: Vec<String>,
    /// CEL boolean expression over `event`; empty: every event whose type matches.
    /// (`#[serde(default)]`: webhooks stored before filters existed have none.)
    #[serde(default)]
    pub filter: String,
    /// CEL expression over `event` whose value, as JSON, is the request body; empty: the
    /// envelope.
    #[serde(default)]
    pub transform: String,
    /// Empty: the tenant's default policy, else `default`.
    pub retry_policy_id: String,
    pub headers: BTreeMap<String, String>,
    pub description: String,
    pub enabled: bool,
    /// Set when the service disabled the webhook by itself (410 Gone).
    #[serde(default)]
    pub disabled_reason: String,
    pub signature_scheme: SignatureScheme,
    pub secret: Secret,
    /// The secret a rotation replaced, still signed with — after `secret` — until
    /// `previous_secret_until_ms` (docs/contract.md §3). `None` outside an overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<Secret>,
    /// End of the rotation's overlap, Unix milliseconds; 0 without one.
    #[serde(default)]
    pub previous_secret_until_ms: u64,
    /// The client certificate chain (PEM, leaf first) presented to a receiver that asks for one;
    /// empty: none. Public, returned by the control plane.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_certificate: String,
    /// The certificate's private key (PEM): write-only like `secret`, sealed at rest like it,
    /// never returned or logged. Set exactly when `client_certificate` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<Secret>,
    /// FIFO or not (`#[serde(default)]`: webhooks stored before it existed are unordered).
    #[serde(default, skip_serializing_if = "is_unordered")]
    pub ordering: Ordering,
    /// Attempts per second at most, across all instances; 0: unlimited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_limit_per_second: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

fn is_unordered(ordering: &Ordering) -> bool {
    *ordering == Ordering::Unordered
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Webhook {
    /// The previous secret while its overlap lasts at `now_ms`; `None` once it ended.
    pub fn previous_secret_at(&self, now_ms: u64) -> Option<&Secret> {
        self.previous_secret.as_ref().filter(|_| now_ms < self.previous_secret_until_ms)
    }

    /// Forgets a previous secret whose overlap has ended, so that it is not kept (or stored) longer
    /// than it is used.
    pub fn drop_expired_secret(&mut self, now_ms: u64) {
        if self.previous_secret_at(now_ms).is_none() {
            self.previous_secret = None;
            self.previous_secret_until_ms = 0;
        }
    }

    /// Replaces the secret with `new`, keeping the current one for `overlap` from `now_ms` (none
    /// for a zero overlap). A previous secret still in its overlap is dropped: only the secret
    /// being replaced stays valid alongside the new one.
    pub fn rotate_secret(&mut self, new: Secret, overlap: Duration, now_ms: u64) {
        let old = std::mem::replace(&mut self.secret, new);
        if overlap.is_zero() {
            self.previous_secret = None;
            self.previous_secret_until_ms = 0;
        } else {
            self.previous_secret = Some(old);
            self.previous_secret_until_ms = now_ms.saturating_add(overlap.as_millis() as u64);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub id: String,
    pub max_attempts: u32,
    #[serde(with = "millis")]
    pub initial_backoff: Duration,
    #[serde(with = "millis")]
    pub max_backoff: Duration,
    pub multiplier: f64,
    pub jitter: f64,
    #[serde(with = "millis")]
    pub attempt_timeout: Duration,
}

impl RetryPolicy {
    /// The built-in policy of docs/contract.md §4: 5 s, ×5, capped at 10 h, 8 attempts, jitter 0.2, 15 s.
    pub fn builtin_default() -> Self {
        Self {
            id: DEFAULT_POLICY_ID.to_owned(),
            max_attempts: 8,
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(10 * 3600),
            multiplier: 5.0,
            jitter: 0.2,
            attempt_timeout: Duration::from_secs(15),
        }
    }

    /// Checks every field against its documented range, naming the first that is out of it.
    pub fn validate(&self) -> Result<(), DomainError> {
        validate_id("policy_id", &self.id)?;
        if !(1..=50).contains(&self.max_attempts) {
            return Err(invalid("max_attempts", "must be between 1 and 50"));
        }
        let ms = Duration::from_millis;
        check_range("initial_backoff", self.initial_backoff, ms(100), Duration::from_secs(86_400))?;
        check_range("max_backoff", self.max_backoff, self.initial_backoff, Duration::from_secs(7 * 86_400))
            .map_err(|_| invalid("max_backoff", "must be at least initial_backoff and at most 7 days"))?;
        check_range("attempt_timeout", self.attempt_timeout, ms(100), Duration::from_secs(300))?;
        if !(1.0..=100.0).contains(&self.multiplier) {
            return Err(invalid("multiplier", "must be between 1.0 and 100.0"));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(invalid("jitter", "must be between 0.0 and 1.0"));
        }
        Ok(())
    }
}

fn check_range(field: &'static str, value: Duration, min: Duration, max: Duration) -> Result<(), DomainError> {
    if value < min || value > max {
        return Err(invalid(field, format!("must be between {} and {}", humantime::format_duration(min), humantime::format_duration(max))));
    }
    Ok(())
}

pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> DomainError {
    DomainError::Invalid { field, message: message.into() }
}

/// Tenant and policy ids: `[a-z0-9][a-z0-9_-]{0,63}` (docs/contract.md §1).
pub fn is_valid_id(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && matches!(bytes[0], b'a'..=b'z' | b'0'..=b'9')
        && bytes.iter().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

pub fn validate_id(field: &'static str, value: &str) -> Result<(), DomainError> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if !is_valid_id(value) {
        return Err(invalid(
            field,
            format!("{value:?} is not a valid id: use 1 to 64 of a-z, 0-9, '_' and '-', starting with a letter or digit"),
        ));
    }
    Ok(())
}

/// What the control plane accepts as a webhook URL. Whether the host's addresses may be dialled is
/// decided again at every connect (see `http::GuardedResolver`), since DNS answers change.
pub fn validate_url(value: &str, allow_http: bool) -> Result<(), DomainError> {
    const FIELD: &str = "url";
    if value.is_empty() {
        return Err(invalid(FIELD, "is required"));
    }
    if value.len() > MAX_URL_LEN {
        return Err(invalid(FIELD, format!("is {} bytes long; at most {MAX_URL_LEN} are allowed", value.len())));
    }
    let uri: ureq::http::Uri = value.parse().map_err(|e| invalid(FIELD, format!("{value:?} is not a valid URL: {e}")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        Some("http") => return Err(invalid(FIELD, "http:// URLs are refused; use https:// (or start wss with WSS_ALLOW_HTTP=true)")),
        _ => return Err(invalid(FIELD, format!("{value:?} must start with https://"))),
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid(FIELD, "has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(invalid(FIELD, "must not carry user:password@; send credentials in a static header instead"));
    }
    if authority.host().is_empty() {
        return Err(invalid(FIELD, "has no host"));
    }
    // An IPv6 zone id (`[fe80::1%25eth0]`) names an interface of this machine, not an address:
    // nothing a receiver could be.
    if authority.host().starts_with('[') && authority.host().contains('%') {
        return Err(invalid(
            FIELD,
            "an IPv6 address with a zone id (%25…) names a local interface and cannot be a webhook target; give the address alone",
        ));
    }
    // The port as written (`Authority::port` hides one that does not fit in 16 bits).
    let after_host = authority.as_str().rsplit_once(']').map_or(authority.as_str(), |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        match port.parse::<u16>() {
            Ok(0) => return Err(invalid(FIELD, "port 0 cannot be dialled")),
            Ok(_) => {}
            Err(_) if port.is_empty() => return Err(invalid(FIELD, "has an empty port")),
            Err(_) => return Err(invalid(FIELD, format!("port {port:?} is not a port number (1 to 65535)"))),
        }
    }
    Ok(())
}

/// Headers a webhook may not set because wss owns them (docs/contract.md §2).
fn is_reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("x-wss-")
        || lower.starts_with("webhook-")
        || matches!(lower.as_str(), "host" | "content-length" | "content-type" | "transfer-encoding" | "connection" | "user-agent")
}

pub fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), DomainError> {
    const FIELD: &str = "headers";
    if headers.len() > MAX_HEADERS {
        return Err(invalid(FIELD, format!("has {} entries; at most {MAX_HEADERS} are allowed", headers.len())));
    }
    for (name, value) in headers {
        if ureq::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(FIELD, format!("{name:?} is not a valid header name")));
        }
        if is_reserved_header(name) {
            return Err(invalid(FIELD, format!("{name:?} is set by wss itself and cannot be overridden")));
        }
        if ureq::http::HeaderValue::from_str(value).is_err() || value.len() > 8192 {
            return Err(invalid(FIELD, format!("the value of {name:?} is not a valid header value (visible ASCII, at most 8 KiB)")));
        }
    }
    Ok(())
}

pub fn validate_event_types(patterns: &[String]) -> Result<(), DomainError> {
    const FIELD: &str = "event_types";
    if patterns.len() > MAX_EVENT_TYPES {
        return Err(invalid(FIELD, format!("has {} patterns; at most {MAX_EVENT_TYPES} are allowed", patterns.len())));
    }
    for pattern in patterns {
        let ok = !pattern.is_empty() && pattern.len() <= 256 && pattern.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(invalid(
                FIELD,
                format!("{pattern:?} is not a valid pattern: use 1 to 256 visible ASCII characters, '*' for any run"),
            ));
        }
    }
    Ok(())
}

/// A `filter` or `transform` as stored: one of whitespace only is none.
pub fn normalize_expression(source: String) -> String {
    if source.trim().is_empty() {
        String::new()
    } else {
        source
    }
}

/// Compiles a webhook's `filter`; `None` when it has none. The error names the field and carries
/// the compiler's message (with line, column and caret for a syntax error).
pub fn compile_filter(source: &str) -> Result<Option<Filter>, DomainError> {
    if source.is_empty() {
        return Ok(None);
    }
    Filter::compile(source).map(Some).map_err(|e| invalid("filter", e.to_string()))
}

/// Compiles a webhook's `transform`; `None` when it has none.
pub fn compile_transform(source: &str) -> Result<Option<Transform>, DomainError> {
    if source.is_empty() {
        return Ok(None);
    }
    Transform::compile(source).map(Some).map_err(|e| invalid("transform", e.to_string()))
}

/// An event-type pattern: `*` matches any run of characters (dots included), every other
/// character matches itself. Only the text is kept (16 bytes and the text, instead of a vector
/// of its parts): a snapshot holds one per pattern of every webhook, and splitting a short
/// pattern at its stars while matching costs no allocation.
#[derive(Debug, Clone)]
pub struct TypePattern(Box<str>);

impl TypePattern {
    pub fn new(pattern: &str) -> Self {
        Self(pattern.into())
    }

    pub fn matches(&self, value: &str) -> bool {
        let pattern = &*self.0;
        let anchored_start = !pattern.starts_with('*');
        let anchored_end = !pattern.ends_with('*');
        let mut parts = pattern.split('*').filter(|p| !p.is_empty()).peekable();
        if parts.peek().is_none() {
            // "" or only stars: a pure-star pattern matches everything, "" only "".
            return !anchored_start || value.is_empty();
        }
        let mut rest = value;
        let mut first = true;
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            if first && anchored_start {
                first = false;
                let Some(after) = rest.strip_prefix(part) else { return false };
                rest = after;
                if last && anchored_end {
                    return rest.is_empty();
                }
                continue;
            }
            first = false;
            if last && anchored_end {
                return rest.ends_with(part);
            }
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::field_of;

    #[test]
    fn ids_follow_the_spec_pattern() {
        for ok in ["acme", "a", "0-tenant_x", &"a".repeat(64)] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in ["", "Acme", "-acme", "_a", "ac me", "acmé", &"a".repeat(65)] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_host_userinfo_and_length() {
        assert!(validate_url("https://example.com/hook", false).is_ok());
        assert!(validate_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert_eq!(field_of(validate_url("http://example.com/", false).unwrap_err()), "url");
        for bad in [
            "",
            "ftp://example.com/",
            "example.com/hook",
            "https://user:pw@example.com/",
            "https://example.com:0/",
            "https://example.com:99999/",
            "https://example.com:65536/",
            "https:///nohost",
            "https://[::1%25lo]:18443/h",
            "https://[fe80::1%25eth0]/",
            "https://[fe80::1%eth0]/",
        ] {
            assert!(validate_url(bad, true).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(validate_url(&long, false).is_err());
    }

    #[test]
    fn reserved_headers_are_refused() {
        let mut h = BTreeMap::new();
        h.insert("Authorization".to_owned(), "Bearer abc".to_owned());
        assert!(validate_headers(&h).is_ok());
        for name in ["X-WSS-Signature", "x-wss-anything", "Host", "content-type", "Content-Length", "webhook-id"] {
            let mut h = BTreeMap::new();
            h.insert(name.to_owned(), "v".to_owned());
            assert_eq!(field_of(validate_headers(&h).unwrap_err()), "headers", "{name}");
        }
        let mut h = BTreeMap::new();
        h.insert("X-Ok".to_owned(), "line\nbreak".to_owned());
        assert!(validate_headers(&h).is_err());
    }

    #[test]
    fn type_patterns_match_globs() {
        let cases = [
            ("order.*", "order.created", true),
            ("order.*", "order.status.updated", true),
            ("order.*", "orders.created", false),
            ("*.created", "user.created", true),
            ("*.created", "user.created.late", false),
            ("order.shipped", "order.shipped", true),
            ("order.shipped", "order.shipped2", false),
            ("*", "anything", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
        ];
        for (pattern, value, expected) in cases {
            assert_eq!(TypePattern::new(pattern).matches(value), expected, "{pattern} vs {value}");
        }
    }

    #[test]
    fn expressions_compile_or_name_their_field() {
        assert!(compile_filter("").unwrap().is_none());
        assert!(compile_transform("").unwrap().is_none());
        assert!(compile_filter("event.data.status == 'shipped'").unwrap().is_some());
        assert!(compile_transform("{'id': event.id}").unwrap().is_some());
        assert_eq!(normalize_expression("  \n ".into()), "");
        assert_eq!(normalize_expression(" true ".into()), " true ");
        let err = compile_filter("event.data.").unwrap_err();
        assert_eq!(field_of(compile_filter("event.data.").unwrap_err()), "filter");
        assert!(err.to_string().starts_with("filter: syntax error at line 1, column 12: "), "{err}");
        assert_eq!(field_of(compile_transform("{'a': }").unwrap_err()), "transform");
        assert_eq!(field_of(compile_filter("'not a bool'").unwrap_err()), "filter");
        let long = "x".repeat(crate::expr::MAX_SOURCE_BYTES + 1);
        let err = compile_transform(&long).unwrap_err();
        assert!(err.to_string().starts_with("transform: is 4097 bytes long; at most 4096 are allowed"), "{err}");
    }

    #[test]
    fn rotation_keeps_the_replaced_secret_for_the_overlap_only() {
        let stored = r#"{"id":"wh_1","tenant_id":"acme","url":"https://example.com/","event_types":[],"retry_policy_id":"","headers":{},"description":"","enabled":true,"signature_scheme":"wss","secret":"whsec_old","created_at_ms":1,"updated_at_ms":1}"#;
        let mut webhook: Webhook = serde_json::from_str(stored).unwrap();
        assert_eq!((webhook.previous_secret.as_ref(), webhook.previous_secret_until_ms), (None, 0), "stored before rotation existed");
        webhook.rotate_secret(Secret::new("whsec_new".into()), Duration::from_secs(60), 1_000);
        assert_eq!(webhook.secret.expose(), "whsec_new");
        assert_eq!(webhook.previous_secret_at(60_999).map(Secret::expose), Some("whsec_old"));
        assert_eq!(webhook.previous_secret_at(61_000), None);
        let json = serde_json::to_string(&webhook).unwrap();
        assert_eq!(serde_json::from_str::<Webhook>(&json).unwrap(), webhook);
        webhook.rotate_secret(Secret::new("whsec_newer".into()), Duration::from_secs(10), 2_000);
        assert_eq!(webhook.previous_secret_at(2_000).map(Secret::expose), Some("whsec_new"), "only the replaced secret stays");
        webhook.drop_expired_secret(12_000);
        assert_eq!((webhook.previous_secret.as_ref(), webhook.previous_secret_until_ms), (None, 0));
        assert!(!serde_json::to_string(&webhook).unwrap().contains("previous_secret\":"), "nothing stored once it ended");
        webhook.rotate_secret(Secret::new("whsec_now".into()), Duration::ZERO, 3_000);
        assert_eq!(webhook.previous_secret_at(3_000), None, "a zero overlap switches at once");
        assert!(!format!("{webhook:?}").contains("whsec_"), "Debug never shows a secret");
    }

    #[test]
    fn webhooks_stored_before_expressions_existed_still_load() {
        let stored = r#"{"id":"wh_1","tenant_id":"acme","url":"https://example.com/","event_types":[],"retry_policy_id":"","headers":{},"description":"","enabled":true,"signature_scheme":"wss","secret":"whsec_x","created_at_ms":1,"updated_at_ms":1}"#;
        let webhook: Webhook = serde_json::from_str(stored).unwrap();
        assert_eq!((webhook.filter.as_str(), webhook.transform.as_str()), ("", ""));
    }

    #[test]
    fn the_builtin_policy_is_valid_and_ranges_are_enforced() {
        RetryPolicy::builtin_default().validate().unwrap();
        let mut p = RetryPolicy::builtin_default();
        p.max_attempts = 0;
        assert_eq!(field_of(p.validate().unwrap_err()), "max_attempts");
        let mut p = RetryPolicy::builtin_default();
        p.max_backoff = Duration::from_secs(1);
        assert_eq!(field_of(p.validate().unwrap_err()), "max_backoff");
        let mut p = RetryPolicy::builtin_default();
        p.jitter = 1.5;
        assert_eq!(field_of(p.validate().unwrap_err()), "jitter");
        let mut p = RetryPolicy::builtin_default();
        p.multiplier = 0.5;
        assert_eq!(field_of(p.validate().unwrap_err()), "multiplier");
    }
}
