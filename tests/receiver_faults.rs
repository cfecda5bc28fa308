//! Receiver faults (issue 4): one test per way a receiver can misbehave. Each checks what the
//! attempt record says (DeliveryService/GetDelivery, ListDeadLetters after the last attempt),
//! what the faulty receiver saw, and that wss carries on — a healthy webhook of the same tenant
//! on another receiver gets every event — and that the stream ends fully acknowledged.
//!
//! The misbehaving receivers are raw TCP servers (`faults`); the healthy one is the common
//! `Receiver`. The connect timeout is made on loopback with a listener whose accept queue is
//! full (the kernel then drops SYNs). The last test is endpoint isolation: 100 webhooks, one of
//! which hangs.

mod common;
mod faults;

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime},
};

use common::{eventually, pb_ms, wait_until, Grpc, Keyspace, Receiver, Service, WAIT};
use faults::{pattern_byte, Act, FaultServer, FullBacklog};
use wss::proto::{Attempt, CreateRetryPolicyRequest, DeadLetter, Delivery, DeliveryStatus, GetDeliveryRequest, GetWebhookRequest, Webhook};

/// One test's world: a service, tenant `acme`, and a healthy webhook on its own receiver.
struct Bed {
    ks: Keyspace,
    /// Kept running for the test (SIGKILLed on drop).
    _service: Service,
    grpc: Grpc,
    healthy: Receiver,
}

impl Bed {
    async fn new(test: &str) -> Self {
        let ks = Keyspace::new(test);
        let healthy = Receiver::ok();
        // These tests look at single attempts; the circuit breaker (5 failures in a row by
        // default, then a 30 s cool-down) would hold back the later ones. It has tests of its own.
        let service = Service::start(&ks, &test.replace('_', "-"), &[("WSS_CIRCUIT_FAILURES", "1000")]).await;
        let grpc = service.grpc().await;
        grpc.create_tenant("acme").await;
        grpc.create_webhook("acme", &healthy.url(), |_| {}).await;
        Self { ks, _service: service, grpc, healthy }
    }

    /// A policy without jitter, doubling from `initial_ms` up to `max_ms`.
    async fn policy(&self, policy_id: &str, max_attempts: u32, initial_ms: u64, max_ms: u64, timeout_ms: u64) {
        self.grpc
            .policies()
            .create_retry_policy(CreateRetryPolicyRequest {
                policy_id: policy_id.into(),
                max_attempts: Some(max_attempts),
                initial_backoff: Some(pb_ms(initial_ms)),
                max_backoff: Some(pb_ms(max_ms)),
                multiplier: Some(2.0),
                jitter: Some(0.0),
                attempt_timeout: Some(pb_ms(timeout_ms)),
            })
            .await
            .unwrap_or_else(|s| panic!("CreateRetryPolicy {policy_id}: {s:?}"));
    }

    async fn webhook(&self, url: &str, policy_id: &str) -> Webhook {
        self.grpc.create_webhook("acme", url, |r| r.retry_policy_id = policy_id.into()).await
    }

    /// Publishes events `evt-<first>`..`evt-<first+n-1>`; returns their stream ids.
    fn publish(&self, first: usize, n: usize) -> Vec<String> {
        (first..first + n)
            .map(|i| {
                self.ks.xadd(&[
                    ("tenant", "acme"),
                    ("type", "order.created"),
                    ("data", &format!(r#"{{"n":{i}}}"#)),
                    ("id", &format!("evt-{i}")),
                ])
            })
            .collect()
    }

    /// wss carries on: the healthy webhook got each of `events` (by event id) with a 2xx.
    async fn healthy_got(&self, events: &[&str]) {
        let wanted: BTreeSet<String> = events.iter().map(|e| (*e).to_owned()).collect();
        wait_until(WAIT, &format!("the healthy webhook to get {wanted:?}"), || {
            let got: BTreeSet<String> = self.healthy.requests().iter().filter(|r| r.delivered()).map(|r| r.event_id().to_owned()).collect();
            let missing: Vec<&String> = wanted.difference(&got).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}"))
            }
        })
        .await;
    }

    /// Polls GetDelivery for `<stream_id>:<webhook_id>` until `done` holds.
    async fn delivery(&self, stream_id: &str, webhook_id: &str, what: &str, done: impl Fn(&Delivery) -> bool) -> Delivery {
        let delivery_id = format!("{stream_id}:{webhook_id}");
        eventually(WAIT, &format!("delivery {delivery_id}: {what}"), || {
            let mut client = self.grpc.deliveries();
            let delivery_id = delivery_id.clone();
            let done = &done;
            async move {
                match client.get_delivery(GetDeliveryRequest { delivery_id }).await {
                    Ok(d) if done(d.get_ref()) => Ok(d.into_inner()),
                    Ok(d) => Err(format!("{:?}", d.into_inner())),
                    Err(s) => Err(format!("GetDelivery: {s:?}")),
                }
            }
        })
        .await
    }

    /// Waits until the delivery is terminal; returns it.
    async fn terminal(&self, stream_id: &str, webhook_id: &str) -> Delivery {
        self.delivery(stream_id, webhook_id, "DELIVERED or DEAD_LETTERED", |d| {
            matches!(d.status(), DeliveryStatus::Delivered | DeliveryStatus::DeadLettered)
        })
        .await
    }

    /// Waits until the delivery is terminal; asserts it was dead-lettered.
    async fn dead(&self, stream_id: &str, webhook_id: &str) -> Delivery {
        let d = self.terminal(stream_id, webhook_id).await;
        assert_eq!(d.status(), DeliveryStatus::DeadLettered, "expected a dead letter: {d:#?}");
        d
    }

    /// Waits until the delivery is terminal; asserts it was delivered.
    async fn delivered(&self, stream_id: &str, webhook_id: &str) -> Delivery {
        let d = self.terminal(stream_id, webhook_id).await;
        assert_eq!(d.status(), DeliveryStatus::Delivered, "expected a delivery: {d:#?}");
        d
    }

    /// The dead letters of `webhook_id`, once there are `n`.
    async fn dead_letters(&self, webhook_id: &str, n: usize) -> Vec<DeadLetter> {
        eventually(WAIT, &format!("{n} dead letters of webhook {webhook_id}"), || async {
            let all = self.grpc.dead_letters("acme").await?;
            let mine: Vec<DeadLetter> = all.into_iter().filter(|d| d.webhook_id == webhook_id).collect();
            if mine.len() >= n {
                Ok(mine)
            } else {
                Err(format!("{} so far: {mine:?}", mine.len()))
            }
        })
        .await
    }

    /// Nothing left pending: every entry up to `last` was finished and acknowledged.
    async fn all_acknowledged(&self, last: &str) {
        wait_until(WAIT, "every entry acknowledged (XPENDING 0)", || self.ks.all_acknowledged_through(last)).await;
    }
}

fn kinds(attempts: &[Attempt]) -> Vec<(u32, u32, &str)> {
    attempts.iter().map(|a| (a.attempt, a.status_code, a.error_kind.as_str())).collect()
}

/// Every attempt got no response (status 0) and failed with `kind`, with a message.
fn assert_all_failed_with(delivery: &Delivery, attempts: usize, kind: &str) {
    assert_eq!(delivery.attempts.len(), attempts, "{attempts} attempts recorded: {delivery:#?}");
    for (n, a) in delivery.attempts.iter().enumerate() {
        assert_eq!(a.attempt as usize, n + 1, "attempt numbers in order: {delivery:#?}");
        assert_eq!((a.status_code, a.error_kind.as_str()), (0, kind), "attempt {}: no response, error kind {kind}: {a:?}", a.attempt);
        assert!(!a.error.is_empty(), "attempt {} says what went wrong: {a:?}", a.attempt);
    }
}

/// The dead letter of each delivery says `max_attempts_exhausted` and carries its attempts.
fn assert_dead_letters(letters: &[DeadLetter], deliveries: &[Delivery]) {
    for d in deliveries {
        let letter = letters
            .iter()
            .find(|l| l.stream_entry_id == d.stream_entry_id)
            .unwrap_or_else(|| panic!("no dead letter for {}: {letters:#?}", d.delivery_id));
        assert_eq!(letter.reason, "max_attempts_exhausted", "{letter:#?}");
        assert_eq!(letter.event_id, d.event_id);
        assert_eq!(kinds(&letter.attempts), kinds(&d.attempts), "the dead letter keeps every attempt's outcome: {letter:#?}");
    }
    assert_eq!(letters.len(), deliveries.len(), "one dead letter per delivery: {letters:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_a_connect_error_retried_then_dead_lettered() {
    let bed = Bed::new("fault_refused").await;
    bed.policy("quick", 3, 100, 400, 2000).await;
    let port = faults::refused_port();
    let hook = bed.webhook(&format!("http://127.0.0.1:{port}/hook"), "quick").await;

    let ids = bed.publish(1, 3);
    bed.healthy_got(&["evt-1", "evt-2", "evt-3"]).await;
    let mut dead = Vec::new();
    for id in &ids {
        let d = bed.dead(id, &hook.webhook_id).await;
        assert_all_failed_with(&d, 3, "connect");
        assert_eq!(d.dead_letter_reason, "max_attempts_exhausted");
        dead.push(d);
    }
    assert_dead_letters(&bed.dead_letters(&hook.webhook_id, 3).await, &dead);
    bed.all_acknowledged(ids.last().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_gets_no_answer_times_out() {
    let bed = Bed::new("fault_connect_timeout").await;
    bed.policy("short", 2, 100, 400, 500).await;
    // A listener whose accept queue is full: the kernel drops further SYNs.
    let backlog = FullBacklog::new();
    let hook = bed.webhook(&backlog.url(), "short").await;

    let ids = bed.publish(1, 2);
    bed.healthy_got(&["evt-1", "evt-2"]).await;
    let mut dead = Vec::new();
    for id in &ids {
        let d = bed.dead(id, &hook.webhook_id).await;
        assert_all_failed_with(&d, 2, "timeout");
        dead.push(d);
    }
    assert_dead_letters(&bed.dead_letters(&hook.webhook_id, 2).await, &dead);
    bed.all_acknowledged(ids.last().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_times_out_and_is_hung_up_on() {
    let bed = Bed::new("fault_hang").await;
    bed.policy("short", 2, 100, 400, 500).await;
    let silent = FaultServer::always(Act::Hang);
    let hook = bed.webhook(&silent.url(), "short").await;

    let ids = bed.publish(1, 3);
    bed.healthy_got(&["evt-1", "evt-2", "evt-3"]).await;
    let mut dead = Vec::new();
    for id in &ids {
        let d = bed.dead(id, &hook.webhook_id).await;
        assert_all_failed_with(&d, 2, "timeout");
        dead.push(d);
    }
    assert_dead_letters(&bed.dead_letters(&hook.webhook_id, 3).await, &dead);
    // One request per attempt, and wss closed each connection when it gave up (no leak).
    let seen = wait_until(WAIT, "wss to hang up on every silent request", || {
        let seen = silent.seen();
        if seen.len() == 6 && seen.iter().all(|s| s.client_hung_up) {
            Ok(seen)
        } else {
            Err(format!("{seen:#?}"))
        }
    })
    .await;
    let attempts: BTreeSet<(String, u32)> = seen.iter().map(|s| (s.event_id().to_owned(), s.attempt())).collect();
    assert_eq!(attempts.len(), 6, "each request is a distinct (event, attempt): {attempts:?}");
    bed.all_acknowledged(ids.last().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_past_the_timeout_ends_the_attempt() {
    let bed = Bed::new("fault_slow_body").await;
    bed.policy("short", 2, 100, 400, 500).await;
    // The head at once, then one body byte every 100 ms: 60 s for the whole body.
    let trickle = |status| FaultServer::always(Act::TrickleBody { status, total: 600, every: Duration::from_millis(100) });
    let (slow_ok, slow_error) = (trickle(200), trickle(500));
    let ok_hook = bed.webhook(&slow_ok.url(), "short").await;
    let error_hook = bed.webhook(&slow_error.url(), "short").await;

    let ids = bed.publish(1, 1);
    bed.healthy_got(&["evt-1"]).await;

    // A 2xx head is the receiver's answer: delivered, whatever became of the body.
    let d = bed.delivered(&ids[0], &ok_hook.webhook_id).await;
    assert_eq!(kinds(&d.attempts), [(1, 200, "")], "{d:#?}");
    // The 500 is retried and dead-lettered, each attempt with its status.
    let dead = bed.dead(&ids[0], &error_hook.webhook_id).await;
    assert_eq!(kinds(&dead.attempts), [(1, 500, "http_status"), (2, 500, "http_status")], "{dead:#?}");
    for a in d.attempts.iter().chain(&dead.attempts) {
        let expected: String = (0..a.response_excerpt.len() as u64).map(|i| pattern_byte(i) as char).collect();
        assert_eq!(a.response_excerpt, expected, "the excerpt is what had arrived of the body: {a:?}");
    }
    // The attempts ended with the bodies unfinished: wss hung up rather than wait them out.
    // wss's side: each attempt took about its 500 ms timeout — far below the 60 s the body
    // needs — and kept only part of the body.
    let whole_body = Duration::from_millis(100) * 600;
    for a in d.attempts.iter().chain(&dead.attempts) {
        let took = a.duration.map_or(Duration::MAX, |d| Duration::new(d.seconds as u64, d.nanos as u32));
        assert!(took < whole_body / 2, "attempt {} waited the body out ({took:?}): {a:?}", a.attempt);
        assert!(a.response_excerpt.len() < 600, "attempt {} kept the whole body: {a:?}", a.attempt);
    }
    // The receiver's side: every connection was closed by wss while body bytes were still to
    // come (the trickle lasts 60 s, three times as long as this wait: waiting it out cannot pass).
    assert!(whole_body > WAIT * 2);
    for (server, n) in [(&slow_ok, 1), (&slow_error, 2)] {
        let seen = wait_until(WAIT, "wss to hang up on the trickling bodies", || {
            let seen = server.seen();
            if seen.len() == n && seen.iter().all(|s| s.client_hung_up) {
                Ok(seen)
            } else {
                Err(format!("{seen:#?}"))
            }
        })
        .await;
        assert!(seen.iter().all(|s| !s.finished && s.body_bytes_sent < 600), "{seen:#?}");
    }
    assert_dead_letters(&bed.dead_letters(&error_hook.webhook_id, 1).await, &[dead]);
    bed.all_acknowledged(&ids[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_in_the_middle_of_the_response_head_is_an_error() {
    let bed = Bed::new("fault_reset").await;
    bed.policy("quick", 2, 100, 400, 2000).await;
    let reset = FaultServer::always(Act::ResetMidHead { partial: "HTTP/1.1 200 OK\r\nContent-Ty" });
    let hook = bed.webhook(&reset.url(), "quick").await;

    let ids = bed.publish(1, 3);
    bed.healthy_got(&["evt-1", "evt-2", "evt-3"]).await;
    let mut dead = Vec::new();
    for id in &ids {
        let d = bed.dead(id, &hook.webhook_id).await;
        assert_eq!(d.attempts.len(), 2, "{d:#?}");
        for a in &d.attempts {
            // Not a 200 (the head never completed), not a timeout: a transport error.
            assert_eq!(a.status_code, 0, "a half-written head is no response: {a:?}");
            assert!(
                ["io", "protocol"].contains(&a.error_kind.as_str()),
                "a reset is an io or protocol error, not {:?}: {a:?}",
                a.error_kind
            );
            assert!(!a.error.is_empty(), "{a:?}");
        }
        dead.push(d);
    }
    assert_dead_letters(&bed.dead_letters(&hook.webhook_id, 3).await, &dead);
    assert_eq!(reset.seen().len(), 6, "one request per attempt, no hidden retries: {:#?}", reset.seen());
    bed.all_acknowledged(ids.last().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_retried_with_its_status_and_excerpt_then_dead_lettered() {
    let bed = Bed::new("fault_5xx").await;
    bed.policy("quick", 3, 100, 400, 2000).await;
    let broken = FaultServer::always(Act::status(502));
    let hook = bed.webhook(&broken.url(), "quick").await;

    let ids = bed.publish(1, 3);
    bed.healthy_got(&["evt-1", "evt-2", "evt-3"]).await;
    let mut dead = Vec::new();
    for id in &ids {
        let d = bed.dead(id, &hook.webhook_id).await;
        assert_eq!(kinds(&d.attempts), [(1, 502, "http_status"), (2, 502, "http_status"), (3, 502, "http_status")], "{d:#?}");
        assert!(d.attempts.iter().all(|a| a.response_excerpt == "fault server says 502" && a.error.contains("502")), "{d:#?}");
        dead.push(d);
    }
    assert_dead_letters(&bed.dead_letters(&hook.webhook_id, 3).await, &dead);
    assert_eq!(broken.seen().len(), 9);
    bed.all_acknowledged(ids.last().unwrap()).await;
}

/// The lower bound on a retry's wait allows for this much clock and rounding slack.
const CLOCK_MARGIN: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_seconds_is_honoured_and_capped() {
    let bed = Bed::new("fault_429_seconds").await;
    bed.policy("quick", 3, 100, 10_000, 2000).await;
    bed.policy("capped", 3, 100, 1_000, 2000).await;
    let limited = FaultServer::start(|n| if n == 0 { Act::with_header(429, "Retry-After", "1") } else { Act::status(200) });
    // Asks for an hour; the policy's max_backoff (1 s) caps it.
    let greedy = FaultServer::start(|n| if n == 0 { Act::with_header(429, "Retry-After", "3600") } else { Act::status(200) });
    let hook = bed.webhook(&limited.url(), "quick").await;
    let greedy_hook = bed.webhook(&greedy.url(), "capped").await;

    let ids = bed.publish(1, 1);
    bed.healthy_got(&["evt-1"]).await;
    let d = bed.delivered(&ids[0], &hook.webhook_id).await;
    assert_eq!(kinds(&d.attempts), [(1, 429, "http_status"), (2, 200, "")], "{d:#?}");
    let seen = limited.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let waited = seen[1].arrived - seen[0].answered.expect("the 429 was written");
    assert!(
        waited + CLOCK_MARGIN >= Duration::from_secs(1),
        "the retry came {waited:?} after `Retry-After: 1` (the policy alone says 100 ms)"
    );

    let capped = bed.delivered(&ids[0], &greedy_hook.webhook_id).await;
    assert_eq!(kinds(&capped.attempts), [(1, 429, "http_status"), (2, 200, "")], "{capped:#?}");
    bed.all_acknowledged(&ids[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_as_an_http_date_is_honoured() {
    let bed = Bed::new("fault_429_date").await;
    bed.policy("quick", 3, 100, 10_000, 2000).await;
    // The date the 429 named, as the instant it stands for (HTTP dates have whole seconds).
    let named: std::sync::Arc<std::sync::Mutex<Option<SystemTime>>> = Default::default();
    let record = named.clone();
    let limited = FaultServer::start(move |n| {
        if n == 0 {
            let text = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
            *record.lock().unwrap() = Some(httpdate::parse_http_date(&text).unwrap());
            Act::with_header(429, "Retry-After", &text)
        } else {
            Act::status(200)
        }
    });
    let hook = bed.webhook(&limited.url(), "quick").await;

    let ids = bed.publish(1, 1);
    bed.healthy_got(&["evt-1"]).await;
    let d = bed.delivered(&ids[0], &hook.webhook_id).await;
    assert_eq!(kinds(&d.attempts), [(1, 429, "http_status"), (2, 200, "")], "{d:#?}");
    let seen = limited.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let named = named.lock().unwrap().expect("the 429 named a date");
    let answered = seen[0].answered_at.expect("the 429 was written");
    assert!(named > answered + Duration::from_secs(1), "the test's date must be well ahead of the 429: {named:?} vs {answered:?}");
    assert!(
        seen[1].arrived_at + CLOCK_MARGIN >= named,
        "the retry arrived {:?} before the Retry-After date",
        named.duration_since(seen[1].arrived_at).unwrap_or_default()
    );
    bed.all_acknowledged(&ids[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_webhook_with_a_reason() {
    let bed = Bed::new("fault_410").await;
    bed.policy("quick", 3, 100, 400, 2000).await;
    let gone = FaultServer::always(Act::status(410));
    let hook = bed.webhook(&gone.url(), "quick").await;

    let first = bed.publish(1, 1);
    bed.healthy_got(&["evt-1"]).await;
    let d = bed.dead(&first[0], &hook.webhook_id).await;
    assert_eq!(kinds(&d.attempts), [(1, 410, "http_status")], "410 is not retried: {d:#?}");
    assert_eq!(d.dead_letter_reason, "gone");
    let letters = bed.dead_letters(&hook.webhook_id, 1).await;
    assert_eq!(letters[0].reason, "gone", "{letters:#?}");
    let webhook = bed.grpc.webhooks().get_webhook(GetWebhookRequest { webhook_id: hook.webhook_id.clone() }).await.unwrap().into_inner();
    assert!(!webhook.enabled, "a 410 disables the webhook: {webhook:?}");
    assert!(!webhook.disabled_reason.is_empty(), "GetWebhook says why it was disabled: {webhook:?}");

    // Disabled: later events reach only the healthy webhook.
    let later = bed.publish(2, 2);
    bed.healthy_got(&["evt-2", "evt-3"]).await;
    bed.all_acknowledged(later.last().unwrap()).await;
    assert_eq!(gone.seen().len(), 1, "nothing more is sent to a disabled webhook: {:#?}", gone.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let bed = Bed::new("fault_3xx").await;
    bed.policy("quick", 2, 100, 400, 2000).await;
    let target = FaultServer::always(Act::status(200));
    let moved = FaultServer::always(Act::with_header(301, "Location", &target.url()));
    let temporary = FaultServer::always(Act::with_header(307, "Location", &target.url()));
    let moved_hook = bed.webhook(&moved.url(), "quick").await;
    let temporary_hook = bed.webhook(&temporary.url(), "quick").await;

    let ids = bed.publish(1, 2);
    bed.healthy_got(&["evt-1", "evt-2"]).await;
    for (hook, status) in [(&moved_hook, 301), (&temporary_hook, 307)] {
        let mut dead = Vec::new();
        for id in &ids {
            let d = bed.dead(id, &hook.webhook_id).await;
            assert_eq!(kinds(&d.attempts), [(1, status, "http_status"), (2, status, "http_status")], "{d:#?}");
            dead.push(d);
        }
        assert_dead_letters(&bed.dead_letters(&hook.webhook_id, 2).await, &dead);
    }
    bed.all_acknowledged(ids.last().unwrap()).await;
    assert_eq!((moved.seen().len(), temporary.seen().len()), (4, 4));
    assert!(target.seen().is_empty(), "the Location was followed: {:#?}", target.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_response_body_is_cut_short_and_only_its_start_kept() {
    let bed = Bed::new("fault_endless").await;
    bed.policy("quick", 2, 100, 400, 5000).await;
    const HUNDRED_MB: u64 = 100 * 1024 * 1024;
    let endless_error = FaultServer::always(Act::EndlessBody { status: 500, total: HUNDRED_MB });
    let endless_ok = FaultServer::always(Act::EndlessBody { status: 200, total: HUNDRED_MB });
    let error_hook = bed.webhook(&endless_error.url(), "quick").await;
    let ok_hook = bed.webhook(&endless_ok.url(), "quick").await;

    let ids = bed.publish(1, 1);
    bed.healthy_got(&["evt-1"]).await;
    let dead = bed.dead(&ids[0], &error_hook.webhook_id).await;
    assert_eq!(kinds(&dead.attempts), [(1, 500, "http_status"), (2, 500, "http_status")], "{dead:#?}");
    let delivered = bed.delivered(&ids[0], &ok_hook.webhook_id).await;
    assert_eq!(kinds(&delivered.attempts), [(1, 200, "")], "{delivered:#?}");
    let pattern: String = (0..1024).map(|i| pattern_byte(i) as char).collect();
    for a in dead.attempts.iter().chain(&delivered.attempts) {
        let excerpt = &a.response_excerpt;
        assert!(!excerpt.is_empty() && excerpt.len() <= 1024, "the excerpt keeps at most 1 KiB: {} bytes", excerpt.len());
        assert!(pattern.starts_with(excerpt.as_str()), "the excerpt is the body's start: {excerpt:?}");
    }
    for (server, n) in [(&endless_error, 2), (&endless_ok, 1)] {
        let seen = wait_until(WAIT, "each endless body to end (wss hung up, or all 100 MB sent)", || {
            let seen = server.seen();
            if seen.len() == n && seen.iter().all(|s| s.client_hung_up || s.finished) {
                Ok(seen)
            } else {
                Err(format!("{seen:#?}"))
            }
        })
        .await;
        for s in &seen {
            assert!(!s.finished && s.body_bytes_sent < HUNDRED_MB, "wss read the whole 100 MB: {s:#?}");
        }
    }
    assert_dead_letters(&bed.dead_letters(&error_hook.webhook_id, 1).await, &[dead]);
    bed.all_acknowledged(&ids[0]).await;
}

/// The client's per-connection buffers are sized for ordinary heads (`wss::http`), not ureq's
/// 128 KiB defaults: a request whose head is larger than the write buffer (four static headers
/// of 8 KiB, the most one may hold) goes out whole, a 12 KiB response head is read, and a response
/// head over `MAX_RESPONSE_HEAD` fails the attempt as a protocol error (not a timeout, not a
/// success).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_heads_within_the_limits_work_and_a_response_head_over_the_limit_fails() {
    let bed = Bed::new("fault_big_heads").await;
    bed.policy("quick", 2, 100, 400, 2000).await;
    let big = FaultServer::always(Act::with_header(200, "X-Big", &"b".repeat(12 * 1024)));
    let huge = FaultServer::always(Act::with_header(200, "X-Huge", &"h".repeat(wss::http::MAX_RESPONSE_HEAD)));
    let static_headers: std::collections::HashMap<String, String> =
        (0..4).map(|i| (format!("X-Static-{i}"), pattern_of(i, 8192))).collect();
    let big_hook = bed
        .grpc
        .create_webhook("acme", &big.url(), |r| {
            r.retry_policy_id = "quick".into();
            r.headers = static_headers.clone();
        })
        .await;
    let huge_hook = bed.webhook(&huge.url(), "quick").await;

    let ids = bed.publish(1, 2);
    bed.healthy_got(&["evt-1", "evt-2"]).await;
    let mut dead = Vec::new();
    for id in &ids {
        let d = bed.delivered(id, &big_hook.webhook_id).await;
        assert_eq!(kinds(&d.attempts), [(1, 200, "")], "{d:#?}");
        let d = bed.dead(id, &huge_hook.webhook_id).await;
        assert_all_failed_with(&d, 2, "protocol");
        dead.push(d);
    }
    for seen in big.seen() {
        for (name, value) in &static_headers {
            assert_eq!(seen.header(name), Some(value.as_str()), "request #{} carries {name} whole", seen.index);
        }
    }
    assert_dead_letters(&bed.dead_letters(&huge_hook.webhook_id, 2).await, &dead);
    assert_eq!(huge.seen().len(), 4, "one request per attempt: {:#?}", huge.seen());
    bed.all_acknowledged(ids.last().unwrap()).await;
}

/// `len` visible ASCII bytes that differ from header to header.
fn pattern_of(seed: usize, len: usize) -> String {
    (0..len).map(|i| char::from(b'a' + ((i + seed * 7) % 26) as u8)).collect()
}

/// Endpoint isolation (issue 4): 100 webhooks, one of which hangs (never answers; 300 s attempt
/// timeout, the most a policy allows). Its deliveries outnumber the sender threads, so without a
/// per-webhook in-flight cap they would take every sender for 300 s; with the cap, every delivery
/// of the 99 healthy webhooks arrives while the bad one is still hanging, and it never has more
/// than the cap's worth of requests open. No race with the clock: the give-up bound (60 s) is far
/// below the hanging requests' timeout, so they are still open whatever the machine's speed;
/// what is checked is counts against the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_webhook_does_not_hold_back_the_other_99() {
    const SENDERS: usize = 16;
    const CAP: usize = 4;
    const EVENTS: usize = 20; // each to all 100 webhooks: 20 hanging deliveries > 16 senders
                              // Only a bound for giving up, far below the hanging requests' 300 s timeout.
    const GIVE_UP: Duration = Duration::from_secs(60);
    let ks = Keyspace::new("fault_isolation");
    let healthy = Receiver::ok();
    let hanging = FaultServer::always(Act::Hang);
    let (senders, cap) = (SENDERS.to_string(), CAP.to_string());
    let env = [("WSS_SENDER_THREADS", senders.as_str()), ("WSS_WEBHOOK_CONCURRENCY", cap.as_str()), ("WSS_LOG_LEVEL", "info")];
    let service = Service::start(&ks, "fault-isolation", &env).await;
    let grpc = service.grpc().await;
    grpc.policies()
        .create_retry_policy(CreateRetryPolicyRequest {
            policy_id: "patient".into(),
            max_attempts: Some(2),
            initial_backoff: Some(pb_ms(100)),
            max_backoff: Some(pb_ms(100)),
            multiplier: Some(1.0),
            jitter: Some(0.0),
            attempt_timeout: Some(pb_ms(300_000)),
        })
        .await
        .unwrap_or_else(|s| panic!("CreateRetryPolicy: {s:?}"));
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &hanging.url(), |r| r.retry_policy_id = "patient".into()).await;
    for k in 0..99 {
        grpc.create_webhook("acme", &format!("http://{}/w{k}", healthy.addr), |r| r.retry_policy_id = "patient".into()).await;
    }

    publish_in_one_go(&ks, EVENTS);
    let expected: BTreeSet<(String, String)> =
        (0..EVENTS).flat_map(|i| (0..99).map(move |k| (format!("evt-{i}"), format!("/w{k}")))).collect();
    wait_until(GIVE_UP, "every delivery of the 99 healthy webhooks", || {
        let got: BTreeSet<(String, String)> =
            healthy.requests().iter().filter(|r| r.delivered()).map(|r| (r.event_id().to_owned(), r.path.clone())).collect();
        let missing = expected.difference(&got).count();
        if missing == 0 {
            Ok(())
        } else {
            Err(format!("{missing} of {} missing", expected.len()))
        }
    })
    .await;
    let seen = hanging.seen();
    assert!(!seen.is_empty(), "the hanging webhook got requests");
    assert!(seen.iter().all(|s| !s.client_hung_up), "the bad webhook was still hanging when the others were done: {seen:#?}");
    assert!(seen.len() <= CAP, "at most {CAP} requests open to one webhook at once, not {} (of {SENDERS} senders)", seen.len());
    // Its deliveries wait for its cap, not for a sender: the healthy ones all went past them.
    assert_eq!(healthy.requests().iter().filter(|r| r.delivered()).count(), expected.len(), "each healthy delivery once");
    assert!(ks.group_state().expect("group state").pending > 0, "the hanging webhook's entries are still pending");
}

/// Events `evt-0`..`evt-<n-1>` of tenant acme, in one pipeline.
fn publish_in_one_go(ks: &Keyspace, n: usize) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD")
            .arg(ks.events())
            .arg("*")
            .arg("tenant")
            .arg("acme")
            .arg("type")
            .arg("order.created")
            .arg("data")
            .arg("{}")
            .arg("id")
            .arg(format!("evt-{i}"))
            .ignore();
    }
    pipe.query::<()>(&mut ks.conn()).unwrap_or_else(|e| panic!("publishing {n} events: {e}"));
}
