//! The delivery history's Redis layout (issue 18): records in hourly hashes, written with one
//! `HSET` per bucket and batch, read from the bucket their index score says; the event index is
//! one sorted set trimmed with the rest; and what the layouts before it wrote (a string per
//! record, a set per event) is still read until it expires.

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
    // A second into the current hour: one bucket.
    let now = history::bucket_of(wss::clock::now_ms()) + 1_000;
    // Two events that are neighbours in lexical order ("e", "e1"), one with two webhooks.
    let records = [record("1-0", "wh_a", "e", now), record("1-0", "wh_b", "e", now + 1), record("2-0", "wh_a", "e1", now + 2)];
    let mut pipe = redis::pipe();
    history::queue_writes(&mut pipe, &keys, retention, &records);
    let names: Vec<String> = pipe
        .cmd_iter()
        .map(|c| match c.args_iter().next() {
            Some(redis::Arg::Simple(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(
        names,
        ["HSET", "EXPIRE", "ZADD", "ZADD", "ZADD", "ZADD", "ZADD", "ZADD"],
        "no command per record: the bucket's HSET and EXPIRE, then one ZADD per index: global, tenant, 2 webhooks, the event \
         index and its age twin"
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
    let bucket = keys.delivery_records(history::bucket_of(now));
    let ttl: i64 = con.ttl(&bucket).unwrap();
    assert!(ttl > 3600 && ttl < 3600 + 3600, "the bucket lives until its end plus the retention age: TTL {ttl}");

    // Trimming to a count of 1 keeps the newest in the event index too.
    let touched: HashSet<String> = [keys.deliveries.clone()].into();
    let small = Retention { max_age: Duration::from_secs(3600), max_count: 1 };
    history::trim(&mut con, &keys, small, &touched, now + 10).expect("trimming by count");
    let members: Vec<String> = con.zrange(keys.deliveries_by_event_age(), 0, -1).unwrap();
    assert_eq!(members, ["e1\x002-0:wh_a"]);
    let lexical: Vec<String> = con.zrange(keys.deliveries_by_event(), 0, -1).unwrap();
    assert_eq!(lexical, ["e1\x002-0:wh_a"]);
    let kept: Vec<String> = con.hkeys(&bucket).unwrap();
    assert_eq!(kept, ["2-0:wh_a"], "the records evicted by the count are deleted from their bucket");

    // And by age: everything older than the cutoff leaves both. (Trimming two hours later: the
    // records' bucket has ended, so they are deleted from it too.)
    let short = Retention { max_age: Duration::from_secs(1), max_count: 1000 };
    history::trim(&mut con, &keys, short, &touched, now + 2 * history::BUCKET_MS).expect("trimming by age");
    let left: usize = con.zcard(keys.deliveries_by_event()).unwrap();
    let left_aged: usize = con.zcard(keys.deliveries_by_event_age()).unwrap();
    assert_eq!((left, left_aged), (0, 0));
    let bucket_left: bool = con.exists(&bucket).unwrap();
    assert!(!bucket_left, "the records aged out of the global index are deleted from their bucket");

    let doomed: Vec<String> = con.keys(format!("{}*", ks.prefix)).unwrap();
    if !doomed.is_empty() {
        let _: () = con.del(doomed).unwrap();
    }
}

/// What a version before the hourly buckets wrote for a record: its own key (`SET … EX`) and
/// the same index entries as now.
fn write_old_layout(con: &mut wss::redis_conn::Conn, keys: &Keys, record: &DeliveryRecord) {
    let member = format!("{}\0{}", record.event_id, record.id);
    redis::pipe()
        .set_ex(keys.delivery(&record.id), serde_json::to_string(record).unwrap(), 3600)
        .zadd(&keys.deliveries, &record.id, record.updated_at_ms)
        .zadd(keys.deliveries_of_tenant(&record.tenant_id), &record.id, record.updated_at_ms)
        .zadd(keys.deliveries_of_webhook(&record.webhook_id), &record.id, record.updated_at_ms)
        .zadd(keys.deliveries_by_event(), &member, 0)
        .zadd(keys.deliveries_by_event_age(), &member, record.updated_at_ms)
        .query::<()>(con)
        .expect("writing a record as the old layout did");
}

fn listed(con: &mut wss::redis_conn::Conn, keys: &Keys, query: Query) -> Vec<(String, Status)> {
    let (records, _) = history::list(con, keys, &query, 100, None, 1000).expect("listing");
    records.into_iter().map(|r| (r.id, r.status)).collect()
}

#[test]
fn old_records_stay_readable_rewrites_read_newest_and_count_trimming_empties_buckets() {
    let ks = Keyspace::new("history-buckets");
    let keys = Keys::new(&ks.prefix);
    let mut con = wss::redis_conn::Conn::Single(ks.conn());
    let retention = Retention { max_age: Duration::from_secs(3600), max_count: 1000 };
    let hour = history::BUCKET_MS;
    let this_hour = history::bucket_of(wss::clock::now_ms());
    let write = |con: &mut wss::redis_conn::Conn, record: &DeliveryRecord| {
        let mut pipe = redis::pipe();
        pipe.atomic();
        history::queue_writes(&mut pipe, &keys, retention, [record]);
        pipe.query::<()>(con).expect("writing a record");
    };

    // A record of the old layout, and one of the new.
    let old = record("1-0", "wh_a", "e", this_hour + 500);
    write_old_layout(&mut con, &keys, &old);
    let new = record("2-0", "wh_a", "e", this_hour + 1_000);
    write(&mut con, &new);
    // A retry rewritten an hour later: its first version stays, stale, in the earlier bucket.
    let mut retried = record("3-0", "wh_a", "e", this_hour - hour + 5);
    retried.status = Status::Retrying;
    write(&mut con, &retried);
    (retried.status, retried.updated_at_ms) = (Status::Delivered, this_hour + 2_000);
    write(&mut con, &retried);
    let stale: Option<String> = con.hget(keys.delivery_records(this_hour - hour), &retried.id).unwrap();
    assert!(stale.is_some_and(|json| json.contains("retrying")), "the first version stays in its own bucket");
    // Written by this version, then rewritten by an older one running beside it (mixed
    // instances): the old key holds the newer version.
    let mut mixed = record("4-0", "wh_a", "e", this_hour + 3_000);
    mixed.status = Status::Retrying;
    write(&mut con, &mixed);
    (mixed.status, mixed.updated_at_ms) = (Status::Delivered, this_hour + 4_000);
    write_old_layout(&mut con, &keys, &mixed);

    for (id, status) in
        [(&old.id, Status::Delivered), (&new.id, Status::Delivered), (&retried.id, Status::Delivered), (&mixed.id, Status::Delivered)]
    {
        let got = history::get(&mut con, &keys, id).expect("get").unwrap_or_else(|| panic!("{id} is found"));
        assert_eq!((&got.id, got.status), (id, status));
    }
    assert_eq!(history::get(&mut con, &keys, &retried.id).unwrap().unwrap().updated_at_ms, this_hour + 2_000, "the newest version");
    let everything = [
        (mixed.id.clone(), Status::Delivered),
        (retried.id.clone(), Status::Delivered),
        (new.id.clone(), Status::Delivered),
        (old.id.clone(), Status::Delivered),
    ];
    assert_eq!(listed(&mut con, &keys, Query::default()), everything, "all of them, newest first, each once");
    assert_eq!(listed(&mut con, &keys, Query { tenant_id: "acme".into(), ..Default::default() }), everything);
    assert_eq!(listed(&mut con, &keys, Query { webhook_id: "wh_a".into(), ..Default::default() }), everything);
    assert_eq!(listed(&mut con, &keys, Query { event_id: "e".into(), ..Default::default() }), everything);
    assert!(listed(&mut con, &keys, Query { status: Some(Status::Retrying), ..Default::default() }).is_empty(), "no stale version");

    // Trimming to a count of 2 evicts the two oldest: the old layout's key goes, and the new
    // record's field leaves its bucket.
    let touched: HashSet<String> = [keys.deliveries.clone()].into();
    let two = Retention { max_age: Duration::from_secs(3600), max_count: 2 };
    history::trim(&mut con, &keys, two, &touched, this_hour + 5_000).expect("trimming by count");
    let old_key: bool = con.exists(keys.delivery(&old.id)).unwrap();
    let new_field: bool = con.hexists(keys.delivery_records(this_hour), &new.id).unwrap();
    assert!(!old_key && !new_field, "the evicted records are deleted (old key {old_key}, bucket field {new_field})");
    assert_eq!(history::get(&mut con, &keys, &new.id).unwrap(), None);
    assert_eq!(history::get(&mut con, &keys, &old.id).unwrap(), None);
    assert_eq!(listed(&mut con, &keys, Query::default()), everything[..2]);
    assert_eq!(listed(&mut con, &keys, Query { event_id: "e".into(), ..Default::default() }), everything[..2]);

    // By age, within the hour of its write: the record leaves the index, and stays in its
    // bucket (a retry could be rewriting it there) until the bucket expires.
    let second = Retention { max_age: Duration::from_secs(1), max_count: 1000 };
    history::trim(&mut con, &keys, second, &touched, this_hour + 4_000).expect("trimming by age");
    let in_bucket: bool = con.hexists(keys.delivery_records(this_hour), &retried.id).unwrap();
    assert!(in_bucket, "a record of the current hour is left to its bucket's expiry");
    assert_eq!(history::get(&mut con, &keys, &retried.id).unwrap(), None, "out of the index: gone for readers");
    assert_eq!(listed(&mut con, &keys, Query::default()), everything[..1]);

    let doomed: Vec<String> = con.keys(format!("{}*", ks.prefix)).unwrap();
    if !doomed.is_empty() {
        let _: () = con.del(doomed).unwrap();
    }
}
