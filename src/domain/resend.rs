//! Sending events again on request: one delivery (`DeliveryService/ResendDelivery`), or a
//! tenant's events of a period (`DeliveryService/ReplayEvents`), bulk and paged like
//! [`super::redelivery`].
//!
//! Both put the event back into `<prefix>events` as a new entry, as a dead letter's redelivery
//! does ([`crate::deadletter::DeadLetter::redelivery_fields`] makes its fields): the original
//! fields, `id` set to the event id (receivers see the same `X-WSS-Event-Id`), the original
//! `created_at` kept, and routing restricted to one webhook. The entry then takes the ordinary
//! path: the webhook's current filter and transform, a fresh signature per attempt, attempt count
//! 1, the webhook's retry policy, its in-flight cap, circuit and backlog, and the delivery history
//! under the new entry's delivery id. The append is durable before the call answers; nothing
//! here sends anything. (The stream rather than the backlog: a new entry gives the new delivery
//! its own id, and keeps per-webhook ordering by stream order.)
//!
//! **Where the event comes from.** A resend reads the delivery's stream entry while
//! `WSS_STREAM_RETENTION` still keeps it; after that, a dead-lettered delivery's dead-letter
//! record (which holds the event's fields) — found among the records written from the time the
//! delivery was last updated. A delivered delivery whose entry was trimmed cannot be resent
//! (`FAILED_PRECONDITION`, saying so). A replay reads the stream only (`XRANGE` by the time an
//! entry entered it), so its period reaches back as far as the retention does. Entries that are
//! themselves copies put back by a resend, replay or redelivery (they carry the reserved
//! `_wss_webhook` / `_wss_created_at_ms` fields) are never replayed: their original is.
//!
//! **Matching** (replay): the tenant's enabled webhooks (or the one asked for) whose event types
//! and filter want the event now, by the same rules as the transformer
//! ([`crate::pipeline::transformer::plan_one`]); evaluating filters needs the evaluating threads'
//! stack, so the gRPC layer runs [`Resender::replay`] on such a thread.

use std::sync::Arc;

use super::{
    model::TypePattern,
    redelivery::hindrance,
    routing::{Routing, RoutingHandle},
    store::Store,
    DomainError,
};
use crate::{
    deadletter::{DeadLetter, Fields},
    expr::Evaluator,
    history::{self, DeliveryRecord, Status},
    pipeline::{
        event::{parse_entry, CREATED_AT_FIELD, ONLY_WEBHOOK_FIELD},
        test_event::ID_PREFIX as TEST_EVENT_PREFIX,
    },
    streams::parse_id,
};

/// Most stream entries one replay call examines, of any tenant, so that a quiet tenant in a busy
/// stream cannot make a call take unbounded time; the call then returns a token to go on.
const SCAN_LIMIT: usize = 20_000;
/// Entries read per `XRANGE`.
const BATCH: usize = 1000;
/// Dead-letter records a resend looks through for the delivery's own.
const DEAD_LETTER_SCAN: usize = 20_000;
/// How far before the delivery's last update its dead-letter record is looked for (instances'
/// clocks and Redis's differ a little).
const CLOCK_SLACK_MS: u64 = 5 * 60 * 1000;

/// Where a resent event's fields were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    /// The delivery's stream entry, still retained.
    Stream,
    /// The delivery's dead-letter record.
    DeadLetter,
}

impl EventSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Stream => "stream",
            EventSource::DeadLetter => "dead_letter",
        }
    }
}

/// A delivery scheduled again.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    /// The new delivery's id (`<new entry id>:<webhook id>`).
    pub delivery_id: String,
    pub event_id: String,
    pub webhook_id: String,
    /// The new entry in `<prefix>events`.
    pub stream_entry_id: String,
    /// The entry the event came from.
    pub original_stream_entry_id: String,
}

/// Which events a replay sends again, checked.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    pub tenant_id: String,
    /// Only this webhook; empty for every one of the tenant that matches.
    pub webhook_id: String,
    /// Only events of these types; empty for all.
    pub event_types: Vec<TypePattern>,
    /// Entered the stream at or after (Unix ms).
    pub since_ms: u64,
    /// Entered the stream before (Unix ms); later than `since_ms`.
    pub until_ms: u64,
}

impl Replay {
    /// The `XRANGE` bounds of the period, resuming after `token` when it lies inside it.
    fn range(&self, token: &str) -> (String, String) {
        let inside = parse_id(token).is_some_and(|(ms, _)| ms >= self.since_ms && ms < self.until_ms);
        let start = if inside { format!("({token}") } else { format!("{}-0", self.since_ms) };
        (start, format!("{}-18446744073709551615", self.until_ms - 1))
    }

    fn wants_type(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|p| p.matches(event_type))
    }
}

/// What one replay call did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub scheduled: Vec<Scheduled>,
    /// Entries of the tenant in the period looked at.
    pub examined: usize,
    /// Events that produced at least one delivery.
    pub replayed: usize,
    /// Non-empty when more of the period may follow: the last entry examined.
    pub next_token: String,
}

/// True for an entry that a resend, replay or redelivery put back (it names its webhook or
/// keeps an earlier `created_at`).
fn is_copy(fields: &Fields) -> bool {
    fields.iter().any(|(k, _)| k == ONLY_WEBHOOK_FIELD.as_bytes() || k == CREATED_AT_FIELD.as_bytes())
}

fn tenant_of(fields: &Fields) -> Option<&[u8]> {
    fields.iter().find(|(k, _)| k == b"tenant").map(|(_, v)| v.as_slice())
}

/// The fields of the entry that sends `fields`' event again to `webhook_id` only.
fn copy_for(tenant_id: &str, webhook_id: &str, event_id: &str, stream_entry_id: &str, fields: Fields) -> Result<Fields, String> {
    let record = DeadLetter {
        tenant_id: tenant_id.to_owned(),
        webhook_id: webhook_id.to_owned(),
        event_id: event_id.to_owned(),
        stream_entry_id: stream_entry_id.to_owned(),
        raw_fields: fields,
        ..Default::default()
    };
    record.redelivery_fields(None).map_err(|why| why.to_string())
}

/// Resends and replays against one store and its routing snapshot.
pub struct Resender<'a> {
    pub store: &'a Store,
    pub routing: &'a RoutingHandle,
    /// `WSS_MAX_EVENT_BYTES`: entries over it were never delivered, and are not replayed.
    pub max_event_bytes: usize,
}

impl Resender<'_> {
    /// The routing snapshot, reloaded first when the configuration moved.
    fn fresh_routing(&self) -> Result<Arc<Routing>, DomainError> {
        if self.store.config_version()? != self.routing.current().version {
            self.routing.reload(self.store)?;
        }
        Ok(self.routing.current())
    }

    /// Schedules `delivery` again (see the module docs); the caller has checked who may.
    pub fn resend(&self, delivery: &DeliveryRecord) -> Result<(Scheduled, EventSource), DomainError> {
        let refuse = |why: String| DomainError::FailedPrecondition(format!("delivery {:?} cannot be resent: {why}", delivery.id));
        if delivery.status == Status::Retrying {
            return Err(refuse(
                "it is still being retried; resend it once it is delivered or dead-lettered (GetDelivery shows its status)".into(),
            ));
        }
        if delivery.event_id.starts_with(TEST_EVENT_PREFIX) && parse_id(&delivery.stream_entry_id).is_none() {
            return Err(refuse("it is a test event, which is never sent again; send another with WebhookService/SendTestEvent".into()));
        }
        let routing = self.fresh_routing()?;
        let target = DeadLetter { tenant_id: delivery.tenant_id.clone(), webhook_id: delivery.webhook_id.clone(), ..Default::default() };
        if let Some((reason, why)) = hindrance(&routing, &target) {
            return Err(DomainError::Precondition { reason, message: format!("delivery {:?} cannot be resent: {why}", delivery.id) });
        }
        let (fields, source) = match self.event_fields(delivery)? {
            Some(found) => found,
            None => {
                let why = match delivery.status {
                    Status::DeadLettered => format!(
                        "its event is no longer held: stream entry {} was trimmed (WSS_STREAM_RETENTION) and its dead-letter record was redelivered or trimmed (WSS_DEAD_LETTER_MAXLEN)",
                        delivery.stream_entry_id
                    ),
                    _ => format!(
                        "its event is no longer held: stream entry {} was trimmed (WSS_STREAM_RETENTION), and a delivered event keeps no other copy",
                        delivery.stream_entry_id
                    ),
                };
                return Err(refuse(why));
            }
        };
        let fields =
            copy_for(&delivery.tenant_id, &delivery.webhook_id, &delivery.event_id, &delivery.stream_entry_id, fields).map_err(refuse)?;
        let new_id = self.store.append_events(&delivery.tenant_id, &[fields])?.pop().unwrap_or_default();
        log::info!(target: "wss::grpc", tenant = delivery.tenant_id.as_str(), webhook = delivery.webhook_id.as_str(), event_id = delivery.event_id.as_str(), outcome = "resent";
            "delivery {} resent as stream entry {new_id} (event from the {})", delivery.id, source.as_str());
        Ok((
            Scheduled {
                delivery_id: history::delivery_id(&new_id, &delivery.webhook_id),
                event_id: delivery.event_id.clone(),
                webhook_id: delivery.webhook_id.clone(),
                stream_entry_id: new_id,
                original_stream_entry_id: delivery.stream_entry_id.clone(),
            },
            source,
        ))
    }

    /// The delivery's event fields: its stream entry while retained, else its dead-letter record's.
    fn event_fields(&self, delivery: &DeliveryRecord) -> Result<Option<(Fields, EventSource)>, DomainError> {
        if parse_id(&delivery.stream_entry_id).is_some() {
            if let Some(fields) = self.store.event_entry(&delivery.tenant_id, &delivery.stream_entry_id)?.filter(|f| !f.is_empty()) {
                return Ok(Some((fields, EventSource::Stream)));
            }
        }
        if delivery.status != Status::DeadLettered {
            return Ok(None);
        }
        let from_ms = delivery.updated_at_ms.saturating_sub(CLOCK_SLACK_MS);
        let record = self.store.find_dead_letter(&delivery.stream_entry_id, &delivery.webhook_id, from_ms, DEAD_LETTER_SCAN)?;
        Ok(record.filter(|r| !r.raw_fields.is_empty()).map(|r| (r.raw_fields, EventSource::DeadLetter)))
    }

    /// Sends again up to `limit` events of `replay`, oldest first, after `token`.
    pub fn replay(&self, replay: &Replay, evaluator: &Evaluator, limit: usize, token: &str) -> Result<ReplayReport, DomainError> {
        let routing = self.fresh_routing()?;
        let Some(routes) = routing.tenants.get(&replay.tenant_id) else {
            return Err(DomainError::NotFound { kind: "tenant", id: replay.tenant_id.clone() });
        };
        if routes.tenant.disabled {
            return Err(DomainError::FailedPrecondition(format!(
                "tenant {:?} is disabled; enable it with TenantService/UpdateTenant, then replay",
                replay.tenant_id
            )));
        }
        let candidates: Vec<_> = if replay.webhook_id.is_empty() {
            routes.routes.iter().filter(|r| r.is_active()).collect()
        } else {
            let target = DeadLetter { tenant_id: replay.tenant_id.clone(), webhook_id: replay.webhook_id.clone(), ..Default::default() };
            if let Some((reason, why)) = hindrance(&routing, &target) {
                return Err(DomainError::Precondition {
                    reason,
                    message: format!("cannot replay to webhook {:?}: {why}", replay.webhook_id),
                });
            }
            routes.routes.iter().filter(|r| *r.id == *replay.webhook_id).collect()
        };
        let (mut start, end) = replay.range(token);
        let mut report = ReplayReport::default();
        // (entry id, fields, webhook id, event id) to append, in order.
        let mut copies: Vec<(String, Fields, String, String)> = Vec::new();
        let mut scanned = 0;
        'scan: loop {
            let entries = self.store.events_between(&replay.tenant_id, &start, &end, BATCH)?;
            let exhausted = entries.len() < BATCH;
            for entry in entries {
                scanned += 1;
                start = format!("({}", entry.id);
                let Some(fields) = entry.fields.as_ref() else { continue };
                if tenant_of(fields) != Some(replay.tenant_id.as_bytes()) || is_copy(fields) {
                    continue;
                }
                report.examined += 1;
                // An entry that breaks the contract was dead-lettered when it was read; not again.
                let Ok(event) = parse_entry(&entry, self.max_event_bytes) else { continue };
                if !replay.wants_type(&event.event_type) {
                    continue;
                }
                let mut any = false;
                for route in &candidates {
                    if crate::pipeline::transformer::plan_one(evaluator, &event, route).is_none() {
                        continue;
                    }
                    let Ok(copy) = copy_for(&event.tenant, &route.id, &event.id, &entry.id, fields.clone()) else { continue };
                    copies.push((entry.id.clone(), copy, route.id.to_string(), event.id.clone()));
                    any = true;
                }
                if any {
                    report.replayed += 1;
                    if report.replayed == limit {
                        report.next_token = entry.id.clone();
                        break 'scan;
                    }
                }
                if scanned >= SCAN_LIMIT {
                    report.next_token = entry.id.clone();
                    break 'scan;
                }
            }
            if exhausted {
                break;
            }
            if scanned >= SCAN_LIMIT {
                report.next_token = start[1..].to_owned();
                break;
            }
        }
        let fields: Vec<Fields> = copies.iter().map(|(_, f, _, _)| f.clone()).collect();
        let ids = self.store.append_events(&replay.tenant_id, &fields)?;
        for ((original, _, webhook_id, event_id), new_id) in copies.into_iter().zip(ids) {
            report.scheduled.push(Scheduled {
                delivery_id: history::delivery_id(&new_id, &webhook_id),
                event_id,
                webhook_id,
                stream_entry_id: new_id,
                original_stream_entry_id: original,
            });
        }
        log::info!(target: "wss::grpc", tenant = replay.tenant_id.as_str(), outcome = "replayed";
            "replay of tenant {} from {} to {} ms: {} events examined, {} deliveries scheduled{}", replay.tenant_id, replay.since_ms,
            replay.until_ms, report.examined, report.scheduled.len(), if report.next_token.is_empty() { "" } else { ", more to come" });
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::RawEntry;

    fn raw_entry(id: &str, fields: &[(&str, &str)]) -> RawEntry {
        RawEntry { id: id.to_owned(), fields: Some(fields.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()) }
    }

    #[test]
    fn the_period_is_a_stream_range_resuming_after_the_token() {
        let replay = Replay { since_ms: 10, until_ms: 20, ..Default::default() };
        assert_eq!(replay.range(""), ("10-0".to_owned(), "19-18446744073709551615".to_owned()));
        assert_eq!(replay.range("12-3").0, "(12-3");
        assert_eq!(replay.range("3-0").0, "10-0", "a token before the period starts at the period");
        assert_eq!(replay.range("25-0").0, "10-0", "a token after the period starts at the period");
    }

    #[test]
    fn copies_are_recognised_and_target_one_webhook() {
        let entry = raw_entry("5-0", &[("tenant", "acme"), ("type", "t"), ("data", "{}")]);
        let fields = entry.fields.unwrap();
        assert!(!is_copy(&fields));
        assert_eq!(tenant_of(&fields), Some(&b"acme"[..]));
        let copy = copy_for("acme", "wh_1", "5-0", "5-0", fields).unwrap();
        assert!(is_copy(&copy), "a copy is never replayed again");
        let named = |name: &str| copy.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(named("id").as_deref(), Some("5-0"), "same event id");
        assert_eq!(named(CREATED_AT_FIELD).as_deref(), Some("5"), "same created_at");
        assert_eq!(named(ONLY_WEBHOOK_FIELD).as_deref(), Some("wh_1"));
        let other = raw_entry("6-0", &[("tenant", "globex"), ("type", "t"), ("data", "{}")]).fields.unwrap();
        assert!(copy_for("acme", "wh_1", "6-0", "6-0", other).is_err(), "another tenant's entry");
    }

    #[test]
    fn type_patterns_select_events() {
        let replay = Replay { event_types: vec![TypePattern::new("order.*")], ..Default::default() };
        assert!(replay.wants_type("order.created"));
        assert!(!replay.wants_type("user.created"));
        assert!(Replay::default().wants_type("anything"));
    }
}
