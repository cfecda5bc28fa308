//! The HTTP client that delivers webhooks: one ureq 3 agent shared by every sender thread, and
//! the guard that keeps tenants' URLs away from the network wss runs in (SSRF).
//!
//! Why ureq and how it is set up (README "Why ureq"): keep-alive connections pooled per host (at
//! least as many idle ones as sender threads), no redirects (a 3xx is the receiver's answer, and
//! a failure), no environment proxies (`WSS_PROXY` only), non-2xx statuses returned as responses
//! rather than errors, and our own [`GuardedResolver`], which resolves on the calling thread
//! (ureq's default spawns a thread per lookup when a timeout is set) and vets every address it
//! returns — so the address that is checked is the address that is dialled, whatever DNS says
//! next time (DNS rebinding cannot slip a private address in between).
//!
//! **What is refused** ([`forbidden_reason`]): every address that is not ordinary public unicast —
//! loopback, RFC 1918, link-local (169.254.169.254, the cloud metadata service, included), CGNAT,
//! unspecified, multicast, broadcast, reserved, documentation and benchmarking ranges; for IPv6
//! also unique-local, link-local, site-local, discard-only, Teredo, and every form that embeds an
//! IPv4 address (IPv4-mapped, IPv4-compatible, IPv4-translated, 6to4, NAT64) when the embedded
//! address is refused. The check is on the parsed address, and hosts are parsed the way the C
//! library would (`2130706433`, `0x7f.1`, `127.1`, `017700000001` are all 127.0.0.1:
//! [`parse_ipv4_lenient`]), so odd spellings change nothing.
//!
//! **Holes, opened deliberately**: `WSS_ALLOW_PRIVATE_TARGETS=true` turns the guard off;
//! `WSS_ALLOWED_TARGET_CIDRS` lets through the listed ranges only ([`TargetPolicy`]).
//!
//! **A proxy** (`WSS_PROXY`, an `http://` or `https://` CONNECT proxy) becomes the egress point:
//! wss then resolves and vets only the proxy's own address (which may be private — it is the
//! operator's), and the proxy resolves and dials the webhook's host. The guard cannot see that
//! address, so the proxy must enforce the same rules itself (README "Security").

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
    str::FromStr,
};

use ureq::{
    config::Config as UreqConfig,
    http::Uri,
    unversioned::{
        resolver::{ResolvedSocketAddrs, Resolver},
        transport::{DefaultConnector, NextTimeout},
    },
    Agent, Proxy,
};

/// ureq keeps at most this many resolved addresses.
const MAX_ADDRS: usize = 16;

/// The largest response head (status line and headers) accepted; a larger one fails the attempt
/// (`protocol`). Receivers answer a webhook with a few hundred bytes of headers; 16 KiB is what
/// common servers allow themselves (nginx's large header buffers are 8 KiB each).
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Each pooled connection's read buffer. ureq's default is 128 KiB, zero-filled when the
/// connection is first used: with 256 sender threads busy that was 32 MiB for input alone. It
/// must hold a whole response head (ureq does not grow it), and a little more than
/// [`MAX_RESPONSE_HEAD`] so that a head over the limit is reported as too large rather than as
/// a connection that stopped making progress.
const INPUT_BUFFER: usize = MAX_RESPONSE_HEAD + 1024;
/// Each pooled connection's write buffer (ureq's default: 128 KiB). The request line and each
/// header line are written into it whole, so it must hold the longest: a 2 KiB URL, a static
/// header's 8 KiB value (`crate::domain::model::validate_headers`). Bodies go through it in
/// pieces of its size.
const OUTPUT_BUFFER: usize = 16 * 1024;

/// Builds the delivery agent with the guard on (unless `allow_private_targets`) and no proxy.
pub fn agent(sender_threads: usize, allow_private_targets: bool) -> Agent {
    let policy = TargetPolicy { allow_private: allow_private_targets, allowed: Vec::new() };
    agent_with(sender_threads, policy, None).expect("without a proxy there is nothing to refuse")
}

/// Builds the delivery agent as the configuration asks: the target policy
/// (`WSS_ALLOW_PRIVATE_TARGETS`, `WSS_ALLOWED_TARGET_CIDRS`) and the proxy (`WSS_PROXY`).
pub fn agent_for(config: &crate::config::Config) -> Agent {
    let policy = TargetPolicy { allow_private: config.allow_private_targets, allowed: config.allowed_target_cidrs.clone() };
    // The proxy URL was checked when the configuration was built.
    agent_with(config.sender_threads, policy, config.proxy.as_deref())
        .unwrap_or_else(|e| panic!("the proxy URL was checked at start-up, yet ureq refuses it: {e}"))
}

/// Builds the delivery agent; fails only on a proxy URL that ureq refuses.
pub fn agent_with(sender_threads: usize, policy: TargetPolicy, proxy: Option<&str>) -> Result<Agent, ProxyError> {
    let proxy = proxy.map(parse_proxy).transpose()?;
    let proxy_host = proxy.as_ref().map(|p| (p.host().to_ascii_lowercase(), p.port()));
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(proxy)
        .user_agent(concat!("wss/", env!("CARGO_PKG_VERSION")))
        .max_idle_connections(sender_threads.max(16) * 4)
        .max_idle_connections_per_host(sender_threads.max(4))
        .max_response_header_size(MAX_RESPONSE_HEAD)
        .input_buffer_size(INPUT_BUFFER)
        .output_buffer_size(OUTPUT_BUFFER)
        .build();
    Ok(Agent::with_parts(config, DefaultConnector::default(), GuardedResolver { policy, proxy: proxy_host }))
}

/// A `WSS_PROXY` value wss cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{0}; give an http:// or https:// CONNECT proxy like http://proxy.internal:3128")]
pub struct ProxyError(String);

/// Parses `WSS_PROXY`: an `http://` or `https://` CONNECT proxy (ureq's SOCKS support is not
/// built in).
pub fn parse_proxy(value: &str) -> Result<Proxy, ProxyError> {
    let uri: Uri = value.parse().map_err(|_| ProxyError("not a URL".into()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(ProxyError("the scheme must be http or https".into())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ProxyError("it has no host".into()));
    }
    Proxy::new(value).map_err(|e| ProxyError(format!("ureq refuses it ({e})")))
}

/// Which addresses a tenant's webhook may reach.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    /// `WSS_ALLOW_PRIVATE_TARGETS`: everything.
    pub allow_private: bool,
    /// `WSS_ALLOWED_TARGET_CIDRS`: these ranges even though they are private or special.
    pub allowed: Vec<Cidr>,
}

impl TargetPolicy {
    /// Why `ip` may not be dialled, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow_private {
            return None;
        }
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        if self.allowed.iter().any(|c| c.contains(ip) || mapped.is_some_and(|m| c.contains(m))) {
            return None;
        }
        forbidden_reason(ip)
    }
}

/// An address range, `10.0.0.0/8` or `fd00::/8`; a bare address is a range of one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => masked(u32::from(ip).into(), 32, self.prefix) == u32::from(net).into(),
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(ip), 128, self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

fn masked(value: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(bits - prefix);
    (value >> keep) << keep
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| format!("{addr:?} is not an IP address; write CIDRs like 10.20.0.0/16 or fd00::/8"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= bits => p,
                _ => return Err(format!("the prefix length must be 0 to {bits}")),
            },
        };
        let value = match network {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        if masked(value, bits, prefix) != value {
            return Err(format!("{text} has host bits set; did you mean its network address?"));
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Resolves on the calling thread and refuses addresses that a tenant must not reach.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: TargetPolicy,
    /// The configured proxy's host (lowercase) and port: resolved without vetting, since it is
    /// the operator's own egress point.
    pub proxy: Option<(String, u16)>,
}

impl Resolver for GuardedResolver {
    fn resolve(&self, uri: &Uri, config: &UreqConfig, _timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or_else(|| ureq::Error::BadUri(format!("{uri} has no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
        let is_proxy = self.proxy.as_ref().is_some_and(|(h, p)| h.eq_ignore_ascii_case(host) && *p == port);
        let found: Vec<SocketAddr> = match literal_ip(host) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => (host, port).to_socket_addrs().map_err(ureq::Error::Io)?.collect(),
        };
        match vet_answer(&self.policy, is_proxy, config.ip_family().keep_wanted(found.into_iter())) {
            Ok(kept) => {
                let mut result = self.empty();
                for addr in kept {
                    result.push(addr);
                }
                Ok(result)
            }
            Err(Some((ip, reason))) => Err(ureq::Error::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{host} resolves to {ip}, a {reason} address; set WSS_ALLOWED_TARGET_CIDRS (or WSS_ALLOW_PRIVATE_TARGETS=true) to allow it"),
            ))),
            Err(None) => Err(ureq::Error::HostNotFound),
        }
    }
}

/// Vets a host's DNS answer: the addresses that may be dialled, in the answer's order and at
/// most [`MAX_ADDRS`] — a name that resolves to both public and private addresses is dialled on
/// its public ones only — or, when none may, the last refused address and why (`None`: the
/// answer was empty). `exempt`: the configured proxy, which is never vetted.
fn vet_answer(policy: &TargetPolicy, exempt: bool, found: impl Iterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, Option<(IpAddr, &'static str)>> {
    let mut kept = Vec::new();
    let mut refused = None;
    for addr in found {
        if !exempt {
            if let Some(reason) = policy.refusal(addr.ip()) {
                refused = Some((addr.ip(), reason));
                continue;
            }
        }
        if kept.len() < MAX_ADDRS {
            kept.push(addr);
        }
    }
    if kept.is_empty() {
        Err(refused)
    } else {
        Ok(kept)
    }
}

/// The address a URL host denotes when it is an IP literal in any spelling the C library
/// accepts (`[::1]`, `::1`, `127.0.0.1`, `127.1`, `0x7f.1`, `2130706433`, `017700000001`);
/// `None` for a name.
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip);
    }
    parse_ipv4_lenient(bare).map(IpAddr::V4)
}

/// IPv4 as `inet_aton` reads it: one to four parts separated by dots, each decimal, octal
/// (leading `0`) or hexadecimal (`0x`); the last part fills the remaining bytes (`127.1` is
/// 127.0.0.1, `2130706433` is 127.0.0.1). A trailing dot is allowed, as resolvers do.
pub fn parse_ipv4_lenient(text: &str) -> Option<Ipv4Addr> {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.is_empty() {
        return None;
    }
    let parts: Vec<u64> = text.split('.').map(parse_c_number).collect::<Option<_>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|&p| p > 0xff) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut value: u64 = 0;
    for (i, part) in leading.iter().enumerate() {
        value |= part << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from((value | last) as u32))
}

/// One part of an `inet_aton` address: `0x1f`, `017`, `31`. At most 32 bits.
fn parse_c_number(part: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        // "0x" alone is 0 for inet_aton; "" (from "1..2") is not a number.
        return (radix == 16).then_some(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok().filter(|v| *v <= u64::from(u32::MAX))
}

/// Names that always mean this machine (RFC 6761): refused at registration like 127.0.0.1.
pub fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Why wss refuses to dial `ip` for a tenant, or `None` for a public address. The check is on
/// the parsed address, so odd spellings (`2130706433`, `0x7f.1`) are caught once parsed.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() || a == 0 => "unspecified",
        _ if ip.is_private() => "private (RFC 1918)",
        _ if ip.is_link_local() => "link-local",
        (100, 64..=127, _) => "shared (CGNAT)",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (192, 88, 99) => "reserved (6to4 relay)",
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4).map(|_| "IPv4-mapped private");
    }
    Some(match s {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible",
        // ::ffff:0:a.b.c.d, IPv4-translated (SIIT).
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => return v4_reason(embedded(hi, lo)).map(|_| "IPv4-translated private"),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return v4_reason(embedded(hi, lo)).map(|_| "NAT64 of a private"),
        [0x64, 0xff9b, 1, ..] => "local-use NAT64",
        [0x100, 0, 0, 0, ..] => "discard-only",
        [0x2001, 0, ..] => "Teredo tunnel",
        [0x2001, 2, 0, ..] => "benchmarking",
        [0x2001, x, ..] if x & 0xfff0 == 0x10 || x & 0xfff0 == 0x20 => "reserved (ORCHID)",
        [0x2001, 0xdb8, ..] => "documentation",
        [0x3fff, y, ..] if y & 0xf000 == 0 => "documentation",
        [0x2002, hi, lo, ..] => return v4_reason(embedded(hi, lo)).map(|_| "6to4 of a private"),
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique local",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused() {
        for ip in [
            "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
            "0.0.0.0", "255.255.255.255", "224.0.0.1", "192.0.2.1", "198.18.0.1", "192.88.99.1", "::1", "::", "fc00::1",
            "fd12::1", "fe80::1", "fec0::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::a00:1",
            "64:ff9b:1::1", "2001:db8::1", "3fff::1", "ff02::1", "100::1", "2001::1", "2001:2::1", "2002:7f00:1::1",
            "2002:a9fe:a9fe::1", "::ffff:0:7f00:1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(forbidden_reason(parsed).is_some(), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
            "1.1.1.1", "2a00:1450:4001::1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden_reason(parsed), None, "{ip}");
        }
    }

    #[test]
    fn odd_ipv4_spellings_parse_like_inet_aton() {
        let loopback = Some(Ipv4Addr::new(127, 0, 0, 1));
        for text in ["127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f.1", "0x7f000001", "017700000001", "0177.0.0.01", "127.0.0.1."] {
            assert_eq!(parse_ipv4_lenient(text), loopback, "{text}");
        }
        assert_eq!(parse_ipv4_lenient("0xa9.0xfe.0xa9.0xfe"), Some(Ipv4Addr::new(169, 254, 169, 254)));
        assert_eq!(parse_ipv4_lenient("0"), Some(Ipv4Addr::UNSPECIFIED));
        for name in ["", "example.com", "1.2.3.4.5", "256.1.1.1", "1.16777216", "4294967296", "08.1.1.1", "1..2", "0xg", "-1", "1.2.3.256"] {
            assert_eq!(parse_ipv4_lenient(name), None, "{name}");
        }
        assert_eq!(literal_ip("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(literal_ip("hooks.example.com"), None);
    }

    #[test]
    fn local_names_are_recognised() {
        for name in ["localhost", "LOCALHOST", "localhost.", "api.localhost"] {
            assert!(is_local_name(name), "{name}");
        }
        for name in ["localhost.example.com", "mylocalhost", "example.com"] {
            assert!(!is_local_name(name), "{name}");
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.20.0.0/16".parse().unwrap();
        assert!(net.contains("10.20.3.4".parse().unwrap()));
        assert!(!net.contains("10.21.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00:1::/64".parse().unwrap();
        assert!(v6.contains("fd00:1::5".parse().unwrap()) && !v6.contains("fd00:2::5".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert_eq!(v6.to_string(), "fd00:1::/64");
        for bad in ["10.0.0.0/33", "10.0.0.1/8", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_policy_opens_only_the_listed_holes() {
        let strict = TargetPolicy::default();
        assert_eq!(strict.refusal("10.20.0.5".parse().unwrap()), Some("private (RFC 1918)"));
        let holes = TargetPolicy { allow_private: false, allowed: vec!["10.20.0.0/16".parse().unwrap(), "127.0.0.1/32".parse().unwrap()] };
        assert_eq!(holes.refusal("10.20.0.5".parse().unwrap()), None);
        assert_eq!(holes.refusal("::ffff:127.0.0.1".parse().unwrap()), None, "mapped forms of an allowed address");
        assert!(holes.refusal("10.21.0.5".parse().unwrap()).is_some());
        assert!(holes.refusal("169.254.169.254".parse().unwrap()).is_some());
        let open = TargetPolicy { allow_private: true, allowed: Vec::new() };
        assert_eq!(open.refusal("169.254.169.254".parse().unwrap()), None);
    }

    fn resolver(policy: TargetPolicy) -> GuardedResolver {
        GuardedResolver { policy, proxy: None }
    }

    #[test]
    fn the_resolver_refuses_loopback_unless_allowed() {
        let config = UreqConfig::default();
        for url in ["http://127.0.0.1:9/", "http://2130706433:9/", "http://0x7f.1:9/", "http://localhost:9/", "http://[::ffff:127.0.0.1]:9/"] {
            let uri: Uri = url.parse().unwrap();
            let err = resolver(TargetPolicy::default()).resolve(&uri, &config, NextTimeout::default()).unwrap_err();
            assert!(matches!(&err, ureq::Error::Io(e) if e.kind() == io::ErrorKind::PermissionDenied), "{url}: {err}");
        }
        let uri: Uri = "http://2130706433:9/".parse().unwrap();
        let open = resolver(TargetPolicy { allow_private: true, allowed: Vec::new() });
        let addrs = open.resolve(&uri, &config, NextTimeout::default()).unwrap();
        assert_eq!(addrs[0], "127.0.0.1:9".parse::<SocketAddr>().unwrap());
        let hole = resolver(TargetPolicy { allow_private: false, allowed: vec!["127.0.0.1/32".parse().unwrap()] });
        assert!(hole.resolve(&uri, &config, NextTimeout::default()).is_ok());
    }

    #[test]
    fn a_mixed_answer_is_dialled_on_its_public_addresses_only() {
        let addrs = |list: &[&str]| list.iter().map(|a| a.parse::<SocketAddr>().unwrap()).collect::<Vec<_>>();
        // A name answering with public and private addresses, as a rebinding attacker's would.
        let mixed = addrs(&["127.0.0.1:443", "93.184.215.14:443", "10.0.0.7:443", "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443", "[::1]:443", "169.254.169.254:443", "[::ffff:192.168.1.1]:443"]);
        let strict = TargetPolicy::default();
        assert_eq!(vet_answer(&strict, false, mixed.clone().into_iter()), Ok(addrs(&["93.184.215.14:443", "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443"])));
        // Only private ones: refused, naming the last one refused.
        let private = addrs(&["10.0.0.7:443", "[fd00::1]:443"]);
        assert_eq!(vet_answer(&strict, false, private.clone().into_iter()), Err(Some(("fd00::1".parse().unwrap(), "unique local"))));
        assert_eq!(vet_answer(&strict, false, std::iter::empty()), Err(None));
        // A hole lets its range through and nothing else; allowing private targets, everything.
        let hole = TargetPolicy { allow_private: false, allowed: vec!["10.0.0.0/24".parse().unwrap()] };
        assert_eq!(vet_answer(&hole, false, mixed.clone().into_iter()), Ok(addrs(&["93.184.215.14:443", "10.0.0.7:443", "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443"])));
        let open = TargetPolicy { allow_private: true, allowed: Vec::new() };
        assert_eq!(vet_answer(&open, false, mixed.clone().into_iter()), Ok(mixed.clone()));
        // The proxy is never vetted; answers are capped.
        assert_eq!(vet_answer(&strict, true, private.clone().into_iter()), Ok(private));
        let many = (1..=40u8).map(|i| SocketAddr::from(([93, 184, 215, i], 443)));
        assert_eq!(vet_answer(&strict, false, many).map(|kept| kept.len()), Ok(MAX_ADDRS));
    }

    #[test]
    fn the_proxy_is_resolved_without_vetting_and_only_it() {
        let config = UreqConfig::default();
        let guarded = GuardedResolver { policy: TargetPolicy::default(), proxy: Some(("127.0.0.1".into(), 3128)) };
        let proxy: Uri = "http://127.0.0.1:3128".parse().unwrap();
        assert!(guarded.resolve(&proxy, &config, NextTimeout::default()).is_ok());
        let other_port: Uri = "http://127.0.0.1:3129".parse().unwrap();
        assert!(guarded.resolve(&other_port, &config, NextTimeout::default()).is_err());
    }

    #[test]
    fn proxies_must_be_http_connect_proxies() {
        assert!(parse_proxy("http://proxy.internal:3128").is_ok());
        assert!(parse_proxy("https://proxy.internal").is_ok());
        for bad in ["socks5://proxy:1080", "proxy:3128", "http://", "not a url"] {
            assert!(parse_proxy(bad).is_err(), "{bad}");
        }
    }
}
