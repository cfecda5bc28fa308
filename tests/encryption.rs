//! Webhook secrets at rest (issue 5): with `WSS_ENCRYPTION_KEY` set, every secret in Redis is
//! sealed (XChaCha20-Poly1305, `enc:v1:<key id>:…`), secrets stored in clear before the key was
//! configured are sealed at start, deliveries are signed with the real secret, and a service
//! without the key — or with another key — refuses to start rather than send unsigned or
//! wrongly-signed requests. Neither the key nor a secret ever reaches the log.

mod common;

use common::{wss_signature, Keyspace, Receiver, Recorded, Service, WAIT};

const KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
const OTHER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const CLEAR: &str = "whsec_stored-in-clear-first-0123456789";
const SEALED: &str = "whsec_sealed-from-the-start-0123456789";

/// The stored JSON of a webhook, straight from Redis.
fn stored(ks: &Keyspace, webhook_id: &str) -> serde_json::Value {
    let json: String = redis::cmd("HGET").arg(format!("{}webhooks", ks.prefix)).arg(webhook_id).query(&mut ks.conn()).unwrap();
    serde_json::from_str(&json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_the_key_is_required() {
    let ks = Keyspace::new("encryption");
    let receiver = Receiver::ok();

    // Before a key: stored in clear.
    let mut before = Service::start(&ks, "before-key", &[]).await;
    let grpc = before.grpc().await;
    grpc.create_tenant("acme").await;
    let first = grpc.create_webhook("acme", &receiver.url(), |w| w.secret = CLEAR.into()).await;
    assert_eq!(stored(&ks, &first.webhook_id)["secret"], CLEAR);
    before.wait_for_log("secrets are stored in Redis in clear", WAIT).await;
    assert!(before.terminate().await.success());

    // With the key: the clear secret is sealed at start, new ones are sealed when written.
    let mut keyed = Service::start(&ks, "with-key", &[("WSS_ENCRYPTION_KEY", KEY)]).await;
    keyed.wait_for_log("sealed 1 webhook secret", WAIT).await;
    let grpc = keyed.grpc().await;
    let second = grpc.create_webhook("acme", &receiver.url(), |w| w.secret = SEALED.into()).await;
    for (webhook, secret) in [(&first, CLEAR), (&second, SEALED)] {
        let json = stored(&ks, &webhook.webhook_id);
        let value = json["secret"].as_str().unwrap();
        assert!(value.starts_with("enc:v1:"), "{} is sealed: {json}", webhook.webhook_id);
        assert!(!json.to_string().contains(secret.trim_start_matches("whsec_")), "no trace of the secret: {json}");
    }
    // Deliveries are signed with the real secrets.
    let event = ks.publish("acme", "order.created", r#"{"n":1}"#);
    let requests = receiver.wait_for_requests(2, "the event at both webhooks", Recorded::delivered).await;
    let secrets = [CLEAR, SEALED];
    for request in &requests {
        assert_eq!(request.event_id(), event);
        let signature = request.header("X-WSS-Signature");
        let ok = secrets.iter().any(|s| wss_signature(s, request.header("X-WSS-Timestamp"), &request.body) == signature);
        assert!(ok, "request #{} is signed with one of the webhooks' secrets", request.index);
    }
    // A sealed secret moved onto another webhook does not open (the seal is bound to its id).
    let mut swapped = stored(&ks, &second.webhook_id);
    swapped["secret"] = stored(&ks, &first.webhook_id)["secret"].clone();
    let lines = keyed.lines();
    assert!(keyed.terminate().await.success());
    for line in &lines {
        for secret in [KEY, CLEAR, SEALED] {
            assert!(!line.contains(secret), "the log shows a secret: {line}");
        }
    }

    // Without the key, or with another one: wss refuses to start, saying what to do.
    for (label, env) in [("no-key", vec![]), ("other-key", vec![("WSS_ENCRYPTION_KEY", OTHER_KEY)])] {
        let mut env_all = Service::env(&ks, label);
        env_all.extend(env.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        let mut service = Service::spawn(label, env_all);
        let line = service.wait_for_log("the stored secret of webhook", WAIT).await;
        assert!(line.contains(&first.webhook_id) || line.contains(&second.webhook_id), "the refusal names the webhook: {line}");
        assert!(line.contains("WSS_ENCRYPTION_KEY"), "the refusal says what to do: {line}");
        let status = common::wait_until(WAIT, "wss to exit", || service.try_wait().ok_or_else(|| "running".to_owned())).await;
        assert!(!status.success(), "{label}: {status:?}");
        for line in service.lines() {
            for secret in [KEY, OTHER_KEY, CLEAR, SEALED] {
                assert!(!line.contains(secret), "the log shows a secret: {line}");
            }
        }
    }

    // Tampering is detected: a sealed secret copied onto another webhook.
    redis::cmd("HSET")
        .arg(format!("{}webhooks", ks.prefix))
        .arg(&second.webhook_id)
        .arg(swapped.to_string())
        .query::<()>(&mut ks.conn())
        .unwrap();
    let mut env = Service::env(&ks, "tampered");
    env.push(("WSS_ENCRYPTION_KEY".into(), KEY.into()));
    let mut service = Service::spawn("tampered", env);
    let line = service.wait_for_log("does not open with the configured key", WAIT).await;
    assert!(line.contains(&second.webhook_id), "{line}");
    let status = common::wait_until(WAIT, "wss to exit", || service.try_wait().ok_or_else(|| "running".to_owned())).await;
    assert!(!status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_is_refused_before_anything_starts() {
    let ks = Keyspace::new("encryption_bad_key");
    let mut env = Service::env(&ks, "bad-key");
    env.push(("WSS_ENCRYPTION_KEY".into(), "dG9vLXNob3J0".into()));
    let mut service = Service::spawn("bad-key", env);
    let line = service.wait_for_log("WSS_ENCRYPTION_KEY (environment): the encryption key is not a valid key", WAIT).await;
    assert!(line.contains("openssl rand -base64 32") && !line.contains("dG9vLXNob3J0"), "{line}");
    let status = common::wait_until(WAIT, "wss to exit", || service.try_wait().ok_or_else(|| "running".to_owned())).await;
    assert!(!status.success());
}
