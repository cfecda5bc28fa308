//! Signature verification (`wss::verify`, `wss::signature::verify_standard`) on arbitrary
//! headers and bodies: it must never panic, and must never accept a signature that is not the
//! HMAC of this body (checked by signing the same input and comparing).
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // timestamp \n signature \n body
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let timestamp = parts.next().map(String::from_utf8_lossy).unwrap_or_default();
    let signature = parts.next().map(String::from_utf8_lossy).unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let secret = b"fuzz-secret-0123456789";
    let now = SystemTime::now();
    let accepted = wss::verify(secret, Some(&timestamp), Some(&signature), body, Duration::from_secs(300), now).is_ok();
    if accepted {
        let expected = wss::signature::sign(secret, &timestamp, body);
        assert!(signature.split(',').any(|s| s.trim() == expected), "accepted a signature that is not ours");
    }
    let _ = wss::signature::verify_standard("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", &timestamp, &signature, body, Duration::from_secs(300), now);
});
