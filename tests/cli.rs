//! The `wss` binary as a user runs it: configuration layered TOML → environment → flags (and
//! `--dev`), each problem named with its source; `wss sign` and `wss verify` against the shared
//! signature vectors (`tests/vectors/signatures.json`) and round trips between the two.

mod common;

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use common::{assert_status, redis_url, Keyspace, Service, WAIT};
use serde_json::Value;
use tonic::Code;
use wss::proto::CreateWebhookRequest;

/// Runs `wss <args>` with `stdin` as input and no inherited `WSS_*` variable, plus `env`.
fn run(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wss"));
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WSS_") || name == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start wss: {e}"));
    child.stdin.take().expect("piped").write_all(stdin).expect("writing stdin");
    child.wait_with_output().expect("waiting for wss")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A fresh directory for this test's files.
fn scratch(name: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("wss-cli-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_layer_overrides_the_one_before() {
    let ks = Keyspace::new("cli_layers");
    let dir = scratch("layers");
    let file = dir.join("wss.toml");
    // The file sets everything below; the environment overrides redis_url (the file's points
    // nowhere), consumer and sender_threads; a flag overrides sender_threads again.
    std::fs::write(
        &file,
        format!(
            "redis_url = \"redis://127.0.0.1:1\"\nkey_prefix = \"{}\"\nconsumer = \"from-file\"\nsender_threads = 3\n\
             grpc_addr = \"127.0.0.1:0\"\nmetrics_addr = \"off\"\nallow_http = true\nallow_private_targets = true\nlog_level = \"debug\"\n",
            ks.prefix
        ),
    )
    .unwrap();
    let env = vec![
        ("WSS_REDIS_URL".to_owned(), redis_url()),
        ("WSS_CONSUMER".to_owned(), "from-env".to_owned()),
        ("WSS_SENDER_THREADS".to_owned(), "5".to_owned()),
    ];
    let mut service = Service::spawn_with("layers", &["--config", file.to_str().unwrap(), "--sender-threads", "7"], env);
    service.wait_for_control_plane().await;
    let line = service.wait_for_log("as consumer", WAIT).await;
    let expected = format!("reading {}events as consumer \"from-env\" of group wss with 7 sender threads", ks.prefix);
    assert!(
        line.contains(&expected),
        "expected {expected:?} (prefix from the file, consumer from the environment, threads from the flag), got {line:?}"
    );
    service.wait_for_log("WSS_METRICS_ADDR=off", WAIT).await;
    assert!(!service.lines().iter().any(|l| l.contains("DEV MODE")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_wins_over_the_environment() {
    let ks = Keyspace::new("cli_dev");
    let strict = [("WSS_ALLOW_HTTP", "false"), ("WSS_ALLOW_PRIVATE_TARGETS", "false")];
    let url = "http://127.0.0.1:9/hook";
    // Without --dev the environment holds: an http:// loopback URL is refused.
    let plain = Service::start(&ks, "plain", &strict).await;
    let grpc = plain.grpc().await;
    grpc.create_tenant("acme").await;
    assert_status(
        grpc.webhooks().create_webhook(CreateWebhookRequest { tenant_id: "acme".into(), url: url.into(), ..Default::default() }).await,
        Code::InvalidArgument,
        Some("url"),
        "an http:// loopback URL without --dev",
    );
    drop(plain);

    let mut env = Service::env(&ks, "dev");
    env.retain(|(name, _)| !strict.iter().any(|(k, _)| k == name));
    env.extend(strict.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut dev = Service::spawn_with("dev", &["--dev"], env);
    dev.wait_for_control_plane().await;
    dev.wait_for_log("DEV MODE", WAIT).await;
    let grpc = dev.grpc().await;
    grpc.create_webhook("acme", url, |_| {}).await;
}

#[test]
fn every_bad_value_is_reported_at_once_naming_its_layer() {
    let dir = scratch("errors");
    let file = dir.join("wss.toml");
    std::fs::write(&file, "sender_threads = \"many\"\n").unwrap();
    let output = run(
        &["serve", "--config", file.to_str().unwrap(), "--metrics-addr", "nowhere"],
        &[("WSS_READ_BLOCK", "soon"), ("WSS_REDIS_URL", "redis://127.0.0.1:1")],
        b"",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for expected in
        ["sender_threads (config file) = \"many\"", "WSS_READ_BLOCK (environment) = \"soon\"", "--metrics-addr (flag) = \"nowhere\""]
    {
        assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The shared vectors: (name, secret, timestamp, body, signature) for `valid` or `invalid`.
fn vectors(kind: &str) -> Vec<(String, String, String, Vec<u8>, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/signatures.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("the vectors")).expect("JSON");
    let cases = doc[kind].as_array().unwrap_or_else(|| panic!("no {kind} list"));
    assert!(!cases.is_empty());
    cases
        .iter()
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or_else(|| panic!("{key} in {c}")).to_owned();
            let body = base64::engine::general_purpose::STANDARD.decode(text("body_base64")).expect("base64 body");
            (text("name"), text("secret"), text("timestamp"), body, text("signature"))
        })
        .collect()
}

/// Wide enough for every vector's timestamp (from 1970 to 2033) to be "fresh" today.
const ANY_TIME: &str = "200years";

#[test]
fn sign_reproduces_every_vector() {
    for (name, secret, timestamp, body, signature) in vectors("valid") {
        let output = run(&["sign", "--secret", &secret, "--timestamp", &timestamp], &[], &body);
        assert!(output.status.success(), "{name}: {output:?}");
        assert_eq!(stdout(&output), format!("X-WSS-Timestamp: {timestamp}\nX-WSS-Signature: {signature}\n"), "{name}");
    }
}

#[test]
fn verify_accepts_every_valid_vector_and_refuses_every_invalid_one() {
    for (name, secret, timestamp, body, signature) in vectors("valid") {
        let output = run(
            &["verify", "--secret", &secret, "--timestamp", &timestamp, "--signature", &signature, "--tolerance", ANY_TIME],
            &[],
            &body,
        );
        assert_eq!((output.status.code(), stdout(&output).as_str()), (Some(0), "valid\n"), "{name}: {output:?}");
    }
    for (name, secret, timestamp, body, signature) in vectors("invalid") {
        let output = run(
            &["verify", "--secret", &secret, "--timestamp", &timestamp, "--signature", &signature, "--tolerance", ANY_TIME],
            &[],
            &body,
        );
        assert_eq!(output.status.code(), Some(1), "{name}: {output:?}");
        assert!(stdout(&output).starts_with("invalid: no signature matches"), "{name}: {}", stdout(&output));
    }
}

#[test]
fn what_sign_prints_verify_accepts_and_nothing_else() {
    let body = br#"{"order_id":"A-1001"}"#;
    let signed = run(&["sign", "--secret", "whsec_round-trip"], &[], body);
    assert!(signed.status.success(), "{signed:?}");
    let text = stdout(&signed);
    let header = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap_or_else(|| panic!("no {name} in {text:?}")).to_owned()
    };
    let (timestamp, signature) = (header("X-WSS-Timestamp"), header("X-WSS-Signature"));
    let verify = |secret: &str, timestamp: &str, body: &[u8]| {
        run(&["verify", "--secret", secret, "--timestamp", timestamp, "--signature", &signature], &[], body)
    };

    // Signed now, verified now with the default tolerance.
    let ok = verify("whsec_round-trip", &timestamp, body);
    assert_eq!((ok.status.code(), stdout(&ok).as_str()), (Some(0), "valid\n"), "{ok:?}");
    // One byte of the body, the secret or the timestamp changed: refused, exit 1.
    for (what, output) in [
        ("the body", verify("whsec_round-trip", &timestamp, br#"{"order_id":"A-1002"}"#)),
        ("the secret", verify("whsec_round-trips", &timestamp, body)),
        ("the timestamp", verify("whsec_round-trip", &(timestamp.parse::<u64>().unwrap() - 1).to_string(), body)),
    ] {
        assert_eq!(output.status.code(), Some(1), "{what} changed: {output:?}");
        assert!(stdout(&output).starts_with("invalid: "), "{what} changed: {}", stdout(&output));
    }
    // A signature made long ago is refused as stale, though it matches.
    let old = run(&["sign", "--secret", "whsec_round-trip", "--timestamp", "1000000000"], &[], body);
    let old_signature = stdout(&old).lines().find_map(|l| l.strip_prefix("X-WSS-Signature: ")).unwrap().to_owned();
    let stale = run(&["verify", "--secret", "whsec_round-trip", "--timestamp", "1000000000", "--signature", &old_signature], &[], body);
    assert_eq!(stale.status.code(), Some(1), "{stale:?}");
    assert!(!stdout(&stale).contains("no signature matches"), "refused for its age, not its signature: {}", stdout(&stale));
    let accepted = run(
        &["verify", "--secret", "whsec_round-trip", "--timestamp", "1000000000", "--signature", &old_signature, "--tolerance", ANY_TIME],
        &[],
        body,
    );
    assert_eq!(accepted.status.code(), Some(0), "{accepted:?}");
}
