//! Structured logs (`WSS_LOG_FORMAT=json`) from the real binary: every line is one JSON object,
//! and the pipeline's lines about deliveries and bad entries carry tenant, webhook, event id,
//! attempt and outcome as top-level keys — never the webhook's secret.

mod common;

use common::{wait_until, Keyspace, Receiver, Recorded, Service, WAIT};

fn json_lines(service: &Service) -> Vec<serde_json::Value> {
    service
        .lines()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line that is not one JSON object ({e}): {line}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_delivery_fields() {
    let ks = Keyspace::new("json_logs");
    let flaky = Receiver::failing_first(1);
    let service = Service::start(&ks, "json-logs", &[("WSS_LOG_FORMAT", "json")]).await;
    let grpc = service.grpc().await;
    grpc.create_policy("twice", 2, 100, 200).await;
    grpc.create_tenant("acme").await;
    let hook = grpc.create_webhook("acme", &flaky.url(), |r| r.retry_policy_id = "twice".into()).await;

    ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("id", "evt-log-1")]);
    let bad = ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{not json"), ("id", "evt-log-2")]);
    flaky.wait_for_requests(1, "the event delivered on its second attempt", Recorded::delivered).await;
    wait_until(WAIT, "both entries handled", || ks.all_acknowledged_through(&bad)).await;

    let lines = json_lines(&service);
    let find = |outcome: &str| {
        lines
            .iter()
            .find(|l| l["outcome"] == outcome && l["target"] == "wss::outcomes")
            .unwrap_or_else(|| panic!("no wss::outcomes line with outcome {outcome:?} among {lines:#?}"))
    };
    let retrying = find("retrying");
    assert_eq!(retrying["level"], "WARN");
    assert_eq!(retrying["tenant"], "acme");
    assert_eq!(retrying["webhook"], hook.webhook_id.as_str());
    assert_eq!(retrying["event_id"], "evt-log-1");
    assert_eq!(retrying["attempt"], 1);
    assert_eq!(retrying["status"], 500);
    assert!(retrying["msg"].as_str().unwrap().contains("failed: HTTP 500"), "{retrying}");
    let delivered = find("delivered");
    assert_eq!(
        (&delivered["event_id"], &delivered["attempt"], &delivered["webhook"]),
        (&"evt-log-1".into(), &2.into(), &hook.webhook_id.as_str().into())
    );
    let rejected = find("rejected");
    assert_eq!(
        (&rejected["tenant"], &rejected["event_id"], &rejected["reason"]),
        (&"acme".into(), &"evt-log-2".into(), &"data_not_json".into())
    );
    assert!(service.lines().iter().all(|l| !l.contains(&hook.secret)), "the webhook's secret reached the log");
}
