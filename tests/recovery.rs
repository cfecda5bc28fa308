//! Durability across instances: entries whose instance died are claimed after the lease
//! (`WSS_CLAIM_AFTER`) and finished by another, without re-sending what was already delivered and
//! with retries resuming at their attempt count; a living instance renews its leases, so nobody
//! claims its entries while its retries wait.

mod common;

use common::{wait_until, Keyspace, Receiver, Recorded, Service, WAIT};
use wss::proto::{DeliveryStatus, ListDeliveriesRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_entries_are_claimed_and_finished_without_repeats() {
    let ks = Keyspace::new("claim");
    let steady = Receiver::ok();
    let flaky = Receiver::failing_first(1);
    let lease = [("WSS_CLAIM_AFTER", "1s")];
    let first = Service::start(&ks, "doomed", &lease).await;
    let grpc = first.grpc().await;
    grpc.create_policy("later", 3, 3000, 3000).await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &steady.url(), |r| r.retry_policy_id = "later".into()).await;
    grpc.create_webhook("acme", &flaky.url(), |r| r.retry_policy_id = "later".into()).await;

    let stream_id = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("id", "evt-claimed")]);
    steady.wait_for_requests(1, "the steady webhook's delivery", Recorded::delivered).await;
    flaky.wait_for_requests(1, "the flaky webhook's failed first attempt", |_| true).await;
    // The failed attempt is on record (status RETRYING) before the instance dies.
    wait_until(WAIT, "the retry recorded in the history", || {
        let found = futures_lite_block(grpc.deliveries().list_deliveries(ListDeliveriesRequest {
            status: DeliveryStatus::Retrying.into(),
            ..Default::default()
        }));
        match found {
            Ok(r) if r.get_ref().deliveries.len() == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    drop(grpc);
    drop(first); // SIGKILL: its entry stays pending under "doomed", its retry heap is gone.

    let second = Service::start(&ks, "heir", &lease).await;
    let all = flaky.wait_for_requests(1, "the flaky webhook's retry, made by the heir", Recorded::delivered).await;
    let delivered: Vec<&Recorded> = all.iter().filter(|r| r.delivered()).collect();
    assert_eq!(delivered[0].header("X-WSS-Attempt"), "2", "the retry resumes at its attempt count");
    assert_eq!(delivered[0].event_id(), "evt-claimed");
    wait_until(WAIT, "the entry acknowledged by the heir", || ks.all_acknowledged_through(&stream_id)).await;
    assert_eq!(steady.requests().len(), 1, "what was delivered before the crash is not sent again: {:?}", steady.requests());
    assert_eq!(flaky.requests().len(), 2, "one failure, one retry: {:?}", flaky.requests());
    assert!(second.lines().iter().any(|l| l.contains("claimed 1 entries")), "the heir says it claimed the entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_living_instance_renews_its_leases_while_its_retries_wait() {
    let ks = Keyspace::new("lease_renewed");
    let flaky = Receiver::failing_first(1);
    let service = Service::start(&ks, "holder", &[("WSS_CLAIM_AFTER", "1s")]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("patient", 2, 3000, 3000).await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &flaky.url(), |r| r.retry_policy_id = "patient".into()).await;

    let stream_id = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("id", "evt-held")]);
    flaky.wait_for_requests(1, "the first attempt", |_| true).await;
    // While the retry waits (3 s, three leases long), another consumer trying to claim entries
    // idle for a lease must find none: the holder keeps renewing.
    let mut conn = ks.conn();
    let mut probes = 0;
    wait_until(WAIT, "the retry delivered, with no entry claimable meanwhile", || {
        let claimable: redis::Value = redis::cmd("XAUTOCLAIM")
            .arg(ks.events())
            .arg("wss")
            .arg("thief")
            .arg(1000)
            .arg("0-0")
            .arg("JUSTID")
            .query(&mut conn)
            .unwrap();
        let stolen = format!("{claimable:?}");
        assert!(!stolen.contains(&stream_id), "probe {probes}: the entry was claimable although its holder lives: {stolen}");
        probes += 1;
        if flaky.requests().iter().any(|r| r.delivered()) { Ok(()) } else { Err(format!("{probes} probes, retry not yet made")) }
    })
    .await;
    let attempts: Vec<String> = flaky.requests().iter().map(|r| r.header("X-WSS-Attempt").to_owned()).collect();
    assert_eq!(attempts, ["1", "2"]);
    wait_until(WAIT, "the entry acknowledged", || ks.all_acknowledged_through(&stream_id)).await;
}

/// Runs a future to completion on the current tokio runtime from a sync closure.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
