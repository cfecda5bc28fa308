//! The durable backlog (docs/reliability.md, "Endpoint isolation"): a delivery that cannot be attempted now —
//! a retry waiting for its backoff, a delivery over its webhook's in-flight cap, one behind an
//! open circuit — is written into Redis and its entry acknowledged, so that it leaves the shared
//! in-flight window; the backlog's pump takes it back when due, fairly, under a lease that a
//! crashed instance gives up.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{assert_signed, eventually, wait_until, Keyspace, Receiver, Recorded, Reply, Service, WAIT};
use wss::proto::{DeliveryStatus, GetDeliveryRequest, GetWebhookStatsRequest};

/// A backlog item as stored (`<length>:<bytes>` parts: its state, then its entry's fields),
/// read straight from Redis and split into its parts.
fn item_parts(ks: &Keyspace, webhook: &str, entry: &str) -> Option<Vec<String>> {
    let stored: Option<Vec<u8>> =
        redis::cmd("GET").arg(format!("{}backlog:item:{webhook}:{entry}", ks.prefix)).query(&mut ks.conn()).unwrap();
    let mut rest = &stored?[..];
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let colon = rest.iter().position(|b| *b == b':').expect("a length");
        let len: usize = std::str::from_utf8(&rest[..colon]).unwrap().parse().unwrap();
        parts.push(String::from_utf8_lossy(&rest[colon + 1..colon + 1 + len]).into_owned());
        rest = &rest[colon + 1 + len..];
    }
    Some(parts)
}

/// How many deliveries of `webhook` wait in the backlog (its due set).
fn backlog_len(ks: &Keyspace, webhook: &str) -> u64 {
    redis::cmd("ZCARD").arg(format!("{}backlog:due:{webhook}", ks.prefix)).query(&mut ks.conn()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_in_the_backlog_with_its_entry_acknowledged() {
    let ks = Keyspace::new("backlog_retry");
    let flaky = Receiver::failing_first(2);
    let service = Service::start(&ks, "backlog", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("later", 4, 2000, 2000).await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &flaky.url(), |r| r.retry_policy_id = "later".into()).await;

    let data = r#"{"order":"A-1"}"#;
    let stream_id = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", data), ("id", "evt-backlog")]);
    let delivery_id = format!("{stream_id}:{}", webhook.webhook_id);
    flaky.wait_for_requests(1, "the first attempt", |_| true).await;
    // Waiting for its retry, the delivery is in Redis and its entry is no longer pending.
    wait_until(WAIT, "the entry acknowledged while its retry waits", || ks.all_acknowledged_through(&stream_id)).await;
    let waiting = flaky.requests().len();
    assert!(waiting < 3, "acknowledged before the delivery succeeded ({waiting} requests so far)");
    let parts = item_parts(&ks, &webhook.webhook_id, &stream_id).expect("the item");
    assert_eq!(
        parts[1..],
        ["tenant", "acme", "type", "order.created", "data", data, "id", "evt-backlog"],
        "the item keeps the entry's fields, in order"
    );
    let meta: serde_json::Value = serde_json::from_str(&parts[0]).unwrap();
    assert_eq!(
        (meta["w"].as_str(), meta["e"].as_str(), meta["a"].as_u64()),
        (Some(webhook.webhook_id.as_str()), Some("evt-backlog"), Some(2)),
        "{meta}"
    );

    let all = flaky.wait_for_requests(1, "two failures, then the delivery", Recorded::delivered).await;
    assert_eq!(all.iter().map(|r| r.header("X-WSS-Attempt")).collect::<Vec<_>>(), ["1", "2", "3"]);
    for request in &all {
        assert_eq!(request.event_id(), "evt-backlog");
        assert_signed(&webhook.secret, request);
        assert_eq!(request.body, all[0].body, "every attempt sends the same body");
    }
    let record = eventually(WAIT, "the delivery recorded as DELIVERED", || async {
        match grpc.deliveries().get_delivery(GetDeliveryRequest { delivery_id: delivery_id.clone() }).await {
            Ok(r) if r.get_ref().status == DeliveryStatus::Delivered as i32 => Ok(r.into_inner()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(record.attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(), [500, 500, 200]);
    wait_until(WAIT, "the backlog emptied", || {
        match (backlog_len(&ks, &webhook.webhook_id), item_parts(&ks, &webhook.webhook_id, &stream_id)) {
            (0, None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_delivery_outlives_its_stream_entry() {
    let ks = Keyspace::new("backlog_trimmed");
    let flaky = Receiver::failing_first(1);
    let failing = Receiver::always(500);
    let service = Service::start(&ks, "backlog", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("twice", 2, 1500, 1500).await;
    grpc.create_tenant("acme").await;
    grpc.create_tenant("beta").await;
    let flaky_hook = grpc.create_webhook("acme", &flaky.url(), |r| r.retry_policy_id = "twice".into()).await;
    grpc.create_webhook("beta", &failing.url(), |r| r.retry_policy_id = "twice".into()).await;

    let a = ks.xadd(&[("tenant", "acme"), ("type", "t"), ("data", r#"{"n":1}"#), ("id", "evt-a")]);
    let b = ks.xadd(&[("tenant", "beta"), ("type", "t"), ("data", r#"{"n":2}"#), ("id", "evt-b"), ("region", "eu")]);
    wait_until(WAIT, "both entries acknowledged while their retries wait", || ks.all_acknowledged_through(&b)).await;
    // A producer's MAXLEN (or XDEL) removes them from the stream while they wait.
    let deleted: u64 = redis::cmd("XDEL").arg(ks.events()).arg(&a).arg(&b).query(&mut ks.conn()).unwrap();
    assert_eq!(deleted, 2);

    let all = flaky.wait_for_requests(1, "the retry, sent from the backlog", Recorded::delivered).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].body, all[0].body, "rebuilt from the fields the backlog kept");
    assert_signed(&flaky_hook.secret, &all[1]);

    let dead = eventually(WAIT, "beta's dead letter", || async {
        let all = grpc.dead_letters("beta").await?;
        if all.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(all)
        }
    })
    .await;
    assert_eq!(
        (dead[0].reason.as_str(), dead[0].event_id.as_str(), dead[0].attempts.len()),
        ("max_attempts_exhausted", "evt-b", 2),
        "{:?}",
        dead[0]
    );
    // The record keeps the source entry's fields (for redelivery), though the entry is gone.
    let records: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(format!("{}deadletters", ks.prefix)).arg("-").arg("+").query(&mut ks.conn()).unwrap();
    let fields = &records.iter().find(|(_, f)| f.iter().any(|(k, v)| k == "event_id" && v == "evt-b")).expect("the record").1;
    for (name, value) in [("field:data", r#"{"n":2}"#), ("field:region", "eu"), ("field:tenant", "beta")] {
        assert!(fields.iter().any(|(k, v)| k == name && v == value), "{name} = {value} in {fields:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_retries_never_fill_the_window_for_other_tenants() {
    let ks = Keyspace::new("backlog_window");
    let failing = Receiver::always(500);
    let healthy = Receiver::ok();
    // A window of 20 entries, and 200 events whose retries wait a minute.
    let service = Service::start(&ks, "backlog", &[("WSS_MAX_IN_FLIGHT", "20"), ("WSS_CIRCUIT_FAILURES", "100000")]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("patient", 10, 60_000, 60_000).await;
    grpc.create_tenant("big").await;
    grpc.create_tenant("small").await;
    let big = grpc.create_webhook("big", &failing.url(), |r| r.retry_policy_id = "patient".into()).await;
    grpc.create_webhook("small", &healthy.url(), |_| {}).await;

    for i in 0..200 {
        ks.publish("big", "t", &format!(r#"{{"i":{i}}}"#));
    }
    let mut last = String::new();
    for i in 0..20 {
        last = ks.publish("small", "t", &format!(r#"{{"i":{i}}}"#));
    }
    healthy.wait_for_requests(20, "small's events", Recorded::delivered).await;
    wait_until(WAIT, "every entry acknowledged", || ks.all_acknowledged_through(&last)).await;
    // Over the webhook's cap, some were postponed to the backlog before their first attempt.
    failing.wait_for_requests(200, "big's first attempts", |_| true).await;
    assert_eq!(failing.requests().len(), 200, "each of big's deliveries was attempted once and waits for its retry");
    wait_until(WAIT, "all 200 retries in the backlog", || match backlog_len(&ks, &big.webhook_id) {
        200 => Ok(()),
        n => Err(format!("{n}")),
    })
    .await;
    let stats = grpc
        .webhooks()
        .get_webhook_stats(GetWebhookStatsRequest { webhook_id: big.webhook_id.clone(), window: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.backlog_depth, 200, "{stats:?}");
    assert!(stats.backlog_oldest_age.is_some(), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_s_excess_waits_in_the_backlog_and_each_event_arrives_once() {
    let ks = Keyspace::new("backlog_slow");
    let slow = Receiver::slow(Duration::from_millis(200));
    let healthy = Receiver::ok();
    let service = Service::start(&ks, "backlog", &[("WSS_MAX_IN_FLIGHT", "10"), ("WSS_WEBHOOK_CONCURRENCY", "1")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("big").await;
    grpc.create_tenant("small").await;
    grpc.create_webhook("big", &slow.url(), |_| {}).await;
    grpc.create_webhook("small", &healthy.url(), |_| {}).await;

    for i in 0..30 {
        ks.xadd(&[("tenant", "big"), ("type", "t"), ("data", "{}"), ("id", &format!("big-{i}"))]);
    }
    let mut last = String::new();
    for i in 0..5 {
        last = ks.xadd(&[("tenant", "small"), ("type", "t"), ("data", "{}"), ("id", &format!("small-{i}"))]);
    }
    healthy.wait_for_requests(5, "small's events", Recorded::delivered).await;
    // One attempt at a time takes 200 ms: small's events did not wait for big's 30 (6 s), which
    // a window of 10 would have made them do without the backlog.
    let slow_so_far = slow.requests().len();
    assert!(slow_so_far < 30, "small's events arrived after all of big's ({slow_so_far})");
    wait_until(WAIT, "small's and big's entries acknowledged", || ks.all_acknowledged_through(&last)).await;

    let all = slow.wait_for_requests(30, "big's events", Recorded::delivered).await;
    let ids: BTreeSet<&str> = all.iter().map(|r| r.event_id()).collect();
    assert_eq!((ids.len(), all.len()), (30, 30), "every event once: {ids:?}");
    let mut in_flight = 0i32;
    let mut most = 0;
    let mut edges: Vec<(Instant, i32)> = all.iter().flat_map(|r| [(r.arrived, 1), (r.arrived + Duration::from_millis(200), -1)]).collect();
    edges.sort();
    for (_, step) in edges {
        in_flight += step;
        most = most.max(in_flight);
    }
    assert!(most <= 1, "the in-flight cap of 1 held for backlog deliveries too ({most} at once)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_backlog_deliveries_come_back_after_a_crash() {
    let ks = Keyspace::new("backlog_lease");
    // The first attempt fails; the second (from the backlog) hangs until wss is killed; the
    // third, from the other instance once the lease has ended, succeeds.
    let receiver = Receiver::start(|i| match i {
        0 => Reply::status(500),
        1 => Reply { status: 200, delay: Duration::from_secs(60) },
        _ => Reply::status(200),
    });
    let env = [("WSS_CLAIM_AFTER", "1s")];
    let first = Service::start(&ks, "first", &env).await;
    let grpc = first.grpc().await;
    grpc.create_policy("soon", 5, 500, 500).await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |r| r.retry_policy_id = "soon".into()).await;
    let stream_id = ks.xadd(&[("tenant", "acme"), ("type", "t"), ("data", "{}"), ("id", "evt-lease")]);
    receiver.wait_for_requests(2, "the first attempt and the leased retry", |_| true).await;
    let leased: f64 =
        redis::cmd("ZSCORE").arg(format!("{}backlog:due:{}", ks.prefix, webhook.webhook_id)).arg(&stream_id).query(&mut ks.conn()).unwrap();
    assert!(leased > wss::clock::now_ms() as f64, "the retry is leased while its attempt is out");
    drop(first); // SIGKILL, and wait for it to be gone

    let second = Service::start(&ks, "second", &env).await;
    let all = receiver.wait_for_requests(1, "the retry taken over by the second instance", Recorded::delivered).await;
    assert_eq!(all.iter().filter(|r| r.delivered()).count(), 1);
    assert_eq!(all.last().unwrap().header("X-WSS-Attempt"), "2", "the attempt the crash cut short is made again");
    wait_until(WAIT, "the backlog emptied", || match backlog_len(&ks, &webhook.webhook_id) {
        0 => Ok(()),
        n => Err(format!("{n} left")),
    })
    .await;
    drop(second);
}
