//! Prometheus `/metrics` and `/status.json` on `WSS_METRICS_ADDR` (issue 8): counters move as
//! deliveries succeed, fail and retry, and dead-letter; a bad entry counts under its reason; the
//! circuit gauge follows a failing webhook and goes when the webhook is deleted; the output is
//! Prometheus text; the status data needs the admin token; a taken port, or a public one without
//! a token, stops the start.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{http_get, wait_until, Keyspace, Receiver, Recorded, Service, WAIT};
use wss::proto::DeleteWebhookRequest;

/// Samples of a Prometheus text exposition, by series as written (`name{labels}`), after
/// checking its shape: every sample line is `name[{labels}] value`, and its family was declared
/// by a `# TYPE` line before it (histograms: `_bucket`, `_sum`, `_count` of a declared
/// histogram).
fn parse_exposition(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| format!("bad TYPE line {line:?}"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("unknown type in {line:?}"));
            }
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            return Err(format!("a comment that is neither HELP nor TYPE: {line:?}"));
        }
        let name_end =
            line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).ok_or_else(|| format!("no value in {line:?}"))?;
        let name = &line[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("bad metric name in {line:?}"));
        }
        let mut rest = &line[name_end..];
        let mut series = name.to_owned();
        if rest.starts_with('{') {
            // Label values are quoted; a `}` inside quotes does not close the set.
            let (mut quoted, mut escaped, mut close) = (false, false, None);
            for (i, c) in rest.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    '}' if !quoted => {
                        close = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let close = close.ok_or_else(|| format!("unclosed labels in {line:?}"))?;
            let labels = &rest[1..close];
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (label, value) = pair.split_once("=\"").ok_or_else(|| format!("bad label {pair:?} in {line:?}"))?;
                if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || value.contains('\n') {
                    return Err(format!("bad label {pair:?} in {line:?}"));
                }
            }
            series.push_str(&rest[..=close]);
            rest = &rest[close + 1..];
        }
        let value = rest.strip_prefix(' ').ok_or_else(|| format!("no space before the value in {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().map_err(|_| format!("bad value in {line:?}"))?,
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| types.get(*base).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("sample {line:?} has no # TYPE line before it"));
        }
        samples.insert(series, value);
    }
    Ok(samples)
}

/// The metrics now, checked for shape.
fn scrape(addr: std::net::SocketAddr) -> Result<(BTreeMap<String, f64>, String), String> {
    let (status, content_type, body) = http_get(addr, "/metrics", None)?;
    if status != 200 || !content_type.starts_with("text/plain; version=0.0.4") {
        return Err(format!("GET /metrics: {status} {content_type:?}"));
    }
    Ok((parse_exposition(&body)?, body))
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(f64::NAN)
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    assert!(parse_exposition("# TYPE a counter\na 1\na{x=\"}\"} 2\n").is_ok());
    assert!(parse_exposition("a 1\n").unwrap_err().contains("no # TYPE"));
    assert!(parse_exposition("# TYPE a counter\na one\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na{x=1} 1\n").is_err());
    assert!(parse_exposition("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n").is_ok());
    assert!(parse_exposition("# TYPE g gauge\nh_count 1\n").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_deliveries_retries_dead_letters_and_bad_entries() {
    let ks = Keyspace::new("metrics");
    let ok = Receiver::ok();
    let flaky = Receiver::failing_first(1);
    let broken = Receiver::always(500);
    // Two failures open a circuit, long enough to be seen open.
    let env = [("WSS_CIRCUIT_FAILURES", "2"), ("WSS_CIRCUIT_COOLDOWN", "10m")];
    let service = Service::start(&ks, "metrics", &env).await;
    let addr = service.wait_for_metrics().await;
    let grpc = service.grpc().await;
    grpc.create_policy("twice", 2, 100, 100).await;
    grpc.create_tenant("acme").await;
    let quick = |r: &mut wss::proto::CreateWebhookRequest| r.retry_policy_id = "twice".into();
    let ok_hook = grpc.create_webhook("acme", &ok.url(), quick).await;
    let flaky_hook = grpc.create_webhook("acme", &flaky.url(), quick).await;
    let broken_hook = grpc.create_webhook("acme", &broken.url(), quick).await;

    let (before, _) = scrape(addr).unwrap();
    assert_eq!(value(&before, "wss_deliveries_total{outcome=\"delivered\"}"), 0.0, "every series is there from the start, at 0");
    assert_eq!(value(&before, "wss_in_flight_limit"), 10_000.0);

    let good = ks.publish("acme", "order.created", r#"{"n":1}"#);
    let bad = ks.xadd(&[("tenant", "acme"), ("type", "order.created")]); // no data
    ok.wait_for_requests(1, "the healthy webhook's delivery", Recorded::delivered).await;
    flaky.wait_for_requests(1, "the flaky webhook's retry delivered", Recorded::delivered).await;
    wait_until(WAIT, "both entries acknowledged", || ks.all_acknowledged_through(&bad)).await;
    assert!(bad > good);

    let expected: &[(&str, f64)] = &[
        ("wss_events_read_total", 2.0),
        ("wss_deliveries_total{outcome=\"delivered\"}", 2.0),
        ("wss_deliveries_total{outcome=\"retry_scheduled\"}", 2.0),
        ("wss_deliveries_total{outcome=\"dead_lettered\"}", 1.0),
        ("wss_dead_letters_total{reason=\"max_attempts_exhausted\"}", 1.0),
        ("wss_dead_letters_total{reason=\"missing_field\"}", 1.0),
        ("wss_bad_entries_total{reason=\"missing_field\"}", 1.0),
        ("wss_bad_entries_total{reason=\"data_not_json\"}", 0.0),
        ("wss_events_unrouted_total", 0.0),
        ("wss_delivery_attempts_total{class=\"2xx\"}", 2.0),
        ("wss_delivery_attempts_total{class=\"5xx\"}", 3.0),
        ("wss_delivery_attempts_total{class=\"error\"}", 0.0),
        ("wss_delivery_attempt_duration_seconds_count", 5.0),
        ("wss_delivery_attempt_duration_seconds_bucket{le=\"+Inf\"}", 5.0),
        ("wss_backlog_deliveries", 0.0),
        ("wss_backlog_handed_off_total", 2.0),
        ("wss_backlog_taken_total", 2.0),
        ("wss_in_flight_entries", 0.0),
        ("wss_parked_deliveries", 0.0),
        ("wss_stream_lag", 0.0),
        ("wss_stream_pending", 0.0),
        ("wss_stream_trimmed_entries_total", 0.0),
        ("wss_dead_letter_stream_length", 2.0),
        ("wss_redis_outages_total", 0.0),
        ("wss_channel_depth{edge=\"completions\"}", 0.0),
    ];
    let open_circuit = format!("wss_circuit_open{{webhook=\"{}\"}}", broken_hook.webhook_id);
    let (samples, text) = wait_until(WAIT, "the counters to reach the expected values", || {
        let (samples, text) = scrape(addr)?;
        let wrong: Vec<String> = expected
            .iter()
            .chain([(open_circuit.as_str(), 1.0)].iter())
            .filter(|(series, want)| value(&samples, series) != *want)
            .map(|(series, want)| format!("{series} = {} (want {want})", value(&samples, series)))
            .collect();
        if wrong.is_empty() {
            Ok((samples, text))
        } else {
            Err(wrong.join(", "))
        }
    })
    .await;
    for (family, kind) in [
        ("wss_events_read_total", "counter"),
        ("wss_deliveries_total", "counter"),
        ("wss_dead_letters_total", "counter"),
        ("wss_delivery_attempt_duration_seconds", "histogram"),
        ("wss_backlog_deliveries", "gauge"),
        ("wss_backlog_handed_off_total", "counter"),
        ("wss_stream_lag", "gauge"),
        ("wss_circuit_open", "gauge"),
        ("wss_channel_depth", "gauge"),
    ] {
        assert!(text.contains(&format!("\n# TYPE {family} {kind}\n")), "# TYPE {family} {kind} in:\n{text}");
    }
    for edge in ["inbound", "fresh", "due", "signed", "completions"] {
        assert!(samples.contains_key(&format!("wss_channel_depth{{edge=\"{edge}\"}}")), "depth of {edge}");
    }
    // Healthy webhooks have no circuit series; no label carries a tenant.
    for hook in [&ok_hook, &flaky_hook] {
        assert!(!text.contains(&format!("webhook=\"{}\"", hook.webhook_id)), "{text}");
    }
    assert!(!text.contains("acme"), "no tenant label: {text}");
    assert!(!text.contains(&broken_hook.secret) && !text.contains(&ok_hook.secret), "no secret in the metrics");

    // The status data shows the broken webhook failing, the healthy one not. Its counts are the
    // stored stats, which the outcome stage writes about once a second.
    let (body, json) = wait_until(WAIT, "the stored stats of the broken and the healthy webhook on the status page", || {
        let (status, content_type, body) = http_get(addr, "/status.json", None).map_err(|e| e.to_string())?;
        assert_eq!((status, content_type.as_str()), (200, "application/json"), "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let written = json["tenants"].as_array().into_iter().flatten().filter(|t| t["tenant_id"] == "acme").any(|t| {
            let hooks = t["webhooks"].as_array().into_iter().flatten();
            let mut counted = hooks.filter(|w| {
                (w["webhook_id"] == broken_hook.webhook_id.as_str() && w["dead_letters"] == 1)
                    || (w["webhook_id"] == ok_hook.webhook_id.as_str() && w["success_rate"] == 1.0)
            });
            counted.next().is_some() && counted.next().is_some()
        });
        if written {
            Ok((body, json))
        } else {
            Err(format!("not yet: {body}"))
        }
    })
    .await;
    let tenant = json["tenants"].as_array().unwrap().iter().find(|t| t["tenant_id"] == "acme").unwrap_or_else(|| panic!("{json}"));
    let row = |id: &str| {
        tenant["webhooks"].as_array().unwrap().iter().find(|w| w["webhook_id"] == id).cloned().unwrap_or_else(|| panic!("{id} in {json}"))
    };
    let broken_row = row(&broken_hook.webhook_id);
    assert_eq!(broken_row["failing"], true, "{broken_row}");
    assert_eq!(broken_row["circuit"], "open", "{broken_row}");
    assert_eq!((broken_row["failed"].as_u64(), broken_row["dead_letters"].as_u64()), (Some(2), Some(1)), "{broken_row}");
    assert!(broken_row["last_error"].as_str().unwrap().contains("HTTP 500"), "{broken_row}");
    let ok_row = row(&ok_hook.webhook_id);
    assert_eq!((ok_row["failing"].as_bool(), ok_row["success_rate"].as_f64()), (Some(false), Some(1.0)), "{ok_row}");
    assert_eq!(row(&flaky_hook.webhook_id)["failing"], false, "its last attempt succeeded");
    assert_eq!(tenant["dead_letters"], 1, "its webhooks' dead letters (the bad entry is counted by reason, not by tenant): {tenant}");
    assert_eq!(json["pipeline"]["stream_lag"], 0, "{json}");
    assert!(!body.contains(&broken_hook.secret) && !body.contains("/hook"), "no secret or URL path on the page: {body}");

    // A deleted webhook's circuit series goes.
    grpc.webhooks().delete_webhook(DeleteWebhookRequest { webhook_id: broken_hook.webhook_id.clone() }).await.expect("DeleteWebhook");
    wait_until(WAIT, "the deleted webhook's circuit series to go", || {
        let (samples, _) = scrape(addr)?;
        if samples.contains_key(&open_circuit) {
            Err(format!("{open_circuit} still exported"))
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_waiting_for_a_slow_webhook_show_as_parked_and_in_the_backlog() {
    let ks = Keyspace::new("metrics_parked");
    // One attempt at a time, each taking 5 s: the other two wait in the signer meanwhile (the
    // webhook's pace is not known before its first attempt ends), until they have waited there
    // 5 s: then what is still parked goes to the backlog.
    let slow = Receiver::slow(std::time::Duration::from_secs(5));
    let service = Service::start(&ks, "metrics-parked", &[("WSS_WEBHOOK_CONCURRENCY", "1")]).await;
    let addr = service.wait_for_metrics().await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let hook = grpc.create_webhook("acme", &slow.url(), |_| {}).await;
    for n in 0..3 {
        ks.publish("acme", "t", &format!("{{\"n\":{n}}}"));
    }
    wait_until(WAIT, "one delivery in flight and two parked, in the metrics and the status data", || {
        let (samples, _) = scrape(addr)?;
        let (_, _, body) = http_get(addr, "/status.json", None)?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let row = json["tenants"][0]["webhooks"][0].clone();
        let seen = (
            value(&samples, "wss_parked_deliveries"),
            row["webhook_id"].as_str() == Some(&hook.webhook_id),
            row["in_flight"].as_u64(),
            row["parked"].as_u64(),
            row["backlog"].as_u64(),
        );
        if seen == (2.0, true, Some(1), Some(2), Some(0)) {
            Ok(())
        } else {
            Err(format!("{seen:?}: {row}"))
        }
    })
    .await;
    wait_until(WAIT, "a delivery parked for 5 s moved to the backlog, in the status data", || {
        let (_, _, body) = http_get(addr, "/status.json", None)?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let row = json["tenants"][0]["webhooks"][0].clone();
        match (row["backlog"].as_u64(), row["backlog_oldest_age_ms"].is_u64()) {
            (Some(1), true) => Ok(()),
            other => Err(format!("{other:?}: {row}")),
        }
    })
    .await;
    // Sampled every 5 s; the backlog holds its delivery for about 5.
    let depth = format!("wss_backlog_depth{{webhook=\"{}\"}}", hook.webhook_id);
    wait_until(WAIT, "the backlog in the metrics", || {
        let (samples, _) = scrape(addr)?;
        match (value(&samples, &depth), value(&samples, "wss_backlog_deliveries"), value(&samples, "wss_backlog_webhooks")) {
            (1.0, 1.0, 1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    slow.wait_for_requests(3, "all three delivered", Recorded::delivered).await;
    wait_until(WAIT, "nothing parked any more", || {
        let (samples, _) = scrape(addr)?;
        let (_, _, body) = http_get(addr, "/status.json", None)?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let row = &json["tenants"][0]["webhooks"][0];
        match (value(&samples, "wss_parked_deliveries"), row["parked"].as_u64()) {
            (0.0, Some(0)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_data_needs_the_admin_token_and_the_metrics_do_not() {
    const TOKEN: &str = "admin-token-for-the-status-page-0123";
    let ks = Keyspace::new("status_auth");
    let service = Service::start(&ks, "status-auth", &[("WSS_ADMIN_TOKEN", TOKEN)]).await;
    let addr = service.wait_for_metrics().await;

    let (status, _, auth) = http_get(addr, "/status/auth.json", None).unwrap();
    assert_eq!((status, auth.as_str()), (200, r#"{"token_required":true}"#));
    for wrong in [None, Some("not-the-admin-token-at-all-0000"), Some("")] {
        let (status, _, body) = http_get(addr, "/status.json", wrong).unwrap();
        assert_eq!(status, 401, "token {wrong:?}: {body}");
        assert!(body.contains("WSS_ADMIN_TOKEN") && !body.contains(TOKEN), "{body}");
    }
    let (status, _, body) = http_get(addr, "/status.json", Some(TOKEN)).unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["instance"], "status-auth", "{json}");
    assert!(!body.contains(TOKEN));

    let (status, content_type, page) = http_get(addr, "/", None).unwrap();
    assert_eq!((status, content_type.as_str()), (200, "text/html; charset=utf-8"));
    assert!(
        page.contains("/status.json") && !page.contains("http://") && !page.contains("https://"),
        "a static page with no external asset"
    );
    assert!(scrape(addr).is_ok(), "/metrics is open");
    let (status, _, _) = http_get(addr, "/nothing-here", None).unwrap();
    assert_eq!(status, 404);
    assert!(!service.lines().iter().any(|l| l.contains(TOKEN)), "the token never reaches the log");

    // The headers: the page's content security policy, live data never cached, the methods.
    let page = raw_request(addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.to_ascii_lowercase().contains("\r\ncontent-security-policy: default-src 'none'; script-src 'unsafe-inline';"), "{page}");
    let head = raw_request(addr, "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "HEAD: the headers only: {head}");
    let data =
        raw_request(addr, &format!("GET /status.json HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"));
    let data = data.to_ascii_lowercase();
    assert!(data.contains("\r\ncache-control: no-store\r\n") && data.contains("\r\ncontent-type: application/json\r\n"), "{data}");
    let unauthorized = raw_request(addr, "GET /status.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(unauthorized.to_ascii_lowercase().contains("\r\nwww-authenticate: bearer realm=\"wss\"\r\n"), "{unauthorized}");
    for target in ["/status.json", "/nothing-here"] {
        let post = raw_request(addr, &format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
        assert!(post.starts_with("HTTP/1.1 405") && post.to_ascii_lowercase().contains("\r\nallow: get, head\r\n"), "{post}");
    }
}

/// Sends `request` as it is and reads the answer to the end (the request says `Connection: close`).
fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_or_public_metrics_address_stops_the_start_naming_the_variable() {
    let ks = Keyspace::new("metrics_taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut env = Service::env(&ks, "metrics-taken");
    env.retain(|(k, _)| k != "WSS_METRICS_ADDR");
    env.push(("WSS_METRICS_ADDR".into(), addr.clone()));
    let mut service = Service::spawn("metrics-taken", env);
    let line = service.wait_for_log("binding the metrics and status page listener", WAIT).await;
    assert!(line.contains("WSS_METRICS_ADDR") && line.contains(&addr), "{line}");
    let status = wait_until(WAIT, "wss to exit", || service.try_wait().ok_or_else(|| "still running".to_owned())).await;
    assert!(!status.success(), "{status:?}");

    // A public address without an admin token is refused, as for the control plane.
    let ks = Keyspace::new("metrics_public");
    let mut env = Service::env(&ks, "metrics-public");
    env.retain(|(k, _)| k != "WSS_METRICS_ADDR");
    env.push(("WSS_METRICS_ADDR".into(), "0.0.0.0:0".into()));
    let mut service = Service::spawn("metrics-public", env);
    let line = service.wait_for_log("refusing to serve the status page on 0.0.0.0:0", WAIT).await;
    assert!(line.contains("WSS_ADMIN_TOKEN") && line.contains("WSS_METRICS_ADDR"), "the refusal says what to do: {line}");
    let status = wait_until(WAIT, "wss to exit", || service.try_wait().ok_or_else(|| "still running".to_owned())).await;
    assert!(!status.success(), "{status:?}");

    // And `off` serves nothing, without complaint.
    let ks = Keyspace::new("metrics_off");
    let service = Service::start(&ks, "metrics-off", &[("WSS_METRICS_ADDR", "off")]).await;
    service.wait_for_log("WSS_METRICS_ADDR=off", WAIT).await;
    drop(taken);
}

/// Issue 16: the event-to-delivery latency, the oldest pending entry's age, the build and the
/// process. A receiver holds the first request until the test lets it go, so that the entry is
/// seen pending (its age above 0), then goes back to 0 once it is acknowledged; the delivery is
/// counted in the latency histogram, retry and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_oldest_pending_age_build_and_process_are_exported() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let ks = Keyspace::new("metrics_latency");
    let release = Arc::new(AtomicBool::new(false));
    let held = release.clone();
    let receiver = Receiver::start(move |_| {
        // The receiver's own slowness (the service's attempt timeout is 30 s by default); the
        // test does not wait on it, it polls /metrics.
        while !held.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        common::Reply::status(200)
    });
    let service = Service::start(&ks, "metrics-latency", &[]).await;
    let addr = service.wait_for_metrics().await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;

    let (before, text) = scrape(addr).unwrap();
    assert_eq!(value(&before, "wss_event_delivery_latency_seconds_count"), 0.0);
    assert_eq!(value(&before, "wss_oldest_pending_age_seconds"), 0.0);
    assert!(text.contains("\n# TYPE wss_event_delivery_latency_seconds histogram\n"), "{text}");
    let build = format!("wss_build_info{{profile=\"debug\",version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    let release_build = build.replace("debug", "release");
    assert!(value(&before, &build) == 1.0 || value(&before, &release_build) == 1.0, "{text}");
    assert!(value(&before, "process_resident_memory_bytes") > 1_000_000.0, "{text}");
    assert!(value(&before, "process_open_fds") >= 3.0, "{text}");
    assert!(value(&before, "process_threads") >= 8.0, "the pipeline's and 8 sender threads: {text}");
    assert!(value(&before, "process_cpu_seconds_total") >= 0.0, "{text}");
    assert!(value(&before, "process_start_time_seconds") > 1.6e9, "{text}");

    let entry = ks.publish("acme", "order.created", r#"{"n":1}"#);
    wait_until(WAIT, "the held entry's age in wss_oldest_pending_age_seconds", || {
        let (samples, _) = scrape(addr)?;
        let age = value(&samples, "wss_oldest_pending_age_seconds");
        if age > 0.0 {
            Ok(())
        } else {
            Err(format!("age {age}"))
        }
    })
    .await;
    release.store(true, Ordering::SeqCst);
    receiver.wait_for_requests(1, "the delivery", Recorded::delivered).await;
    wait_until(WAIT, "the entry acknowledged", || ks.all_acknowledged_through(&entry)).await;
    let samples = wait_until(WAIT, "one delivery in the latency histogram and nothing pending", || {
        let (samples, _) = scrape(addr)?;
        let (count, age) = (value(&samples, "wss_event_delivery_latency_seconds_count"), value(&samples, "wss_oldest_pending_age_seconds"));
        if count == 1.0 && age == 0.0 {
            Ok(samples)
        } else {
            Err(format!("count {count}, age {age}"))
        }
    })
    .await;
    assert_eq!(value(&samples, "wss_event_delivery_latency_seconds_bucket{le=\"+Inf\"}"), 1.0);
    // It waited for the receiver at least as long as the entry was seen pending.
    assert!(value(&samples, "wss_event_delivery_latency_seconds_sum") > 0.0);
}
