//! Rehydrator: rebuilds the retries that waited light in the scheduler (due further ahead than
//! `WSS_RETRY_IN_MEMORY_FOR`, held without body and attempts, see `super::scheduler`) when they
//! come due, and hands them to the signer.
//!
//! For a batch of due retries (what is queued, up to [`BATCH`]) it reads, in one pipelined round
//! trip, each entry again (`XRANGE <prefix>events <id> <id>`) and its delivery's history record
//! (`GET <prefix>delivery:<entry id>:<webhook id>`, written with the retry's due time in the
//! transaction that scheduled it). Then, per retry, with the routing snapshot as it is now:
//!
//! - history says delivered or dead-lettered (finished elsewhere meanwhile): nothing is sent
//!   ([`Completion::AlreadyTerminal`]);
//! - the entry is gone from the stream (`XDEL`, trimming): dead-lettered `entry_deleted`;
//! - the webhook was deleted or disabled: handed to the signer, which abandons it on the path
//!   every retry takes (dead-lettered `webhook_deleted`, `webhook_disabled`, `tenant_disabled`);
//! - otherwise the event is routed to that webhook by the transformer's rules
//!   ([`transformer::plan_one`]): types no longer matching or the filter now saying no finish it
//!   as the transformer does a filtered-out delivery (no attempt, no record); a failing filter or
//!   transform dead-letters it; else it goes to the signer at its attempt number, with the
//!   attempts the history lists, and a fresh signature.
//!
//! Each of these finishes the entry's ticket exactly once, through the outcome stage.
//!
//! While Redis cannot be read the batch is kept and read again with backoff: nothing is dropped,
//! and the scheduler, whose queue to this stage fills meanwhile, keeps its due retries in hand
//! without waiting (it never blocks on an output). On shutdown what is here is dropped like the
//! rest of memory: the entries are pending and their history has the due times.

use std::{sync::Arc, time::Duration};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};
use redis::{Connection, RedisError, Value};

use super::{
    event::{envelope, parse_entry},
    scheduler::Light,
    transformer::{self, Plan},
    Completion, Delivery, EventMeta,
};
use crate::{
    deadletter::{AttemptRecord, Reason},
    domain::{routing::{Route, RoutingHandle}, store::Keys},
    expr::Evaluator,
    history::{self, DeliveryRecord, Status},
    redis_conn::{is_connection_error, RedisTarget},
    streams::{parse_entries, RawEntry},
};

/// Retries rebuilt per round trip, at most.
const BATCH: usize = 256;
/// Waits between reads while Redis is away.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest wait for a reply before the connection is dropped and the batch read again.
const REDIS_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Rehydrator {
    pub redis: RedisTarget,
    pub keys: Keys,
    pub routing: Arc<RoutingHandle>,
    pub max_event_bytes: usize,
}

/// A light retry's stream entry and history record as read back (`None`: not there).
type Found = (Option<RawEntry>, Option<DeliveryRecord>);

/// What a light retry becomes.
enum Rebuilt {
    /// To the signer.
    Send(Delivery),
    /// To the outcome stage.
    Done(Completion),
}

impl Rehydrator {
    /// `out` is the signer's queue of due retries; `done` the outcome stage's.
    pub fn run(self, input: Receiver<Light>, out: Sender<Delivery>, done: Sender<Completion>, shutdown: Receiver<()>) {
        let evaluator = Evaluator::new();
        let mut conn: Option<Connection> = None;
        loop {
            let first = select! {
                recv(input) -> msg => match msg { Ok(light) => light, Err(_) => return },
                recv(shutdown) -> _ => return,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match input.try_recv() {
                    Ok(light) => batch.push(light),
                    Err(_) => break,
                }
            }
            log::debug!(target: "wss::rehydrate", "rebuilding {} retries that waited light", batch.len());
            let Some(found) = self.read_until_done(&mut conn, &batch, &shutdown) else { return };
            let routing = self.routing.current();
            for (light, (entry, record)) in batch.into_iter().zip(found) {
                let route = routing.webhooks.get(&*light.webhook_id);
                let sent = match rebuild(light, entry, record, route, &evaluator, self.max_event_bytes) {
                    Rebuilt::Send(delivery) => out.send(delivery).is_ok(),
                    Rebuilt::Done(completion) => done.send(completion).is_ok(),
                };
                if !sent {
                    return;
                }
            }
        }
    }

    /// The entries and records of `batch`, in its order, read again until Redis answers; `None`
    /// on shutdown.
    fn read_until_done(
        &self,
        conn: &mut Option<Connection>,
        batch: &[Light],
        shutdown: &Receiver<()>,
    ) -> Option<Vec<Found>> {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.read(conn, batch) {
                Ok(found) => return Some(found),
                Err(err) => {
                    // A connection error is the outage the connection logs once; anything else
                    // is news.
                    if is_connection_error(&err) {
                        self.redis.connection_lost(&err);
                        log::debug!(target: "wss::rehydrate", "cannot read back {} waiting retries ({err}); trying again in {} ms", batch.len(), backoff.as_millis());
                    } else {
                        log::error!(target: "wss::rehydrate", "cannot read back {} waiting retries ({err}); trying again in {} ms", batch.len(), backoff.as_millis());
                    }
                    *conn = None;
                }
            }
            match shutdown.recv_timeout(backoff) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return None,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn read(&self, conn: &mut Option<Connection>, batch: &[Light]) -> Result<Vec<Found>, RedisError> {
        if conn.is_none() {
            // Only reads: a reply given up on is read again, so a Redis that stopped answering
            // holds the due retries this long, not forever.
            *conn = Some(self.redis.connect_bounded(Duration::from_secs(2), REDIS_TIMEOUT)?);
        }
        let con = conn.as_mut().expect("just connected");
        let mut pipe = redis::pipe();
        for light in batch {
            let id = &light.ticket.stream_id;
            pipe.cmd("XRANGE").arg(&self.keys.events).arg(id).arg(id);
            pipe.cmd("GET").arg(self.keys.delivery(&history::delivery_id(id, &light.webhook_id)));
        }
        let replies: Vec<Value> = pipe.query(con)?;
        if replies.len() != batch.len() * 2 {
            return Err(RedisError::from((redis::ErrorKind::UnexpectedReturnType, "pipelined XRANGE and GET", format!("{} replies for {} commands", replies.len(), batch.len() * 2))));
        }
        let mut replies = replies.into_iter();
        let mut found = Vec::with_capacity(batch.len());
        for light in batch {
            let (Some(range), Some(record)) = (replies.next(), replies.next()) else { unreachable!("the count was checked") };
            let entries = parse_entries(range).map_err(|e| RedisError::from((redis::ErrorKind::UnexpectedReturnType, "XRANGE reply", e.to_string())))?;
            let entry = entries.into_iter().find(|e| e.id == light.ticket.stream_id);
            // A record that does not decode is treated as absent, as `history::get` does.
            let record = match record {
                Value::BulkString(json) => serde_json::from_slice::<DeliveryRecord>(&json).ok(),
                _ => None,
            };
            found.push((entry, record));
        }
        Ok(found)
    }
}

/// Decides what a light retry becomes, from its entry and history record as read now (`None`:
/// not there) and its webhook's current route (`None`: deleted).
fn rebuild(
    light: Light,
    entry: Option<RawEntry>,
    record: Option<DeliveryRecord>,
    route: Option<&Arc<Route>>,
    evaluator: &Evaluator,
    max_event_bytes: usize,
) -> Rebuilt {
    let Light { ticket, webhook_id, attempt } = light;
    let delivery = |event: Arc<EventMeta>, body: Arc<[u8]>, history: Vec<AttemptRecord>| Delivery {
        ticket: ticket.clone(),
        event,
        webhook_id: webhook_id.clone(),
        body,
        attempt,
        history,
    };
    let no_body = || Arc::<[u8]>::from(&[][..]);
    let (meta_of_record, attempts) = match record {
        Some(record) => {
            let meta = Arc::new(EventMeta::new(&record.event_id, &record.event_type, &record.tenant_id));
            if matches!(record.status, Status::Delivered | Status::DeadLettered) {
                log::info!(target: "wss::rehydrate", "waiting retry of event {} to webhook {webhook_id} was already {:?}; not sending it again", record.event_id, record.status);
                return Rebuilt::Done(Completion::AlreadyTerminal { delivery: delivery(meta, no_body(), Vec::new()) });
            }
            (Some(meta), record.attempts)
        }
        // Trimmed from the history (WSS_HISTORY_MAX_COUNT / _MAX_AGE) while it waited: the
        // attempt number is still known, the earlier attempts' details are not.
        None => (None, Vec::new()),
    };
    let event = match entry.as_ref().map(|entry| parse_entry(entry, max_event_bytes)) {
        Some(Ok(event)) => event,
        failed => {
            let (reason, detail) = match failed {
                Some(Err(rejection)) => (rejection.reason, rejection.detail),
                _ => (
                    Reason::EntryDeleted,
                    format!("stream entry {} was deleted (XDEL or trimming) while attempt {attempt} to webhook {webhook_id} waited", ticket.stream_id),
                ),
            };
            let meta = meta_of_record.unwrap_or_else(|| Arc::new(EventMeta::new("", "", "")));
            return Rebuilt::Done(Completion::Abandoned { delivery: delivery(meta, no_body(), attempts), reason, detail });
        }
    };
    let meta = Arc::new(EventMeta::new(&event.id, &event.event_type, &event.tenant));
    let Some(route) = route.filter(|route| route.is_active()) else {
        // Deleted or disabled: the signer abandons it with the reason, as it does any retry.
        return Rebuilt::Send(delivery(meta, envelope(&event).into(), attempts));
    };
    match transformer::plan_one(evaluator, &event, route) {
        None => {
            log::info!(target: "wss::rehydrate", tenant = event.tenant.as_str(), webhook = &*webhook_id, event_id = event.id.as_str(), outcome = "unrouted";
                "waiting retry of event {} to webhook {webhook_id} is not sent: the webhook no longer wants it (event types or filter changed)", event.id);
            Rebuilt::Done(Completion::AlreadyTerminal { delivery: delivery(meta, no_body(), attempts) })
        }
        Some(Plan::Send(body)) => Rebuilt::Send(delivery(meta, body, attempts)),
        Some(Plan::DeadLetter { reason, detail, body }) => Rebuilt::Done(Completion::Abandoned { delivery: delivery(meta, body, attempts), reason, detail }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{
            model::RetryPolicy,
            routing::{Expression, RouteSigner},
        },
        expr::Filter,
        pipeline::EntryTicket,
        signature::WssSigner,
    };

    const ENTRY_ID: &str = "1767225600000-0";

    fn light() -> Light {
        Light { ticket: EntryTicket::new(ENTRY_ID.into(), false), webhook_id: "wh_a".into(), attempt: 3 }
    }

    fn entry() -> RawEntry {
        let fields = [("tenant", "acme"), ("type", "order.created"), ("data", r#"{"status":"shipped"}"#), ("id", "evt-7")];
        RawEntry { id: ENTRY_ID.into(), fields: Some(fields.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()) }
    }

    fn attempt(n: u32) -> AttemptRecord {
        AttemptRecord {
            attempt: n,
            started_at_ms: 1_767_225_600_000 + u64::from(n),
            duration_ms: 3,
            status: 500,
            error_kind: "http_status".into(),
            error: String::new(),
            response_excerpt: "down".into(),
        }
    }

    fn record(status: Status) -> DeliveryRecord {
        DeliveryRecord {
            id: history::delivery_id(ENTRY_ID, "wh_a"),
            tenant_id: "acme".into(),
            webhook_id: "wh_a".into(),
            event_id: "evt-7".into(),
            event_type: "order.created".into(),
            stream_entry_id: ENTRY_ID.into(),
            status,
            created_at_ms: 1_767_225_600_000,
            updated_at_ms: 1_767_225_600_010,
            next_attempt_at_ms: 1_767_225_660_000,
            attempts: vec![attempt(1), attempt(2)],
            dead_letter_reason: String::new(),
        }
    }

    fn route(filter: &str, enabled: bool) -> Arc<Route> {
        let filter = (!filter.is_empty()).then(|| Arc::new(Expression { source: filter.into(), compiled: Filter::compile(filter) }));
        Arc::new(Route {
            id: "wh_a".into(),
            url: "https://example.com/".into(),
            headers: Box::default(),
            enabled,
            tenant_disabled: false,
            patterns: Box::default(),
            filter,
            transform: None,
            policy: Arc::new(RetryPolicy::builtin_default()),
            signer: RouteSigner::Wss(WssSigner::new(b"whsec_0123456789abcdef")),
            client: None,
        })
    }

    fn rebuilt(entry: Option<RawEntry>, record: Option<DeliveryRecord>, route: Option<&Arc<Route>>) -> Rebuilt {
        rebuild(light(), entry, record, route, &Evaluator::new(), 1 << 20)
    }

    #[test]
    fn a_retry_resumes_at_its_attempt_with_the_recorded_attempts_and_the_body_made_again() {
        let wanted = route("event.data.status == 'shipped'", true);
        let Rebuilt::Send(delivery) = rebuilt(Some(entry()), Some(record(Status::Retrying)), Some(&wanted)) else { panic!("expected a delivery to sign") };
        assert_eq!(delivery.attempt, 3);
        assert_eq!(delivery.history.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((delivery.event.id(), delivery.event.event_type(), delivery.event.tenant()), ("evt-7", "order.created", "acme"));
        assert_eq!(&*delivery.webhook_id, "wh_a");
        let body: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
        assert_eq!(body["data"]["status"], "shipped", "the envelope is made again from the entry");
        assert_eq!(body["id"], "evt-7");
    }

    #[test]
    fn without_a_history_record_the_attempt_number_still_holds() {
        let Rebuilt::Send(delivery) = rebuilt(Some(entry()), None, Some(&route("", true))) else { panic!("expected a delivery to sign") };
        assert_eq!((delivery.attempt, delivery.history.len()), (3, 0));
    }

    #[test]
    fn a_deleted_entry_is_dead_lettered_with_what_the_history_knows() {
        match rebuilt(None, Some(record(Status::Retrying)), Some(&route("", true))) {
            Rebuilt::Done(Completion::Abandoned { delivery, reason, detail }) => {
                assert_eq!(reason, Reason::EntryDeleted);
                assert!(detail.contains(ENTRY_ID) && detail.contains("attempt 3"), "{detail}");
                assert_eq!((delivery.event.id(), delivery.event.tenant()), ("evt-7", "acme"));
                assert_eq!(delivery.history.len(), 2, "the dead letter keeps the attempts made");
            }
            _ => panic!("expected an entry_deleted dead letter"),
        }
        // Nil fields (deleted after being read) say the same.
        let gone = RawEntry { id: ENTRY_ID.into(), fields: None };
        assert!(matches!(rebuilt(Some(gone), None, None), Rebuilt::Done(Completion::Abandoned { reason: Reason::EntryDeleted, .. })));
    }

    #[test]
    fn what_history_shows_finished_is_not_sent() {
        for status in [Status::Delivered, Status::DeadLettered] {
            assert!(matches!(rebuilt(Some(entry()), Some(record(status)), Some(&route("", true))), Rebuilt::Done(Completion::AlreadyTerminal { .. })), "{status:?}");
        }
    }

    #[test]
    fn a_webhook_gone_or_disabled_goes_to_the_signer_to_be_abandoned() {
        // The signer's `current_route` gives the reason; here it must not be sent or dropped.
        for route in [None, Some(route("", false))] {
            let Rebuilt::Send(delivery) = rebuilt(Some(entry()), Some(record(Status::Retrying)), route.as_ref()) else { panic!("expected the signer's path") };
            assert_eq!(delivery.attempt, 3);
        }
    }

    #[test]
    fn a_filter_now_saying_no_finishes_it_and_a_failing_one_dead_letters_it() {
        let no = route("event.data.status == 'cancelled'", true);
        assert!(matches!(rebuilt(Some(entry()), Some(record(Status::Retrying)), Some(&no)), Rebuilt::Done(Completion::AlreadyTerminal { .. })));
        let failing = route("event.data.colour == 'red'", true);
        assert!(matches!(
            rebuilt(Some(entry()), Some(record(Status::Retrying)), Some(&failing)),
            Rebuilt::Done(Completion::Abandoned { reason: Reason::FilterError, .. })
        ));
    }
}
