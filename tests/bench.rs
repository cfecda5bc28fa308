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
