//! `wss.v1.EventService`: PublishEvent appends an event to `<prefix>events` exactly as an `XADD`
//! by another system would (docs/contract.md §1), for services that speak gRPC rather than Redis.
//!
//! The request is held to the stream contract up front — known tenant, event type, JSON data,
//! event id, attribute names — so that a gRPC caller hears about a mistake at once instead of
//! finding its event in the dead-letter stream. The size limit is left to the reader, which alone
//! knows the configured value; tonic's own 4 MiB message limit bounds the request meanwhile.
//!
//! Idempotent publishing (docs/contract.md §9): an event with an `event_id` is appended once per tenant and
//! id within `WSS_DEDUPE_WINDOW` (default 24 h) — a script checks and remembers the id with the
//! `XADD`, in one step (`<prefix>published:<tenant>:<event id>`, expiring with the window) — and a
//! repeat answers the first publication's entry with `duplicate` set. Without an `event_id`
//! every call appends.

use std::sync::Arc;

use serde_json::value::RawValue;
use tonic::{Request, Response, Status};

use super::plane::{ControlPlane, TARGET};
use crate::{
    domain::{
        model::{invalid, validate_id},
        store::Published,
        DomainError,
    },
    pipeline::event::{CREATED_AT_FIELD, MAX_TIME_MS},
    proto::{self, event_service_server::EventService},
};

/// Longest event type, in bytes.
const MAX_EVENT_TYPE: usize = 256;
/// Longest event id, in bytes (docs/contract.md §1).
const MAX_EVENT_ID: usize = 128;
/// Stream fields that carry the event itself; attributes cannot take these names.
const RESERVED_FIELDS: [&str; 4] = ["tenant", "type", "data", "id"];

pub(super) struct EventApi {
    plane: Arc<ControlPlane>,
}

impl EventApi {
    pub(super) fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }
}

/// A checked PublishEvent request.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    tenant_id: String,
    event_type: String,
    data: String,
    event_id: Option<String>,
    /// Sorted by name, so that the stream entry does not depend on map order.
    attributes: Vec<(String, String)>,
}

impl Event {
    fn from_request(req: proto::PublishEventRequest) -> Result<Self, DomainError> {
        validate_id("tenant_id", &req.tenant_id)?;
        if req.event_type.is_empty() {
            return Err(invalid("event_type", "is required"));
        }
        if req.event_type.len() > MAX_EVENT_TYPE || !req.event_type.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("event_type", format!("use 1 to {MAX_EVENT_TYPE} visible ASCII characters")));
        }
        if req.data.is_empty() {
            return Err(invalid("data", "is required: send the event's payload as JSON text"));
        }
        serde_json::from_str::<&RawValue>(&req.data).map_err(|e| invalid("data", format!("not valid JSON: {e}")))?;
        let event_id = if req.event_id.is_empty() {
            None
        } else if req.event_id.len() > MAX_EVENT_ID || !req.event_id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(invalid(
                "event_id",
                format!(
                    "use at most {MAX_EVENT_ID} printable ASCII characters without spaces, or leave it empty to use the stream entry id"
                ),
            ));
        } else {
            Some(req.event_id)
        };
        let mut attributes: Vec<(String, String)> = req.attributes.into_iter().collect();
        attributes.sort();
        for (name, value) in &attributes {
            // The pipeline would dead-letter it as invalid_field; say so now.
            if name == CREATED_AT_FIELD && !value.parse::<u64>().is_ok_and(|ms| ms <= MAX_TIME_MS) {
                return Err(invalid(
                    "attributes",
                    format!("{CREATED_AT_FIELD} must be Unix milliseconds from 0 to {MAX_TIME_MS} (year 9999)"),
                ));
            }
            if name.is_empty() {
                return Err(invalid("attributes", "an attribute name is empty"));
            }
            if RESERVED_FIELDS.contains(&name.as_str()) {
                return Err(invalid(
                    "attributes",
                    format!("{name:?} is a field of the event itself; use tenant_id, event_type, data or event_id"),
                ));
            }
        }
        Ok(Self { tenant_id: req.tenant_id, event_type: req.event_type, data: req.data, event_id, attributes })
    }

    /// The stream fields in XADD order: tenant, type, data, [id], attributes.
    fn fields(&self) -> Vec<(&str, &str)> {
        let mut fields = vec![("tenant", self.tenant_id.as_str()), ("type", &self.event_type), ("data", &self.data)];
        if let Some(id) = &self.event_id {
            fields.push(("id", id));
        }
        fields.extend(self.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        fields
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    async fn publish_event(&self, request: Request<proto::PublishEventRequest>) -> Result<Response<proto::PublishEventResponse>, Status> {
        let event = Event::from_request(request.into_inner())?;
        let (event, published) = self
            .plane
            .read(move |store| {
                store.get_tenant(&event.tenant_id)?;
                let published = match &event.event_id {
                    Some(id) => store.publish_event_once(&event.tenant_id, id, &event.fields())?,
                    None => Published { stream_entry_id: store.publish_event(&event.tenant_id, &event.fields())?, duplicate: false },
                };
                Ok((event, published))
            })
            .await?;
        let Published { stream_entry_id, duplicate } = published;
        if duplicate {
            log::debug!(target: TARGET, "event {} of tenant {} was published before as {stream_entry_id}: not appended again", event.event_id.as_deref().unwrap_or_default(), event.tenant_id);
        } else {
            log::debug!(target: TARGET, "published {} event {stream_entry_id} of tenant {}", event.event_type, event.tenant_id);
        }
        let event_id = event.event_id.unwrap_or_else(|| stream_entry_id.clone());
        Ok(Response::new(proto::PublishEventResponse { stream_entry_id, event_id, duplicate }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> proto::PublishEventRequest {
        proto::PublishEventRequest {
            tenant_id: "acme".into(),
            event_type: "order.status_updated".into(),
            data: r#"{"order_id":"A-1001","status":"shipped"}"#.into(),
            ..Default::default()
        }
    }

    fn invalid_of(req: proto::PublishEventRequest) -> (&'static str, String) {
        match Event::from_request(req).unwrap_err() {
            DomainError::Invalid { field, message } => (field, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn fields_come_in_the_contract_order() {
        let mut req = request();
        req.event_id = "evt-1".into();
        req.attributes.insert("zone".into(), "eu".into());
        req.attributes.insert("source".into(), "shop".into());
        let event = Event::from_request(req).unwrap();
        let names: Vec<&str> = event.fields().iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["tenant", "type", "data", "id", "source", "zone"]);

        let without_id = Event::from_request(request()).unwrap();
        let names: Vec<&str> = without_id.fields().iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["tenant", "type", "data"]);
    }

    #[test]
    fn data_must_be_json() {
        let mut req = request();
        req.data = "{not json".into();
        let (field, message) = invalid_of(req);
        assert_eq!(field, "data");
        assert!(message.starts_with("not valid JSON: "), "{message}");
        let mut req = request();
        req.data = "42".into();
        assert!(Event::from_request(req).is_ok());
        let mut req = request();
        req.data = String::new();
        assert_eq!(invalid_of(req).0, "data");
    }

    #[test]
    fn ids_types_and_attributes_are_checked() {
        let mut req = request();
        req.tenant_id = "Acme".into();
        assert_eq!(invalid_of(req).0, "tenant_id");
        let mut req = request();
        req.event_type = "order created".into();
        assert_eq!(invalid_of(req).0, "event_type");
        let mut req = request();
        req.event_type = String::new();
        assert_eq!(invalid_of(req).0, "event_type");
        let mut req = request();
        req.event_id = "has space".into();
        assert_eq!(invalid_of(req).0, "event_id");
        let mut req = request();
        req.event_id = "x".repeat(129);
        assert_eq!(invalid_of(req).0, "event_id");
        let mut req = request();
        req.event_id = "~".repeat(128);
        assert!(Event::from_request(req).is_ok());
        for name in ["tenant", "type", "data", "id", ""] {
            let mut req = request();
            req.attributes.insert(name.into(), "v".into());
            assert_eq!(invalid_of(req).0, "attributes", "{name:?}");
        }
        for bad in ["18446744073709551615", "253402300800000", "-1", "soon"] {
            let mut req = request();
            req.attributes.insert(CREATED_AT_FIELD.into(), bad.into());
            assert_eq!(invalid_of(req).0, "attributes", "{bad:?}");
        }
        let mut req = request();
        req.attributes.insert(CREATED_AT_FIELD.into(), "253402300799999".into());
        assert!(Event::from_request(req).is_ok());
    }
}
