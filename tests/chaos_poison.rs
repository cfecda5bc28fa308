//! The chaos run of issue 13 (`#[ignore]`d: `.ci/run` runs it in a step of its own with
//! `./run-tests --test chaos_poison -- --ignored`).
//!
//! 10,000 good events, with every input that used to crash, stall or bloat an instance mixed in
//! as poison entries, read by two wss instances (consumers `a` and `b` of one group). The test
//! acts as their supervisor: it SIGKILLs one of them now and then and restarts whichever has
//! exited. The poison entries:
//!
//! - `_wss_created_at_ms` past year 9999 (the formatter used to panic) → `invalid_field`;
//! - an entry id in year 10000, appended last (every later `*` id would be in that year too) →
//!   `invalid_field`;
//! - 10 MB entries (they used to be pulled whole and kept whole) → `too_large`;
//! - an event whose filter would run for ever (`lists.range` inside `lists.range`) → `filter_error`
//!   (the evaluation budget); the deep filters that used to overflow the stack are refused at
//!   registration, which the test checks too;
//! - entries that crashed instances again and again (pending, delivered nine times, owned by `a`
//!   or by a consumer that is gone) → `poison`;
//! - data nested 100 deep → `too_deep`, and data that is not JSON → `data_not_json`.
//!
//! At the end every good event was delivered, every poison entry is dead-lettered with its
//! reason, nothing is pending, and both instances are running.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use common::{Keyspace, Receiver, Service};
use tonic::Code;
use wss::proto::CreateWebhookRequest;

const GOOD: usize = 10_000;
const BATCHES: usize = 10;
const CONVERGE: Duration = Duration::from_secs(240);

/// A filter that passes every good event at once and sends a `costly` one over the budget.
const COSTLY_FILTER: &str = "event.type != 'costly' || size(lists.range(1000000).map(i, lists.range(1000000))) > 0";

async fn poll<T>(within: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => panic!("timed out after {within:?}: expected {what}; last seen: {seen}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn xadd(ks: &Keyspace, id: &str, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(ks.events()).arg(id);
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query(&mut ks.conn()).unwrap_or_else(|e| panic!("XADD: {e}"))
}

/// Supervises the two instances: restarts whichever exited.
struct Supervisor {
    ks_env: Vec<(String, String)>,
    instances: BTreeMap<&'static str, Service>,
    restarts: usize,
}

impl Supervisor {
    fn spawn(&mut self, consumer: &'static str) {
        let mut env = self.ks_env.clone();
        env.retain(|(k, _)| k != "WSS_CONSUMER");
        env.push(("WSS_CONSUMER".into(), consumer.into()));
        self.instances.insert(consumer, Service::spawn(consumer, env));
    }

    fn kill(&mut self, consumer: &'static str) {
        let pid = self.instances[consumer].pid().to_string();
        let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
    }

    /// Restarts every instance that has exited; returns how many ran all along.
    fn supervise(&mut self) -> usize {
        let exited: Vec<&'static str> = self.instances.iter_mut().filter_map(|(name, s)| s.try_wait().map(|_| *name)).collect();
        for name in &exited {
            self.restarts += 1;
            self.spawn(name);
        }
        self.instances.len() - exited.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: 10,000 events with poison entries, two instances, SIGKILLs; .ci/run runs it on its own (./run-tests --test chaos_poison -- --ignored)"]
async fn poison_entries_are_set_aside_while_two_instances_deliver_everything_else() {
    let started = Instant::now();
    let ks = Keyspace::new("chaos_poison");
    let receiver = Receiver::ok();
    let mut con = ks.conn();
    let events = ks.events();

    // Entries that crashed instances nine times already: one pending at `a`, one at a consumer
    // that is gone.
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg(&events).arg("wss").arg("0").arg("MKSTREAM").query(&mut con).unwrap();
    let mut expected: BTreeMap<String, &str> = BTreeMap::new();
    for owner in ["a", "gone"] {
        let id = ks.publish("acme", "good", r#"{"n":-1}"#);
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("wss")
            .arg(owner)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&events)
            .arg(">")
            .query(&mut con)
            .unwrap();
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&events)
            .arg("wss")
            .arg(owner)
            .arg(0)
            .arg(&id)
            .arg("RETRYCOUNT")
            .arg(9)
            .arg("JUSTID")
            .query(&mut con)
            .unwrap();
        expected.insert(id, "poison");
    }

    let mut env = Service::env(&ks, "a");
    for (k, v) in [("WSS_CLAIM_AFTER", "2s"), ("WSS_LOG_LEVEL", "info")] {
        env.retain(|(name, _)| name != k);
        env.push((k.into(), v.into()));
    }
    let mut supervisor = Supervisor { ks_env: env, instances: BTreeMap::new(), restarts: 0 };
    supervisor.spawn("a");
    supervisor.spawn("b");
    let a = supervisor.instances.get_mut("a").unwrap();
    a.wait_for_control_plane().await;
    let grpc = a.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;
    grpc.create_webhook("acme", &format!("{}/costly", receiver.url()), |w| w.filter = COSTLY_FILTER.into()).await;
    // What used to overflow the stack cannot be registered any more.
    let deep = format!("{} == 0", vec!["1"; 1500].join("+"));
    let refused = grpc
        .webhooks()
        .create_webhook(CreateWebhookRequest { tenant_id: "acme".into(), url: receiver.url(), filter: deep, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    let big = format!(r#"{{"n":"{}"}}"#, "x".repeat(10 << 20));
    let deep_data = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let mut next = 0usize;
    for batch in 0..BATCHES {
        let mut pipe = redis::pipe();
        for _ in 0..GOOD / BATCHES {
            pipe.cmd("XADD")
                .arg(&events)
                .arg("*")
                .arg("tenant")
                .arg("acme")
                .arg("type")
                .arg("good")
                .arg("data")
                .arg(format!(r#"{{"n":{next}}}"#));
            next += 1;
        }
        let _: Vec<String> = pipe.query(&mut con).unwrap();
        // One of each poison kind per batch.
        expected.insert(
            xadd(&ks, "*", &[("tenant", "acme"), ("type", "good"), ("data", "{}"), ("_wss_created_at_ms", "18446744073709551615")]),
            "invalid_field",
        );
        expected.insert(xadd(&ks, "*", &[("tenant", "acme"), ("type", "good"), ("data", &big)]), "too_large");
        expected.insert(xadd(&ks, "*", &[("tenant", "acme"), ("type", "costly"), ("data", "{}")]), "filter_error");
        expected.insert(xadd(&ks, "*", &[("tenant", "acme"), ("type", "good"), ("data", &deep_data)]), "too_deep");
        expected.insert(xadd(&ks, "*", &[("tenant", "acme"), ("type", "good"), ("data", "{not json")]), "data_not_json");
        // Now and then an instance is killed; the supervisor restarts it.
        if batch % 4 == 1 {
            supervisor.kill(if batch % 8 == 1 { "a" } else { "b" });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        supervisor.supervise();
    }
    // Last: an id in year 10000 (every later `*` id would be in that year too).
    let last = xadd(&ks, "253402300800000-0", &[("tenant", "acme"), ("type", "good"), ("data", "{}")]);
    expected.insert(last.clone(), "invalid_field");

    // Every good event delivered to the plain webhook and to the filtered one.
    poll(CONVERGE, "every good event delivered to both webhooks", || {
        supervisor.supervise();
        let mut seen: [BTreeSet<i64>; 2] = Default::default();
        for r in receiver.requests().iter().filter(|r| r.delivered()) {
            let n = r.json()["data"]["n"].as_i64().unwrap_or(-2);
            seen[usize::from(r.path.ends_with("/costly"))].insert(n);
        }
        let missing: Vec<usize> = seen.iter().map(|s| (0..GOOD as i64).filter(|n| !s.contains(n)).count()).collect();
        if missing == [0, 0] {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    // Every poison entry dead-lettered with its reason (the filter's once per the webhook it
    // failed for), and nothing pending.
    let records = poll(CONVERGE, "every poison entry dead-lettered", || {
        supervisor.supervise();
        let ids: Vec<String> = redis::cmd("XRANGE")
            .arg(format!("{}deadletters", ks.prefix))
            .arg("-")
            .arg("+")
            .query::<redis::Value>(&mut ks.conn())
            .map(|v| dead_letter_reasons(&v))
            .map_err(|e| e.to_string())?;
        let found: BTreeMap<String, String> =
            ids.iter().filter_map(|r| r.split_once(' ').map(|(id, reason)| (id.to_owned(), reason.to_owned()))).collect();
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(id, reason)| found.get(*id).map(String::as_str) != Some(**reason))
            .map(|(id, reason)| format!("{id}: want {reason}, got {:?}", found.get(id)))
            .collect();
        if wrong.is_empty() {
            Ok(found)
        } else {
            Err(format!("{} of {} wrong, e.g. {:?}", wrong.len(), expected.len(), &wrong[..wrong.len().min(3)]))
        }
    })
    .await;
    poll(CONVERGE, "nothing pending", || ks.all_acknowledged_through(&last)).await;
    assert_eq!(supervisor.supervise(), 2, "both instances run at the end");
    for (name, service) in &supervisor.instances {
        assert!(!service.lines().iter().any(|l| l.contains("panicked")), "instance {name} logged a panic");
    }
    let good_dead = records.len() - expected.len();
    assert_eq!(good_dead, 0, "only the poison entries are dead-lettered");
    println!(
        "chaos_poison: {GOOD} good events delivered, {} poison entries dead-lettered with their reasons, {} restarts, {:.1} s",
        expected.len(),
        supervisor.restarts,
        started.elapsed().as_secs_f64()
    );
}

/// `"<stream_entry_id> <reason>"` of every dead-letter record in an `XRANGE` reply.
fn dead_letter_reasons(reply: &redis::Value) -> Vec<String> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    let redis::Value::Array(entries) = reply else { return Vec::new() };
    entries
        .iter()
        .filter_map(|entry| {
            let redis::Value::Array(parts) = entry else { return None };
            let redis::Value::Array(fields) = parts.get(1)? else { return None };
            let mut id = String::new();
            let mut reason = String::new();
            for pair in fields.chunks(2) {
                match text(&pair[0]).as_str() {
                    "stream_entry_id" => id = text(&pair[1]),
                    "reason" => reason = text(&pair[1]),
                    _ => {}
                }
            }
            Some(format!("{id} {reason}"))
        })
        .collect()
}
