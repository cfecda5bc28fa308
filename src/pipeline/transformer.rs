//! Transformer: routes each event to the matching webhooks of its tenant, using the current
//! routing snapshot (no Redis access), and makes each one's request body.
//!
//! - An unknown or disabled tenant is a rejection (dead-lettered with its reason and
//!   acknowledged).
//! - A webhook is a candidate when its `event_types` match. Its `filter`, if it has one, then
//!   decides; its `transform`, if it has one, makes the body; otherwise the body is the envelope.
//! - An event no webhook wants — no type matches, or every filter said no — is acknowledged as
//!   unrouted.
//! - A redelivered dead letter (`event.only_webhook`) is routed by the same rules, but only to
//!   that webhook, and only if it is one of the event's tenant's: the reserved field can never
//!   carry an event across tenants. If that webhook no longer exists, is disabled, or no longer
//!   wants the event, it is acknowledged as unrouted (and logged at INFO).
//! - A filter or transform that fails on the event (a missing field, a wrong type, a filter that
//!   is not boolean, a value with no JSON form) dead-letters *that* delivery, with reason
//!   `filter_error` or `transform_error` and the error as detail; the outcome stage writes it and
//!   logs it at WARN. The event's other deliveries go ahead, and so does the next event.
//!
//! Costs are paid once per event, not per webhook: the event is converted for CEL at most once
//! (and only when some candidate has an expression), the envelope is serialized at most once
//! and shared by every delivery that sends it; only a transform's output is serialized per
//! webhook. The CEL root context is built once, when the thread starts ([`Evaluator`]).

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::{select, Receiver, Sender};

use super::{
    event::{envelope, Event, Rejection, CREATED_AT_FIELD, ONLY_WEBHOOK_FIELD},
    messages::{Completion, Delivery, EventMeta, Inbound},
};
use crate::{
    clock::Clock,
    deadletter::Reason,
    domain::{
        routing::{Route, Routing, RoutingHandle},
        store::Store,
    },
    expr::{Bound, EvalError, Evaluator, Failure, Filter, Outcome, Transform},
};

/// Longest excerpt of an expression quoted in a dead letter's detail, in characters.
const QUOTED_EXPRESSION_CHARS: usize = 200;

pub fn run(
    clock: &Clock,
    routing: &RoutingHandle,
    store: &Store,
    input: Receiver<Inbound>,
    out: Sender<Delivery>,
    done: Sender<Completion>,
    shutdown: Receiver<()>,
) {
    let evaluator = Evaluator::new();
    let mut freshness = Freshness { store, clock, last_check: None };
    loop {
        let inbound = select! {
            recv(input) -> msg => match msg { Ok(m) => m, Err(_) => return },
            recv(shutdown) -> _ => return,
        };
        // A panic while routing one event dead-letters that event (`poison`) instead of killing
        // the stage; its deliveries, if it had handed any on already, go on as they are.
        let routed = catch_unwind(AssertUnwindSafe(|| route(routing, &mut freshness, &evaluator, &inbound, &out, &done)));
        let handed_on = match routed {
            Ok(handed_on) => handed_on,
            Err(panic) => {
                let what = panic.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| panic.downcast_ref::<String>().cloned());
                let event = &inbound.event;
                log::error!(target: "wss::transformer", event_id = event.id.as_str(), tenant = event.tenant.as_str();
                    "processing event {} (stream entry {}) panicked: {}; it is dead-lettered as poison", event.id, event.stream_id, what.as_deref().unwrap_or("(no message)"));
                let detail =
                    format!("processing the event panicked ({}); please report it with the event", what.as_deref().unwrap_or("no message"));
                done.send(rejected(&inbound, Reason::Poison, detail)).is_ok()
            }
        };
        if !handed_on {
            return;
        }
    }
}

/// Keeps a stale snapshot from turning events away. The snapshot follows Redis within a quarter
/// second, but a tenant or webhook created on another instance just before an event was
/// published may not be in it yet. Before an event is rejected as from an unknown tenant, or
/// acknowledged as unrouted because its tenant has no enabled webhook, the configuration version
/// is checked (one GET) and, if it moved, the snapshot is reloaded and the event routed again.
/// When the tenant has webhooks that merely don't want the event the same is done, but at most
/// every 100 ms, since such events can be common: a webhook added to a tenant that already has
/// others gets the events published from the moment every instance has seen it — within a
/// quarter second.
struct Freshness<'a> {
    store: &'a Store,
    clock: &'a Clock,
    last_check: Option<Instant>,
}

impl Freshness<'_> {
    const EVERY: Duration = Duration::from_millis(100);

    /// The snapshot to route `event` with: the current one, or a newer one when the event finds
    /// it stale (see above).
    fn snapshot_for(&mut self, routing: &RoutingHandle, event: &Event) -> Arc<Routing> {
        let snapshot = routing.current();
        let stale = match snapshot.tenants.get(&event.tenant) {
            // Unknown tenant, or one without any enabled webhook yet: check every time.
            None => self.catch_up(routing, false),
            Some(t) if !t.tenant.disabled && t.routes.is_empty() => self.catch_up(routing, false),
            // A redelivery to a webhook this snapshot does not have (re-enabled elsewhere just now?).
            Some(t) if event.only_webhook.as_ref().is_some_and(|only| !t.routes.iter().any(|r| *r.id == **only)) => {
                self.catch_up(routing, false)
            }
            Some(t) if !t.tenant.disabled && !t.routes.iter().any(|r| r.wants(&event.event_type)) => self.catch_up(routing, true),
            Some(_) => false,
        };
        if stale {
            routing.current()
        } else {
            snapshot
        }
    }

    /// True when a newer snapshot was loaded. `rate_limited`: skip when checked recently.
    fn catch_up(&mut self, routing: &RoutingHandle, rate_limited: bool) -> bool {
        if rate_limited && self.last_check.is_some_and(|at| self.clock.elapsed(at) < Self::EVERY) {
            return false;
        }
        self.last_check = Some(self.clock.now());
        match self.store.config_version() {
            Ok(version) if version != routing.current().version => routing.reload(self.store).is_ok(),
            _ => false,
        }
    }
}

/// Routes one event; false when a next stage is gone.
fn route(
    routing: &RoutingHandle,
    freshness: &mut Freshness<'_>,
    evaluator: &Evaluator,
    inbound: &Inbound,
    out: &Sender<Delivery>,
    done: &Sender<Completion>,
) -> bool {
    let Inbound { event, ticket } = inbound;
    let snapshot = freshness.snapshot_for(routing, event);
    let candidates = match candidates(&snapshot, event) {
        Ok(candidates) => candidates,
        Err(NotRouted::Rejected(reason, detail)) => return done.send(rejected(inbound, reason, detail)).is_ok(),
        Err(NotRouted::Unrouted) => return done.send(Completion::Unrouted { ticket: ticket.clone() }).is_ok(),
    };
    let plans = plan(evaluator, event, &candidates);
    if plans.is_empty() {
        log::debug!(target: "wss::transformer", "event {} ({}) of tenant {} is filtered out by every webhook whose types match", event.id, event.event_type, event.tenant);
        return done.send(Completion::Unrouted { ticket: ticket.clone() }).is_ok();
    }
    hand_on(inbound, plans, out, done)
}

/// Why an event goes no further than the transformer.
enum NotRouted {
    /// Dead-lettered with this reason and detail.
    Rejected(Reason, String),
    /// No webhook wants it: acknowledged.
    Unrouted,
}

/// The webhooks of the event's tenant whose types match it (only the one a redelivery names);
/// `Err` when its tenant is unknown or disabled, or none wants it.
fn candidates<'s>(snapshot: &'s Routing, event: &Event) -> Result<Vec<&'s Arc<Route>>, NotRouted> {
    let Some(tenant) = snapshot.tenants.get(&event.tenant) else {
        let detail = format!("tenant {:?} does not exist; create it with TenantService/CreateTenant", event.tenant);
        return Err(NotRouted::Rejected(Reason::UnknownTenant, detail));
    };
    if tenant.tenant.disabled {
        return Err(NotRouted::Rejected(Reason::TenantDisabled, format!("tenant {:?} is disabled", event.tenant)));
    }
    let candidates: Vec<&Arc<Route>> = tenant
        .routes
        .iter()
        .filter(|r| event.only_webhook.as_ref().is_none_or(|only| *r.id == **only))
        .filter(|r| r.wants(&event.event_type))
        .collect();
    if candidates.is_empty() {
        if let Some(only) = &event.only_webhook {
            log::info!(target: "wss::transformer", tenant = event.tenant.as_str(), webhook = only.as_str(), event_id = event.id.as_str(), outcome = "unrouted";
                "redelivered event {} is not sent: webhook {only} of tenant {} is gone, disabled, or no longer wants type {}", event.id, event.tenant, event.event_type);
        } else {
            log::debug!(target: "wss::transformer", "event {} ({}) of tenant {} matches no webhook's event types", event.id, event.event_type, event.tenant);
        }
        return Err(NotRouted::Unrouted);
    }
    Ok(candidates)
}

/// Hands each planned delivery on: to the signer, or (its expression failed) to the outcome
/// stage as abandoned; false when a next stage is gone.
fn hand_on(inbound: &Inbound, plans: Vec<(&Arc<Route>, Plan)>, out: &Sender<Delivery>, done: &Sender<Completion>) -> bool {
    let Inbound { event, ticket } = inbound;
    let meta = Arc::new(EventMeta::of(event));
    ticket.expect(plans.len());
    for (route, plan) in plans {
        let delivery = |body| Delivery {
            ticket: ticket.clone(),
            event: meta.clone(),
            webhook_id: route.id.clone(),
            body,
            attempt: 1,
            history: Vec::new(),
            backlog: None,
        };
        let sent = match plan {
            Plan::Send(body) => out.send(delivery(body)).is_ok(),
            Plan::DeadLetter { reason, detail, body } => {
                done.send(Completion::Abandoned { delivery: delivery(body), reason, detail }).is_ok()
            }
        };
        if !sent {
            return false;
        }
    }
    true
}

/// The event rejected after parsing: dead-lettered with `reason` and `detail`, and its fields.
fn rejected(inbound: &Inbound, reason: Reason, detail: String) -> Completion {
    let Inbound { event, ticket } = inbound;
    Completion::Rejected {
        ticket: ticket.clone(),
        rejection: Rejection {
            reason,
            detail,
            tenant: event.tenant.clone(),
            event_type: event.event_type.clone(),
            event_id: event.id.clone(),
        },
        raw_fields: raw_fields(event),
    }
}

/// What becomes of the event for one webhook whose types match.
#[derive(Debug)]
pub(crate) enum Plan {
    Send(Arc<[u8]>),
    /// An expression failed on the event; `body` is the envelope, kept in the dead letter.
    DeadLetter {
        reason: Reason,
        detail: String,
        body: Arc<[u8]>,
    },
}

/// The same rules for one webhook, as they stand now: `None` when its types no longer match the
/// event or its filter turns it away. For a delivery taken from the backlog
/// (`super::backlog`), whose webhook may have changed since the event was routed.
pub(crate) fn plan_one(evaluator: &Evaluator, event: &Event, route: &Arc<Route>) -> Option<Plan> {
    if !route.wants(&event.event_type) {
        return None;
    }
    plan(evaluator, event, &[route]).pop().map(|(_, plan)| plan)
}

/// Runs each candidate's filter and transform. Webhooks the filter turns away get no plan.
fn plan<'r>(evaluator: &Evaluator, event: &Event, candidates: &[&'r Arc<Route>]) -> Vec<(&'r Arc<Route>, Plan)> {
    let created_at = event.created_at();
    let view = event.view(&created_at);
    // Both made on first need, then shared by every webhook.
    let mut bound: Option<Result<Bound<'_>, EvalError>> = None;
    let mut envelope_body: Option<Arc<[u8]>> = None;
    let mut envelope_body = || envelope_body.get_or_insert_with(|| envelope(event).into()).clone();

    let mut plans = Vec::with_capacity(candidates.len());
    for &route in candidates {
        let outcome = match expressions(route) {
            Err(failure) => Err(failure),
            Ok((None, None)) => Ok(Outcome::Envelope),
            Ok((filter, transform)) => match bound.get_or_insert_with(|| evaluator.bind(&view)) {
                Ok(bound) => bound.apply(filter, transform).map_err(|failure| {
                    let (reason, source) = match &failure {
                        Failure::Filter(_) => (Reason::FilterError, route.filter.as_ref().map_or("", |e| &e.source)),
                        Failure::Transform(_) => (Reason::TransformError, route.transform.as_ref().map_or("", |e| &e.source)),
                    };
                    (reason, format!("{failure}; the expression: {}", quote(source)))
                }),
                // The data cannot be converted for CEL at all: whichever expression runs first fails.
                Err(err) => Err(if filter.is_some() {
                    (Reason::FilterError, format!("filter failed: {err}"))
                } else {
                    (Reason::TransformError, format!("transform failed: {err}"))
                }),
            },
        };
        match outcome {
            Ok(Outcome::Skip) => log::debug!(target: "wss::transformer", "event {} is filtered out for webhook {}", event.id, route.id),
            Ok(Outcome::Envelope) => plans.push((route, Plan::Send(envelope_body()))),
            Ok(Outcome::Body(body)) => plans.push((route, Plan::Send(body.into()))),
            Err((reason, detail)) => plans.push((route, Plan::DeadLetter { reason, detail, body: envelope_body() })),
        }
    }
    plans
}

/// A route's filter and transform, each if it has one.
type Expressions<'r> = (Option<&'r Filter>, Option<&'r Transform>);

/// A route's compiled expressions; a stored expression that does not compile is a failure of
/// every event the route gets.
fn expressions(route: &Route) -> Result<Expressions<'_>, (Reason, String)> {
    let filter = match route.filter.as_deref().map(|e| &e.compiled) {
        None => None,
        Some(Ok(filter)) => Some(filter),
        Some(Err(err)) => {
            return Err((Reason::FilterError, format!("the stored filter does not compile: {err}; replace it with UpdateWebhook")))
        }
    };
    let transform = match route.transform.as_deref().map(|e| &e.compiled) {
        None => None,
        Some(Ok(transform)) => Some(transform),
        Some(Err(err)) => {
            return Err((Reason::TransformError, format!("the stored transform does not compile: {err}; replace it with UpdateWebhook")))
        }
    };
    Ok((filter, transform))
}

/// An expression for a message: in backquotes, cut after [`QUOTED_EXPRESSION_CHARS`].
fn quote(source: &str) -> String {
    match source.char_indices().nth(QUOTED_EXPRESSION_CHARS) {
        Some((at, _)) => format!("`{}…`", &source[..at]),
        None => format!("`{source}`"),
    }
}

/// The event's fields again, for a dead-letter record of an entry rejected after parsing.
fn raw_fields(event: &Event) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = vec![
        (b"tenant".to_vec(), event.tenant.as_bytes().to_vec()),
        (b"type".to_vec(), event.event_type.as_bytes().to_vec()),
        (b"data".to_vec(), event.data.get().as_bytes().to_vec()),
    ];
    if event.id != event.stream_id {
        fields.push((b"id".to_vec(), event.id.as_bytes().to_vec()));
    }
    // A redelivery's reserved fields, so that redelivering this record again keeps them.
    if let Some(only) = &event.only_webhook {
        fields.push((ONLY_WEBHOOK_FIELD.as_bytes().to_vec(), only.as_bytes().to_vec()));
    }
    if event.stream_id.split('-').next() != Some(event.created_at_ms.to_string().as_str()) {
        fields.push((CREATED_AT_FIELD.as_bytes().to_vec(), event.created_at_ms.to_string().into_bytes()));
    }
    for (k, v) in &event.attributes {
        fields.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::routing::test_route;

    fn event() -> Event {
        Event {
            stream_id: "1767225600000-0".into(),
            id: "1767225600000-0".into(),
            event_type: "order.status_updated".into(),
            tenant: "acme".into(),
            created_at_ms: 1_767_225_600_000,
            data: serde_json::value::RawValue::from_string(r#"{"order_id":"A-1001", "status":"shipped"}"#.into()).unwrap(),
            attributes: vec![("region".into(), "eu".into())],
            only_webhook: None,
        }
    }

    fn sent(plan: &Plan) -> &Arc<[u8]> {
        match plan {
            Plan::Send(body) => body,
            other => panic!("expected Send, got {other:?}"),
        }
    }

    #[test]
    fn fan_out_shares_one_envelope_and_transforms_per_webhook() {
        let event = event();
        let routes = [
            test_route("wh_plain", None, None),
            test_route("wh_yes", Some("event.data.status == 'shipped'"), None),
            test_route("wh_no", Some("event.data.status == 'cancelled'"), None),
            test_route(
                "wh_shaped",
                Some("event.attributes.region == 'eu'"),
                Some("{'order': event.data.order_id, 'at': event.created_at}"),
            ),
        ];
        let candidates: Vec<&Arc<Route>> = routes.iter().collect();
        let plans = plan(&Evaluator::new(), &event, &candidates);
        let ids: Vec<&str> = plans.iter().map(|(r, _)| &*r.id).collect();
        assert_eq!(ids, ["wh_plain", "wh_yes", "wh_shaped"], "the filter that says no leaves its webhook out");
        let (plain, yes, shaped) = (sent(&plans[0].1), sent(&plans[1].1), sent(&plans[2].1));
        assert!(Arc::ptr_eq(plain, yes), "the envelope is serialized once and shared");
        assert_eq!(&plain[..], &envelope(&event)[..]);
        assert_eq!(&shaped[..], br#"{"at":"2026-01-01T00:00:00Z","order":"A-1001"}"#);
    }

    #[test]
    fn a_failing_expression_dead_letters_only_its_delivery() {
        let event = event();
        let routes = [
            test_route("wh_missing", Some("event.data.colour == 'red'"), None),
            test_route("wh_plain", None, None),
            test_route("wh_not_bool", Some("event.data.status"), None),
            test_route("wh_bad_body", None, Some("{'x': 1.0 / 0.0}")),
            test_route("wh_broken", Some("event.data."), None),
        ];
        let candidates: Vec<&Arc<Route>> = routes.iter().collect();
        let plans = plan(&Evaluator::new(), &event, &candidates);
        assert_eq!(plans.len(), 5);
        let dead = |i: usize| match &plans[i].1 {
            Plan::DeadLetter { reason, detail, body } => (*reason, detail.clone(), body.clone()),
            other => panic!("expected DeadLetter, got {other:?}"),
        };
        let (reason, detail, body) = dead(0);
        assert_eq!(reason, Reason::FilterError);
        assert!(detail.starts_with(r#"filter failed: no such key: "colour""#), "{detail}");
        assert!(detail.ends_with("; the expression: `event.data.colour == 'red'`"), "{detail}");
        assert!(Arc::ptr_eq(&body, sent(&plans[1].1)), "the dead letter keeps the envelope");
        let (reason, detail, _) = dead(2);
        assert_eq!(reason, Reason::FilterError);
        assert!(detail.starts_with("filter failed: yields a string, not a bool"), "{detail}");
        let (reason, detail, _) = dead(3);
        assert_eq!(reason, Reason::TransformError);
        assert!(detail.starts_with("transform failed: its value cannot be written as JSON"), "{detail}");
        // Compiled at snapshot time and failing there: every delivery says so.
        let (reason, detail, _) = dead(4);
        assert_eq!(reason, Reason::FilterError);
        assert!(detail.starts_with("the stored filter does not compile: syntax error at line 1"), "{detail}");
    }

    #[test]
    fn webhooks_without_expressions_never_convert_the_event() {
        // Data that CEL cannot take (a number out of range) is fine when nothing evaluates it.
        let mut event = event();
        event.data = serde_json::value::RawValue::from_string("[1e999]".into()).unwrap();
        let plain = test_route("wh_plain", None, None);
        let plans = plan(&Evaluator::new(), &event, &[&plain]);
        assert!(matches!(plans[0].1, Plan::Send(_)));
        let filtered = test_route("wh_f", Some("true"), None);
        let plans = plan(&Evaluator::new(), &event, &[&filtered]);
        assert!(
            matches!(&plans[0].1, Plan::DeadLetter { reason: Reason::FilterError, detail, .. } if detail.starts_with("filter failed: event.data cannot be given to CEL"))
        );
    }

    #[test]
    fn long_expressions_are_quoted_in_part() {
        assert_eq!(quote("a == b"), "`a == b`");
        let long = "x".repeat(300);
        assert_eq!(quote(&long), format!("`{}…`", "x".repeat(200)));
    }
}
