//! The receiver verifiers in other languages (`clients/verify/{python,typescript,go}`) are tested
//! against `clients/verify/cases.json`: timestamp forms, the freshness window both ways, rotation
//! headers, header-name case, and the reason each rejection reports. This runs the same cases
//! through the crate's own `wss::signature::verify_headers`, so all four verifiers provably agree
//! with the sender's reference implementation, not merely with each other.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use wss::signature::{verify_headers, VerifyError};

/// The reason codes the other verifiers report, for this crate's error variants.
fn reason(result: &Result<(), VerifyError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(VerifyError::MissingTimestamp) => "missing_timestamp",
        Err(VerifyError::MissingSignature) => "missing_signature",
        Err(VerifyError::BadTimestamp { .. }) => "bad_timestamp",
        Err(VerifyError::TooOld { .. }) => "too_old",
        Err(VerifyError::TooNew { .. }) => "too_new",
        Err(VerifyError::NoMatch) => "no_match",
        Err(VerifyError::Secret(_)) => "secret",
    }
}

#[test]
fn the_rust_verifier_agrees_with_every_shared_verifier_case() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/verify/cases.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let doc: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let cases = doc["cases"].as_array().expect("cases is a list");
    assert!(cases.len() >= 40, "expected the full case list, found {}", cases.len());

    let mut failures = Vec::new();
    for case in cases {
        let text_of = |key: &str| case.get(key).or_else(|| doc.get(key)).and_then(Value::as_str).unwrap_or_else(|| panic!("no {key}"));
        let name = text_of("name");
        let headers: Vec<(&str, &str)> = case["headers"]
            .as_array()
            .expect("headers is a list")
            .iter()
            .map(|pair| (pair[0].as_str().expect("header name"), pair[1].as_str().expect("header value")))
            .collect();
        let tolerance = case.get("tolerance").or_else(|| doc.get("tolerance")).and_then(Value::as_f64).expect("tolerance");
        let now = UNIX_EPOCH + Duration::from_secs_f64(case["now"].as_f64().expect("now"));
        let result =
            verify_headers(text_of("secret").as_bytes(), headers, text_of("body").as_bytes(), Duration::from_secs_f64(tolerance), now);
        let (got, expected) = (reason(&result), text_of("expect"));
        if got != expected {
            failures.push(format!("{name}: expected {expected}, got {got} ({result:?})"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases disagree:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
