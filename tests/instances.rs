//! Several instances in one consumer group: they split the stream — each delivers a share, no
//! event twice, none missed — and configuration made on one is routed by the others at once (an
//! event is never turned away by a stale snapshot).

mod common;

use std::{
    collections::BTreeSet,
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use common::{http_get, wait_until, Keyspace, Receiver, Reply, Service, WAIT};

/// Each instance's in-flight window in this test: at most this many entries read and not yet
/// acknowledged, so one instance alone can never have more requests open than this.
const WINDOW: usize = 5;

/// `wss_deliveries_total{outcome="delivered"}` of the instance whose metrics listen on `addr`.
fn delivered_by(addr: std::net::SocketAddr) -> Result<u64, String> {
    let (_, _, text) = http_get(addr, "/metrics", None)?;
    text.lines()
        .find_map(|l| l.strip_prefix("wss_deliveries_total{outcome=\"delivered\"} "))
        .ok_or_else(|| "no delivered series".to_owned())?
        .trim()
        .parse()
        .map_err(|e| format!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_split_the_stream_and_route_configuration_made_elsewhere_immediately() {
    let ks = Keyspace::new("instances");
    // The receiver holds the first 2 × WINDOW requests until all of them are open at once. No
    // instance can hold more than WINDOW (its in-flight window is full, so its reader waits):
    // they are there only if both instances took entries. Then it answers everything.
    let held = Arc::new((Mutex::new(0usize), Condvar::new()));
    let gate = held.clone();
    let gate_timed_out = Arc::new(Mutex::new(false));
    let timed_out = gate_timed_out.clone();
    let receiver = Receiver::start(move |n| {
        if n < 2 * WINDOW {
            let (arrived, changed) = &*gate;
            let mut count = arrived.lock().unwrap();
            *count += 1;
            changed.notify_all();
            let (_released, wait) = changed.wait_timeout_while(count, Duration::from_secs(15), |count| *count < 2 * WINDOW).unwrap();
            if wait.timed_out() {
                *timed_out.lock().unwrap() = true;
            }
        }
        Reply::status(200)
    });
    let window = WINDOW.to_string();
    let a = Service::start(&ks, "instance-a", &[("WSS_MAX_IN_FLIGHT", &window)]).await;
    let b = Service::start(&ks, "instance-b", &[("WSS_MAX_IN_FLIGHT", &window)]).await;
    let (metrics_a, metrics_b) = (a.wait_for_metrics().await, b.wait_for_metrics().await);
    let grpc = a.grpc().await;

    // Created on A, published at once: whichever instance reads an event must know the tenant
    // and the webhook, even if its periodic reload has not come round yet.
    let mut ids = BTreeSet::new();
    for round in 0..5 {
        let tenant = format!("t{round}");
        grpc.create_tenant(&tenant).await;
        grpc.create_webhook(&tenant, &receiver.url(), |_| {}).await;
        for n in 0..10 {
            ids.insert(ks.publish(&tenant, "order.created", &format!("{{\"n\":{n}}}")));
        }
    }
    wait_until(WAIT, "all 50 events delivered", || {
        let got: BTreeSet<String> = receiver.requests().iter().filter(|r| r.delivered()).map(|r| r.event_id().to_owned()).collect();
        let missing = ids.difference(&got).count();
        if missing == 0 {
            Ok(())
        } else {
            Err(format!("{missing} missing"))
        }
    })
    .await;
    assert!(grpc.dead_letters("").await.unwrap().is_empty(), "no event was turned away as from an unknown tenant");
    let last = ids.iter().max_by_key(|id| common::parse_stream_id(id)).unwrap().clone();
    wait_until(WAIT, "everything acknowledged", || ks.all_acknowledged_through(&last)).await;

    assert!(!*gate_timed_out.lock().unwrap(), "the first {} requests were never open at once: one instance did the work alone", 2 * WINDOW);

    // Each event reached the receiver once: none twice (no instance crashed, so nothing
    // explains a repeat), none missed.
    let requests = receiver.requests();
    let got: BTreeSet<&str> = requests.iter().map(|r| r.event_id()).collect();
    assert_eq!(requests.len(), ids.len(), "{} requests for {} events: an event was delivered twice", requests.len(), ids.len());
    assert_eq!(got.len(), ids.len());
    // Each instance delivered a share (at least the WINDOW it held at the gate), and the shares
    // add up to every event: no instance delivered what the other did.
    let (by_a, by_b) = wait_until(WAIT, "the instances' delivered counters to add up to 50", || {
        let (by_a, by_b) = (delivered_by(metrics_a)?, delivered_by(metrics_b)?);
        if by_a + by_b == ids.len() as u64 {
            Ok((by_a, by_b))
        } else {
            Err(format!("a {by_a}, b {by_b}"))
        }
    })
    .await;
    assert!(by_a >= WINDOW as u64 && by_b >= WINDOW as u64, "each instance delivers a share: a {by_a}, b {by_b}");
    drop(b);
}
