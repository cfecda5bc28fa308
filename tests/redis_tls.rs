//! Production Redis (issue 15, its first half): `rediss://` with a private CA and mutual TLS, and
//! ACL users — each against a private `redis-server` started here with certificates made here.
//! The service delivers end to end through it; what goes wrong (an untrusted server, a missing
//! client certificate, a plain-text port, refused credentials) is said for what it is, with
//! what to do, and never with a password.

mod common;

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Keyspace, Receiver, Recorded, Service, WAIT};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use wss::proto::PublishEventRequest;

/// A CA made now, and the files of what it signed, in a directory of the test's own.
struct Pki {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(test: &str, name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("wss-redis-tls-{test}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Self { dir, issuer: rcgen::Issuer::new(params, key) }
    }

    fn ca(&self) -> String {
        self.path("ca.pem")
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    /// Writes `<name>.pem` and `<name>.key` for a certificate of `purpose`, valid for 127.0.0.1.
    fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![purpose];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (self.path(&format!("{name}.pem")), self.path(&format!("{name}.key")));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private `redis-server`; killed when dropped.
struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    /// Started with `args`; waits until its port accepts connections.
    fn start(port: u16, args: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (./run-tests installs it): {e}"));
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    /// Listening for TLS only on a free port, with `server`'s certificate; `client_ca`: clients
    /// must present a certificate it signed.
    fn tls(pki: &Pki, require_client_certificates: bool) -> Self {
        let (cert, key) = pki.issue("redis-server", ExtendedKeyUsagePurpose::ServerAuth);
        let port = free_port();
        let port_text = port.to_string();
        let ca = pki.ca();
        let auth = if require_client_certificates { "yes" } else { "no" };
        Self::start(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port_text,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                auth,
            ],
        )
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service on `redis_url` with `extra` settings, started without waiting (it may never get
/// through to Redis).
fn spawn(ks: &Keyspace, label: &str, redis_url: &str, extra: &[(&str, &str)]) -> Service {
    let mut env = Service::env(ks, label);
    env.retain(|(k, _)| k != "WSS_REDIS_URL");
    env.push(("WSS_REDIS_URL".into(), redis_url.into()));
    for (k, v) in extra {
        env.push(((*k).into(), (*v).into()));
    }
    Service::spawn(label, env)
}

/// Registers a tenant and a webhook at `receiver` through the service, publishes one event
/// through it (so that it goes over the service's own Redis connection), and waits for it.
async fn delivers_through(service: &mut Service, receiver: &Receiver) {
    service.wait_for_control_plane().await;
    service.wait_for(WAIT, "the pipeline reading", |l| l.contains("reading ") && l.contains("as consumer")).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;
    grpc.events()
        .publish_event(PublishEventRequest {
            tenant_id: "acme".into(),
            event_type: "t".into(),
            data: r#"{"over":"tls"}"#.into(),
            ..Default::default()
        })
        .await
        .expect("PublishEvent");
    let got = receiver.wait_for_requests(1, "the event, through the TLS Redis", Recorded::delivered).await;
    assert_eq!(got[0].json()["data"]["over"], "tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_with_a_private_ca_and_client_certificates_serves_end_to_end() {
    let ks = Keyspace::new("redis_tls");
    let pki = Pki::new("mtls", "wss test Redis CA");
    let redis = PrivateRedis::tls(&pki, true);
    let (client_cert, client_key) = pki.issue("wss", ExtendedKeyUsagePurpose::ClientAuth);
    let receiver = Receiver::ok();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let tls = [("WSS_REDIS_CA_FILE", pki.ca()), ("WSS_REDIS_CLIENT_CERT_FILE", client_cert), ("WSS_REDIS_CLIENT_KEY_FILE", client_key)];
    let tls: Vec<(&str, &str)> = tls.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut service = spawn(&ks, "redis-tls", &url, &tls);
    delivers_through(&mut service, &receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_say_what_is_wrong_and_what_to_do() {
    let ks = Keyspace::new("redis_tls_failures");
    let pki = Pki::new("failures", "wss test Redis CA");
    let redis = PrivateRedis::tls(&pki, true);
    let url = format!("rediss://127.0.0.1:{}", redis.port);

    // The server's CA is not trusted: the OS store does not know it.
    let untrusted = spawn(&ks, "untrusted", &url, &[]);
    let line = untrusted.wait_for(WAIT, "the untrusted server said", |l| l.contains("TLS handshake with Redis")).await;
    assert!(line.contains("unknown issuer") && line.contains("WSS_REDIS_CA_FILE"), "{line}");
    drop(untrusted);

    // Trusted, but the server asks for a client certificate that is not there.
    let ca = pki.ca();
    let no_client = spawn(&ks, "no-client-cert", &url, &[("WSS_REDIS_CA_FILE", &ca)]);
    let line = no_client
        .wait_for(WAIT, "the missing client certificate said", |l| l.contains("Redis") && l.contains("WSS_REDIS_CLIENT_CERT_FILE"))
        .await;
    assert!(!line.contains("Start one"), "not an unreachable Redis: {line}");
    drop(no_client);

    // rediss:// to a port that speaks plain text.
    let port = free_port();
    let plain = PrivateRedis::start(port, &["--port", &port.to_string()]);
    let confused = spawn(&ks, "plain-port", &format!("rediss://127.0.0.1:{}", plain.port), &[("WSS_REDIS_CA_FILE", &ca)]);
    let line = confused.wait_for(WAIT, "a plain port said", |l| l.contains("Redis at rediss://")).await;
    assert!(line.contains("TLS") && !line.contains("Start one"), "{line}");
    drop(confused);

    // TLS settings with a plain URL are refused at start, naming the setting.
    let mut refused = spawn(&ks, "tls-settings-plain-url", "redis://127.0.0.1:1", &[("WSS_REDIS_CA_FILE", &ca)]);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = refused.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "wss kept running with TLS settings for a plain URL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let said = refused.wait_for(WAIT, "the refusal", |l| l.contains("rediss://")).await;
    assert!(said.contains("redis_ca_file"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_connects_and_wrong_credentials_are_called_so() {
    let ks = Keyspace::new("redis_acl");
    let port = free_port();
    let redis = PrivateRedis::start(port, &["--port", &port.to_string()]);
    let admin = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut con = admin.get_connection().unwrap();
    let _: () =
        redis::cmd("ACL").arg("SETUSER").arg("wss").arg("on").arg(">s3cret-pass").arg("~*").arg("&*").arg("+@all").query(&mut con).unwrap();
    // Nobody else gets in.
    let _: () = redis::cmd("ACL").arg("SETUSER").arg("default").arg("off").query(&mut con).unwrap();
    drop(con);

    let receiver = Receiver::ok();
    let mut service = spawn(&ks, "acl", &format!("redis://wss:s3cret-pass@127.0.0.1:{port}"), &[]);
    delivers_through(&mut service, &receiver).await;
    assert!(service.lines().iter().all(|l| !l.contains("s3cret-pass")), "the password reached a log line");
    drop(service);

    let wrong = spawn(&ks, "acl-wrong", &format!("redis://wss:not-the-pass@127.0.0.1:{port}"), &[]);
    let line = wrong.wait_for(WAIT, "refused credentials said", |l| l.contains("refused the credentials")).await;
    assert!(line.contains("WSS_REDIS_URL") && !line.contains("Start one"), "{line}");
    assert!(wrong.lines().iter().all(|l| !l.contains("not-the-pass")), "the password reached a log line");
}
