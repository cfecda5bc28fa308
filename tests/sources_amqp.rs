//! AMQP 0-9-1 (RabbitMQ) as a source (docs/contract.md §7, `wss::source::amqp`), against a real broker:
//! `WSS_TEST_AMQP_URL` (default the machine's `amqp://guest:guest@127.0.0.1:5672/%2f`;
//! `./run-tests` makes sure one answers). Each test has its own queue, deleted at the end.
//!
//! "Nothing left unacknowledged" is checked without the management plugin: once wss has
//! stopped, anything it held unacknowledged is back in the queue, so a passive `queue.declare`
//! counting 0 ready messages means every message was acknowledged.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{assert_signed, eventually, Keyspace, Receiver, Recorded, Service, WAIT};
use lapin::{
    options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Channel, Connection, ConnectionProperties,
};

fn amqp_url() -> String {
    std::env::var("WSS_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn queue_name(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000_000;
    format!("wsstest.{test}.{}.{nanos}", std::process::id())
}

async fn channel() -> (Connection, Channel) {
    let url = amqp_url();
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to RabbitMQ at {url}: {e}; set WSS_TEST_AMQP_URL"));
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// Publishes one persistent message to `queue` (default exchange) with `headers`.
async fn publish(channel: &Channel, queue: &str, headers: &[(&str, &str)], properties: BasicProperties, body: &str) {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(ShortString::from(*k), AMQPValue::LongString((*v).into()));
    }
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            properties.with_headers(table).with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("publish confirmed");
}

/// Messages ready in `queue` (a passive declare).
async fn ready(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("the queue exists")
        .message_count()
}

async fn start(ks: &Keyspace, name: &str, queue: &str) -> Service {
    let mut env = Service::env(ks, name);
    env.push(("WSS_SOURCES".into(), format!("{}?queue={queue}", amqp_url())));
    let mut service = Service::spawn(name, env);
    service.wait_for_control_plane().await;
    service.wait_for_log("reading AMQP queue", WAIT).await;
    service
}

fn delivered_ids(receiver: &Receiver) -> BTreeSet<String> {
    receiver.requests().iter().filter(|r| r.delivered()).map(|r| r.event_id().to_owned()).collect()
}

async fn wait_delivered(receiver: &Receiver, want: &BTreeSet<String>, within: Duration) {
    eventually(within, "every event delivered", || async {
        let got = delivered_ids(receiver);
        let missing: Vec<&String> = want.difference(&got).take(5).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} of {} delivered; missing e.g. {missing:?}", got.intersection(want).count(), want.len()))
        }
    })
    .await;
}

/// Stops wss (SIGTERM: it acknowledges what it finished before it exits), then checks that
/// nothing it read comes back to the queue.
async fn assert_all_acknowledged(service: &mut Service, channel: &Channel, queue: &str) {
    let status = service.terminate().await;
    assert!(status.success(), "wss stopped cleanly: {status:?}");
    assert!(!service.lines().iter().any(|l| l.contains("acknowledging an AMQP message failed")), "every acknowledgement was sent");
    eventually(WAIT, "no message back in the queue after wss stopped", || async {
        match ready(channel, queue).await {
            0 => Ok(()),
            n => Err(format!("{n} messages ready")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_events_are_delivered_bad_messages_dead_lettered_and_all_acknowledged() {
    let ks = Keyspace::new("amqp_tenants");
    let queue = queue_name("tenants");
    let receiver = Receiver::ok();
    let mut service = start(&ks, "amqp-tenants", &queue).await;
    let grpc = service.grpc().await;
    let mut secrets = std::collections::BTreeMap::new();
    for t in 0..5 {
        let tenant = format!("tenant-{t}");
        grpc.create_tenant(&tenant).await;
        secrets.insert(tenant.clone(), grpc.create_webhook(&tenant, &receiver.url(), |_| {}).await.secret);
    }
    let (_connection, channel) = channel().await;
    let mut want = BTreeSet::new();
    for n in 0..100 {
        let tenant = format!("tenant-{}", n % 5);
        let body = format!(r#"{{"n":{n}}}"#);
        match n % 3 {
            0 => {
                publish(
                    &channel,
                    &queue,
                    &[("wss-tenant", &tenant), ("wss-type", "order.created"), ("wss-id", &format!("evt-{n}"))],
                    BasicProperties::default(),
                    &body,
                )
                .await;
                want.insert(format!("evt-{n}"));
            }
            1 => {
                // The type and id from the properties.
                let properties = BasicProperties::default()
                    .with_type("order.created".into())
                    .with_message_id(format!("msg-{n}").into())
                    .with_timestamp(1_767_225_600);
                publish(&channel, &queue, &[("wss-tenant", &tenant)], properties, &body).await;
                want.insert(format!("msg-{n}"));
            }
            _ => {
                publish(&channel, &queue, &[("wss-tenant", &tenant), ("wss-type", "order.created")], BasicProperties::default(), &body)
                    .await
            }
        }
    }
    publish(&channel, &queue, &[("wss-type", "x"), ("wss-id", "bad-1")], BasicProperties::default(), "{}").await;
    publish(&channel, &queue, &[("wss-tenant", "tenant-0"), ("wss-type", "x"), ("wss-id", "bad-2")], BasicProperties::default(), "nope")
        .await;
    publish(&channel, &queue, &[("wss-tenant", "nobody"), ("wss-type", "x"), ("wss-id", "bad-3")], BasicProperties::default(), "{}").await;

    // 33 messages carry no id: wss assigns `<queue>:<hash>` ones.
    eventually(WAIT * 2, "every event delivered", || async {
        let got = delivered_ids(&receiver);
        let named = want.iter().filter(|id| got.contains(*id)).count();
        let assigned = got.iter().filter(|id| id.starts_with(&format!("{queue}:"))).count();
        if named == want.len() && assigned == 33 {
            Ok(())
        } else {
            Err(format!("{named} of {} named, {assigned} of 33 assigned", want.len()))
        }
    })
    .await;
    for r in receiver.requests().iter().filter(|r| r.delivered()) {
        let body = r.json();
        assert_signed(&secrets[body["tenant"].as_str().unwrap()], r);
        if body["id"].as_str().unwrap().starts_with("msg-") {
            assert_eq!(body["created_at"], "2026-01-01T00:00:00Z", "the timestamp property");
        }
    }
    let dead = eventually(WAIT, "three dead letters", || async {
        let dead = grpc.dead_letters("").await?;
        if dead.len() >= 3 {
            Ok(dead)
        } else {
            Err(format!("{} dead letters", dead.len()))
        }
    })
    .await;
    let reasons: BTreeSet<(String, String)> = dead.iter().map(|d| (d.event_id.clone(), d.reason.clone())).collect();
    for (id, reason) in [("bad-1", "missing_field"), ("bad-2", "data_not_json"), ("bad-3", "unknown_tenant")] {
        assert!(reasons.contains(&(id.to_owned(), reason.to_owned())), "{id} {reason} in {reasons:?}");
    }
    assert_eq!(delivered_ids(&receiver).len(), 100, "each event delivered under one id");
    assert_all_acknowledged(&mut service, &channel, &queue).await;
    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_midway_loses_nothing() {
    let ks = Keyspace::new("amqp_kill");
    let queue = queue_name("kill");
    let receiver = Receiver::slow(Duration::from_millis(20));
    let first = start(&ks, "amqp-doomed", &queue).await;
    let grpc = first.grpc().await;
    for t in 0..20 {
        let tenant = format!("tenant-{t}");
        grpc.create_tenant(&tenant).await;
        grpc.create_webhook(&tenant, &receiver.url(), |_| {}).await;
    }
    drop(grpc);
    let (_connection, channel) = channel().await;
    let total = 600;
    let mut want = BTreeSet::new();
    for n in 0..total {
        let tenant = format!("tenant-{}", n % 20);
        publish(
            &channel,
            &queue,
            &[("wss-tenant", &tenant), ("wss-type", "t"), ("wss-id", &format!("kill-{n}"))],
            BasicProperties::default(),
            "{}",
        )
        .await;
        want.insert(format!("kill-{n}"));
    }
    receiver.wait_for_requests(50, "some deliveries before the kill", Recorded::delivered).await;
    drop(first); // SIGKILL: RabbitMQ requeues what it held unacknowledged.
    let before = delivered_ids(&receiver).len();
    assert!(before < total, "the kill came midway ({before} of {total})");
    let mut second = start(&ks, "amqp-heir", &queue).await;
    wait_delivered(&receiver, &want, WAIT * 4).await;
    assert_all_acknowledged(&mut second, &channel, &queue).await;
    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
}
