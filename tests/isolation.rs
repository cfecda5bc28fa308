//! Endpoint isolation: the per-webhook in-flight cap and the circuit breaker. Timing checks here
//! are lower bounds only (a gap is at least what the design forces), never upper bounds.

mod common;

use std::time::Duration;

use common::{wait_until, Keyspace, Receiver, Recorded, Service, WAIT};

fn arrivals(receiver: &Receiver) -> Vec<std::time::Instant> {
    let mut requests = receiver.requests();
    requests.sort_by_key(|r| r.arrived);
    requests.iter().map(|r| r.arrived).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_gets_at_most_its_cap_at_once_and_others_are_not_held_up() {
    let ks = Keyspace::new("cap");
    let slow = Receiver::slow(Duration::from_millis(700));
    let quick = Receiver::ok();
    let service = Service::start(&ks, "cap", &[("WSS_WEBHOOK_CONCURRENCY", "2"), ("WSS_SENDER_THREADS", "8")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("slowpoke").await;
    grpc.create_tenant("speedy").await;
    grpc.create_webhook("slowpoke", &slow.url(), |_| {}).await;
    grpc.create_webhook("speedy", &quick.url(), |_| {}).await;

    for n in 0..6 {
        ks.publish("slowpoke", "t", &format!("{{\"n\":{n}}}"));
    }
    for n in 0..20 {
        ks.publish("speedy", "t", &format!("{{\"n\":{n}}}"));
    }
    // The quick webhook is served while the slow one works through its six at two at a time.
    quick.wait_for_requests(20, "quick deliveries", Recorded::delivered).await;
    let slow_done = slow.requests().iter().filter(|r| r.delivered()).count();
    assert!(slow_done < 6, "the quick webhook finished before the slow one (it had {slow_done} of 6 done)");
    slow.wait_for_requests(6, "slow deliveries", Recorded::delivered).await;

    // Two at a time, each taking ≥ 700 ms: request k+2 cannot start before request k ended.
    let at = arrivals(&slow);
    for k in 0..at.len() - 2 {
        let gap = at[k + 2] - at[k];
        assert!(gap >= Duration::from_millis(650), "requests {k} and {} were {gap:?} apart: more than 2 in flight", k + 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_open_the_circuit_and_a_single_probe_decides() {
    let ks = Keyspace::new("circuit");
    // Three failures open the circuit; the first probe fails too; the second probe succeeds.
    let flaky = Receiver::failing_first(4);
    let env = [("WSS_WEBHOOK_CONCURRENCY", "1"), ("WSS_CIRCUIT_FAILURES", "3"), ("WSS_CIRCUIT_COOLDOWN", "1s")];
    let service = Service::start(&ks, "circuit", &env).await;
    let grpc = service.grpc().await;
    grpc.create_policy("eager", 20, 100, 100).await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &flaky.url(), |r| r.retry_policy_id = "eager".into()).await;
    for n in 0..3 {
        ks.publish("acme", "t", &format!("{{\"n\":{n}}}"));
    }
    flaky.wait_for_requests(3, "the three events delivered once the circuit closed", Recorded::delivered).await;

    let at = arrivals(&flaky);
    assert!(at.len() >= 7, "4 failures + 3 deliveries: {} requests", at.len());
    let margin = Duration::from_millis(50);
    assert!(at[3] - at[2] >= Duration::from_secs(1) - margin, "the first probe waited out the 1 s cool-down: {:?}", at[3] - at[2]);
    assert!(at[4] - at[3] >= Duration::from_secs(2) - margin, "after a failed probe the cool-down doubles: {:?}", at[4] - at[3]);
    wait_until(WAIT, "the opening and the closing logged", || {
        let lines = service.lines();
        let opened = lines.iter().filter(|l| l.contains("circuit of webhook") && l.contains("opened")).count();
        let closed = lines.iter().any(|l| l.contains("circuit of webhook") && l.contains("closed"));
        if opened == 2 && closed { Ok(()) } else { Err(format!("opened {opened} times, closed: {closed}")) }
    })
    .await;
    // The waiting deliveries kept their attempts: none was dead-lettered.
    assert!(grpc.dead_letters("acme").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_for_too_long_is_disabled_with_its_reason() {
    let ks = Keyspace::new("auto_disable");
    let broken = Receiver::always(503);
    let env = [("WSS_AUTO_DISABLE_AFTER", "1s"), ("WSS_CIRCUIT_FAILURES", "1000")];
    let service = Service::start(&ks, "auto-disable", &env).await;
    let grpc = service.grpc().await;
    grpc.create_policy("stubborn", 50, 100, 200).await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &broken.url(), |r| r.retry_policy_id = "stubborn".into()).await;
    ks.publish("acme", "t", "{}");

    let disabled = common::eventually(WAIT, "the webhook disabled", || {
        let mut client = grpc.webhooks();
        let id = webhook.webhook_id.clone();
        async move {
            let w = client.get_webhook(wss::proto::GetWebhookRequest { webhook_id: id }).await.map_err(|s| format!("{s:?}"))?.into_inner();
            if w.enabled { Err("still enabled".to_owned()) } else { Ok(w) }
        }
    })
    .await;
    assert!(disabled.disabled_reason.contains("failed for"), "the reason says why: {:?}", disabled.disabled_reason);
    let dead = common::eventually(WAIT, "the pending delivery dead-lettered", || async {
        let found = grpc.dead_letters("acme").await?;
        if found.len() == 1 { Ok(found) } else { Err(format!("{found:?}")) }
    })
    .await;
    assert_eq!(dead[0].reason, "webhook_disabled");
    assert!(dead[0].attempts.len() >= 2, "its failed attempts are kept: {:?}", dead[0].attempts);
}
