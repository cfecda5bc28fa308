//! Test events (`WebhookService/SendTestEvent`): one signed attempt to a webhook now, outside the
//! pipeline, its outcome returned to the caller.
//!
//! The event is checked by the same rules as a stream entry ([`parse_entry`]: type, JSON data,
//! depth, size), its body is the envelope (the webhook's filter and transform are not applied:
//! a test should reach the receiver whatever they say), signed by [`signed_headers`] with the
//! webhook's secret(s) as any attempt is, and sent by [`send_once`] — the sender's own code, with
//! the delivery agents (address guard, proxy, trusted roots, the webhook's client certificate)
//! and the webhook's attempt timeout. Its id is `wss-test-<ms>-<random>`, used as event id and
//! in place of a stream entry id, so its delivery id is `wss-test-…:<webhook id>`.
//!
//! The caller records the attempt like any other ([`TestOutcome::record`]): a history record,
//! `DELIVERED` on a 2xx, else `DEAD_LETTERED` with reason `test_event` (a test is never retried
//! and writes no dead-letter record), and the webhook's stats. It takes no in-flight slot and
//! does not move the webhook's circuit: a developer's button must not open a production circuit.
//!
//! Blocking (it waits for the receiver): the gRPC layer runs it on the blocking pool.

use crate::{
    clock::Clock,
    deadletter::AttemptRecord,
    domain::routing::Route,
    history::{delivery_id, DeliveryRecord, Status},
    http::Agents,
    otel::Tracer,
    pipeline::{
        event::{envelope, parse_entry, Rejection, CREATED_AT_FIELD},
        messages::{EventMeta, Verdict},
        sender::send_once,
        signer::signed_headers,
    },
    streams::RawEntry,
};

/// How a test event's id starts (`wss-test-<ms>-<random>`).
pub const ID_PREFIX: &str = "wss-test-";
/// The event type when the request gives none.
pub const DEFAULT_TYPE: &str = "wss.test";
/// `DeliveryRecord.dead_letter_reason` of a failed test attempt.
pub const FAILED_REASON: &str = "test_event";

/// A test event, checked and ready to send.
#[derive(Debug)]
pub struct TestEvent {
    pub id: String,
    pub event_type: String,
    pub tenant: String,
    /// The request body: the envelope.
    pub body: Vec<u8>,
}

impl TestEvent {
    /// The test event for `webhook_id` of `tenant`; `event_type` / `data` empty for the defaults.
    /// `Err`: why the type or data cannot be an event (the stream's rules).
    pub fn new(clock: &Clock, tenant: &str, webhook_id: &str, event_type: &str, data: &str, max_bytes: usize) -> Result<Self, Rejection> {
        let now = clock.now_ms();
        let mut random = [0u8; 4];
        // Without randomness the millisecond alone still tells tests apart, nearly always.
        let _ = getrandom::fill(&mut random);
        let id = format!("{ID_PREFIX}{now}-{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let event_type = if event_type.is_empty() { DEFAULT_TYPE } else { event_type };
        let default_data;
        let data = if data.is_empty() {
            default_data = serde_json::json!({
                "test": true,
                "webhook_id": webhook_id,
                "message": "a test event sent with WebhookService/SendTestEvent",
            })
            .to_string();
            &default_data
        } else {
            data
        };
        let fields = [("tenant", tenant), ("type", event_type), ("data", data), ("id", &id), (CREATED_AT_FIELD, &now.to_string())]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        let event = parse_entry(&RawEntry { id: id.clone(), fields: Some(fields) }, max_bytes)?;
        Ok(Self { body: envelope(&event), id, event_type: event.event_type, tenant: event.tenant })
    }
}

/// What the one attempt did.
#[derive(Debug)]
pub struct TestOutcome {
    pub attempt: AttemptRecord,
    pub succeeded: bool,
    /// The history record to write.
    pub record: DeliveryRecord,
}

/// Signs `event` for `route` now and sends it once. Blocking.
pub fn send(clock: &Clock, agents: &Agents, route: &Route, event: &TestEvent) -> TestOutcome {
    let meta = EventMeta::new(&event.id, &event.event_type, &event.tenant);
    let headers = signed_headers(&route.signer, &meta, 1, &event.body, clock.now_secs());
    let (attempt, verdict) = send_once(clock, agents, 0, route, &headers, &event.body, 1, Tracer::off().attempt(&meta, &route.id, 1));
    let succeeded = verdict == Verdict::Delivered;
    let ended_ms = attempt.started_at_ms + attempt.duration_ms;
    let record = DeliveryRecord {
        id: delivery_id(&event.id, &route.id),
        tenant_id: event.tenant.clone(),
        webhook_id: route.id.to_string(),
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        stream_entry_id: event.id.clone(),
        status: if succeeded { Status::Delivered } else { Status::DeadLettered },
        created_at_ms: attempt.started_at_ms,
        updated_at_ms: ended_ms,
        next_attempt_at_ms: 0,
        attempts: vec![attempt.clone()],
        dead_letter_reason: if succeeded { String::new() } else { FAILED_REASON.to_owned() },
    };
    TestOutcome { attempt, succeeded, record }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_event_has_defaults_and_follows_the_stream_rules() {
        let event = TestEvent::new(&Clock::System, "acme", "wh_1", "", "", 1 << 20).unwrap();
        assert!(event.id.starts_with("wss-test-"), "{}", event.id);
        assert_eq!(event.event_type, DEFAULT_TYPE);
        let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(body["id"], event.id.as_str());
        assert_eq!(body["data"]["test"], true);
        assert_eq!(body["data"]["webhook_id"], "wh_1");
        let given = TestEvent::new(&Clock::System, "acme", "wh_1", "order.created", r#"{"n":1}"#, 1 << 20).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&given.body).unwrap();
        assert_eq!((body["type"].as_str(), body["data"]["n"].as_i64()), (Some("order.created"), Some(1)));
        assert!(TestEvent::new(&Clock::System, "acme", "wh_1", "", "{not json", 1 << 20).is_err());
        assert!(TestEvent::new(&Clock::System, "acme", "wh_1", "bad type", "{}", 1 << 20).is_err());
        assert!(TestEvent::new(&Clock::System, "acme", "wh_1", "", r#"{"big":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#, 64).is_err());
    }
}
