//! The admin CLI (`wss tenant|webhook|policy|token|delivery|dead-letter|event …`, issue 16) as an
//! operator uses it: the built binary against a live `wss serve` on a private Redis, with an
//! admin token. One walk-through: create a tenant, a policy and a webhook, list and update them,
//! publish an event that dead-letters at a failing receiver, list its delivery and dead letter,
//! fix the receiver and redeliver by reason, issue a tenant token, use it and revoke it — checking
//! both output formats and that the server's refusals come out as `CODE: message` with a non-zero
//! exit. This test is also CI's CLI walk-through (`./run-tests` runs it).
//!
//! Also `wss config check`: the shipped `deploy/wss.toml` passes, and a broken file gets every
//! problem reported.

mod common;

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use common::{assert_signed, wait_until, Keyspace, Receiver, Reply, Service, WAIT};
use serde_json::Value;

const ADMIN_TOKEN: &str = "cli-walkthrough-admin-token-0123456789";

/// What one `wss …` run printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The JSON document on stdout; panics when the command failed or printed something else.
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "the command failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs the built `wss` with `args` against `server` (WSS_SERVER), with `token` as WSS_TOKEN;
/// stdout is a pipe, so the default output is JSON.
fn wss(server: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wss"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WSS_") {
            cmd.env_remove(&name);
        }
    }
    cmd.env("WSS_SERVER", server).args(args).stdin(Stdio::null());
    if let Some(token) = token {
        cmd.env("WSS_TOKEN", token);
    }
    let out = cmd.output().expect("running wss");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_quickstart_flow_with_wss_commands_only() {
    let ks = Keyspace::new("cli_admin");
    let service = Service::start(&ks, "cli", &[("WSS_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let server = service.grpc_addr.expect("the control plane listens").to_string();
    let admin = |args: &[&str]| wss(&server, Some(ADMIN_TOKEN), args);
    let fixed = Arc::new(AtomicBool::new(false));
    let flag = fixed.clone();
    let receiver = Receiver::start(move |_| Reply::status(if flag.load(Ordering::SeqCst) { 200 } else { 500 }));

    // Refusals: code and message on stderr, exit status 1, nothing on stdout.
    let anonymous = wss(&server, None, &["tenant", "list"]);
    assert_eq!(anonymous.code, 1, "{}", anonymous.stderr);
    assert!(anonymous.stderr.starts_with("wss: UNAUTHENTICATED: ") && anonymous.stderr.contains("WSS_TOKEN"), "{}", anonymous.stderr);
    assert!(anonymous.stdout.is_empty());

    // Tenant and policy.
    let tenant = admin(&["tenant", "create", "acme", "--display-name", "Acme Corp"]).json();
    assert_eq!((tenant["tenant_id"].as_str(), tenant["display_name"].as_str()), (Some("acme"), Some("Acme Corp")));
    let again = admin(&["tenant", "create", "acme"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.starts_with("wss: ALREADY_EXISTS: ") && again.stderr.contains("acme"), "{}", again.stderr);
    let policy = admin(&["policy", "create", "once", "--max-attempts", "1", "--initial-backoff", "100ms", "--max-backoff", "1s"]).json();
    assert_eq!((policy["max_attempts"].as_u64(), policy["initial_backoff"].as_str()), (Some(1), Some("100ms")));

    // Webhook: the secret is shown once, at creation; a bad URL names the field.
    let bad = admin(&["webhook", "create", "--tenant", "acme", "--url", "ftp://example.com/hook"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.starts_with("wss: INVALID_ARGUMENT: url"), "{}", bad.stderr);
    let url = receiver.url();
    let created =
        admin(&["webhook", "create", "--tenant", "acme", "--url", &url, "--event-type", "order.*", "--retry-policy", "once"]).json();
    let webhook_id = created["webhook_id"].as_str().expect("a webhook id").to_owned();
    let secret = created["secret"].as_str().expect("the secret, shown at creation").to_owned();
    assert_eq!(created["event_types"], serde_json::json!(["order.*"]));
    let got = admin(&["webhook", "get", &webhook_id]).json();
    assert!(got.get("secret").is_none(), "the secret is shown only once: {got}");

    // Lists in both formats.
    let tenants = admin(&["tenant", "list"]).json();
    assert_eq!(tenants["tenants"].as_array().map(|t| t.len()), Some(1), "{tenants}");
    let table = admin(&["tenant", "list", "--output", "table"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("TENANT_ID") && lines[0].contains("DISPLAY_NAME"), "{}", table.stdout);
    assert!(lines[1].starts_with("acme ") && lines[1].contains("Acme Corp"), "{}", table.stdout);
    let webhooks = admin(&["webhook", "list", "--tenant", "acme", "-o", "table"]);
    assert!(webhooks.stdout.contains(&webhook_id) && webhooks.stdout.contains("order.*"), "{}", webhooks.stdout);

    // Update.
    let updated = admin(&["webhook", "update", &webhook_id, "--description", "orders to the ERP", "--header", "X-Team=ops"]).json();
    assert_eq!(updated["description"], "orders to the ERP");
    assert_eq!(updated["headers"]["X-Team"], "ops");
    assert_eq!(updated["event_types"], serde_json::json!(["order.*"]), "fields not given stay");

    // Ordering and rate limit (docs/ordering.md, docs/rate-limits.md), on a webhook that gets nothing.
    let fifo = admin(&[
        "webhook",
        "create",
        "--tenant",
        "acme",
        "--url",
        &url,
        "--event-type",
        "never.*",
        "--ordering",
        "fifo",
        "--rate-limit",
        "5",
    ])
    .json();
    assert_eq!((fifo["ordering"].as_str(), fifo["rate_limit_per_second"].as_u64()), (Some("fifo"), Some(5)), "{fifo}");
    let fifo_id = fifo["webhook_id"].as_str().expect("a webhook id").to_owned();
    let changed = admin(&["webhook", "update", &fifo_id, "--ordering", "unordered"]).json();
    assert_eq!((changed["ordering"].as_str(), changed["rate_limit_per_second"].as_u64()), (Some("unordered"), Some(5)), "{changed}");
    let too_fast = admin(&["webhook", "update", &fifo_id, "--rate-limit", "1000000"]);
    assert!(too_fast.stderr.starts_with("wss: INVALID_ARGUMENT: rate_limit_per_second"), "{}", too_fast.stderr);
    let table = admin(&["webhook", "list", "--tenant", "acme", "-o", "table"]);
    assert!(
        table.stdout.lines().next().is_some_and(|head| head.contains("ORDERING") && head.contains("RATE_LIMIT_PER_SECOND")),
        "{}",
        table.stdout
    );
    assert_eq!(admin(&["webhook", "delete", &fifo_id]).code, 0);

    // Publish: the receiver answers 500 and the policy allows one attempt, so it dead-letters.
    let published = admin(&["event", "publish", "--tenant", "acme", "--type", "order.created", "--data", r#"{"order_id":"A-1"}"#]).json();
    let event_id = published["event_id"].as_str().expect("an event id").to_owned();
    let deliveries = wait_until(WAIT, "the delivery to be dead-lettered", || {
        let list = admin(&["delivery", "list", "--tenant", "acme", "--status", "dead-lettered"]).json();
        match list["deliveries"].as_array() {
            Some(d) if d.len() == 1 => Ok(list),
            _ => Err(format!("not yet: {list}")),
        }
    })
    .await;
    let delivery = &deliveries["deliveries"][0];
    assert_eq!((delivery["event_id"].as_str(), delivery["webhook_id"].as_str()), (Some(event_id.as_str()), Some(webhook_id.as_str())));
    assert_eq!(delivery["attempts"][0]["status_code"], 500);
    let delivery_id = delivery["delivery_id"].as_str().expect("a delivery id");
    let shown = admin(&["delivery", "get", delivery_id, "-o", "table"]);
    assert!(shown.stdout.contains("dead_lettered") && shown.stdout.contains("status_code=500"), "{}", shown.stdout);
    let dead = admin(&["dead-letter", "list", "--tenant", "acme"]).json();
    assert_eq!(dead["dead_letters"][0]["reason"], "max_attempts_exhausted", "{dead}");
    // Counts are cluster-wide, written at most a second late.
    wait_until(WAIT, "the failed attempt in the webhook's stats", || {
        let stats = admin(&["webhook", "stats", &webhook_id, "--window", "10m", "-o", "table"]);
        match stats.stdout.lines().any(|l| l.starts_with("attempts_failed") && l.trim_end().ends_with(" 1")) {
            true => Ok(()),
            false => Err(stats.stdout),
        }
    })
    .await;

    // Redeliver by reason once the receiver is fixed: it arrives, signed, with the same event id;
    // the second run finds nothing.
    fixed.store(true, Ordering::SeqCst);
    let redelivered = admin(&["dead-letter", "redeliver", "--tenant", "acme", "--reason", "max_attempts_exhausted"]).json();
    assert_eq!(redelivered["redelivered_count"], 1, "{redelivered}");
    let requests = receiver.wait_for_requests(1, "redelivered requests", |r| r.delivered()).await;
    let arrived = requests.iter().find(|r| r.delivered()).expect("a delivered request");
    assert_eq!(arrived.event_id(), event_id);
    assert_signed(&secret, arrived);
    let none = admin(&["dead-letter", "redeliver", "--tenant", "acme", "--reason", "max_attempts_exhausted", "-o", "table"]);
    assert!(none.stdout.starts_with("redelivered 0 dead letter(s)"), "{}", none.stdout);

    // A tenant token reaches its own tenant until it is revoked.
    let issued = admin(&["token", "create", "--tenant", "acme", "--description", "acme's deploy bot"]).json();
    let (token_id, token) = (issued["token_id"].as_str().expect("an id"), issued["token"].as_str().expect("the token"));
    let own = wss(&server, Some(token), &["webhook", "list"]).json();
    assert_eq!(own["webhooks"][0]["webhook_id"], webhook_id.as_str());
    let denied = wss(&server, Some(token), &["tenant", "list"]);
    assert!(denied.code == 1 && denied.stderr.starts_with("wss: PERMISSION_DENIED"), "{}", denied.stderr);
    let tokens = admin(&["token", "list", "--tenant", "acme", "-o", "table"]);
    assert!(tokens.stdout.contains(token_id) && !tokens.stdout.contains(token), "{}", tokens.stdout);
    let revoked = admin(&["token", "revoke", token_id, "-o", "table"]);
    assert_eq!(revoked.stdout, format!("revoked token {token_id}\n"));
    let after = wss(&server, Some(token), &["webhook", "list"]);
    assert!(after.code == 1 && after.stderr.starts_with("wss: UNAUTHENTICATED"), "{}", after.stderr);

    // Deleting the tenant takes its webhook.
    let deleted = admin(&["tenant", "delete", "acme"]).json();
    assert_eq!(deleted["deleted_webhooks"], 1);
    drop(service);
}

#[test]
fn a_server_that_is_not_there_is_an_error_that_says_where_it_looked() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let run = wss(&format!("127.0.0.1:{port}"), None, &["tenant", "list"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("127.0.0.1:{port}")) && run.stderr.contains("WSS_SERVER"), "{}", run.stderr);
}

#[test]
fn config_check_passes_the_shipped_example_and_reports_every_problem_of_a_broken_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/wss.toml");
    let run = wss("unused", None, &["config", "check", example]);
    assert_eq!(run.code, 0, "deploy/wss.toml: {}{}", run.stdout, run.stderr);

    let dir = std::env::temp_dir().join(format!("wss-config-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "sender_threads = \"many\"\nread_blok = \"1s\"\ngrpc_addr = \"nowhere\"\n").expect("writing the file");
    let run = wss("unused", None, &["config", "check", broken.to_str().expect("a UTF-8 path")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(run.code, 1, "{}", run.stdout);
    for needle in ["3 problem(s)", "sender_threads", "read_blok", "grpc_addr"] {
        assert!(run.stderr.contains(needle), "{needle:?} missing from: {}", run.stderr);
    }
}

#[test]
fn the_example_config_names_every_setting_the_loader_knows() {
    // The loader's key table, read from its source, against the example's `key =` lines
    // (commented out or not), so that a new setting cannot be left out of deploy/wss.toml.
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config.rs")).expect("reading src/config.rs");
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/wss.toml")).expect("reading deploy/wss.toml");
    let keys: Vec<&str> = source.split("Key { name: \"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
    assert!(keys.len() >= 30 && keys.contains(&"redis_url"), "the key table was not found in src/config.rs: {keys:?}");
    let named = |key: &str| example.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = ")));
    let missing: Vec<&&str> = keys.iter().filter(|k| !named(k)).collect();
    assert!(missing.is_empty(), "deploy/wss.toml lacks {missing:?}: add each with its default and one comment line");
}
