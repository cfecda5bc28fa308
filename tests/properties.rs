//! Property tests (proptest) for the three places where wss reads hostile input: stream-entry
//! parsing, signature verification, and URL/address vetting. Each property holds for any input;
//! proptest shrinks a failure to a minimal case. (The `fuzz/` targets exercise the same functions
//! with coverage guidance; see docs/security.md, "Hostile input".)

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use proptest::prelude::*;
use wss::{
    deadletter::Reason,
    domain::model::validate_url,
    http::{forbidden_reason, literal_ip, parse_ipv4_lenient},
    pipeline::event::{check_depth, envelope, parse_entry, MAX_FIELDS, MAX_JSON_DEPTH},
    signature::{sign, verify, StandardSigner},
    streams::RawEntry,
};

fn entry(fields: Vec<(Vec<u8>, Vec<u8>)>) -> RawEntry {
    RawEntry { id: "1767225600000-0".into(), fields: Some(fields) }
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..6).prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn depth_of(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    // ---- stream entries ----

    /// Any fields at all: parsing never panics, and a rejection always says why.
    #[test]
    fn parsing_never_panics_and_rejections_explain(
        fields in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..12), prop::collection::vec(any::<u8>(), 0..64)), 0..12),
        max in 16usize..4096,
    ) {
        if let Err(rejection) = parse_entry(&entry(fields), max) {
            prop_assert!(!rejection.detail.is_empty());
        }
    }

    /// The contract's fields with any JSON data: the event parses, and its envelope is JSON whose
    /// `data` is the data as written.
    #[test]
    fn valid_entries_parse_and_keep_their_data(
        tenant in "[a-z0-9][a-z0-9_-]{0,20}",
        event_type in "[a-z]{1,8}(\\.[a-z_]{1,8}){0,3}",
        data in json_value(),
        attributes in prop::collection::btree_map("[a-z]{1,8}", ".{0,16}", 0..5),
    ) {
        let text = serde_json::to_string(&data).unwrap();
        let mut fields = vec![
            (b"tenant".to_vec(), tenant.clone().into_bytes()),
            (b"type".to_vec(), event_type.clone().into_bytes()),
            (b"data".to_vec(), text.clone().into_bytes()),
        ];
        for (k, v) in &attributes {
            if !["tenant", "type", "data", "id"].contains(&k.as_str()) {
                fields.push((k.clone().into_bytes(), v.clone().into_bytes()));
            }
        }
        let event = parse_entry(&entry(fields), 1 << 20).map_err(|r| TestCaseError::fail(format!("{r:?}")))?;
        prop_assert_eq!(&event.tenant, &tenant);
        let body: serde_json::Value = serde_json::from_slice(&envelope(&event)).unwrap();
        prop_assert_eq!(&body["data"], &data);
        prop_assert_eq!(body["type"].as_str(), Some(event_type.as_str()));
    }

    /// The depth scan agrees with the parsed depth of any valid JSON.
    #[test]
    fn the_depth_scan_agrees_with_the_parser(data in json_value(), max in 0usize..6) {
        let text = serde_json::to_string(&data).unwrap();
        prop_assert_eq!(check_depth(text.as_bytes(), max).is_ok(), depth_of(&data) <= max);
    }

    /// Nesting beyond the limit is refused as too deep, whatever the size limit allows.
    #[test]
    fn deep_nesting_is_refused(extra in 1usize..2000, open in prop::sample::select(vec!["[", "{\"a\":"])) {
        let depth = MAX_JSON_DEPTH + extra;
        let close = if open == "[" { "]" } else { "}" };
        let data = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let fields = vec![(b"tenant".to_vec(), b"acme".to_vec()), (b"type".to_vec(), b"t".to_vec()), (b"data".to_vec(), data.into_bytes())];
        prop_assert_eq!(parse_entry(&entry(fields), 1 << 24).unwrap_err().reason, Reason::TooDeep);
    }

    /// More fields than the limit is refused as such, before anything else is looked at.
    #[test]
    fn huge_field_counts_are_refused(extra in 1usize..500) {
        let fields: Vec<(Vec<u8>, Vec<u8>)> = (0..MAX_FIELDS + extra).map(|i| (format!("f{i}").into_bytes(), vec![b'x'])).collect();
        prop_assert_eq!(parse_entry(&entry(fields), 1 << 24).unwrap_err().reason, Reason::TooManyFields);
    }

    // ---- signatures ----

    /// What wss signs verifies, alone or among other values in the header.
    #[test]
    fn signatures_verify(secret in prop::collection::vec(any::<u8>(), 1..64), body in prop::collection::vec(any::<u8>(), 0..512), junk in "[0-9a-f]{0,64}") {
        let now = SystemTime::now();
        let timestamp = now.duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
        let signature = sign(&secret, &timestamp, &body);
        prop_assert!(verify(&secret, Some(&timestamp), Some(&signature), &body, Duration::from_secs(300), now).is_ok());
        let several = format!("{junk}, {signature}");
        prop_assert!(verify(&secret, Some(&timestamp), Some(&several), &body, Duration::from_secs(300), now).is_ok());
    }

    /// Any change to the body, the timestamp or the secret breaks the signature.
    #[test]
    fn tampering_breaks_signatures(
        secret in prop::collection::vec(any::<u8>(), 1..64),
        body in prop::collection::vec(any::<u8>(), 1..512),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let now = SystemTime::now();
        let timestamp = now.duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
        let signature = sign(&secret, &timestamp, &body);
        let mut tampered = body.clone();
        let i = at.index(tampered.len());
        tampered[i] ^= flip;
        prop_assert!(verify(&secret, Some(&timestamp), Some(&signature), &tampered, Duration::from_secs(300), now).is_err());
        let earlier = (now.duration_since(UNIX_EPOCH).unwrap().as_secs() - 1).to_string();
        prop_assert!(verify(&secret, Some(&earlier), Some(&signature), &body, Duration::from_secs(300), now).is_err());
        let mut other = secret.clone();
        other[0] ^= flip;
        prop_assert!(verify(&other, Some(&timestamp), Some(&signature), &body, Duration::from_secs(300), now).is_err());
    }

    /// Verification never panics on arbitrary header values.
    #[test]
    fn verification_never_panics(timestamp in prop::option::of(".{0,40}"), signature in prop::option::of(".{0,200}"), body in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = verify(b"secret", timestamp.as_deref(), signature.as_deref(), &body, Duration::from_secs(300), SystemTime::now());
    }

    /// Standard Webhooks: sign then verify with the same secret, for any key.
    #[test]
    fn standard_webhooks_signatures_verify(key in prop::collection::vec(any::<u8>(), 16..64), id in "[a-zA-Z0-9_]{1,32}", body in prop::collection::vec(any::<u8>(), 0..256)) {
        use base64::Engine;
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key));
        let signer = StandardSigner::new(&secret).unwrap();
        let now = SystemTime::now();
        let timestamp = now.duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
        let header = signer.sign(&id, &timestamp, &body);
        prop_assert!(wss::signature::verify_standard(&secret, &id, &timestamp, &header, &body, Duration::from_secs(300), now).is_ok());
    }

    // ---- addresses and URLs ----

    /// Every spelling of an IPv4 address that the C library accepts reads as that address, so
    /// the verdict cannot depend on the spelling.
    #[test]
    fn every_ipv4_spelling_gets_the_same_verdict(raw in any::<u32>()) {
        let ip = Ipv4Addr::from(raw);
        let [a, b, c, d] = ip.octets();
        let spellings = [
            ip.to_string(),
            raw.to_string(),
            format!("{raw:#x}"),
            format!("0{raw:o}"),
            format!("{a}.{}", raw & 0x00ff_ffff),
            format!("{a}.{b}.{}", raw & 0xffff),
            format!("{a:#x}.{b:#x}.{c:#x}.{d:#x}"),
            format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
        ];
        for spelling in &spellings {
            prop_assert_eq!(parse_ipv4_lenient(spelling), Some(ip), "{}", spelling);
            prop_assert_eq!(literal_ip(spelling), Some(IpAddr::V4(ip)), "{}", spelling);
        }
        // An IPv4 address wrapped in IPv6 forms is refused whenever the address itself is.
        let verdict = forbidden_reason(IpAddr::V4(ip)).is_some();
        let mapped = IpAddr::V6(ip.to_ipv6_mapped());
        prop_assert_eq!(forbidden_reason(mapped).is_some(), verdict);
        let nat64 = IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, (raw >> 16) as u16, raw as u16));
        prop_assert_eq!(forbidden_reason(nat64).is_some(), verdict);
        let six_to_four = IpAddr::V6(Ipv6Addr::new(0x2002, (raw >> 16) as u16, raw as u16, 0, 0, 0, 0, 1));
        prop_assert_eq!(forbidden_reason(six_to_four).is_some(), verdict);
        prop_assert!(forbidden_reason(IpAddr::V6(ip.to_ipv6_compatible())).is_some(), "IPv4-compatible is deprecated: always refused");
    }

    /// Any string: URL validation and host reading never panic, and an accepted URL is short,
    /// https and without userinfo.
    #[test]
    fn url_validation_never_panics(url in ".{0,80}", host in "[a-z0-9.:\\[\\]x]{0,40}") {
        if validate_url(&url, false).is_ok() {
            prop_assert!(url.starts_with("https://") && url.len() <= 2048 && !url.contains('@'));
        }
        let _ = literal_ip(&host);
        let _ = validate_url(&format!("https://{host}/"), true);
    }
}
