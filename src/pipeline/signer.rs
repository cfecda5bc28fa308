//! Signer: gives every attempt — first try, retry or redelivery — a fresh timestamp and
//! signature, with the webhook's current secret and scheme (docs/contract.md §3).
//!
//! It looks the webhook up in the current routing snapshot at signing time, so a retry of a
//! webhook deleted or disabled meanwhile is abandoned (dead-lettered with that reason) rather
//! than sent. Inputs: fresh deliveries from the transformer and due deliveries from the backlog's
//! pump.
//!
//! Isolation: before sending, the signer asks `super::isolation`. Over the webhook's in-flight
//! cap a fresh delivery is parked (unsigned, in order) until an attempt of that webhook ends —
//! but only as many as its recent pace sends within [`PARK_HORIZON`], and for [`PARK_FOR`] at
//! most. Beyond
//! that, and for a delivery taken from the backlog, it is *postponed*: handed to the outcome
//! stage, which writes it into the durable backlog (`super::backlog`) and so frees its entry's
//! place in the in-flight window. With the webhook's circuit open it is postponed to the end of
//! the cool-down. Parked deliveries therefore hold little of the window, however slow a webhook.
//!
//! FIFO (`ORDERING_FIFO`) and rate-limited webhooks: a fresh delivery is postponed to the backlog
//! at once, without an attempt; the backlog's take script hands out their work in order and
//! within the rate (docs/ordering.md, docs/rate-limits.md). Other webhooks are not touched by it.
//!
//! Recovery: a delivery of an entry read again after a crash or claimed from another instance
//! is first looked up in the backlog (`<prefix>backlog:item:<webhook>:<entry>`) and the delivery
//! history (`crate::history::get`: the index's score names the hour hash that holds the record),
//! a few round trips on this rare path. Already delivered,
//! dead-lettered or handed to the backlog: it is not sent again. A history record that says
//! retrying without a backlog item (written by a version that kept retries in memory) is
//! postponed to its due time with its attempts. So a receiver that answered 2xx gets a duplicate
//! only when the crash fell between its answer and the record.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::redis_conn::Conn;
use crossbeam_channel::{select, tick, Receiver, Sender};

use super::{
    isolation::{Gate, Isolation},
    messages::{Completion, Delivery, EventMeta, SignedDelivery},
    work_queue,
};
use crate::{
    clock::Clock,
    deadletter::Reason,
    domain::routing::{Route, RouteSigner, RoutingHandle},
    history::{self, DeliveryRecord, Status},
    keys::Keys,
    redis_conn::{is_connection_error, RedisTarget},
    signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER},
};

pub struct Signer {
    pub routing: Arc<RoutingHandle>,
    pub isolation: Arc<Isolation>,
    pub redis: RedisTarget,
    pub keys: Keys,
    /// Where the signature's timestamp, the parking times and due times come from.
    pub clock: Clock,
}

/// A webhook may have as many deliveries parked as its recent pace sends within this
/// ([`Isolation::park_limit`]): a slow webhook holds few of the window's entries (8 with the
/// default cap at 1 s a request), a fast one as many as bursts and a merely saturated pipeline
/// park (there every entry waits a little: that is the window's backpressure) — without
/// touching Redis. The rest waits in the backlog.
const PARK_HORIZON: Duration = Duration::from_secs(1);
/// A delivery parked longer than this goes to the backlog all the same (its webhook slowed
/// down after it was parked, or its pace was not known yet).
const PARK_FOR: Duration = Duration::from_secs(5);
/// How often parked deliveries are checked against [`PARK_FOR`].
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Deliveries over their webhook's in-flight cap, unsigned, in arrival order, with when each was
/// parked.
type Parked = HashMap<Arc<str>, VecDeque<(Instant, Delivery)>>;

/// What the history and the backlog say to do with a recovered delivery.
enum Resume {
    /// No record: send as a first attempt.
    Fresh(Delivery),
    /// Continue its retries (a record from before the backlog), the next one due at `due_ms`.
    Later(Delivery, u64),
    Done(Delivery),
}

/// Where signed, abandoned and postponed deliveries go.
pub struct Outputs {
    pub out: work_queue::Producer<SignedDelivery>,
    pub done: Sender<Completion>,
}

/// A next stage is gone: shutdown.
struct Stopped;

impl Signer {
    /// `freed` names a webhook each time one of its attempts ends (sent by the sender that made
    /// it), so that its parked deliveries can go.
    pub fn run(
        self,
        fresh: Receiver<Delivery>,
        due: Receiver<Delivery>,
        freed: Receiver<String>,
        outputs: Outputs,
        shutdown: Receiver<()>,
    ) {
        let mut conn: Option<Conn> = None;
        let mut parked: Parked = HashMap::new();
        let sweep = tick(SWEEP_EVERY);
        loop {
            // About to wait: the senders get what was queued (`work_queue`: woken in bursts).
            if fresh.is_empty() && due.is_empty() && freed.is_empty() {
                outputs.out.wake();
            }
            let delivery = select! {
                recv(fresh) -> msg => match msg { Ok(d) => d, Err(_) => return },
                recv(due) -> msg => match msg { Ok(d) => d, Err(_) => return },
                recv(freed) -> msg => {
                    let Ok(webhook) = msg else { return };
                    if self.release(&webhook, &mut parked, &outputs).is_err() {
                        return;
                    }
                    continue;
                }
                recv(sweep) -> _ => {
                if self.sweep(&mut parked, &outputs).is_err() {
                    return;
                }
                continue;
            }
                recv(shutdown) -> _ => return,
            };
            let delivery = if delivery.ticket.recovered && delivery.attempt == 1 && delivery.history.is_empty() {
                match self.resume(&mut conn, delivery) {
                    Resume::Fresh(d) => d,
                    Resume::Later(d, due_ms) => {
                        if outputs.done.send(Completion::Postponed { delivery: d, due_ms }).is_err() {
                            return;
                        }
                        continue;
                    }
                    Resume::Done(d) => {
                        if outputs.done.send(Completion::AlreadyTerminal { delivery: d }).is_err() {
                            return;
                        }
                        continue;
                    }
                }
            } else {
                delivery
            };
            // Behind deliveries already parked for the same webhook: keep arrival order.
            if parked.contains_key(&delivery.webhook_id) {
                if self.park_or_postpone(&mut parked, delivery, &outputs).is_err() {
                    return;
                }
                continue;
            }
            match self.dispatch(delivery, &outputs) {
                Ok(None) => {}
                Ok(Some(over_cap)) => {
                    if self.park_or_postpone(&mut parked, over_cap, &outputs).is_err() {
                        return;
                    }
                }
                Err(Stopped) => return,
            }
        }
    }

    /// Parks a delivery over its webhook's cap in memory while the budget allows, it is fresh,
    /// and its webhook's parked queue moves; otherwise postpones it to the backlog, due now (the
    /// pump takes it when the webhook has room).
    fn park_or_postpone(&self, parked: &mut Parked, delivery: Delivery, outputs: &Outputs) -> Result<(), Stopped> {
        let queue = parked.get(&delivery.webhook_id);
        let stuck = queue.and_then(|q| q.front()).is_some_and(|(at, _)| self.clock.elapsed(*at) >= PARK_FOR);
        let full = queue.is_some_and(|q| q.len() >= self.isolation.park_limit(&delivery.webhook_id, PARK_HORIZON));
        if delivery.backlog.is_some() || stuck || full {
            return self.postpone(delivery, outputs);
        }
        let webhook = delivery.webhook_id.clone();
        let queue = parked.entry(webhook.clone()).or_default();
        queue.push_back((self.clock.now(), delivery));
        self.isolation.set_waiting(&webhook, queue.len());
        Ok(())
    }

    /// Moves deliveries parked longer than [`PARK_FOR`] to the backlog.
    fn sweep(&self, parked: &mut Parked, outputs: &Outputs) -> Result<(), Stopped> {
        let mut emptied = Vec::new();
        for (webhook, queue) in parked.iter_mut() {
            let before = queue.len();
            while queue.front().is_some_and(|(at, _)| self.clock.elapsed(*at) >= PARK_FOR) {
                let (_, delivery) = queue.pop_front().expect("just looked");
                self.postpone(delivery, outputs)?;
            }
            if queue.len() != before {
                log::debug!(target: "wss::signer", "webhook {webhook}: {} deliveries parked over {PARK_FOR:?} postponed to the backlog", before - queue.len());
                self.isolation.set_waiting(webhook, queue.len());
            }
            if queue.is_empty() {
                emptied.push(webhook.clone());
            }
        }
        for webhook in emptied {
            parked.remove(&webhook);
        }
        Ok(())
    }

    /// Sends what the webhook's freed slots allow of its parked deliveries.
    fn release(&self, webhook: &str, parked: &mut Parked, outputs: &Outputs) -> Result<(), Stopped> {
        let Some((key, mut queue)) = parked.remove_entry(webhook) else { return Ok(()) };
        while let Some((at, delivery)) = queue.pop_front() {
            if let Some(still_over) = self.dispatch(delivery, outputs)? {
                queue.push_front((at, still_over));
                break;
            }
        }
        self.isolation.set_waiting(webhook, queue.len());
        if !queue.is_empty() {
            parked.insert(key, queue);
        }
        Ok(())
    }

    /// Abandons, signs and sends, postpones (open circuit), or hands back a delivery that is over
    /// its webhook's in-flight cap.
    fn dispatch(&self, delivery: Delivery, outputs: &Outputs) -> Result<Option<Delivery>, Stopped> {
        let route = match current_route(&self.routing, delivery) {
            Ok(found) => found,
            Err(abandoned) => return outputs.done.send(abandoned).map(|_| None).map_err(|_| Stopped),
        };
        let (delivery, route) = route;
        // FIFO and rate-limited webhooks: every fresh delivery waits its turn in the backlog,
        // which alone orders and meters them across instances (`super::backlog`).
        if delivery.backlog.is_none() && route.through_backlog() {
            return self.postpone(delivery, outputs).map(|()| None);
        }
        match self.isolation.admit(&delivery.webhook_id, self.clock.now()) {
            Gate::Go => {
                let headers = signed_headers(&route.signer, &delivery.event, delivery.attempt, &delivery.body, self.clock.now_secs());
                outputs.out.send(SignedDelivery { route, headers, delivery }).map(|_| None).map_err(|_| Stopped)
            }
            Gate::Park => Ok(Some(delivery)),
            Gate::WaitUntil(until) => {
                let due_ms = self.clock.wall_ms(until);
                outputs.done.send(Completion::Postponed { delivery, due_ms }).map(|_| None).map_err(|_| Stopped)
            }
        }
    }

    /// Hands `delivery` to the outcome stage for the backlog, due now.
    fn postpone(&self, delivery: Delivery, outputs: &Outputs) -> Result<(), Stopped> {
        outputs.done.send(Completion::Postponed { delivery, due_ms: self.clock.now_ms() }).map_err(|_| Stopped)
    }

    fn resume(&self, conn: &mut Option<Conn>, mut delivery: Delivery) -> Resume {
        let id = history::delivery_id(&delivery.ticket.stream_id, &delivery.webhook_id);
        match self.lookup(conn, &id, &delivery.webhook_id, delivery.ticket.shard, &delivery.ticket.stream_id) {
            Ok((_, true)) => {
                log::info!(target: "wss::signer", "recovered delivery {id} was already handed to the backlog; not sending it again");
                Resume::Done(delivery)
            }
            Ok((None, false)) => Resume::Fresh(delivery),
            Ok((Some(record), false)) => match record.status {
                Status::Delivered | Status::DeadLettered => {
                    log::info!(target: "wss::signer", "recovered delivery {id} was already {:?}; not sending it again", record.status);
                    Resume::Done(delivery)
                }
                Status::Retrying => {
                    delivery.attempt = record.attempts.len() as u32 + 1;
                    delivery.history = record.attempts;
                    let wait = record.next_attempt_at_ms.saturating_sub(self.clock.now_ms());
                    log::info!(target: "wss::signer", "recovered delivery {id}: resuming at attempt {} in {} ms", delivery.attempt, wait);
                    Resume::Later(delivery, record.next_attempt_at_ms)
                }
            },
            Err(err) => {
                log::warn!(target: "wss::signer", "cannot read the history of recovered delivery {id} ({err}); sending it again");
                Resume::Fresh(delivery)
            }
        }
    }

    /// The delivery's history record, and whether it waits in the backlog.
    fn lookup(
        &self,
        conn: &mut Option<Conn>,
        id: &str,
        webhook: &str,
        shard: u32,
        entry: &str,
    ) -> redis::RedisResult<(Option<DeliveryRecord>, bool)> {
        if conn.is_none() {
            *conn = Some(self.redis.connect_once(Duration::from_secs(2))?);
        }
        let con = conn.as_mut().expect("just connected");
        let result = redis::cmd("EXISTS")
            .arg(self.keys.backlog_item(shard, webhook, entry))
            .query::<bool>(con)
            .and_then(|in_backlog| Ok((history::get(con, &self.keys, id)?, in_backlog)));
        if let Err(err) = &result {
            if is_connection_error(err) {
                *conn = None;
            }
        }
        result
    }
}

/// The webhook's current route, or the reason the delivery cannot be attempted any more.
// The `Err` goes straight to the outcome stage's channel, which carries `Completion`s by value;
// boxing it would only add an allocation.
#[allow(clippy::result_large_err)]
fn current_route(routing: &RoutingHandle, delivery: Delivery) -> Result<(Delivery, Arc<Route>), Completion> {
    let snapshot = routing.current();
    let Some(route) = snapshot.webhooks.get(&*delivery.webhook_id) else {
        let detail = format!("webhook {} was deleted before attempt {}", delivery.webhook_id, delivery.attempt);
        return Err(Completion::Abandoned { delivery, reason: Reason::WebhookDeleted, detail });
    };
    if !route.is_active() {
        let (reason, why) = if route.tenant_disabled {
            (Reason::TenantDisabled, "its tenant was disabled")
        } else {
            (Reason::WebhookDisabled, "it was disabled")
        };
        let detail = format!("webhook {} was not attempted again: {why}", delivery.webhook_id);
        return Err(Completion::Abandoned { delivery, reason, detail });
    }
    Ok((delivery, route.clone()))
}

/// The headers wss owns for one attempt (docs/contract.md §2–3); static headers are added by the sender.
pub fn signed_headers(signer: &RouteSigner, event: &EventMeta, attempt: u32, body: &[u8], now_secs: u64) -> Vec<(&'static str, String)> {
    let timestamp = now_secs.to_string();
    let mut headers = Vec::with_capacity(8);
    headers.push(("Content-Type", "application/json".to_owned()));
    match signer {
        RouteSigner::Wss(key) => {
            headers.push((SIGNATURE_HEADER, key.sign(&timestamp, body)));
            headers.push((TIMESTAMP_HEADER, timestamp));
        }
        RouteSigner::Standard(key) => {
            headers.push(("webhook-signature", key.sign(event.id(), &timestamp, body)));
            headers.push(("webhook-id", event.id().to_owned()));
            headers.push(("webhook-timestamp", timestamp));
        }
        // A rotation's overlap (docs/contract.md §3): the new secret's signature first, then the old one's
        // — comma-separated in X-WSS-Signature, space-separated in webhook-signature (Standard
        // Webhooks); after the overlap, the new one's alone.
        RouteSigner::Rotating { current, previous, until_ms } => {
            let mut headers = signed_headers(current, event, attempt, body, now_secs);
            if now_secs.saturating_mul(1000) < *until_ms {
                for (name, old) in signed_headers(previous, event, attempt, body, now_secs) {
                    let separator = match name {
                        SIGNATURE_HEADER => ",",
                        "webhook-signature" => " ",
                        _ => continue,
                    };
                    if let Some((_, value)) = headers.iter_mut().find(|(n, _)| *n == name) {
                        value.push_str(separator);
                        value.push_str(&old);
                    }
                }
            }
            return headers;
        }
    }
    headers.push(("X-WSS-Event-Id", event.id().to_owned()));
    headers.push(("X-WSS-Event-Type", event.event_type().to_owned()));
    headers.push(("X-WSS-Attempt", attempt.to_string()));
    headers
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::signature::{verify_headers, verify_standard, StandardSigner, WssSigner};

    fn meta() -> EventMeta {
        EventMeta::new("1767225600000-0", "order.created", "acme")
    }

    #[test]
    fn wss_headers_verify_with_the_secret() {
        let body = br#"{"a":1}"#;
        let headers = signed_headers(&RouteSigner::Wss(WssSigner::new(b"wss_test_secret")), &meta(), 3, body, 1_767_225_600);
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_610);
        verify_headers(b"wss_test_secret", pairs.iter().copied(), body, Duration::from_secs(300), now).unwrap();
        assert!(verify_headers(b"other_secret_value", pairs.iter().copied(), body, Duration::from_secs(300), now).is_err());
        assert!(pairs.contains(&("X-WSS-Attempt", "3")));
        assert!(pairs.contains(&("X-WSS-Timestamp", "1767225600")));
        assert!(pairs.contains(&("X-WSS-Event-Id", "1767225600000-0")));
    }

    #[test]
    fn during_a_rotation_both_secrets_sign_the_new_one_first() {
        let body = br#"{"a":1}"#;
        let rotating = |until_ms| RouteSigner::Rotating {
            current: Box::new(RouteSigner::Wss(WssSigner::new(b"new_secret_0123456789"))),
            previous: Box::new(RouteSigner::Wss(WssSigner::new(b"old_secret_0123456789"))),
            until_ms,
        };
        let at = 1_767_225_600;
        let headers = signed_headers(&rotating(at * 1000 + 1), &meta(), 1, body, at);
        let signature = headers.iter().find(|(k, _)| *k == SIGNATURE_HEADER).map(|(_, v)| v.as_str()).unwrap();
        let new = crate::signature::sign(b"new_secret_0123456789", "1767225600", body);
        let old = crate::signature::sign(b"old_secret_0123456789", "1767225600", body);
        assert_eq!(signature, format!("{new},{old}"));
        assert_eq!(headers.iter().filter(|(k, _)| *k == TIMESTAMP_HEADER).count(), 1);
        assert_eq!(headers.len(), 6, "{headers:?}");
        let headers = signed_headers(&rotating(at * 1000), &meta(), 1, body, at);
        let signature = headers.iter().find(|(k, _)| *k == SIGNATURE_HEADER).map(|(_, v)| v.as_str()).unwrap();
        assert_eq!(signature, new, "after the overlap, the new signature alone");

        let standard = RouteSigner::Rotating {
            current: Box::new(RouteSigner::Standard(StandardSigner::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap())),
            previous: Box::new(RouteSigner::Standard(StandardSigner::new("whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=").unwrap())),
            until_ms: u64::MAX,
        };
        let headers = signed_headers(&standard, &meta(), 1, body, at);
        let get = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str()).unwrap();
        assert_eq!(get("webhook-signature").split(' ').count(), 2);
        let now = UNIX_EPOCH + Duration::from_secs(at);
        for secret in ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="] {
            verify_standard(
                secret,
                get("webhook-id"),
                get("webhook-timestamp"),
                get("webhook-signature"),
                body,
                Duration::from_secs(300),
                now,
            )
            .unwrap();
        }
    }

    #[test]
    fn standard_webhooks_headers_verify_with_the_secret() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = b"{}";
        let headers = signed_headers(&RouteSigner::Standard(StandardSigner::new(secret).unwrap()), &meta(), 1, body, 1_767_225_600);
        let get = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str()).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        verify_standard(secret, get("webhook-id"), get("webhook-timestamp"), get("webhook-signature"), body, Duration::from_secs(300), now)
            .unwrap();
    }
}
