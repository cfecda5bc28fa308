//! A stream entry, parsed and checked against the contract of SPEC.md §1, and the envelope that
//! becomes the request body.
//!
//! Parsing is pure: it returns either a valid [`Event`] or a [`Rejection`] naming the dead-letter
//! reason and what exactly was wrong, which the outcome stage writes to the dead-letter stream.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::{deadletter::Reason, domain::model::is_valid_id, streams::RawEntry};

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
    let lossy = |name: &str| {
        fields.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| String::from_utf8_lossy(v).chars().take(256).collect())
    };
    rejection.tenant = lossy("tenant").unwrap_or_default();
    rejection.event_type = lossy("type").unwrap_or_default();
    rejection.event_id = lossy("id").unwrap_or_default();

    let size = entry.size();
    if size > max_bytes {
        return reject(rejection, Reason::TooLarge, format!("the entry is {size} bytes; the limit is {max_bytes} (WSS_MAX_EVENT_BYTES)"));
    }

    let mut tenant = None;
    let mut event_type = None;
    let mut data = None;
    let mut id = None;
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
    let data: Box<RawValue> = match std::str::from_utf8(data).map_err(|e| e.to_string()).and_then(|text| {
        serde_json::from_str::<Box<RawValue>>(text.trim()).map_err(|e| e.to_string())
    }) {
        Ok(value) => value,
        Err(e) => return reject(rejection, Reason::DataNotJson, format!("data is not JSON: {e}")),
    };
    Ok(Event {
        created_at_ms: entry.id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0),
        stream_id: entry.id.clone(),
        id,
        event_type,
        tenant,
        data,
        attributes,
    })
}

/// `created_at` of the envelope: RFC 3339 UTC with whole seconds, as in SPEC.md §2 (the exact
/// milliseconds stay visible in the stream entry id).
pub fn rfc3339_seconds(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ms / 1000);
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

/// The default request body (SPEC.md §2), serialized once per event whatever its fan-out. `data`
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
            &[("tenant", b"acme"), ("type", b"order.status_updated"), ("data", br#"{"order_id":"A-1001", "status":"shipped"}"#), ("region", b"eu")],
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
            (RawEntry { id: "1-0".into(), fields: None }, Reason::EntryDeleted),
        ];
        for (e, reason) in cases {
            let rejection = parse_entry(&e, 1024).unwrap_err();
            assert_eq!(rejection.reason, reason, "{e:?}: {}", rejection.detail);
            assert!(!rejection.detail.is_empty());
        }
        let missing = parse_entry(&entry("1-0", &[("type", b"t")]), 1024).unwrap_err();
        assert_eq!(missing.detail, "required field(s) missing: tenant, data");
        assert_eq!(missing.event_type, "t");
    }
}
