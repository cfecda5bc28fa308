//! Signing and verifying webhook requests: pure functions, no I/O, no clock of their own.
//!
//! # The wss scheme (docs/contract.md §3)
//!
//! ```text
//! X-WSS-Signature = lowercase hex( HMAC-SHA256( key     = UTF-8 bytes of the shared secret,
//!                                               message = X-WSS-Timestamp value ++ raw body ) )
//! ```
//!
//! **Why the timestamp is inside the MAC.** A signature over the body alone proves who wrote the
//! body, but not *when*: anyone who once saw a request could replay it forever. Putting the
//! timestamp into the signed message binds the two, so a receiver that rejects stale timestamps
//! (default: more than 300 s away from its clock, in either direction) also rejects replays, and an
//! attacker cannot freshen an old request by editing its timestamp header. The timestamp is signed
//! *as sent* — its exact header bytes, not a re-rendering of the parsed instant — so sender and
//! receiver never have to agree on a canonical form, and ISO 8601 senders work as well as epoch
//! ones. There is no separator (the contract predates this code and the vectors pin the bytes); it
//! costs nothing in practice, because moving bytes across the timestamp/body boundary would have
//! to leave a timestamp that still parses *and* is within the tolerance, and bodies are JSON.
//! The body is likewise the *raw* bytes received: re-serialising parsed JSON changes whitespace and
//! key order and breaks the signature (the `whitespace-significant` vector guards this).
//!
//! **Why the comparison is constant-time.** A byte-by-byte `==` that stops at the first difference
//! leaks, through response timing, how many leading bytes of a forged signature were right; with
//! enough tries an attacker learns a valid signature byte by byte. [`subtle::ConstantTimeEq`] takes
//! the same time whatever the inputs, and every candidate is examined even after one matched.
//!
//! **Why the header may carry several signatures.** Rotating a secret cannot update the sender and
//! every receiver at the same instant. During the overlap window the rotation asked for, the sender
//! signs each request with both secrets and sends `new,old`; a receiver still on the old secret and
//! one already on the new secret both find a match, so the receiver can be redeployed at any moment
//! in the window. Afterwards only the new signature is sent. A receiver therefore accepts when
//! *any* comma-separated value matches, and a value that is not 64 hex characters simply does not
//! match (it is not an error: a future sender may add other kinds of values).
//!
//! # The Standard Webhooks scheme
//!
//! A webhook may choose [Standard Webhooks](https://www.standardwebhooks.com/) instead, so that
//! receivers can use that ecosystem's libraries: headers `webhook-id`, `webhook-timestamp` (epoch
//! seconds), `webhook-signature: v1,<base64>` (several space-separated), the MAC taken over
//! `id.timestamp.body` with the key being the base64-decoded part of a `whsec_…` secret.
//!
//! [`generate_secret`] makes `whsec_` + base64 of 32 random bytes, which is a valid key for both
//! schemes: the wss scheme uses the whole string's UTF-8 bytes, Standard Webhooks the decoded bytes.
//!
//! The signers ([`WssSigner`], [`StandardSigner`]) hold the HMAC state after the key has been
//! absorbed and clone it per message, so a delivery pipeline keys once per webhook, not per message.
//! Neither `Debug` output nor any error message ever contains a secret.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

/// Header carrying the moment the attempt was signed: Unix epoch seconds (receivers also accept
/// RFC 3339).
pub const TIMESTAMP_HEADER: &str = "X-WSS-Timestamp";
/// Header carrying one or more comma-separated lowercase-hex signatures.
pub const SIGNATURE_HEADER: &str = "X-WSS-Signature";
/// How far a receiver's clock may be from the signed timestamp, in either direction.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Prefix of Standard Webhooks secrets (and of the secrets [`generate_secret`] makes).
const WHSEC_PREFIX: &str = "whsec_";
/// Fewest key bytes a Standard Webhooks secret may decode to.
const MIN_STANDARD_KEY_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Standard alphabet; decodes with or without `=` padding, since secrets get copied by hand.
const BASE64_LENIENT: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (long ones are hashed first), so this cannot fail.
    HmacSha256::new_from_slice(key).expect("HMAC-SHA256 accepts keys of any length")
}

// ---------------------------------------------------------------------------------------------
// The wss scheme
// ---------------------------------------------------------------------------------------------

/// The wss scheme's signer for one secret. It keeps the key, not HMAC's keyed state (two
/// SHA-256 states and a block buffer, ~150 bytes): a routing snapshot holds one per webhook,
/// 100,000 of them in a large configuration, and keying per message costs two SHA-256 blocks,
/// well under a microsecond.
#[derive(Clone)]
pub struct WssSigner {
    key: Box<[u8]>,
}

impl WssSigner {
    /// The signer of the UTF-8 bytes of the webhook's secret.
    pub fn new(secret: &[u8]) -> Self {
        WssSigner { key: secret.into() }
    }

    /// The `X-WSS-Signature` value: lowercase hex of HMAC(timestamp bytes ++ body).
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        hex_lower(&self.mac_bytes(timestamp, body))
    }

    fn mac_bytes(&self, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = keyed(&self.key);
        mac.update(timestamp.as_bytes());
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for WssSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WssSigner").finish_non_exhaustive()
    }
}

/// One-shot form of [`WssSigner::sign`].
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    WssSigner::new(secret).sign(timestamp, body)
}

/// Why a request was not accepted as signed by the holder of the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the {TIMESTAMP_HEADER} header is missing")]
    MissingTimestamp,
    #[error("the {SIGNATURE_HEADER} header is missing")]
    MissingSignature,
    /// `value` is the header as received (attacker-controlled; shown escaped).
    #[error("the timestamp {value:?} is neither Unix epoch seconds nor an RFC 3339 date-time with an offset")]
    BadTimestamp { value: String },
    #[error(
        "the timestamp is {age_secs} s old, more than the {tolerance_secs} s tolerance \
         (a replayed request, or the sender's or this machine's clock is wrong)"
    )]
    TooOld { age_secs: u64, tolerance_secs: u64 },
    #[error(
        "the timestamp is {ahead_secs} s in the future, more than the {tolerance_secs} s tolerance \
         (the sender's or this machine's clock is wrong)"
    )]
    TooNew { ahead_secs: u64, tolerance_secs: u64 },
    #[error(
        "no signature matches: check that the secret is the webhook's current one and that the \
         raw body is verified exactly as received, not re-serialised"
    )]
    NoMatch,
    /// Only from [`verify_standard`]: the receiver's own `whsec_` secret is unusable.
    #[error("the receiver's secret is unusable: {0}")]
    Secret(#[from] SecretError),
}

/// Verify per docs/contract.md §3: timestamp is epoch seconds or ISO 8601/RFC 3339 (Z or ±HH:MM offset,
/// optional fraction); |now - ts| <= tolerance both ways; HMAC over the timestamp AS SENT ++ raw
/// body; compared in constant time (subtle) against each comma-separated value of the signature
/// header (trim spaces); any match accepts. A value that is not 64 hex chars simply doesn't match.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), VerifyError> {
    let signatures: Vec<&str> = signature.into_iter().collect();
    verify_wss(secret, timestamp, &signatures, body, tolerance, now)
}

/// Same, finding the two headers case-insensitively in any header list.
///
/// The first timestamp header counts. Every signature header counts: HTTP allows a list-valued
/// header to be split over several lines, which means the same as one comma-joined line.
pub fn verify_headers<'a>(
    secret: &[u8],
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(TIMESTAMP_HEADER) {
            timestamp.get_or_insert(value);
        } else if name.eq_ignore_ascii_case(SIGNATURE_HEADER) {
            signatures.push(value);
        }
    }
    verify_wss(secret, timestamp, &signatures, body, tolerance, now)
}

/// `signatures` holds the raw signature header values (each a comma-separated list); empty means
/// the header was missing.
fn verify_wss(
    secret: &[u8],
    timestamp: Option<&str>,
    signatures: &[&str],
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), VerifyError> {
    let timestamp = timestamp.ok_or(VerifyError::MissingTimestamp)?;
    if signatures.is_empty() {
        return Err(VerifyError::MissingSignature);
    }
    let signed_at = parse_timestamp(timestamp).ok_or_else(|| VerifyError::BadTimestamp { value: timestamp.to_owned() })?;
    check_freshness(signed_at, tolerance, now)?;

    let expected = WssSigner::new(secret).mac_bytes(timestamp, body);
    let candidates = signatures.iter().flat_map(|header| header.split(','));
    let matched = any_match(candidates.map(|c| decode_hex_32(c.trim())), &expected);
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// Compares every decodable candidate with `expected` in constant time, without stopping at the
/// first match. Candidates that failed to decode (`None`) never match.
fn any_match<C: AsRef<[u8]>>(candidates: impl Iterator<Item = Option<C>>, expected: &[u8]) -> bool {
    let mut matched = Choice::from(0);
    for candidate in candidates.flatten() {
        matched |= candidate.as_ref().ct_eq(expected);
    }
    matched.into()
}

fn check_freshness(signed_at: SystemTime, tolerance: Duration, now: SystemTime) -> Result<(), VerifyError> {
    match now.duration_since(signed_at) {
        Ok(age) if age > tolerance => Err(VerifyError::TooOld { age_secs: ceil_secs(age), tolerance_secs: tolerance.as_secs() }),
        Ok(_) => Ok(()),
        Err(ahead) if ahead.duration() > tolerance => {
            Err(VerifyError::TooNew { ahead_secs: ceil_secs(ahead.duration()), tolerance_secs: tolerance.as_secs() })
        }
        Err(_) => Ok(()),
    }
}

/// Whole seconds, rounded up, so that "300.4 s old" is never reported as "300 s, more than 300 s".
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

// ---------------------------------------------------------------------------------------------
// The Standard Webhooks scheme
// ---------------------------------------------------------------------------------------------

/// Standard Webhooks scheme: key = base64-decoded part after `whsec_`; message = id "." ts "." body;
/// output `v1,<base64>`. Keeps the decoded key, as [`WssSigner`] does and for the same reason.
#[derive(Clone)]
pub struct StandardSigner {
    key: Box<[u8]>,
}

/// A Standard Webhooks secret that cannot be used. Messages never include the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "a Standard Webhooks secret must start with `whsec_`: use the secret exactly as \
         CreateWebhook or RotateWebhookSecret returned it"
    )]
    MissingPrefix,
    #[error(
        "the part of the secret after `whsec_` is not valid base64: copy the whole secret again, \
         without added spaces or quotes"
    )]
    NotBase64,
    #[error(
        "the secret decodes to {len} bytes, fewer than the {MIN_STANDARD_KEY_LEN} required: \
         leave the secret out so that one is generated, or use a longer one"
    )]
    TooShort { len: usize },
}

impl StandardSigner {
    /// Decodes a `whsec_<base64>` secret into the HMAC key.
    pub fn new(secret: &str) -> Result<Self, SecretError> {
        let encoded = secret.strip_prefix(WHSEC_PREFIX).ok_or(SecretError::MissingPrefix)?;
        let key = BASE64_LENIENT.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if key.len() < MIN_STANDARD_KEY_LEN {
            return Err(SecretError::TooShort { len: key.len() });
        }
        Ok(StandardSigner { key: key.into() })
    }

    /// The `webhook-signature` value: `v1,` + base64 of HMAC(id "." timestamp "." body).
    pub fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let mac = self.mac_bytes(id, timestamp, body);
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
    }

    fn mac_bytes(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = keyed(&self.key);
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for StandardSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardSigner").finish_non_exhaustive()
    }
}

/// A new random secret: `whsec_` + standard base64 of 32 bytes from the OS generator. It works as
/// the key for both schemes.
///
/// # Panics
/// If the operating system's random number generator fails, which leaves no safe way to go on.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the operating system's random number generator failed");
    format!("{WHSEC_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(key))
}

/// Standard Webhooks verification: headers webhook-id, webhook-timestamp (epoch secs),
/// webhook-signature (space-separated `v1,<b64>` list).
///
/// Entries with another version than `v1`, or whose signature is not base64, never match.
pub fn verify_standard(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), VerifyError> {
    let signer = StandardSigner::new(secret)?;
    let signed_at = parse_epoch_seconds(timestamp).ok_or_else(|| VerifyError::BadTimestamp { value: timestamp.to_owned() })?;
    check_freshness(signed_at, tolerance, now)?;

    let expected = signer.mac_bytes(id, timestamp, body);
    let candidates = signature.split_ascii_whitespace().map(|entry| {
        let b64 = entry.strip_prefix("v1,")?;
        BASE64_LENIENT.decode(b64).ok()
    });
    if any_match(candidates, &expected) {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------------

/// Parses Unix epoch seconds (`1767225600`) or an RFC 3339 date-time with an offset
/// (`2026-01-01T00:00:00Z`, `2026-01-01T01:00:00.25+01:00`). `None` for anything else, including
/// a date-time without an offset, whose instant would depend on the receiver's time zone.
pub fn parse_timestamp(value: &str) -> Option<SystemTime> {
    parse_epoch_seconds(value).or_else(|| parse_rfc3339(value))
}

/// Only ASCII digits: no sign, no fraction, no spaces.
fn parse_epoch_seconds(value: &str) -> Option<SystemTime> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = value.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// `YYYY-MM-DD(T|t| )hh:mm:ss[.fraction](Z|z|±hh:mm)`, as RFC 3339 §5.6 allows.
fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let b = value.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = i64::from(digits(&b[0..4])?);
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?; // 60 is a leap second; the arithmetic rolls it over
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }

    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        // Digits past the ninth are below a nanosecond: accepted, ignored.
        for (i, d) in fraction[..len].iter().take(9).enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &fraction[len..];
    }

    let offset_secs: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };

    let secs = days_from_civil(year, month, day) * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?.checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

/// The number the ASCII digits spell, or `None` if any byte is not a digit.
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |n, &b| b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0')))
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let shifted_month = i64::from((month + 9) % 12); // March = 0 … February = 11
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

// ---------------------------------------------------------------------------------------------
// Hex
// ---------------------------------------------------------------------------------------------

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes exactly 64 hex digits (either case) into 32 bytes.
fn decode_hex_32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const VECTORS: &str = include_str!("../tests/vectors/signatures.json");
    const STANDARD_VECTORS: &str = include_str!("../tests/vectors/standard-webhooks.json");

    /// 2026-01-01T00:00:00Z
    const TS: u64 = 1_767_225_600;
    const SECRET: &[u8] = b"wss_test_secret";
    const BODY: &[u8] = br#"{"order_id":"A-1001","status":"shipped"}"#;

    struct Case {
        name: String,
        secret: String,
        timestamp: String,
        body: Vec<u8>,
        signature: String,
    }

    fn cases(kind: &str) -> Vec<Case> {
        let doc: Value = serde_json::from_str(VECTORS).expect("signatures.json is JSON");
        let list = doc[kind].as_array().expect("a list of cases");
        assert!(!list.is_empty(), "no {kind} cases in the vectors");
        list.iter()
            .map(|c| {
                let field = |k: &str| c[k].as_str().unwrap_or_else(|| panic!("case lacks {k}")).to_owned();
                Case {
                    name: field("name"),
                    secret: field("secret"),
                    timestamp: field("timestamp"),
                    body: base64::engine::general_purpose::STANDARD.decode(field("body_base64")).expect("body_base64 is base64"),
                    signature: field("signature"),
                }
            })
            .collect()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn verify_at(ts: &str, sig: &str, now: SystemTime) -> Result<(), VerifyError> {
        verify(SECRET, Some(ts), Some(sig), BODY, DEFAULT_TOLERANCE, now)
    }

    #[test]
    fn valid_vectors_sign_to_the_published_signature_and_verify() {
        for case in cases("valid") {
            let secret = case.secret.as_bytes();
            assert_eq!(sign(secret, &case.timestamp, &case.body), case.signature, "{}", case.name);
            let signer = WssSigner::new(secret);
            // Twice, to show signing leaves the signer as it was.
            for _ in 0..2 {
                assert_eq!(signer.sign(&case.timestamp, &case.body), case.signature, "{}", case.name);
            }
            let now = parse_timestamp(&case.timestamp).expect(&case.name);
            assert_eq!(
                verify(secret, Some(&case.timestamp), Some(&case.signature), &case.body, DEFAULT_TOLERANCE, now),
                Ok(()),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn invalid_vectors_are_rejected() {
        for case in cases("invalid") {
            let now = parse_timestamp(&case.timestamp).expect(&case.name);
            let result = verify(case.secret.as_bytes(), Some(&case.timestamp), Some(&case.signature), &case.body, DEFAULT_TOLERANCE, now);
            assert_eq!(result, Err(VerifyError::NoMatch), "{}", case.name);
        }
    }

    #[test]
    fn a_signature_over_the_body_alone_fails() {
        let case =
            cases("invalid").into_iter().find(|c| c.name.starts_with("body-only-signature")).expect("the body-only-signature vector");
        // The vector really is HMAC(body) — the classic mistake of leaving the timestamp out.
        let mut body_only = keyed(case.secret.as_bytes());
        body_only.update(&case.body);
        assert_eq!(hex_lower(&body_only.finalize().into_bytes()), case.signature);

        let now = parse_timestamp(&case.timestamp).unwrap();
        let result = verify(case.secret.as_bytes(), Some(&case.timestamp), Some(&case.signature), &case.body, DEFAULT_TOLERANCE, now);
        assert_eq!(result, Err(VerifyError::NoMatch));
    }

    #[test]
    fn tolerance_applies_in_both_directions() {
        let ts = TS.to_string();
        let sig = sign(SECRET, &ts, BODY);
        for accepted in [TS - 300, TS - 299, TS, TS + 299, TS + 300] {
            assert_eq!(verify_at(&ts, &sig, at(accepted)), Ok(()), "now = ts {:+}", accepted as i64 - TS as i64);
        }
        assert_eq!(verify_at(&ts, &sig, at(TS + 301)), Err(VerifyError::TooOld { age_secs: 301, tolerance_secs: 300 }));
        assert_eq!(verify_at(&ts, &sig, at(TS - 301)), Err(VerifyError::TooNew { ahead_secs: 301, tolerance_secs: 300 }));
        // Sub-second overshoot is still an overshoot, and is not reported as "300 s, more than 300 s".
        assert_eq!(
            verify_at(&ts, &sig, at(TS + 300) + Duration::from_millis(1)),
            Err(VerifyError::TooOld { age_secs: 301, tolerance_secs: 300 })
        );
        // A custom tolerance is honoured.
        let tight = verify(SECRET, Some(&ts), Some(&sig), BODY, Duration::from_secs(10), at(TS + 11));
        assert_eq!(tight, Err(VerifyError::TooOld { age_secs: 11, tolerance_secs: 10 }));
    }

    #[test]
    fn stale_timestamp_is_rejected_before_the_signature_is_checked() {
        // A replay with a valid signature must still fail, and say why.
        let ts = TS.to_string();
        let sig = sign(SECRET, &ts, BODY);
        assert!(matches!(verify_at(&ts, &sig, at(TS + 3600)), Err(VerifyError::TooOld { .. })));
    }

    #[test]
    fn rotation_header_new_comma_old_accepts_either_secret() {
        let ts = TS.to_string();
        let (new_secret, old_secret) = (b"new-secret".as_slice(), b"old-secret".as_slice());
        let header = format!("{}, {}", sign(new_secret, &ts, BODY), sign(old_secret, &ts, BODY));
        let check = |secret: &[u8], header: &str| verify(secret, Some(&ts), Some(header), BODY, DEFAULT_TOLERANCE, at(TS));
        assert_eq!(check(new_secret, &header), Ok(()), "receiver already on the new secret");
        assert_eq!(check(old_secret, &header), Ok(()), "receiver still on the old secret");
        assert_eq!(check(b"third-secret", &header), Err(VerifyError::NoMatch));
        // Garbage and empty entries around a good one neither match nor spoil the match.
        let messy = format!(" not-hex ,,{} ,", sign(old_secret, &ts, BODY));
        assert_eq!(check(old_secret, &messy), Ok(()));
        // Uppercase hex is still the same 32 bytes.
        assert_eq!(check(new_secret, &sign(new_secret, &ts, BODY).to_uppercase()), Ok(()));
    }

    #[test]
    fn iso8601_timestamps_with_offsets_and_fractions() {
        let instant = at(TS);
        assert_eq!(parse_timestamp("2026-01-01T00:00:00Z"), Some(instant));
        assert_eq!(parse_timestamp("2026-01-01T01:00:00+01:00"), Some(instant));
        assert_eq!(parse_timestamp("2025-12-31T19:30:00-04:30"), Some(instant));
        assert_eq!(parse_timestamp("2026-01-01t00:00:00z"), Some(instant));
        assert_eq!(parse_timestamp("2026-01-01 00:00:00+00:00"), Some(instant));
        assert_eq!(parse_timestamp("2025-12-31T19:00:00.250-05:00"), Some(instant + Duration::from_millis(250)));
        assert_eq!(parse_timestamp("2026-01-01T00:00:00.1234567891234Z"), Some(instant + Duration::from_nanos(123_456_789)));
        assert_eq!(parse_timestamp("2024-02-29T00:00:00Z"), Some(at(1_709_164_800)));
        // 2000 is a leap year (divisible by 400); 2100 is not (divisible by 100).
        assert_eq!(parse_timestamp("2000-02-29T12:00:00Z"), Some(at(951_825_600)));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(parse_timestamp("1969-12-31T23:59:59Z"), Some(UNIX_EPOCH - Duration::from_secs(1)));
        assert_eq!(parse_timestamp("2000-03-01T00:00:00Z"), Some(at(951_868_800)));

        // Signed as sent: an offset timestamp is its own message, verified at the instant it names.
        let ts = "2026-01-01T01:00:00+01:00";
        let sig = sign(SECRET, ts, BODY);
        assert_ne!(sig, sign(SECRET, "2026-01-01T00:00:00Z", BODY));
        assert_eq!(verify_at(ts, &sig, at(TS)), Ok(()));
        assert_eq!(verify_at(ts, &sig, at(TS + 301)), Err(VerifyError::TooOld { age_secs: 301, tolerance_secs: 300 }));
    }

    #[test]
    fn malformed_timestamps_are_rejected() {
        for bad in [
            "",
            " 1767225600",
            "1767225600 ",
            "+1767225600",
            "-1",
            "1767225600.5",
            "1e9",
            "now",
            "99999999999999999999999",
            "2026-01-01T00:00:00",
            "2026-01-01",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:61Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+0100",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:00Zjunk",
            "2026-1-01T00:00:00Z",
            "2026-01-01T00:00:00+01:00 ",
            "２０２６-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
        let sig = sign(SECRET, "yesterday", BODY);
        assert_eq!(verify_at("yesterday", &sig, at(TS)), Err(VerifyError::BadTimestamp { value: "yesterday".into() }));
    }

    #[test]
    fn missing_headers_are_named() {
        let ts = TS.to_string();
        let sig = sign(SECRET, &ts, BODY);
        assert_eq!(verify(SECRET, None, Some(&sig), BODY, DEFAULT_TOLERANCE, at(TS)), Err(VerifyError::MissingTimestamp));
        assert_eq!(verify(SECRET, Some(&ts), None, BODY, DEFAULT_TOLERANCE, at(TS)), Err(VerifyError::MissingSignature));
        assert_eq!(verify(SECRET, Some(&ts), Some(""), BODY, DEFAULT_TOLERANCE, at(TS)), Err(VerifyError::NoMatch));
    }

    #[test]
    fn verify_headers_finds_headers_case_insensitively() {
        let ts = TS.to_string();
        let sig = sign(SECRET, &ts, BODY);
        let headers = [("content-type", "application/json"), ("x-wss-timestamp", ts.as_str()), ("X-Wss-Signature", sig.as_str())];
        assert_eq!(verify_headers(SECRET, headers, BODY, DEFAULT_TOLERANCE, at(TS)), Ok(()));

        // A signature list split over two header lines means the same as one joined line.
        let old = sign(b"old", &ts, BODY);
        let split = [(TIMESTAMP_HEADER, ts.as_str()), (SIGNATURE_HEADER, old.as_str()), (SIGNATURE_HEADER, sig.as_str())];
        assert_eq!(verify_headers(SECRET, split, BODY, DEFAULT_TOLERANCE, at(TS)), Ok(()));

        assert_eq!(
            verify_headers(SECRET, [("X-WSS-Signature", sig.as_str())], BODY, DEFAULT_TOLERANCE, at(TS)),
            Err(VerifyError::MissingTimestamp)
        );
        assert_eq!(
            verify_headers(SECRET, [("X-WSS-Timestamp", ts.as_str())], BODY, DEFAULT_TOLERANCE, at(TS)),
            Err(VerifyError::MissingSignature)
        );
        let tampered = [("X-WSS-Timestamp", ts.as_str()), ("X-WSS-Signature", sig.as_str())];
        assert_eq!(verify_headers(SECRET, tampered, b"{}", DEFAULT_TOLERANCE, at(TS)), Err(VerifyError::NoMatch));
    }

    #[test]
    fn standard_webhooks_spec_example() {
        let doc: Value = serde_json::from_str(STANDARD_VECTORS).expect("standard-webhooks.json is JSON");
        let cases = doc["valid"].as_array().expect("a list of cases");
        assert!(!cases.is_empty());
        for case in cases {
            let field = |k: &str| case[k].as_str().unwrap_or_else(|| panic!("case lacks {k}"));
            let (secret, id, ts, body, sig) =
                (field("secret"), field("id"), field("timestamp"), field("body").as_bytes(), field("signature"));
            let signer = StandardSigner::new(secret).expect("the spec's secret is valid");
            assert_eq!(signer.sign(id, ts, body), sig, "{}", field("name"));

            let now = parse_timestamp(ts).unwrap();
            let check = |id: &str, sig: &str, body: &[u8], now| verify_standard(secret, id, ts, sig, body, DEFAULT_TOLERANCE, now);
            assert_eq!(check(id, sig, body, now), Ok(()));
            assert_eq!(check(id, &format!("v1,Zm9v v1a,xyz {sig}"), body, now), Ok(()), "space-separated list");
            assert_eq!(check(id, sig, b"{\"test\": 2432232315}", now), Err(VerifyError::NoMatch));
            assert_eq!(check("msg_other", sig, body, now), Err(VerifyError::NoMatch));
            assert_eq!(check(id, &sig.replacen("v1,", "v2,", 1), body, now), Err(VerifyError::NoMatch));
            assert_eq!(check(id, "v1,not base64!", body, now), Err(VerifyError::NoMatch));
            assert!(matches!(check(id, sig, body, now + Duration::from_secs(301)), Err(VerifyError::TooOld { age_secs: 301, .. })));
            assert!(matches!(check(id, sig, body, now - Duration::from_secs(301)), Err(VerifyError::TooNew { ahead_secs: 301, .. })));
            // Standard Webhooks timestamps are epoch seconds only.
            let iso = verify_standard(secret, id, "2021-02-25T15:02:10Z", sig, body, DEFAULT_TOLERANCE, now);
            assert!(matches!(iso, Err(VerifyError::BadTimestamp { .. })));
        }
    }

    #[test]
    fn standard_secrets_are_validated_without_echoing_them() {
        assert_eq!(StandardSigner::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(), SecretError::MissingPrefix);
        assert_eq!(StandardSigner::new("whsec_not*base64").unwrap_err(), SecretError::NotBase64);
        assert_eq!(StandardSigner::new("whsec_c2hvcnQ=").unwrap_err(), SecretError::TooShort { len: 5 });
        // Padding is optional: 16 bytes, with and without `==`.
        assert!(StandardSigner::new("whsec_MDEyMzQ1Njc4OWFiY2RlZg==").is_ok());
        assert!(StandardSigner::new("whsec_MDEyMzQ1Njc4OWFiY2RlZg").is_ok());

        let secret = "whsec_c2hvcnQ=";
        let err = verify_standard(secret, "id", "1", "v1,x", b"", DEFAULT_TOLERANCE, at(1)).unwrap_err();
        assert_eq!(err, VerifyError::Secret(SecretError::TooShort { len: 5 }));
        assert!(!err.to_string().contains("c2hvcnQ"), "{err}");
    }

    #[test]
    fn generated_secrets_key_both_schemes_and_differ() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_"), "{a}");
        let decoded = base64::engine::general_purpose::STANDARD.decode(&a["whsec_".len()..]).unwrap();
        assert_eq!(decoded.len(), 32);
        let signer = StandardSigner::new(&a).expect("a generated secret is a valid whsec_ secret");
        let sig = signer.sign("msg_1", "1767225600", BODY);
        assert_eq!(verify_standard(&a, "msg_1", "1767225600", &sig, BODY, DEFAULT_TOLERANCE, at(TS)), Ok(()));
        let ts = TS.to_string();
        let wss_sig = sign(a.as_bytes(), &ts, BODY);
        assert_eq!(verify(a.as_bytes(), Some(&ts), Some(&wss_sig), BODY, DEFAULT_TOLERANCE, at(TS)), Ok(()));
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let wss = format!("{:?}", WssSigner::new(secret.as_bytes()));
        let standard = format!("{:?}", StandardSigner::new(secret).unwrap());
        for shown in [&wss, &standard] {
            assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        }
        assert_eq!(wss, "WssSigner { .. }");
    }

    #[test]
    fn hex_round_trips_and_rejects_wrong_lengths() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 8) as u8);
        assert_eq!(decode_hex_32(&hex_lower(&bytes)), Some(bytes));
        assert_eq!(decode_hex_32(&"a".repeat(63)), None);
        assert_eq!(decode_hex_32(&"a".repeat(65)), None);
        assert_eq!(decode_hex_32(&format!("{}g", "a".repeat(63))), None);
        assert_eq!(decode_hex_32(&"é".repeat(32)), None);
    }

    #[test]
    fn civil_dates_match_known_epochs() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 1, 1) * 86_400, TS as i64);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(days_from_civil(1600, 3, 1), -135_080);
    }
}
