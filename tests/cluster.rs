//! Sharded streams (docs/contract.md §8) and Redis Cluster.
//!
//! - On one Redis with `WSS_STREAM_SHARDS=4`: each tenant's events land in
//!   `<prefix>events:{crc32(tenant) mod 4}` — PublishEvent's and a producer's `XADD` alike —, a
//!   waiting retry in that shard's backlog (`<prefix>backlog:{k}:…`), and every shard is read and
//!   acknowledged through group `wss`.
//! - On a real Redis Cluster (ignored in `./run-tests`; its own `.ci/run` step): three masters
//!   with a replica each on loopback ports, two instances with `WSS_STREAM_SHARDS=8`, 10,000
//!   events over 50 tenants; one instance is SIGKILLed midway and one master fails over to its
//!   replica. Every event arrives, and nothing is left pending in any shard.

mod common;

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{wait_until, Keyspace, Receiver, Reply, Service, WAIT};
use wss::proto::PublishEventRequest;

/// Entry ids of `stream` (all of them: the test's streams are small).
fn entry_ids(con: &mut impl redis::ConnectionLike, stream: &str) -> Vec<String> {
    let reply: redis::Value = redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query(con).unwrap();
    wss::streams::parse_entries(reply).unwrap().into_iter().map(|e| e.id).collect()
}

/// Entries pending in group `wss` of `stream` (an error when the group does not exist).
fn pending(con: &mut impl redis::ConnectionLike, stream: &str) -> Result<u64, String> {
    let reply: redis::Value = redis::cmd("XPENDING").arg(stream).arg("wss").query(con).map_err(|e| format!("XPENDING {stream}: {e}"))?;
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => Ok(*n as u64),
            other => Err(format!("XPENDING {stream}: {other:?}")),
        },
        other => Err(format!("XPENDING {stream}: {other:?}")),
    }
}

/// `PublishEvent` of an event of `tenant`.
async fn publish(grpc: &common::Grpc, tenant: &str) -> wss::proto::PublishEventResponse {
    let request =
        PublishEventRequest { tenant_id: tenant.into(), event_type: "order.created".into(), data: "{}".into(), ..Default::default() };
    grpc.events().publish_event(request).await.unwrap_or_else(|s| panic!("PublishEvent for {tenant}: {s:?}")).into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_keys_land_where_the_contract_says() {
    const SHARDS: u32 = 4;
    let ks = Keyspace::new("shards");
    let receiver = Receiver::start(|_| Reply::status(200));
    // The first request of this one fails: its retry waits in its shard's backlog meanwhile.
    let flaky = Receiver::start(|n| Reply::status(if n == 0 { 503 } else { 200 }));
    let service = Service::start(&ks, "shards", &[("WSS_STREAM_SHARDS", "4")]).await;
    let grpc = service.grpc().await;
    let tenants = ["acme", "globex", "initech", "hooli", "t-49"];
    for tenant in tenants {
        grpc.create_tenant(tenant).await;
        grpc.create_webhook(tenant, &receiver.url(), |_| {}).await;
    }
    let shards_used: BTreeSet<u32> = tenants.iter().map(|t| wss::shard::shard_of(t, SHARDS)).collect();
    assert!(shards_used.len() >= 3, "the tenants spread over several shards: {shards_used:?}");

    let mut con = ks.conn();
    let mut expected = BTreeSet::new();
    for tenant in tenants {
        let k = wss::shard::shard_of(tenant, SHARDS);
        let stream = format!("{}events:{{{k}}}", ks.prefix);
        let published = publish(&grpc, tenant).await;
        assert!(entry_ids(&mut con, &stream).contains(&published.stream_entry_id), "PublishEvent for {tenant} appends to {stream}");
        expected.insert(published.event_id);
        // A producer's XADD to the same stream is read too.
        let id: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("tenant")
            .arg(tenant)
            .arg("type")
            .arg("x")
            .arg("data")
            .arg("{}")
            .query(&mut con)
            .unwrap();
        expected.insert(id);
    }
    let unsharded: bool = redis::cmd("EXISTS").arg(ks.events()).query(&mut con).unwrap();
    assert!(!unsharded, "with 4 shards nothing goes to the unsharded stream {}", ks.events());

    // A retry waits in the backlog of its entry's shard.
    let policy = grpc.create_policy("quick", 3, 1500, 1500).await;
    grpc.create_tenant("retrying").await;
    let webhook = grpc.create_webhook("retrying", &flaky.url(), |w| w.retry_policy_id = policy.policy_id.clone()).await;
    let k = wss::shard::shard_of("retrying", SHARDS);
    let published = publish(&grpc, "retrying").await;
    let item = format!("{}backlog:{{{k}}}:item:{}:{}", ks.prefix, webhook.webhook_id, published.stream_entry_id);
    wait_until(WAIT, "the retry waiting in its shard's backlog", || {
        let exists: bool = redis::cmd("EXISTS").arg(&item).query(&mut con).map_err(|e| e.to_string())?;
        exists.then_some(()).ok_or_else(|| format!("no {item}"))
    })
    .await;
    wait_until(WAIT, "the retry delivered", || {
        let ok = flaky.requests().iter().any(|r| r.delivered() && r.event_id() == published.event_id);
        ok.then_some(()).ok_or_else(|| "not yet".to_owned())
    })
    .await;

    wait_until(WAIT, "every event delivered", || {
        let got: BTreeSet<String> = receiver.requests().iter().filter(|r| r.delivered()).map(|r| r.event_id().to_owned()).collect();
        let missing = expected.difference(&got).count();
        (missing == 0).then_some(()).ok_or_else(|| format!("{missing} missing"))
    })
    .await;
    // Every shard has the group (made at start, whether used or not), and nothing pending.
    wait_until(WAIT, "nothing pending in any shard", || {
        for k in 0..SHARDS {
            let stream = format!("{}events:{{{k}}}", ks.prefix);
            let n = pending(&mut con, &stream)?;
            if n > 0 {
                return Err(format!("{n} pending in {stream}"));
            }
        }
        Ok(())
    })
    .await;
    let leftovers: Vec<String> =
        ks.keys().into_iter().filter(|key| key.contains("backlog:") && !key.contains(&format!("backlog:{{{k}}}"))).collect();
    assert!(leftovers.is_empty(), "backlog keys only in the retrying tenant's shard: {leftovers:?}");
}

// ---------------------------------------------------------------------------------------------
// A real Redis Cluster
// ---------------------------------------------------------------------------------------------

/// Six `redis-server --cluster-enabled yes` on loopback: three masters, a replica each. Every
/// node is shut down when dropped.
struct Cluster {
    ports: Vec<u16>,
    dir: std::path::PathBuf,
}

/// A port free with its cluster bus port (+10000) free too.
fn free_cluster_port(taken: &[u16]) -> u16 {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    for i in 0..5000u64 {
        let port = 20000 + ((seed.wrapping_mul(7919).wrapping_add(i * 104_729)) % 10000) as u16;
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair (P, P+10000) between 20000 and 30000");
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("running redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

impl Cluster {
    fn start(dir: &Path) -> Self {
        let mut ports = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port(&ports);
            let status = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &dir.join(format!("nodes-{port}.conf")).to_string_lossy()])
                .args(["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no", "--daemonize", "yes"])
                .args(["--dir", &dir.to_string_lossy(), "--logfile", &dir.join(format!("redis-{port}.log")).to_string_lossy()])
                .status()
                .expect("running redis-server (apt-get install redis-server)");
            assert!(status.success(), "redis-server on port {port} did not start");
            ports.push(port);
        }
        let cluster = Self { ports, dir: dir.to_owned() };
        for port in &cluster.ports {
            let deadline = Instant::now() + WAIT;
            while !redis_cli(*port, &["PING"]).contains("PONG") {
                assert!(Instant::now() < deadline, "redis-server on {port} does not answer");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("running redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        cluster.wait_ok();
        cluster
    }

    /// Until every node says `cluster_state:ok`.
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for port in &self.ports {
            while !redis_cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster is not ok on {port}: {}", redis_cli(*port, &["CLUSTER", "INFO"]));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self.ports.iter().take(3).map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Every replica's port with its master's port.
    fn replicas(&self) -> Vec<(u16, u16)> {
        self.ports
            .iter()
            .filter_map(|port| {
                let info = redis_cli(*port, &["INFO", "replication"]);
                let master = info.lines().find_map(|l| l.strip_prefix("master_port:")).and_then(|p| p.trim().parse().ok())?;
                info.contains("role:slave").then_some((*port, master))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for port in &self.ports {
            let _ = redis_cli(*port, &["SHUTDOWN", "NOSAVE"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts a six-node Redis Cluster and sends 10,000 events (~1 min); run with --ignored (.ci/run does)"]
async fn a_cluster_delivers_everything_through_a_killed_instance_and_a_failover() {
    const SHARDS: u32 = 8;
    const TENANTS: usize = 50;
    const EVENTS: usize = 10_000;
    let dir = std::env::temp_dir().join(format!("wss-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = Cluster::start(&dir);
    let url = cluster.url();
    // The keyspace's own Redis is not used: the services' settings come from here.
    let prefix = format!("wsscluster:{}:", std::process::id());
    let receiver = Receiver::start(|_| Reply::status(200));
    let env = |consumer: &str| -> Vec<(String, String)> {
        [
            ("WSS_REDIS_URL", url.clone()),
            ("WSS_KEY_PREFIX", prefix.clone()),
            ("WSS_STREAM_SHARDS", SHARDS.to_string()),
            ("WSS_GRPC_ADDR", "127.0.0.1:0".into()),
            ("WSS_METRICS_ADDR", "127.0.0.1:0".into()),
            ("WSS_CONSUMER", consumer.into()),
            ("WSS_CLAIM_AFTER", "3s".into()),
            ("WSS_ALLOW_PRIVATE_TARGETS", "true".into()),
            ("WSS_ALLOW_HTTP", "true".into()),
            ("WSS_SENDER_THREADS", "16".into()),
            ("WSS_LOG_LEVEL", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    let start = |consumer: &'static str| {
        let env = env(consumer);
        async move {
            let mut service = Service::spawn(consumer, env);
            service.wait_for_control_plane().await;
            service.wait_for(WAIT, "the pipeline to start", |l| l.contains("reading ") && l.contains("as consumer")).await;
            service
        }
    };
    let a = start("cluster-a").await;
    let b = start("cluster-b").await;
    let grpc = a.grpc().await;
    let tenants: Vec<String> = (0..TENANTS).map(|n| format!("tenant-{n}")).collect();
    for tenant in &tenants {
        grpc.create_tenant(tenant).await;
        grpc.create_webhook(tenant, &receiver.url(), |_| {}).await;
    }
    assert!(
        tenants.iter().map(|t| wss::shard::shard_of(t, SHARDS)).collect::<BTreeSet<_>>().len() == SHARDS as usize,
        "50 tenants cover the 8 shards"
    );

    let client = redis::cluster::ClusterClient::new(cluster.ports.iter().take(3).map(|p| format!("redis://127.0.0.1:{p}"))).unwrap();
    let mut con = client.get_connection().unwrap();
    let mut b = Some(b);
    let mut expected = BTreeSet::new();
    for n in 0..EVENTS {
        let tenant = &tenants[n % TENANTS];
        let stream = format!("{prefix}events:{{{}}}", wss::shard::shard_of(tenant, SHARDS));
        let event_id = format!("evt-{n}");
        // A failover may refuse a write for a moment: the producer retries, as a real one would.
        let deadline = Instant::now() + WAIT;
        loop {
            let added: redis::RedisResult<String> = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("tenant")
                .arg(tenant)
                .arg("type")
                .arg("order.created")
                .arg("id")
                .arg(&event_id)
                .arg("data")
                .arg(format!("{{\"n\":{n}}}"))
                .query(&mut con);
            match added {
                Ok(_) => break,
                Err(err) => {
                    assert!(Instant::now() < deadline, "XADD to {stream} keeps failing: {err}");
                    std::thread::sleep(Duration::from_millis(100));
                    con = client.get_connection().unwrap_or(con);
                }
            }
        }
        expected.insert(event_id);
        if n == EVENTS / 3 {
            // SIGKILL (the harness's drop): its pending entries are claimed by the other.
            drop(b.take());
        }
        if n == EVENTS / 2 {
            // A master holding some shard's stream (a key on another node answers MOVED).
            let holds = |master: u16| -> Vec<u32> {
                (0..SHARDS).filter(|k| redis_cli(master, &["EXISTS", &format!("{prefix}events:{{{k}}}")]).trim() == "1").collect()
            };
            let (replica, master, held) = cluster
                .replicas()
                .into_iter()
                .map(|(replica, master)| (replica, master, holds(master)))
                .find(|(_, _, held)| !held.is_empty())
                .expect("some master holds a shard's stream");
            eprintln!("failing over master {master}, which holds shards {held:?}, to its replica {replica}");
            let answer = redis_cli(replica, &["CLUSTER", "FAILOVER"]);
            assert!(answer.contains("OK"), "CLUSTER FAILOVER on {replica} (replica of {master}): {answer}");
            wait_until(WAIT, "the replica to become a master", || {
                redis_cli(replica, &["ROLE"]).starts_with("master").then_some(()).ok_or_else(|| redis_cli(replica, &["ROLE"]))
            })
            .await;
        }
    }
    wait_until(Duration::from_secs(180), "every event delivered", || {
        let got: BTreeSet<String> = receiver.requests().iter().filter(|r| r.delivered()).map(|r| r.event_id().to_owned()).collect();
        let missing: Vec<&String> = expected.difference(&got).take(5).collect();
        missing.is_empty().then_some(()).ok_or_else(|| format!("{} missing, e.g. {missing:?}", expected.difference(&got).count()))
    })
    .await;
    wait_until(WAIT, "nothing pending in any shard", || {
        let mut con = client.get_connection().map_err(|e| e.to_string())?;
        for k in 0..SHARDS {
            let stream = format!("{prefix}events:{{{k}}}");
            let n = pending(&mut con, &stream)?;
            if n > 0 {
                return Err(format!("{n} pending in {stream}"));
            }
        }
        Ok(())
    })
    .await;
    let requests = receiver.requests();
    let repeats = requests.len() - expected.len();
    eprintln!("{} events delivered with {} requests ({repeats} repeats after the SIGKILL)", expected.len(), requests.len());
    assert!(a.lines().iter().all(|l| !l.contains("CROSSSLOT")), "no command spanned slots");
    drop(a);
    drop(cluster);
}
