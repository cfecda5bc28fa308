//! Rate limit per webhook (`rate_limit_per_second`, docs/rate-limits.md) across two instances.
//!
//! The limit is a token bucket in Redis shared by every instance: `rate` tokens a second, holding
//! at most `rate` (a second's worth of burst). So in any period of `t` seconds at most
//! `rate + rate × t` attempts start. The receiver sees them a little later than they start, and
//! that delay varies, so the assertions allow for [`SPREAD`] of it: bucketed by the receiver's
//! arrival times from its first request, the first `t` seconds hold at most
//! `burst + rate × (t + SPREAD)` requests, and any one second at most `burst + rate × (1 + SPREAD)`
//! — where two instances each with its own bucket would send twice as much. Excess waits in the
//! backlog without using attempts: every request is a first attempt, and each of the 200 events
//! arrives exactly once.

mod common;

use std::time::Duration;

use common::{wait_until, Keyspace, Receiver, Service};
use wss::proto::GetWebhookStatsRequest;

const EVENTS: usize = 200;
const RATE: u32 = 20;
/// The documented burst: one second's worth.
const BURST: f64 = RATE as f64;
/// How much the delay between an attempt's start (its token) and its arrival may vary, in seconds.
const SPREAD: f64 = 0.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_never_exceed_the_rate_across_two_instances() {
    let ks = Keyspace::new("rate_limit");
    let receiver = Receiver::ok();
    let extra = [("WSS_LOG_LEVEL", "info")];
    let a = Service::start(&ks, "rate-a", &extra).await;
    let b = Service::start(&ks, "rate-b", &extra).await;
    let grpc = a.grpc().await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |w| w.rate_limit_per_second = RATE).await;
    assert_eq!(webhook.rate_limit_per_second, RATE);

    for n in 0..EVENTS {
        ks.publish("acme", "order.updated", &format!(r#"{{"n":{n}}}"#));
    }
    // (EVENTS - BURST) / RATE = 9 s at least; generous for a loaded machine.
    let requests = wait_until(Duration::from_secs(90), "every event delivered", || {
        let requests = receiver.requests();
        if requests.len() >= EVENTS {
            Ok(requests)
        } else {
            Err(format!("{} of {EVENTS} so far", requests.len()))
        }
    })
    .await;

    // Each event exactly once, as a first attempt: waiting used no attempts.
    let mut ids: Vec<&str> = requests.iter().map(|r| r.event_id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((ids.len(), requests.len()), (EVENTS, EVENTS), "each event once");
    assert!(requests.iter().all(|r| r.header("X-WSS-Attempt") == "1"), "a request that waited for the limit is still attempt 1");

    let first = requests.iter().map(|r| r.arrived).min().expect("requests arrived");
    let at: Vec<f64> = requests.iter().map(|r| r.arrived.duration_since(first).as_secs_f64()).collect();
    let seconds = at.iter().fold(0.0f64, |a, b| a.max(*b)).ceil() as usize + 1;
    let rate = f64::from(RATE);
    let per_second: Vec<usize> = (1..=seconds).map(|t| at.iter().filter(|s| **s >= (t - 1) as f64 && **s < t as f64).count()).collect();
    eprintln!("requests per second from the first: {per_second:?}");
    for t in 1..=seconds {
        let so_far = at.iter().filter(|s| **s < t as f64).count();
        let bound = BURST + rate * (t as f64 + SPREAD);
        assert!(
            so_far as f64 <= bound,
            "{so_far} requests in the first {t} s; the bucket allows {bound} (burst {BURST} + {rate}/s, {SPREAD} s of spread)"
        );
        let in_second = at.iter().filter(|s| **s >= (t - 1) as f64 && **s < t as f64).count();
        let bound = BURST + rate * (1.0 + SPREAD);
        assert!(in_second as f64 <= bound, "{in_second} requests in second {t}; the bucket allows {bound} in any one second");
    }
    // The waiting is counted, each delivery at most once, and shown by GetWebhookStats.
    let stats = grpc
        .webhooks()
        .get_webhook_stats(GetWebhookStatsRequest { webhook_id: webhook.webhook_id.clone(), window: None })
        .await
        .expect("GetWebhookStats")
        .into_inner();
    assert!(
        stats.rate_limited > 0 && stats.rate_limited <= EVENTS as u64,
        "rate_limited = {} (of {EVENTS} deliveries, {BURST} of them within the burst)",
        stats.rate_limited
    );
    drop(b);
}
