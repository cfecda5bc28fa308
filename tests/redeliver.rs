//! Redelivery of dead letters (DeliveryService/RedeliverDeadLetter), against the real binary, a
//! real Redis and real receivers on loopback:
//!
//! - a dead letter redelivered after its receiver was fixed arrives once, with a fresh valid
//!   signature, the same event id and body, attempt 1, and only at its own webhook;
//! - a bulk redelivery by filter takes exactly the matching dead letters, page by page, and
//!   running it again sends nothing twice;
//! - a tenant token cannot redeliver another tenant's dead letters;
//! - an entry dead-lettered for an unknown tenant is delivered once the tenant exists;
//! - requests are validated field by field.

mod common;
mod secure;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use common::{assert_signed, assert_status, eventually, wait_until, Grpc, Keyspace, Receiver, Recorded, Reply, Service, WAIT};
use secure::Authed;
use tonic::Code;
use wss::proto::{
    redeliver_dead_letter_request::Target, CreateTenantRequest, CreateWebhookRequest, DeadLetter, DeadLetterFilter, DeliveryStatus,
    ListDeliveriesRequest, RedeliverDeadLetterRequest, RedeliverDeadLetterResponse,
};

/// A receiver that answers 500 until [`Switch::fix`] is called, then 200.
struct Switch {
    fixed: Arc<AtomicBool>,
    receiver: Receiver,
}

impl Switch {
    fn broken() -> Self {
        let fixed = Arc::new(AtomicBool::new(false));
        let flag = fixed.clone();
        let receiver = Receiver::start(move |_| Reply::status(if flag.load(Ordering::SeqCst) { 200 } else { 500 }));
        Self { fixed, receiver }
    }

    fn fix(&self) {
        self.fixed.store(true, Ordering::SeqCst);
    }
}

fn by_id(id: &str) -> RedeliverDeadLetterRequest {
    RedeliverDeadLetterRequest { target: Some(Target::DeadLetterId(id.into())), ..Default::default() }
}

fn by_filter(filter: DeadLetterFilter, limit: u32, page_token: &str) -> RedeliverDeadLetterRequest {
    RedeliverDeadLetterRequest { target: Some(Target::Filter(filter)), limit, page_token: page_token.into() }
}

async fn redeliver(grpc: &Grpc, req: RedeliverDeadLetterRequest) -> RedeliverDeadLetterResponse {
    grpc.deliveries().redeliver_dead_letter(req.clone()).await.unwrap_or_else(|s| panic!("RedeliverDeadLetter {req:?}: {s:?}")).into_inner()
}

/// Waits until `tenant` has exactly `n` dead letters; returns them, newest first.
async fn dead_letters(grpc: &Grpc, tenant: &str, n: usize) -> Vec<DeadLetter> {
    eventually(WAIT, &format!("{n} dead letters of {tenant:?}"), || async {
        let found = grpc.dead_letters(tenant).await?;
        if found.len() == n {
            Ok(found)
        } else {
            Err(format!("{} so far: {found:?}", found.len()))
        }
    })
    .await
}

fn delivered_with_id<'a>(requests: &'a [Recorded], event_id: &str) -> Vec<&'a Recorded> {
    requests.iter().filter(|r| r.delivered() && r.event_id() == event_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_dead_letter_arrives_once_freshly_signed_with_its_event_id() {
    let ks = Keyspace::new("redeliver_one");
    let flaky = Switch::broken();
    let other = Receiver::ok();
    let service = Service::start(&ks, "redeliver-one", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("twice", 2, 100, 200).await;
    grpc.create_tenant("acme").await;
    let hook = grpc.create_webhook("acme", &flaky.receiver.url(), |r| r.retry_policy_id = "twice".into()).await;
    // Another webhook of the same tenant that wants the same events: it gets the event once,
    // and the redelivery, meant for the first webhook only, must not reach it again.
    grpc.create_webhook("acme", &other.url(), |_| {}).await;

    // No `id` field: the event id is the stream entry id, which the redelivery must keep.
    let entry = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", r#"{"n":1}"#), ("region", "eu")]);
    let dead = dead_letters(&grpc, "acme", 1).await;
    let dl = &dead[0];
    assert_eq!(
        (dl.reason.as_str(), dl.webhook_id.as_str(), dl.event_id.as_str()),
        ("max_attempts_exhausted", hook.webhook_id.as_str(), entry.as_str())
    );
    let failed = flaky.receiver.requests();
    assert_eq!(failed.len(), 2, "two attempts, both answered 500: {failed:?}");
    other.wait_for_requests(1, "the original event at the other webhook", Recorded::delivered).await;

    // The record holds the original entry's fields itself: with the source entry gone from the
    // stream (acknowledged, then trimmed), the event can still be sent again.
    let mut con = ks.conn();
    let stored: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{}deadletters", ks.prefix))
        .arg(&dl.dead_letter_id)
        .arg(&dl.dead_letter_id)
        .query(&mut con)
        .unwrap();
    let kept: Vec<(String, String)> = stored[0].1.iter().filter(|(k, _)| k.starts_with("field:")).cloned().collect();
    let expected = [("field:tenant", "acme"), ("field:type", "order.created"), ("field:data", r#"{"n":1}"#), ("field:region", "eu")];
    assert_eq!(kept, expected.map(|(k, v)| (k.to_owned(), v.to_owned())), "the source entry's fields, byte for byte");
    let deleted: u32 = redis::cmd("XDEL").arg(ks.events()).arg(&entry).query(&mut con).unwrap();
    assert_eq!(deleted, 1);

    flaky.fix();
    let answer = redeliver(&grpc, by_id(&dl.dead_letter_id)).await;
    assert_eq!(answer.redelivered_count, 1);
    let sent = &answer.redelivered[0];
    assert_eq!(
        (sent.dead_letter_id.as_str(), sent.event_id.as_str(), sent.webhook_id.as_str()),
        (dl.dead_letter_id.as_str(), entry.as_str(), hook.webhook_id.as_str())
    );
    assert_ne!(sent.stream_entry_id, entry, "it re-enters the pipeline as a new stream entry");

    flaky.receiver.wait_for_requests(1, "the redelivery delivered", Recorded::delivered).await;
    wait_until(WAIT, "the redelivered entry acknowledged", || ks.all_acknowledged_through(&sent.stream_entry_id)).await;
    let requests = flaky.receiver.requests();
    let delivered = delivered_with_id(&requests, &entry);
    assert_eq!(delivered.len(), 1, "exactly one delivery: {requests:?}");
    let again = delivered[0];
    assert_eq!(again.header("X-WSS-Attempt"), "1", "the attempt count starts again");
    assert_eq!(again.body, failed[0].body, "the same envelope: same id, type, tenant, created_at and data");
    assert_signed(&hook.secret, again);
    wss::verify(
        hook.secret.as_bytes(),
        Some(again.header("X-WSS-Timestamp")),
        Some(again.header("X-WSS-Signature")),
        &again.body,
        Duration::from_secs(300),
        SystemTime::now(),
    )
    .unwrap_or_else(|e| panic!("wss::verify refuses the redelivery: {e:?}"));
    let signed_at = |r: &Recorded| r.header("X-WSS-Timestamp").parse::<u64>().unwrap();
    assert!(signed_at(again) >= signed_at(&failed[1]), "signed afresh, not replayed");
    assert_eq!(other.requests().len(), 1, "the tenant's other webhook did not get the redelivery");

    // The record is gone: a second redelivery finds nothing, and the history shows a new delivery.
    assert!(grpc.dead_letters("acme").await.unwrap().is_empty());
    let twice = grpc.deliveries().redeliver_dead_letter(by_id(&dl.dead_letter_id)).await;
    assert_status(twice, Code::NotFound, None, "redelivering the same dead letter again");
    let history = grpc
        .deliveries()
        .list_deliveries(ListDeliveriesRequest {
            webhook_id: hook.webhook_id.clone(),
            status: DeliveryStatus::Delivered.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        (history[0].event_id.as_str(), history[0].stream_entry_id.as_str(), history[0].attempts.len()),
        (entry.as_str(), sent.stream_entry_id.as_str(), 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_redelivery_takes_exactly_the_matching_dead_letters_and_never_twice() {
    let ks = Keyspace::new("redeliver_bulk");
    let orders = Switch::broken();
    let invoices = Switch::broken();
    let globex_receiver = Switch::broken();
    let service = Service::start(&ks, "redeliver-bulk", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("once", 1, 100, 100).await;
    grpc.create_tenant("acme").await;
    grpc.create_tenant("globex").await;
    let once = |types: &[&str]| {
        let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
        move |r: &mut CreateWebhookRequest| {
            r.retry_policy_id = "once".into();
            r.event_types = types;
        }
    };
    let order_hook = grpc.create_webhook("acme", &orders.receiver.url(), once(&["order.*"])).await;
    grpc.create_webhook("acme", &invoices.receiver.url(), once(&["invoice.*"])).await;
    grpc.create_webhook("globex", &globex_receiver.receiver.url(), once(&["order.*"])).await;

    for (tenant, event_type, id) in [
        ("acme", "order.created", "o-1"),
        ("acme", "invoice.paid", "i-1"),
        ("acme", "order.paid", "o-2"),
        ("globex", "order.created", "g-1"),
    ] {
        ks.xadd(&[("tenant", tenant), ("type", event_type), ("data", "{}"), ("id", id)]);
    }
    let acme = dead_letters(&grpc, "acme", 3).await;
    dead_letters(&grpc, "globex", 1).await;
    let mut wanted: Vec<String> = acme.iter().filter(|d| d.webhook_id == order_hook.webhook_id).map(|d| d.dead_letter_id.clone()).collect();
    wanted.sort();
    assert_eq!(wanted.len(), 2);
    for s in [&orders, &invoices, &globex_receiver] {
        s.fix();
    }

    // Every receiver works now, so only the filter decides what is sent. One per call.
    let filter = DeadLetterFilter { tenant_id: "acme".into(), webhook_id: order_hook.webhook_id.clone(), ..Default::default() };
    let first = redeliver(&grpc, by_filter(filter.clone(), 1, "")).await;
    assert_eq!(first.redelivered_count, 1, "{first:?}");
    assert!(!first.next_page_token.is_empty(), "more may match: {first:?}");
    let second = redeliver(&grpc, by_filter(filter.clone(), 1, &first.next_page_token)).await;
    assert_eq!(second.redelivered_count, 1, "{second:?}");
    let mut sent: Vec<String> = first.redelivered.iter().chain(&second.redelivered).map(|r| r.dead_letter_id.clone()).collect();
    sent.sort();
    assert_eq!(sent, wanted, "exactly the order webhook's dead letters, oldest first");
    let record_order = |r: &RedeliverDeadLetterResponse| common::parse_stream_id(&r.redelivered[0].dead_letter_id);
    assert!(record_order(&first) < record_order(&second), "oldest record first: {first:?} then {second:?}");

    // The same bulk redelivery again, from the start: nothing left to send.
    let rerun = redeliver(&grpc, by_filter(filter.clone(), 100, "")).await;
    assert_eq!((rerun.redelivered_count, rerun.skipped.len()), (0, 0), "{rerun:?}");

    let last_entry = second.redelivered[0].stream_entry_id.clone();
    wait_until(WAIT, "the redelivered entries acknowledged", || ks.all_acknowledged_through(&last_entry)).await;
    let requests = orders.receiver.requests();
    assert_eq!((delivered_with_id(&requests, "o-1").len(), delivered_with_id(&requests, "o-2").len()), (1, 1), "{requests:?}");
    assert!(invoices.receiver.requests().iter().all(|r| !r.delivered()), "the invoice dead letter did not match");
    assert!(globex_receiver.receiver.requests().iter().all(|r| !r.delivered()), "globex's dead letter did not match");
    let left = grpc.dead_letters("").await.unwrap();
    let mut left_ids: Vec<&str> = left.iter().map(|d| d.event_id.as_str()).collect();
    left_ids.sort();
    assert_eq!(left_ids, ["g-1", "i-1"]);

    // By reason and time: the rest of acme (the invoice) but not globex.
    let invoice = redeliver(
        &grpc,
        by_filter(
            DeadLetterFilter {
                tenant_id: "acme".into(),
                reason: "max_attempts_exhausted".into(),
                dead_lettered_after: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
                ..Default::default()
            },
            0,
            "",
        ),
    )
    .await;
    assert_eq!(invoice.redelivered.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(), ["i-1"]);
    invoices.receiver.wait_for_requests(1, "the invoice redelivered", Recorded::delivered).await;
    assert_eq!(grpc.dead_letters("globex").await.unwrap().len(), 1);

    // Validation names the field.
    let bad = |req| {
        let grpc = grpc.clone();
        async move { grpc.deliveries().redeliver_dead_letter(req).await }
    };
    assert_status(bad(RedeliverDeadLetterRequest::default()).await, Code::InvalidArgument, Some("dead_letter_id"), "no target");
    assert_status(bad(by_id("")).await, Code::InvalidArgument, Some("dead_letter_id"), "an empty id");
    assert_status(bad(by_id("not-an-id")).await, Code::InvalidArgument, Some("dead_letter_id"), "a malformed id");
    assert_status(bad(by_id("1-0")).await, Code::NotFound, None, "an unknown id");
    let reason = DeadLetterFilter { reason: "bad_luck".into(), ..Default::default() };
    assert_status(bad(by_filter(reason, 0, "")).await, Code::InvalidArgument, Some("filter.reason"), "an unknown reason");
    assert_status(bad(by_filter(DeadLetterFilter::default(), 0, "x")).await, Code::InvalidArgument, Some("page_token"), "a made-up token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_cannot_redeliver_another_tenants_dead_letters() {
    const ADMIN: &str = "redeliver-test-admin-token-0123456789";
    let ks = Keyspace::new("redeliver_tokens");
    let failing = Receiver::always(500);
    let service = Service::start(&ks, "redeliver-tokens", &[("WSS_ADMIN_TOKEN", ADMIN)]).await;
    let channel = service.grpc().await.channel;
    let admin = Authed::new(&channel, Some(ADMIN));
    for tenant in ["acme", "globex"] {
        admin.tenants().create_tenant(CreateTenantRequest { tenant_id: tenant.into(), ..Default::default() }).await.unwrap();
    }
    admin
        .policies()
        .create_retry_policy(wss::proto::CreateRetryPolicyRequest { policy_id: "once".into(), max_attempts: Some(1), ..Default::default() })
        .await
        .unwrap();
    let create =
        CreateWebhookRequest { tenant_id: "globex".into(), url: failing.url(), retry_policy_id: "once".into(), ..Default::default() };
    admin.webhooks().create_webhook(create).await.unwrap();
    ks.publish("globex", "order.created", "{}");
    let dead = eventually(WAIT, "globex's dead letter", || async {
        let found = admin.dead_letters("globex").await.map_err(|s| format!("{s:?}"))?;
        if found.len() == 1 {
            Ok(found)
        } else {
            Err(format!("{found:?}"))
        }
    })
    .await;
    let id = dead[0].dead_letter_id.clone();

    let acme = Authed::new(&channel, Some(&admin.create_token("acme").await.token));
    let denied = acme.deliveries().redeliver_dead_letter(by_id(&id)).await;
    let status = assert_status(denied, Code::PermissionDenied, None, "acme's token redelivering globex's dead letter");
    assert!(!status.message().contains("globex"), "the refusal does not name the owner: {}", status.message());
    let denied = acme
        .deliveries()
        .redeliver_dead_letter(by_filter(DeadLetterFilter { tenant_id: "globex".into(), ..Default::default() }, 0, ""))
        .await;
    assert_status(denied, Code::PermissionDenied, Some("filter.tenant_id"), "acme's token filtering on globex");
    // An empty filter means acme's own dead letters: none.
    let own = acme.deliveries().redeliver_dead_letter(by_filter(DeadLetterFilter::default(), 0, "")).await.unwrap().into_inner();
    assert_eq!((own.redelivered_count, own.skipped.len()), (0, 0), "{own:?}");
    assert_eq!(admin.dead_letters("globex").await.unwrap().len(), 1, "globex's dead letter is untouched");
    // globex's own token may.
    let globex = Authed::new(&channel, Some(&admin.create_token("globex").await.token));
    let sent = globex.deliveries().redeliver_dead_letter(by_id(&id)).await.unwrap().into_inner();
    assert_eq!(sent.redelivered_count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tenants_entry_is_delivered_once_the_tenant_exists() {
    let ks = Keyspace::new("redeliver_unknown");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "redeliver-unknown", &[]).await;
    let grpc = service.grpc().await;

    let entry = ks.xadd(&[("tenant", "latecomer"), ("type", "order.created"), ("data", r#"{"n":7}"#), ("region", "eu")]);
    let dead = dead_letters(&grpc, "latecomer", 1).await;
    assert_eq!((dead[0].reason.as_str(), dead[0].webhook_id.as_str()), ("unknown_tenant", ""));
    let id = dead[0].dead_letter_id.clone();

    // Still no tenant: refused, and the dead letter stays.
    let early = grpc.deliveries().redeliver_dead_letter(by_id(&id)).await;
    let status = assert_status(early, Code::FailedPrecondition, None, "redelivering before the tenant exists");
    assert!(status.message().contains("CreateTenant"), "{}", status.message());
    let skipped = redeliver(&grpc, by_filter(DeadLetterFilter { tenant_id: "latecomer".into(), ..Default::default() }, 0, "")).await;
    assert_eq!((skipped.redelivered_count, skipped.skipped.len()), (0, 1), "{skipped:?}");
    assert_eq!(skipped.skipped[0].dead_letter_id, id);
    assert_eq!(grpc.dead_letters("latecomer").await.unwrap().len(), 1);

    grpc.create_tenant("latecomer").await;
    // The transform shows what filters and transforms see: no reserved field among the attributes.
    let hook = grpc
        .create_webhook("latecomer", &receiver.url(), |r| {
            r.transform = "{'id': event.id, 'attributes': event.attributes, 'created_at': event.created_at}".into()
        })
        .await;
    let sent = redeliver(&grpc, by_id(&id)).await;
    assert_eq!((sent.redelivered[0].event_id.as_str(), sent.redelivered[0].webhook_id.as_str()), (entry.as_str(), ""));
    let requests = receiver.wait_for_requests(1, "the latecomer's event", Recorded::delivered).await;
    let request = &requests[0];
    assert_eq!(request.event_id(), entry, "the event id is the original entry's id");
    assert_signed(&hook.secret, request);
    let body = request.json();
    assert_eq!(body["id"], entry.as_str());
    assert_eq!(body["attributes"], serde_json::json!({"region": "eu"}), "reserved fields are not attributes");
    let entry_secs = entry.split('-').next().unwrap().parse::<u64>().unwrap() / 1000;
    let expected_created_at = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(entry_secs)).to_string();
    assert_eq!(body["created_at"], expected_created_at.as_str(), "created_at is the original entry's");
    assert!(grpc.dead_letters("latecomer").await.unwrap().is_empty());
}
