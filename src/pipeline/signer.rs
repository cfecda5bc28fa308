//! Signer: gives every attempt — first try, retry or redelivery — a fresh timestamp and
//! signature, with the webhook's current secret and scheme (SPEC.md §3).
//!
//! It looks the webhook up in the current routing snapshot at signing time, so a retry of a
//! webhook deleted or disabled meanwhile is abandoned (dead-lettered with that reason) rather
//! than sent. Inputs: fresh deliveries from the transformer and due retries from the scheduler.

use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{select, Receiver, Sender};

use super::{Completion, Delivery, EventMeta, SignedDelivery};
use crate::{
    deadletter::Reason,
    domain::routing::{RouteSigner, RoutingHandle},
    signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER},
};

pub fn run(
    routing: &RoutingHandle,
    fresh: Receiver<Delivery>,
    due: Receiver<Delivery>,
    out: Sender<SignedDelivery>,
    done: Sender<Completion>,
    shutdown: Receiver<()>,
) {
    loop {
        let delivery = select! {
            recv(fresh) -> msg => match msg { Ok(d) => d, Err(_) => return },
            recv(due) -> msg => match msg { Ok(d) => d, Err(_) => return },
            recv(shutdown) -> _ => return,
        };
        let sent = match sign(routing, delivery, now_secs()) {
            Ok(signed) => out.send(signed).is_ok(),
            Err(abandoned) => done.send(abandoned).is_ok(),
        };
        if !sent {
            return;
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn sign(routing: &RoutingHandle, delivery: Delivery, now_secs: u64) -> Result<SignedDelivery, Completion> {
    let snapshot = routing.current();
    let Some(route) = snapshot.webhooks.get(&delivery.webhook_id) else {
        let detail = format!("webhook {} was deleted before attempt {}", delivery.webhook_id, delivery.attempt);
        return Err(Completion::Abandoned { delivery, reason: Reason::WebhookDeleted, detail });
    };
    if !route.is_active() {
        let (reason, why) = if route.tenant_disabled {
            (Reason::TenantDisabled, "its tenant was disabled")
        } else {
            (Reason::WebhookDisabled, "it was disabled")
        };
        let detail = format!("webhook {} was not attempted again: {why}", delivery.webhook_id);
        return Err(Completion::Abandoned { delivery, reason, detail });
    }
    let headers = signed_headers(&route.signer, &delivery.event, delivery.attempt, &delivery.body, now_secs);
    Ok(SignedDelivery { route: route.clone(), headers, delivery })
}

/// The headers wss owns for one attempt (SPEC.md §2–3); static headers are added by the sender.
pub fn signed_headers(signer: &RouteSigner, event: &EventMeta, attempt: u32, body: &[u8], now_secs: u64) -> Vec<(&'static str, String)> {
    let timestamp = now_secs.to_string();
    let mut headers = Vec::with_capacity(8);
    headers.push(("Content-Type", "application/json".to_owned()));
    match signer {
        RouteSigner::Wss(key) => {
            headers.push((SIGNATURE_HEADER, key.sign(&timestamp, body)));
            headers.push((TIMESTAMP_HEADER, timestamp));
        }
        RouteSigner::Standard(key) => {
            headers.push(("webhook-signature", key.sign(&event.id, &timestamp, body)));
            headers.push(("webhook-id", event.id.clone()));
            headers.push(("webhook-timestamp", timestamp));
        }
    }
    headers.push(("X-WSS-Event-Id", event.id.clone()));
    headers.push(("X-WSS-Event-Type", event.event_type.clone()));
    headers.push(("X-WSS-Attempt", attempt.to_string()));
    headers
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::signature::{verify_headers, verify_standard, StandardSigner, WssSigner};

    fn meta() -> EventMeta {
        EventMeta { id: "1767225600000-0".into(), event_type: "order.created".into(), tenant: "acme".into() }
    }

    #[test]
    fn wss_headers_verify_with_the_secret() {
        let body = br#"{"a":1}"#;
        let headers = signed_headers(&RouteSigner::Wss(WssSigner::new(b"wss_test_secret")), &meta(), 3, body, 1_767_225_600);
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_610);
        verify_headers(b"wss_test_secret", pairs.iter().copied(), body, Duration::from_secs(300), now).unwrap();
        assert!(verify_headers(b"other_secret_value", pairs.iter().copied(), body, Duration::from_secs(300), now).is_err());
        assert!(pairs.contains(&("X-WSS-Attempt", "3")));
        assert!(pairs.contains(&("X-WSS-Timestamp", "1767225600")));
        assert!(pairs.contains(&("X-WSS-Event-Id", "1767225600000-0")));
    }

    #[test]
    fn standard_webhooks_headers_verify_with_the_secret() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = b"{}";
        let headers = signed_headers(&RouteSigner::Standard(StandardSigner::new(secret).unwrap()), &meta(), 1, body, 1_767_225_600);
        let get = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str()).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        verify_standard(secret, get("webhook-id"), get("webhook-timestamp"), get("webhook-signature"), body, Duration::from_secs(300), now)
            .unwrap();
    }
}
