//! The API's conventions (issue 21, docs/api.md) through tonic clients against the real binary:
//! rich error details decoded on the client side (tonic-types), page tokens bound to their query
//! and rpc, pages of large dead letters under the message limit, etags refusing stale updates
//! (ABORTED), and update masks leaving the other fields alone.

mod common;

use common::{assert_status, eventually, Keyspace, Receiver, Service};
use prost_types::FieldMask;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;
use wss::proto::{
    delivery_service_client::DeliveryServiceClient, redeliver_dead_letter_request::Target, CreateTenantRequest, DeleteRetryPolicyRequest,
    GetRetryPolicyRequest, GetTenantRequest, GetWebhookRequest, ListDeadLettersRequest, ListTenantsRequest, ListWebhooksRequest,
    PublishEventRequest, RecordView, RedeliverDeadLetterRequest, SignatureScheme, UpdateRetryPolicyRequest, UpdateTenantRequest,
    UpdateWebhookRequest,
};

/// The ErrorInfo's reason and the metadata value of `key` ("" when absent); asserts the domain.
fn reason_of(status: &Status) -> (String, String) {
    let details = status.get_error_details();
    let info = details.error_info().unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "wss", "{status:?}");
    (info.reason.clone(), info.metadata.get("id").or(info.metadata.get("field")).cloned().unwrap_or_default())
}

/// The one BadRequest field violation's field.
fn violated_field(status: &Status) -> String {
    let details = status.get_error_details();
    let bad = details.bad_request().unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    assert_eq!(bad.field_violations.len(), 1, "{bad:?}");
    assert!(!bad.field_violations[0].description.is_empty(), "{bad:?}");
    bad.field_violations[0].field.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_a_reason_and_the_field() {
    const ADMIN: &str = "api-conventions-admin";
    let ks = Keyspace::new("api_errors");
    let service = Service::start(&ks, "api-errors", &[("WSS_ADMIN_TOKEN", ADMIN)]).await;
    let grpc = service.grpc().await;
    let authed = |mut request: Request<()>| {
        request.metadata_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
        Ok(request)
    };
    let mut tenants = wss::proto::tenant_service_client::TenantServiceClient::with_interceptor(grpc.channel.clone(), authed);
    let mut webhooks = wss::proto::webhook_service_client::WebhookServiceClient::with_interceptor(grpc.channel.clone(), authed);
    let mut policies = wss::proto::retry_policy_service_client::RetryPolicyServiceClient::with_interceptor(grpc.channel.clone(), authed);
    let mut deliveries = DeliveryServiceClient::with_interceptor(grpc.channel.clone(), authed);

    // Unauthenticated, with the message as before.
    let status = assert_status(
        grpc.tenants().get_tenant(GetTenantRequest { tenant_id: "acme".into() }).await,
        Code::Unauthenticated,
        None,
        "no token",
    );
    assert_eq!(reason_of(&status).0, "MISSING_TOKEN");
    assert!(status.message().starts_with("missing authorization metadata"), "{status:?}");

    let status =
        assert_status(tenants.get_tenant(GetTenantRequest { tenant_id: "nope".into() }).await, Code::NotFound, None, "unknown tenant");
    assert_eq!(reason_of(&status), ("TENANT_NOT_FOUND".into(), "nope".into()));
    assert_eq!(status.message(), "tenant \"nope\" does not exist", "the message is unchanged");

    let create = || CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() };
    tenants.create_tenant(create()).await.unwrap();
    let status = assert_status(tenants.create_tenant(create()).await, Code::AlreadyExists, None, "a taken id");
    assert_eq!(reason_of(&status).0, "TENANT_ALREADY_EXISTS");

    let bad = wss::proto::CreateWebhookRequest { tenant_id: "acme".into(), url: "ftp://example.com/".into(), ..Default::default() };
    let status = assert_status(webhooks.create_webhook(bad).await, Code::InvalidArgument, Some("url"), "a bad url");
    assert_eq!(reason_of(&status), ("INVALID_FIELD".into(), "url".into()));
    assert_eq!(violated_field(&status), "url");

    // A policy in use cannot be deleted.
    policies.create_retry_policy(wss::proto::CreateRetryPolicyRequest { policy_id: "busy".into(), ..Default::default() }).await.unwrap();
    let update = UpdateTenantRequest { tenant_id: "acme".into(), default_retry_policy_id: Some("busy".into()), ..Default::default() };
    tenants.update_tenant(update).await.unwrap();
    let status = assert_status(
        policies.delete_retry_policy(DeleteRetryPolicyRequest { policy_id: "busy".into() }).await,
        Code::FailedPrecondition,
        None,
        "a policy in use",
    );
    assert_eq!(reason_of(&status).0, "POLICY_IN_USE");

    // `limit` with one dead_letter_id is refused rather than ignored.
    let request = RedeliverDeadLetterRequest { target: Some(Target::DeadLetterId("1-0".into())), limit: 5, page_token: String::new() };
    let status = assert_status(deliveries.redeliver_dead_letter(request).await, Code::InvalidArgument, Some("limit"), "limit with an id");
    assert_eq!(violated_field(&status), "limit");

    // A filter's reason as an enum value must agree with the string.
    let filter = wss::proto::DeadLetterFilter {
        reason: "gone".into(),
        reason_code: wss::proto::DeadLetterReason::Poison.into(),
        ..Default::default()
    };
    let request = RedeliverDeadLetterRequest { target: Some(Target::Filter(filter)), ..Default::default() };
    let status = assert_status(deliveries.redeliver_dead_letter(request).await, Code::InvalidArgument, None, "disagreeing reasons");
    assert_eq!(violated_field(&status), "filter.reason_code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_are_opaque_and_bound_to_their_query() {
    let ks = Keyspace::new("api_tokens");
    let service = Service::start(&ks, "api-tokens", &[]).await;
    let grpc = service.grpc().await;
    for tenant in ["acme", "globex", "initech"] {
        grpc.create_tenant(tenant).await;
    }
    for tenant in ["acme", "acme", "globex", "globex"] {
        grpc.create_webhook(tenant, "http://127.0.0.1:9/hook", |_| {}).await;
    }
    let mut tenants = grpc.tenants();
    let mut webhooks = grpc.webhooks();

    let first = tenants.list_tenants(ListTenantsRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(first.tenants[0].tenant_id, "acme");
    let token = first.next_page_token;
    assert!(token.starts_with("v1.") && !token.contains("acme"), "an opaque token: {token}");
    // The same query goes on, with another page_size too.
    let second = tenants.list_tenants(ListTenantsRequest { page_size: 5, page_token: token.clone() }).await.unwrap().into_inner();
    let ids: Vec<&str> = second.tenants.iter().map(|t| t.tenant_id.as_str()).collect();
    assert_eq!(ids, ["globex", "initech"]);

    // Another rpc refuses it.
    let status = assert_status(
        webhooks.list_webhooks(ListWebhooksRequest { page_token: token.clone(), ..Default::default() }).await,
        Code::InvalidArgument,
        Some("page_token"),
        "a ListTenants token on ListWebhooks",
    );
    assert_eq!(reason_of(&status).0, "INVALID_PAGE_TOKEN");
    assert_eq!(violated_field(&status), "page_token");

    // Other filters refuse it.
    let acme = webhooks
        .list_webhooks(ListWebhooksRequest { tenant_id: "acme".into(), page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(!acme.next_page_token.is_empty());
    let status = assert_status(
        webhooks
            .list_webhooks(ListWebhooksRequest { tenant_id: "globex".into(), page_size: 1, page_token: acme.next_page_token.clone() })
            .await,
        Code::InvalidArgument,
        Some("page_token"),
        "an acme token for globex",
    );
    assert_eq!(reason_of(&status).0, "INVALID_PAGE_TOKEN");
    let rest = webhooks
        .list_webhooks(ListWebhooksRequest { tenant_id: "acme".into(), page_size: 10, page_token: acme.next_page_token })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.webhooks.len(), 1);
    assert!(rest.next_page_token.is_empty());

    // A raw id that is no stream id, and a forged v1 token.
    for bad in [first.tenants[0].tenant_id.clone() + "x", "v1.bm90LWpzb24".into()] {
        let result = grpc.deliveries().list_dead_letters(ListDeadLettersRequest { page_token: bad.clone(), ..Default::default() }).await;
        let status = assert_status(result, Code::InvalidArgument, Some("page_token"), &format!("token {bad:?} on ListDeadLetters"));
        assert_eq!(reason_of(&status).0, "INVALID_PAGE_TOKEN");
    }

    // A raw token of the previous release (the last id) is still accepted.
    let old = tenants.list_tenants(ListTenantsRequest { page_size: 5, page_token: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(old.tenants.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_refuse_stale_updates_and_masks_touch_only_their_fields() {
    let ks = Keyspace::new("api_etags");
    let service = Service::start(&ks, "api-etags", &[]).await;
    let grpc = service.grpc().await;
    let created = grpc.create_tenant("acme").await;
    assert!(!created.etag.is_empty(), "{created:?}");
    let mut tenants = grpc.tenants();

    // Two clients read the same version; the first write wins, the second is ABORTED.
    let read = tenants.get_tenant(GetTenantRequest { tenant_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(read.etag, created.etag);
    let first =
        UpdateTenantRequest { tenant_id: "acme".into(), display_name: Some("first".into()), etag: read.etag.clone(), ..Default::default() };
    let updated = tenants.update_tenant(first).await.unwrap().into_inner();
    assert_ne!(updated.etag, read.etag);
    let second = UpdateTenantRequest { tenant_id: "acme".into(), disabled: Some(true), etag: read.etag.clone(), ..Default::default() };
    let status = assert_status(tenants.update_tenant(second).await, Code::Aborted, None, "a stale etag");
    assert_eq!(reason_of(&status).0, "STALE_ETAG");
    let now = tenants.get_tenant(GetTenantRequest { tenant_id: "acme".into() }).await.unwrap().into_inner();
    assert!(!now.disabled && now.display_name == "first", "the stale update changed nothing: {now:?}");
    let listed = tenants.list_tenants(ListTenantsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.tenants[0].etag, updated.etag, "List shows the etag too");

    // Many writers at once with the same etag: exactly one wins (the version is checked and
    // bumped in the record's own transaction).
    let base = tenants.get_tenant(GetTenantRequest { tenant_id: "acme".into() }).await.unwrap().into_inner();
    let racers: Vec<_> = (0..8)
        .map(|n| {
            let mut client = grpc.tenants();
            let request = UpdateTenantRequest {
                tenant_id: "acme".into(),
                display_name: Some(format!("racer {n}")),
                etag: base.etag.clone(),
                ..Default::default()
            };
            tokio::spawn(async move { client.update_tenant(request).await })
        })
        .collect();
    let mut won = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(reply) => won.push(reply.into_inner()),
            Err(status) => assert_eq!((status.code(), reason_of(&status).0.as_str()), (Code::Aborted, "STALE_ETAG"), "{status:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one of the racers wins: {won:?}");
    let now = tenants.get_tenant(GetTenantRequest { tenant_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!((now.display_name.as_str(), now.etag.as_str()), (won[0].display_name.as_str(), won[0].etag.as_str()));

    // A mask: `disabled` is set but not named (untouched), display_name is named and unset (cleared).
    let masked = UpdateTenantRequest {
        tenant_id: "acme".into(),
        disabled: Some(true),
        update_mask: Some(FieldMask { paths: vec!["display_name".into()] }),
        etag: now.etag.clone(),
        ..Default::default()
    };
    let after = tenants.update_tenant(masked).await.unwrap().into_inner();
    assert_eq!((after.display_name.as_str(), after.disabled), ("", false), "{after:?}");
    let bad =
        UpdateTenantRequest { tenant_id: "acme".into(), update_mask: Some(FieldMask { paths: vec!["nope".into()] }), ..Default::default() };
    let status = assert_status(tenants.update_tenant(bad).await, Code::InvalidArgument, Some("update_mask"), "an unknown path");
    assert_eq!(reason_of(&status).0, "INVALID_UPDATE_MASK");

    // Webhooks: the mask names description only; url and enabled in the request are ignored.
    let webhook = grpc.create_webhook("acme", "http://127.0.0.1:9/hook", |r| r.description = "old".into()).await;
    let mut webhooks = grpc.webhooks();
    let update = UpdateWebhookRequest {
        webhook_id: webhook.webhook_id.clone(),
        url: Some("http://127.0.0.1:9/elsewhere".into()),
        enabled: Some(false),
        description: Some("new".into()),
        update_mask: Some(FieldMask { paths: vec!["description".into()] }),
        etag: webhook.etag.clone(),
        ..Default::default()
    };
    let changed = webhooks.update_webhook(update.clone()).await.unwrap().into_inner();
    assert_eq!((changed.description.as_str(), changed.url.as_str(), changed.enabled), ("new", webhook.url.as_str(), true));
    let status = assert_status(webhooks.update_webhook(update).await, Code::Aborted, None, "the same etag twice");
    assert_eq!(reason_of(&status).0, "STALE_ETAG");
    // signature_scheme is updatable (a generated secret suits Standard Webhooks).
    let scheme = UpdateWebhookRequest {
        webhook_id: webhook.webhook_id.clone(),
        signature_scheme: Some(SignatureScheme::StandardWebhooks.into()),
        ..Default::default()
    };
    webhooks.update_webhook(scheme).await.unwrap();
    let got = webhooks.get_webhook(GetWebhookRequest { webhook_id: webhook.webhook_id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.signature_scheme, SignatureScheme::StandardWebhooks as i32);
    assert_ne!(got.etag, changed.etag);

    // Retry policies, `default` included (never stored yet: its etag is that of the built-in one).
    let mut policies = grpc.policies();
    let default = policies.get_retry_policy(GetRetryPolicyRequest { policy_id: "default".into() }).await.unwrap().into_inner();
    let update = |etag: String| UpdateRetryPolicyRequest {
        policy_id: "default".into(),
        max_attempts: Some(3),
        multiplier: Some(7.0),
        update_mask: Some(FieldMask { paths: vec!["max_attempts".into()] }),
        etag,
        ..Default::default()
    };
    let changed = policies.update_retry_policy(update(default.etag.clone())).await.unwrap().into_inner();
    assert_eq!((changed.max_attempts, changed.multiplier), (3, default.multiplier));
    let status = assert_status(policies.update_retry_policy(update(default.etag)).await, Code::Aborted, None, "a stale policy etag");
    assert_eq!(reason_of(&status).0, "STALE_ETAG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_large_dead_letters_stay_under_the_message_limit() {
    const EVENTS: usize = 7;
    const BODY: usize = 1_300_000;
    let ks = Keyspace::new("api_large_dead_letters");
    // The circuit would open after 5 failures and postpone the rest: not what this test is about.
    let service = Service::start(&ks, "api-large", &[("WSS_MAX_EVENT_BYTES", "1400000"), ("WSS_CIRCUIT_FAILURES", "1000")]).await;
    let grpc = service.grpc().await;
    let receiver = Receiver::always(500);
    grpc.create_tenant("acme").await;
    grpc.create_policy("once", 1, 100, 100).await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |r| r.retry_policy_id = "once".into()).await;
    for i in 0..EVENTS {
        let data = serde_json::to_string(&format!("{i}{}", "x".repeat(BODY))).unwrap();
        let request = PublishEventRequest { tenant_id: "acme".into(), event_type: "big".into(), data, ..Default::default() };
        grpc.events().publish_event(request).await.unwrap();
    }
    eventually(std::time::Duration::from_secs(60), "every large event dead-lettered", || async {
        let basic = grpc
            .deliveries()
            .list_dead_letters(ListDeadLettersRequest { view: RecordView::Basic.into(), ..Default::default() })
            .await
            .map_err(|s| format!("{s:?}"))?
            .into_inner();
        if basic.dead_letters.len() == EVENTS {
            Ok(basic)
        } else {
            Err(format!("{} of {EVENTS} dead letters so far", basic.dead_letters.len()))
        }
    })
    .await;

    // BASIC: one page, without bodies or attempts.
    let basic = grpc
        .deliveries()
        .list_dead_letters(ListDeadLettersRequest { view: RecordView::Basic.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(basic.next_page_token.is_empty());
    assert!(basic.dead_letters.iter().all(|d| d.body.is_empty() && d.attempts.is_empty()));
    assert!(basic.dead_letters.iter().all(|d| d.reason_code == wss::proto::DeadLetterReason::MaxAttemptsExhausted as i32));

    // FULL, with page_size 100 and a client that accepts 4 MiB (tonic's default): every page
    // arrives, stops short by size with a token, and together they hold every body whole.
    let mut client = DeliveryServiceClient::new(grpc.channel.clone()).max_decoding_message_size(4 << 20);
    let mut token = String::new();
    let mut bodies = 0;
    let mut pages = 0;
    loop {
        let request = ListDeadLettersRequest { page_size: 100, page_token: token.clone(), ..Default::default() };
        let page = client.list_dead_letters(request).await.unwrap_or_else(|s| panic!("page {pages}: {s:?}")).into_inner();
        pages += 1;
        let size = prost::Message::encoded_len(&page);
        assert!(size <= 4 << 20, "page {pages} is {size} bytes");
        assert!(!page.dead_letters.is_empty(), "page {pages} is empty");
        for letter in &page.dead_letters {
            assert!(letter.body.len() > BODY, "listed whole: {} bytes", letter.body.len());
            assert_eq!(letter.attempts.len(), 1);
            assert_eq!(letter.attempts[0].error_kind_code, wss::proto::ErrorKind::HttpStatus as i32);
        }
        bodies += page.dead_letters.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(bodies, EVENTS);
    // Stats are written up to a second after the attempts they count.
    let stats = eventually(std::time::Duration::from_secs(30), "the stats show the last failure", || async {
        let stats = grpc
            .webhooks()
            .get_webhook_stats(wss::proto::GetWebhookStatsRequest { webhook_id: webhook.webhook_id.clone(), window: None })
            .await
            .map_err(|s| format!("{s:?}"))?
            .into_inner();
        if stats.last_failure_error_kind.is_empty() {
            Err("no failure recorded yet".to_owned())
        } else {
            Ok(stats)
        }
    })
    .await;
    assert_eq!(stats.last_failure_error_kind, "http_status");
    assert_eq!(stats.last_failure_error_kind_code, wss::proto::ErrorKind::HttpStatus as i32);
    assert!(pages >= 3, "{EVENTS} records of {BODY} bytes need several pages under 4 MiB, got {pages}");
}
