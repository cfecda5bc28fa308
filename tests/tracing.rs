//! Traces of delivery attempts (docs/tracing.md): wss exports a span per attempt over OTLP/gRPC
//! to an OpenTelemetry collector — here an in-process one, the `TraceService` of the OTLP
//! protocol served by tonic, that keeps every span it gets — and passes the trace context on to
//! receivers in `traceparent`.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use common::{eventually, http_get, wait_until, Keyspace, Receiver, Recorded, Reply, Service, WAIT};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value, AnyValue},
    trace::v1::Span,
};

/// The producer's span: trace `4bf92f3577b34da6a3ce929d0e0e4736`, span `00f067aa0ba902b7`, sampled.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "shop=7f3a,congo=t61rcWkgMzE";

/// A span as the collector received it, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// An attribute's value as text (strings as they are, numbers in decimal).
    fn attr(&self, key: &str) -> Option<String> {
        let value = self.span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
        text(value)
    }

    fn attrs(&self) -> BTreeMap<String, String> {
        self.span.attributes.iter().filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?)?))).collect()
    }
}

fn text(value: &AnyValue) -> Option<String> {
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/gRPC collector on `127.0.0.1:<port>` keeping every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| Received { service: service.clone(), span }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves on a free loopback port until the test's runtime ends.
    fn start() -> (Self, SocketAddr) {
        let collector = Self::default();
        let incoming = tonic::transport::server::TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("binding the collector");
        let addr = incoming.local_addr().expect("the collector's address");
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await.expect("the collector serves");
        });
        (collector, addr)
    }

    /// Waits for the spans of `event_id` until `enough` says they are all there.
    async fn spans_of(&self, event_id: &str, enough: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let spans = self.spans.clone();
        wait_until(WAIT, &format!("the spans of event {event_id} at the collector"), || {
            let mut of: Vec<Received> =
                spans.lock().unwrap().iter().filter(|s| s.attr("wss.event.id").as_deref() == Some(event_id)).cloned().collect();
            of.sort_by_key(|s| s.attr("wss.attempt").and_then(|a| a.parse::<u32>().ok()));
            if enough(&of) {
                Ok(of)
            } else {
                Err(format!("{} so far: {:?}", of.len(), of.iter().map(Received::attrs).collect::<Vec<_>>()))
            }
        })
        .await
    }
}

/// `(trace id, span id, flags)` of a `traceparent` header of version 00.
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    assert_eq!(parts[0], "00", "traceparent {value:?}");
    assert_eq!((parts[1].len(), parts[2].len(), parts[3].len()), (32, 16, 2), "traceparent {value:?}");
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

fn trace_headers(request: &Recorded) -> Vec<&str> {
    request.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("traceparent")).map(|(_, v)| v.as_str()).collect()
}

/// `wss_trace_spans_total{outcome="<outcome>"}` from `/metrics`.
fn spans_counted(metrics: SocketAddr, outcome: &str) -> Result<u64, String> {
    let (_, _, body) = http_get(metrics, "/metrics", None)?;
    let series = format!("wss_trace_spans_total{{outcome=\"{outcome}\"}} ");
    let line = body.lines().find(|l| l.starts_with(&series)).ok_or_else(|| format!("no {series} in /metrics"))?;
    line[series.len()..].trim().parse().map_err(|e| format!("{line}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_is_a_span_in_the_event_s_trace_and_the_receiver_gets_its_traceparent() {
    let (collector, collector_addr) = Collector::start();
    let ks = Keyspace::new("tracing_on");
    // The first request fails, so that the traced event is attempted twice, the second time
    // rebuilt from the durable backlog.
    let receiver = Receiver::start(|n| Reply::status(if n == 0 { 500 } else { 200 }));
    let endpoint = format!("http://{collector_addr}");
    let service =
        Service::start(&ks, "tracing-on", &[("WSS_OTLP_ENDPOINT", endpoint.as_str()), ("WSS_OTLP_SERVICE_NAME", "wss-under-test")]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_policy("quick", 3, 100, 200).await;
    let webhook = grpc
        .create_webhook("acme", &receiver.url(), |r| {
            r.retry_policy_id = "quick".into();
            // Gives way to the event's trace context.
            r.headers.insert("traceparent".into(), "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01".into());
        })
        .await;

    ks.xadd(&[
        ("tenant", "acme"),
        ("type", "order.created"),
        ("data", "{}"),
        ("id", "evt-traced"),
        ("traceparent", TRACEPARENT),
        ("tracestate", TRACESTATE),
    ]);
    let attempts = collector.spans_of("evt-traced", |s| s.len() >= 2).await;
    assert_eq!(attempts.len(), 2, "one span per attempt: {attempts:?}");
    let requests = receiver.wait_for_requests(2, "requests of evt-traced", |r| r.event_id() == "evt-traced").await;
    let requests: Vec<&Recorded> = requests.iter().filter(|r| r.event_id() == "evt-traced").collect();

    for (n, (span, request)) in attempts.iter().zip(&requests).enumerate() {
        let attempt = (n + 1).to_string();
        assert_eq!(span.span.name, "webhook.attempt");
        assert_eq!(span.service, "wss-under-test", "the resource's service.name");
        assert_eq!(span.trace_id(), TRACE_ID, "attempt {attempt} is in the producer's trace");
        assert_eq!(span.parent_id(), PRODUCER_SPAN, "attempt {attempt}'s parent is the producer's span");
        assert_eq!(span.attr("wss.tenant").as_deref(), Some("acme"));
        assert_eq!(span.attr("wss.webhook").as_deref(), Some(webhook.webhook_id.as_str()));
        assert_eq!(span.attr("wss.event.type").as_deref(), Some("order.created"));
        assert_eq!(span.attr("wss.attempt").as_deref(), Some(attempt.as_str()));
        assert_eq!(span.attr("http.request.method").as_deref(), Some("POST"));
        assert!(span.span.end_time_unix_nano >= span.span.start_time_unix_nano && span.span.start_time_unix_nano > 0);

        assert_eq!(request.header("X-WSS-Attempt"), attempt);
        assert_eq!(trace_headers(request), [request.header("traceparent")], "one traceparent: the webhook's static one gave way");
        let (trace_id, span_id, flags) = parse_traceparent(request.header("traceparent"));
        assert_eq!(trace_id, TRACE_ID, "the receiver is in the producer's trace");
        assert_eq!(span_id, span.span_id(), "the receiver's parent is the attempt's span");
        assert_eq!(flags, "01");
        assert_eq!(request.header("tracestate"), TRACESTATE, "tracestate passed on");
    }
    let (failed, delivered) = (&attempts[0], &attempts[1]);
    assert_ne!(failed.span_id(), delivered.span_id());
    assert_eq!(failed.attr("http.response.status_code").as_deref(), Some("500"));
    assert_eq!(failed.attr("wss.outcome").as_deref(), Some("retrying"));
    assert_eq!(failed.attr("error.type").as_deref(), Some("http_status"));
    assert_eq!(failed.attr("wss.error").as_deref(), Some("HTTP 500 Internal Server Error"));
    assert_eq!(delivered.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(delivered.attr("wss.outcome").as_deref(), Some("delivered"));
    assert_eq!(delivered.attr("error.type"), None);

    // Without a traceparent: each attempt is the root of a trace of its own, which the
    // receiver joins.
    ks.xadd(&[("tenant", "acme"), ("type", "order.created"), ("data", "{}"), ("id", "evt-plain")]);
    let spans = collector.spans_of("evt-plain", |s| !s.is_empty()).await;
    let span = &spans[0];
    assert_eq!(span.parent_id(), "", "a root span: {:?}", span.attrs());
    assert_ne!(span.trace_id(), TRACE_ID);
    assert_eq!(span.attr("wss.outcome").as_deref(), Some("delivered"));
    let requests = receiver.wait_for_requests(1, "request of evt-plain", |r| r.event_id() == "evt-plain").await;
    let request = requests.iter().find(|r| r.event_id() == "evt-plain").unwrap();
    let (trace_id, span_id, _) = parse_traceparent(request.header("traceparent"));
    assert_eq!((trace_id, span_id), (span.trace_id(), span.span_id()));
    assert_eq!(request.opt_header("tracestate"), None);

    let metrics = service.wait_for_metrics().await;
    wait_until(WAIT, "3 spans counted as exported", || match spans_counted(metrics, "exported")? {
        n if n >= 3 => Ok(()),
        n => Err(format!("{n} exported")),
    })
    .await;
    assert_eq!(spans_counted(metrics, "dropped"), Ok(0));
    assert_eq!(spans_counted(metrics, "failed"), Ok(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_off_the_event_s_traceparent_reaches_the_receiver_unchanged() {
    let ks = Keyspace::new("tracing_off");
    let receiver = Receiver::ok();
    let service = Service::start(&ks, "tracing-off", &[]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    let static_value = "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01";
    grpc.create_webhook("acme", &receiver.url(), |r| {
        r.headers.insert("traceparent".into(), static_value.into());
    })
    .await;

    ks.xadd(&[
        ("tenant", "acme"),
        ("type", "t"),
        ("data", "{}"),
        ("id", "evt-traced"),
        ("traceparent", TRACEPARENT),
        ("tracestate", TRACESTATE),
    ]);
    ks.xadd(&[("tenant", "acme"), ("type", "t"), ("data", "{}"), ("id", "evt-invalid"), ("traceparent", "00-not-a-trace-01")]);
    ks.xadd(&[("tenant", "acme"), ("type", "t"), ("data", "{}"), ("id", "evt-plain")]);
    let requests = receiver.wait_for_requests(3, "delivered requests", Recorded::delivered).await;
    let of = |id: &str| requests.iter().find(|r| r.event_id() == id).unwrap_or_else(|| panic!("no request of {id}: {requests:?}"));

    let traced = of("evt-traced");
    assert_eq!(trace_headers(traced), [TRACEPARENT], "the event's traceparent, unchanged, instead of the static one");
    assert_eq!(traced.header("tracestate"), TRACESTATE);
    // An invalid traceparent is not passed on; the webhook's static header is then sent as
    // configured, as it is for an event without one.
    for id in ["evt-invalid", "evt-plain"] {
        assert_eq!(trace_headers(of(id)), [static_value], "{id}");
        assert_eq!(of(id).opt_header("tracestate"), None, "{id}");
    }
    let metrics = service.wait_for_metrics().await;
    assert_eq!(spans_counted(metrics, "exported"), Ok(0), "no spans with tracing off");
    assert!(!service.lines().iter().any(|l| l.contains("tracing delivery attempts")), "tracing is off by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_logged_once_and_deliveries_go_on() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let ks = Keyspace::new("tracing_away");
    let receiver = Receiver::ok();
    let endpoint = format!("http://{closed}");
    let mut service = Service::start(&ks, "tracing-away", &[("WSS_OTLP_ENDPOINT", endpoint.as_str())]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;
    let metrics = service.wait_for_metrics().await;

    // Two waves of events, so that exports fail more than once.
    for wave in 0..2u64 {
        for i in 0..5 {
            ks.xadd(&[("tenant", "acme"), ("type", "t"), ("data", "{}"), ("id", &format!("evt-{wave}-{i}")), ("traceparent", TRACEPARENT)]);
        }
        receiver.wait_for_requests(5 * (wave as usize + 1), "delivered requests", Recorded::delivered).await;
        eventually(WAIT, "the wave's spans counted as failed", || async move {
            match spans_counted(metrics, "failed")? {
                n if n >= 5 * (wave + 1) => Ok(()),
                n => Err(format!("{n} failed")),
            }
        })
        .await;
    }
    let failures: Vec<String> = service.lines().into_iter().filter(|l| l.contains("cannot export trace spans")).collect();
    assert_eq!(failures.len(), 1, "an outage is logged once: {failures:#?}");
    assert!(failures[0].contains(&endpoint), "{}", failures[0]);
    assert_eq!(spans_counted(metrics, "exported"), Ok(0));
    // The traceparent still goes on: the attempt's own span id in the producer's trace.
    for request in receiver.requests() {
        let (trace_id, span_id, _) = parse_traceparent(request.header("traceparent"));
        assert_eq!(trace_id, TRACE_ID);
        assert_ne!(span_id, PRODUCER_SPAN);
    }
    // Stopping does not hang on the exporter.
    let status = service.terminate().await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_does_not_hold_deliveries_back() {
    // Connections are accepted by the kernel and never answered: every export waits out its
    // timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let ks = Keyspace::new("tracing_silent");
    let receiver = Receiver::ok();
    let mut service = Service::start(&ks, "tracing-silent", &[("WSS_OTLP_ENDPOINT", endpoint.as_str())]).await;
    let grpc = service.grpc().await;
    grpc.create_tenant("acme").await;
    grpc.create_webhook("acme", &receiver.url(), |_| {}).await;

    for i in 0..50 {
        ks.xadd(&[("tenant", "acme"), ("type", "t"), ("data", "{}"), ("id", &format!("evt-{i}"))]);
    }
    receiver.wait_for_requests(50, "delivered requests", Recorded::delivered).await;
    service.wait_for_log("cannot export trace spans", WAIT).await;
    let status = service.terminate().await;
    assert!(status.success(), "{status}");
    assert!(service.lines().iter().filter(|l| l.contains("cannot export trace spans")).count() == 1);
    drop(silent);
}
