//! Durability across instances: entries whose instance died while they were in progress are
//! claimed after the lease (`WSS_CLAIM_AFTER`) and finished by another, without re-sending what
//! was already delivered; a living instance renews its leases, so nobody claims its entries while
//! an attempt is on the wire. (Retries wait in the durable backlog, their entries acknowledged:
//! their takeover after a crash is `tests/backlog.rs`'s.)

mod common;

use std::time::Duration;

use common::{wait_until, Keyspace, Receiver, Recorded, Reply, Service, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_entries_are_claimed_and_finished_without_repeats() {
    let ks = Keyspace::new("claim");
    let steady = Receiver::ok();
    // The first request hangs (the attempt is on the wire when the instance dies); then 200.
    let hanging_first =
        Receiver::start(|i| if i == 0 { Reply { status: 200, delay: Duration::from_secs(30) } } else { Reply::status(200) });
    let lease = [("WSS_CLAIM_AFTER", "1s")];
    let first = Service::start(&ks, "doomed", &lease).await;
    let grpc = first.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &steady.url(), |_| {}).await;
    grpc.create_webhook("acme", &hanging_first.url(), |_| {}).await;

    let stream_id = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("id", "evt-claimed")]);
    steady.wait_for_requests(1, "the steady webhook's delivery", Recorded::delivered).await;
    hanging_first.wait_for_requests(1, "the other webhook's attempt, on the wire", |_| true).await;
    // The steady delivery is on record before the instance dies (the entry is still pending).
    let record = format!("{stream_id}:");
    wait_until(WAIT, "the steady delivery recorded", || {
        let records = ks.history_records();
        let recorded = records.iter().filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with(&record))).count();
        if recorded == 1 {
            Ok(())
        } else {
            Err(format!("{recorded} records"))
        }
    })
    .await;
    assert_eq!(ks.group_state().unwrap().pending, 1, "the entry is pending while an attempt is out");
    drop(grpc);
    drop(first); // SIGKILL, with the attempt on the wire.

    let second = Service::start(&ks, "heir", &lease).await;
    let all = hanging_first.wait_for_requests(1, "the attempt made again by the heir", Recorded::delivered).await;
    let delivered: Vec<&Recorded> = all.iter().filter(|r| r.delivered()).collect();
    assert_eq!(delivered[0].event_id(), "evt-claimed");
    wait_until(WAIT, "the entry acknowledged by the heir", || ks.all_acknowledged_through(&stream_id)).await;
    assert_eq!(steady.requests().len(), 1, "what was delivered before the crash is not sent again: {:?}", steady.requests());
    assert!(second.lines().iter().any(|l| l.contains("claimed 1 entries")), "the heir says it claimed the entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_living_instance_renews_its_leases_while_an_attempt_is_out() {
    let ks = Keyspace::new("lease_renewed");
    // One attempt that takes 3 s: three leases long.
    let slow = Receiver::slow(Duration::from_secs(3));
    let service = Service::start(&ks, "holder", &[("WSS_CLAIM_AFTER", "1s")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    // The default policy: a 15 s attempt timeout.
    grpc.create_webhook("acme", &slow.url(), |_| {}).await;

    let stream_id = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("id", "evt-held")]);
    slow.wait_for_requests(1, "the attempt", |_| true).await;
    // While the attempt is out, another consumer trying to claim entries idle for a lease must
    // find none: the holder keeps renewing.
    let mut conn = ks.conn();
    let mut probes = 0;
    wait_until(WAIT, "the delivery made, with no entry claimable meanwhile", || {
        let claimable: redis::Value =
            redis::cmd("XAUTOCLAIM").arg(ks.events()).arg("wss").arg("thief").arg(1000).arg("0-0").arg("JUSTID").query(&mut conn).unwrap();
        let stolen = format!("{claimable:?}");
        assert!(!stolen.contains(&stream_id), "probe {probes}: the entry was claimable although its holder lives: {stolen}");
        probes += 1;
        if slow.requests().iter().any(|r| r.delivered()) {
            Ok(())
        } else {
            Err(format!("{probes} probes, not yet answered"))
        }
    })
    .await;
    assert!(probes > 1, "the probes ran while the attempt was out");
    assert_eq!(slow.requests().len(), 1);
    wait_until(WAIT, "the entry acknowledged", || ks.all_acknowledged_through(&stream_id)).await;
}
