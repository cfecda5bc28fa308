//! Secret rotation with an overlap (docs/contract.md §3, issue 5): RotateWebhookSecret returns the new
//! secret once; during the overlap every request carries the new secret's signature first and the
//! old one's after it (comma-separated for X-WSS-Signature, space-separated for Standard
//! Webhooks); after it, the new one's alone. With WSS_ENCRYPTION_KEY both are sealed at rest.

mod common;

use std::time::{Duration, Instant};

use common::{assert_status, wss_signature, Keyspace, Receiver, Recorded, Service, WAIT};
use tonic::Code;
use wss::proto::{GetWebhookRequest, RotateWebhookSecretRequest, SignatureScheme};

const OLD: &str = "whsec_the-old-secret-0123456789";
const LONG_OLD: &str = "whsec_the-other-old-secret-0123";

fn overlap(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// The comma-separated values of the request's X-WSS-Signature, each checked against `secrets`
/// in order: returns which secret signed each value.
fn signers(request: &Recorded, secrets: &[&str]) -> Vec<usize> {
    let timestamp = request.header("X-WSS-Timestamp");
    request
        .header("X-WSS-Signature")
        .split(',')
        .map(|value| {
            secrets
                .iter()
                .position(|s| wss_signature(s, timestamp, &request.body) == value.trim())
                .unwrap_or_else(|| panic!("a signature value made with none of the secrets: {value}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_signs_with_both_secrets_for_the_overlap_then_the_new_one() {
    const KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    let ks = Keyspace::new("rotation");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "rotation", &[("WSS_ENCRYPTION_KEY", KEY)]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |w| w.secret = OLD.into()).await;
    let mut webhooks = grpc.webhooks();

    let long_receiver = Receiver::ok();
    let long_webhook = grpc.create_webhook("acme", &long_receiver.url(), |w| w.secret = LONG_OLD.into()).await;

    ks.publish("acme", "order.created", r#"{"n":1}"#);
    let seen = receiver.wait_for_requests(1, "the first event", Recorded::delivered).await;
    assert_eq!(signers(&seen[0], &[OLD]), [0], "before the rotation: the old secret alone");
    long_receiver.wait_for_requests(1, "the first event", Recorded::delivered).await;
    let long_rotated = webhooks
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            webhook_id: long_webhook.webhook_id.clone(),
            overlap: overlap(3600),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let long_new = long_rotated.secret.clone();
    let long_end = long_rotated.previous_secret_expires_at.expect("an overlap end");
    let long_end_ms = long_end.seconds as u64 * 1000 + long_end.nanos as u64 / 1_000_000;

    // Rotate with a 4 s overlap; the new secret is shown once.
    let rotated = webhooks
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            webhook_id: webhook.webhook_id.clone(),
            overlap: overlap(4),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let new = rotated.secret.clone();
    assert!(new.starts_with("whsec_") && new != OLD, "a generated secret: {rotated:?}");
    assert!(rotated.previous_secret_expires_at.is_some());
    let got = webhooks.get_webhook(GetWebhookRequest { webhook_id: webhook.webhook_id.clone() }).await.unwrap().into_inner();
    assert!(got.secret.is_empty(), "GetWebhook never shows a secret");
    assert_eq!(got.previous_secret_expires_at, rotated.previous_secret_expires_at);

    // Both secrets are sealed at rest.
    let json: String = redis::cmd("HGET").arg(format!("{}webhooks", ks.prefix)).arg(&webhook.webhook_id).query(&mut ks.conn()).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(stored["secret"].as_str().unwrap().starts_with("enc:v1:"), "{json}");
    assert!(stored["previous_secret"].as_str().unwrap().starts_with("enc:v1:"), "{json}");
    assert!(!json.contains("the-old-secret") && !json.contains(new.trim_start_matches("whsec_")), "{json}");

    // Which signatures a request must carry follows from its own X-WSS-Timestamp, the time it
    // was signed at, and the overlap's end as RotateWebhookSecret reported it: both (new first)
    // while the timestamp is before the end, the new one's alone from then on. Checked on every
    // request, however slow the machine: a late request is held to the rule for its time.
    let expires = rotated.previous_secret_expires_at.expect("an overlap end");
    let overlap_end_ms = expires.seconds as u64 * 1000 + expires.nanos as u64 / 1_000_000;
    let expected = |request: &Recorded| -> Vec<usize> {
        let signed_at_ms = request.header("X-WSS-Timestamp").parse::<u64>().expect("Unix seconds") * 1000;
        if signed_at_ms < overlap_end_ms {
            vec![0, 1]
        } else {
            vec![0]
        }
    };

    // During the overlap: new first, then old.
    ks.publish("acme", "order.created", r#"{"n":2}"#);
    let seen = receiver.wait_for_requests(2, "the second event", Recorded::delivered).await;
    assert_eq!(
        signers(&seen[1], &[&new, OLD]),
        expected(&seen[1]),
        "signed at {}, overlap until {overlap_end_ms} ms",
        seen[1].header("X-WSS-Timestamp")
    );

    // Over the overlap's end (polled with a deadline: an event at a time until one is signed once).
    let deadline = Instant::now() + WAIT;
    loop {
        let before = receiver.requests().len();
        ks.publish("acme", "order.created", r#"{"n":3}"#);
        let seen = receiver.wait_for_requests(before + 1, "the next event", Recorded::delivered).await;
        let last = seen.last().unwrap();
        let order = signers(last, &[&new, OLD]);
        assert_eq!(order, expected(last), "signed at {}, overlap until {overlap_end_ms} ms", last.header("X-WSS-Timestamp"));
        if order == [0] {
            break;
        }
        assert!(Instant::now() < deadline, "the old signature is still sent long after the overlap");
        tokio::time::sleep(Duration::from_millis(250)).await; // pacing the probe events, not waiting for work
    }
    // A webhook rotated with an hour's overlap is inside it for the whole test, however slow
    // the machine: every one of its requests after the first (made before its rotation)
    // carries both signatures, new first.
    let long_seen =
        long_receiver.wait_for_requests(receiver.requests().len() - 1, "the long-overlap webhook's events", Recorded::delivered).await;
    for request in long_seen.iter().filter(|r| r.delivered()).skip(1) {
        let signed_at_ms = request.header("X-WSS-Timestamp").parse::<u64>().expect("Unix seconds") * 1000;
        assert!(signed_at_ms < long_end_ms);
        assert_eq!(signers(request, &[&long_new, LONG_OLD]), [0, 1], "during the overlap: the new secret's signature, then the old one's");
    }
    let got = webhooks.get_webhook(GetWebhookRequest { webhook_id: webhook.webhook_id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.previous_secret_expires_at, None, "the overlap is over");

    // A supplied secret, switched at once; bad requests name their field.
    assert_status(
        webhooks
            .rotate_webhook_secret(RotateWebhookSecretRequest {
                webhook_id: webhook.webhook_id.clone(),
                secret: "short".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        Some("secret"),
        "a secret shorter than 16 bytes",
    );
    assert_status(
        webhooks
            .rotate_webhook_secret(RotateWebhookSecretRequest {
                webhook_id: webhook.webhook_id.clone(),
                overlap: overlap(8 * 86_400),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        Some("overlap"),
        "an overlap of 8 days",
    );
    assert_status(
        webhooks.rotate_webhook_secret(RotateWebhookSecretRequest { webhook_id: "wh_nonexistent".into(), ..Default::default() }).await,
        Code::NotFound,
        None,
        "an unknown webhook",
    );
    const NEWEST: &str = "whsec_the-newest-secret-0123456789";
    let at_once = webhooks
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            webhook_id: webhook.webhook_id.clone(),
            overlap: overlap(0),
            secret: NEWEST.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((at_once.secret.as_str(), at_once.previous_secret_expires_at), (NEWEST, None));
    let before = receiver.requests().len();
    ks.publish("acme", "order.created", r#"{"n":4}"#);
    let seen = receiver.wait_for_requests(before + 1, "an event after the immediate rotation", Recorded::delivered).await;
    assert_eq!(signers(seen.last().unwrap(), &[NEWEST]), [0]);

    for line in service.lines() {
        for secret in [OLD, new.as_str(), NEWEST, KEY] {
            assert!(!line.contains(secret), "a secret in the log: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_rotation_sends_both_signatures() {
    let ks = Keyspace::new("rotation_standard");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "rotation-standard", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let webhook = grpc.create_webhook("acme", &receiver.url(), |w| w.signature_scheme = SignatureScheme::StandardWebhooks as i32).await;
    let rotated = grpc
        .webhooks()
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            webhook_id: webhook.webhook_id.clone(),
            overlap: overlap(600),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ks.publish("acme", "order.created", r#"{"n":1}"#);
    let seen = receiver.wait_for_requests(1, "the event", Recorded::delivered).await;
    let request = &seen[0];
    let signature = request.header("webhook-signature");
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    let now = std::time::SystemTime::now();
    for secret in [&rotated.secret, &webhook.secret] {
        wss::signature::verify_standard(
            secret,
            request.header("webhook-id"),
            request.header("webhook-timestamp"),
            signature,
            &request.body,
            Duration::from_secs(300),
            now,
        )
        .unwrap_or_else(|e| panic!("a Standard Webhooks receiver with either secret accepts it: {e}"));
    }
    // The new one comes first.
    let first_only = signature.split(' ').next().unwrap();
    assert!(wss::signature::verify_standard(
        &rotated.secret,
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        first_only,
        &request.body,
        Duration::from_secs(300),
        now
    )
    .is_ok());
}
