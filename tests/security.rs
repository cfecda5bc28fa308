//! Security of the control plane and of the stream (issue 5), against the real binary, a real
//! Redis and real receivers:
//!
//! - tenant-scoped tokens: issued once, stored as a digest, revoked at once; a tenant token
//!   reaches only its own tenant's webhooks, deliveries and dead letters, other tenants' resources
//!   and admin rpcs answer PERMISSION_DENIED, missing or unknown tokens UNAUTHENTICATED, health and
//!   reflection stay open;
//! - hostile gRPC requests (oversized messages and metadata, headers with CR/LF or reserved names,
//!   ids outside their patterns, page sizes) are refused and the service keeps serving;
//! - hostile stream entries (oversized, deeply nested, invalid UTF-8, huge field counts, binary
//!   garbage) are dead-lettered with their reason and the stream keeps flowing;
//! - a non-loopback listener without an admin token is refused at start-up.

mod common;
mod secure;

use std::collections::BTreeMap;

use common::{assert_status, eventually, wait_until, Keyspace, Receiver, Recorded, Service, WAIT};
use secure::Authed;
use tonic::Code;
use wss::proto::{
    CreateRetryPolicyRequest, CreateTenantRequest, CreateWebhookRequest, DeleteTenantRequest, GetDeliveryRequest, GetTenantRequest,
    ListDeliveriesRequest, ListRetryPoliciesRequest, ListTenantsRequest, ListTokensRequest, ListWebhooksRequest, PublishEventRequest,
    RevokeTokenRequest, UpdateWebhookRequest,
};

const ADMIN: &str = "security-test-admin-token-0123456789";

/// Waits until `who` sees at least `n` dead letters (in its default scope).
async fn dead_letters_at_least(who: &Authed, n: usize) -> Vec<wss::proto::DeadLetter> {
    eventually(WAIT, &format!("{n} dead letters"), || {
        let who = who.clone();
        async move {
            let dead = who.dead_letters("").await.map_err(|s| format!("{s:?}"))?;
            if dead.len() >= n {
                Ok(dead)
            } else {
                Err(format!("{} so far: {dead:?}", dead.len()))
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_tokens_reach_only_their_own_tenant() {
    let ks = Keyspace::new("tenant_tokens");
    let ok = Receiver::ok();
    let failing = Receiver::always(500);
    let service = Service::start(&ks, "tenant-tokens", &[("WSS_ADMIN_TOKEN", ADMIN)]).await;
    let channel = service.grpc().await.channel;
    let admin = Authed::new(&channel, Some(ADMIN));

    for tenant in ["acme", "globex"] {
        admin.tenants().create_tenant(CreateTenantRequest { tenant_id: tenant.into(), ..Default::default() }).await.unwrap();
    }
    admin
        .policies()
        .create_retry_policy(CreateRetryPolicyRequest { policy_id: "once".into(), max_attempts: Some(1), ..Default::default() })
        .await
        .unwrap();
    let create = |tenant: &str, url: String| CreateWebhookRequest {
        tenant_id: tenant.into(),
        url,
        retry_policy_id: "once".into(),
        ..Default::default()
    };
    let acme_hook = admin.webhooks().create_webhook(create("acme", ok.url())).await.unwrap().into_inner();
    let globex_hook = admin.webhooks().create_webhook(create("globex", failing.url())).await.unwrap().into_inner();

    // One delivered event of acme, one dead-lettered event of globex, one bad entry of each.
    let acme_event = ks.publish("acme", "order.created", r#"{"n":1}"#);
    let globex_event = ks.publish("globex", "order.created", r#"{"n":2}"#);
    ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{broken")]);
    let last = ks.xadd(&[("tenant", "globex"), ("type", "order.created"), ("data", "{broken")]);
    ok.wait_for_requests(1, "acme's event", Recorded::delivered).await;
    wait_until(WAIT, "every entry handled", || ks.all_acknowledged_through(&last)).await;
    dead_letters_at_least(&admin, 3).await;

    // Tokens: issued once, listed without the token, scoped.
    let acme_token = admin.create_token("acme").await;
    let globex_token = admin.create_token("globex").await;
    let listed = admin.tokens().list_tokens(ListTokensRequest::default()).await.unwrap().into_inner().tokens;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|t| t.token.is_empty()), "ListTokens never shows a token: {listed:?}");
    let only_acme =
        admin.tokens().list_tokens(ListTokensRequest { tenant_id: "acme".into(), ..Default::default() }).await.unwrap().into_inner().tokens;
    assert_eq!(only_acme.iter().map(|t| t.token_id.as_str()).collect::<Vec<_>>(), [acme_token.token_id.as_str()]);
    let stored: BTreeMap<String, String> = redis::cmd("HGETALL").arg(format!("{}tokens", ks.prefix)).query(&mut ks.conn()).unwrap();
    for (id, json) in &stored {
        for token in [&acme_token.token, &globex_token.token] {
            let secret_part = &token[token.find('.').unwrap() + 1..];
            assert!(!json.contains(secret_part), "token {id} is stored only as a digest: {json}");
        }
    }

    let acme = Authed::new(&channel, Some(&acme_token.token));

    // Admin rpcs: PERMISSION_DENIED.
    assert_status(acme.tenants().list_tenants(ListTenantsRequest::default()).await, Code::PermissionDenied, None, "ListTenants");
    assert_status(
        acme.tenants().create_tenant(CreateTenantRequest { tenant_id: "sneaky".into(), ..Default::default() }).await,
        Code::PermissionDenied,
        None,
        "CreateTenant",
    );
    assert_status(
        acme.tenants().delete_tenant(DeleteTenantRequest { tenant_id: "acme".into() }).await,
        Code::PermissionDenied,
        None,
        "DeleteTenant of its own tenant",
    );
    assert_status(
        acme.policies().create_retry_policy(CreateRetryPolicyRequest { policy_id: "mine".into(), ..Default::default() }).await,
        Code::PermissionDenied,
        None,
        "CreateRetryPolicy",
    );
    assert_status(
        acme.events()
            .publish_event(PublishEventRequest {
                tenant_id: "acme".into(),
                event_type: "x".into(),
                data: "{}".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        None,
        "PublishEvent",
    );
    assert_status(
        acme.tokens().create_token(wss::proto::CreateTokenRequest { tenant_id: "acme".into(), ..Default::default() }).await,
        Code::PermissionDenied,
        None,
        "CreateToken",
    );
    assert_status(acme.tokens().list_tokens(ListTokensRequest::default()).await, Code::PermissionDenied, None, "ListTokens");

    // Its own tenant and the shared policies: readable. Another tenant: PERMISSION_DENIED.
    let own = acme.tenants().get_tenant(GetTenantRequest { tenant_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(own.tenant_id, "acme");
    assert_status(
        acme.tenants().get_tenant(GetTenantRequest { tenant_id: "globex".into() }).await,
        Code::PermissionDenied,
        None,
        "GetTenant of another tenant",
    );
    let policies = acme.policies().list_retry_policies(ListRetryPoliciesRequest::default()).await.unwrap().into_inner();
    assert!(policies.retry_policies.iter().any(|p| p.policy_id == "once"), "{policies:?}");

    // Dead letters and deliveries: its own only.
    let mine = acme.dead_letters("").await.unwrap();
    assert_eq!(mine.len(), 1, "acme's bad entry only: {mine:?}");
    assert!(mine.iter().all(|d| d.tenant_id == "acme"), "{mine:?}");
    assert_eq!(acme.dead_letters("acme").await.unwrap().len(), 1);
    assert_status(acme.dead_letters("globex").await, Code::PermissionDenied, Some("tenant_id"), "ListDeadLetters of another tenant");
    let globex = Authed::new(&channel, Some(&globex_token.token));
    let theirs = globex.dead_letters("").await.unwrap();
    assert_eq!(theirs.len(), 2, "globex's failed delivery and bad entry: {theirs:?}");
    assert!(theirs.iter().all(|d| d.tenant_id == "globex"), "{theirs:?}");

    let deliveries = acme.deliveries().list_deliveries(ListDeliveriesRequest::default()).await.unwrap().into_inner().deliveries;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!((deliveries[0].tenant_id.as_str(), deliveries[0].stream_entry_id.as_str()), ("acme", acme_event.as_str()));
    let by_other_webhook = acme
        .deliveries()
        .list_deliveries(ListDeliveriesRequest { webhook_id: globex_hook.webhook_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert!(by_other_webhook.is_empty(), "filtering by another tenant's webhook shows nothing: {by_other_webhook:?}");
    assert_status(
        acme.deliveries().list_deliveries(ListDeliveriesRequest { tenant_id: "globex".into(), ..Default::default() }).await,
        Code::PermissionDenied,
        Some("tenant_id"),
        "ListDeliveries of another tenant",
    );
    let own_delivery = format!("{acme_event}:{}", acme_hook.webhook_id);
    acme.deliveries().get_delivery(GetDeliveryRequest { delivery_id: own_delivery }).await.expect("GetDelivery of its own");
    let their_delivery = format!("{globex_event}:{}", globex_hook.webhook_id);
    let denied = assert_status(
        acme.deliveries().get_delivery(GetDeliveryRequest { delivery_id: their_delivery.clone() }).await,
        Code::PermissionDenied,
        None,
        "GetDelivery of another tenant's delivery",
    );
    assert!(!denied.message().contains("globex"), "a refusal does not say whose it is: {}", denied.message());
    admin.deliveries().get_delivery(GetDeliveryRequest { delivery_id: their_delivery }).await.expect("the admin sees everything");

    // Webhooks: its own tenant's only.
    let listed = acme.webhooks().list_webhooks(ListWebhooksRequest::default()).await.unwrap().into_inner().webhooks;
    assert_eq!(listed.iter().map(|w| w.webhook_id.as_str()).collect::<Vec<_>>(), [acme_hook.webhook_id.as_str()]);
    assert!(listed[0].secret.is_empty());
    assert_status(
        acme.webhooks().list_webhooks(ListWebhooksRequest { tenant_id: "globex".into(), ..Default::default() }).await,
        Code::PermissionDenied,
        Some("tenant_id"),
        "ListWebhooks of another tenant",
    );
    let own = acme
        .webhooks()
        .create_webhook(CreateWebhookRequest { url: ok.url(), ..Default::default() })
        .await
        .expect("a tenant token creates a webhook of its own tenant, tenant_id left empty")
        .into_inner();
    assert_eq!(own.tenant_id, "acme");
    assert!(!own.secret.is_empty(), "CreateWebhook shows the secret to its creator");
    assert_status(
        acme.webhooks().create_webhook(create("globex", ok.url())).await,
        Code::PermissionDenied,
        Some("tenant_id"),
        "CreateWebhook for another tenant",
    );
    assert_status(
        acme.webhooks().get_webhook(wss::proto::GetWebhookRequest { webhook_id: globex_hook.webhook_id.clone() }).await,
        Code::PermissionDenied,
        None,
        "GetWebhook of another tenant's webhook",
    );
    assert_status(
        acme.webhooks()
            .update_webhook(UpdateWebhookRequest { webhook_id: globex_hook.webhook_id.clone(), enabled: Some(false), ..Default::default() })
            .await,
        Code::PermissionDenied,
        None,
        "UpdateWebhook of another tenant's webhook",
    );
    assert_status(
        acme.webhooks().delete_webhook(wss::proto::DeleteWebhookRequest { webhook_id: globex_hook.webhook_id.clone() }).await,
        Code::PermissionDenied,
        None,
        "DeleteWebhook of another tenant's webhook",
    );
    assert_status(
        acme.webhooks()
            .rotate_webhook_secret(wss::proto::RotateWebhookSecretRequest {
                webhook_id: globex_hook.webhook_id.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        None,
        "RotateWebhookSecret of another tenant's webhook",
    );
    let untouched =
        admin.webhooks().get_webhook(wss::proto::GetWebhookRequest { webhook_id: globex_hook.webhook_id.clone() }).await.unwrap();
    assert!(untouched.into_inner().enabled, "the refused update changed nothing");
    acme.webhooks()
        .update_webhook(UpdateWebhookRequest { webhook_id: own.webhook_id.clone(), description: Some("mine".into()), ..Default::default() })
        .await
        .expect("UpdateWebhook of its own");
    acme.webhooks().get_webhook(wss::proto::GetWebhookRequest { webhook_id: own.webhook_id.clone() }).await.expect("GetWebhook of its own");
    acme.webhooks()
        .delete_webhook(wss::proto::DeleteWebhookRequest { webhook_id: own.webhook_id.clone() })
        .await
        .expect("DeleteWebhook of its own");

    // Unknown, wrong and missing tokens: UNAUTHENTICATED, on tenant rpcs and admin rpcs alike.
    let wrong_secret = format!("{}.{}", acme_token.token_id, "A".repeat(43));
    let unknown = wss::crypto::issue_token().unwrap().token;
    for (label, who) in [
        ("no token", Authed::new(&channel, None)),
        ("a token with the wrong secret", Authed::new(&channel, Some(&wrong_secret))),
        ("a token never issued", Authed::new(&channel, Some(&unknown))),
        ("a wrong admin token", Authed::new(&channel, Some("security-test-admin-token-0123456780"))),
        ("a malformed header", Authed::raw(&channel, "Basic YWRtaW46YWRtaW4=")),
    ] {
        assert_status(who.dead_letters("").await, Code::Unauthenticated, None, &format!("ListDeadLetters with {label}"));
        assert_status(
            who.tenants().list_tenants(ListTenantsRequest::default()).await,
            Code::Unauthenticated,
            None,
            &format!("ListTenants with {label}"),
        );
    }

    // Health and reflection stay open to everyone.
    let health = service.grpc().await.health().check(tonic_health::pb::HealthCheckRequest::default()).await;
    assert!(health.is_ok(), "{health:?}");
    {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let mut replies = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tonic::codegen::tokio_stream::iter(vec![request]))
            .await
            .expect("reflection without a token")
            .into_inner();
        let reply = replies.message().await.unwrap().expect("a reflection reply");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else { panic!("{reply:?}") };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"wss.v1.TokenService") && names.contains(&"wss.v1.WebhookService"), "{names:?}");
    }

    // Revocation holds at once; deleting a tenant revokes its tokens.
    admin.tokens().revoke_token(RevokeTokenRequest { token_id: acme_token.token_id.clone() }).await.unwrap();
    assert_status(acme.dead_letters("").await, Code::Unauthenticated, None, "a revoked token");
    assert_status(
        admin.tokens().revoke_token(RevokeTokenRequest { token_id: acme_token.token_id.clone() }).await,
        Code::NotFound,
        None,
        "revoking twice",
    );
    assert_status(
        admin.tokens().revoke_token(RevokeTokenRequest { token_id: "not-a-token-id".into() }).await,
        Code::InvalidArgument,
        Some("token_id"),
        "RevokeToken with a malformed id",
    );
    assert_status(
        admin.tokens().create_token(wss::proto::CreateTokenRequest { tenant_id: "nobody".into(), ..Default::default() }).await,
        Code::NotFound,
        None,
        "CreateToken for a tenant that does not exist",
    );
    assert!(globex.dead_letters("").await.is_ok());
    admin.tenants().delete_tenant(DeleteTenantRequest { tenant_id: "globex".into() }).await.unwrap();
    assert_status(globex.dead_letters("").await, Code::Unauthenticated, None, "a token of a deleted tenant");
    let left = admin.tokens().list_tokens(ListTokensRequest::default()).await.unwrap().into_inner().tokens;
    assert!(left.is_empty(), "{left:?}");

    // Refusals are logged with the rpc and the token id, never the token.
    let needle = format!("refused /wss.v1.DeliveryService/ListDeadLetters: unknown or revoked token {}", acme_token.token_id);
    let refused = service.wait_for_log(&needle, WAIT).await;
    assert!(!refused.contains(&acme_token.token), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_tenant_tokens_still_scope_calls() {
    let ks = Keyspace::new("open_tokens");
    let service = Service::start(&ks, "open-tokens", &[]).await;
    let channel = service.grpc().await.channel;
    let anyone = Authed::new(&channel, None);
    for tenant in ["acme", "globex"] {
        anyone.tenants().create_tenant(CreateTenantRequest { tenant_id: tenant.into(), ..Default::default() }).await.unwrap();
    }
    let token = anyone.create_token("acme").await;
    let acme = Authed::new(&channel, Some(&token.token));
    assert_status(acme.tenants().list_tenants(ListTenantsRequest::default()).await, Code::PermissionDenied, None, "ListTenants");
    assert!(acme.tenants().get_tenant(GetTenantRequest { tenant_id: "acme".into() }).await.is_ok());
    let bogus = Authed::new(&channel, Some(&wss::crypto::issue_token().unwrap().token));
    assert_status(bogus.dead_letters("").await, Code::Unauthenticated, None, "an unknown tenant token");
    assert!(anyone.tenants().list_tenants(ListTenantsRequest::default()).await.is_ok(), "no token: admin on loopback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_grpc_requests_are_refused_and_the_service_keeps_serving() {
    let ks = Keyspace::new("hostile_grpc");
    let service = Service::start(&ks, "hostile-grpc", &[("WSS_ADMIN_TOKEN", ADMIN)]).await;
    let channel = service.grpc().await.channel;
    let admin = Authed::new(&channel, Some(ADMIN));
    admin.tenants().create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await.unwrap();

    // An oversized message is refused before it is decoded.
    let huge = format!(r#"{{"blob":"{}"}}"#, "x".repeat(5 << 20));
    let status = admin
        .events()
        .publish_event(PublishEventRequest { tenant_id: "acme".into(), event_type: "big".into(), data: huge, ..Default::default() })
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "a 5 MiB request must be refused by the size limit: {status:?}"
    );

    // Static headers: CR/LF and reserved names are refused, naming the field.
    let webhook = |name: &str, value: &str| CreateWebhookRequest {
        tenant_id: "acme".into(),
        url: "https://hooks.example.com/in".into(),
        headers: [(name.to_owned(), value.to_owned())].into(),
        ..Default::default()
    };
    for (name, value) in [
        ("X-Ok", "a\r\nX-Injected: 1"),
        ("X-Ok", "line\nbreak"),
        ("X-Bad\r\nName", "v"),
        ("Host", "internal.example"),
        ("Content-Length", "0"),
        ("X-WSS-Signature", "forged"),
        ("x-wss-timestamp", "1"),
        ("Transfer-Encoding", "chunked"),
        ("webhook-signature", "v1,forged"),
    ] {
        assert_status(
            admin.webhooks().create_webhook(webhook(name, value)).await,
            Code::InvalidArgument,
            Some("headers"),
            &format!("a static header {name:?}: {value:?}"),
        );
    }

    // Ids outside their patterns, and page sizes beyond the limit.
    for bad in ["ACME", "-acme", "a b", "acme\n", &"a".repeat(65), "ten/ant", "tenant\u{0}"] {
        assert_status(
            admin.tenants().create_tenant(CreateTenantRequest { tenant_id: bad.into(), ..Default::default() }).await,
            Code::InvalidArgument,
            Some("tenant_id"),
            &format!("CreateTenant {bad:?}"),
        );
    }
    assert_status(
        admin.deliveries().get_delivery(GetDeliveryRequest { delivery_id: "x".repeat(200) }).await,
        Code::InvalidArgument,
        Some("delivery_id"),
        "GetDelivery with a 200-character id",
    );
    // A page size beyond 1000 is clamped (AIP-158), not refused: the page is just shorter.
    let huge = admin.tenants().list_tenants(ListTenantsRequest { page_size: 1_000_000, ..Default::default() }).await;
    let page = huge.unwrap_or_else(|s| panic!("a page size beyond 1000 is clamped, not refused: {s:?}")).into_inner();
    assert!(page.tenants.len() <= 1000);
    assert_status(
        admin.deliveries().list_dead_letters(wss::proto::ListDeadLettersRequest { page_token: "+".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        Some("page_token"),
        "a forged page token",
    );

    // Oversized metadata: refused by the HTTP/2 header-list limit. The server may drop the
    // connection over it, so it goes on a connection of its own.
    let own_connection = Authed::new(&service.grpc().await.channel, Some(ADMIN));
    let mut request = tonic::Request::new(ListTenantsRequest::default());
    request.metadata_mut().insert("x-padding", "p".repeat(64 << 10).parse().unwrap());
    let refused = own_connection.tenants().list_tenants(request).await;
    assert!(refused.is_err(), "64 KiB of metadata must be refused: {refused:?}");

    // Still serving.
    let tenants = admin.tenants().list_tenants(ListTenantsRequest::default()).await.unwrap().into_inner().tenants;
    assert_eq!(tenants.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stream_entries_are_dead_lettered_and_the_stream_keeps_flowing() {
    let ks = Keyspace::new("hostile_entries");
    let receiver = Receiver::ok();
    let mut service = Service::start(&ks, "hostile-entries", &[("WSS_MAX_EVENT_BYTES", "1048576")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;

    let xadd_raw = |fields: &[(&[u8], &[u8])]| -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(ks.events()).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query(&mut ks.conn()).expect("XADD")
    };
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let oversized = format!(r#"{{"blob":"{}"}}"#, "x".repeat(2 << 20));
    let many: Vec<(String, String)> = (0..1000).map(|i| (format!("attr{i}"), "v".to_owned())).collect();
    let mut many_fields: Vec<(&[u8], &[u8])> = vec![(b"tenant", b"acme"), (b"type", b"t"), (b"data", b"{}")];
    many_fields.extend(many.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();

    let bad: Vec<(String, &str)> = vec![
        (xadd_raw(&[(b"tenant", b"acme"), (b"type", b"t"), (b"data", oversized.as_bytes())]), "too_large"),
        (xadd_raw(&[(b"tenant", b"acme"), (b"type", b"t"), (b"data", deep.as_bytes())]), "too_deep"),
        (xadd_raw(&[(b"tenant", b"acme"), (b"type", &[0xc3, 0x28, 0xff]), (b"data", b"{}")]), "invalid_field"),
        (xadd_raw(&[(b"tenant", b"acme"), (b"type", b"t"), (b"data", &[0xfe, 0xff, 0x00, 0x7b])]), "data_not_json"),
        (xadd_raw(&[(b"tenant", b"acme"), (b"type", b"t"), (b"data", &garbage)]), "data_not_json"),
        (xadd_raw(&[(&garbage[..64], &garbage[64..128]), (b"tenant", b"acme")]), "invalid_field"),
        (xadd_raw(&many_fields), "too_many_fields"),
    ];
    let good = ks.publish("acme", "order.created", r#"{"ok":true}"#);

    let requests = receiver.wait_for_requests(1, "the good event delivered", Recorded::delivered).await;
    assert_eq!(requests[0].event_id(), good);
    wait_until(WAIT, "every entry acknowledged", || ks.all_acknowledged_through(&good)).await;
    let dead = eventually(WAIT, "a dead letter per hostile entry", || {
        let grpc = grpc.clone();
        async move {
            let dead = grpc.dead_letters("").await?;
            if dead.len() >= 7 {
                Ok(dead)
            } else {
                Err(format!("{} so far", dead.len()))
            }
        }
    })
    .await;
    let reasons: BTreeMap<&str, &str> = dead.iter().map(|d| (d.stream_entry_id.as_str(), d.reason.as_str())).collect();
    let expected: BTreeMap<&str, &str> = bad.iter().map(|(id, reason)| (id.as_str(), *reason)).collect();
    assert_eq!(reasons, expected);
    assert!(service.try_wait().is_none(), "the service is still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_listener_without_an_admin_token_is_refused() {
    let ks = Keyspace::new("public_no_token");
    let mut env = Service::env(&ks, "public-no-token");
    env.retain(|(k, _)| k != "WSS_GRPC_ADDR");
    env.push(("WSS_GRPC_ADDR".into(), "0.0.0.0:0".into()));
    let mut service = Service::spawn("public-no-token", env);
    let line = service.wait_for_log("refusing to serve the control plane on 0.0.0.0:0 without a token", WAIT).await;
    assert!(line.contains("WSS_ADMIN_TOKEN"), "the refusal says what to do: {line}");
    let status = wait_until(WAIT, "wss to exit", || service.try_wait().ok_or_else(|| "still running".to_owned())).await;
    assert!(!status.success(), "{status:?}");
}

/// The issue's proof for "no secret, token or authorization header in a log line, an error
/// message or a response": a full scenario at debug level — webhooks with supplied and generated
/// secrets (both schemes), a static credential header, deliveries that succeed, fail, retry and
/// dead-letter, tenant tokens used, refused and revoked, wrong tokens presented — and then the
/// whole log is searched for every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_the_log_or_a_response() {
    const SUPPLIED: &str = "whsec_supplied-secret-do-not-log-4711";
    const RECEIVER_CREDENTIAL: &str = "receiver-credential-do-not-log-0815";
    const ADMIN_GUESS: &str = "admin-guess-do-not-log-0123456789";
    const ENCRYPTION_KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    const ROTATED_IN: &str = "whsec_rotated-in-do-not-log-31337";
    let ks = Keyspace::new("no_secrets_logged");
    let ok = Receiver::ok();
    let failing = Receiver::always(500);
    let service = Service::start(
        &ks,
        "no-secrets-logged",
        &[
            ("WSS_ADMIN_TOKEN", ADMIN),
            ("WSS_ENCRYPTION_KEY", ENCRYPTION_KEY),
            ("WSS_CIRCUIT_FAILURES", "100"),
            ("WSS_LOG_LEVEL", "debug,tonic=debug,h2=debug,ureq=debug,ureq_proto=debug,rustls=debug,hyper=debug"),
        ],
    )
    .await;
    let channel = service.grpc().await.channel;
    let admin = Authed::new(&channel, Some(ADMIN));
    admin.tenants().create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await.unwrap();
    admin
        .policies()
        .create_retry_policy(CreateRetryPolicyRequest {
            policy_id: "twice".into(),
            max_attempts: Some(2),
            initial_backoff: Some(common::pb_ms(100)),
            max_backoff: Some(common::pb_ms(200)),
            ..Default::default()
        })
        .await
        .unwrap();
    let hook = |url: String, edit: &dyn Fn(&mut CreateWebhookRequest)| {
        let mut req = CreateWebhookRequest { tenant_id: "acme".into(), url, retry_policy_id: "twice".into(), ..Default::default() };
        edit(&mut req);
        req
    };
    let supplied = admin
        .webhooks()
        .create_webhook(hook(ok.url(), &|w| {
            w.secret = SUPPLIED.into();
            w.headers.insert("Authorization".into(), format!("Bearer {RECEIVER_CREDENTIAL}"));
        }))
        .await
        .unwrap()
        .into_inner();
    let generated = admin.webhooks().create_webhook(hook(failing.url(), &|_| {})).await.unwrap().into_inner();
    let standard = admin
        .webhooks()
        .create_webhook(hook(ok.url(), &|w| w.signature_scheme = wss::proto::SignatureScheme::StandardWebhooks as i32))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(supplied.secret, SUPPLIED);
    let token = admin.create_token("acme").await;
    let tenant = Authed::new(&channel, Some(&token.token));

    // Traffic: events by XADD and by PublishEvent, to all three webhooks.
    let first = ks.publish("acme", "order.created", r#"{"n":1}"#);
    admin
        .events()
        .publish_event(PublishEventRequest {
            tenant_id: "acme".into(),
            event_type: "order.paid".into(),
            data: r#"{"n":2}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    ok.wait_for_requests(4, "both events at both healthy webhooks", Recorded::delivered).await;
    dead_letters_at_least(&admin, 2).await;
    for request in ok.requests() {
        if request.opt_header("X-WSS-Signature").is_some() {
            common::assert_signed(SUPPLIED, &request);
            assert_eq!(request.header("Authorization"), format!("Bearer {RECEIVER_CREDENTIAL}"));
        }
    }

    // Rotations: one generated (by the tenant's token), one supplied; both with an overlap, so
    // that requests carry two signatures; then traffic again.
    let rotated = tenant
        .webhooks()
        .rotate_webhook_secret(wss::proto::RotateWebhookSecretRequest {
            webhook_id: supplied.webhook_id.clone(),
            overlap: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    admin
        .webhooks()
        .rotate_webhook_secret(wss::proto::RotateWebhookSecretRequest {
            webhook_id: generated.webhook_id.clone(),
            secret: ROTATED_IN.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    ks.publish("acme", "order.created", r#"{"n":3}"#);
    let seen = ok.wait_for_requests(6, "the third event at both healthy webhooks", Recorded::delivered).await;
    let last_wss = seen.iter().rev().find(|r| r.opt_header("X-WSS-Signature").is_some()).unwrap();
    assert_eq!(last_wss.header("X-WSS-Signature").split(',').count(), 2, "during the overlap, two signatures");
    dead_letters_at_least(&admin, 3).await;

    // The tenant token at work, then refused, then revoked; wrong credentials of every kind.
    let wrong_secret = format!("{}.{}", token.token_id, "Zm9yZ2VkLXNlY3JldC1kby1ub3QtbG9nLTAxMjM0NTY3");
    let unknown = wss::crypto::issue_token().unwrap().token;
    let tenant_view = tenant.dead_letters("").await.unwrap();
    assert_eq!(tenant_view.len(), 3);
    tenant.deliveries().list_deliveries(ListDeliveriesRequest::default()).await.unwrap();
    let _ = tenant.tenants().list_tenants(ListTenantsRequest::default()).await.unwrap_err();
    for who in [
        Authed::new(&channel, Some(&wrong_secret)),
        Authed::new(&channel, Some(&unknown)),
        Authed::new(&channel, Some(ADMIN_GUESS)),
        Authed::raw(&channel, &format!("Basic {ADMIN_GUESS}")),
    ] {
        let status = who.tenants().list_tenants(ListTenantsRequest::default()).await.unwrap_err();
        for secret in [ADMIN, ADMIN_GUESS, &wrong_secret, &unknown, &token.token] {
            assert!(!status.message().contains(secret), "an error echoes a credential: {}", status.message());
        }
    }
    admin.tokens().revoke_token(RevokeTokenRequest { token_id: token.token_id.clone() }).await.unwrap();
    let _ = tenant.dead_letters("").await.unwrap_err();

    // Responses other than CreateWebhook and CreateToken never carry a secret.
    let listed = admin.webhooks().list_webhooks(ListWebhooksRequest::default()).await.unwrap().into_inner().webhooks;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|w| w.secret.is_empty()), "{listed:?}");
    let updated = admin
        .webhooks()
        .update_webhook(UpdateWebhookRequest {
            webhook_id: supplied.webhook_id.clone(),
            description: Some("d".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(updated.secret.is_empty());
    let secrets = [SUPPLIED, generated.secret.as_str(), standard.secret.as_str(), rotated.secret.as_str(), ROTATED_IN];
    let dead = admin.dead_letters("").await.unwrap();
    let deliveries = admin.deliveries().list_deliveries(ListDeliveriesRequest::default()).await.unwrap().into_inner();
    let everything_listed = format!("{listed:?} {dead:?} {deliveries:?}");
    for secret in secrets {
        assert!(!everything_listed.contains(secret), "a listing shows a secret");
    }
    let _ = first;

    // And the log: not one of them, nor any authorization header.
    let lines = service.lines();
    let standard_key = standard.secret.trim_start_matches("whsec_").to_owned();
    let token_secret = token.token[token.token.find('.').unwrap() + 1..].to_owned();
    secure::assert_never_logged(
        &lines,
        &[
            ("the admin token", ADMIN),
            ("a wrong admin token", ADMIN_GUESS),
            ("a supplied webhook secret", SUPPLIED),
            ("a rotated-in secret (generated)", &rotated.secret),
            ("a rotated-in secret (supplied)", ROTATED_IN),
            ("the encryption key", ENCRYPTION_KEY),
            ("a generated webhook secret", &generated.secret),
            ("a Standard Webhooks secret", &standard.secret),
            ("a Standard Webhooks key", &standard_key),
            ("a tenant token", &token.token),
            ("a tenant token's secret part", &token_secret),
            ("a forged tenant token", &wrong_secret),
            ("an unknown tenant token", &unknown),
            ("a static credential header", RECEIVER_CREDENTIAL),
            ("an authorization header", "Bearer "),
        ],
    );
    assert!(lines.iter().any(|l| l.contains("DEBUG")), "the scenario ran at debug level");
}
