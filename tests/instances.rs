//! Several instances in one consumer group: they split the stream, and configuration made on one
//! is routed by the others at once (an event is never turned away by a stale snapshot).

mod common;

use std::collections::BTreeSet;

use common::{wait_until, Keyspace, Receiver, Service, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_split_the_stream_and_route_configuration_made_elsewhere_immediately() {
    let ks = Keyspace::new("instances");
    let receiver = Receiver::ok();
    let a = Service::start(&ks, "instance-a", &[]).await;
    let b = Service::start(&ks, "instance-b", &[]).await;
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
        if missing == 0 { Ok(()) } else { Err(format!("{missing} missing")) }
    })
    .await;
    assert!(grpc.dead_letters("").await.unwrap().is_empty(), "no event was turned away as from an unknown tenant");
    let last = ids.iter().max_by_key(|id| common::parse_stream_id(id)).unwrap().clone();
    wait_until(WAIT, "everything acknowledged", || ks.all_acknowledged_through(&last)).await;

    // Both consumers took part.
    let consumers: redis::Value = redis::cmd("XINFO").arg("CONSUMERS").arg(ks.events()).arg("wss").query(&mut ks.conn()).unwrap();
    let text = format!("{consumers:?}");
    assert!(text.contains("instance-a") && text.contains("instance-b"), "both instances joined the group: {text}");
    drop(b);
}
