//! ResendDelivery and ReplayEvents (DeliveryService), against the real binary, a real Redis and
//! real receivers on loopback:
//!
//! - a delivered delivery and a dead-lettered one, resent, arrive again freshly signed (a later
//!   timestamp), with the same event id and body and attempt 1, as new deliveries; the
//!   dead-lettered one's event comes from its dead-letter record once its stream entry is gone,
//!   and a delivered one whose entry is gone is FAILED_PRECONDITION;
//! - a replay of a period sends exactly that tenant's events of the period to the webhooks that
//!   match them, page by page, and never replays its own copies;
//! - tenant tokens are limited to their own tenant; requests are validated.

mod common;
mod secure;

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use common::{
    assert_signed, assert_status, eventually, parse_stream_id, wait_until, Grpc, Keyspace, Receiver, Recorded, Reply, Service, WAIT,
};
use prost_types::Timestamp;
use secure::Authed;
use tonic::Code;
use wss::proto::{
    CreateTenantRequest, CreateWebhookRequest, DeliveryStatus, GetDeliveryRequest, ReplayEventsRequest, ReplayEventsResponse,
    ResendDeliveryRequest,
};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn ts(ms: u64) -> Option<Timestamp> {
    Some(Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

/// Waits until the clock is past `ms` (so that the next stream entry, or signature, is later).
async fn clock_past(ms: u64) {
    wait_until(WAIT, &format!("the clock past {ms}"), || if now_ms() > ms { Ok(()) } else { Err(format!("{}", now_ms())) }).await;
}

/// Waits until delivery `id` has `status`.
async fn delivery_status(grpc: &Grpc, id: &str, status: DeliveryStatus) -> wss::proto::Delivery {
    eventually(WAIT, &format!("delivery {id} {status:?}"), || async {
        match grpc.deliveries().get_delivery(GetDeliveryRequest { delivery_id: id.into() }).await {
            Ok(d) if d.get_ref().status == status as i32 => Ok(d.into_inner()),
            Ok(d) => Err(format!("{:?}", d.into_inner())),
            Err(s) => Err(format!("{s:?}")),
        }
    })
    .await
}

async fn resend(grpc: &Grpc, id: &str) -> wss::proto::ResendDeliveryResponse {
    grpc.deliveries()
        .resend_delivery(ResendDeliveryRequest { delivery_id: id.into() })
        .await
        .unwrap_or_else(|s| panic!("ResendDelivery {id}: {s:?}"))
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_deliveries_arrive_again_freshly_signed_with_their_event_id() {
    let ks = Keyspace::new("resend_one");
    let good = Receiver::ok();
    let fixed = Arc::new(AtomicBool::new(false));
    let flag = fixed.clone();
    let flaky = Receiver::start(move |_| Reply::status(if flag.load(Ordering::SeqCst) { 200 } else { 500 }));
    let service = Service::start(&ks, "resend-one", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("once", 1, 100, 100).await;
    grpc.create_tenant("acme").await;
    let ok_hook = grpc.create_webhook("acme", &good.url(), |r| r.event_types = vec!["ok.*".into()]).await;
    let bad_hook = grpc
        .create_webhook("acme", &flaky.url(), |r| {
            r.event_types = vec!["bad.*".into()];
            r.retry_policy_id = "once".into();
        })
        .await;

    // Delivered, then resent while its stream entry is retained.
    let entry = ks.xadd(&[("tenant", "acme"), ("type", "ok.created"), ("data", r#"{"n":1}"#), ("id", "evt-ok-1")]);
    let first_id = format!("{entry}:{}", ok_hook.webhook_id);
    delivery_status(&grpc, &first_id, DeliveryStatus::Delivered).await;
    let first = good.requests()[0].clone();
    let first_ts: u64 = first.header("X-WSS-Timestamp").parse().unwrap();
    clock_past(first_ts * 1000 + 999).await;
    let sent = resend(&grpc, &first_id).await;
    assert_eq!(
        (sent.event_id.as_str(), sent.webhook_id.as_str(), sent.event_source.as_str()),
        ("evt-ok-1", ok_hook.webhook_id.as_str(), "stream")
    );
    assert_ne!(sent.delivery_id, first_id, "a new delivery");
    assert_eq!(sent.delivery_id, format!("{}:{}", sent.stream_entry_id, ok_hook.webhook_id));
    let all = good.wait_for_requests(2, "the original and the resend", Recorded::delivered).await;
    let again = &all[1];
    assert_eq!((again.event_id(), again.header("X-WSS-Attempt")), ("evt-ok-1", "1"));
    assert_eq!(again.body, first.body, "the same envelope (id, type, created_at, data)");
    assert_signed(&ok_hook.secret, again);
    let again_ts: u64 = again.header("X-WSS-Timestamp").parse().unwrap();
    assert!(again_ts > first_ts, "signed afresh at send time: {again_ts} after {first_ts}");
    let resent = delivery_status(&grpc, &sent.delivery_id, DeliveryStatus::Delivered).await;
    assert_eq!((resent.event_id.as_str(), resent.attempts.len()), ("evt-ok-1", 1));

    // Dead-lettered; its stream entry then deleted (as trimming would): resent from its
    // dead-letter record.
    let bad_entry = ks.xadd(&[("tenant", "acme"), ("type", "bad.created"), ("data", r#"{"n":2}"#)]);
    let bad_id = format!("{bad_entry}:{}", bad_hook.webhook_id);
    delivery_status(&grpc, &bad_id, DeliveryStatus::DeadLettered).await;
    let failed = flaky.requests()[0].clone();
    let mut con = ks.conn();
    let deleted: u32 = redis::cmd("XDEL").arg(ks.events()).arg(&bad_entry).query(&mut con).unwrap();
    assert_eq!(deleted, 1);
    fixed.store(true, Ordering::SeqCst);
    let sent = resend(&grpc, &bad_id).await;
    assert_eq!(
        (sent.event_id.as_str(), sent.event_source.as_str()),
        (bad_entry.as_str(), "dead_letter"),
        "the entry id stays the event id"
    );
    let all = flaky.wait_for_requests(1, "the resent dead letter delivered", Recorded::delivered).await;
    let again = all.iter().find(|r| r.delivered()).unwrap();
    assert_eq!((again.event_id(), again.header("X-WSS-Attempt")), (bad_entry.as_str(), "1"));
    assert_eq!(again.body, failed.body);
    assert_signed(&bad_hook.secret, again);
    delivery_status(&grpc, &sent.delivery_id, DeliveryStatus::Delivered).await;
    assert_eq!(good.requests().len(), 2, "the other webhook gets nothing: {:?}", good.requests());

    // A delivered delivery whose entry is gone has no other copy of its event.
    let deleted: u32 = redis::cmd("XDEL").arg(ks.events()).arg(&entry).query(&mut con).unwrap();
    assert_eq!(deleted, 1);
    let gone = grpc.deliveries().resend_delivery(ResendDeliveryRequest { delivery_id: first_id.clone() }).await;
    let status = assert_status(gone, Code::FailedPrecondition, None, "resending a delivered delivery whose entry was trimmed");
    assert!(status.message().contains("WSS_STREAM_RETENTION"), "{}", status.message());
    let unknown = grpc.deliveries().resend_delivery(ResendDeliveryRequest { delivery_id: format!("1-0:{}", ok_hook.webhook_id) }).await;
    assert_status(unknown, Code::NotFound, None, "an unknown delivery");
    let empty = grpc.deliveries().resend_delivery(ResendDeliveryRequest::default()).await;
    assert_status(empty, Code::InvalidArgument, Some("delivery_id"), "no delivery id");
}

/// Calls ReplayEvents page by page until it says there is no more; returns every page.
async fn replay_all(grpc: &Grpc, req: ReplayEventsRequest) -> Vec<ReplayEventsResponse> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = grpc
            .deliveries()
            .replay_events(ReplayEventsRequest { page_token: token, ..req.clone() })
            .await
            .unwrap_or_else(|s| panic!("ReplayEvents: {s:?}"))
            .into_inner();
        token = page.next_page_token.clone();
        pages.push(page);
        if token.is_empty() {
            return pages;
        }
        assert!(pages.len() < 20, "too many pages: {pages:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_exactly_the_periods_events_to_the_matching_webhooks_page_by_page() {
    let ks = Keyspace::new("replay_period");
    let orders = Receiver::ok();
    let big = Receiver::ok();
    let other_tenant = Receiver::ok();
    let service = Service::start(&ks, "replay-period", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_tenant("globex").await;
    let w_orders = grpc.create_webhook("acme", &orders.url(), |r| r.event_types = vec!["order.*".into()]).await;
    let w_big = grpc.create_webhook("acme", &big.url(), |r| r.filter = "event.data.n > 2".into()).await;
    grpc.create_webhook("globex", &other_tenant.url(), |_| {}).await;

    let id_of = |e: &str| parse_stream_id(e).0;
    let before = ks.publish("acme", "order.created", r#"{"n":0}"#);
    clock_past(id_of(&before)).await;
    let mut period = Vec::new();
    for n in 1..=5 {
        period.push(ks.publish("acme", "order.created", &format!(r#"{{"n":{n}}}"#)));
    }
    period.push(ks.publish("acme", "user.created", r#"{"n":6}"#));
    ks.publish("globex", "order.created", r#"{"n":7}"#);
    let last = period.last().unwrap().clone();
    clock_past(id_of(&last)).await;
    let after = ks.publish("acme", "order.created", r#"{"n":99}"#);
    // orders: n = 0..=5, 99; big: n = 3..=6, 99.
    orders.wait_for_requests(7, "the original order events", Recorded::delivered).await;
    big.wait_for_requests(5, "the original events with n > 2", Recorded::delivered).await;
    other_tenant.wait_for_requests(1, "globex's event", Recorded::delivered).await;

    let (since, until) = (id_of(&period[0]), id_of(&last) + 1);
    let req = ReplayEventsRequest { tenant_id: "acme".into(), since: ts(since), until: ts(until), limit: 2, ..Default::default() };
    let pages = replay_all(&grpc, req.clone()).await;
    assert!(pages.len() >= 3, "six events at two per call: {pages:?}");
    assert!(pages.iter().all(|p| p.events_replayed <= 2), "{pages:?}");
    let examined: u32 = pages.iter().map(|p| p.events_examined).sum();
    let replayed: u32 = pages.iter().map(|p| p.events_replayed).sum();
    let scheduled: u32 = pages.iter().map(|p| p.deliveries_scheduled).sum();
    assert_eq!((examined, replayed, scheduled), (6, 6, 9), "{pages:?}");
    let deliveries: Vec<_> = pages.iter().flat_map(|p| p.deliveries.clone()).collect();
    let originals: BTreeSet<&str> = deliveries.iter().map(|d| d.original_stream_entry_id.as_str()).collect();
    assert_eq!(originals, period.iter().map(String::as_str).collect(), "exactly the period's events");

    let all_orders = orders.wait_for_requests(12, "the order events again", Recorded::delivered).await;
    let all_big = big.wait_for_requests(9, "the big events again", Recorded::delivered).await;
    let again_orders: Vec<&Recorded> = all_orders[7..].iter().collect();
    let again_big: Vec<&Recorded> = all_big[5..].iter().collect();
    let ids = |rs: &[&Recorded]| rs.iter().map(|r| r.event_id().to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&again_orders), period[..5].iter().cloned().collect(), "order.* of the period, by their original ids");
    assert_eq!(ids(&again_big), period[2..].iter().cloned().collect(), "n > 2 of the period");
    for r in again_orders.iter() {
        assert_eq!(r.header("X-WSS-Attempt"), "1");
        assert_signed(&w_orders.secret, r);
    }
    for r in again_big.iter() {
        assert_signed(&w_big.secret, r);
    }
    assert_eq!(other_tenant.requests().len(), 1, "another tenant's events are never replayed");
    assert!(!ids(&again_orders).contains(&before) && !ids(&again_orders).contains(&after), "nothing outside the period");

    // One webhook, some types, over a period reaching to now: the copies just appended are not
    // replayed again, the event after the period is.
    let narrow = ReplayEventsRequest {
        webhook_id: w_big.webhook_id.clone(),
        event_types: vec!["user.*".into(), "order.created".into()],
        until: ts(now_ms() + 1000),
        limit: 100,
        ..req
    };
    let pages = replay_all(&grpc, narrow).await;
    assert_eq!(pages.len(), 1, "{pages:?}");
    assert_eq!(
        (pages[0].events_examined, pages[0].deliveries_scheduled),
        (7, 5),
        "n = 1..=6 and 99 examined; 3..=6 and 99 sent: {pages:?}"
    );
    big.wait_for_requests(14, "the narrow replay", Recorded::delivered).await;
    assert_eq!(orders.requests().len(), 12, "the other webhook was not asked for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_tokens_resend_and_replay_only_their_own_tenant() {
    const ADMIN: &str = "resend-test-admin-token-0123456789";
    let ks = Keyspace::new("resend_tokens");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "resend-tokens", &[("WSS_ADMIN_TOKEN", ADMIN)]).await;
    let channel = service.grpc().await.channel;
    let admin = Authed::new(&channel, Some(ADMIN));
    for tenant in ["acme", "globex"] {
        admin.tenants().create_tenant(CreateTenantRequest { tenant_id: tenant.into(), ..Default::default() }).await.unwrap();
    }
    let create = CreateWebhookRequest { tenant_id: "globex".into(), url: receiver.url(), ..Default::default() };
    let hook = admin.webhooks().create_webhook(create).await.unwrap().into_inner();
    let entry = ks.publish("globex", "order.created", "{}");
    let delivery_id = format!("{entry}:{}", hook.webhook_id);
    receiver.wait_for_requests(1, "globex's event", Recorded::delivered).await;
    eventually(WAIT, "globex's delivery recorded", || async {
        admin
            .deliveries()
            .get_delivery(GetDeliveryRequest { delivery_id: delivery_id.clone() })
            .await
            .map(|_| ())
            .map_err(|s| format!("{s:?}"))
    })
    .await;

    let acme = Authed::new(&channel, Some(&admin.create_token("acme").await.token));
    let denied = acme.deliveries().resend_delivery(ResendDeliveryRequest { delivery_id: delivery_id.clone() }).await;
    let status = assert_status(denied, Code::PermissionDenied, None, "acme's token resending globex's delivery");
    assert!(!status.message().contains("globex"), "the refusal does not name the owner: {}", status.message());
    let period = ReplayEventsRequest { since: ts(now_ms() - 60_000), until: ts(now_ms() + 1000), ..Default::default() };
    let denied = acme.deliveries().replay_events(ReplayEventsRequest { tenant_id: "globex".into(), ..period.clone() }).await;
    assert_status(denied, Code::PermissionDenied, Some("tenant_id"), "acme's token replaying globex");
    let denied = acme.deliveries().replay_events(ReplayEventsRequest { webhook_id: hook.webhook_id.clone(), ..period.clone() }).await;
    assert_status(denied, Code::PermissionDenied, None, "acme's token replaying to globex's webhook");
    // Its own tenant (empty: its own): nothing of acme's to replay.
    let own = acme.deliveries().replay_events(period.clone()).await.unwrap().into_inner();
    assert_eq!((own.events_examined, own.deliveries_scheduled), (0, 0), "{own:?}");
    assert_eq!(receiver.requests().len(), 1, "nothing was sent again");

    // globex's own token may do both.
    let globex = Authed::new(&channel, Some(&admin.create_token("globex").await.token));
    globex.deliveries().resend_delivery(ResendDeliveryRequest { delivery_id }).await.unwrap();
    let replayed = globex.deliveries().replay_events(period.clone()).await.unwrap().into_inner();
    assert_eq!((replayed.events_examined, replayed.deliveries_scheduled), (1, 1), "{replayed:?}");
    receiver.wait_for_requests(3, "the resend and the replay", Recorded::delivered).await;

    // Validation.
    let bad = |req: ReplayEventsRequest| {
        let admin = admin.clone();
        async move { admin.deliveries().replay_events(req).await }
    };
    let full = ReplayEventsRequest { tenant_id: "globex".into(), ..period };
    assert_status(bad(ReplayEventsRequest { since: None, ..full.clone() }).await, Code::InvalidArgument, Some("since"), "no since");
    assert_status(
        bad(ReplayEventsRequest { until: full.since, ..full.clone() }).await,
        Code::InvalidArgument,
        Some("until"),
        "until = since",
    );
    assert_status(
        bad(ReplayEventsRequest { tenant_id: String::new(), ..full.clone() }).await,
        Code::InvalidArgument,
        Some("tenant_id"),
        "an admin must name the tenant",
    );
    assert_status(
        bad(ReplayEventsRequest { page_token: "x".into(), ..full.clone() }).await,
        Code::InvalidArgument,
        Some("page_token"),
        "a made-up token",
    );
    assert_status(bad(ReplayEventsRequest { tenant_id: "nobody".into(), ..full }).await, Code::NotFound, None, "an unknown tenant");
}

/// Runs the built `wss` CLI with `args` against the control plane at `addr`; returns its JSON.
fn cli(addr: std::net::SocketAddr, args: &[&str]) -> serde_json::Value {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wss"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WSS_") {
            cmd.env_remove(&name);
        }
    }
    let out = cmd.env("WSS_SERVER", format!("http://{addr}")).args(args).stdin(std::process::Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "wss {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("wss {args:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_resends_replays_and_tests() {
    let ks = Keyspace::new("resend_cli");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "resend-cli", &[]).await;
    let grpc = service.grpc().await;
    let addr = service.grpc_addr.unwrap();
    grpc.create_tenant("acme").await;
    let hook = grpc.create_webhook("acme", &receiver.url(), |_| {}).await;
    let entry = ks.publish("acme", "order.created", r#"{"n":1}"#);
    let delivery_id = format!("{entry}:{}", hook.webhook_id);
    delivery_status(&grpc, &delivery_id, DeliveryStatus::Delivered).await;

    let resent = cli(addr, &["delivery", "resend", &delivery_id]);
    assert_eq!((resent["event_id"].as_str(), resent["event_source"].as_str()), (Some(entry.as_str()), Some("stream")), "{resent}");
    let replayed = cli(addr, &["event", "replay", "--tenant", "acme", "--since", "10m", "--limit", "1", "--all"]);
    assert_eq!((replayed["events_examined"].as_u64(), replayed["deliveries_scheduled"].as_u64()), (Some(1), Some(1)), "{replayed}");
    let tested = cli(addr, &["webhook", "test", &hook.webhook_id]);
    assert_eq!((tested["succeeded"].as_bool(), tested["status_code"].as_u64()), (Some(true), Some(200)), "{tested}");
    let all = receiver.wait_for_requests(4, "original, resend, replay and test", Recorded::delivered).await;
    assert_eq!(all.iter().filter(|r| r.event_id() == entry).count(), 3, "{all:?}");
}
