//! Transformer: routes each event to the matching webhooks of its tenant, using the current
//! routing snapshot (no Redis access), and builds the request body once for all of them.
//!
//! An unknown or disabled tenant is a rejection (dead-lettered with its reason and
//! acknowledged); an event no webhook wants is acknowledged as unrouted.

use std::sync::Arc;

use crossbeam_channel::{select, Receiver, Sender};

use super::{event::{envelope, Rejection}, Completion, Delivery, EventMeta, Inbound};
use crate::{deadletter::Reason, domain::routing::RoutingHandle};

pub fn run(routing: &RoutingHandle, input: Receiver<Inbound>, out: Sender<Delivery>, done: Sender<Completion>, shutdown: Receiver<()>) {
    loop {
        let inbound = select! {
            recv(input) -> msg => match msg { Ok(m) => m, Err(_) => return },
            recv(shutdown) -> _ => return,
        };
        if !route(routing, inbound, &out, &done) {
            return;
        }
    }
}

/// Routes one event; false when a next stage is gone.
fn route(routing: &RoutingHandle, inbound: Inbound, out: &Sender<Delivery>, done: &Sender<Completion>) -> bool {
    let Inbound { event, ticket } = inbound;
    let snapshot = routing.current();
    let reject = |reason: Reason, detail: String| Completion::Rejected {
        ticket: ticket.clone(),
        rejection: Rejection {
            reason,
            detail,
            tenant: event.tenant.clone(),
            event_type: event.event_type.clone(),
            event_id: event.id.clone(),
        },
        raw_fields: raw_fields(&event),
    };
    let Some(tenant) = snapshot.tenants.get(&event.tenant) else {
        let detail = format!("tenant {:?} does not exist; create it with TenantService/CreateTenant", event.tenant);
        return done.send(reject(Reason::UnknownTenant, detail)).is_ok();
    };
    if tenant.tenant.disabled {
        let detail = format!("tenant {:?} is disabled", event.tenant);
        return done.send(reject(Reason::TenantDisabled, detail)).is_ok();
    }
    let routes: Vec<_> = tenant.routes.iter().filter(|r| r.wants(&event.event_type)).collect();
    if routes.is_empty() {
        log::debug!(target: "wss::transformer", "event {} ({}) of tenant {} matches no webhook", event.id, event.event_type, event.tenant);
        return done.send(Completion::Unrouted { ticket }).is_ok();
    }
    let body: Arc<[u8]> = envelope(&event).into();
    let meta = Arc::new(EventMeta { id: event.id, event_type: event.event_type, tenant: event.tenant });
    ticket.expect(routes.len());
    for route in routes {
        let delivery = Delivery {
            ticket: ticket.clone(),
            event: meta.clone(),
            webhook_id: route.webhook.id.clone(),
            body: body.clone(),
            attempt: 1,
            history: Vec::new(),
        };
        if out.send(delivery).is_err() {
            return false;
        }
    }
    true
}

/// The event's fields again, for a dead-letter record of an entry rejected after parsing.
fn raw_fields(event: &super::event::Event) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = vec![
        (b"tenant".to_vec(), event.tenant.as_bytes().to_vec()),
        (b"type".to_vec(), event.event_type.as_bytes().to_vec()),
        (b"data".to_vec(), event.data.get().as_bytes().to_vec()),
    ];
    if event.id != event.stream_id {
        fields.push((b"id".to_vec(), event.id.as_bytes().to_vec()));
    }
    for (k, v) in &event.attributes {
        fields.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    fields
}
