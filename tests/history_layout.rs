//! The delivery history's Redis layout (issue 18): a record costs one command, the event index
//! is one sorted set trimmed with the rest, and the event index of the layout before it (a set
//! per event) is still read until it expires.

mod common;

use std::{collections::HashSet, time::Duration};

use common::Keyspace;
use redis::Commands;
use wss::{
    history::{self, DeliveryRecord, Query, Retention, Status},
    keys::Keys,
};

fn record(entry: &str, webhook: &str, event: &str, updated: u64) -> DeliveryRecord {
    DeliveryRecord {
        id: history::delivery_id(entry, webhook),
        tenant_id: "acme".into(),
        webhook_id: webhook.into(),
        event_id: event.into(),
        event_type: "t".into(),
        stream_entry_id: entry.into(),
        status: Status::Delivered,
        created_at_ms: updated,
        updated_at_ms: updated,
        next_attempt_at_ms: 0,
        attempts: Vec::new(),
        dead_letter_reason: String::new(),
    }
}

fn by_event(con: &mut wss::redis_conn::Conn, keys: &Keys, event: &str) -> Vec<String> {
    let query = Query { event_id: event.into(), ..Default::default() };
    let (records, _) = history::list(con, keys, &query, 100, None, 1000).expect("listing by event");
    let mut ids: Vec<String> = records.into_iter().map(|r| r.id).collect();
    ids.sort();
    ids
}

#[test]
fn one_command_per_record_and_the_old_event_sets_are_still_read() {
    let ks = Keyspace::new("history-layout");
    let keys = Keys::new(&ks.prefix);
    let mut con = wss::redis_conn::Conn::Single(ks.conn());
    let retention = Retention { max_age: Duration::from_secs(3600), max_count: 1000 };
    let now = wss::clock::now_ms();
    // Two events that are neighbours in lexical order ("e", "e1"), one with two webhooks.
    let records = [record("1-0", "wh_a", "e", now), record("1-0", "wh_b", "e", now + 1), record("2-0", "wh_a", "e1", now + 2)];
    let mut pipe = redis::pipe();
    history::queue_writes(&mut pipe, &keys, retention, &records);
    let per_record = pipe
        .cmd_iter()
        .filter(|c| c.args_iter().next().is_some_and(|a| matches!(a, redis::Arg::Simple(b) if b.starts_with(b"SET"))))
        .count();
    assert_eq!(per_record, 3, "one SET … EX per record");
    assert_eq!(
        pipe.cmd_iter().count(),
        3 + 1 + 1 + 2 + 2,
        "the records, then one ZADD per index: global, tenant, 2 webhooks, the event index and its age twin"
    );
    pipe.query::<()>(&mut con).expect("writing the batch");

    // A record of the old layout: its record key, and its event's set (no sorted-set entry).
    let old = record("3-0", "wh_a", "e", now + 3);
    let _: () = con.set_ex(keys.delivery(&old.id), serde_json::to_string(&old).unwrap(), 3600).unwrap();
    let _: () = con.sadd(keys.deliveries_of_event("e"), &old.id).unwrap();

    assert_eq!(by_event(&mut con, &keys, "e"), ["1-0:wh_a", "1-0:wh_b", "3-0:wh_a"]);
    assert_eq!(by_event(&mut con, &keys, "e1"), ["2-0:wh_a"]);
    assert!(by_event(&mut con, &keys, "nothing").is_empty());
    assert_eq!(history::get(&mut con, &keys, "1-0:wh_b").unwrap().map(|r| r.event_id), Some("e".to_owned()));
    let ttl: i64 = con.ttl(keys.delivery("1-0:wh_a")).unwrap();
    assert!(ttl > 3500 && ttl <= 3600, "records expire after the retention age: TTL {ttl}");

    // Trimming to a count of 1 keeps the newest in the event index too.
    let touched: HashSet<String> = [keys.deliveries.clone()].into();
    let small = Retention { max_age: Duration::from_secs(3600), max_count: 1 };
    history::trim(&mut con, &keys, small, &touched, now + 10).expect("trimming by count");
    let members: Vec<String> = con.zrange(keys.deliveries_by_event_age(), 0, -1).unwrap();
    assert_eq!(members, ["e1\x002-0:wh_a"]);
    let lexical: Vec<String> = con.zrange(keys.deliveries_by_event(), 0, -1).unwrap();
    assert_eq!(lexical, ["e1\x002-0:wh_a"]);

    // And by age: everything older than the cutoff leaves both.
    let short = Retention { max_age: Duration::from_secs(1), max_count: 1000 };
    history::trim(&mut con, &keys, short, &touched, now + 10_000).expect("trimming by age");
    let left: usize = con.zcard(keys.deliveries_by_event()).unwrap();
    let left_aged: usize = con.zcard(keys.deliveries_by_event_age()).unwrap();
    assert_eq!((left, left_aged), (0, 0));

    let doomed: Vec<String> = con.keys(format!("{}*", ks.prefix)).unwrap();
    if !doomed.is_empty() {
        let _: () = con.del(doomed).unwrap();
    }
}
