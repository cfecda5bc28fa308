//! URL and address vetting (`wss::domain::model::validate_url`, `wss::http::literal_ip`,
//! `wss::http::forbidden_reason`) on arbitrary text: it must never panic, and every spelling that
//! reads as an IPv4 address must get the verdict of that address.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use wss::http::{forbidden_reason, literal_ip, parse_ipv4_lenient};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = wss::domain::model::validate_url(text, false);
    let _ = wss::domain::model::validate_url(&format!("https://{text}/"), true);
    if let Some(ip) = literal_ip(text) {
        let verdict = forbidden_reason(ip);
        if let Some(v4) = parse_ipv4_lenient(text) {
            assert_eq!(forbidden_reason(IpAddr::V4(v4)), verdict);
        }
        if let IpAddr::V4(v4) = ip {
            assert_eq!(forbidden_reason(IpAddr::V6(v4.to_ipv6_mapped())).is_some(), verdict.is_some());
        }
    }
});
