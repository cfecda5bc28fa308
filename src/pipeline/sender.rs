//! Sender: a pool of threads, each POSTing one signed delivery at a time through the ureq agents
//! (keep-alive pools in lanes, no redirects, guarded resolver — see `crate::http`; the agent
//! that presents the webhook's client certificate when it has one), then reporting the attempt
//! to the outcome stage. An attempt that gets no answer is classed by its error (`tls` with the
//! reason read from rustls's error types, `timeout`, `connect`, …) and counted in
//! `wss_delivery_attempt_errors_total`.
//!
//! The moment an attempt ends, its sender frees the webhook's in-flight slot (`super::isolation`)
//! and, if the signer parked a delivery of that webhook meanwhile, tells it, so that it can send it. Freeing it here
//! rather than in the outcome stage keeps the per-webhook cap about attempts on the wire: the
//! outcome stage writes to Redis in batches, and a slot held until the batch is written capped
//! one webhook's deliveries at cap ÷ (attempt + Redis write) instead of cap ÷ attempt.
//!
//! Blocking I/O means throughput is threads ÷ receiver latency, so the pool is sized for latency
//! (`WSS_SENDER_THREADS`, default 256: 2,560 deliveries/s to 100 ms receivers), not for cores. The whole attempt — connect, send, response
//! and reading the start of its body — is bounded by the policy's `attempt_timeout`. At most
//! 1 KiB of the response body is kept, and at most 64 KiB is read, so that a receiver that
//! answers endlessly cannot hold a thread or memory.
//!
//! Each attempt is a trace span when tracing is on (`crate::otel`), and carries the event's trace
//! context on to the receiver in `traceparent` (the attempt span's id; tracing off, the event's
//! own value), instead of a webhook's static `traceparent`.

use std::{
    io::{self, Read},
    time::{Duration, UNIX_EPOCH},
};

use crossbeam_channel::Sender;

use super::{
    isolation::{Isolation, Transition},
    messages::{Completion, SignedDelivery, Stopping, Verdict},
    work_queue,
};
use crate::{
    clock::Clock,
    deadletter::{AttemptRecord, ErrorKind},
    domain::routing::Route,
    http::Agents,
    metrics::AttemptErrors,
    otel::{self, AttemptTrace, Tracer},
    retry::parse_retry_after,
};

/// Response bytes kept in the attempt record.
const EXCERPT_BYTES: usize = 1024;
/// Response bytes read at most (to let the connection be reused); beyond, it is dropped.
const DRAIN_BYTES: u64 = 64 * 1024;

/// `freed` names the webhook of an attempt that ended when the signer parked one of its
/// deliveries meanwhile (it has something to release). `slot` is the thread's number in the
/// pool, which picks its lane of the agents' connection pools (`crate::http::Agents::agent`).
#[allow(clippy::too_many_arguments)]
pub fn run(
    clock: &Clock,
    agents: &Agents,
    slot: usize,
    errors: &AttemptErrors,
    isolation: &Isolation,
    tracer: &Tracer,
    input: work_queue::Consumer<SignedDelivery>,
    done: Sender<Completion>,
    freed: Sender<String>,
    stopping: &Stopping,
) {
    // The queue ends when the signer is gone (it stops on shutdown); deliveries still queued
    // then are not attempted: their entries stay pending and are recovered after a restart.
    for signed in &input {
        if stopping.is_set() {
            return;
        }
        let (record, verdict) = attempt(clock, agents, slot, tracer, &signed);
        if record.status == 0 && !record.error_kind.is_empty() {
            errors.count(record.error_kind.as_str());
        }
        let SignedDelivery { delivery, route, .. } = signed;
        let took = Duration::from_millis(record.duration_ms);
        let (transition, release) = isolation.finish_and_release(&delivery.webhook_id, verdict == Verdict::Delivered, took, clock.now());
        // A webhook to be disabled is freed by the outcome stage once it is disabled, so that
        // what waits for its slot is dead-lettered rather than attempted again.
        if release && !matches!(transition, Some(Transition::FailingTooLong { .. })) {
            let _ = freed.send(delivery.webhook_id.to_string());
        }
        if done.send(Completion::Attempted { delivery, route, record, verdict, transition }).is_err() {
            return;
        }
    }
}

fn attempt(clock: &Clock, agents: &Agents, slot: usize, tracer: &Tracer, signed: &SignedDelivery) -> (AttemptRecord, Verdict) {
    // The attempt's span (tracing on) and the trace headers (also when off: the event's own).
    let trace = tracer.attempt(&signed.delivery.event, &signed.delivery.webhook_id, signed.delivery.attempt);
    send_once(clock, agents, slot, &signed.route, &signed.headers, &signed.delivery.body, signed.delivery.attempt, trace)
}

/// One POST of `body` with the signed `headers` to `route`, as every attempt makes it (also used
/// by `WebhookService/SendTestEvent`, outside the pipeline), from sender thread `slot` (its lane
/// of the connection pools), under its `trace`: its record and what it means.
#[allow(clippy::too_many_arguments)]
pub fn send_once(
    clock: &Clock,
    agents: &Agents,
    slot: usize,
    route: &Route,
    headers: &[(&'static str, String)],
    body: &[u8],
    attempt: u32,
    trace: AttemptTrace<'_>,
) -> (AttemptRecord, Verdict) {
    let agent = agents.agent(route.client.as_ref().map(|c| &c.identity), &route.url, slot);
    let timeout = route.policy.attempt_timeout;
    let started_at_ms = clock.now_ms();
    let started = clock.now();
    let mut request = agent.post(&*route.url).config().timeout_global(Some(timeout)).timeout_connect(Some(timeout)).build();
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let traced = match trace.traceparent() {
        Some(traceparent) => {
            request = request.header(otel::TRACEPARENT, traceparent);
            if let Some(tracestate) = trace.tracestate() {
                request = request.header(otel::TRACESTATE, tracestate);
            }
            true
        }
        None => false,
    };
    for (name, value) in &route.headers {
        if traced && otel::is_trace_header(name) {
            continue;
        }
        request = request.header(&**name, &**value);
    }
    let mut record = AttemptRecord { attempt, started_at_ms, ..Default::default() };
    let verdict = match request.send(body) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, UNIX_EPOCH + Duration::from_millis(clock.now_ms())));
            record.status = status;
            record.response_excerpt = read_excerpt(response.body_mut().as_reader());
            let verdict = classify(status, retry_after);
            if verdict != Verdict::Delivered {
                record.error_kind = ErrorKind::HttpStatus;
                let reason = response.status().canonical_reason().unwrap_or("");
                record.error = format!("HTTP {status} {reason}").trim_end().to_owned();
            }
            verdict
        }
        Err(err) => {
            match crate::http::tls_failure(&err) {
                Some(tls) => {
                    record.error_kind = ErrorKind::Tls;
                    record.error = tls.to_string();
                }
                None => {
                    record.error_kind = error_kind(&err);
                    record.error = err.to_string();
                }
            }
            Verdict::Retry { retry_after: None }
        }
    };
    record.duration_ms = clock.elapsed(started).as_millis() as u64;
    trace.end(&record, verdict, route.policy.max_attempts);
    (record, verdict)
}

/// What a status means (docs/contract.md §2): 2xx delivered; 410 stop; 429/503 honour Retry-After;
/// anything else (3xx included — redirects are not followed) is retried.
pub fn classify(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        429 | 503 => Verdict::Retry { retry_after },
        _ => Verdict::Retry { retry_after: None },
    }
}

fn read_excerpt(body: impl Read) -> String {
    let mut limited = body.take(DRAIN_BYTES);
    let mut excerpt = Vec::new();
    let _ = (&mut limited).take(EXCERPT_BYTES as u64).read_to_end(&mut excerpt);
    // Drain the rest only when there may be one: `io::copy` zeroes an 8 KiB buffer first, which
    // was a tenth of a sender's work per delivery for receivers that answer with a short body.
    if excerpt.len() == EXCERPT_BYTES {
        let _ = io::copy(&mut limited, &mut io::sink());
    }
    String::from_utf8_lossy(&excerpt).into_owned()
}

/// A short class for errors where no response arrived and that are not TLS failures (those are
/// found first, from rustls's error types: `crate::http::tls_failure`).
fn error_kind(err: &ureq::Error) -> ErrorKind {
    match err {
        ureq::Error::Timeout(_) => ErrorKind::Timeout,
        ureq::Error::HostNotFound => ErrorKind::Dns,
        ureq::Error::ConnectionFailed => ErrorKind::Connect,
        ureq::Error::Io(e) => match e.kind() {
            io::ErrorKind::PermissionDenied => ErrorKind::RefusedTarget,
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable => ErrorKind::Connect,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            _ => ErrorKind::Io,
        },
        ureq::Error::Protocol(_) | ureq::Error::LargeResponseHeader(..) => ErrorKind::Protocol,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::TlsRequired => ErrorKind::Tls,
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_verdicts() {
        assert_eq!(classify(200, None), Verdict::Delivered);
        assert_eq!(classify(204, None), Verdict::Delivered);
        assert_eq!(classify(410, None), Verdict::Gone);
        assert_eq!(classify(301, None), Verdict::Retry { retry_after: None });
        assert_eq!(classify(500, Some(Duration::from_secs(5))), Verdict::Retry { retry_after: None });
        assert_eq!(classify(429, Some(Duration::from_secs(5))), Verdict::Retry { retry_after: Some(Duration::from_secs(5)) });
        assert_eq!(classify(503, None), Verdict::Retry { retry_after: None });
    }

    #[test]
    fn excerpts_are_capped() {
        let big = vec![b'x'; 200_000];
        assert_eq!(read_excerpt(&big[..]).len(), EXCERPT_BYTES);
        assert_eq!(read_excerpt(&b"ok"[..]), "ok");
    }

    #[test]
    fn a_long_body_is_drained_up_to_the_limit() {
        let mut long = io::Cursor::new(vec![b'x'; 200_000]);
        read_excerpt(&mut long);
        assert_eq!(long.position(), DRAIN_BYTES, "read to the drain limit, so that the connection can be reused");
        let mut exact = io::Cursor::new(vec![b'x'; EXCERPT_BYTES + 10]);
        read_excerpt(&mut exact);
        assert_eq!(exact.position(), EXCERPT_BYTES as u64 + 10);
    }
}
