//! A stream entry, parsed and checked against the contract of docs/contract.md §1, and the envelope that
//! becomes the request body.
//!
//! Parsing is pure: it returns either a valid [`Event`] or a [`Rejection`] naming the dead-letter
//! reason and what exactly was wrong, which the outcome stage writes to the dead-letter stream.
//!
//! Entries are hostile input: anything may be appended to the stream. The checks run cheapest
//! first and each is bounded by the size limit checked before them: total size
//! (`WSS_MAX_EVENT_BYTES`), field count ([`MAX_FIELDS`]), UTF-8 and the field rules, then the
//! nesting depth of `data` ([`MAX_JSON_DEPTH`], by a linear scan before any parser recurses into
//! it — filters and transforms walk `data` recursively too), and only then the JSON parse.
//!
//! Two field names are reserved for redelivery (`DeliveryService/RedeliverDeadLetter`, see
//! `crate::deadletter`), which puts a dead letter back on the stream as a new entry:
//! [`ONLY_WEBHOOK_FIELD`] restricts routing to one webhook of the event's tenant, and
//! [`CREATED_AT_FIELD`] keeps the event's original `created_at`. They are read here and never
//! become attributes, so filters, transforms and bodies do not see them.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::{deadletter::Reason, domain::model::is_valid_id, streams::RawEntry};

/// Most fields (names with their values) one entry may have: the four of the contract plus
/// attributes. Far more than any producer needs; bounds the work and memory per entry.
pub const MAX_FIELDS: usize = 256;
/// Deepest nesting of arrays and objects in `data`.
pub const MAX_JSON_DEPTH: usize = 64;
pub use crate::reserved::{CREATED_AT_FIELD, ONLY_WEBHOOK_FIELD};
/// The latest time an event may carry, in Unix milliseconds: 9999-12-31T23:59:59.999Z, the last
/// instant RFC 3339 can write. A later one (an entry id, `_wss_created_at_ms`) is refused as
/// `invalid_field`.
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// An event as the rest of the pipeline sees it.
#[derive(Debug)]
pub struct Event {
    /// The stream entry id; acknowledged when every delivery is terminal.
    pub stream_id: String,
    /// The event id receivers dedupe on: the `id` field, else the stream entry id.
    pub id: String,
    pub event_type: String,
    pub tenant: String,
    /// The milliseconds part of the stream entry id.
    pub created_at_ms: u64,
    pub data: Box<RawValue>,
    /// Every other field, visible to filters as `event.attributes`.
    pub attributes: Vec<(String, String)>,
    /// A redelivery's webhook ([`ONLY_WEBHOOK_FIELD`]): only it may receive the event.
    pub only_webhook: Option<String>,
}

/// Why an entry cannot become an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
    /// Whatever of tenant / type / id could be read, for the dead-letter record.
    pub tenant: String,
    pub event_type: String,
    pub event_id: String,
}

pub fn parse_entry(entry: &RawEntry, max_bytes: usize) -> Result<Event, Rejection> {
    let mut rejection = Rejection {
        reason: Reason::InvalidField,
        detail: String::new(),
        tenant: String::new(),
        event_type: String::new(),
        event_id: String::new(),
    };
    let reject = |mut r: Rejection, reason: Reason, detail: String| {
        r.reason = reason;
        r.detail = detail;
        Err(r)
    };
    let Some(fields) = &entry.fields else {
        return reject(rejection, Reason::EntryDeleted, "the entry was deleted from the stream while pending".into());
    };
    // Best-effort context for the record, before any check can fail.
    let lossy =
        |name: &str| fields.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| String::from_utf8_lossy(v).chars().take(256).collect());
    rejection.tenant = lossy("tenant").unwrap_or_default();
    rejection.event_type = lossy("type").unwrap_or_default();
    rejection.event_id = lossy("id").unwrap_or_default();

    let size = entry.size();
    if size > max_bytes {
        return reject(rejection, Reason::TooLarge, format!("the entry is {size} bytes; the limit is {max_bytes} (WSS_MAX_EVENT_BYTES)"));
    }
    if fields.len() > MAX_FIELDS {
        let count = fields.len();
        return reject(rejection, Reason::TooManyFields, format!("the entry has {count} fields; at most {MAX_FIELDS} are allowed"));
    }

    let mut tenant = None;
    let mut event_type = None;
    let mut data = None;
    let mut id = None;
    let mut only_webhook = None;
    let mut created_at = None;
    let mut attributes = Vec::new();
    for (name, value) in fields {
        let Ok(name) = std::str::from_utf8(name) else {
            return reject(rejection, Reason::InvalidField, "a field name is not UTF-8".into());
        };
        let slot = match name {
            "tenant" => &mut tenant,
            "type" => &mut event_type,
            "data" => &mut data,
            "id" => &mut id,
            ONLY_WEBHOOK_FIELD => &mut only_webhook,
            CREATED_AT_FIELD => &mut created_at,
            _ => {
                let Ok(value) = std::str::from_utf8(value) else {
                    return reject(rejection, Reason::InvalidField, format!("attribute {name:?} is not UTF-8 text"));
                };
                attributes.push((name.to_owned(), value.to_owned()));
                continue;
            }
        };
        if slot.is_some() {
            return reject(rejection, Reason::InvalidField, format!("field {name:?} is given twice"));
        }
        *slot = Some(value.as_slice());
    }

    let mut missing: Vec<&str> = Vec::new();
    for (name, value) in [("tenant", tenant), ("type", event_type), ("data", data)] {
        if value.is_none() {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        return reject(rejection, Reason::MissingField, format!("required field(s) missing: {}", missing.join(", ")));
    }
    let (tenant, event_type, data) = (tenant.unwrap_or_default(), event_type.unwrap_or_default(), data.unwrap_or_default());

    let tenant = match std::str::from_utf8(tenant) {
        Ok(t) if is_valid_id(t) => t.to_owned(),
        _ => {
            return reject(rejection, Reason::InvalidField, "tenant must match [a-z0-9][a-z0-9_-]{0,63}".into());
        }
    };
    let event_type = match std::str::from_utf8(event_type) {
        Ok(t) if !t.is_empty() && t.len() <= 256 && t.bytes().all(|b| b.is_ascii_graphic()) => t.to_owned(),
        _ => return reject(rejection, Reason::InvalidField, "type must be 1 to 256 visible ASCII characters".into()),
    };
    let id = match id {
        None => entry.id.clone(),
        Some(raw) => match std::str::from_utf8(raw) {
            Ok(v) if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| (0x21..=0x7e).contains(&b)) => v.to_owned(),
            _ => return reject(rejection, Reason::InvalidField, "id must be 1 to 128 printable ASCII characters".into()),
        },
    };
    let only_webhook = match only_webhook {
        None => None,
        Some(raw) => match std::str::from_utf8(raw) {
            Ok(v) if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) => Some(v.to_owned()),
            _ => return reject(rejection, Reason::InvalidField, format!("{ONLY_WEBHOOK_FIELD} must be a webhook id")),
        },
    };
    let entry_ms = entry.id.split('-').next().and_then(|ms| ms.parse::<u64>().ok()).unwrap_or(0);
    let created_at_ms = match created_at {
        None if entry_ms > MAX_TIME_MS => {
            return reject(
                rejection,
                Reason::InvalidField,
                format!("the entry id {} is a time after year 9999; give the event its time in {CREATED_AT_FIELD}", entry.id),
            );
        }
        None => entry_ms,
        Some(raw) => match std::str::from_utf8(raw).ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) if ms <= MAX_TIME_MS => ms,
            _ => {
                return reject(
                    rejection,
                    Reason::InvalidField,
                    format!("{CREATED_AT_FIELD} must be Unix milliseconds from 0 to {MAX_TIME_MS} (year 9999)"),
                )
            }
        },
    };
    if let Err(depth) = check_depth(data, MAX_JSON_DEPTH) {
        return reject(rejection, Reason::TooDeep, format!("data nests deeper than {MAX_JSON_DEPTH} levels (at least {depth})"));
    }
    let data: Box<RawValue> = match std::str::from_utf8(data)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str::<Box<RawValue>>(text.trim()).map_err(|e| e.to_string()))
    {
        Ok(value) => value,
        Err(e) => return reject(rejection, Reason::DataNotJson, format!("data is not JSON: {e}")),
    };
    Ok(Event { created_at_ms, stream_id: entry.id.clone(), id, event_type, tenant, data, attributes, only_webhook })
}

/// Scans JSON text for the nesting depth of arrays and objects, outside strings, without parsing
/// it; `Err(depth)` as soon as it exceeds `max`. Linear, no recursion, and indifferent to whether
/// the text is valid JSON (the parser decides that afterwards).
pub fn check_depth(json: &[u8], max: usize) -> Result<(), usize> {
    let mut depth = 0usize;
    let mut at = 0;
    while at < json.len() {
        match json[at] {
            b'"' => {
                // Skip the string: to the next quote not escaped by a backslash. String
                // contents are most of a typical payload, so this part is word-at-a-time.
                at += 1;
                loop {
                    match find_quote_or_backslash(&json[at..]) {
                        None => return Ok(()), // unterminated: the parser will say so
                        Some(i) if json[at + i] == b'\\' => at += i + 2,
                        Some(i) => {
                            at += i;
                            break;
                        }
                    }
                    if at >= json.len() {
                        return Ok(());
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

/// The position of the first `"` or `\` in `bytes`, eight bytes at a time (SWAR: a byte of
/// `w ^ pattern` is zero where `w` has the pattern byte, and `(x - 0x01…) & !x & 0x80…` marks
/// the lowest zero byte exactly).
fn find_quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of eight"));
        let found = zero_byte(word ^ (ONES * u64::from(b'"'))) | zero_byte(word ^ (ONES * u64::from(b'\\')));
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&b| b == b'"' || b == b'\\').map(|i| offset + i)
}

/// `created_at` of the envelope: RFC 3339 UTC with whole seconds, as in docs/contract.md §2 (the exact
/// milliseconds stay visible in the stream entry id).
///
/// A time past [`MAX_TIME_MS`] (refused by [`parse_entry`], so never an event's) is written as
/// that last instant rather than panicking the formatter.
pub fn rfc3339_seconds(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ms.min(MAX_TIME_MS) / 1000);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    tenant: &'a str,
    created_at: String,
    data: &'a RawValue,
}

/// The default request body (docs/contract.md §2), serialized once per event whatever its fan-out. `data`
/// is embedded exactly as the producer wrote it.
pub fn envelope(event: &Event) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        id: &event.id,
        event_type: &event.event_type,
        tenant: &event.tenant,
        created_at: rfc3339_seconds(event.created_at_ms),
        data: &event.data,
    })
    .expect("an envelope of valid JSON always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &[u8])]) -> RawEntry {
        RawEntry { id: id.into(), fields: Some(fields.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect()) }
    }

    #[test]
    fn a_valid_entry_becomes_the_spec_envelope() {
        let e = entry(
            "1767225600000-0",
            &[
                ("tenant", b"acme"),
                ("type", b"order.status_updated"),
                ("data", br#"{"order_id":"A-1001", "status":"shipped"}"#),
                ("region", b"eu"),
            ],
        );
        let event = parse_entry(&e, 1024).unwrap();
        assert_eq!(event.id, "1767225600000-0");
        assert_eq!(event.attributes, [("region".to_string(), "eu".to_string())]);
        let body = String::from_utf8(envelope(&event)).unwrap();
        assert_eq!(
            body,
            r#"{"id":"1767225600000-0","type":"order.status_updated","tenant":"acme","created_at":"2026-01-01T00:00:00Z","data":{"order_id":"A-1001", "status":"shipped"}}"#
        );
    }

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert_eq!(check_depth(br#"{"a":[1,{"b":[]}]}"#, 4), Ok(()));
        assert_eq!(check_depth(br#"{"a":[1,{"b":[[]]}]}"#, 4), Err(5));
        assert_eq!(check_depth(br#"{"a":"[[[[[[{{{{"}"#, 1), Ok(()), "brackets inside strings do not count");
        assert_eq!(check_depth(br#"{"a":"\"[[[["}"#, 1), Ok(()), "an escaped quote does not end the string");
        assert_eq!(check_depth(br#"["\\",[[]]]"#, 2), Err(3), "an escaped backslash does not escape the quote");
        assert_eq!(check_depth("]]]]][".as_bytes(), 1), Ok(()));
        assert_eq!(check_depth(br#"["a\\"#, 1), Ok(()), "a backslash at the very end");
        assert_eq!(check_depth(br#"["unterminated [[[["#, 1), Ok(()));
        // Strings of every length around the word size, with escapes at every position.
        for len in 0..20 {
            for escape_at in 0..=len {
                let mut text = "x".repeat(len);
                text.insert_str(escape_at, "\\\"[[");
                let json = format!(r#"[["{text}"],[[]]]"#);
                assert_eq!(check_depth(json.as_bytes(), 3), Ok(()), "{json}");
                assert_eq!(check_depth(json.as_bytes(), 2), Err(3), "{json}");
            }
        }
        let deep = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(check_depth(deep.as_bytes(), MAX_JSON_DEPTH), Ok(()));
        let e = entry("1-0", &[("tenant", b"acme"), ("type", b"t"), ("data", deep.as_bytes())]);
        assert!(parse_entry(&e, 1 << 20).is_ok(), "64 levels are allowed");
        let deeper = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = entry("1-0", &[("tenant", b"acme"), ("type", b"t"), ("data", deeper.as_bytes())]);
        let rejection = parse_entry(&e, 1 << 20).unwrap_err();
        assert_eq!(rejection.reason, Reason::TooDeep);
        assert_eq!(rejection.detail, "data nests deeper than 64 levels (at least 65)");
    }

    #[test]
    fn quotes_and_backslashes_are_found_in_any_position() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'"', b'\\'] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    if at + 1 < len {
                        bytes[at + 1] = if special == b'"' { b'\\' } else { b'"' };
                    }
                    assert_eq!(find_quote_or_backslash(&bytes), Some(at), "{len} {at} {special}");
                }
            }
            assert_eq!(find_quote_or_backslash(&vec![0xffu8; len]), None);
        }
    }

    #[test]
    fn data_is_judged_by_the_json_grammar_and_embedded_as_written() {
        // Found by the parse_entry fuzz target: a number beyond f64 is valid JSON. It is kept
        // byte for byte (as docs/contract.md §1 promises), not rejected or rewritten.
        let e = entry("1-0", &[("tenant", b"acme"), ("type", b"t"), ("data", b" 7777e7777 ")]);
        let event = parse_entry(&e, 1024).unwrap();
        let body = String::from_utf8(envelope(&event)).unwrap();
        assert!(body.ends_with(r#""data":7777e7777}"#), "{body}");
        assert!(serde_json::from_str::<Box<RawValue>>(&body).is_ok());
    }

    #[test]
    fn reserved_redelivery_fields_are_read_and_never_attributes() {
        let e = entry(
            "1767225600000-0",
            &[
                ("tenant", b"acme"),
                ("type", b"t"),
                ("data", b"{}"),
                ("region", b"eu"),
                (ONLY_WEBHOOK_FIELD, b"wh_1"),
                (CREATED_AT_FIELD, b"1700000000123"),
            ],
        );
        let event = parse_entry(&e, 1024).unwrap();
        assert_eq!(event.only_webhook.as_deref(), Some("wh_1"));
        assert_eq!(event.created_at_ms, 1_700_000_000_123);
        assert_eq!(event.attributes, [("region".to_string(), "eu".to_string())], "reserved fields are not attributes");
        let body = String::from_utf8(envelope(&event)).unwrap();
        assert!(!body.contains("_wss_") && !body.contains("wh_1"), "{body}");
        assert!(body.contains(r#""created_at":"2023-11-14T22:13:20Z""#), "{body}");

        let plain = parse_entry(&entry("1767225600000-0", &[("tenant", b"acme"), ("type", b"t"), ("data", b"{}")]), 1024).unwrap();
        assert_eq!((plain.only_webhook, plain.created_at_ms), (None, 1_767_225_600_000));
        for bad in [(ONLY_WEBHOOK_FIELD, &b""[..]), (ONLY_WEBHOOK_FIELD, b"wh 1"), (CREATED_AT_FIELD, b"yesterday")] {
            let e = entry("1-0", &[("tenant", b"acme"), ("type", b"t"), ("data", b"{}"), bad]);
            assert_eq!(parse_entry(&e, 1024).unwrap_err().reason, Reason::InvalidField, "{bad:?}");
        }
    }

    #[test]
    fn times_past_year_9999_are_refused_and_never_panic() {
        let fields: [(&str, &[u8]); 3] = [("tenant", b"acme"), ("type", b"t"), ("data", b"{}")];
        for id in ["253402300800000-0", "18446744073709551615-0"] {
            let rejection = parse_entry(&entry(id, &fields), 1024).unwrap_err();
            assert_eq!(rejection.reason, Reason::InvalidField, "{id}");
            assert!(rejection.detail.contains("after year 9999"), "{}", rejection.detail);
        }
        for bad in [&b"18446744073709551615"[..], b"253402300800000", b"-1", b"99999999999999999999999"] {
            let mut with = fields.to_vec();
            with.push((CREATED_AT_FIELD, bad));
            assert_eq!(parse_entry(&entry("1-0", &with), 1024).unwrap_err().reason, Reason::InvalidField, "{bad:?}");
        }
        // The last instant is fine; a later id is fine when the field gives the time.
        let mut with = fields.to_vec();
        with.push((CREATED_AT_FIELD, b"253402300799999"));
        let event = parse_entry(&entry("253402300800000-0", &with), 1024).unwrap();
        assert!(String::from_utf8(envelope(&event)).unwrap().contains(r#""created_at":"9999-12-31T23:59:59Z""#));
        assert_eq!(rfc3339_seconds(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn an_explicit_id_wins() {
        let e = entry("5-0", &[("tenant", b"acme"), ("type", b"t"), ("data", b"1"), ("id", b"evt_42")]);
        assert_eq!(parse_entry(&e, 1024).unwrap().id, "evt_42");
    }

    #[test]
    fn each_kind_of_bad_entry_has_its_reason() {
        let cases: Vec<(RawEntry, Reason)> = vec![
            (entry("1-0", &[("tenant", b"acme"), ("type", b"t")]), Reason::MissingField),
            (entry("1-0", &[("tenant", b"acme"), ("type", b"t"), ("data", b"{not json")]), Reason::DataNotJson),
            (entry("1-0", &[("tenant", b"acme"), ("type", b"t"), ("data", &[0xff, 0xfe])]), Reason::DataNotJson),
            (entry("1-0", &[("tenant", b"Acme!"), ("type", b"t"), ("data", b"{}")]), Reason::InvalidField),
            (entry("1-0", &[("tenant", b"acme"), ("type", b""), ("data", b"{}")]), Reason::InvalidField),
            (entry("1-0", &[("tenant", b"acme"), ("type", b"t"), ("data", b"{}"), ("id", &[b'x'; 129])]), Reason::InvalidField),
            (entry("1-0", &[("tenant", b"acme"), ("tenant", b"other"), ("type", b"t"), ("data", b"{}")]), Reason::InvalidField),
            (entry("1-0", &[("tenant", b"acme"), ("type", b"t"), ("data", &[b'1'; 2000])]), Reason::TooLarge),
            (entry("1-0", &[("tenant", b"acme"), ("type", b"t"), ("data", "[".repeat(65).as_bytes())]), Reason::TooDeep),
            (entry("1-0", &[("tenant", b"acme"), ("type", b"t"), ("data", &[0x00, 0x9f, 0x92, 0x96, 0xff])]), Reason::DataNotJson),
            (entry("1-0", &[("tenant", b"acme"), ("type", &[0xc3, 0x28]), ("data", b"{}")]), Reason::InvalidField),
            (RawEntry { id: "1-0".into(), fields: None }, Reason::EntryDeleted),
        ];
        for (e, reason) in cases {
            let rejection = parse_entry(&e, 1024).unwrap_err();
            assert_eq!(rejection.reason, reason, "{e:?}: {}", rejection.detail);
            assert!(!rejection.detail.is_empty());
        }
        let many: Vec<(String, Vec<u8>)> = (0..=MAX_FIELDS).map(|i| (format!("a{i}"), b"v".to_vec())).collect();
        let many = RawEntry { id: "1-0".into(), fields: Some(many.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect()) };
        assert_eq!(parse_entry(&many, 1 << 20).unwrap_err().reason, Reason::TooManyFields);
        let missing = parse_entry(&entry("1-0", &[("type", b"t")]), 1024).unwrap_err();
        assert_eq!(missing.detail, "required field(s) missing: tenant, data");
        assert_eq!(missing.event_type, "t");
    }
}
