//! Filters and transforms through the real binary (issue 3): a filter decides which events a
//! webhook gets and a transform what body it receives, signed over the transformed bytes;
//! filtered-out events are acknowledged undelivered; an expression that fails on one event
//! dead-letters that delivery (reason `filter_error` / `transform_error`) and the next event goes
//! on; an invalid expression is refused at registration naming its field; `wss check-expr`
//! answers as the pipeline would.

mod common;

use std::{
    collections::BTreeSet,
    io::Write,
    process::{Command, Stdio},
};

use common::{assert_signed, assert_status, eventually, wait_until, Keyspace, Receiver, Recorded, Service, WAIT};
use serde_json::json;
use tonic::Code;
use wss::proto::{CreateWebhookRequest, DeadLetter, GetWebhookRequest, UpdateWebhookRequest};

const SHIPPED: &str = r#"event.data.status in ["shipped", "delivered"]"#;
const SHAPE: &str = r#"{"order_id": event.data.order_id, "status": event.data.status}"#;

async fn dead_letters_at_least(grpc: &common::Grpc, tenant: &str, n: usize) -> Vec<DeadLetter> {
    eventually(WAIT, &format!("{n} dead letters of tenant {tenant}"), || {
        let grpc = grpc.clone();
        let tenant = tenant.to_owned();
        async move {
            let dead = grpc.dead_letters(&tenant).await?;
            if dead.len() >= n {
                Ok(dead)
            } else {
                Err(format!("{} so far: {dead:?}", dead.len()))
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_chooses_the_events_and_a_transform_shapes_the_signed_body() {
    let ks = Keyspace::new("filter_transform");
    let (shaped, everything) = (Receiver::ok(), Receiver::ok());
    let service = Service::start(&ks, "filter-transform", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let webhook = grpc
        .create_webhook("acme", &shaped.url(), |r| {
            r.event_types = vec!["order.*".into()];
            r.filter = SHIPPED.into();
            r.transform = SHAPE.into();
        })
        .await;
    assert_eq!((webhook.filter.as_str(), webhook.transform.as_str()), (SHIPPED, SHAPE), "CreateWebhook echoes the expressions");
    let plain = grpc.create_webhook("acme", &everything.url(), |_| {}).await;

    let pending = ks.publish("acme", "order.status_updated", r#"{"order_id":"A-1","status":"pending"}"#);
    let invoice = ks.publish("acme", "invoice.paid", r#"{"status":"shipped","order_id":"I-9"}"#);
    let shipped = ks.publish("acme", "order.status_updated", r#"{"order_id":"A-2", "status":"shipped", "total": 12.5}"#);

    let requests = shaped.wait_for_requests(1, "delivered request", Recorded::delivered).await;
    everything.wait_for_requests(3, "delivered requests", Recorded::delivered).await;
    wait_until(WAIT, "all three entries acknowledged", || ks.all_acknowledged_through(&shipped)).await;

    // The filtered webhook: only the shipped order (the pending one fails the filter, the invoice
    // the event types), its body exactly the transform's value, keys sorted, signed over it.
    let requests_now = shaped.requests();
    assert_eq!(requests_now.len(), 1, "only the shipped order passes: {requests_now:?}");
    let r = &requests[0];
    assert_eq!(String::from_utf8_lossy(&r.body), r#"{"order_id":"A-2","status":"shipped"}"#);
    assert_eq!(r.event_id(), shipped);
    assert_eq!(r.header("X-WSS-Event-Type"), "order.status_updated");
    assert_eq!(r.header("Content-Type"), "application/json");
    assert_signed(&webhook.secret, r);

    // The webhook without expressions: all three, each the untouched envelope.
    let all = everything.requests();
    let ids: BTreeSet<&str> = all.iter().map(|r| r.event_id()).collect();
    assert_eq!(ids, BTreeSet::from([pending.as_str(), invoice.as_str(), shipped.as_str()]));
    for r in &all {
        let body = r.json();
        assert_eq!(body["id"], json!(r.event_id()));
        assert!(body.get("data").is_some(), "the envelope: {body}");
        assert_signed(&plain.secret, r);
    }
    let shipped_envelope = all.iter().find(|r| r.event_id() == shipped).unwrap();
    assert!(
        String::from_utf8_lossy(&shipped_envelope.body).contains(r#""data":{"order_id":"A-2", "status":"shipped", "total": 12.5}"#),
        "without a transform, data stays byte for byte as produced"
    );
    assert!(grpc.dead_letters("acme").await.unwrap().is_empty(), "nothing failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_out_events_are_acknowledged_and_never_sent() {
    let ks = Keyspace::new("filtered_out");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "filtered-out", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |r| r.filter = r#"event.attributes.region == "eu""#.into()).await;

    // Processed in stream order: once the last is delivered, the others were decided.
    let us = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("region", "us")]);
    let no_region = ks.publish("acme", "order.created", "{}");
    let eu = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", r#"{"n":1}"#), ("region", "eu")]);
    receiver.wait_for_requests(1, "delivered request", Recorded::delivered).await;
    wait_until(WAIT, "every entry acknowledged", || ks.all_acknowledged_through(&eu)).await;
    let ids: Vec<String> = receiver.requests().iter().map(|r| r.event_id().to_owned()).collect();
    assert_eq!(ids, [eu.as_str()], "{us} (region us) is filtered out; {no_region} has no region attribute");

    // The one without the attribute is a filter error, so it is dead-lettered, not lost.
    let dead = dead_letters_at_least(&grpc, "acme", 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event_id, no_region);
    assert_eq!(dead[0].reason, "filter_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expression_failing_on_one_event_dead_letters_that_delivery_and_the_next_event_goes_on() {
    let ks = Keyspace::new("expr_errors");
    let (filtered, shaped, plain) = (Receiver::ok(), Receiver::ok(), Receiver::ok());
    let service = Service::start(&ks, "expr-errors", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let filter_webhook = grpc.create_webhook("acme", &filtered.url(), |r| r.filter = r#"event.data.status == "shipped""#.into()).await;
    let transform_webhook = grpc.create_webhook("acme", &shaped.url(), |r| r.transform = r#"{"total": event.data.total}"#.into()).await;
    grpc.create_webhook("acme", &plain.url(), |_| {}).await;

    let broken_data = r#"{"order_id":"A-1"}"#;
    let broken = ks.publish("acme", "order.created", broken_data);
    let good = ks.publish("acme", "order.created", r#"{"order_id":"A-2","status":"shipped","total":5}"#);

    filtered.wait_for_requests(1, "delivered request", Recorded::delivered).await;
    shaped.wait_for_requests(1, "delivered request", Recorded::delivered).await;
    plain.wait_for_requests(2, "delivered requests", Recorded::delivered).await;
    let dead = dead_letters_at_least(&grpc, "acme", 2).await;
    wait_until(WAIT, "both entries acknowledged", || ks.all_acknowledged_through(&good)).await;

    // The next event went through both expressions as usual.
    assert_eq!(filtered.requests().iter().map(|r| r.event_id().to_owned()).collect::<Vec<_>>(), [good.as_str()]);
    let shaped_requests = shaped.requests();
    assert_eq!(shaped_requests.len(), 1);
    assert_eq!(String::from_utf8_lossy(&shaped_requests[0].body), r#"{"total":5}"#);
    assert_signed(&transform_webhook.secret, &shaped_requests[0]);
    // The plain webhook got the broken event too: only the failing deliveries are dead-lettered.
    assert_eq!(plain.requests().len(), 2);

    assert_eq!(dead.len(), 2, "{dead:?}");
    let by_webhook = |id: &str| dead.iter().find(|d| d.webhook_id == id).unwrap_or_else(|| panic!("no dead letter for {id}: {dead:?}"));
    let filter_dead = by_webhook(&filter_webhook.webhook_id);
    assert_eq!(filter_dead.reason, "filter_error");
    assert_eq!(filter_dead.event_id, broken);
    assert_eq!(filter_dead.stream_entry_id, broken);
    assert!(filter_dead.detail.starts_with(r#"filter failed: no such key: "status""#), "{}", filter_dead.detail);
    assert!(filter_dead.detail.contains(r#"event.data.status == "shipped""#), "the detail quotes the expression: {}", filter_dead.detail);
    let body: serde_json::Value = serde_json::from_str(&filter_dead.body).expect("the dead letter keeps the envelope");
    assert_eq!(body["data"], json!({"order_id": "A-1"}));
    assert!(filter_dead.attempts.is_empty(), "nothing was sent");
    let transform_dead = by_webhook(&transform_webhook.webhook_id);
    assert_eq!(transform_dead.reason, "transform_error");
    assert_eq!(transform_dead.event_id, broken);
    assert!(transform_dead.detail.starts_with(r#"transform failed: no such key: "total""#), "{}", transform_dead.detail);

    // And it is logged at WARN, naming the event, the webhook and the error.
    let line = service.wait_for_log("filter failed: no such key", WAIT).await;
    assert!(line.contains("WARN") && line.contains(&broken) && line.contains(&filter_webhook.webhook_id), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_expressions_are_refused_at_registration_and_updates_take_effect() {
    let ks = Keyspace::new("expr_registration");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "expr-registration", &[]).await;
    let grpc = service.grpc().await;
    let mut webhooks = grpc.webhooks();
    grpc.create_tenant("acme").await;
    let base = || CreateWebhookRequest { tenant_id: "acme".into(), url: receiver.url(), ..Default::default() };

    let syntax = CreateWebhookRequest { filter: "event.data.status ==".into(), ..base() };
    let status =
        assert_status(webhooks.create_webhook(syntax).await, Code::InvalidArgument, Some("filter"), "a filter with a syntax error");
    assert!(status.message().starts_with("filter: syntax error at line 1, column 21: "), "{}", status.message());
    assert!(status.message().contains("| event.data.status ==\n| ....................^"), "the caret: {}", status.message());
    let typo = CreateWebhookRequest { transform: "{\n  \"id\": evnt.id\n}".into(), ..base() };
    let status =
        assert_status(webhooks.create_webhook(typo).await, Code::InvalidArgument, Some("transform"), "a transform naming no variable");
    assert!(status.message().starts_with("transform: unknown variable \"evnt\" at line 2, column 9"), "{}", status.message());
    let not_bool = CreateWebhookRequest { filter: "event.data.status".into(), ..base() };
    let literal = CreateWebhookRequest { filter: "\"shipped\"".into(), ..base() };
    let status = assert_status(webhooks.create_webhook(literal).await, Code::InvalidArgument, Some("filter"), "a filter that is a string");
    assert!(status.message().contains("must be a boolean expression"), "{}", status.message());
    let long = CreateWebhookRequest { filter: format!("event.type == \"{}\"", "a".repeat(5000)), ..base() };
    let status = assert_status(webhooks.create_webhook(long).await, Code::InvalidArgument, Some("filter"), "a 5 KB filter");
    assert!(status.message().contains("at most 4096 are allowed"), "{}", status.message());
    assert!(grpc.dead_letters("acme").await.unwrap().is_empty());
    let listed = webhooks
        .list_webhooks(wss::proto::ListWebhooksRequest { tenant_id: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.webhooks.is_empty(), "nothing refused was stored: {listed:?}");

    // A filter that only fails at run time (not boolean) compiles: CEL here has no type checker.
    let webhook = webhooks.create_webhook(not_bool).await.expect("accepted").into_inner();
    let bad_update =
        UpdateWebhookRequest { webhook_id: webhook.webhook_id.clone(), transform: Some("{'a': }".into()), ..Default::default() };
    assert_status(webhooks.update_webhook(bad_update).await, Code::InvalidArgument, Some("transform"), "an update with a bad transform");

    // Updates: replace the filter, add a transform; the very next event uses them.
    let update = UpdateWebhookRequest {
        webhook_id: webhook.webhook_id.clone(),
        filter: Some(SHIPPED.into()),
        transform: Some(SHAPE.into()),
        ..Default::default()
    };
    let updated = webhooks.update_webhook(update).await.expect("UpdateWebhook").into_inner();
    assert_eq!((updated.filter.as_str(), updated.transform.as_str()), (SHIPPED, SHAPE));
    let skipped = ks.publish("acme", "order.created", r#"{"order_id":"A-1","status":"new"}"#);
    let sent = ks.publish("acme", "order.created", r#"{"order_id":"A-2","status":"delivered"}"#);
    let requests = receiver.wait_for_requests(1, "delivered request", Recorded::delivered).await;
    wait_until(WAIT, "both acknowledged", || ks.all_acknowledged_through(&sent)).await;
    assert_eq!(receiver.requests().len(), 1, "{skipped} is filtered out");
    assert_eq!(String::from_utf8_lossy(&requests[0].body), r#"{"order_id":"A-2","status":"delivered"}"#);

    // An empty string removes them.
    let clear = UpdateWebhookRequest {
        webhook_id: webhook.webhook_id.clone(),
        filter: Some(String::new()),
        transform: Some(String::new()),
        ..Default::default()
    };
    webhooks.update_webhook(clear).await.expect("UpdateWebhook clearing");
    let got = webhooks.get_webhook(GetWebhookRequest { webhook_id: webhook.webhook_id.clone() }).await.unwrap().into_inner();
    assert_eq!((got.filter.as_str(), got.transform.as_str()), ("", ""));
    let plain = ks.publish("acme", "order.created", r#"{"order_id":"A-3","status":"new"}"#);
    let requests = receiver.wait_for_requests(2, "delivered requests", Recorded::delivered).await;
    assert_eq!(requests[1].event_id(), plain);
    assert_eq!(requests[1].json()["data"], json!({"order_id": "A-3", "status": "new"}), "the envelope again");
}

/// Runs `wss check-expr` with `args` on `stdin`; returns (exit code, stdout, stderr).
fn check_expr(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wss"))
        .arg("check-expr")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running wss check-expr");
    child.stdin.take().expect("stdin is piped").write_all(stdin.as_bytes()).expect("writing stdin");
    let out = child.wait_with_output().expect("wss check-expr finishes");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_expr_answers_as_the_pipeline_would() {
    let event = r#"{"id":"evt-1","type":"order.status_updated","tenant":"acme","created_at":"2026-01-01T00:00:00Z","data":{"order_id":"A-1","status":"shipped"},"attributes":{"region":"eu"}}"#;
    let (code, out, _) = check_expr(&["--filter", SHIPPED, "--transform", SHAPE], event);
    assert_eq!((code, out.as_str()), (0, "filter: true\nbody: {\"order_id\":\"A-1\",\"status\":\"shipped\"}\n"));

    let (code, out, _) = check_expr(&["--filter", "event.attributes.region == 'us'"], event);
    assert_eq!(code, 0, "a filter saying no is an answer, not an error");
    assert_eq!(
        out,
        "filter: false (the webhook would not get this event)\nbody: {\"id\":\"evt-1\",\"type\":\"order.status_updated\",\"tenant\":\"acme\",\"created_at\":\"2026-01-01T00:00:00Z\",\"data\":{\"order_id\":\"A-1\",\"status\":\"shipped\"}}\n"
    );

    let (code, out, _) = check_expr(&["--filter", "event.data.total > 10"], event);
    assert_eq!(code, 1);
    assert!(out.starts_with("filter: error: no such key: \"total\""), "{out}");
    assert!(out.contains("dead-lettered with reason filter_error"), "{out}");

    let (code, out, _) = check_expr(&["--transform", "{'at': timestamp(event.created_at) + duration('90m'), 'raw': b'hi'}"], event);
    assert_eq!((code, out.as_str()), (0, "body: {\"at\":\"2026-01-01T01:30:00Z\",\"raw\":\"aGk=\"}\n"));

    let (code, out, _) = check_expr(&["--filter", "event.data.status =="], event);
    assert_eq!(code, 1);
    assert!(out.starts_with("filter: syntax error at line 1, column 21: "), "the same message as CreateWebhook: {out}");

    let (code, _, err) = check_expr(&["--filter", "true"], r#"{"dat": {}}"#);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown field `dat`"), "{err}");
}
