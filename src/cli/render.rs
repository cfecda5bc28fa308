//! What the admin CLI prints: every control-plane message as an ordered record of named values,
//! shown either as JSON (for scripts: one document per call, field names as in the proto, times
//! in RFC 3339, durations as `"1.5s"`-style text, enums as their lower-case names) or as a table
//! (for people: a list as aligned columns, one resource as `field  value` lines).
//!
//! The records are built here, by hand, rather than derived from the prost types: prost has no
//! JSON mapping, and an explicit list keeps the field order of the proto for the table view and
//! lets a secret that is shown only once (a new webhook's, a new token) stand out. Everything here
//! is pure, so it is tested beside the code.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use wss::proto::{
    Attempt, CircuitChange, CircuitState, DeadLetter, Delivery, DeliveryStatus, Ordering, RedeliverDeadLetterResponse,
    ReplayEventsResponse, RetryPolicy, SendTestEventResponse, SignatureScheme, Tenant, Token, Webhook, WebhookStats,
};

/// A message as ordered (field, value) pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record(pub Vec<(&'static str, Value)>);

impl Record {
    fn with(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.0.push((name, value.into()));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The record as a JSON object (keys sorted; the order is for tables only).
    pub fn to_json(&self) -> Value {
        Value::Object(self.0.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<Map<_, _>>())
    }
}

/// What one command prints, in both forms.
pub struct Printed {
    pub json: Value,
    pub table: String,
    /// A note for people (stderr, table output only), e.g. how to get the next page.
    pub note: Option<String>,
}

impl Printed {
    /// One resource.
    pub fn one(record: &Record) -> Self {
        Self { json: record.to_json(), table: vertical(record), note: None }
    }

    /// A page of a list: JSON `{"<key>": [...], "next_page_token": "..."}`, a table of `columns`.
    pub fn page(key: &str, records: &[Record], columns: &[&str], next_page_token: &str) -> Self {
        let mut object = Map::new();
        object.insert(key.to_owned(), Value::Array(records.iter().map(Record::to_json).collect()));
        object.insert("next_page_token".into(), Value::String(next_page_token.to_owned()));
        let note = (!next_page_token.is_empty()).then(|| format!("more: add --page-token {next_page_token} (or --all for every page)"));
        Self { json: Value::Object(object), table: columns_table(records, columns), note }
    }
}

/// A value as a table cell: text as is, absent as `-`, lists joined with commas, objects as JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        Value::Object(map) if map.is_empty() => "-".into(),
        other => other.to_string(),
    }
}

/// Aligned columns with an upper-case header; the last column is not padded.
pub fn columns_table(records: &[Record], columns: &[&str]) -> String {
    let rows: Vec<Vec<String>> =
        records.iter().map(|r| columns.iter().map(|c| r.get(c).map_or_else(|| "-".into(), cell)).collect()).collect();
    let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    let widths: Vec<usize> =
        (0..columns.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, text) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(text);
            } else {
                line.push_str(text);
                line.push_str(&" ".repeat(widths[i] - text.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `field  value` lines, fields aligned; nested lists of objects (attempts) one per line below.
pub fn vertical(record: &Record) -> String {
    let width = record.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, value) in &record.0 {
        match value {
            Value::Array(items) if items.iter().any(Value::is_object) => {
                out.push_str(&format!("{name}:\n"));
                for item in items {
                    out.push_str(&format!("  - {}\n", inline(item)));
                }
            }
            _ => out.push_str(&format!("{name:width$}  {}\n", cell(value))),
        }
    }
    out
}

/// An object on one line: `key=value` pairs, empty ones left out.
fn inline(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !matches!(v, Value::Null) && v.as_str() != Some("") && v.as_array().is_none_or(|a| !a.is_empty()))
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => cell(other),
    }
}

pub fn time(ts: Option<&prost_types::Timestamp>) -> Value {
    match ts {
        None => Value::Null,
        Some(ts) => {
            let nanos = u32::try_from(ts.nanos).unwrap_or(0);
            match u64::try_from(ts.seconds) {
                Ok(secs) => {
                    let at = UNIX_EPOCH + Duration::new(secs, nanos);
                    let text = if nanos == 0 {
                        humantime::format_rfc3339_seconds(at).to_string()
                    } else {
                        humantime::format_rfc3339_millis(at).to_string()
                    };
                    Value::String(text)
                }
                Err(_) => Value::String(format!("{}s before 1970", -ts.seconds)),
            }
        }
    }
}

pub fn duration(d: Option<&prost_types::Duration>) -> Value {
    match d {
        None => Value::Null,
        Some(d) => {
            let millis = d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1e6;
            Value::String(if millis < 1000.0 { format!("{}ms", round3(millis)) } else { format!("{}s", round3(millis / 1000.0)) })
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `SIGNATURE_SCHEME_STANDARD_WEBHOOKS` → `standard_webhooks`.
fn enum_name(full: &str, prefix: &str) -> Value {
    Value::String(full.strip_prefix(prefix).unwrap_or(full).to_lowercase())
}

pub fn tenant(t: &Tenant) -> Record {
    Record::default()
        .with("tenant_id", t.tenant_id.clone())
        .with("display_name", t.display_name.clone())
        .with("default_retry_policy_id", t.default_retry_policy_id.clone())
        .with("disabled", t.disabled)
        .with("created_at", time(t.created_at.as_ref()))
        .with("updated_at", time(t.updated_at.as_ref()))
}

pub fn webhook(w: &Webhook) -> Record {
    let scheme = SignatureScheme::try_from(w.signature_scheme)
        .map_or_else(|_| Value::from(w.signature_scheme), |s| enum_name(s.as_str_name(), "SIGNATURE_SCHEME_"));
    let mut record = Record::default()
        .with("webhook_id", w.webhook_id.clone())
        .with("tenant_id", w.tenant_id.clone())
        .with("url", w.url.clone())
        .with("event_types", w.event_types.clone())
        .with("filter", w.filter.clone())
        .with("transform", w.transform.clone())
        .with("retry_policy_id", w.retry_policy_id.clone())
        .with("headers", Value::Object(w.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()))
        .with("description", w.description.clone())
        .with("enabled", w.enabled)
        .with("disabled_reason", w.disabled_reason.clone())
        .with("signature_scheme", scheme)
        .with(
            "ordering",
            Ordering::try_from(w.ordering).map_or_else(|_| Value::from(w.ordering), |o| enum_name(o.as_str_name(), "ORDERING_")),
        )
        .with("rate_limit_per_second", w.rate_limit_per_second)
        .with("created_at", time(w.created_at.as_ref()))
        .with("updated_at", time(w.updated_at.as_ref()))
        .with("previous_secret_expires_at", time(w.previous_secret_expires_at.as_ref()));
    // Only CreateWebhook and RotateWebhookSecret carry it: the one time it is shown.
    if !w.secret.is_empty() {
        record = record.with("secret", w.secret.clone());
    }
    record
}

pub fn policy(p: &RetryPolicy) -> Record {
    Record::default()
        .with("policy_id", p.policy_id.clone())
        .with("max_attempts", p.max_attempts)
        .with("initial_backoff", duration(p.initial_backoff.as_ref()))
        .with("max_backoff", duration(p.max_backoff.as_ref()))
        .with("multiplier", p.multiplier)
        .with("jitter", p.jitter)
        .with("attempt_timeout", duration(p.attempt_timeout.as_ref()))
}

pub fn token(t: &Token) -> Record {
    let mut record = Record::default()
        .with("token_id", t.token_id.clone())
        .with("tenant_id", t.tenant_id.clone())
        .with("description", t.description.clone())
        .with("created_at", time(t.created_at.as_ref()));
    if !t.token.is_empty() {
        record = record.with("token", t.token.clone());
    }
    record
}

pub fn attempt(a: &Attempt) -> Value {
    json!({
        "attempt": a.attempt,
        "started_at": time(a.started_at.as_ref()),
        "duration": duration(a.duration.as_ref()),
        "status_code": a.status_code,
        "error_kind": a.error_kind,
        "error": a.error,
        "response_excerpt": a.response_excerpt,
    })
}

pub fn delivery(d: &Delivery) -> Record {
    let status =
        DeliveryStatus::try_from(d.status).map_or_else(|_| Value::from(d.status), |s| enum_name(s.as_str_name(), "DELIVERY_STATUS_"));
    let last = d.attempts.last();
    Record::default()
        .with("delivery_id", d.delivery_id.clone())
        .with("tenant_id", d.tenant_id.clone())
        .with("webhook_id", d.webhook_id.clone())
        .with("event_id", d.event_id.clone())
        .with("event_type", d.event_type.clone())
        .with("stream_entry_id", d.stream_entry_id.clone())
        .with("status", status)
        .with("attempt_count", d.attempts.len())
        .with("last_status_code", last.map_or(Value::Null, |a| Value::from(a.status_code)))
        .with("created_at", time(d.created_at.as_ref()))
        .with("updated_at", time(d.updated_at.as_ref()))
        .with("next_attempt_at", time(d.next_attempt_at.as_ref()))
        .with("dead_letter_reason", d.dead_letter_reason.clone())
        .with("attempts", d.attempts.iter().map(attempt).collect::<Vec<_>>())
}

pub fn dead_letter(d: &DeadLetter) -> Record {
    Record::default()
        .with("dead_letter_id", d.dead_letter_id.clone())
        .with("reason", d.reason.clone())
        .with("detail", d.detail.clone())
        .with("tenant_id", d.tenant_id.clone())
        .with("webhook_id", d.webhook_id.clone())
        .with("event_id", d.event_id.clone())
        .with("event_type", d.event_type.clone())
        .with("stream_entry_id", d.stream_entry_id.clone())
        .with("dead_lettered_at", time(d.dead_lettered_at.as_ref()))
        .with("body", d.body.clone())
        .with("attempts", d.attempts.iter().map(attempt).collect::<Vec<_>>())
}

fn circuit(state: i32) -> Value {
    CircuitState::try_from(state).map_or_else(|_| Value::from(state), |s| enum_name(s.as_str_name(), "CIRCUIT_STATE_"))
}

fn circuit_change(c: Option<&CircuitChange>) -> Value {
    c.map_or(Value::Null, |c| {
        json!({
            "state": circuit(c.state),
            "changed_at": time(c.changed_at.as_ref()),
            "open_until": time(c.open_until.as_ref()),
            "instance": c.instance,
        })
    })
}

pub fn stats(s: &WebhookStats) -> Record {
    Record::default()
        .with("webhook_id", s.webhook_id.clone())
        .with("tenant_id", s.tenant_id.clone())
        .with("window", duration(s.window.as_ref()))
        .with("attempts_succeeded", s.attempts_succeeded)
        .with("attempts_failed", s.attempts_failed)
        .with("success_rate", s.success_rate.map_or(Value::Null, Value::from))
        .with("last_success_at", time(s.last_success_at.as_ref()))
        .with("last_failure_at", time(s.last_failure_at.as_ref()))
        .with("last_failure_status_code", s.last_failure_status_code)
        .with("last_failure_error_kind", s.last_failure_error_kind.clone())
        .with("last_failure_error", s.last_failure_error.clone())
        .with("dead_letters", s.dead_letters)
        .with("circuit_state", circuit(s.circuit_state))
        .with("circuit_open_until", time(s.circuit_open_until.as_ref()))
        .with("last_circuit_change", circuit_change(s.last_circuit_change.as_ref()))
        .with("in_flight", s.in_flight)
        .with("queued", s.queued)
        .with("parked", s.parked)
        .with("backlog_depth", s.backlog_depth)
        .with("backlog_oldest_age", duration(s.backlog_oldest_age.as_ref()))
        .with("rate_limited", s.rate_limited)
        .with("instance", s.instance.clone())
}

/// A redelivery's answer: JSON as the response; the table lists what was sent and what was not.
pub fn replayed(r: &ReplayEventsResponse) -> Printed {
    let sent: Vec<Record> = r
        .deliveries
        .iter()
        .map(|x| {
            Record::default()
                .with("delivery_id", x.delivery_id.clone())
                .with("event_id", x.event_id.clone())
                .with("webhook_id", x.webhook_id.clone())
                .with("original_stream_entry_id", x.original_stream_entry_id.clone())
        })
        .collect();
    let json = json!({
        "deliveries": sent.iter().map(Record::to_json).collect::<Vec<_>>(),
        "deliveries_scheduled": r.deliveries_scheduled,
        "events_examined": r.events_examined,
        "events_replayed": r.events_replayed,
        "next_page_token": r.next_page_token,
    });
    let mut table = format!(
        "examined {} event(s), replayed {}: {} delivery(ies) scheduled\n",
        r.events_examined, r.events_replayed, r.deliveries_scheduled
    );
    if !sent.is_empty() {
        table.push_str(&columns_table(&sent, &["delivery_id", "event_id", "webhook_id", "original_stream_entry_id"]));
    }
    let note = (!r.next_page_token.is_empty())
        .then(|| format!("more of the period may follow: run again with --page-token {} (or --all)", r.next_page_token));
    Printed { json, table, note }
}

pub fn test_event(r: &SendTestEventResponse) -> Printed {
    let latency_ms = r.latency.as_ref().map_or(0, |d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000);
    Printed::one(
        &Record::default()
            .with("succeeded", r.succeeded)
            .with("status_code", r.status_code)
            .with("latency_ms", latency_ms)
            .with("error_kind", r.error_kind.clone())
            .with("error", r.error.clone())
            .with("response_body", r.response_body.clone())
            .with("delivery_id", r.delivery_id.clone())
            .with("event_id", r.event_id.clone()),
    )
}

pub fn redelivered(r: &RedeliverDeadLetterResponse) -> Printed {
    let sent: Vec<Record> = r
        .redelivered
        .iter()
        .map(|x| {
            Record::default()
                .with("dead_letter_id", x.dead_letter_id.clone())
                .with("event_id", x.event_id.clone())
                .with("stream_entry_id", x.stream_entry_id.clone())
                .with("webhook_id", x.webhook_id.clone())
        })
        .collect();
    let skipped: Vec<Record> = r
        .skipped
        .iter()
        .map(|x| Record::default().with("dead_letter_id", x.dead_letter_id.clone()).with("reason", x.reason.clone()))
        .collect();
    let json = json!({
        "redelivered": sent.iter().map(Record::to_json).collect::<Vec<_>>(),
        "skipped": skipped.iter().map(Record::to_json).collect::<Vec<_>>(),
        "next_page_token": r.next_page_token,
        "redelivered_count": r.redelivered_count,
    });
    let mut table = format!("redelivered {} dead letter(s)\n", r.redelivered_count);
    if !sent.is_empty() {
        table.push_str(&columns_table(&sent, &["dead_letter_id", "event_id", "stream_entry_id", "webhook_id"]));
    }
    if !skipped.is_empty() {
        table.push_str(&format!("skipped {} (they stay):\n", skipped.len()));
        table.push_str(&columns_table(&skipped, &["dead_letter_id", "reason"]));
    }
    let note =
        (!r.next_page_token.is_empty()).then(|| format!("more may match: run again with --page-token {} (or --all)", r.next_page_token));
    Printed { json, table, note }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_read_as_people_write_them() {
        assert_eq!(time(Some(&prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 })), json!("2023-11-14T22:13:20Z"));
        assert_eq!(time(Some(&prost_types::Timestamp { seconds: 1_700_000_000, nanos: 250_000_000 })), json!("2023-11-14T22:13:20.250Z"));
        assert_eq!(time(None), Value::Null);
        assert_eq!(duration(Some(&prost_types::Duration { seconds: 2, nanos: 500_000_000 })), json!("2.5s"));
        assert_eq!(duration(Some(&prost_types::Duration { seconds: 0, nanos: 250_000_000 })), json!("250ms"));
        assert_eq!(duration(Some(&prost_types::Duration { seconds: 86_400, nanos: 0 })), json!("86400s"));
    }

    #[test]
    fn a_list_is_aligned_columns_and_absent_values_are_dashes() {
        let a = Tenant { tenant_id: "acme".into(), display_name: "Acme Corp".into(), ..Default::default() };
        let b = Tenant { tenant_id: "b".into(), disabled: true, ..Default::default() };
        let table = columns_table(&[tenant(&a), tenant(&b)], &["tenant_id", "display_name", "disabled"]);
        assert_eq!(table, "TENANT_ID  DISPLAY_NAME  DISABLED\nacme       Acme Corp     false\nb          -             true\n");
    }

    #[test]
    fn a_page_in_json_keeps_the_response_shape() {
        let printed =
            Printed::page("tenants", &[tenant(&Tenant { tenant_id: "acme".into(), ..Default::default() })], &["tenant_id"], "next");
        assert_eq!(printed.json["tenants"][0]["tenant_id"], "acme");
        assert_eq!(printed.json["tenants"][0]["created_at"], Value::Null);
        assert_eq!(printed.json["next_page_token"], "next");
        assert!(printed.note.is_some_and(|n| n.contains("--page-token next")));
    }

    #[test]
    fn a_webhook_shows_its_secret_only_when_the_server_sent_it() {
        let mut w = Webhook { webhook_id: "wh_1".into(), signature_scheme: SignatureScheme::StandardWebhooks as i32, ..Default::default() };
        assert!(webhook(&w).get("secret").is_none());
        assert_eq!(webhook(&w).get("signature_scheme"), Some(&json!("standard_webhooks")));
        w.secret = "whsec_abc".into();
        assert_eq!(webhook(&w).get("secret"), Some(&json!("whsec_abc")));
    }

    #[test]
    fn one_resource_is_field_value_lines_with_attempts_below() {
        let d = Delivery {
            delivery_id: "1-0:wh_1".into(),
            status: DeliveryStatus::Delivered as i32,
            attempts: vec![Attempt { attempt: 1, status_code: 200, ..Default::default() }],
            ..Default::default()
        };
        let text = vertical(&delivery(&d));
        assert!(text.contains("status              delivered\n"), "{text}");
        assert!(text.contains("attempts:\n  - attempt=1 status_code=200\n"), "{text}");
    }
}
