//! FIFO per webhook (`ORDERING_FIFO`, docs/ordering.md) across instances and crashes.
//!
//! Two instances share one Redis and one consumer group, so each reads part of the stream;
//! the receiver fails every 7th request with 500, so events are retried while the ones after
//! them wait; one instance is SIGKILLed midway — with entries read and not handed off, perhaps
//! the webhook's head leased — and started again under the same consumer name. The receiver must
//! see every event, in the order the events entered the stream: after removing immediate
//! repeats (retries of a failed attempt, and the redelivery of the last event after the crash)
//! the sequence is exactly 0, 1, 2, ….

mod common;

use std::time::Duration;

use common::{wait_until, Keyspace, Receiver, Recorded, Reply, Service};
use wss::proto::Ordering;

const EVENTS: usize = 300;
/// Generous: FIFO goes one attempt at a time, on a loaded 2-core machine, with a kill.
const CONVERGE: Duration = Duration::from_secs(180);

fn number(request: &Recorded) -> u64 {
    request.json()["data"]["n"].as_u64().unwrap_or_else(|| panic!("request #{} has no data.n: {:?}", request.index, request.json()))
}

/// The numbers the receiver saw, in arrival order, with immediate repeats removed.
fn without_repeats(requests: &[Recorded]) -> Vec<u64> {
    let mut seen: Vec<u64> = Vec::new();
    for n in requests.iter().map(number) {
        if seen.last() != Some(&n) {
            seen.push(n);
        }
    }
    seen
}

fn delivered_all(receiver: &Receiver) -> Result<Vec<Recorded>, String> {
    let requests = receiver.requests();
    let mut delivered: Vec<u64> = requests.iter().filter(|r| r.delivered()).map(number).collect();
    delivered.sort_unstable();
    delivered.dedup();
    if delivered.len() == EVENTS {
        Ok(requests)
    } else {
        Err(format!("{} of {EVENTS} events delivered, {} requests", delivered.len(), requests.len()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_webhook_gets_every_event_in_stream_order_across_two_instances_and_a_sigkill() {
    let ks = Keyspace::new("fifo");
    // Every 7th request fails: that event is retried (after 100 ms) while the ones after it wait.
    let receiver = Receiver::start(|i| Reply::status(if i % 7 == 6 { 500 } else { 200 }));
    // A short lease, so that the killed instance's head comes back soon (1 s + the 2 s timeout).
    let extra = [("WSS_CLAIM_AFTER", "1s"), ("WSS_LOG_LEVEL", "info")];
    let a = Service::start(&ks, "fifo-a", &extra).await;
    let b = Service::start(&ks, "fifo-b", &extra).await;
    let grpc = b.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_policy("quick", 20, 100, 200).await;
    let webhook = grpc
        .create_webhook("acme", &receiver.url(), |w| {
            w.ordering = Ordering::Fifo as i32;
            w.retry_policy_id = "quick".into();
        })
        .await;
    assert_eq!(webhook.ordering, Ordering::Fifo as i32);
    // No wait for the instances' snapshots: an event whose tenant has no webhook yet makes the
    // transformer reload before it could call it unrouted.
    for n in 0..EVENTS {
        ks.publish("acme", "order.updated", &format!(r#"{{"n":{n}}}"#));
    }

    // Midway: SIGKILL instance a (dropping a Service kills it), then start it again.
    receiver.wait_for_requests(EVENTS / 3, "requests before the kill", |_| true).await;
    drop(a);
    let at_kill = receiver.requests().len();
    let a = Service::start(&ks, "fifo-a", &extra).await;

    let requests = wait_until(CONVERGE, "every event delivered", || delivered_all(&receiver)).await;
    let order = without_repeats(&requests);
    let expected: Vec<u64> = (0..EVENTS as u64).collect();
    if order != expected {
        let first_wrong = order.iter().zip(&expected).position(|(seen, want)| seen != want).unwrap_or(order.len().min(expected.len()));
        let from = first_wrong.saturating_sub(5);
        panic!(
            "events out of order (kill after request {at_kill}): first difference at position {first_wrong}; seen {:?}, expected {:?}",
            &order[from..(first_wrong + 5).min(order.len())],
            &expected[from..(first_wrong + 5).min(expected.len())]
        );
    }
    // The failing receiver did make wss retry, and each retry came before the next event.
    let failed = requests.iter().filter(|r| r.answered == Some(500)).count();
    assert!(failed >= EVENTS / 7 - 1, "the receiver failed {failed} requests");
    // Nothing was delivered twice except across the kill: at most the events in hand then (one
    // head) repeat after a success.
    let repeats_after_success = requests.windows(2).filter(|w| w[0].delivered() && number(&w[0]) == number(&w[1])).count();
    assert!(
        repeats_after_success <= 1,
        "{repeats_after_success} events were delivered again after a 2xx; only the one in hand at the kill may be"
    );
    drop(a);
    drop(b);
}

/// The window between reading an entry and handing its delivery to the backlog: an event read
/// by one consumer and not handed off yet (here a consumer that read it and stopped, like an
/// instance that died) holds back every later event of the webhook, which other instances
/// read and hand off meanwhile. Once the entry is claimed (`WSS_CLAIM_AFTER`) and handed off,
/// it goes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_event_still_on_its_way_holds_back_the_later_ones() {
    let ks = Keyspace::new("fifo_window");
    let receiver = Receiver::ok();
    // Event 0 is read by a consumer of the group that never finishes it.
    let mut con = ks.conn();
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg(ks.events()).arg("wss").arg("0").arg("MKSTREAM").query(&mut con).unwrap();
    let first = ks.publish("acme", "order.updated", r#"{"n":0}"#);
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("wss")
        .arg("gone")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(ks.events())
        .arg(">")
        .query(&mut con)
        .unwrap();
    assert!(format!("{read:?}").contains(&first), "the stopped consumer holds event 0: {read:?}");

    let extra = [("WSS_CLAIM_AFTER", "2s"), ("WSS_LOG_LEVEL", "info")];
    let a = Service::start(&ks, "window-a", &extra).await;
    let b = Service::start(&ks, "window-b", &extra).await;
    let grpc = a.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |w| w.ordering = Ordering::Fifo as i32).await;
    for n in 1..=20 {
        ks.publish("acme", "order.updated", &format!(r#"{{"n":{n}}}"#));
    }
    let requests = receiver.wait_for_requests(21, "deliveries", Recorded::delivered).await;
    assert_eq!(without_repeats(&requests), (0..=20).collect::<Vec<u64>>(), "event 0, claimed from the stopped consumer, goes first");
    drop((a, b));
}

/// Retries, the circuit breaker and dead-lettering with FIFO: a receiver that always fails gets
/// each event's two attempts before the next event's first — the open circuit holds the head
/// back and the ones after it with it — and each dead letter lets the next event go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_head_holds_the_rest_through_retries_and_an_open_circuit_until_dead_lettered() {
    let ks = Keyspace::new("fifo_failing");
    let receiver = Receiver::always(500);
    let extra = [("WSS_CIRCUIT_FAILURES", "3"), ("WSS_CIRCUIT_COOLDOWN", "100ms"), ("WSS_LOG_LEVEL", "info")];
    let service = Service::start(&ks, "failing", &extra).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_policy("twice", 2, 100, 100).await;
    grpc.create_webhook("acme", &receiver.url(), |w| {
        w.ordering = Ordering::Fifo as i32;
        w.retry_policy_id = "twice".into();
    })
    .await;
    // (The cool-down doubles after each failed probe: three events keep the test short.)
    for n in 0..3 {
        ks.publish("acme", "order.updated", &format!(r#"{{"n":{n}}}"#));
    }
    let dead = common::eventually(common::WAIT, "3 dead letters", || async {
        let dead = grpc.dead_letters("acme").await?;
        if dead.len() == 3 {
            Ok(dead)
        } else {
            Err(format!("{} dead letters", dead.len()))
        }
    })
    .await;
    assert!(dead.iter().all(|d| d.reason == "max_attempts_exhausted"), "{dead:?}");
    let seen: Vec<u64> = receiver.requests().iter().map(number).collect();
    assert_eq!(seen, [0, 0, 1, 1, 2, 2], "each event's attempts, in order, one event at a time");
    service.wait_for_log("circuit of webhook", common::WAIT).await;
}
