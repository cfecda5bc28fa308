//! Entries that break the stream contract (docs/contract.md §1) are dead-lettered with their reason,
//! acknowledged and logged at WARN, and never block the stream: a good event after them is still
//! delivered.

mod common;

use std::collections::BTreeMap;

use common::{assert_signed, eventually, wait_until, Keyspace, Receiver, Recorded, Service, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_dead_lettered_and_the_stream_keeps_flowing() {
    let ks = Keyspace::new("bad_entries");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "bad-entries", &[("WSS_MAX_EVENT_BYTES", "1024")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |_| {}).await;

    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(2048));
    let bad: Vec<(String, &str)> = vec![
        (ks.xadd(&[("tenant", "acme"), ("type", "order.created")]), "missing_field"),
        (ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{not json")]), "data_not_json"),
        (ks.xadd(&[("tenant", "ghost"), ("type", "order.created"), ("data", "{}")]), "unknown_tenant"),
        (ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", &big)]), "too_large"),
    ];
    let good = ks.publish("acme", "order.created", r#"{"ok":true}"#);

    let requests = receiver.wait_for_requests(1, "the good event delivered", Recorded::delivered).await;
    assert_eq!(requests[0].event_id(), good);
    assert_signed(&webhook.secret, &requests[0]);
    wait_until(WAIT, "all five entries acknowledged", || ks.all_acknowledged_through(&good)).await;

    let dead = eventually(WAIT, "four dead letters", || {
        let grpc = grpc.clone();
        async move {
            let dead = grpc.dead_letters("").await?;
            if dead.len() >= 4 {
                Ok(dead)
            } else {
                Err(format!("{} so far: {dead:?}", dead.len()))
            }
        }
    })
    .await;
    let reasons: BTreeMap<&str, &str> = dead.iter().map(|d| (d.stream_entry_id.as_str(), d.reason.as_str())).collect();
    let expected: BTreeMap<&str, &str> = bad.iter().map(|(id, reason)| (id.as_str(), *reason)).collect();
    assert_eq!(reasons, expected, "dead letters by stream entry id: {dead:?}");
    assert_eq!(dead.len(), 4, "one dead letter per bad entry: {dead:?}");
    for d in &dead {
        assert!(!d.detail.is_empty(), "a dead letter says what was wrong: {d:?}");
        assert!(d.webhook_id.is_empty(), "entries rejected before routing name no webhook: {d:?}");
    }

    // The tenant filter works for a tenant that does not exist.
    let ghost = grpc.dead_letters("ghost").await.unwrap();
    assert_eq!(ghost.len(), 1, "{ghost:?}");
    assert_eq!((ghost[0].stream_entry_id.as_str(), ghost[0].reason.as_str()), (bad[2].0.as_str(), "unknown_tenant"));

    // Each rejection is logged at WARN, naming the entry.
    for (id, reason) in &bad {
        service
            .wait_for(WAIT, &format!("a WARN line saying entry {id} ({reason}) was rejected"), |l| {
                l.contains(" WARN ") && l.contains("rejected") && l.contains(id.as_str())
            })
            .await;
    }
    assert_eq!(receiver.requests().len(), 1, "only the good event reaches the receiver: {:?}", receiver.requests());
}
