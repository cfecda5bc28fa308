//! `wss bench --quick --json` end to end: it starts its own redis-server, the service and its
//! receivers, and prints one JSON object. Checked here: the run succeeds and every figure the
//! issue names is there, positive and finite. Never the speed — that is the machine's, not the
//! code's (the figures are in docs/performance.md).

use std::process::Command;

/// The keys issue 7 fixes for `--json`, the isolation measurement of issue 4, the backlog part of
/// issue 12 and the HTTPS throughput of issue 19.
const KEYS: [&str; 16] = [
    "deliveries_per_sec",
    "raw_per_sec",
    "ratio",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "slow_receiver_per_sec",
    "peak_rss_mib",
    "idle_rss_mib_10k_webhooks",
    "neighbor_p99_ms",
    "backlog_rss_mib",
    "redis_bytes_per_waiting_delivery",
    "isolation_baseline_per_sec",
    "isolation_hanging_per_sec",
    "isolation_ratio",
    "https_per_sec",
];

#[test]
fn a_quick_bench_reports_every_figure() {
    let output = Command::new(env!("CARGO_BIN_EXE_wss")).args(["bench", "--quick", "--json"]).output().expect("running wss bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "wss bench --quick --json failed ({}):\n{stderr}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{stderr}"));
    for key in KEYS {
        let value = report.get(key).and_then(serde_json::Value::as_f64);
        assert!(
            value.is_some_and(|v| v.is_finite() && v > 0.0),
            "{key} should be a positive number, got {:?}; the report: {report}\nstderr:\n{stderr}",
            report.get(key)
        );
    }
    assert!(report["p50_ms"].as_f64() <= report["p99_ms"].as_f64(), "p50 ≤ p99: {report}");
    assert!(report["signatures_verified"].as_u64().is_some_and(|n| n > 0), "the receivers verified a sample of signatures: {report}");
    assert!(report["backlog_waiting"].as_u64().is_some_and(|n| n > 0), "deliveries waited in the backlog: {report}");
    assert!(report["isolation_hanging_requests"].as_u64().is_some_and(|n| n > 0), "the hanging receiver got requests: {report}");
    assert!(report["https_connections"].as_u64().is_some_and(|n| n > 0), "the HTTPS receiver counted its TLS connections: {report}");
    let scaling = report["scaling"].as_array().expect("a scaling series");
    assert_eq!(scaling.len(), 3, "{report}");
    assert!(scaling.iter().all(|p| p["deliveries_per_sec"].as_f64().is_some_and(|v| v.is_finite() && v > 0.0)), "{report}");
}

/// Issue 18: the throughput part runs the bare pipeline too, with figures in the same units as
/// the service's.
#[test]
fn the_throughput_part_reports_the_bare_pipeline() {
    let output = Command::new(env!("CARGO_BIN_EXE_wss"))
        .args(["bench", "--quick", "--json", "--only", "throughput", "--events", "400", "--latency-time", "200ms"])
        .output()
        .expect("running wss bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "wss bench --only throughput failed ({}):\n{stderr}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{stderr}"));
    let number = |key: &str| {
        let value = report.get(key).and_then(serde_json::Value::as_f64);
        assert!(
            value.is_some_and(|v| v.is_finite() && v > 0.0),
            "{key} should be a positive number, got {:?}; the report: {report}",
            report.get(key)
        );
        value.unwrap_or_default()
    };
    for key in [
        "bare_per_sec",
        "bare_cpu_us_per_delivery",
        "ratio_to_bare",
        "service_cpu_us_per_delivery",
        "service_context_switches_per_delivery",
    ] {
        number(key);
    }
    // Counted from INFO commandstats of the private Redis: the producer's XADD (1 per
    // delivery) and, for the bare pipeline, batched XREADGROUP and XACK — a few more at most.
    let bare_commands = number("bare_redis_commands_per_delivery");
    assert!(
        (1.0..1.5).contains(&bare_commands),
        "the bare pipeline reads and acknowledges in batches: {bare_commands} commands per delivery"
    );
    let service_commands = number("redis_commands_per_delivery");
    assert!(service_commands >= bare_commands, "the service does at least the bare pipeline's work: {report}");
    // The bare pipeline's wake-ups are counted on the same /proc files as the service's.
    assert!(report["bare_context_switches_per_delivery"].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0), "{report}");
    let ratio = number("ratio_to_bare");
    let expected = number("deliveries_per_sec") / number("bare_per_sec");
    assert!((ratio - expected).abs() < 1e-9 * expected.max(1.0), "ratio_to_bare = deliveries_per_sec / bare_per_sec: {report}");
}
