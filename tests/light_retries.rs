//! Retries due further ahead than `WSS_RETRY_IN_MEMORY_FOR` wait without their body and
//! attempts, and are rebuilt from the stream entry and the delivery history when due: the
//! receiver gets the same event, at the right attempt number, freshly signed; the history lists
//! every attempt; an entry deleted meanwhile is dead-lettered `entry_deleted`; nothing stays
//! pending.

mod common;

use common::{assert_signed, eventually, wait_until, Keyspace, Receiver, Recorded, Service, WAIT};
use wss::proto::{DeliveryStatus, GetDeliveryRequest};

/// Every retry of these tests is due 2 s or more ahead: far beyond this, so each waits light.
const IN_MEMORY_FOR: (&str, &str) = ("WSS_RETRY_IN_MEMORY_FOR", "100ms");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_waited_light_is_rebuilt_and_sent_like_any_other() {
    let ks = Keyspace::new("light_retry");
    let flaky = Receiver::failing_first(2);
    let service = Service::start(&ks, "light", &[IN_MEMORY_FOR]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("later", 4, 2000, 2000).await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &flaky.url(), |r| r.retry_policy_id = "later".into()).await;

    let stream_id = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", r#"{"order":"A-1"}"#), ("id", "evt-light")]);
    let all = flaky.wait_for_requests(1, "two failures, then the delivery", Recorded::delivered).await;
    assert_eq!(all.len(), 3, "two failures and one success: {all:?}");
    let attempts: Vec<&str> = all.iter().map(|r| r.header("X-WSS-Attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    for request in &all {
        assert_eq!(request.event_id(), "evt-light");
        assert_signed(&webhook.secret, request);
        assert_eq!(request.body, all[0].body, "the body made again from the entry is the first attempt's");
    }
    assert!(
        service.lines().iter().any(|l| l.contains("retries that waited light")),
        "the retries went through the rehydrator (else this test proves nothing)"
    );

    let delivery_id = format!("{stream_id}:{}", webhook.webhook_id);
    let record = eventually(WAIT, "the delivery recorded as DELIVERED", || async {
        let got = grpc.deliveries().get_delivery(GetDeliveryRequest { delivery_id: delivery_id.clone() }).await;
        match got {
            Ok(r) if r.get_ref().status == DeliveryStatus::Delivered as i32 => Ok(r.into_inner()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(record.attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2, 3], "every attempt in the history: {record:?}");
    assert_eq!(record.attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(), [500, 500, 200]);
    wait_until(WAIT, "the entry acknowledged (XPENDING 0)", || ks.all_acknowledged_through(&stream_id)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_deleted_while_its_retry_waits_light_is_dead_lettered() {
    let ks = Keyspace::new("light_retry_deleted");
    let failing = Receiver::always(500);
    let service = Service::start(&ks, "light", &[IN_MEMORY_FOR]).await;
    let grpc = service.grpc().await;
    // The retry is due 5 s after the first attempt: the entry is deleted long before.
    grpc.create_policy("later", 3, 5000, 5000).await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &failing.url(), |r| r.retry_policy_id = "later".into()).await;

    let stream_id = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("id", "evt-gone")]);
    failing.wait_for_requests(1, "the first attempt", |_| true).await;
    let deleted: u64 = redis::cmd("XDEL").arg(ks.events()).arg(&stream_id).query(&mut ks.conn()).unwrap();
    assert_eq!(deleted, 1);

    let dead = eventually(WAIT, "an entry_deleted dead letter", || async {
        let all = grpc.dead_letters("acme").await?;
        if all.is_empty() { Err("none yet".to_owned()) } else { Ok(all) }
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0];
    assert_eq!(letter.reason, "entry_deleted", "{letter:?}");
    assert_eq!((letter.event_id.as_str(), letter.webhook_id.as_str(), letter.stream_entry_id.as_str()), ("evt-gone", webhook.webhook_id.as_str(), stream_id.as_str()));
    assert_eq!(letter.attempts.len(), 1, "the attempt made before the deletion is kept: {letter:?}");
    assert_eq!(failing.requests().len(), 1, "nothing is sent for a deleted entry");
    wait_until(WAIT, "the entry acknowledged (XPENDING 0)", || ks.all_acknowledged_through(&stream_id)).await;
    let record = grpc
        .deliveries()
        .get_delivery(GetDeliveryRequest { delivery_id: format!("{stream_id}:{}", webhook.webhook_id) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((record.status, record.dead_letter_reason.as_str()), (DeliveryStatus::DeadLettered as i32, "entry_deleted"));
}
