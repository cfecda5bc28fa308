//! The gRPC control plane (docs/contract.md §5) through tonic clients against the real binary: CRUD of
//! retry policies, tenants and webhooks, the error codes, and bearer-token authentication.

mod common;

use std::collections::BTreeSet;

use common::{assert_status, pb_ms, Keyspace, Service};
use tonic::{Code, Request};
use wss::proto::{
    CreateRetryPolicyRequest, CreateTenantRequest, CreateWebhookRequest, DeleteRetryPolicyRequest, DeleteTenantRequest,
    DeleteWebhookRequest, GetRetryPolicyRequest, GetTenantRequest, GetWebhookRequest, Headers, ListRetryPoliciesRequest,
    ListTenantsRequest, ListWebhooksRequest, UpdateRetryPolicyRequest, UpdateTenantRequest, UpdateWebhookRequest,
};

/// Pages through a List call with page_size 1; checks every page holds at most one item and
/// returns the ids in order.
macro_rules! list_all_one_by_one {
    ($client:expr, $req:ident { $($field:ident : $value:expr),* }, $items:ident, $id:ident) => {{
        let mut ids: Vec<String> = Vec::new();
        let mut token = String::new();
        for _ in 0..1000 {
            let page = $client
                .clone()
                .$items($req { $($field: $value,)* page_size: 1, page_token: token.clone() })
                .await
                .unwrap_or_else(|s| panic!("{} page after {token:?}: {s:?}", stringify!($req)))
                .into_inner();
            let (items, next) = list_all_one_by_one!(@split page, $items);
            assert!(items.len() <= 1, "page_size 1 returned {} items", items.len());
            ids.extend(items.into_iter().map(|i| i.$id));
            if next.is_empty() {
                break;
            }
            token = next;
        }
        ids
    }};
    (@split $page:ident, list_retry_policies) => { ($page.retry_policies, $page.next_page_token) };
    (@split $page:ident, list_tenants) => { ($page.tenants, $page.next_page_token) };
    (@split $page:ident, list_webhooks) => { ($page.webhooks, $page.next_page_token) };
}

fn assert_unique_sorted(ids: &[String], what: &str) {
    let set: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(set.len(), ids.len(), "{what}: an id was listed twice across pages: {ids:?}");
    let mut sorted = ids.to_vec();
    sorted.sort();
    assert_eq!(sorted, ids, "{what}: listings are ordered by id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policies_crud_and_errors() {
    let ks = Keyspace::new("policies_crud");
    let service = Service::start(&ks, "policies-crud", &[]).await;
    let grpc = service.grpc().await;
    let mut policies = grpc.policies();

    // `default` is there from the start.
    let first = policies.list_retry_policies(ListRetryPoliciesRequest::default()).await.unwrap().into_inner();
    assert!(first.retry_policies.iter().any(|p| p.policy_id == "default"), "ListRetryPolicies lacks `default`: {first:?}");
    let default = policies.get_retry_policy(GetRetryPolicyRequest { policy_id: "default".into() }).await.unwrap().into_inner();
    assert_eq!(default.max_attempts, 8, "the built-in default (docs/contract.md §4): {default:?}");

    // Create, get.
    let created = policies
        .create_retry_policy(CreateRetryPolicyRequest {
            policy_id: "fast".into(),
            max_attempts: Some(5),
            initial_backoff: Some(pb_ms(100)),
            max_backoff: Some(pb_ms(1000)),
            multiplier: Some(2.0),
            jitter: Some(0.0),
            attempt_timeout: Some(pb_ms(2000)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.policy_id, "fast");
    assert_eq!(created.max_attempts, 5);
    assert_eq!(created.initial_backoff, Some(pb_ms(100)));
    assert_eq!(created.max_backoff, Some(pb_ms(1000)));
    assert_eq!(created.attempt_timeout, Some(pb_ms(2000)));
    assert_eq!(created.multiplier, 2.0);
    assert_eq!(created.jitter, 0.0);
    let got = policies.get_retry_policy(GetRetryPolicyRequest { policy_id: "fast".into() }).await.unwrap().into_inner();
    assert_eq!(got, created);
    grpc.create_policy("slow", 3, 1000, 5000).await;

    // Update changes only what it sets.
    let updated = policies
        .update_retry_policy(UpdateRetryPolicyRequest {
            policy_id: "fast".into(),
            max_attempts: Some(7),
            multiplier: Some(3.0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.max_attempts, updated.multiplier), (7, 3.0));
    assert_eq!(updated.initial_backoff, Some(pb_ms(100)), "an update must keep the fields it does not set");
    let got = policies.get_retry_policy(GetRetryPolicyRequest { policy_id: "fast".into() }).await.unwrap().into_inner();
    assert_eq!(got, updated);

    // List with page_size 1 visits every policy once.
    let ids = list_all_one_by_one!(policies, ListRetryPoliciesRequest {}, list_retry_policies, policy_id);
    assert_eq!(ids, ["default", "fast", "slow"], "ListRetryPolicies with page_size 1");
    assert_unique_sorted(&ids, "ListRetryPolicies");

    // Errors.
    let bad_jitter = CreateRetryPolicyRequest { policy_id: "jittery".into(), jitter: Some(2.0), ..Default::default() };
    assert_status(policies.create_retry_policy(bad_jitter).await, Code::InvalidArgument, Some("jitter"), "jitter 2.0");
    assert_status(
        policies.get_retry_policy(GetRetryPolicyRequest { policy_id: "nope".into() }).await,
        Code::NotFound,
        None,
        "GetRetryPolicy of an unknown id",
    );
    assert_status(
        policies.delete_retry_policy(DeleteRetryPolicyRequest { policy_id: "default".into() }).await,
        Code::FailedPrecondition,
        None,
        "DeleteRetryPolicy default",
    );

    // A policy in use cannot be deleted; once unused it can.
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", "http://127.0.0.1:9/hook", |r| r.retry_policy_id = "fast".into()).await;
    assert_status(
        policies.delete_retry_policy(DeleteRetryPolicyRequest { policy_id: "fast".into() }).await,
        Code::FailedPrecondition,
        None,
        "DeleteRetryPolicy of a policy a webhook uses",
    );
    grpc.webhooks().delete_webhook(DeleteWebhookRequest { webhook_id: webhook.webhook_id }).await.unwrap();
    policies.delete_retry_policy(DeleteRetryPolicyRequest { policy_id: "fast".into() }).await.unwrap();
    assert_status(
        policies.get_retry_policy(GetRetryPolicyRequest { policy_id: "fast".into() }).await,
        Code::NotFound,
        None,
        "GetRetryPolicy after DeleteRetryPolicy",
    );
    let ids = list_all_one_by_one!(policies, ListRetryPoliciesRequest {}, list_retry_policies, policy_id);
    assert_eq!(ids, ["default", "slow"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_crud_and_errors() {
    let ks = Keyspace::new("tenants_crud");
    let service = Service::start(&ks, "tenants-crud", &[]).await;
    let grpc = service.grpc().await;
    let mut tenants = grpc.tenants();

    let created = tenants
        .create_tenant(CreateTenantRequest { tenant_id: "acme".into(), display_name: "Acme Corp".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((created.tenant_id.as_str(), created.display_name.as_str(), created.disabled), ("acme", "Acme Corp", false));
    let got = tenants.get_tenant(GetTenantRequest { tenant_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!((got.tenant_id.as_str(), got.display_name.as_str()), ("acme", "Acme Corp"));
    grpc.create_tenant("beta").await;
    grpc.create_tenant("corp-3").await;

    // Errors on create and get.
    let dup = CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() };
    assert_status(tenants.create_tenant(dup).await, Code::AlreadyExists, None, "CreateTenant of an existing id");
    let bad = CreateTenantRequest { tenant_id: "Bad Id".into(), ..Default::default() };
    assert_status(tenants.create_tenant(bad).await, Code::InvalidArgument, Some("tenant_id"), "CreateTenant \"Bad Id\"");
    assert_status(tenants.get_tenant(GetTenantRequest { tenant_id: "ghost".into() }).await, Code::NotFound, None, "GetTenant ghost");

    let ids = list_all_one_by_one!(tenants, ListTenantsRequest {}, list_tenants, tenant_id);
    assert_eq!(ids, ["acme", "beta", "corp-3"], "ListTenants with page_size 1");

    // Update.
    let updated = tenants
        .update_tenant(UpdateTenantRequest {
            tenant_id: "beta".into(),
            display_name: Some("Beta GmbH".into()),
            disabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.display_name.as_str(), updated.disabled), ("Beta GmbH", true));
    let got = tenants.get_tenant(GetTenantRequest { tenant_id: "beta".into() }).await.unwrap().into_inner();
    assert_eq!((got.display_name.as_str(), got.disabled), ("Beta GmbH", true));
    assert_status(
        tenants
            .update_tenant(UpdateTenantRequest { tenant_id: "ghost".into(), display_name: Some("x".into()), ..Default::default() })
            .await,
        Code::NotFound,
        None,
        "UpdateTenant ghost",
    );

    // DeleteTenant takes its webhooks along, and only its own.
    let mut kept = Vec::new();
    for _ in 0..2 {
        kept.push(grpc.create_webhook("acme", "http://127.0.0.1:9/a", |_| {}).await.webhook_id);
    }
    let mut doomed = Vec::new();
    for _ in 0..2 {
        doomed.push(grpc.create_webhook("corp-3", "http://127.0.0.1:9/c", |_| {}).await.webhook_id);
    }
    let deleted = tenants.delete_tenant(DeleteTenantRequest { tenant_id: "corp-3".into() }).await.unwrap().into_inner();
    assert_eq!(deleted.deleted_webhooks, 2);
    assert_status(
        tenants.get_tenant(GetTenantRequest { tenant_id: "corp-3".into() }).await,
        Code::NotFound,
        None,
        "GetTenant after delete",
    );
    for id in &doomed {
        let got = grpc.webhooks().get_webhook(GetWebhookRequest { webhook_id: id.clone() }).await;
        assert_status(got, Code::NotFound, None, "GetWebhook of a deleted tenant's webhook");
    }
    let all = grpc.webhooks().list_webhooks(ListWebhooksRequest::default()).await.unwrap().into_inner();
    let listed: BTreeSet<String> = all.webhooks.into_iter().map(|w| w.webhook_id).collect();
    assert_eq!(listed, kept.into_iter().collect(), "ListWebhooks after DeleteTenant corp-3");
    let ids = list_all_one_by_one!(tenants, ListTenantsRequest {}, list_tenants, tenant_id);
    assert_eq!(ids, ["acme", "beta"]);
    assert_status(
        tenants.delete_tenant(DeleteTenantRequest { tenant_id: "corp-3".into() }).await,
        Code::NotFound,
        None,
        "DeleteTenant of a deleted tenant",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_crud_and_errors() {
    let ks = Keyspace::new("webhooks_crud");
    let service = Service::start(&ks, "webhooks-crud", &[]).await;
    let grpc = service.grpc().await;
    let mut webhooks = grpc.webhooks();
    grpc.create_tenant("acme").await;
    grpc.create_tenant("other").await;

    let request = CreateWebhookRequest {
        tenant_id: "acme".into(),
        url: "http://127.0.0.1:9/orders".into(),
        event_types: vec!["order.*".into()],
        headers: [("X-Api-Key".to_owned(), "k-123".to_owned())].into_iter().collect(),
        description: "orders".into(),
        ..Default::default()
    };
    let created = webhooks.create_webhook(request).await.unwrap().into_inner();
    assert!(created.webhook_id.starts_with("wh_"), "server-assigned id: {created:?}");
    assert!(!created.secret.is_empty(), "CreateWebhook returns the generated secret");
    assert!(created.enabled, "absent `enabled` means enabled");
    assert_eq!(created.url, "http://127.0.0.1:9/orders");
    assert_eq!(created.event_types, ["order.*"]);
    assert_eq!(created.headers.get("X-Api-Key").map(String::as_str), Some("k-123"));

    let got = webhooks.get_webhook(GetWebhookRequest { webhook_id: created.webhook_id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.secret, "", "GetWebhook must not return the secret");
    assert_eq!((got.tenant_id.as_str(), got.url.as_str(), got.description.as_str()), ("acme", created.url.as_str(), "orders"));
    assert_eq!(got.event_types, created.event_types);
    assert_eq!(got.headers, created.headers);

    let second = grpc.create_webhook("acme", "http://127.0.0.1:9/second", |_| {}).await;
    let third = grpc.create_webhook("acme", "http://127.0.0.1:9/third", |_| {}).await;
    let foreign = grpc.create_webhook("other", "http://127.0.0.1:9/other", |_| {}).await;
    assert_ne!(second.secret, third.secret, "each webhook gets its own secret");

    // List of one tenant, one by one; never a secret.
    let ids = list_all_one_by_one!(webhooks, ListWebhooksRequest { tenant_id: "acme".into() }, list_webhooks, webhook_id);
    let mut expected = vec![created.webhook_id.clone(), second.webhook_id.clone(), third.webhook_id.clone()];
    expected.sort();
    assert_eq!(ids, expected, "ListWebhooks of acme with page_size 1");
    let listed = webhooks.list_webhooks(ListWebhooksRequest::default()).await.unwrap().into_inner().webhooks;
    assert_eq!(listed.len(), 4, "ListWebhooks of all tenants: {listed:?}");
    assert!(listed.iter().any(|w| w.webhook_id == foreign.webhook_id));
    assert!(listed.iter().all(|w| w.secret.is_empty()), "ListWebhooks must not return secrets");

    // Update.
    let updated = webhooks
        .update_webhook(UpdateWebhookRequest {
            webhook_id: created.webhook_id.clone(),
            url: Some("http://127.0.0.1:9/v2".into()),
            description: Some("orders v2".into()),
            enabled: Some(false),
            headers: Some(Headers { headers: [("X-Api-Key".to_owned(), "k-456".to_owned())].into_iter().collect() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.secret, "", "UpdateWebhook must not return the secret");
    assert_eq!((updated.url.as_str(), updated.description.as_str(), updated.enabled), ("http://127.0.0.1:9/v2", "orders v2", false));
    assert_eq!(updated.event_types, ["order.*"], "fields not set by the update are kept");
    let got = webhooks.get_webhook(GetWebhookRequest { webhook_id: created.webhook_id.clone() }).await.unwrap().into_inner();
    assert_eq!((got.url.as_str(), got.enabled), ("http://127.0.0.1:9/v2", false));
    assert_eq!(got.headers.get("X-Api-Key").map(String::as_str), Some("k-456"));

    // Errors.
    let base = || CreateWebhookRequest { tenant_id: "acme".into(), url: "http://127.0.0.1:9/x".into(), ..Default::default() };
    let ftp = CreateWebhookRequest { url: "ftp://x".into(), ..base() };
    assert_status(webhooks.create_webhook(ftp).await, Code::InvalidArgument, Some("url"), "CreateWebhook ftp://x");
    let reserved = CreateWebhookRequest { headers: [("X-WSS-Signature".to_owned(), "forged".to_owned())].into_iter().collect(), ..base() };
    assert_status(
        webhooks.create_webhook(reserved).await,
        Code::InvalidArgument,
        Some("headers"),
        "CreateWebhook with header X-WSS-Signature",
    );
    let bad_tenant = CreateWebhookRequest { tenant_id: "Bad Id".into(), ..base() };
    assert_status(webhooks.create_webhook(bad_tenant).await, Code::InvalidArgument, Some("tenant_id"), "CreateWebhook tenant \"Bad Id\"");
    let bad_update = UpdateWebhookRequest { webhook_id: second.webhook_id.clone(), url: Some("ftp://x".into()), ..Default::default() };
    assert_status(webhooks.update_webhook(bad_update).await, Code::InvalidArgument, Some("url"), "UpdateWebhook url ftp://x");
    let unknown = "wh_aaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned();
    assert_status(
        webhooks.get_webhook(GetWebhookRequest { webhook_id: unknown.clone() }).await,
        Code::NotFound,
        None,
        "GetWebhook unknown",
    );
    let update_unknown = UpdateWebhookRequest { webhook_id: unknown.clone(), description: Some("x".into()), ..Default::default() };
    assert_status(webhooks.update_webhook(update_unknown).await, Code::NotFound, None, "UpdateWebhook unknown");

    // Delete.
    webhooks.delete_webhook(DeleteWebhookRequest { webhook_id: second.webhook_id.clone() }).await.unwrap();
    assert_status(
        webhooks.get_webhook(GetWebhookRequest { webhook_id: second.webhook_id.clone() }).await,
        Code::NotFound,
        None,
        "GetWebhook after DeleteWebhook",
    );
    assert_status(
        webhooks.delete_webhook(DeleteWebhookRequest { webhook_id: second.webhook_id.clone() }).await,
        Code::NotFound,
        None,
        "DeleteWebhook twice",
    );
    let left = webhooks.list_webhooks(ListWebhooksRequest { tenant_id: "acme".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(left.webhooks.len(), 2, "acme's webhooks after one delete: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_required_except_for_health() {
    const TOKEN: &str = "integration-test-admin-token-0123";
    let ks = Keyspace::new("admin_token");
    let service = Service::start(&ks, "admin-token", &[("WSS_ADMIN_TOKEN", TOKEN)]).await;
    let grpc = service.grpc().await;
    let mut tenants = grpc.tenants();

    let with_auth = |value: Option<&str>| {
        let mut request = Request::new(ListTenantsRequest::default());
        if let Some(value) = value {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    };
    assert_status(tenants.list_tenants(with_auth(None)).await, Code::Unauthenticated, None, "a call without authorization");
    assert_status(
        tenants.list_tenants(with_auth(Some("Bearer integration-test-wrong-token-99"))).await,
        Code::Unauthenticated,
        None,
        "a call with a wrong token",
    );
    let refused = tenants.create_tenant(Request::new(CreateTenantRequest { tenant_id: "sneaky".into(), ..Default::default() })).await;
    assert_status(refused, Code::Unauthenticated, None, "CreateTenant without authorization");

    let mut create = Request::new(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() });
    create.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    tenants.create_tenant(create).await.expect("CreateTenant with the right token");
    let listed = tenants.list_tenants(with_auth(Some(&format!("Bearer {TOKEN}")))).await.expect("ListTenants with the right token");
    let ids: Vec<String> = listed.into_inner().tenants.into_iter().map(|t| t.tenant_id).collect();
    assert_eq!(ids, ["acme"], "the unauthenticated CreateTenant must not have created anything");

    // Health stays open.
    let health = grpc
        .health()
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("grpc.health.v1.Health/Check without a token")
        .into_inner();
    assert_eq!(health.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}
