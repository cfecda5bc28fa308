//! The receiver snippet in docs/receivers.md (the README links to it) is code people paste: run
//! it, as written, against every signature test vector, so the docs cannot drift from the
//! contract (docs/contract.md §3).

use std::{io::Write, process::Command};

fn python_block(page: &str) -> &str {
    let start = page.find("```python\n").expect("docs/receivers.md has a ```python block") + "```python\n".len();
    let len = page[start..].find("```").expect("the python block is closed");
    &page[start..start + len]
}

#[test]
fn the_receivers_doc_python_verifier_passes_every_signature_vector() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/receivers.md")).unwrap();
    let snippet = python_block(&page);
    let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/signatures.json");
    let harness = format!(
        r#"{snippet}
import base64, json, time as _time
from datetime import datetime as _dt
cases = json.load(open({vectors:?}))
failures = []
for expected, group in ((True, cases["valid"]), (False, cases["invalid"])):
    for case in group:
        ts = case["timestamp"]
        at = int(ts) if ts.isdigit() else _dt.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        time.time = lambda at=at: at + 10  # the receiver's clock: 10 s after signing
        body = base64.b64decode(case["body_base64"])
        got = verify(case["secret"], {{"X-WSS-Timestamp": ts, "X-WSS-Signature": case["signature"]}}, body)
        if got != expected:
            failures.append(case["name"])
# freshness both ways
time.time = lambda: 1767225600 + 301
if verify("wss_test_secret", {{"X-WSS-Timestamp": "1767225600", "X-WSS-Signature": cases["valid"][0]["signature"]}}, base64.b64decode(cases["valid"][0]["body_base64"])):
    failures.append("stale timestamp accepted")
time.time = lambda: 1767225600 - 301
if verify("wss_test_secret", {{"X-WSS-Timestamp": "1767225600", "X-WSS-Signature": cases["valid"][0]["signature"]}}, base64.b64decode(cases["valid"][0]["body_base64"])):
    failures.append("future timestamp accepted")
# rotation: new,old
time.time = lambda: 1767225600
both = "0" * 64 + "," + cases["valid"][0]["signature"]
if not verify("wss_test_secret", {{"X-WSS-Timestamp": "1767225600", "X-WSS-Signature": both}}, base64.b64decode(cases["valid"][0]["body_base64"])):
    failures.append("multi-signature header rejected")
print("FAILURES:", failures)
assert not failures, failures
"#
    );
    let mut child = Command::new("python3")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to check the Python snippet of docs/receivers.md");
    child.stdin.take().unwrap().write_all(harness.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the docs/receivers.md snippet failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
