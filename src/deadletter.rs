//! Dead letters: deliveries and stream entries that wss will not try again by itself, kept with
//! their reason and every attempt's outcome in the stream `<prefix>deadletters`.
//!
//! A record is one stream entry. Its fields are the [`DeadLetter`] fields below, `attempts` as a
//! JSON array, and — for an entry rejected before routing — each original field byte for byte as
//! `field:<name>`, so that nothing an internal system sent is lost. The stream is trimmed
//! approximately to `WSS_DEAD_LETTER_MAXLEN` entries.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

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
}

impl Reason {
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
        }
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
    /// Error class when no response arrived (`connect`, `timeout`, `io`, `tls`, `protocol`,
    /// `dns`, `refused_target`), or `http_status` for a non-2xx answer; empty on success.
    /// Borrowed when the sender sets it (one of those names): no allocation per attempt, which
    /// counts when a million retries wait with their attempts.
    pub error_kind: Cow<'static, str>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
            attempts: vec![AttemptRecord { attempt: 1, status: 500, error_kind: "http_status".into(), ..Default::default() }],
            raw_fields: vec![(b"data".to_vec(), vec![0xff, 0x00])],
        };
        let back = DeadLetter::from_fields("1-0".into(), record.to_fields());
        assert_eq!(back, record);
    }
}
