//! Stream retention (`WSS_STREAM_RETENTION`, docs/contract.md §6): wss trims `<prefix>events` of entries every
//! consumer group is done with once they are older than the retention, so the stream stays
//! bounded under a steady flow; an entry still pending — in another group the test reads
//! without acknowledging, or in group `wss` behind a receiver that hangs — is never trimmed, nor
//! anything after it; `off` trims nothing.
//!
//! Trimming is approximate (`XTRIM … MINID ~`): Redis removes whole nodes of the stream (at most
//! `stream-node-max-entries`, 100 by default, entries each), so the bounds here allow one node.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use common::{http_get, parse_stream_id, wait_until, Keyspace, Receiver, Recorded, Reply, Service, WAIT};

const RETENTION: &str = "1s";

fn xlen(con: &mut redis::Connection, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query(con).unwrap_or_else(|e| panic!("XLEN {stream}: {e}"))
}

/// Whether entry `id` is still in the stream, with its fields.
fn present(con: &mut redis::Connection, stream: &str, id: &str) -> bool {
    let found: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(stream).arg(id).arg(id).query(con).unwrap_or_else(|e| panic!("XRANGE {id}: {e}"));
    found.first().is_some_and(|(_, fields)| !fields.is_empty())
}

/// The id of the oldest entry left.
fn oldest(con: &mut redis::Connection, stream: &str) -> Option<String> {
    let found: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").arg("COUNT").arg(1).query(con).unwrap_or_else(|e| panic!("XRANGE - +: {e}"));
    found.into_iter().next().map(|(id, _)| id)
}

/// `count` events of `tenant`, appended in one round trip; their ids in order.
fn publish_many(con: &mut redis::Connection, stream: &str, tenant: &str, count: usize) -> Vec<String> {
    let mut pipe = redis::pipe();
    for n in 0..count {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("tenant")
            .arg(tenant)
            .arg("type")
            .arg("order.created")
            .arg("data")
            .arg(format!("{{\"n\":{n}}}"));
    }
    pipe.query(con).unwrap_or_else(|e| panic!("XADD ×{count}: {e}"))
}

/// `stream-node-max-entries`: how many entries one node of a stream holds at most, hence how
/// many approximate trimming may keep beyond its point.
fn node_size(con: &mut redis::Connection) -> u64 {
    let (_, value): (String, u64) = redis::cmd("CONFIG").arg("GET").arg("stream-node-max-entries").query(con).expect("CONFIG GET");
    assert!(value > 0, "the test Redis must bound stream nodes (stream-node-max-entries = {value})");
    value
}

/// Group `group` reads every new entry as consumer `test`; returns their ids.
fn read_group(con: &mut redis::Connection, stream: &str, group: &str) -> Vec<String> {
    let reply: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("test")
        .arg("COUNT")
        .arg(10_000)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query(con)
        .unwrap_or_else(|e| panic!("XREADGROUP {group}: {e}"));
    wss::streams::parse_read_reply(reply).expect("an XREADGROUP reply").into_iter().map(|e| e.id).collect()
}

fn ack(con: &mut redis::Connection, stream: &str, group: &str, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let _: u64 = redis::cmd("XACK").arg(stream).arg(group).arg(ids).query(con).unwrap_or_else(|e| panic!("XACK {group}: {e}"));
}

fn create_group(con: &mut redis::Connection, stream: &str, group: &str) {
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(group).arg("0").arg("MKSTREAM").query(con).expect("XGROUP CREATE");
}

/// `wss_stream_trimmed_entries_total` from `/metrics`.
fn trimmed_counter(metrics: std::net::SocketAddr) -> Result<u64, String> {
    let (status, _, text) = http_get(metrics, "/metrics", None)?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("wss_stream_trimmed_entries_total "))
        .ok_or_else(|| "no wss_stream_trimmed_entries_total in /metrics".to_owned())?
        .trim()
        .parse()
        .map_err(|e| format!("wss_stream_trimmed_entries_total: {e}"))
}

/// Waits until the service has logged `passes` retention passes whose trim point is `point`
/// (each pass logs `trim point <id>` at debug): proof that trimming ran, and stopped there.
/// Fails at once if the entry `point` is gone meanwhile.
async fn wait_for_passes_stopped_at(service: &Service, con: &mut redis::Connection, stream: &str, point: &str, passes: usize) {
    let needle = format!("trim point {point}");
    wait_until(WAIT, &format!("{passes} retention passes with `{needle}`"), || {
        assert!(present(con, stream, point), "entry {point}, still pending, was trimmed");
        let seen = service.lines().iter().filter(|l| l.contains(&needle)).count();
        if seen >= passes {
            Ok(())
        } else {
            Err(format!("{seen} so far"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_stays_bounded_with_a_second_group_reading_along() {
    let ks = Keyspace::new("retention_bounded");
    let stream = ks.events();
    let mut con = ks.conn();
    let node = node_size(&mut con);
    // A second group, as an audit consumer would add; the test reads and acknowledges for it.
    create_group(&mut con, &stream, "audit");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "retention-bounded", &[("WSS_STREAM_RETENTION", RETENTION)]).await;
    service.wait_for_log("trimming entries of", WAIT).await;
    let metrics = service.wait_for_metrics().await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;

    // 12 s of events, 100 a second; every 250 ms the audit group reads and acknowledges what
    // came, and the stream's length is sampled.
    let run = Duration::from_secs(12);
    let started = Instant::now();
    let mut ids: Vec<String> = Vec::new();
    let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while started.elapsed() < run {
        tick.tick().await;
        ids.extend(publish_many(&mut con, &stream, "acme", 25));
        let read = read_group(&mut con, &stream, "audit");
        ack(&mut con, &stream, "audit", &read);
        samples.push((started.elapsed(), xlen(&mut con, &stream), ids.len()));
    }
    let published = ids.len() as u64;
    let last = ids.last().expect("events were published").clone();

    // Bounded while it ran: by design about (retention + a 2 s period) of events plus one node,
    // some 400 here; in the last third of the run, never half of everything published.
    let late: Vec<&(Duration, u64, usize)> = samples.iter().filter(|(at, _, _)| *at >= run * 2 / 3).collect();
    let peak = late.iter().map(|(_, len, _)| *len).max().expect("samples in the last third");
    assert!(
        peak < published / 2,
        "XLEN reached {peak} in the last third of the run, of {published} published; samples (elapsed, XLEN, published): {samples:?}"
    );

    // Once everything is delivered and both groups are done, all but the node holding the last
    // entry goes (the point never passes a group's last-delivered id).
    wait_until(WAIT, "every event delivered and acknowledged by group wss", || ks.all_acknowledged_through(&last)).await;
    let rest = read_group(&mut con, &stream, "audit");
    ack(&mut con, &stream, "audit", &rest);
    let left = wait_until(WAIT, &format!("the stream trimmed to at most one node ({node} entries)"), || {
        let len = xlen(&mut con, &stream);
        if len <= node {
            Ok(len)
        } else {
            Err(format!("XLEN {len}"))
        }
    })
    .await;
    assert!(present(&mut con, &stream, &last), "the last-delivered entry {last} stays");
    let delivered = receiver.requests().iter().filter(|r| r.delivered()).count();
    assert!(delivered >= ids.len(), "every event was delivered before it went: {delivered} of {}", ids.len());
    // The counter counts exactly what went (nothing else trims this stream).
    wait_until(WAIT, "wss_stream_trimmed_entries_total = published − XLEN", || {
        let counted = trimmed_counter(metrics)?;
        let len = xlen(&mut con, &stream);
        if counted == published - len {
            Ok(())
        } else {
            Err(format!("counter {counted}, published {published}, XLEN {len} (was {left})"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_pending_in_another_group_is_never_trimmed_nor_anything_after_it() {
    let ks = Keyspace::new("retention_other_group");
    let stream = ks.events();
    let mut con = ks.conn();
    let node = node_size(&mut con) as usize;
    create_group(&mut con, &stream, "audit");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "retention-group", &[("WSS_STREAM_RETENTION", RETENTION)]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;

    // Three nodes' worth before the held entry, so that some whole nodes can go; as many after.
    let before = publish_many(&mut con, &stream, "acme", 3 * node);
    let held = publish_many(&mut con, &stream, "acme", 1).remove(0);
    let after = publish_many(&mut con, &stream, "acme", 3 * node);
    let read = read_group(&mut con, &stream, "audit");
    assert_eq!(read.len(), before.len() + 1 + after.len());
    ack(&mut con, &stream, "audit", &read.iter().filter(|id| **id != held).cloned().collect::<Vec<_>>());
    wait_until(WAIT, "every event acknowledged by group wss", || ks.all_acknowledged_through(after.last().unwrap())).await;

    // Passes run and stop at the held entry: the audit group's oldest pending one.
    wait_for_passes_stopped_at(&service, &mut con, &stream, &held, 2).await;
    assert!(present(&mut con, &stream, &held), "the entry pending in group audit ({held}) was trimmed");
    assert!(after.iter().all(|id| present(&mut con, &stream, id)), "entries after the pending one were trimmed");
    let first = oldest(&mut con, &stream).expect("entries left");
    assert!(parse_stream_id(&first) > parse_stream_id(&before[0]), "acknowledged entries before it went (oldest left {first})");
    assert!(parse_stream_id(&first) <= parse_stream_id(&held));

    // Acknowledged, it goes too.
    ack(&mut con, &stream, "audit", std::slice::from_ref(&held));
    wait_until(WAIT, "the entry trimmed once acknowledged", || {
        if present(&mut con, &stream, &held) {
            Err("still there".into())
        } else {
            Ok(())
        }
    })
    .await;
}

/// A receiver that holds every request until [`Gate::open`]: a hanging endpoint.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap();
        // Bounded, so that a failed test still ends.
        let _ = changed.wait_timeout_while(guard, Duration::from_secs(60), |open| !*open).unwrap();
    }

    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_delivery_hangs_is_never_trimmed() {
    let ks = Keyspace::new("retention_hanging");
    let stream = ks.events();
    let mut con = ks.conn();
    let node = node_size(&mut con) as usize;
    let fast = Receiver::ok();
    let gate = Gate::default();
    let held_gate = gate.clone();
    let hanging = Receiver::start(move |_| {
        held_gate.wait();
        Reply::status(200)
    });
    let service = Service::start(&ks, "retention-hanging", &[("WSS_STREAM_RETENTION", RETENTION)]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_tenant("stuck").await;
    grpc.create_webhook("acme", &fast.url(), |_| {}).await;
    grpc.create_webhook("stuck", &hanging.url(), |_| {}).await;

    let before = publish_many(&mut con, &stream, "acme", 3 * node);
    let stuck = publish_many(&mut con, &stream, "stuck", 1).remove(0);
    let after = publish_many(&mut con, &stream, "acme", 3 * node);
    hanging.wait_for_requests(1, "the hanging delivery", |_| true).await;
    fast.wait_for_requests(before.len() + after.len(), "delivered", Recorded::delivered).await;

    wait_for_passes_stopped_at(&service, &mut con, &stream, &stuck, 2).await;
    let state = ks.group_state().expect("group wss");
    assert!(state.pending >= 1, "the hanging delivery's entry is pending: {state:?}");
    assert!(present(&mut con, &stream, &stuck), "the entry of the hanging delivery ({stuck}) was trimmed");
    assert!(after.iter().all(|id| present(&mut con, &stream, id)), "entries after the pending one were trimmed");
    let first = oldest(&mut con, &stream).expect("entries left");
    assert!(parse_stream_id(&first) > parse_stream_id(&before[0]), "acknowledged entries before it went (oldest left {first})");

    gate.open();
    hanging.wait_for_requests(1, "the held delivery answered", Recorded::delivered).await;
    wait_until(WAIT, "everything acknowledged", || ks.all_acknowledged_through(after.last().unwrap())).await;
    wait_until(WAIT, "the entry trimmed once delivered", || {
        if present(&mut con, &stream, &stuck) {
            Err("still there".into())
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_leaves_the_stream_to_producers() {
    // Two services side by side, same events at the same time: the one with a retention trims
    // (so enough time passed for trimming), the one with `off` keeps every entry.
    let ks_off = Keyspace::new("retention_off");
    let ks_on = Keyspace::new("retention_on");
    let receiver = Receiver::ok();
    let off = Service::start(&ks_off, "retention-off", &[("WSS_STREAM_RETENTION", "off")]).await;
    let on = Service::start(&ks_on, "retention-on", &[("WSS_STREAM_RETENTION", RETENTION)]).await;
    let mut con = ks_off.conn();
    let node = node_size(&mut con) as usize;
    let mut published = BTreeMap::new();
    for (ks, service) in [(&ks_off, &off), (&ks_on, &on)] {
        let grpc = service.grpc().await;
        grpc.create_tenant("acme").await;
        grpc.create_webhook("acme", &receiver.url(), |_| {}).await;
        published.insert(ks.prefix.clone(), publish_many(&mut con, &ks.events(), "acme", 3 * node));
    }
    for ks in [&ks_off, &ks_on] {
        let last = published[&ks.prefix].last().unwrap().clone();
        wait_until(WAIT, "every event acknowledged", || ks.all_acknowledged_through(&last)).await;
    }
    wait_until(WAIT, "the service with a retention trimmed its stream", || {
        let len = xlen(&mut con, &ks_on.events());
        if len < 3 * node as u64 {
            Ok(())
        } else {
            Err(format!("XLEN {len}"))
        }
    })
    .await;
    assert_eq!(xlen(&mut con, &ks_off.events()), 3 * node as u64, "with WSS_STREAM_RETENTION=off nothing is trimmed");
    assert!(!off.lines().iter().any(|l| l.contains("trim point")), "no retention pass ran with off");
    off.wait_for_log("WSS_STREAM_RETENTION=off", WAIT).await;
}
