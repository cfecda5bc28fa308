//! The retry formula as the pipeline applies it (docs/contract.md §4): with jitter 0, each retry is due
//! `min(max_backoff, initial × multiplier^(n-1))` after attempt n ended — not a step early or
//! late in the exponent. Read from the delivery history at the moment each retry arrives at the
//! receiver: then the record still holds the previous attempt, and the due time the outcome
//! stage computed for this one.

mod common;

use std::sync::{Arc, Mutex};

use common::{history_record_in, redis_url, Keyspace, Receiver, Recorded, Reply, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_is_due_after_the_policy_s_delay_for_its_attempt() {
    let ks = Keyspace::new("retry_schedule");
    // The delivery's id, known once the event is published; what the receiver read from its
    // history record as each attempt arrived: (attempt arriving, previous attempt's end, due
    // time).
    let delivery_id: Arc<Mutex<Option<String>>> = Arc::default();
    let seen: Arc<Mutex<Vec<(u32, u64, u64)>>> = Arc::default();
    let (key, log, prefix) = (delivery_id.clone(), seen.clone(), ks.prefix.clone());
    let client = redis::Client::open(redis_url()).unwrap();
    let receiver = Receiver::start(move |n| {
        if n > 0 {
            let id = key.lock().unwrap().clone().expect("the delivery's id is set before the first retry");
            let record = history_record_in(&mut client.get_connection().unwrap(), &prefix, &id).expect("a record after a failed attempt");
            let last = record["attempts"].as_array().unwrap().last().unwrap().clone();
            let ended = last["started_at_ms"].as_u64().unwrap() + last["duration_ms"].as_u64().unwrap();
            log.lock().unwrap().push((n as u32 + 1, ended, record["next_attempt_at_ms"].as_u64().unwrap()));
        }
        Reply::status(if n < 4 { 503 } else { 200 })
    });
    let service = Service::start(&ks, "schedule", &[]).await;
    let grpc = service.grpc().await;
    // 5 attempts, 300 ms doubling up to 1.2 s, jitter 0 (`create_policy`'s fixed shape).
    grpc.create_policy("doubling", 5, 300, 1200).await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |r| r.retry_policy_id = "doubling".into()).await;
    let entry = ks.publish("acme", "t", "{}");
    *delivery_id.lock().unwrap() = Some(format!("{entry}:{}", webhook.webhook_id));

    receiver.wait_for_requests(1, "the fifth attempt, delivered", Recorded::delivered).await;
    let seen = seen.lock().unwrap().clone();
    let attempts: Vec<u32> = seen.iter().map(|(attempt, _, _)| *attempt).collect();
    assert_eq!(attempts, [2, 3, 4, 5], "each retry read the previous attempt's record");
    let expected_ms = [300u64, 600, 1200, 1200];
    for ((attempt, ended, due), delay) in seen.iter().zip(expected_ms) {
        let computed = due.saturating_sub(*ended);
        // At least the delay (it is computed after the attempt ended); less than the next step
        // of the formula (which an off-by-one in the exponent would give), the slack being the
        // outcome stage's own latency.
        assert!(
            computed >= delay && computed < delay + 300,
            "attempt {attempt} was due {computed} ms after attempt {} ended; the policy says {delay} ms",
            attempt - 1
        );
    }
    // And no retry came early.
    let requests = receiver.requests();
    for ((_, _, due), request) in seen.iter().zip(&requests[1..]) {
        let timestamp: u64 = request.header("X-WSS-Timestamp").parse().unwrap();
        assert!(timestamp * 1000 + 999 >= *due, "a retry was signed at {timestamp} s, before its due time {due} ms");
    }
}
