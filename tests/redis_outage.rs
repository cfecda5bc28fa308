//! A Redis outage in the middle of work (issue 4, durability): the test runs its own
//! `redis-server`, kills it with SIGKILL while wss holds events, keeps it down, and starts it
//! again on the same port and data directory. wss must say once that Redis is unreachable and
//! once that it is back, and deliver everything published before, held through, and published
//! after the outage — with nothing left pending. The second test checks that wss keeps
//! delivering what it holds while Redis is away: the held receiver answers one request at a
//! time with Redis still down, and all of it (also what waited inside wss for a free slot of
//! the webhook) must go out. The third: a retry waiting in the durable backlog that comes due
//! while Redis is away is taken once Redis returns, and sent at its attempt number.
//!
//! The Redis runs with `appendonly yes` and `appendfsync always`: every write is on disk before
//! it is acknowledged, so a SIGKILL loses nothing Redis confirmed (without persistence the
//! stream and the configuration would simply be gone after the restart, which no service can
//! be blamed for).

mod common;

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use common::{assert_signed, eventually, wait_until, Keyspace, Receiver, Recorded, Reply, Service, WAIT};
use wss::proto::{DeliveryStatus, GetDeliveryRequest};

/// A private `redis-server` on a free loopback port, with its data in a directory of its own.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().unwrap().port();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        // The port is unique while this Redis runs, so it also keeps the directories of two
        // tests apart (the clock alone may read the same for both).
        let dir = std::env::temp_dir().join(format!("wss-redis-outage-{}-{port}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut redis = Self { port, dir, child: None };
        redis.launch();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts `redis-server` (again) on the same port and directory; waits until it answers.
    fn launch(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .args(["--daemonize", "no", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed? ./run-tests installs it): {e}"));
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) {
                // While loading the AOF it answers -LOADING; wait for PONG.
                if redis::cmd("PING").query::<String>(&mut con).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not answer within {WAIT:?}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and wait for it to be gone.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("redis-server is running");
        child.kill().expect("SIGKILL redis-server");
        child.wait().expect("reaping redis-server");
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("cannot connect to the private Redis at {}: {e}", self.url()))
    }

    /// `XPENDING <stream> wss`: the number of entries read and not acknowledged.
    fn pending(&self, stream: &str) -> Result<u64, String> {
        let reply: redis::Value =
            redis::cmd("XPENDING").arg(stream).arg("wss").query(&mut self.conn()).map_err(|e| format!("XPENDING: {e}"))?;
        match reply {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => Ok(*n as u64),
                other => Err(format!("unexpected XPENDING reply {other:?}")),
            },
            other => Err(format!("unexpected XPENDING reply {other:?}")),
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Holds the held receiver's answers: request number `n` is answered once `n` < the number
/// allowed through.
#[derive(Default)]
struct Turnstile {
    allowed: Mutex<usize>,
    moved: Condvar,
}

impl Turnstile {
    fn wait_for_turn(&self, n: usize) {
        let allowed = self.allowed.lock().unwrap();
        // Bounded, so that a failing test cannot leave handler threads behind for ever.
        let _ = self.moved.wait_timeout_while(allowed, WAIT * 3, |allowed| *allowed <= n).unwrap();
    }

    fn allow(&self, count: usize) {
        *self.allowed.lock().unwrap() = count;
        self.moved.notify_all();
    }
}

/// The event ids of `receiver`'s requests answered 2xx.
fn delivered(receiver: &Receiver) -> BTreeSet<String> {
    receiver.requests().iter().filter(|r| r.delivered()).map(|r| r.event_id().to_owned()).collect()
}

async fn wait_delivered(receiver: &Receiver, ids: &BTreeSet<String>, what: &str) {
    wait_until(WAIT, what, || {
        let got = delivered(receiver);
        let missing: Vec<&String> = ids.difference(&got).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} missing: {missing:?}", missing.len()))
        }
    })
    .await;
}

/// Appends `ids` as events of `event_type` in one pipeline, so that wss reads them together.
fn publish(redis: &PrivateRedis, stream: &str, event_type: &str, ids: &BTreeSet<String>) {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("tenant")
            .arg("acme")
            .arg("type")
            .arg(event_type)
            .arg("data")
            .arg("{}")
            .arg("id")
            .arg(id)
            .ignore();
    }
    pipe.query::<()>(&mut redis.conn()).unwrap_or_else(|e| panic!("XADD of {ids:?}: {e}"));
}

fn ids(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

/// The world of one outage test: a private Redis, wss on it, a `steady` webhook for events of
/// types `before.*` and `after.*`, and a `held` one for `during.*`, whose receiver answers only
/// as the turnstile allows.
struct Outage {
    ks: Keyspace,
    redis: PrivateRedis,
    service: Service,
    steady: Receiver,
    held: Receiver,
    turnstile: Arc<Turnstile>,
    killed: Option<Instant>,
}

impl Outage {
    async fn start(test: &str) -> Self {
        let ks = Keyspace::new(test); // for a unique prefix; the data lives in the private Redis
        let redis = PrivateRedis::start();
        let steady = Receiver::ok();
        let turnstile = Arc::new(Turnstile::default());
        let gate = turnstile.clone();
        let held = Receiver::start(move |n| {
            gate.wait_for_turn(n);
            Reply::status(200)
        });
        // 8 sender threads and a cap of 8 per webhook (the defaults): of the 12 held events, 8
        // are sent and 4 wait inside wss for a slot when Redis goes away.
        let env = [("WSS_REDIS_URL", redis.url()), ("WSS_SENDER_THREADS", "8".into()), ("WSS_WEBHOOK_CONCURRENCY", "8".into())];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let service = Service::start(&ks, &test.replace('_', "-"), &env).await;
        let grpc = service.grpc().await;
        grpc.create_tenant("acme").await;
        grpc.create_webhook("acme", &steady.url(), |r| r.event_types = vec!["before.*".into(), "after.*".into()]).await;
        grpc.create_webhook("acme", &held.url(), |r| r.event_types = vec!["during.*".into()]).await;
        Self { ks, redis, service, steady, held, turnstile, killed: None }
    }

    fn stream(&self) -> String {
        self.ks.events()
    }

    async fn wait_pending(&self, n: u64, what: &str) {
        let stream = self.stream();
        wait_until(WAIT, what, || match self.redis.pending(&stream)? {
            p if p == n => Ok(()),
            p => Err(format!("XPENDING {p}")),
        })
        .await;
    }

    /// Publishes `before` and waits until they are delivered and acknowledged; publishes
    /// `during` and waits until wss has read them all (they stay pending: the held receiver
    /// does not answer yet); then SIGKILLs Redis and waits for wss to notice.
    async fn deliver_then_kill_redis_while_holding(&mut self, before: &BTreeSet<String>, during: &BTreeSet<String>) {
        publish(&self.redis, &self.stream(), "before.created", before);
        wait_delivered(&self.steady, before, "the events published before the outage delivered").await;
        self.wait_pending(0, "the first events acknowledged").await;

        publish(&self.redis, &self.stream(), "during.created", during);
        self.held.wait_for_requests(1, "a held request", |_| true).await;
        self.wait_pending(during.len() as u64, "wss to have read all the held events").await;
        self.killed = Some(Instant::now());
        self.redis.kill();
        let url = self.redis.url();
        let outage = self.service.wait_for(WAIT, "the outage logged", |l| l.contains("unreachable") && l.contains(&url)).await;
        assert!(outage.contains(&url), "the outage line names the Redis: {outage}");
    }

    /// Restarts Redis after ~2 s of outage in all, and waits for wss to say it is back.
    async fn restart_redis(&mut self) {
        let killed = self.killed.expect("Redis was killed");
        // This shapes the fault (an outage of a given length); it waits for no result.
        if let Some(rest) = Duration::from_secs(2).checked_sub(killed.elapsed()) {
            std::thread::sleep(rest);
        }
        self.redis.launch();
        self.service.wait_for(WAIT, "the end of the outage logged", |l| l.contains("reachable again")).await;
    }

    /// Publishes `after`; checks that every event went exactly where it should, that nothing
    /// is pending, and that wss still runs. Returns the outage's log lines: (down, up).
    async fn finish(
        mut self,
        before: &BTreeSet<String>,
        during: &BTreeSet<String>,
        after: &BTreeSet<String>,
    ) -> (Vec<String>, Vec<String>) {
        publish(&self.redis, &self.stream(), "after.created", after);
        wait_delivered(&self.steady, after, "the events published after the outage delivered").await;
        wait_delivered(&self.held, during, "the held events delivered").await;
        self.wait_pending(0, "every entry acknowledged (XPENDING 0)").await;
        let all_steady: BTreeSet<String> = before.union(after).cloned().collect();
        assert_eq!(delivered(&self.steady), all_steady, "the steady webhook got exactly its events");
        assert_eq!(&delivered(&self.held), during, "the held webhook got exactly its events");
        let requested: BTreeSet<String> =
            self.steady.requests().iter().chain(self.held.requests().iter()).map(|r: &Recorded| r.event_id().to_owned()).collect();
        assert_eq!(requested.len(), before.len() + during.len() + after.len(), "no request for an event never published: {requested:?}");
        assert!(self.service.try_wait().is_none(), "wss kept running through the outage");

        let lines = self.service.lines();
        let down: Vec<String> = lines.iter().filter(|l| l.contains("unreachable")).cloned().collect();
        let up: Vec<String> = lines.iter().filter(|l| l.contains("reachable again")).cloned().collect();
        (down, up)
    }
}

/// Events published before the outage, events wss holds (read, not yet answered) through it and
/// answers after it, events published after it: all delivered, nothing pending.
async fn ride_out_an_outage(test: &str) -> (Vec<String>, Vec<String>) {
    let mut outage = Outage::start(test).await;
    let (before, during, after) = (ids("before", 20), ids("during", 12), ids("after", 20));
    outage.deliver_then_kill_redis_while_holding(&before, &during).await;
    outage.restart_redis().await;
    // The events wss held through the outage are answered only now.
    outage.turnstile.allow(usize::MAX);
    outage.finish(&before, &during, &after).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_logged_once_ridden_out_and_loses_nothing() {
    let (down, up) = ride_out_an_outage("redis_outage").await;
    // One line each, however many threads found their connection broken (some only after Redis
    // was back: a connection that went stale during the outage is no new outage).
    assert_eq!(down.len(), 1, "the outage is logged once: {down:#?}");
    assert_eq!(up.len(), 1, "its end is logged once: {up:#?}");
}

/// Issue 4: wss "keeps delivering what it already holds" while Redis is away. The held
/// receiver answers one request at a time, so that the outcome stage sees the completions one
/// by one (as it would with a real receiver's spread-out answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_wss_holds_is_delivered_while_redis_is_down() {
    let mut outage = Outage::start("redis_outage_held").await;
    let (before, during, after) = (ids("before", 5), ids("during", 12), ids("after", 5));
    outage.deliver_then_kill_redis_while_holding(&before, &during).await;
    for n in 1..=during.len() {
        outage.turnstile.allow(n);
        wait_until(WAIT, &format!("held request {n} of {} answered while Redis is down", during.len()), || {
            let answered = outage.held.requests().iter().filter(|r| r.delivered()).count();
            if answered >= n {
                Ok(())
            } else {
                Err(format!("{answered} answered; {} requests arrived", outage.held.requests().len()))
            }
        })
        .await;
    }
    assert!(outage.redis.child.is_none(), "Redis was down throughout");
    outage.restart_redis().await;
    let (down, up) = outage.finish(&before, &during, &after).await;
    assert_eq!((down.len(), up.len()), (1, 1), "the outage and its end are logged once each: {down:#?} {up:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_retry_due_during_an_outage_is_sent_once_redis_is_back() {
    let ks = Keyspace::new("backlog_retry_outage");
    let mut redis = PrivateRedis::start();
    let flaky = Receiver::failing_first(1);
    // The retry is due 2 s after the first attempt, in the backlog.
    let env = [("WSS_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let service = Service::start(&ks, "backlog-outage", &env).await;
    let grpc = service.grpc().await;
    grpc.create_policy("later", 3, 2000, 2000).await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &flaky.url(), |r| r.retry_policy_id = "later".into()).await;
    let stream_id: String = redis::cmd("XADD")
        .arg(ks.events())
        .arg("*")
        .arg(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("id", "evt-outage")])
        .query(&mut redis.conn())
        .unwrap();
    flaky.wait_for_requests(1, "the first attempt", |_| true).await;
    let delivery_id = format!("{stream_id}:{}", webhook.webhook_id);
    eventually(WAIT, "the retry and its due time recorded", || async {
        match grpc.deliveries().get_delivery(GetDeliveryRequest { delivery_id: delivery_id.clone() }).await {
            Ok(r) if r.get_ref().status == DeliveryStatus::Retrying as i32 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    redis.kill();
    service.wait_for(WAIT, "the backlog's pump failing to read the backlog", |l| l.contains("cannot read the backlog")).await;
    assert_eq!(flaky.requests().len(), 1, "nothing is sent while the backlog cannot be read");
    redis.launch();

    let all = flaky.wait_for_requests(1, "the retry, once Redis is back", Recorded::delivered).await;
    let attempts: Vec<&str> = all.iter().map(|r| r.header("X-WSS-Attempt")).collect();
    assert_eq!(attempts, ["1", "2"], "{all:?}");
    assert_eq!(all[1].event_id(), "evt-outage");
    assert_eq!(all[1].body, all[0].body);
    assert_signed(&webhook.secret, &all[1]);
    wait_until(WAIT, "nothing pending", || match redis.pending(&ks.events())? {
        0 => Ok(()),
        n => Err(format!("XPENDING = {n}")),
    })
    .await;
}
