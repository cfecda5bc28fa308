//! The HTTP client that delivers webhooks: one ureq 3 agent shared by every sender thread.
//!
//! Why ureq and how it is set up (README "Why ureq"): keep-alive connections pooled per host (at
//! least as many idle ones as sender threads), no redirects (a 3xx is the receiver's answer, and
//! a failure), no environment proxies, non-2xx statuses returned as responses rather than
//! errors, and our own [`GuardedResolver`], which resolves on the calling thread (ureq's default
//! spawns a thread per lookup when a timeout is set) and vets every address it returns — so the
//! address that is checked is the address that is dialled, whatever DNS says next time.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
};

use ureq::{
    config::Config as UreqConfig,
    http::Uri,
    unversioned::{
        resolver::{ResolvedSocketAddrs, Resolver},
        transport::{DefaultConnector, NextTimeout},
    },
    Agent,
};

/// ureq keeps at most this many resolved addresses.
const MAX_ADDRS: usize = 16;

/// Builds the delivery agent.
pub fn agent(sender_threads: usize, allow_private_targets: bool) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(concat!("wss/", env!("CARGO_PKG_VERSION")))
        .max_idle_connections(sender_threads.max(16) * 4)
        .max_idle_connections_per_host(sender_threads.max(4))
        .build();
    Agent::with_parts(config, DefaultConnector::default(), GuardedResolver { allow_private_targets })
}

/// Resolves on the calling thread and refuses addresses that a tenant must not reach.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub allow_private_targets: bool,
}

impl Resolver for GuardedResolver {
    fn resolve(&self, uri: &Uri, config: &UreqConfig, _timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or_else(|| ureq::Error::BadUri(format!("{uri} has no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
        let found: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => (host, port).to_socket_addrs().map_err(ureq::Error::Io)?.collect(),
        };
        let mut result = self.empty();
        let mut refused = None;
        for addr in config.ip_family().keep_wanted(found.into_iter()) {
            if !self.allow_private_targets {
                if let Some(reason) = forbidden_reason(addr.ip()) {
                    refused = Some((addr.ip(), reason));
                    continue;
                }
            }
            if result.len() < MAX_ADDRS {
                result.push(addr);
            }
        }
        if result.is_empty() {
            return Err(match refused {
                Some((ip, reason)) => ureq::Error::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{host} resolves to {ip}, a {reason} address; set WSS_ALLOW_PRIVATE_TARGETS=true to allow it"),
                )),
                None => ureq::Error::HostNotFound,
            });
        }
        Ok(result)
    }
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
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4).map(|_| "IPv4-mapped private");
    }
    Some(match s {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible",
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            let v4 = Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
            return v4_reason(v4).map(|_| "NAT64 of a private");
        }
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique local",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local",
        [0x2001, 0xdb8, ..] => "documentation",
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
            "0.0.0.0", "255.255.255.255", "224.0.0.1", "192.0.2.1", "198.18.0.1", "::1", "::", "fc00::1", "fd12::1",
            "fe80::1", "fec0::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::a00:1",
            "2001:db8::1", "ff02::1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(forbidden_reason(parsed).is_some(), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden_reason(parsed), None, "{ip}");
        }
    }

    #[test]
    fn the_resolver_refuses_loopback_unless_allowed() {
        let uri: Uri = "http://127.0.0.1:9/".parse().unwrap();
        let config = UreqConfig::default();
        let guarded = GuardedResolver { allow_private_targets: false };
        let err = guarded.resolve(&uri, &config, NextTimeout::default()).unwrap_err();
        assert!(matches!(&err, ureq::Error::Io(e) if e.kind() == io::ErrorKind::PermissionDenied), "{err}");
        let open = GuardedResolver { allow_private_targets: true };
        let addrs = open.resolve(&uri, &config, NextTimeout::default()).unwrap();
        assert_eq!(addrs[0], "127.0.0.1:9".parse::<SocketAddr>().unwrap());
    }
}
