//! WebhookService/GetWebhookStats (issue 8) against the real binary, a real Redis and real
//! receivers: success rate and last success of a healthy webhook; failures, the last failure's
//! error, the circuit opening after WSS_CIRCUIT_FAILURES, dead letters and queued retries of a
//! failing one; tenant scoping and argument errors; the stats key deleted with its webhook (and
//! with its tenant).

mod common;
mod secure;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{assert_status, eventually, Keyspace, Receiver, Recorded, Service, WAIT};
use redis::Commands;
use secure::Authed;
use tonic::Code;
use wss::proto::{
    CircuitState, CreateTenantRequest, CreateWebhookRequest, DeleteTenantRequest, DeleteWebhookRequest, GetWebhookStatsRequest,
    WebhookStats,
};

fn stats_key(ks: &Keyspace, webhook_id: &str) -> String {
    format!("{}stats:webhook:{webhook_id}", ks.prefix)
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn request(webhook_id: &str) -> GetWebhookStatsRequest {
    GetWebhookStatsRequest { webhook_id: webhook_id.into(), window: None }
}

async fn stats_of(who: &Authed, webhook_id: &str) -> Result<WebhookStats, String> {
    who.webhooks().get_webhook_stats(request(webhook_id)).await.map(|r| r.into_inner()).map_err(|s| format!("GetWebhookStats: {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_webhook_shows_its_successes_only_to_its_tenant_and_its_stats_go_with_it() {
    let ks = Keyspace::new("stats_ok");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "stats-ok", &[]).await;
    let channel = service.grpc().await.channel;
    let admin = Authed::new(&channel, None); // no admin token configured: loopback calls are admin calls
    for tenant in ["acme", "globex"] {
        admin.tenants().create_tenant(CreateTenantRequest { tenant_id: tenant.into(), ..Default::default() }).await.unwrap();
    }
    let create = |tenant: &str, url: String| CreateWebhookRequest { tenant_id: tenant.into(), url, ..Default::default() };
    let webhook = admin.webhooks().create_webhook(create("acme", receiver.url())).await.unwrap().into_inner();
    let theirs = admin.webhooks().create_webhook(create("globex", receiver.url())).await.unwrap().into_inner();

    // Nothing sent yet: no rate (rather than 0 or 1), nothing last, a closed circuit.
    let fresh = stats_of(&admin, &webhook.webhook_id).await.unwrap();
    assert_eq!((fresh.attempts_succeeded, fresh.attempts_failed, fresh.dead_letters), (0, 0, 0));
    assert_eq!(fresh.success_rate, None, "no attempts: no success rate");
    assert!(fresh.last_success_at.is_none() && fresh.last_failure_at.is_none(), "{fresh:?}");
    assert_eq!(fresh.circuit_state, CircuitState::Closed as i32);
    assert_eq!((fresh.tenant_id.as_str(), fresh.instance.as_str()), ("acme", "stats-ok"));
    assert_eq!(fresh.window.map(|w| w.seconds), Some(3600), "the default window is an hour");

    for n in 0..3 {
        ks.publish("acme", "order.created", &format!("{{\"n\":{n}}}"));
    }
    ks.publish("globex", "order.created", "{}");
    // Three deliveries to acme's webhook, one to globex's (same receiver).
    receiver.wait_for_requests(4, "deliveries", Recorded::delivered).await;
    let stats = eventually(WAIT, "3 successful attempts in acme's webhook's stats", || async {
        let s = stats_of(&admin, &webhook.webhook_id).await?;
        if s.attempts_succeeded == 3 && s.in_flight == 0 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert_eq!(stats.success_rate, Some(1.0));
    assert_eq!((stats.attempts_failed, stats.dead_letters, stats.queued), (0, 0, 0), "{stats:?}");
    let last = stats.last_success_at.expect("a last success").seconds;
    assert!((now_secs() - 60..=now_secs() + 5).contains(&last), "the last success was just now: {last}");
    assert!(stats.last_failure_at.is_none() && stats.last_failure_error.is_empty(), "{stats:?}");
    assert_eq!(stats.circuit_state, CircuitState::Closed as i32);
    assert!(stats.last_circuit_change.is_none(), "the circuit never changed: {stats:?}");
    let minute = admin
        .webhooks()
        .get_webhook_stats(GetWebhookStatsRequest { webhook_id: webhook.webhook_id.clone(), window: Some(common::pb_ms(60_000)) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(minute.window.map(|w| w.seconds), Some(60));
    assert!(minute.attempts_succeeded <= 3, "a shorter window never counts more: {minute:?}");

    // A tenant token reads its own tenant's webhooks only.
    let token = admin.create_token("acme").await;
    let acme = Authed::new(&channel, Some(&token.token));
    assert_eq!(stats_of(&acme, &webhook.webhook_id).await.unwrap().attempts_succeeded, 3);
    let denied = assert_status(
        acme.webhooks().get_webhook_stats(request(&theirs.webhook_id)).await,
        Code::PermissionDenied,
        None,
        "GetWebhookStats of another tenant's webhook",
    );
    assert!(!denied.message().contains("globex"), "the refusal does not say whose it is: {}", denied.message());
    eventually(WAIT, "globex's webhook's success in its stats", || async {
        let s = stats_of(&admin, &theirs.webhook_id).await?;
        if s.tenant_id == "globex" && s.attempts_succeeded == 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;

    // Argument errors name the field; unknown ids are NOT_FOUND.
    assert_status(admin.webhooks().get_webhook_stats(request("")).await, Code::InvalidArgument, Some("webhook_id"), "no webhook_id");
    assert_status(admin.webhooks().get_webhook_stats(request("wh_nosuchwebhook")).await, Code::NotFound, None, "an unknown webhook");
    for window in [common::pb_ms(30_000), common::pb_ms(3_601_000)] {
        let req = GetWebhookStatsRequest { webhook_id: webhook.webhook_id.clone(), window: Some(window) };
        assert_status(admin.webhooks().get_webhook_stats(req).await, Code::InvalidArgument, Some("window"), "a window out of range");
    }

    // The stats live in one key, which expires, and goes with the webhook.
    let key = stats_key(&ks, &webhook.webhook_id);
    let mut con = ks.conn();
    assert!(con.exists::<_, bool>(&key).unwrap(), "{key} holds the stats");
    let ttl: i64 = con.ttl(&key).unwrap();
    assert!(ttl > 0 && ttl <= 7 * 86_400, "the stats key expires: ttl {ttl}");
    admin.webhooks().delete_webhook(DeleteWebhookRequest { webhook_id: webhook.webhook_id.clone() }).await.unwrap();
    assert!(!con.exists::<_, bool>(&key).unwrap(), "DeleteWebhook deletes {key}");
    assert_status(admin.webhooks().get_webhook_stats(request(&webhook.webhook_id)).await, Code::NotFound, None, "a deleted webhook");
    assert!(con.exists::<_, bool>(stats_key(&ks, &theirs.webhook_id)).unwrap(), "other webhooks keep theirs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_shows_its_failures_open_circuit_dead_letters_and_waiting_retries() {
    let ks = Keyspace::new("stats_failing");
    let receiver = Receiver::always(500);
    // The circuit opens after 3 consecutive failures and stays open for the rest of the test.
    let service = Service::start(&ks, "stats-failing", &[("WSS_CIRCUIT_FAILURES", "3"), ("WSS_CIRCUIT_COOLDOWN", "1h")]).await;
    let grpc = service.grpc().await;
    let admin = Authed::new(&grpc.channel, None);
    grpc.create_policy("twice", 2, 100, 200).await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |r| r.retry_policy_id = "twice".into()).await;

    // Two events, two attempts each at most: the third failure opens the circuit, and at least
    // one delivery has used up its attempts by then.
    ks.publish("acme", "order.created", "{\"n\":1}");
    ks.publish("acme", "order.created", "{\"n\":2}");
    let stats = eventually(WAIT, "3 failed attempts, an open circuit and a dead letter", || async {
        let s = stats_of(&admin, &webhook.webhook_id).await?;
        let open = s.circuit_state == CircuitState::Open as i32;
        if s.attempts_failed >= 3 && open && s.dead_letters >= 1 && s.last_circuit_change.is_some() {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert_eq!(stats.attempts_succeeded, 0);
    assert_eq!(stats.success_rate, Some(0.0));
    assert!(stats.last_success_at.is_none(), "{stats:?}");
    assert!(stats.last_failure_at.is_some(), "{stats:?}");
    assert_eq!(stats.last_failure_status_code, 500);
    assert_eq!(stats.last_failure_error_kind, "http_status");
    assert_eq!(stats.last_failure_error, "HTTP 500 Internal Server Error");
    let until = stats.circuit_open_until.expect("an open circuit says until when").seconds;
    assert!(until > now_secs() + 1800, "open for the cool-down of an hour: {until}");
    let change = stats.last_circuit_change.expect("the opening was recorded");
    assert_eq!(change.state, CircuitState::Open as i32);
    assert_eq!(change.instance, "stats-failing");
    assert!(change.changed_at.is_some() && change.open_until.is_some(), "{change:?}");

    // With the circuit open a new event waits on this instance for the cool-down to end.
    ks.publish("acme", "order.created", "{\"n\":3}");
    // Nothing more is sent, so the counts settle on what the receiver saw: each attempt once.
    let waiting = eventually(WAIT, "a retry waiting for the open circuit, every attempt counted", || async {
        let s = stats_of(&admin, &webhook.webhook_id).await?;
        let attempts = receiver.requests().len() as u64;
        let dead = grpc.dead_letters("acme").await?.len() as u64;
        if s.retries_waiting >= 1 && s.attempts_failed == attempts && s.dead_letters == dead {
            Ok(s)
        } else {
            Err(format!("{attempts} attempts received, {dead} dead letters listed; {s:?}"))
        }
    })
    .await;
    assert_eq!(waiting.queued, waiting.parked + waiting.retries_waiting);
    assert_eq!(waiting.in_flight, 0, "nothing is sent while the circuit is open");

    // Deleting the tenant deletes its webhooks' stats too.
    let key = stats_key(&ks, &webhook.webhook_id);
    let mut con = ks.conn();
    assert!(con.exists::<_, bool>(&key).unwrap());
    admin.tenants().delete_tenant(DeleteTenantRequest { tenant_id: "acme".into() }).await.unwrap();
    assert!(!con.exists::<_, bool>(&key).unwrap(), "DeleteTenant deletes {key}");
}
