//! Issue 13: no input may stop the pipeline, and a sick process must say so. Each test feeds
//! `wss serve` (a child process, on the test Redis or a private one) one kind of input that used
//! to crash, stall or bloat it, and checks that the input is refused or dead-lettered with its
//! reason while good events keep being delivered:
//!
//! - poison entries: pending entries Redis has delivered too often, re-read by their own
//!   consumer or claimed from a dead one, are dead-lettered `poison`;
//! - times past year 9999 (`_wss_created_at_ms`, an entry id) are `invalid_field`;
//! - oversized entries leave a small record (an excerpt and the size), and listing works;
//! - filters and transforms beyond the complexity limits are refused at registration;
//! - `/healthz`, `/readyz`, gRPC health and `wss_redis_up` follow Redis going away and back;
//! - at `WSS_LOG_LEVEL=trace`, no URL query or static header value reaches the log.

mod common;

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{assert_status, eventually, http_get, wait_until, Keyspace, Receiver, Service, WAIT};
use tonic::Code;
use wss::proto::{CreateWebhookRequest, DeadLetter};

/// The dead letters of `tenant` once there are `n`.
async fn dead_letters(service: &Service, tenant: &str, n: usize) -> Vec<DeadLetter> {
    let grpc = service.grpc().await;
    eventually(WAIT, &format!("{n} dead letters of {tenant}"), || async {
        let all = grpc.dead_letters(tenant).await?;
        if all.len() >= n {
            Ok(all)
        } else {
            Err(format!("{} so far: {:?}", all.len(), all.iter().map(|d| (&d.reason, &d.detail)).collect::<Vec<_>>()))
        }
    })
    .await
}

/// A tenant with one plain webhook on `receiver`.
async fn tenant_with_webhook(service: &Service, tenant: &str, receiver: &Receiver) {
    let grpc = service.grpc().await;
    grpc.create_tenant(tenant).await;
    grpc.create_webhook(tenant, &receiver.url(), |_| {}).await;
}

fn delivered_ids(receiver: &Receiver) -> Vec<String> {
    receiver.requests().iter().filter(|r| r.delivered()).map(|r| r.json()["data"]["n"].to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_entries_read_too_often_are_dead_lettered_as_poison() {
    let ks = Keyspace::new("poison_reads");
    let mut con = ks.conn();
    let events = ks.events();
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg(&events).arg("wss").arg("0").arg("MKSTREAM").query(&mut con).unwrap();
    // Two entries that (we pretend) crashed instances again and again: one still owned by the
    // consumer about to start, one by a consumer that died; both delivered nine times.
    let own = ks.publish("acme", "t", r#"{"n":"own"}"#);
    let orphan = ks.publish("acme", "t", r#"{"n":"orphan"}"#);
    for (id, owner) in [(&own, "victim"), (&orphan, "dead-instance")] {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("wss")
            .arg(owner)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&events)
            .arg(">")
            .query(&mut con)
            .unwrap();
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&events)
            .arg("wss")
            .arg(owner)
            .arg(0)
            .arg(id.as_str())
            .arg("RETRYCOUNT")
            .arg(9)
            .arg("JUSTID")
            .query(&mut con)
            .unwrap();
    }
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "victim", &[("WSS_CLAIM_AFTER", "1s")]).await;
    tenant_with_webhook(&service, "acme", &receiver).await;
    let good = ks.publish("acme", "t", r#"{"n":"good"}"#);

    let records = dead_letters(&service, "acme", 2).await;
    for id in [&own, &orphan] {
        let record = records.iter().find(|r| &r.stream_entry_id == id).unwrap_or_else(|| panic!("no record of {id}: {records:?}"));
        assert_eq!(record.reason, "poison", "{record:?}");
        assert!(record.detail.contains("was read 10 times") || record.detail.contains("was read 11 times"), "{}", record.detail);
    }
    wait_until(WAIT, "the good event delivered", || {
        let ids = delivered_ids(&receiver);
        if ids.contains(&"\"good\"".to_owned()) {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
    assert!(!delivered_ids(&receiver).iter().any(|id| id.contains("own") || id.contains("orphan")), "poison entries are not delivered");
    wait_until(WAIT, "everything acknowledged", || ks.all_acknowledged_through(&good)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn times_past_year_9999_are_invalid_fields_and_delivery_goes_on() {
    let ks = Keyspace::new("time_range");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "c1", &[]).await;
    tenant_with_webhook(&service, "acme", &receiver).await;
    ks.xadd(&[("tenant", "acme"), ("type", "t"), ("data", r#"{"n":1}"#), ("_wss_created_at_ms", "18446744073709551615")]);
    ks.xadd(&[("tenant", "acme"), ("type", "t"), ("data", r#"{"n":2}"#), ("_wss_created_at_ms", "253402300800000")]);
    ks.publish("acme", "t", r#"{"n":3}"#);
    // Last: after this id every id Redis gives out is in year 10000 too.
    let mut cmd = redis::cmd("XADD");
    cmd.arg(ks.events()).arg("253402300800000-0").arg("tenant").arg("acme").arg("type").arg("t").arg("data").arg(r#"{"n":4}"#);
    let last: String = cmd.query(&mut ks.conn()).unwrap();

    let records = dead_letters(&service, "acme", 3).await;
    assert!(records.iter().all(|r| r.reason == "invalid_field"), "{records:?}");
    assert!(records.iter().any(|r| r.detail.contains("after year 9999")), "{records:?}");
    wait_until(WAIT, "event 3 delivered", || {
        if delivered_ids(&receiver) == ["3"] {
            Ok(())
        } else {
            Err(format!("{:?}", delivered_ids(&receiver)))
        }
    })
    .await;
    wait_until(WAIT, "everything acknowledged", || ks.all_acknowledged_through(&last)).await;
    let metrics = service.wait_for_metrics().await;
    let (status, _, _) = http_get(metrics, "/healthz", None).unwrap();
    assert_eq!(status, 200, "the process is still well");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_entries_leave_an_excerpt_and_listing_stays_small() {
    let ks = Keyspace::new("too_large");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "c1", &[("WSS_MAX_EVENT_BYTES", "65536")]).await;
    tenant_with_webhook(&service, "acme", &receiver).await;
    let big = format!(r#"{{"n":"{}"}}"#, "x".repeat(2 << 20));
    for _ in 0..3 {
        ks.publish("acme", "t", &big);
    }
    let good = ks.publish("acme", "t", r#"{"n":"small"}"#);
    let records = dead_letters(&service, "acme", 3).await;
    for record in &records {
        assert_eq!(record.reason, "too_large");
        assert!(
            record.detail.contains(&format!("the entry is {} bytes", big.len() + "tenant".len() + 4 + "type".len() + 1 + "data".len())),
            "{}",
            &record.detail[..200.min(record.detail.len())]
        );
        assert!(record.detail.contains("excerpt:") && record.detail.len() < 8 << 10, "{} bytes of detail", record.detail.len());
        assert!(record.body.len() < 8 << 10, "{} bytes of body", record.body.len());
    }
    wait_until(WAIT, "the small event delivered and all acknowledged", || ks.all_acknowledged_through(&good)).await;
    assert_eq!(delivered_ids(&receiver), ["\"small\""]);
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("Linux /proc");
    let kib = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    (kib("VmRSS:") / 1024, kib("VmHWM:") / 1024)
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_ten_megabyte_entries_are_never_pulled_whole() {
    let ks = Keyspace::new("rss");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "c1", &[]).await;
    tenant_with_webhook(&service, "acme", &receiver).await;
    let (before, _) = memory_mib(service.pid());
    let big = format!(r#"{{"n":"{}"}}"#, "x".repeat(10 << 20));
    for _ in 0..20 {
        ks.publish("acme", "t", &big);
    }
    let good = ks.publish("acme", "t", r#"{"n":"small"}"#);
    wait_until(WAIT, "all handled and acknowledged", || ks.all_acknowledged_through(&good)).await;
    let records = dead_letters(&service, "acme", 20).await;
    assert!(
        records.iter().all(|r| r.reason == "too_large" && r.detail.contains("it was not read whole")),
        "{:?}",
        records.first().map(|r| &r.detail)
    );
    let (after, peak) = memory_mib(service.pid());
    eprintln!("RSS of wss: {before} MiB before, {after} MiB after, {peak} MiB at peak (200 MiB of entries appended)");
    // Pulled whole, the entries alone would be 200 MiB (the issue measured 956 MiB at peak).
    assert!(peak < before + 64, "peak RSS {peak} MiB from {before} MiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_dead_letter_page_exceeds_what_a_grpc_client_accepts() {
    // Nine records of 900 KB each (entries whose data is not JSON keep their fields, and their
    // body shows them): 8 MB, twice what a client decodes by default in one message.
    let ks = Keyspace::new("dl_pages");
    let service = Service::start(&ks, "c1", &[("WSS_MAX_EVENT_BYTES", "1048576")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let junk = format!("{{{}", "y".repeat(900 << 10));
    for _ in 0..9 {
        ks.publish("acme", "t", &junk);
    }
    // The test client keeps tonic's default 4 MiB decoding limit: a larger page would fail.
    let all = dead_letters(&service, "acme", 9).await;
    assert_eq!(all.len(), 9);
    assert!(all.iter().all(|r| r.reason == "data_not_json"));
    let first = grpc
        .deliveries()
        .list_dead_letters(wss::proto::ListDeadLettersRequest { tenant_id: "acme".into(), page_size: 100, ..Default::default() })
        .await
        .expect("a page within the message limit")
        .into_inner();
    assert!(first.dead_letters.len() < 9 && !first.next_page_token.is_empty(), "{} records in the first page", first.dead_letters.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn expressions_beyond_the_limits_are_refused_naming_field_and_limit() {
    let ks = Keyspace::new("expr_limits");
    let service = Service::start(&ks, "c1", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let deep = format!("{} == 0", vec!["1"; 1500].join("+"));
    let wide = format!("[{}]", vec!["[1, 2, 3]"; 300].join(","));
    for (filter, transform, field, limit) in [
        (deep.as_str(), "", "filter", "nesting depth"),
        ("", deep.as_str(), "transform", "nesting depth"),
        ("", wide.as_str(), "transform", "node count"),
    ] {
        let request = CreateWebhookRequest {
            tenant_id: "acme".into(),
            url: "http://127.0.0.1:9/h".into(),
            filter: filter.into(),
            transform: transform.into(),
            ..Default::default()
        };
        let status =
            assert_status(grpc.webhooks().create_webhook(request).await, Code::InvalidArgument, Some(field), "a too complex expression");
        assert!(status.message().contains(limit), "{}", status.message());
    }
}

/// A private `redis-server` that the test can stop and start again on the same port.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Self { port, child: None };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (./run-tests installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        let client = redis::Client::open(self.url()).unwrap();
        while client.get_connection_with_timeout(Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// (`/healthz` status, `/readyz` status and body, gRPC health, `wss_redis_up`, `wss_stream_lag`).
async fn health_of(service: &Service, metrics: std::net::SocketAddr) -> Result<(u16, u16, String, i32, String, String), String> {
    let (alive, _, _) = http_get(metrics, "/healthz", None)?;
    let (ready, _, why) = http_get(metrics, "/readyz", None)?;
    let grpc = service.grpc().await;
    let serving = grpc
        .health()
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .map_err(|s| format!("{s:?}"))?
        .into_inner()
        .status;
    let (_, _, text) = http_get(metrics, "/metrics", None)?;
    let gauge = |name: &str| text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_owned();
    Ok((alive, ready, why, serving, gauge("wss_redis_up"), gauge("wss_stream_lag")))
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_redis_going_away_and_coming_back() {
    let mut redis = PrivateRedis::start();
    let ks = Keyspace::new("health");
    let mut env = Service::env(&ks, "c1");
    env.retain(|(k, _)| k != "WSS_REDIS_URL");
    env.push(("WSS_REDIS_URL".into(), redis.url()));
    let mut service = Service::spawn("c1", env);
    service.wait_for_control_plane().await;
    let metrics = service.wait_for_metrics().await;
    const SERVING: i32 = 1;
    const NOT_SERVING: i32 = 2;
    eventually(WAIT, "ready with Redis up", || async {
        match health_of(&service, metrics).await? {
            (200, 200, _, SERVING, up, _) if up == "wss_redis_up 1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    redis.kill();
    eventually(WAIT, "not ready with Redis down, yet alive", || async {
        match health_of(&service, metrics).await? {
            (200, 503, why, NOT_SERVING, up, lag)
                if up == "wss_redis_up 0" && why.contains("Redis is unreachable") && lag == "wss_stream_lag -1" =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    redis.launch();
    eventually(WAIT, "ready again", || async {
        match health_of(&service, metrics).await? {
            (200, 200, _, SERVING, up, _) if up == "wss_redis_up 1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(service.try_wait().is_none(), "still running");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_query_or_header_value_reaches_the_log_at_trace() {
    const QUERY_SECRET: &str = "q-secret-4f2a9c";
    const HEADER_SECRET: &str = "h-secret-77b1e0";
    let ks = Keyspace::new("log_trace");
    let receiver = Receiver::ok();
    // Every dependency asked for by name too: naming one used to lift it to that level.
    let level = "trace,ureq=trace,ureq_proto=trace,rustls=trace,h2=trace,hyper=trace,tonic=trace,redis=trace";
    let mut service = Service::start(&ks, "c1", &[("WSS_LOG_LEVEL", level)]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let url = format!("{}?apikey={QUERY_SECRET}", receiver.url());
    grpc.create_webhook("acme", &url, |w| {
        w.headers.insert("Authorization".into(), format!("Bearer {HEADER_SECRET}"));
    })
    .await;
    let last = ks.publish("acme", "t", r#"{"n":1}"#);
    wait_until(WAIT, "delivered", || ks.all_acknowledged_through(&last)).await;
    assert_eq!(receiver.requests().len(), 1);
    service.terminate().await;
    let lines = service.lines();
    assert!(lines.iter().any(|l| l.contains("TRACE") || l.contains("DEBUG")), "the run logged at trace/debug level");
    for line in &lines {
        assert!(!line.contains(QUERY_SECRET) && !line.contains(HEADER_SECRET), "leaked: {line}");
    }
}
