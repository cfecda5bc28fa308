//! Endpoint isolation: the per-webhook in-flight cap and the circuit breaker. Timing checks here
//! are lower bounds only (a gap is at least what the design forces), never upper bounds.

mod common;

use std::{
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use common::{eventually, wait_until, Keyspace, Receiver, Recorded, Reply, Service, WAIT};
use wss::proto::GetWebhookStatsRequest;

fn arrivals(receiver: &Receiver) -> Vec<std::time::Instant> {
    let mut requests = receiver.requests();
    requests.sort_by_key(|r| r.arrived);
    requests.iter().map(|r| r.arrived).collect()
}

/// A receiver that holds every request until [`Gate::open`] is called, counting how many it
/// holds at once: checks on the design's own limit (the cap), not on a busy machine's clock.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize, usize)>, // (open, holding now, most held at once)
    changed: Condvar,
}

impl Gate {
    fn hold(&self) {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        state.2 = state.2.max(state.1);
        let mut state = self.changed.wait_timeout_while(state, Duration::from_secs(60), |s| !s.0).unwrap().0;
        state.1 -= 1;
    }

    fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }

    fn most_at_once(&self) -> usize {
        self.state.lock().unwrap().2
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_gets_at_most_its_cap_at_once_and_others_are_not_held_up() {
    let ks = Keyspace::new("cap");
    let gate = Arc::new(Gate::default());
    let held = gate.clone();
    let slow = Receiver::start(move |_| {
        held.hold();
        Reply::status(200)
    });
    let quick = Receiver::ok();
    let service = Service::start(&ks, "cap", &[("WSS_WEBHOOK_CONCURRENCY", "2"), ("WSS_SENDER_THREADS", "8")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("slowpoke").await;
    grpc.create_tenant("speedy").await;
    let slow_hook = grpc.create_webhook("slowpoke", &slow.url(), |_| {}).await;
    grpc.create_webhook("speedy", &quick.url(), |_| {}).await;

    for n in 0..6 {
        ks.publish("slowpoke", "t", &format!(r#"{{"n":{n}}}"#));
    }
    for n in 0..20 {
        ks.publish("speedy", "t", &format!(r#"{{"n":{n}}}"#));
    }
    // The slow webhook answers nothing until the gate opens: the quick one is served meanwhile.
    quick.wait_for_requests(20, "quick deliveries, with the slow webhook's requests held", Recorded::delivered).await;
    assert_eq!(slow.requests().iter().filter(|r| r.delivered()).count(), 0, "the gate held the slow webhook's requests");
    // Two attempts on the wire (its cap), the other four waiting in wss.
    eventually(WAIT, "two attempts out and four waiting", || async {
        let stats = grpc
            .webhooks()
            .get_webhook_stats(GetWebhookStatsRequest { webhook_id: slow_hook.webhook_id.clone(), window: None })
            .await
            .map_err(|s| format!("{s:?}"))?
            .into_inner();
        match (stats.in_flight, stats.queued, slow.requests().len()) {
            (2, 4, 2) => Ok(()),
            other => Err(format!("(in flight, queued, requests) = {other:?}")),
        }
    })
    .await;
    gate.open();
    slow.wait_for_requests(6, "slow deliveries", Recorded::delivered).await;
    assert_eq!(slow.requests().len(), 6, "each once");
    assert_eq!(gate.most_at_once(), 2, "never more than the cap of 2 at once");
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
        if opened == 2 && closed {
            Ok(())
        } else {
            Err(format!("opened {opened} times, closed: {closed}"))
        }
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
            if w.enabled {
                Err("still enabled".to_owned())
            } else {
                Ok(w)
            }
        }
    })
    .await;
    assert!(disabled.disabled_reason.contains("failed for"), "the reason says why: {:?}", disabled.disabled_reason);
    let dead = common::eventually(WAIT, "the pending delivery dead-lettered", || async {
        let found = grpc.dead_letters("acme").await?;
        if found.len() == 1 {
            Ok(found)
        } else {
            Err(format!("{found:?}"))
        }
    })
    .await;
    assert_eq!(dead[0].reason, "webhook_disabled");
    assert!(dead[0].attempts.len() >= 2, "its failed attempts are kept: {:?}", dead[0].attempts);
}
