//! The service's life cycle: SIGTERM loses nothing (what was not finished is delivered by the
//! next instance under the same consumer name), and a Redis that is down at start is waited for,
//! logged once, not a crash.

mod common;

use std::{
    collections::BTreeSet,
    net::TcpListener,
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use common::{wait_until, Keyspace, Receiver, Recorded, Reply, Service, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_nothing_and_a_restart_delivers_the_rest() {
    let ks = Keyspace::new("shutdown");
    // The receiver answers its first 3 requests at once and holds every later one until the
    // first instance has exited (its grace, 1 s, runs out with those sends open): so that
    // instance delivers exactly 3 of the 40 events, whatever the machine's speed, and the
    // restart must deliver the rest.
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let held = gate.clone();
    let receiver = Receiver::start(move |n| {
        if n >= 3 {
            let (open, changed) = &*held;
            let _open = changed.wait_timeout_while(open.lock().unwrap(), Duration::from_secs(60), |open| !*open).unwrap();
        }
        Reply::status(200)
    });
    let mut first = Service::start(&ks, "shutdown-consumer", &[("WSS_SHUTDOWN_GRACE", "1s")]).await;
    let grpc = first.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;

    let ids: Vec<String> = (0..40).map(|n| ks.publish("acme", "order.created", &format!(r#"{{"n":{n}}}"#))).collect();
    receiver.wait_for_requests(3, "delivered requests before SIGTERM", Recorded::delivered).await;

    let status = first.terminate().await;
    assert!(status.success(), "wss must exit 0 on SIGTERM, got {status}");
    assert!(first.lines().iter().any(|l| l.contains("grace period over with sends still running")), "the held sends outlasted the grace");
    let delivered_before: BTreeSet<String> =
        receiver.requests().iter().filter(|r| r.delivered()).map(|r| r.event_id().to_owned()).collect();
    drop(grpc);
    {
        let (open, changed) = &*gate;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }

    let _second = Service::start(&ks, "shutdown-consumer", &[]).await;
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    wait_until(Duration::from_secs(30), "every one of the 40 events delivered at least once", || {
        let delivered: BTreeSet<String> = receiver.requests().iter().filter(|r| r.delivered()).map(|r| r.event_id().to_owned()).collect();
        let missing: Vec<&String> = all.difference(&delivered).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} missing: {missing:?}", missing.len()))
        }
    })
    .await;
    wait_until(WAIT, "every entry acknowledged (XPENDING 0)", || ks.all_acknowledged_through(ids.last().unwrap())).await;
    let unknown: Vec<String> = receiver.requests().iter().map(|r| r.event_id().to_owned()).filter(|id| !all.contains(id)).collect();
    assert!(unknown.is_empty(), "requests for events never sent: {unknown:?}");
    assert_eq!(delivered_before.len(), 3, "the first instance delivered only what the receiver answered before it stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_is_logged_once_and_waited_for() {
    let ks = Keyspace::new("redis_down"); // only for a unique prefix; nothing is written
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().unwrap().port()
    }; // closed again: nothing listens there
    let url = format!("redis://127.0.0.1:{port}");
    let mut env = Service::env(&ks, "redis-down");
    env.retain(|(k, _)| k != "WSS_REDIS_URL");
    env.push(("WSS_REDIS_URL".into(), url.clone()));
    let mut service = Service::spawn("redis-down", env);

    let line = service
        .wait_for(WAIT, &format!("a line saying Redis at {url} is unreachable"), |l| l.contains("unreachable") && l.contains(&url))
        .await;
    assert!(service.try_wait().is_none(), "wss exited after logging {line:?}");
    // Let it retry a few times (each retry is logged at debug) before counting the outage lines.
    let retries = |lines: &[String]| lines.iter().filter(|l| l.contains("configuration not loaded yet")).count();
    wait_until(WAIT, "three attempts to load the configuration", || {
        let n = retries(&service.lines());
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} attempts logged"))
        }
    })
    .await;
    assert!(service.try_wait().is_none(), "wss must keep waiting for Redis, not exit");

    let status = service.terminate().await;
    assert!(status.success(), "wss must exit 0 on SIGTERM while waiting for Redis, got {status}");
    let lines = service.lines();
    let outage: Vec<&String> = lines.iter().filter(|l| l.contains("unreachable")).collect();
    assert_eq!(outage.len(), 1, "the outage is logged once, however many retries ({} here): {outage:#?}", retries(&lines));
}
