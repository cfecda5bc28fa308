//! SendTestEvent (WebhookService), against the real binary, a real Redis and real receivers on
//! loopback: the response carries the attempt's status, latency, error and the first bytes of
//! the response body; the request is signed; the attempt is in the history and the stats; a
//! receiver answering 500 and one that cannot be reached give the right errors; tenant tokens
//! are limited to their own webhooks.

mod common;
mod secure;

use std::net::TcpListener;

use common::{assert_signed, assert_status, eventually, Grpc, Keyspace, Receiver, Service, WAIT};
use secure::Authed;
use tonic::Code;
use wss::proto::{
    CreateTenantRequest, CreateWebhookRequest, DeliveryStatus, GetDeliveryRequest, GetWebhookStatsRequest, ListDeliveriesRequest,
    SendTestEventRequest, SendTestEventResponse, UpdateWebhookRequest,
};

async fn send_test(grpc: &Grpc, req: SendTestEventRequest) -> SendTestEventResponse {
    grpc.webhooks().send_test_event(req.clone()).await.unwrap_or_else(|s| panic!("SendTestEvent {req:?}: {s:?}")).into_inner()
}

fn latency_ms(r: &SendTestEventResponse) -> u64 {
    let d = r.latency.unwrap_or_else(|| panic!("no latency: {r:?}"));
    d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_reports_its_attempt_and_is_recorded_like_any() {
    let ks = Keyspace::new("test_event_ok");
    let receiver = Receiver::ok();
    let failing = Receiver::always(500);
    let service = Service::start(&ks, "test-event-ok", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    // Filters and event types do not stop a test event.
    let hook = grpc
        .create_webhook("acme", &receiver.url(), |r| {
            r.event_types = vec!["order.*".into()];
            r.filter = "event.data.n == 42".into();
        })
        .await;

    let sent = send_test(&grpc, SendTestEventRequest { webhook_id: hook.webhook_id.clone(), ..Default::default() }).await;
    assert!(sent.succeeded, "{sent:?}");
    assert_eq!((sent.status_code, sent.error_kind.as_str(), sent.error.as_str()), (200, "", ""));
    assert_eq!(sent.response_body, "status 200", "the receiver's body");
    assert!(latency_ms(&sent) < 20_000, "{sent:?}");
    assert!(sent.sent_at.is_some());
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "one attempt, at once");
    let request = &requests[0];
    assert_signed(&hook.secret, request);
    assert_eq!(
        (request.event_id(), request.header("X-WSS-Event-Type"), request.header("X-WSS-Attempt")),
        (sent.event_id.as_str(), "wss.test", "1")
    );
    let body = request.json();
    assert_eq!(
        (body["id"].as_str(), body["tenant"].as_str(), body["data"]["test"].as_bool()),
        (Some(sent.event_id.as_str()), Some("acme"), Some(true))
    );
    assert_eq!(sent.request_body.as_bytes(), &request.body[..]);

    // In the history, like any attempt.
    let record = grpc.deliveries().get_delivery(GetDeliveryRequest { delivery_id: sent.delivery_id.clone() }).await.unwrap().into_inner();
    assert_eq!(
        (record.status, record.event_id.as_str(), record.webhook_id.as_str()),
        (DeliveryStatus::Delivered as i32, sent.event_id.as_str(), hook.webhook_id.as_str())
    );
    assert_eq!((record.attempts.len(), record.attempts[0].status_code), (1, 200), "{record:?}");
    let listed = grpc
        .deliveries()
        .list_deliveries(ListDeliveriesRequest { webhook_id: hook.webhook_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.deliveries.iter().any(|d| d.delivery_id == sent.delivery_id), "{listed:?}");
    // And in the stats.
    let stats = grpc
        .webhooks()
        .get_webhook_stats(GetWebhookStatsRequest { webhook_id: hook.webhook_id.clone(), window: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.attempts_succeeded, stats.attempts_failed), (1, 0), "{stats:?}");

    // A given type and data.
    let given = SendTestEventRequest { webhook_id: hook.webhook_id.clone(), event_type: "order.created".into(), data: r#"{"n":7}"#.into() };
    let sent = send_test(&grpc, given).await;
    assert!(sent.succeeded);
    let request = &receiver.requests()[1];
    assert_eq!(request.header("X-WSS-Event-Type"), "order.created");
    assert_eq!(request.json()["data"]["n"], 7);
    let bad = SendTestEventRequest { webhook_id: hook.webhook_id.clone(), data: "{not json".into(), ..Default::default() };
    assert_status(grpc.webhooks().send_test_event(bad).await, Code::InvalidArgument, Some("data"), "data that is not JSON");
    let bad = SendTestEventRequest { webhook_id: hook.webhook_id.clone(), event_type: "no spaces".into(), ..Default::default() };
    assert_status(grpc.webhooks().send_test_event(bad).await, Code::InvalidArgument, Some("event_type"), "a bad type");
    let unknown = SendTestEventRequest { webhook_id: "wh_nothere".into(), ..Default::default() };
    assert_status(grpc.webhooks().send_test_event(unknown).await, Code::NotFound, None, "an unknown webhook");
    assert_eq!(receiver.requests().len(), 2, "refused requests send nothing");

    // A receiver answering 500: the status, the error, the body; recorded as failed.
    let bad_hook = grpc.create_webhook("acme", &failing.url(), |_| {}).await;
    let sent = send_test(&grpc, SendTestEventRequest { webhook_id: bad_hook.webhook_id.clone(), ..Default::default() }).await;
    assert!(!sent.succeeded);
    assert_eq!((sent.status_code, sent.error_kind.as_str(), sent.error.as_str()), (500, "http_status", "HTTP 500 Internal Server Error"));
    assert_eq!(sent.response_body, "status 500");
    assert_eq!(failing.requests().len(), 1, "a failed test event is not retried");
    let record = grpc.deliveries().get_delivery(GetDeliveryRequest { delivery_id: sent.delivery_id.clone() }).await.unwrap().into_inner();
    assert_eq!((record.status, record.dead_letter_reason.as_str()), (DeliveryStatus::DeadLettered as i32, "test_event"));
    eventually(WAIT, "the failure in the stats", || async {
        let stats = grpc
            .webhooks()
            .get_webhook_stats(GetWebhookStatsRequest { webhook_id: bad_hook.webhook_id.clone(), window: None })
            .await
            .unwrap()
            .into_inner();
        if stats.attempts_failed == 1 && stats.last_failure_status_code == 500 {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;
    assert!(grpc.dead_letters("acme").await.unwrap().is_empty(), "no dead-letter record");
    let again = grpc.deliveries().resend_delivery(wss::proto::ResendDeliveryRequest { delivery_id: sent.delivery_id.clone() }).await;
    let status = assert_status(again, Code::FailedPrecondition, None, "resending a test event");
    assert!(status.message().contains("SendTestEvent"), "{}", status.message());

    // Nobody listening: a connect error, no status.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gone = grpc.create_webhook("acme", &format!("http://127.0.0.1:{port}/hook"), |_| {}).await;
    let sent = send_test(&grpc, SendTestEventRequest { webhook_id: gone.webhook_id.clone(), ..Default::default() }).await;
    assert!(!sent.succeeded);
    assert_eq!((sent.status_code, sent.error_kind.as_str(), sent.response_body.as_str()), (0, "connect", ""), "{sent:?}");
    assert!(!sent.error.is_empty());

    // A disabled webhook is not tried.
    grpc.webhooks()
        .update_webhook(UpdateWebhookRequest { webhook_id: hook.webhook_id.clone(), enabled: Some(false), ..Default::default() })
        .await
        .unwrap();
    let disabled =
        grpc.webhooks().send_test_event(SendTestEventRequest { webhook_id: hook.webhook_id.clone(), ..Default::default() }).await;
    assert_status(disabled, Code::FailedPrecondition, None, "a disabled webhook");
    assert_eq!(receiver.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_tests_only_its_own_webhooks() {
    const ADMIN: &str = "test-event-admin-token-0123456789";
    let ks = Keyspace::new("test_event_tokens");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "test-event-tokens", &[("WSS_ADMIN_TOKEN", ADMIN)]).await;
    let channel = service.grpc().await.channel;
    let admin = Authed::new(&channel, Some(ADMIN));
    for tenant in ["acme", "globex"] {
        admin.tenants().create_tenant(CreateTenantRequest { tenant_id: tenant.into(), ..Default::default() }).await.unwrap();
    }
    let create = CreateWebhookRequest { tenant_id: "globex".into(), url: receiver.url(), ..Default::default() };
    let hook = admin.webhooks().create_webhook(create).await.unwrap().into_inner();
    let acme = Authed::new(&channel, Some(&admin.create_token("acme").await.token));
    let denied = acme.webhooks().send_test_event(SendTestEventRequest { webhook_id: hook.webhook_id.clone(), ..Default::default() }).await;
    assert_status(denied, Code::PermissionDenied, None, "acme's token testing globex's webhook");
    assert!(receiver.requests().is_empty());
    let globex = Authed::new(&channel, Some(&admin.create_token("globex").await.token));
    let sent = globex
        .webhooks()
        .send_test_event(SendTestEventRequest { webhook_id: hook.webhook_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(sent.succeeded, "{sent:?}");
    assert_eq!(receiver.requests().len(), 1);
}
