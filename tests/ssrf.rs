//! SSRF: a tenant chooses the URLs wss sends to, so wss must never reach the network it runs in
//! on a tenant's behalf (issue 5).
//!
//! - [`every_address_form_has_its_verdict`]: the SSRF matrix — every address form the guard knows,
//!   each with its verdict, checked through the guarded resolver exactly as a delivery dials;
//! - registration refuses private literals in any spelling, local names, bad schemes, userinfo,
//!   long URLs and bad ports with INVALID_ARGUMENT naming `url`;
//! - a host accepted at registration is vetted again at every connect (a name that came to resolve
//!   to a private address is refused then, and the receiver gets nothing);
//! - `WSS_ALLOWED_TARGET_CIDRS` opens exactly the listed holes (the address just outside one is
//!   refused when dialled); redirects are never followed; environment proxies are ignored.

mod common;
mod secure;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use common::{assert_status, eventually, Keyspace, Receiver, Recorded, Service, WAIT};
use tonic::Code;
use ureq::{
    http::Uri,
    unversioned::{resolver::Resolver, transport::NextTimeout},
};
use wss::{
    http::{forbidden_reason, literal_ip, GuardedResolver, TargetPolicy},
    http_listener::{self, Bytes, Listener, Options},
    proto::{CreateRetryPolicyRequest, CreateWebhookRequest},
};

/// What the guard says about a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Refused,
    Allowed,
}
use Verdict::{Allowed, Refused};

/// The SSRF matrix: every address form of issue 5, in the spelling a URL would carry.
const MATRIX: &[(&str, Verdict, &str)] = &[
    // IPv4 loopback, in every spelling the C library accepts.
    ("127.0.0.1", Refused, "loopback"),
    ("127.255.255.254", Refused, "loopback, the whole /8"),
    ("2130706433", Refused, "loopback as one decimal number"),
    ("0x7f.1", Refused, "loopback in hex, two parts"),
    ("0x7f000001", Refused, "loopback as one hex number"),
    ("127.1", Refused, "loopback, two parts"),
    ("127.0.1", Refused, "loopback, three parts"),
    ("017700000001", Refused, "loopback in octal"),
    ("0177.0.0.1", Refused, "loopback, octal first part"),
    ("localhost", Refused, "a name for loopback, resolved at connect"),
    // RFC 1918.
    ("10.0.0.1", Refused, "RFC 1918 10/8"),
    ("172.16.0.1", Refused, "RFC 1918 172.16/12"),
    ("172.31.255.254", Refused, "RFC 1918 172.16/12, top"),
    ("192.168.0.1", Refused, "RFC 1918 192.168/16"),
    ("0xa.0.0.1", Refused, "RFC 1918 in hex"),
    ("167772161", Refused, "RFC 1918 as a number"),
    // Link-local, cloud metadata.
    ("169.254.169.254", Refused, "link-local: the cloud metadata service"),
    ("0xa9fea9fe", Refused, "the metadata service as one hex number"),
    ("2852039166", Refused, "the metadata service as one decimal number"),
    ("169.254.0.1", Refused, "link-local"),
    // CGNAT, unspecified, multicast, broadcast, reserved, documentation, benchmarking.
    ("100.64.0.1", Refused, "CGNAT 100.64/10"),
    ("100.127.255.254", Refused, "CGNAT, top"),
    ("0.0.0.0", Refused, "unspecified"),
    ("0", Refused, "unspecified as a number"),
    ("0.1.2.3", Refused, "this network 0/8"),
    ("224.0.0.1", Refused, "multicast"),
    ("239.255.255.250", Refused, "multicast (SSDP)"),
    ("255.255.255.255", Refused, "broadcast"),
    ("240.0.0.1", Refused, "reserved 240/4"),
    ("192.0.0.8", Refused, "IETF protocol assignments"),
    ("192.0.2.1", Refused, "documentation TEST-NET-1"),
    ("198.51.100.1", Refused, "documentation TEST-NET-2"),
    ("203.0.113.1", Refused, "documentation TEST-NET-3"),
    ("198.18.0.1", Refused, "benchmarking 198.18/15"),
    ("198.19.255.254", Refused, "benchmarking, top"),
    ("192.88.99.1", Refused, "6to4 relay anycast"),
    // IPv6.
    ("[::1]", Refused, "IPv6 loopback"),
    ("[0:0:0:0:0:0:0:1]", Refused, "IPv6 loopback, long form"),
    ("[::]", Refused, "IPv6 unspecified"),
    ("[fc00::1]", Refused, "unique local fc00::/7"),
    ("[fd12:3456::1]", Refused, "unique local fd"),
    ("[fe80::1]", Refused, "link-local fe80::/10"),
    ("[febf::1]", Refused, "link-local, top"),
    ("[fec0::1]", Refused, "site-local fec0::/10"),
    ("[ff02::1]", Refused, "multicast"),
    ("[2001:db8::1]", Refused, "documentation 2001:db8::/32"),
    ("[3fff::1]", Refused, "documentation 3fff::/20"),
    ("[100::1]", Refused, "discard-only 100::/64"),
    ("[2001::1]", Refused, "Teredo 2001::/32"),
    ("[2001:2::1]", Refused, "benchmarking 2001:2::/48"),
    ("[2001:10::1]", Refused, "ORCHID"),
    // IPv6 forms that embed IPv4.
    ("[::ffff:127.0.0.1]", Refused, "IPv4-mapped loopback"),
    ("[::ffff:7f00:1]", Refused, "IPv4-mapped loopback, hex"),
    ("[::ffff:169.254.169.254]", Refused, "IPv4-mapped metadata service"),
    ("[::ffff:10.0.0.1]", Refused, "IPv4-mapped RFC 1918"),
    ("[::127.0.0.1]", Refused, "IPv4-compatible loopback"),
    ("[::8.8.8.8]", Refused, "IPv4-compatible (deprecated), even of a public address"),
    ("[::ffff:0:127.0.0.1]", Refused, "IPv4-translated loopback"),
    ("[64:ff9b::127.0.0.1]", Refused, "NAT64 of loopback"),
    ("[64:ff9b::a9fe:a9fe]", Refused, "NAT64 of the metadata service"),
    ("[64:ff9b:1::1]", Refused, "local-use NAT64"),
    ("[2002:7f00:1::1]", Refused, "6to4 of loopback"),
    ("[2002:c0a8:101::1]", Refused, "6to4 of RFC 1918"),
    // Public addresses, in odd spellings too.
    ("93.184.215.14", Allowed, "public IPv4"),
    ("8.8.8.8", Allowed, "public IPv4"),
    ("134744072", Allowed, "public IPv4 as a number"),
    ("0x8.0x8.0x8.0x8", Allowed, "public IPv4 in hex"),
    ("[2606:4700:4700::1111]", Allowed, "public IPv6"),
    ("[::ffff:8.8.8.8]", Allowed, "IPv4-mapped public"),
    ("[64:ff9b::808:808]", Allowed, "NAT64 of a public address"),
    ("[2002:808:808::1]", Allowed, "6to4 of a public address"),
];

#[test]
fn every_address_form_has_its_verdict() {
    let strict = GuardedResolver { policy: TargetPolicy::default(), proxy: None };
    let config = ureq::config::Config::default();
    let mut wrong = Vec::new();
    for &(host, verdict, what) in MATRIX {
        // What the registration check and the connect-time check see.
        let parsed = literal_ip(host);
        if host != "localhost" {
            let Some(ip) = parsed else {
                wrong.push(format!("{host} ({what}): not read as an IP address"));
                continue;
            };
            let seen = if forbidden_reason(ip).is_some() { Refused } else { Allowed };
            if seen != verdict {
                wrong.push(format!("{host} ({what}) = {ip}: expected {verdict:?}, got {seen:?}"));
            }
        }
        // The resolver every delivery goes through: a refused host never yields an address.
        let uri: Uri = format!("https://{host}:443/hook").parse().unwrap_or_else(|e| panic!("{host}: {e}"));
        let resolved = strict.resolve(&uri, &config, NextTimeout::default());
        match (verdict, resolved) {
            (Refused, Ok(addrs)) => wrong.push(format!("{host} ({what}): the resolver let {:?} through", addrs.iter().collect::<Vec<_>>())),
            (Refused, Err(ureq::Error::Io(e))) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let message = e.to_string();
                if !message.contains("WSS_ALLOWED_TARGET_CIDRS") {
                    wrong.push(format!("{host}: the refusal should say how to allow it: {message}"));
                }
            }
            (Refused, Err(other)) => wrong.push(format!("{host} ({what}): refused, but not as a refused target: {other}")),
            (Allowed, Ok(addrs)) => {
                let expected = parsed.expect("allowed hosts are literals");
                if addrs.iter().map(SocketAddr::ip).collect::<Vec<IpAddr>>() != [expected] {
                    wrong.push(format!("{host}: resolved to {:?}, not {expected}", addrs.iter().collect::<Vec<_>>()));
                }
            }
            (Allowed, Err(e)) => wrong.push(format!("{host} ({what}): the resolver refused it: {e}")),
        }
    }
    assert!(wrong.is_empty(), "the SSRF matrix has {} wrong verdicts:\n  {}", wrong.len(), wrong.join("\n  "));

    // Holes are opened deliberately and exactly.
    let hole =
        GuardedResolver { policy: TargetPolicy { allow_private: false, allowed: vec!["10.20.0.0/16".parse().unwrap()] }, proxy: None };
    for (host, allowed) in
        [("10.20.1.2", true), ("0xa.20.1.2", true), ("10.21.0.1", false), ("127.0.0.1", false), ("169.254.169.254", false)]
    {
        let uri: Uri = format!("https://{host}/").parse().unwrap();
        assert_eq!(hole.resolve(&uri, &config, NextTimeout::default()).is_ok(), allowed, "{host} with 10.20.0.0/16 allowed");
    }
    let open = GuardedResolver { policy: TargetPolicy { allow_private: true, allowed: Vec::new() }, proxy: None };
    for &(host, _, _) in MATRIX.iter().filter(|(h, _, _)| !h.starts_with('[') && *h != "localhost") {
        let uri: Uri = format!("https://{host}/").parse().unwrap();
        assert!(open.resolve(&uri, &config, NextTimeout::default()).is_ok(), "{host} with WSS_ALLOW_PRIVATE_TARGETS=true");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refuses_private_literals_in_any_spelling() {
    let ks = Keyspace::new("ssrf_registration");
    let service = Service::start(&ks, "ssrf-registration", &[("WSS_ALLOW_PRIVATE_TARGETS", "false"), ("WSS_ALLOW_HTTP", "false")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let mut webhooks = grpc.webhooks();
    let mut wrong = Vec::new();
    for &(host, verdict, what) in MATRIX {
        let url = format!("https://{host}/hook");
        let result =
            webhooks.create_webhook(CreateWebhookRequest { tenant_id: "acme".into(), url: url.clone(), ..Default::default() }).await;
        match (verdict, result) {
            (Refused, Err(status)) if status.code() == Code::InvalidArgument && status.message().starts_with("url: ") => {}
            (Allowed, Ok(_)) => {}
            (_, other) => wrong.push(format!("{url} ({what}): expected {verdict:?}, got {:?}", other.map(|r| r.into_inner().webhook_id))),
        }
    }
    assert!(wrong.is_empty(), "registration got {} verdicts wrong:\n  {}", wrong.len(), wrong.join("\n  "));

    let long = format!("https://hooks.example.com/{}", "a".repeat(2048));
    for (url, what) in [
        ("http://hooks.example.com/hook", "http:// without WSS_ALLOW_HTTP"),
        ("ftp://hooks.example.com/hook", "another scheme"),
        ("file:///etc/passwd", "a file URL"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "gopher to Redis"),
        ("https:///hook", "no host"),
        ("hooks.example.com/hook", "no scheme"),
        ("https://user:pass@hooks.example.com/", "userinfo"),
        ("https://hooks.example.com@127.0.0.1/", "userinfo hiding the real host"),
        ("https://hooks.example.com:0/", "port 0"),
        ("https://hooks.example.com:99999/", "a port beyond 65535"),
        ("https://hooks.example.com:/", "an empty port"),
        (long.as_str(), "longer than 2 KiB"),
        ("https://api.localhost/", "a *.localhost name"),
        ("https://hooks.example.com/\r\nX-Injected: 1", "CR/LF"),
    ] {
        assert_status(
            webhooks.create_webhook(CreateWebhookRequest { tenant_id: "acme".into(), url: url.into(), ..Default::default() }).await,
            Code::InvalidArgument,
            Some("url"),
            &format!("{url:?} ({what})"),
        );
    }
    // Names are accepted at registration and vetted when dialled.
    webhooks
        .create_webhook(CreateWebhookRequest {
            tenant_id: "acme".into(),
            url: "https://hooks.example.com:8443/in".into(),
            ..Default::default()
        })
        .await
        .expect("a public name");
}

/// Registers a webhook to `url` through a lax service (private targets allowed), with a policy
/// of one attempt, and stops that service; returns the webhook id.
async fn register_while_lax(ks: &Keyspace, url: &str) -> String {
    register_all_while_lax(ks, &[url]).await.remove(0)
}

/// [`register_while_lax`] for several webhooks of tenant `acme`; their ids in order.
async fn register_all_while_lax(ks: &Keyspace, urls: &[&str]) -> Vec<String> {
    let mut lax = Service::start(ks, "lax", &[]).await;
    let grpc = lax.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.policies()
        .create_retry_policy(CreateRetryPolicyRequest { policy_id: "once".into(), max_attempts: Some(1), ..Default::default() })
        .await
        .unwrap();
    let mut ids = Vec::new();
    for url in urls {
        ids.push(grpc.create_webhook("acme", url, |w| w.retry_policy_id = "once".into()).await.webhook_id);
    }
    assert!(lax.terminate().await.success());
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_is_vetted_again_at_every_connect() {
    // A name that passed registration and now resolves to loopback: what DNS rebinding does.
    let ks = Keyspace::new("ssrf_connect");
    let receiver = Receiver::ok();
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let webhook_id = register_while_lax(&ks, &url).await;

    let strict = Service::start(&ks, "strict", &[("WSS_ALLOW_PRIVATE_TARGETS", "false")]).await;
    let grpc = strict.grpc().await;
    let event = ks.publish("acme", "order.created", r#"{"n":1}"#);
    let dead = eventually(WAIT, "the delivery dead-lettered as a refused target", || {
        let (grpc, event) = (grpc.clone(), event.clone());
        async move {
            let dead = grpc.dead_letters("acme").await?;
            dead.into_iter().find(|d| d.stream_entry_id == event).ok_or_else(|| "not yet".to_owned())
        }
    })
    .await;
    assert_eq!(dead.webhook_id, webhook_id);
    let attempt = &dead.attempts[0];
    assert_eq!(attempt.error_kind, "refused_target", "{dead:?}");
    assert!(attempt.error.contains("resolves to 127.0.0.1, a loopback address"), "{}", attempt.error);
    assert!(receiver.requests().is_empty(), "the receiver must get nothing: {:?}", receiver.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_cidrs_open_exactly_their_hole_at_registration() {
    let ks = Keyspace::new("ssrf_cidrs_registration");
    let service =
        Service::start(&ks, "holed", &[("WSS_ALLOW_PRIVATE_TARGETS", "false"), ("WSS_ALLOWED_TARGET_CIDRS", "10.20.0.0/16, fd00:1::/64")])
            .await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    for url in ["http://10.20.3.4/hook", "http://0xa.20.3.4/hook", "http://[fd00:1::5]/hook"] {
        grpc.create_webhook("acme", url, |_| {}).await;
    }
    for url in ["http://10.21.3.4/", "http://127.0.0.1/", "http://[fd00:2::5]/", "http://169.254.169.254/"] {
        assert_status(
            grpc.webhooks().create_webhook(CreateWebhookRequest { tenant_id: "acme".into(), url: url.into(), ..Default::default() }).await,
            Code::InvalidArgument,
            Some("url"),
            &format!("{url}, outside the holes"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_cidrs_open_exactly_their_hole_at_connect() {
    // Two receivers on loopback: 127.0.0.1, inside the hole, and 127.0.0.2, the address just
    // outside it. Both webhooks passed registration (lax); the strict service must dial only
    // the first and refuse the second when it connects.
    let ks = Keyspace::new("ssrf_cidrs");
    let inside = Receiver::ok();
    let outside_hits = Arc::new(Mutex::new(0usize));
    let counted = outside_hits.clone();
    let outside =
        Listener::bind_standalone(SocketAddr::from(([127, 0, 0, 2], 0)), Options::default(), move |_request: http::Request<Bytes>| {
            *counted.lock().unwrap() += 1;
            std::future::ready(http_listener::empty(http::StatusCode::OK))
        })
        .expect("binding a receiver on 127.0.0.2 (all of 127/8 is loopback on Linux)");
    let outside_url = format!("http://{}/hook", outside.local_addr());
    let ids = register_all_while_lax(&ks, &[&inside.url(), &outside_url]).await;
    let holed = Service::start(&ks, "holed", &[("WSS_ALLOW_PRIVATE_TARGETS", "false"), ("WSS_ALLOWED_TARGET_CIDRS", "127.0.0.1/32")]).await;
    let grpc = holed.grpc().await;
    let event = ks.publish("acme", "order.created", r#"{"n":1}"#);
    let requests = inside.wait_for_requests(1, "the event delivered through the hole", Recorded::delivered).await;
    assert_eq!(requests[0].event_id(), event);
    let dead = eventually(WAIT, "the delivery to 127.0.0.2 dead-lettered as a refused target", || {
        let (grpc, event) = (grpc.clone(), event.clone());
        assert_eq!(*outside_hits.lock().unwrap(), 0, "the address outside the hole got a request");
        async move {
            let dead = grpc.dead_letters("acme").await?;
            dead.into_iter().find(|d| d.stream_entry_id == event).ok_or_else(|| "not yet".to_owned())
        }
    })
    .await;
    assert_eq!(dead.webhook_id, ids[1], "{dead:?}");
    assert_eq!(dead.attempts[0].error_kind, "refused_target", "{dead:?}");
    assert!(dead.attempts[0].error.contains("resolves to 127.0.0.2"), "{}", dead.attempts[0].error);
    assert_eq!(*outside_hits.lock().unwrap(), 0, "the address outside the hole got a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed() {
    let ks = Keyspace::new("ssrf_redirect");
    let target = Receiver::ok();
    let location = target.url();
    let hits = Arc::new(Mutex::new(0usize));
    let counted = hits.clone();
    let redirector =
        Listener::bind_standalone(SocketAddr::from(([127, 0, 0, 1], 0)), Options::default(), move |_request: http::Request<Bytes>| {
            *counted.lock().unwrap() += 1;
            let mut response = http_listener::empty(http::StatusCode::TEMPORARY_REDIRECT);
            response.headers_mut().insert(http::header::LOCATION, location.parse().expect("a URL is a header value"));
            std::future::ready(response)
        })
        .unwrap();
    let service = Service::start(&ks, "redirect", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.policies()
        .create_retry_policy(CreateRetryPolicyRequest { policy_id: "once".into(), max_attempts: Some(1), ..Default::default() })
        .await
        .unwrap();
    let url = format!("http://{}/hook", redirector.local_addr());
    grpc.create_webhook("acme", &url, |w| w.retry_policy_id = "once".into()).await;
    let event = ks.publish("acme", "order.created", "{}");
    let dead = eventually(WAIT, "the redirected delivery dead-lettered", || {
        let (grpc, event) = (grpc.clone(), event.clone());
        async move {
            let dead = grpc.dead_letters("acme").await?;
            dead.into_iter().find(|d| d.stream_entry_id == event).ok_or_else(|| "not yet".to_owned())
        }
    })
    .await;
    assert_eq!(dead.attempts[0].status_code, 307, "{dead:?}");
    assert_eq!(*hits.lock().unwrap(), 1);
    assert!(target.requests().is_empty(), "the Location must not be followed: {:?}", target.requests());
}

/// A tiny HTTP CONNECT proxy on loopback for the proxy tests: records each CONNECT target and
/// tunnels every connection to `upstream`, whatever the target (as a proxy in front of a
/// receiver would).
struct ConnectProxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    fn start(upstream: SocketAddr) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let targets: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = targets.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let target = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                    }
                    seen.lock().unwrap().push(target);
                    let server = std::net::TcpStream::connect(upstream).unwrap();
                    let mut client_w = client;
                    client_w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap();
                    let (mut server_r, mut server_w) = (server.try_clone().unwrap(), server);
                    let mut client_r = reader;
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut client_r, &mut server_w);
                    });
                    let _ = std::io::copy(&mut server_r, &mut client_w);
                });
            }
        });
        Self { addr, targets }
    }
}

#[test]
fn an_explicit_proxy_is_the_egress_point() {
    let receiver = Receiver::ok();
    let proxy = ConnectProxy::start(receiver.addr);

    // Through the proxy: wss dials only the proxy (a loopback address, allowed because it is the
    // configured proxy) and sends the webhook's host to it; the guard cannot see the target.
    let agent = wss::http::agent_with(2, TargetPolicy::default(), Some(&format!("http://{}", proxy.addr))).unwrap();
    let response = agent.post("http://hooks.example.test/hook").send(b"{}".as_slice()).expect("delivered through the proxy");
    assert_eq!(response.status(), 200);
    assert_eq!(proxy.targets.lock().unwrap().as_slice(), ["hooks.example.test:80"]);
    assert_eq!(receiver.requests().len(), 1);

    // Without a proxy, the same loopback receiver is refused by the guard.
    let direct = wss::http::agent_with(2, TargetPolicy::default(), None).unwrap();
    let err = direct.post(&receiver.url()).send(b"{}".as_slice()).unwrap_err();
    assert!(matches!(&err, ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied), "{err}");
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(proxy.targets.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_proxies_are_ignored() {
    // The proxy variables go to the wss process only (never set in this test process, whose
    // other tests run at the same time). The proxy they name tunnels to the receiver, so the
    // event arrives either way; only its record of CONNECTs tells whether it was used.
    let ks = Keyspace::new("ssrf_env_proxy");
    let receiver = Receiver::ok();
    let env_proxy = ConnectProxy::start(receiver.addr);
    let env_proxy_url = format!("http://{}", env_proxy.addr);
    let mut env: Vec<(&str, &str)> = ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .map(|name| (*name, env_proxy_url.as_str()))
        .collect();
    env.extend([("NO_PROXY", ""), ("no_proxy", "")]);
    let service = Service::start(&ks, "env-proxy", &env).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;
    let event = ks.publish("acme", "order.created", r#"{"n":1}"#);
    let requests = receiver.wait_for_requests(1, "the event delivered", Recorded::delivered).await;
    assert_eq!(requests[0].event_id(), event);
    assert!(env_proxy.targets.lock().unwrap().is_empty(), "an environment proxy was used: {:?}", env_proxy.targets.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_proxy_carries_every_delivery() {
    let ks = Keyspace::new("ssrf_proxy");
    let receiver = Receiver::ok();
    let proxy = ConnectProxy::start(receiver.addr);
    let proxy_url = format!("http://{}", proxy.addr);
    let service = Service::start(&ks, "proxied", &[("WSS_ALLOW_PRIVATE_TARGETS", "false"), ("WSS_PROXY", &proxy_url)]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", "http://hooks.example.test/hook", |_| {}).await;
    let event = ks.publish("acme", "order.created", r#"{"n":1}"#);
    let requests = receiver.wait_for_requests(1, "the event through the proxy", Recorded::delivered).await;
    assert_eq!(requests[0].event_id(), event);
    assert_eq!(proxy.targets.lock().unwrap().as_slice(), ["hooks.example.test:80"]);
}
