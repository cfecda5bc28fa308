//! Events from the stream to receivers (docs/contract.md §1–4): the request a receiver gets, its
//! signature, acknowledgement, retries with backoff, dead letters, 410 Gone, tenant isolation and
//! EventService/PublishEvent.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, UNIX_EPOCH},
};

use common::{assert_signed, assert_status, eventually, parse_stream_id, wait_until, Keyspace, Receiver, Recorded, Service, WAIT};
use serde_json::json;
use tonic::Code;
use wss::proto::{GetWebhookRequest, PublishEventRequest};

/// Checks the body is the docs/contract.md §2 envelope of the event.
fn assert_envelope(request: &Recorded, id: &str, event_type: &str, tenant: &str, stream_id: &str, data: &serde_json::Value) {
    let body = request.json();
    let object = body.as_object().unwrap_or_else(|| panic!("the body is not a JSON object: {body}"));
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["id", "type", "tenant", "created_at", "data"]), "envelope fields: {body}");
    assert_eq!(body["id"], json!(id), "envelope id: {body}");
    assert_eq!(body["type"], json!(event_type), "envelope type: {body}");
    assert_eq!(body["tenant"], json!(tenant), "envelope tenant: {body}");
    assert_eq!(&body["data"], data, "envelope data: {body}");
    let created_at = body["created_at"].as_str().unwrap_or_else(|| panic!("created_at is not a string: {body}"));
    let at = humantime::parse_rfc3339(created_at).unwrap_or_else(|e| panic!("created_at {created_at:?} is not RFC 3339: {e}"));
    let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (stream_ms, _) = parse_stream_id(stream_id);
    assert_eq!(secs, stream_ms / 1000, "created_at {created_at} is not the time of stream entry {stream_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xadd_event_is_delivered_signed_and_acknowledged() {
    let ks = Keyspace::new("delivered");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "delivered", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let webhook = grpc
        .create_webhook("acme", &receiver.url(), |r| {
            r.headers.insert("X-Shop".into(), "north-7".into());
        })
        .await;

    let data = r#"{"order_id":"A-1001"}"#;
    let stream_id = ks.publish("acme", "order.status_updated", data);
    let requests = receiver.wait_for_requests(1, "delivered request", Recorded::delivered).await;
    let r = &requests[0];

    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hook");
    assert_eq!(r.header("Content-Type"), "application/json");
    assert!(r.header("User-Agent").starts_with("wss/"), "User-Agent: {}", r.header("User-Agent"));
    assert_eq!(r.event_id(), stream_id, "X-WSS-Event-Id is the stream entry id when the event has no `id`");
    assert_eq!(r.header("X-WSS-Event-Type"), "order.status_updated");
    assert_eq!(r.header("X-WSS-Attempt"), "1");
    assert_eq!(r.header("X-Shop"), "north-7", "the webhook's static header");
    assert_envelope(r, &stream_id, "order.status_updated", "acme", &stream_id, &json!({"order_id": "A-1001"}));
    assert_signed(&webhook.secret, r);
    assert_ne!(common::wss_signature("some-other-secret-value", r.header("X-WSS-Timestamp"), &r.body), r.header("X-WSS-Signature"));

    wait_until(WAIT, "the entry acknowledged (XPENDING 0)", || ks.all_acknowledged_through(&stream_id)).await;
    assert_eq!(receiver.requests().len(), 1, "one event, one request: {:?}", receiver.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_id_is_kept_and_unwanted_types_are_acknowledged_undelivered() {
    let ks = Keyspace::new("ids_and_types");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "ids-and-types", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |r| r.event_types = vec!["order.*".into()]).await;

    let unwanted = ks.xadd(&[("tenant", "acme"), ("type", "invoice.paid"), ("data", "{}"), ("id", "evt-unwanted")]);
    let wanted = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", r#"{"n":1}"#), ("id", "evt-42")]);

    let requests = receiver.wait_for_requests(1, "delivered request", Recorded::delivered).await;
    let r = &requests[0];
    assert_eq!(r.event_id(), "evt-42", "an `id` field is the event id");
    assert_envelope(r, "evt-42", "order.created", "acme", &wanted, &json!({"n": 1}));
    assert_signed(&webhook.secret, r);

    // Both entries handled and acknowledged; a request for the unwanted one would have arrived
    // before its acknowledgement.
    wait_until(WAIT, "both entries acknowledged", || ks.all_acknowledged_through(&wanted)).await;
    assert!(parse_stream_id(&unwanted) < parse_stream_id(&wanted));
    let ids: Vec<String> = receiver.requests().iter().map(|r| r.event_id().to_owned()).collect();
    assert_eq!(ids, ["evt-42"], "invoice.paid does not match order.* and must not be delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_retries_with_backoff_and_fresh_signatures() {
    let ks = Keyspace::new("retries");
    let receiver = Receiver::failing_first(2);
    let service = Service::start(&ks, "retries", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("quick", 5, 100, 1000).await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |r| r.retry_policy_id = "quick".into()).await;

    let stream_id = ks.publish("acme", "order.created", r#"{"order_id":"A-7"}"#);
    receiver.wait_for_requests(1, "delivered request", Recorded::delivered).await;
    wait_until(WAIT, "the entry acknowledged", || ks.all_acknowledged_through(&stream_id)).await;

    let requests = receiver.requests();
    let statuses: Vec<Option<u16>> = requests.iter().map(|r| r.answered).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)], "delivered on attempt 3, and then no more requests");
    for (n, r) in requests.iter().enumerate() {
        assert_eq!(r.header("X-WSS-Attempt"), (n + 1).to_string(), "request #{n}");
        assert_eq!(r.event_id(), stream_id, "request #{n}: the event id is stable across retries");
        assert_eq!(r.body, requests[0].body, "request #{n}: the same body");
        // Each attempt is signed for its own timestamp, checked on its own.
        assert_signed(&webhook.secret, r);
    }
    // Backoff 100 ms, then 200 ms (multiplier 2, no jitter): lower bounds only.
    let gap1 = requests[1].arrived - requests[0].arrived;
    let gap2 = requests[2].arrived - requests[1].arrived;
    assert!(gap1 >= Duration::from_millis(100), "attempt 2 came {gap1:?} after attempt 1; the policy waits 100ms");
    assert!(gap2 >= Duration::from_millis(200), "attempt 3 came {gap2:?} after attempt 2; the policy waits 200ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_receiver_ends_in_a_dead_letter() {
    let ks = Keyspace::new("exhausted");
    let receiver = Receiver::always(500);
    let service = Service::start(&ks, "exhausted", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("three", 3, 100, 200).await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |r| r.retry_policy_id = "three".into()).await;

    let stream_id = ks.publish("acme", "order.created", r#"{"order_id":"A-9"}"#);
    let dead = eventually(WAIT, "a dead letter for tenant acme", || {
        let grpc = grpc.clone();
        async move {
            let dead = grpc.dead_letters("acme").await?;
            if dead.is_empty() {
                Err("none yet".into())
            } else {
                Ok(dead)
            }
        }
    })
    .await;
    wait_until(WAIT, "the entry acknowledged after dead-lettering", || ks.all_acknowledged_through(&stream_id)).await;

    assert_eq!(dead.len(), 1, "one event, one dead letter: {dead:?}");
    let d = &dead[0];
    assert_eq!(d.reason, "max_attempts_exhausted", "{d:?}");
    assert_eq!(d.webhook_id, webhook.webhook_id);
    assert_eq!(d.event_id, stream_id);
    assert_eq!(d.stream_entry_id, stream_id);
    assert_eq!(d.tenant_id, "acme");
    assert_eq!(d.event_type, "order.created");
    let attempts: Vec<(u32, u32)> = d.attempts.iter().map(|a| (a.attempt, a.status_code)).collect();
    assert_eq!(attempts, [(1, 500), (2, 500), (3, 500)], "every attempt's outcome is kept: {d:?}");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "max_attempts 3 means exactly 3 requests");
    let attempt_headers: Vec<&str> = requests.iter().map(|r| r.header("X-WSS-Attempt")).collect();
    assert_eq!(attempt_headers, ["1", "2", "3"]);

    // Another tenant's filter does not show it.
    assert_eq!(grpc.dead_letters("someone-else").await.unwrap().len(), 0, "ListDeadLetters filters by tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_receiver_disables_its_webhook() {
    let ks = Keyspace::new("gone");
    let receiver = Receiver::always(410);
    let service = Service::start(&ks, "gone", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |_| {}).await;

    let stream_id = ks.publish("acme", "order.created", "{}");
    let dead = eventually(WAIT, "a dead letter for tenant acme", || {
        let grpc = grpc.clone();
        async move {
            let dead = grpc.dead_letters("acme").await?;
            if dead.is_empty() {
                Err("none yet".into())
            } else {
                Ok(dead)
            }
        }
    })
    .await;
    wait_until(WAIT, "the entry acknowledged", || ks.all_acknowledged_through(&stream_id)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "gone", "{:?}", dead[0]);
    assert_eq!(dead[0].webhook_id, webhook.webhook_id);
    assert_eq!(dead[0].event_id, stream_id);
    assert_eq!(receiver.requests().len(), 1, "410 is not retried");

    let got = grpc.webhooks().get_webhook(GetWebhookRequest { webhook_id: webhook.webhook_id.clone() }).await.unwrap().into_inner();
    assert!(!got.enabled, "a 410 disables the webhook: {got:?}");
    assert!(!got.disabled_reason.is_empty(), "the service says why it disabled the webhook: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_events() {
    let ks = Keyspace::new("isolation");
    let (receiver_a, receiver_b) = (Receiver::ok(), Receiver::ok());
    let service = Service::start(&ks, "isolation", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("a").await;
    grpc.create_tenant("b").await;
    let webhook_a = grpc.create_webhook("a", &receiver_a.url(), |_| {}).await;
    let webhook_b = grpc.create_webhook("b", &receiver_b.url(), |_| {}).await;

    // 50 events each, in a mixed order: runs of one tenant of varying length.
    let mut sent: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let (mut left_a, mut left_b) = (50, 50);
    let mut last = String::new();
    let mut i = 0usize;
    while left_a + left_b > 0 {
        let run = 1 + (i * 7) % 4;
        let tenant = if (i % 2 == 0 && left_a > 0) || left_b == 0 { "a" } else { "b" };
        for _ in 0..run {
            let left = if tenant == "a" { &mut left_a } else { &mut left_b };
            if *left == 0 {
                break;
            }
            *left -= 1;
            last = ks.publish(tenant, "order.created", &format!(r#"{{"tenant_was":"{tenant}","n":{}}}"#, 50 - *left));
            sent.entry(tenant).or_default().insert(last.clone());
        }
        i += 1;
    }
    assert_eq!((sent["a"].len(), sent["b"].len()), (50, 50));

    receiver_a.wait_for_requests(50, "delivered requests", Recorded::delivered).await;
    receiver_b.wait_for_requests(50, "delivered requests", Recorded::delivered).await;
    wait_until(WAIT, "all 100 entries acknowledged", || ks.all_acknowledged_through(&last)).await;

    for (tenant, receiver, webhook) in [("a", &receiver_a, &webhook_a), ("b", &receiver_b, &webhook_b)] {
        let requests = receiver.requests();
        assert_eq!(requests.len(), 50, "receiver of tenant {tenant} got {} requests", requests.len());
        let mut ids = BTreeSet::new();
        for r in &requests {
            let body = r.json();
            assert_eq!(body["tenant"], json!(tenant), "receiver of {tenant} got {body}");
            assert_eq!(body["data"]["tenant_was"], json!(tenant), "receiver of {tenant} got {body}");
            assert_eq!(body["id"], json!(r.event_id()));
            assert_signed(&webhook.secret, r);
            ids.insert(r.event_id().to_owned());
        }
        assert_eq!(ids, sent[tenant], "receiver of {tenant} must get exactly its tenant's event ids");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_event_appends_a_deliverable_event() {
    let ks = Keyspace::new("publish");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "publish", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |_| {}).await;
    let mut events = grpc.events();

    let published = events
        .publish_event(PublishEventRequest {
            tenant_id: "acme".into(),
            event_type: "order.shipped".into(),
            data: r#"{"order_id":"A-1001","status":"shipped"}"#.into(),
            ..Default::default()
        })
        .await
        .expect("PublishEvent")
        .into_inner();
    assert_eq!(published.event_id, published.stream_entry_id, "without event_id receivers see the stream entry id");
    let with_id = events
        .publish_event(PublishEventRequest {
            tenant_id: "acme".into(),
            event_type: "order.shipped".into(),
            data: "[1,2]".into(),
            event_id: "evt-from-grpc".into(),
            ..Default::default()
        })
        .await
        .expect("PublishEvent with event_id")
        .into_inner();
    assert_eq!(with_id.event_id, "evt-from-grpc");

    let requests = receiver.wait_for_requests(2, "delivered requests", Recorded::delivered).await;
    wait_until(WAIT, "both entries acknowledged", || ks.all_acknowledged_through(&with_id.stream_entry_id)).await;
    let by_id: BTreeMap<&str, &Recorded> = requests.iter().map(|r| (r.event_id(), r)).collect();
    assert_eq!(by_id.len(), 2, "two distinct events: {requests:?}");
    let first = by_id.get(published.event_id.as_str()).unwrap_or_else(|| panic!("{} not delivered: {requests:?}", published.event_id));
    assert_envelope(
        first,
        &published.event_id,
        "order.shipped",
        "acme",
        &published.stream_entry_id,
        &json!({"order_id":"A-1001","status":"shipped"}),
    );
    assert_signed(&webhook.secret, first);
    let second = by_id.get("evt-from-grpc").unwrap_or_else(|| panic!("evt-from-grpc not delivered: {requests:?}"));
    assert_envelope(second, "evt-from-grpc", "order.shipped", "acme", &with_id.stream_entry_id, &json!([1, 2]));

    let bad_data = PublishEventRequest {
        tenant_id: "acme".into(),
        event_type: "order.shipped".into(),
        data: "{not json".into(),
        ..Default::default()
    };
    assert_status(events.publish_event(bad_data).await, Code::InvalidArgument, Some("data"), "PublishEvent with data that is not JSON");
    let ghost =
        PublishEventRequest { tenant_id: "ghost".into(), event_type: "order.shipped".into(), data: "{}".into(), ..Default::default() };
    assert_status(events.publish_event(ghost).await, Code::NotFound, None, "PublishEvent for an unknown tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_an_event_id_again_within_the_window_appends_nothing() {
    let ks = Keyspace::new("publish_once");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "publish-once", &[("WSS_DEDUPE_WINDOW", "2s")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_tenant("beta").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;
    let mut events = grpc.events();
    let publish = |tenant: &str, data: &str| PublishEventRequest {
        tenant_id: tenant.into(),
        event_type: "order.paid".into(),
        data: data.into(),
        event_id: "order-A-1001-paid".into(),
        ..Default::default()
    };

    let first = events.publish_event(publish("acme", r#"{"n":1}"#)).await.unwrap().into_inner();
    assert!(!first.duplicate);
    // A retry of the producer, even with other data, is the same event: nothing appended.
    let again = events.publish_event(publish("acme", r#"{"n":2}"#)).await.unwrap().into_inner();
    assert!(again.duplicate, "{again:?}");
    assert_eq!((again.stream_entry_id.as_str(), again.event_id.as_str()), (first.stream_entry_id.as_str(), "order-A-1001-paid"));
    // Ids are per tenant.
    let other_tenant = events.publish_event(publish("beta", "{}")).await.unwrap().into_inner();
    assert!(!other_tenant.duplicate);
    let length: u64 = redis::cmd("XLEN").arg(ks.events()).query(&mut ks.conn()).unwrap();
    assert_eq!(length, 2, "one entry per tenant");

    let got = receiver.wait_for_requests(1, "the event, once", Recorded::delivered).await;
    assert_eq!(got[0].json()["data"]["n"], 1);
    // Past the window the id may be published anew.
    wait_until(WAIT, "the id forgotten after the 2 s window", || {
        let key: bool = redis::cmd("EXISTS").arg(format!("{}published:acme:order-A-1001-paid", ks.prefix)).query(&mut ks.conn()).unwrap();
        if key {
            Err("still remembered".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    let later = events.publish_event(publish("acme", r#"{"n":3}"#)).await.unwrap().into_inner();
    assert!(!later.duplicate && later.stream_entry_id != first.stream_entry_id);
    let got = receiver.wait_for_requests(2, "the first event and the later one", Recorded::delivered).await;
    let data: Vec<i64> = got.iter().map(|r| r.json()["data"]["n"].as_i64().unwrap()).collect();
    assert_eq!(data, [1, 3], "the duplicate (n = 2) never reached the receiver");
}
