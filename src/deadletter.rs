//! Dead letters: deliveries and stream entries that wss will not try again by itself, kept with
//! their reason and every attempt's outcome in the stream `<prefix>deadletters`.
//!
//! A record is one stream entry. Its fields are the [`DeadLetter`] fields below, `attempts` as a
//! JSON array, and each field of the original stream entry byte for byte as `field:<name>`, so
//! that nothing an internal system sent is lost and the event can be sent again. An entry
//! rejected before routing has its fields in hand; a delivery's record copies them from the
//! source entry — still in `<prefix>events`, since it is acknowledged only in the same
//! transaction — by a script in that transaction ([`queue_write`]), so that waiting retries need
//! not hold the event's data and attributes in memory. Records written before this (no
//! `field:` entries) are still read; their redelivery reads the source entry from the stream, if
//! it was not trimmed away. The stream is trimmed approximately to `WSS_DEAD_LETTER_MAXLEN`
//! entries.
//!
//! **Redelivery** (`DeliveryService/RedeliverDeadLetter`): [`DeadLetter::redelivery_fields`]
//! makes the stream entry that sends the event again — its original fields, `id` set to the event
//! id (so receivers see the same `X-WSS-Event-Id`), the original `created_at` kept, and routing
//! restricted to the record's webhook when it has one (see `pipeline::event`'s reserved fields) —
//! and [`REDELIVER_SCRIPT`] appends it to `<prefix>events` and deletes the record in one atomic
//! step, only if the record still exists: two concurrent redeliveries of one dead letter send it
//! once. If it fails again it is dead-lettered anew, as a new record.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::reserved::{CREATED_AT_FIELD, ONLY_WEBHOOK_FIELD};

/// Why something was dead-lettered. The string forms are part of the API (`DeadLetter.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MaxAttemptsExhausted,
    Gone,
    WebhookDeleted,
    WebhookDisabled,
    TenantDisabled,
    UnknownTenant,
    MissingField,
    InvalidField,
    DataNotJson,
    TooLarge,
    /// More fields than `pipeline::event::MAX_FIELDS`.
    TooManyFields,
    /// `data` nests deeper than `pipeline::event::MAX_JSON_DEPTH`.
    TooDeep,
    EntryDeleted,
    /// The webhook's filter failed on the event (a missing field, a wrong type, a non-boolean
    /// result): that one delivery is dead-lettered instead of guessed at.
    FilterError,
    /// The webhook's transform failed on the event, or its value has no JSON form.
    TransformError,
    /// The entry was read `source::redis::poison::MAX_READS` times without being finished (each time
    /// its processing crashed or hung the instance), or its processing panicked: it is set aside
    /// so that it cannot crash-loop every instance.
    Poison,
}

impl Reason {
    /// Every reason, in declaration order (so `reason as usize` indexes it: `crate::metrics`
    /// resolves one counter per reason up front).
    pub const ALL: [Reason; 16] = [
        Reason::MaxAttemptsExhausted,
        Reason::Gone,
        Reason::WebhookDeleted,
        Reason::WebhookDisabled,
        Reason::TenantDisabled,
        Reason::UnknownTenant,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::DataNotJson,
        Reason::TooLarge,
        Reason::TooManyFields,
        Reason::TooDeep,
        Reason::EntryDeleted,
        Reason::FilterError,
        Reason::TransformError,
        Reason::Poison,
    ];

    /// The reason of its string form, if it is one.
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Reasons a stream entry is rejected for before routing (`Completion::Rejected`).
    pub fn is_entry_reason(self) -> bool {
        matches!(
            self,
            Reason::TenantDisabled
                | Reason::UnknownTenant
                | Reason::MissingField
                | Reason::InvalidField
                | Reason::DataNotJson
                | Reason::TooLarge
                | Reason::TooManyFields
                | Reason::TooDeep
                | Reason::EntryDeleted
                | Reason::Poison
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MaxAttemptsExhausted => "max_attempts_exhausted",
            Reason::Gone => "gone",
            Reason::WebhookDeleted => "webhook_deleted",
            Reason::WebhookDisabled => "webhook_disabled",
            Reason::TenantDisabled => "tenant_disabled",
            Reason::UnknownTenant => "unknown_tenant",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::DataNotJson => "data_not_json",
            Reason::TooLarge => "too_large",
            Reason::TooManyFields => "too_many_fields",
            Reason::TooDeep => "too_deep",
            Reason::EntryDeleted => "entry_deleted",
            Reason::FilterError => "filter_error",
            Reason::TransformError => "transform_error",
            Reason::Poison => "poison",
        }
    }
}

/// Why an attempt failed: a class, stored by its name in the attempt's `error_kind` and sent as
/// both that name and the proto `ErrorKind` (docs/contract.md). The names are a contract.
/// Classified where the failure is known by its type (`crate::pipeline::sender`), never from
/// an error's text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ErrorKind {
    /// No error: the attempt succeeded (stored as the empty string).
    #[default]
    None,
    /// `connect`: the connection could not be made.
    Connect,
    /// `timeout`: the attempt took longer than the policy's `attempt_timeout`.
    Timeout,
    /// `io`: the connection failed while sending or receiving.
    Io,
    /// `tls`: the TLS handshake failed.
    Tls,
    /// `protocol`: the receiver did not speak valid HTTP.
    Protocol,
    /// `dns`: the host name did not resolve.
    Dns,
    /// `refused_target`: an address wss refuses to reach.
    RefusedTarget,
    /// `http_status`: a response with a status that is not 2xx.
    HttpStatus,
    /// `error`: any other failure.
    Other,
    /// A name this release does not know (written by a newer one), kept as it was read.
    Unknown(Box<str>),
}

impl ErrorKind {
    /// The classes this release writes, with [`ErrorKind::None`] first.
    pub const KNOWN: [ErrorKind; 10] = [
        ErrorKind::None,
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Io,
        ErrorKind::Tls,
        ErrorKind::Protocol,
        ErrorKind::Dns,
        ErrorKind::RefusedTarget,
        ErrorKind::HttpStatus,
        ErrorKind::Other,
    ];

    /// The stored name.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorKind::None => "",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Tls => "tls",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Dns => "dns",
            ErrorKind::RefusedTarget => "refused_target",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Other => "error",
            ErrorKind::Unknown(name) => name,
        }
    }

    /// The class a stored name stands for.
    pub fn parse(name: &str) -> Self {
        Self::KNOWN.into_iter().find(|kind| kind.as_str() == name).unwrap_or_else(|| ErrorKind::Unknown(name.into()))
    }

    /// Bytes of the stored name (for size estimates).
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// No error.
    pub fn is_empty(&self) -> bool {
        *self == ErrorKind::None
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(ErrorKind::parse(&Cow::<str>::deserialize(deserializer)?))
    }
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_at_ms: u64,
    pub duration_ms: u64,
    /// HTTP status; 0 when no response arrived.
    pub status: u16,
    /// Error class when no response arrived, or [`ErrorKind::HttpStatus`] for a non-2xx
    /// answer; [`ErrorKind::None`] on success. No allocation per attempt, which counts when a
    /// million retries wait with their attempts.
    pub error_kind: ErrorKind,
    pub error: String,
    pub response_excerpt: String,
}

/// One dead-letter record, as written and as listed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetter {
    /// The record's own stream id (empty until written).
    pub id: String,
    pub reason: String,
    pub detail: String,
    pub tenant_id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    pub stream_entry_id: String,
    pub dead_lettered_at_ms: u64,
    pub body: String,
    pub attempts: Vec<AttemptRecord>,
    /// Original fields of a rejected entry, byte for byte.
    pub raw_fields: Vec<(Vec<u8>, Vec<u8>)>,
}

const RAW_FIELD_PREFIX: &[u8] = b"field:";

/// A stream entry's fields, names and values as bytes, in order.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Writes a delivery's dead-letter record with its source entry's fields copied in (as
/// `field:<name>`). KEYS: the dead-letter stream, the events stream. ARGV: MAXLEN, the source
/// entry id, then the record's own fields. A source entry trimmed away meanwhile is simply not
/// copied (the record is written all the same).
const WRITE_WITH_SOURCE_SCRIPT: &str = r#"
local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*'}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
local source = redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[2])
if source[1] then
  local fields = source[1][2]
  for i = 1, #fields, 2 do
    args[#args + 1] = 'field:' .. fields[i]
    args[#args + 1] = fields[i + 1]
  end
end
return redis.call(unpack(args))
"#;

/// Redelivers one record atomically: deletes it and, only if it was there, appends the event.
/// KEYS: the dead-letter stream, the events stream. ARGV: the record id, then the entry's
/// fields. Returns the new entry id, or nil when the record no longer exists (already
/// redelivered, or trimmed).
pub const REDELIVER_SCRIPT: &str = r#"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
"#;

/// Queues the write of `record` on `pipe` (inside the outcome stage's transaction). A delivery's
/// record without its source fields gets them from `events` (`EVAL`, not `EVALSHA`: a script
/// missing from Redis's cache would fail the whole transaction).
pub fn queue_write(pipe: &mut redis::Pipeline, dead_letters: &str, events: &str, maxlen: usize, record: &DeadLetter) {
    if record.webhook_id.is_empty() || !record.raw_fields.is_empty() {
        pipe.cmd("XADD").arg(dead_letters).arg("MAXLEN").arg("~").arg(maxlen).arg("*").arg(record.to_fields()).ignore();
    } else {
        let args = (maxlen, &record.stream_entry_id, record.to_fields());
        pipe.add_command(crate::keys::eval(WRITE_WITH_SOURCE_SCRIPT, &[dead_letters, events], args)).ignore();
    }
}

/// Why a dead letter cannot be sent again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRedeliverable {
    #[error("its original event is no longer stored (a record written before wss kept events with their dead letters, whose stream entry was trimmed away since)")]
    EventGone,
    #[error("its original entry carried another tenant ({found:?}) than the record ({expected:?}); it was altered in Redis")]
    TenantMismatch { expected: String, found: String },
}

impl DeadLetter {
    /// The stream fields of this record, in a stable order.
    pub fn to_fields(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let attempts = serde_json::to_string(&self.attempts).expect("attempt records always serialize");
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = [
            ("reason", self.reason.as_str()),
            ("detail", &self.detail),
            ("tenant", &self.tenant_id),
            ("webhook_id", &self.webhook_id),
            ("event_id", &self.event_id),
            ("event_type", &self.event_type),
            ("stream_entry_id", &self.stream_entry_id),
            ("dead_lettered_at_ms", &self.dead_lettered_at_ms.to_string()),
            ("body", &self.body),
            ("attempts", &attempts),
        ]
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        for (name, value) in &self.raw_fields {
            let mut key = RAW_FIELD_PREFIX.to_vec();
            key.extend_from_slice(name);
            fields.push((key, value.clone()));
        }
        fields
    }

    /// Rebuilds a record from a stream entry written by [`DeadLetter::to_fields`].
    pub fn from_fields(id: String, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        let mut record = DeadLetter { id, ..Default::default() };
        for (name, value) in fields {
            if let Some(raw) = name.strip_prefix(RAW_FIELD_PREFIX) {
                record.raw_fields.push((raw.to_vec(), value));
                continue;
            }
            let text = String::from_utf8_lossy(&value).into_owned();
            match name.as_slice() {
                b"reason" => record.reason = text,
                b"detail" => record.detail = text,
                b"tenant" => record.tenant_id = text,
                b"webhook_id" => record.webhook_id = text,
                b"event_id" => record.event_id = text,
                b"event_type" => record.event_type = text,
                b"stream_entry_id" => record.stream_entry_id = text,
                b"dead_lettered_at_ms" => record.dead_lettered_at_ms = text.parse().unwrap_or(0),
                b"body" => record.body = text,
                b"attempts" => record.attempts = serde_json::from_str(&text).unwrap_or_default(),
                _ => {}
            }
        }
        record
    }

    /// The stream entry that sends this dead letter's event again (see the module docs).
    /// `source`: the fields of the original stream entry, read from the stream, for a record
    /// written before records kept them; ignored when the record has them.
    pub fn redelivery_fields(&self, source: Option<Fields>) -> Result<Fields, NotRedeliverable> {
        let original = if self.raw_fields.is_empty() { source.unwrap_or_default() } else { self.raw_fields.clone() };
        if original.is_empty() {
            return Err(NotRedeliverable::EventGone);
        }
        let named = |name: &str| original.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.clone());
        if let Some(tenant) = named("tenant") {
            if tenant != self.tenant_id.as_bytes() {
                let found = String::from_utf8_lossy(&tenant).into_owned();
                return Err(NotRedeliverable::TenantMismatch { expected: self.tenant_id.clone(), found });
            }
        }
        let has_id = named("id").is_some();
        let has_created_at = named(CREATED_AT_FIELD).is_some();
        let mut fields: Fields = original
            .into_iter()
            // The record's webhook replaces any earlier restriction; without one, an earlier
            // redelivery's restriction stays (the record is of a redelivered entry rejected
            // before routing, and its tenant's other webhooks had the event already).
            .filter(|(k, _)| self.webhook_id.is_empty() || k != ONLY_WEBHOOK_FIELD.as_bytes())
            .collect();
        if !has_id {
            // The event id was the original entry's id; the new entry would have another.
            let id = if self.event_id.is_empty() { &self.stream_entry_id } else { &self.event_id };
            fields.push((b"id".to_vec(), id.as_bytes().to_vec()));
        }
        if !has_created_at {
            if let Some(ms) = self.stream_entry_id.split('-').next().filter(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit())) {
                fields.push((CREATED_AT_FIELD.as_bytes().to_vec(), ms.as_bytes().to_vec()));
            }
        }
        if !self.webhook_id.is_empty() {
            fields.push((ONLY_WEBHOOK_FIELD.as_bytes().to_vec(), self.webhook_id.as_bytes().to_vec()));
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_stored_by_their_contract_names_and_unknown_ones_kept() {
        let names: Vec<&str> = ErrorKind::KNOWN.iter().map(ErrorKind::as_str).collect();
        assert_eq!(names, ["", "connect", "timeout", "io", "tls", "protocol", "dns", "refused_target", "http_status", "error"]);
        for kind in ErrorKind::KNOWN {
            assert_eq!(ErrorKind::parse(kind.as_str()), kind);
        }
        let record = AttemptRecord { attempt: 2, error_kind: ErrorKind::RefusedTarget, ..Default::default() };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""error_kind":"refused_target""#), "{json}");
        assert_eq!(serde_json::from_str::<AttemptRecord>(&json).unwrap(), record);
        let newer = json.replace("refused_target", "quic_reset");
        let read = serde_json::from_str::<AttemptRecord>(&newer).unwrap();
        assert_eq!(read.error_kind, ErrorKind::Unknown("quic_reset".into()));
        assert_eq!(serde_json::to_string(&read).unwrap(), newer, "written back as it was read");
    }

    #[test]
    fn a_record_survives_the_round_trip_through_stream_fields() {
        let record = DeadLetter {
            id: "1-0".into(),
            reason: Reason::MaxAttemptsExhausted.as_str().into(),
            detail: "8 attempts failed".into(),
            tenant_id: "acme".into(),
            webhook_id: "wh_1".into(),
            event_id: "e1".into(),
            event_type: "order.created".into(),
            stream_entry_id: "5-0".into(),
            dead_lettered_at_ms: 1234,
            body: "{}".into(),
            attempts: vec![AttemptRecord { attempt: 1, status: 500, error_kind: ErrorKind::HttpStatus, ..Default::default() }],
            raw_fields: vec![(b"data".to_vec(), vec![0xff, 0x00])],
        };
        let back = DeadLetter::from_fields("1-0".into(), record.to_fields());
        assert_eq!(back, record);
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn reasons_parse_from_their_string_forms() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(Reason::parse("Gone"), None);
    }

    #[test]
    fn a_delivery_is_redelivered_to_its_webhook_with_its_event_id_and_time() {
        let record = DeadLetter {
            tenant_id: "acme".into(),
            webhook_id: "wh_1".into(),
            event_id: "1767225600000-0".into(),
            stream_entry_id: "1767225600000-0".into(),
            raw_fields: fields(&[("tenant", "acme"), ("type", "t"), ("data", "{}"), ("region", "eu")]),
            ..Default::default()
        };
        assert_eq!(
            record.redelivery_fields(None).unwrap(),
            fields(&[
                ("tenant", "acme"),
                ("type", "t"),
                ("data", "{}"),
                ("region", "eu"),
                ("id", "1767225600000-0"),
                (CREATED_AT_FIELD, "1767225600000"),
                (ONLY_WEBHOOK_FIELD, "wh_1"),
            ])
        );
        // Dead-lettered again after a redelivery: its fields already say id, time and webhook.
        let again =
            DeadLetter { raw_fields: record.redelivery_fields(None).unwrap(), stream_entry_id: "1767229999999-0".into(), ..record.clone() };
        assert_eq!(again.redelivery_fields(None).unwrap(), record.redelivery_fields(None).unwrap());
    }

    #[test]
    fn an_entry_rejected_before_routing_goes_back_unrestricted_with_an_explicit_id() {
        let record = DeadLetter {
            reason: Reason::UnknownTenant.as_str().into(),
            tenant_id: "acme".into(),
            stream_entry_id: "5-0".into(),
            raw_fields: fields(&[("tenant", "acme"), ("type", "t"), ("data", "{}"), ("id", "evt-9")]),
            ..Default::default()
        };
        let out = record.redelivery_fields(None).unwrap();
        assert_eq!(out, fields(&[("tenant", "acme"), ("type", "t"), ("data", "{}"), ("id", "evt-9"), (CREATED_AT_FIELD, "5")]));
        // A redelivered entry that was then rejected keeps its earlier restriction.
        let restricted = DeadLetter {
            raw_fields: fields(&[("tenant", "acme"), ("type", "t"), ("data", "{}"), (ONLY_WEBHOOK_FIELD, "wh_2")]),
            ..record.clone()
        };
        let out = restricted.redelivery_fields(None).unwrap();
        assert!(out.contains(&(ONLY_WEBHOOK_FIELD.as_bytes().to_vec(), b"wh_2".to_vec())), "{out:?}");
        assert!(out.contains(&(b"id".to_vec(), b"5-0".to_vec())), "no id field and no event id: the entry id was the event id");
    }

    #[test]
    fn old_records_use_the_source_entry_and_refuse_without_one() {
        let old = DeadLetter {
            tenant_id: "acme".into(),
            webhook_id: "wh_1".into(),
            event_id: "e1".into(),
            stream_entry_id: "7-0".into(),
            ..Default::default()
        };
        assert_eq!(old.redelivery_fields(None), Err(NotRedeliverable::EventGone));
        let out = old.redelivery_fields(Some(fields(&[("tenant", "acme"), ("type", "t"), ("data", "1"), ("id", "e1")]))).unwrap();
        assert_eq!(
            out,
            fields(&[
                ("tenant", "acme"),
                ("type", "t"),
                ("data", "1"),
                ("id", "e1"),
                (CREATED_AT_FIELD, "7"),
                (ONLY_WEBHOOK_FIELD, "wh_1")
            ])
        );
        let forged = old.redelivery_fields(Some(fields(&[("tenant", "globex"), ("type", "t"), ("data", "1")])));
        assert!(matches!(forged, Err(NotRedeliverable::TenantMismatch { .. })), "{forged:?}");
    }
}
