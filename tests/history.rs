//! Delivery history (DeliveryService/ListDeliveries, GetDelivery): every attempt recorded, the
//! filters, pagination, and bounded retention.

mod common;

use std::time::Duration;

use common::{assert_status, eventually, wait_until, Keyspace, Receiver, Recorded, Service, WAIT};
use redis::Commands;
use tonic::Code;
use wss::proto::{Delivery, DeliveryStatus, GetDeliveryRequest, ListDeliveriesRequest};

async fn list(grpc: &common::Grpc, req: ListDeliveriesRequest) -> Vec<Delivery> {
    let mut all = Vec::new();
    let mut req = req;
    loop {
        let page = grpc.deliveries().list_deliveries(req.clone()).await.unwrap_or_else(|s| panic!("ListDeliveries: {s:?}")).into_inner();
        all.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            return all;
        }
        req.page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_recorded_and_deliveries_can_be_filtered_and_paged() {
    let ks = Keyspace::new("history");
    let flaky = Receiver::failing_first(2);
    let broken = Receiver::always(500);
    let service = Service::start(&ks, "history", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("quick", 3, 100, 400).await;
    grpc.create_tenant("acme").await;
    grpc.create_tenant("other").await;
    let good = grpc.create_webhook("acme", &flaky.url(), |r| r.retry_policy_id = "quick".into()).await;
    let bad = grpc.create_webhook("acme", &broken.url(), |r| r.retry_policy_id = "quick".into()).await;

    let first = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("id", "evt-1")]);
    flaky.wait_for_requests(1, "the first event delivered", Recorded::delivered).await;
    let acme = ListDeliveriesRequest { tenant_id: "acme".into(), ..Default::default() };
    let wanted = |status: DeliveryStatus| ListDeliveriesRequest { status: status.into(), ..acme.clone() };

    // The flaky webhook: delivered on attempt 3, after two 500s.
    let delivered = eventually(WAIT, "one DELIVERED delivery", || async {
        let found = list(&grpc, wanted(DeliveryStatus::Delivered)).await;
        if found.len() == 1 {
            Ok(found)
        } else {
            Err(format!("{found:?}"))
        }
    })
    .await;
    let d = &delivered[0];
    assert_eq!(d.webhook_id, good.webhook_id);
    assert_eq!(d.event_id, "evt-1");
    assert_eq!(d.stream_entry_id, first);
    let statuses: Vec<u32> = d.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(statuses, [500, 500, 200], "every attempt recorded in order: {d:?}");
    assert_eq!(d.attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(d.attempts[0].started_at.is_some() && d.created_at.is_some() && d.updated_at.is_some());

    // The broken webhook: dead-lettered after 3 attempts.
    let dead = eventually(WAIT, "one DEAD_LETTERED delivery", || async {
        let found = list(&grpc, wanted(DeliveryStatus::DeadLettered)).await;
        if found.len() == 1 {
            Ok(found)
        } else {
            Err(format!("{found:?}"))
        }
    })
    .await;
    assert_eq!(dead[0].webhook_id, bad.webhook_id);
    assert_eq!(dead[0].dead_letter_reason, "max_attempts_exhausted");
    assert_eq!(dead[0].attempts.len(), 3);
    assert!(dead[0].attempts.iter().all(|a| a.status_code == 500 && a.error_kind == "http_status"), "{dead:?}");

    // GetDelivery returns the same record; unknown ids are NOT_FOUND.
    let got = grpc.deliveries().get_delivery(GetDeliveryRequest { delivery_id: d.delivery_id.clone() }).await.unwrap().into_inner();
    assert_eq!(&got, d);
    let missing = grpc.deliveries().get_delivery(GetDeliveryRequest { delivery_id: "0-0:wh_nothing".into() }).await;
    assert_status(missing, Code::NotFound, None, "GetDelivery of an unknown id");
    let invalid = grpc.deliveries().get_delivery(GetDeliveryRequest { delivery_id: String::new() }).await;
    assert_status(invalid, Code::InvalidArgument, Some("delivery_id"), "GetDelivery without an id");

    // More events, then filters: by webhook, by event id, by tenant; pages of one.
    for n in 2..=3 {
        ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("id", &format!("evt-{n}"))]);
    }
    wait_until(WAIT, "events 2 and 3 delivered to the flaky webhook", || {
        let n = flaky.requests().iter().filter(|r| r.delivered()).count();
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n} delivered"))
        }
    })
    .await;
    let by_webhook = eventually(WAIT, "three DELIVERED deliveries of the flaky webhook", || async {
        let found = list(
            &grpc,
            ListDeliveriesRequest { webhook_id: good.webhook_id.clone(), status: DeliveryStatus::Delivered.into(), ..Default::default() },
        )
        .await;
        if found.len() == 3 {
            Ok(found)
        } else {
            Err(format!("{} found", found.len()))
        }
    })
    .await;
    assert!(
        by_webhook
            .windows(2)
            .all(|w| w[0].updated_at.as_ref().map(|t| (t.seconds, t.nanos)) >= w[1].updated_at.as_ref().map(|t| (t.seconds, t.nanos))),
        "newest first"
    );
    let paged = list(
        &grpc,
        ListDeliveriesRequest {
            webhook_id: good.webhook_id.clone(),
            status: DeliveryStatus::Delivered.into(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        paged.iter().map(|d| &d.delivery_id).collect::<Vec<_>>(),
        by_webhook.iter().map(|d| &d.delivery_id).collect::<Vec<_>>(),
        "pages of one give the same list"
    );
    let by_event = list(&grpc, ListDeliveriesRequest { event_id: "evt-1".into(), ..Default::default() }).await;
    assert_eq!(by_event.len(), 2, "evt-1 went to two webhooks: {by_event:?}");
    assert!(by_event.iter().all(|d| d.event_id == "evt-1"));
    let other = list(&grpc, ListDeliveriesRequest { tenant_id: "other".into(), ..Default::default() }).await;
    assert!(other.is_empty(), "tenant other has no deliveries: {other:?}");

    let bad_status = grpc.deliveries().list_deliveries(ListDeliveriesRequest { status: 42, ..Default::default() }).await;
    assert_status(bad_status, Code::InvalidArgument, Some("status"), "an unknown status");
    let bad_token = grpc.deliveries().list_deliveries(ListDeliveriesRequest { page_token: "nonsense".into(), ..Default::default() }).await;
    assert_status(bad_token, Code::InvalidArgument, Some("page_token"), "a made-up page token");

    // Records expire with the retention age: their bucket lives at least WSS_HISTORY_MAX_AGE
    // (7 days) after the record's write, and at most a bucket (an hour) longer.
    let record = ks.history_record(&d.delivery_id).expect("the delivery's record in its bucket");
    let written = record["updated_at_ms"].as_u64().unwrap();
    let bucket = ks.history_bucket(&d.delivery_id).unwrap();
    let pttl: i64 = ks.conn().pttl(&bucket).unwrap();
    let now = wss::clock::now_ms();
    let max_age = 7 * 86_400_000;
    assert!(
        pttl > 0 && now + pttl as u64 >= written + max_age,
        "{bucket} expires before the age: PTTL {pttl}, written {written}, now {now}"
    );
    assert!(pttl as u64 <= max_age + common::HISTORY_BUCKET_MS, "{bucket} lives at most an hour past the age: PTTL {pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_trimmed_to_its_maximum_count() {
    let ks = Keyspace::new("history_trim");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "history-trim", &[("WSS_HISTORY_MAX_COUNT", "100")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;
    for n in 0..150 {
        ks.publish("acme", "t", &format!("{{\"n\":{n}}}"));
    }
    wait_until(WAIT, "150 deliveries", || {
        let n = receiver.requests().len();
        if n >= 150 {
            Ok(())
        } else {
            Err(format!("{n} requests"))
        }
    })
    .await;
    // Trimming runs at most once a second, on the next write: keep a trickle of events flowing.
    let index = format!("{}deliveries", ks.prefix);
    let mut conn = ks.conn();
    eventually(Duration::from_secs(30), "the history index trimmed to 100 and its evicted records deleted", || {
        ks.publish("acme", "t", "{}");
        let members: usize = conn.zcard(&index).unwrap();
        let records = ks.history_record_count();
        async move {
            // At least 90: the burst's records are written (before they are, the index is
            // small, and the listing below would race with their writing).
            if (90..=100).contains(&members) && records <= 105 {
                Ok(())
            } else {
                Err(format!("{members} indexed, {records} records"))
            }
        }
    })
    .await;
    let listed = list(&grpc, ListDeliveriesRequest { page_size: 1000, ..Default::default() }).await;
    assert!(listed.len() <= 105, "ListDeliveries shows at most the retained deliveries: {}", listed.len());
    assert!(listed.len() >= 50, "recent deliveries are kept: {}", listed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_the_old_layout_is_still_served() {
    let ks = Keyspace::new("history_old_layout");
    let service = Service::start(&ks, "history-old", &[]).await;
    let grpc = service.grpc().await;
    // What a version before the hourly buckets wrote: the record under a key of its own, and
    // the index entries (docs/deployment.md, "Upgrading").
    let (p, id, now) = (&ks.prefix, "1-0:wh_old", wss::clock::now_ms());
    let record = serde_json::json!({
        "id": id, "tenant_id": "acme", "webhook_id": "wh_old", "event_id": "evt-old", "event_type": "t",
        "stream_entry_id": "1-0", "status": "delivered", "created_at_ms": now, "updated_at_ms": now,
        "next_attempt_at_ms": 0, "attempts": [], "dead_letter_reason": ""
    });
    let member = format!("evt-old\0{id}");
    redis::pipe()
        .set_ex(format!("{p}delivery:{id}"), record.to_string(), 3600)
        .zadd(format!("{p}deliveries"), id, now)
        .zadd(format!("{p}deliveries:tenant:acme"), id, now)
        .zadd(format!("{p}deliveries:webhook:wh_old"), id, now)
        .zadd(format!("{p}deliveries:by-event"), &member, 0)
        .zadd(format!("{p}deliveries:by-event:age"), &member, now)
        .query::<()>(&mut ks.conn())
        .unwrap();
    let got = grpc.deliveries().get_delivery(GetDeliveryRequest { delivery_id: id.into() }).await.unwrap().into_inner();
    assert_eq!((got.delivery_id.as_str(), got.status(), got.event_id.as_str()), (id, DeliveryStatus::Delivered, "evt-old"));
    for req in [
        ListDeliveriesRequest::default(),
        ListDeliveriesRequest { tenant_id: "acme".into(), ..Default::default() },
        ListDeliveriesRequest { webhook_id: "wh_old".into(), ..Default::default() },
        ListDeliveriesRequest { event_id: "evt-old".into(), ..Default::default() },
    ] {
        let found = list(&grpc, req.clone()).await;
        assert_eq!(found, std::slice::from_ref(&got), "listed by {req:?}");
    }
}
