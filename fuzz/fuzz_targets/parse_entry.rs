//! Stream-entry parsing (`wss::pipeline::event::parse_entry`) on arbitrary fields: it must never
//! panic, and a rejection must say why. The input is split into field names and values at NUL
//! bytes, pairwise, so that the fuzzer can reach every rule (names, UTF-8, JSON, depth, counts).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wss::{pipeline::event::parse_entry, streams::RawEntry};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let mut fields = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        fields.push((name.to_vec(), value.to_vec()));
    }
    let entry = RawEntry { id: "1767225600000-0".into(), fields: Some(fields) };
    match parse_entry(&entry, 64 << 10) {
        Ok(event) => {
            let body = wss::pipeline::event::envelope(&event);
            // JSON by the grammar: `data` is embedded exactly as written, so a number such as
            // `7e7777` (valid JSON, beyond f64) stays as it is — serde_json's `Value` would
            // refuse it, its `RawValue` checks the grammar.
            let parsed = serde_json::from_slice::<Box<serde_json::value::RawValue>>(&body);
            assert!(parsed.is_ok(), "the envelope of an accepted event is JSON: {parsed:?}");
        }
        Err(rejection) => assert!(!rejection.detail.is_empty()),
    }
});

