//! NATS JetStream as a source (docs/contract.md §7, `wss::source::nats`), against a real nats-server with
//! JetStream: `WSS_TEST_NATS_URL` (`./run-tests` starts a private one; default the machine's
//! `nats://127.0.0.1:4222`). Each test has its own stream, subjects and consumer.
//!
//! - events of several tenants, published with the headers of docs/contract.md §7, are delivered signed,
//!   with the event ids of §7; malformed messages are dead-lettered with their reasons and
//!   acknowledged; no message stays unacknowledged (the consumer's `num_ack_pending` and
//!   `num_pending` go to 0);
//! - a SIGKILL of wss midway, then a restart: every event delivered, nothing lost;
//! - a restart of the broker (a nats-server of the test's own) midway: every event delivered,
//!   the outage logged once and shown in `/readyz` and `wss_source_outages_total`.

mod common;

use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream;
use common::{assert_signed, eventually, http_get, Keyspace, Receiver, Recorded, Service, WAIT};

fn nats_url() -> String {
    std::env::var("WSS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Names of the test's own: stream, subject prefix, consumer.
struct Names {
    stream: String,
    subject: String,
    consumer: String,
}

impl Names {
    fn new(test: &str) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000_000;
        let tag = format!("{test}_{}_{nanos}", std::process::id());
        Self { stream: format!("T_{tag}"), subject: format!("t.{tag}"), consumer: format!("c_{tag}") }
    }

    fn source(&self, server: &str) -> String {
        format!("{server}?stream={}&subjects={}.>&consumer={}&ack_wait=3s", self.stream, self.subject, self.consumer)
    }
}

async fn js(server: &str) -> jetstream::Context {
    let client =
        async_nats::connect(server).await.unwrap_or_else(|e| panic!("cannot connect to NATS at {server}: {e}; set WSS_TEST_NATS_URL"));
    jetstream::new(client)
}

/// Publishes one message with `headers` and waits for JetStream's acknowledgement.
async fn publish(js: &jetstream::Context, subject: String, headers: &[(&str, &str)], body: &str) {
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, *v);
    }
    js.publish_with_headers(subject, map, body.to_owned().into()).await.expect("publish").await.expect("JetStream stored the message");
}

/// Starts wss reading only the test's NATS source, and waits until it reads.
async fn start(ks: &Keyspace, name: &str, source: &str) -> Service {
    let mut env = Service::env(ks, name);
    env.push(("WSS_SOURCES".into(), source.into()));
    env.push(("WSS_CLAIM_AFTER".into(), "2s".into()));
    let mut service = Service::spawn(name, env);
    service.wait_for_control_plane().await;
    service.wait_for_log("reading NATS JetStream stream", WAIT).await;
    service
}

/// The consumer's messages not yet delivered and delivered-but-unacknowledged.
async fn consumer_backlog(js: &jetstream::Context, names: &Names) -> Result<(u64, usize), String> {
    let stream = js.get_stream(&names.stream).await.map_err(|e| e.to_string())?;
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(&names.consumer).await.map_err(|e| e.to_string())?;
    let info = consumer.info().await.map_err(|e| e.to_string())?;
    Ok((info.num_pending, info.num_ack_pending))
}

async fn wait_all_acknowledged(js: &jetstream::Context, names: &Names) {
    eventually(WAIT * 2, "every message acknowledged (num_pending and num_ack_pending 0)", || async {
        match consumer_backlog(js, names).await? {
            (0, 0) => Ok(()),
            other => Err(format!("(num_pending, num_ack_pending) = {other:?}")),
        }
    })
    .await;
}

fn delivered_ids(receiver: &Receiver) -> BTreeSet<String> {
    receiver.requests().iter().filter(|r| r.delivered()).map(|r| r.event_id().to_owned()).collect()
}

async fn wait_delivered(receiver: &Receiver, want: &BTreeSet<String>, within: Duration) {
    eventually(within, "every event delivered", || async {
        let got = delivered_ids(receiver);
        let missing: Vec<&String> = want.difference(&got).take(5).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} of {} delivered; missing e.g. {missing:?}", got.intersection(want).count(), want.len()))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_events_are_delivered_bad_messages_dead_lettered_and_all_acknowledged() {
    let ks = Keyspace::new("nats_tenants");
    let names = Names::new("tenants");
    let server = nats_url();
    let receiver = Receiver::ok();
    let service = start(&ks, "nats-tenants", &names.source(&server)).await;
    let grpc = service.grpc().await;
    let mut secrets = std::collections::BTreeMap::new();
    for t in 0..5 {
        let tenant = format!("tenant-{t}");
        grpc.create_tenant(&tenant).await;
        let webhook = grpc.create_webhook(&tenant, &receiver.url(), |_| {}).await;
        secrets.insert(tenant, webhook.secret);
    }
    // The stream and consumer exist now (wss created them); publish.
    let js = js(&server).await;
    let mut want = BTreeSet::new();
    for n in 0..100 {
        let tenant = format!("tenant-{}", n % 5);
        let subject = format!("{}.{tenant}", names.subject);
        let id = format!("evt-{n}");
        let body = format!(r#"{{"n":{n}}}"#);
        if n % 2 == 0 {
            publish(
                &js,
                subject,
                &[("WSS-Tenant", &tenant), ("WSS-Type", "order.created"), ("WSS-Id", &id), ("WSS-Attr-Region", "eu")],
                &body,
            )
            .await;
            want.insert(id);
        } else {
            // No id header: the event id is `<stream>:<stream sequence>`.
            let ack = js
                .publish_with_headers(subject, header_map(&[("WSS-Tenant", &tenant), ("WSS-Type", "order.created")]), body.into())
                .await
                .unwrap()
                .await
                .unwrap();
            want.insert(format!("{}:{}", names.stream, ack.sequence));
        }
    }
    // Malformed: no tenant; data not JSON; an unknown tenant.
    publish(&js, format!("{}.bad", names.subject), &[("WSS-Type", "order.created"), ("WSS-Id", "bad-1")], "{}").await;
    publish(&js, format!("{}.bad", names.subject), &[("WSS-Tenant", "tenant-0"), ("WSS-Type", "x"), ("WSS-Id", "bad-2")], "not json").await;
    publish(&js, format!("{}.bad", names.subject), &[("WSS-Tenant", "nobody"), ("WSS-Type", "x"), ("WSS-Id", "bad-3")], "{}").await;

    wait_delivered(&receiver, &want, WAIT * 2).await;
    let requests = receiver.requests();
    for r in requests.iter().filter(|r| r.delivered()) {
        let body = r.json();
        let tenant = body["tenant"].as_str().expect("the envelope names the tenant");
        assert_signed(&secrets[tenant], r);
        assert!(body["created_at"].as_str().is_some_and(|t| t.starts_with("20")), "created_at is the JetStream time: {body}");
    }
    let sample = requests.iter().find(|r| r.event_id() == "evt-0").expect("evt-0 delivered");
    assert!(
        String::from_utf8_lossy(&sample.body).contains(r#""n":0"#),
        "the body carries the message's data: {}",
        String::from_utf8_lossy(&sample.body)
    );
    let dead = eventually(WAIT, "three dead letters", || async {
        let dead = grpc.dead_letters("").await?;
        if dead.len() >= 3 {
            Ok(dead)
        } else {
            Err(format!("{} dead letters: {dead:?}", dead.len()))
        }
    })
    .await;
    let reasons: BTreeSet<(String, String)> = dead.iter().map(|d| (d.event_id.clone(), d.reason.clone())).collect();
    for expected in [("bad-1", "missing_field"), ("bad-2", "data_not_json"), ("bad-3", "unknown_tenant")] {
        assert!(reasons.contains(&(expected.0.to_owned(), expected.1.to_owned())), "{expected:?} in {reasons:?}");
    }
    assert_eq!(delivered_ids(&receiver).len(), want.len(), "no bad message was delivered, every good one once or more");
    wait_all_acknowledged(&js, &names).await;
    let _ = js.delete_stream(&names.stream).await;
}

fn header_map(headers: &[(&str, &str)]) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, *v);
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_midway_loses_nothing() {
    let ks = Keyspace::new("nats_kill");
    let names = Names::new("kill");
    let server = nats_url();
    // Slow enough that the kill lands midway.
    let receiver = Receiver::slow(Duration::from_millis(20));
    let first = start(&ks, "nats-doomed", &names.source(&server)).await;
    let grpc = first.grpc().await;
    for t in 0..20 {
        let tenant = format!("tenant-{t}");
        grpc.create_tenant(&tenant).await;
        grpc.create_webhook(&tenant, &receiver.url(), |_| {}).await;
    }
    drop(grpc);
    let js = js(&server).await;
    let total = 600;
    let mut want = BTreeSet::new();
    for n in 0..total {
        let tenant = format!("tenant-{}", n % 20);
        let id = format!("kill-{n}");
        publish(
            &js,
            format!("{}.{tenant}", names.subject),
            &[("WSS-Tenant", &tenant), ("WSS-Type", "order.created"), ("WSS-Id", &id)],
            "{}",
        )
        .await;
        want.insert(id);
    }
    receiver.wait_for_requests(50, "some deliveries before the kill", Recorded::delivered).await;
    drop(first); // SIGKILL with messages in hand.
    let before = delivered_ids(&receiver).len();
    assert!(before < total, "the kill came midway ({before} of {total} delivered)");
    let _second = start(&ks, "nats-heir", &names.source(&server)).await;
    wait_delivered(&receiver, &want, WAIT * 4).await;
    wait_all_acknowledged(&js, &names).await;
    let _ = js.delete_stream(&names.stream).await;
}

/// A nats-server of the test's own, on a free port, with its JetStream store in a directory
/// that survives its restarts.
struct OwnNats {
    child: Option<Child>,
    port: u16,
    store: std::path::PathBuf,
}

impl OwnNats {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let store = std::env::temp_dir().join(format!("wss-nats-{}-{port}", std::process::id()));
        let mut own = Self { child: None, port, store };
        own.launch();
        own
    }

    fn launch(&mut self) {
        let child = Command::new(common::nats_server_bin())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd", &self.store.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_midway_loses_nothing_and_shows_as_an_outage() {
    let ks = Keyspace::new("nats_restart");
    let names = Names::new("restart");
    let mut nats = OwnNats::start();
    let server = nats.url();
    let js = eventually(WAIT, "the test's nats-server answering", || async {
        match async_nats::connect(server.as_str()).await {
            Ok(client) => Ok(jetstream::new(client)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let receiver = Receiver::slow(Duration::from_millis(10));
    let service = start(&ks, "nats-restart", &names.source(&server)).await;
    let metrics = service.wait_for_metrics().await;
    let grpc = service.grpc().await;
    for t in 0..4 {
        let tenant = format!("tenant-{t}");
        grpc.create_tenant(&tenant).await;
        grpc.create_webhook(&tenant, &receiver.url(), |_| {}).await;
    }
    let mut want = BTreeSet::new();
    let mut publish_some = |js: jetstream::Context, range: std::ops::Range<usize>| {
        let subject = names.subject.clone();
        for n in range.clone() {
            want.insert(format!("r-{n}"));
        }
        async move {
            for n in range {
                let tenant = format!("tenant-{}", n % 4);
                publish(
                    &js,
                    format!("{subject}.{tenant}"),
                    &[("WSS-Tenant", &tenant), ("WSS-Type", "t"), ("WSS-Id", &format!("r-{n}"))],
                    "{}",
                )
                .await;
            }
        }
    };
    publish_some(js.clone(), 0..200).await;
    receiver.wait_for_requests(20, "some deliveries before the broker stops", Recorded::delivered).await;
    nats.stop();
    eventually(WAIT, "/readyz to say the source is unreachable", || async {
        let (status, _, body) = http_get(metrics, "/readyz", None)?;
        if status == 503 && body.contains("unreachable") {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    nats.launch();
    let js = eventually(WAIT, "the restarted nats-server answering", || async {
        match async_nats::connect(server.as_str()).await {
            Ok(client) => Ok(jetstream::new(client)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    publish_some(js.clone(), 200..300).await;
    wait_delivered(&receiver, &want, WAIT * 3).await;
    wait_all_acknowledged(&js, &names).await;
    eventually(WAIT, "/readyz ready again", || async {
        let (status, _, body) = http_get(metrics, "/readyz", None)?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    let (_, _, text) = http_get(metrics, "/metrics", None).unwrap();
    let outages = text.lines().find(|l| l.starts_with("wss_source_outages_total{")).unwrap_or_default().to_owned();
    assert!(outages.ends_with(" 1"), "one outage counted: {outages}");
    let logged = service.lines().iter().filter(|l| l.contains("unreachable") && l.contains("logged once per outage")).count();
    assert_eq!(logged, 1, "the outage is logged once");
}

/// A backlog item as stored (`<length>:<bytes>` parts: its state, then its event's fields).
fn item_parts(ks: &Keyspace, webhook: &str, entry: &str) -> Option<Vec<String>> {
    let stored: Option<Vec<u8>> =
        redis::cmd("GET").arg(format!("{}backlog:item:{webhook}:{entry}", ks.prefix)).query(&mut ks.conn()).unwrap();
    let mut rest = &stored?[..];
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let colon = rest.iter().position(|b| *b == b':').expect("a length");
        let len: usize = std::str::from_utf8(&rest[..colon]).unwrap().parse().unwrap();
        parts.push(String::from_utf8_lossy(&rest[colon + 1..colon + 1 + len]).into_owned());
        rest = &rest[colon + 1 + len..];
    }
    Some(parts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_in_the_backlog_with_the_message_acknowledged_and_dead_letters_keep_the_event() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    use wss::proto::{redeliver_dead_letter_request::Target, RedeliverDeadLetterRequest};

    let ks = Keyspace::new("nats_backlog");
    let names = Names::new("backlog");
    let server = nats_url();
    let flaky = Receiver::failing_first(2);
    let fixed = Arc::new(AtomicBool::new(false));
    let switch = fixed.clone();
    let broken = Receiver::start(move |_| common::Reply::status(if switch.load(Ordering::SeqCst) { 200 } else { 500 }));
    let service = start(&ks, "nats-backlog", &names.source(&server)).await;
    let grpc = service.grpc().await;
    grpc.create_policy("later", 4, 2000, 2000).await;
    grpc.create_policy("twice", 2, 100, 100).await;
    grpc.create_tenant("acme").await;
    grpc.create_tenant("beta").await;
    let webhook = grpc.create_webhook("acme", &flaky.url(), |r| r.retry_policy_id = "later".into()).await;
    grpc.create_webhook("beta", &broken.url(), |r| r.retry_policy_id = "twice".into()).await;
    let js = js(&server).await;
    let data = r#"{"order":"A-1"}"#;
    publish(
        &js,
        format!("{}.acme", names.subject),
        &[("WSS-Tenant", "acme"), ("WSS-Type", "order.created"), ("WSS-Id", "evt-retry")],
        data,
    )
    .await;

    flaky.wait_for_requests(1, "the first attempt", |_| true).await;
    // While its retry waits in the backlog, the message is acknowledged, and the item holds the
    // event's fields (from memory: there is no stream entry to copy them from).
    wait_all_acknowledged(&js, &names).await;
    assert!(flaky.requests().len() < 3, "acknowledged before the delivery succeeded");
    let parts = item_parts(&ks, &webhook.webhook_id, "evt-retry").expect("the backlog item");
    assert_eq!(parts[1..7], ["tenant", "acme", "type", "order.created", "id", "evt-retry"], "{parts:?}");
    assert_eq!(parts[7..9], ["data", data]);
    assert_eq!(parts[9], "_wss_created_at_ms");
    let all = flaky.wait_for_requests(1, "two failures, then the delivery", Recorded::delivered).await;
    assert_eq!(all.iter().map(|r| r.header("X-WSS-Attempt")).collect::<Vec<_>>(), ["1", "2", "3"]);
    assert!(all.iter().all(|r| r.event_id() == "evt-retry" && r.body == all[0].body));
    assert_signed(&webhook.secret, &all[2]);

    // Dead-lettered after its attempts: the record keeps the event, and redelivering it (through
    // the Redis stream) sends the same event again.
    publish(
        &js,
        format!("{}.beta", names.subject),
        &[("WSS-Tenant", "beta"), ("WSS-Type", "t"), ("WSS-Id", "evt-dead"), ("WSS-Attr-Region", "eu")],
        "[1]",
    )
    .await;
    let dead = eventually(WAIT, "the dead letter", || async {
        let dead = grpc.dead_letters("beta").await?;
        dead.into_iter().find(|d| d.event_id == "evt-dead").ok_or_else(|| "none yet".to_owned())
    })
    .await;
    assert_eq!((dead.reason.as_str(), dead.stream_entry_id.as_str()), ("max_attempts_exhausted", "evt-dead"));
    wait_all_acknowledged(&js, &names).await;
    let first_body = broken.requests()[0].json();
    fixed.store(true, Ordering::SeqCst);
    grpc.deliveries()
        .redeliver_dead_letter(RedeliverDeadLetterRequest {
            target: Some(Target::DeadLetterId(dead.dead_letter_id.clone())),
            ..Default::default()
        })
        .await
        .expect("RedeliverDeadLetter");
    let again = broken.wait_for_requests(1, "the redelivered event", Recorded::delivered).await;
    let delivered = again.iter().find(|r| r.delivered()).unwrap();
    assert_eq!(delivered.event_id(), "evt-dead");
    let body = delivered.json();
    assert_eq!((&body["data"], &body["created_at"]), (&first_body["data"], &first_body["created_at"]), "the same event: {body}");
    let _ = js.delete_stream(&names.stream).await;
}
