//! OpenTelemetry traces of delivery attempts, exported over OTLP/gRPC — off unless
//! `WSS_OTLP_ENDPOINT` is set (docs/tracing.md).
//!
//! **One span per attempt**, started by the sender thread just before the request and ended when
//! the attempt is classified, so its start and end are the attempt's own. Its attributes say
//! which delivery it was (tenant, webhook, event id and type, attempt number) and how it went
//! (HTTP status, outcome, error). See [`names`].
//!
//! **Trace context** (W3C Trace Context). An event may carry a `traceparent` attribute (a stream
//! entry field, or a broker's `WSS-Attr-traceparent` header — docs/contract.md §1, §7), and with it a
//! `tracestate`. A valid one makes the attempt's span a child of the producer's span, and the
//! request carries `traceparent: 00-<trace id>-<the attempt span's id>-<flags>`, so that the
//! receiver's work joins the same trace under the attempt. With tracing off, wss has no span of
//! its own: the event's `traceparent` (and `tracestate`) go to the receiver unchanged. An invalid
//! value is ignored (no header, a root span). Either way a webhook's static `traceparent` /
//! `tracestate` headers give way to the event's.
//!
//! **Cost.** Off, an attempt pays one branch (and, when its event has a trace context, one
//! header). On, a span is a few small allocations on the sender thread and one `try_send` into
//! the batch span processor's bounded queue, which its own thread exports in batches through the
//! tonic exporter (its channel runs on the control plane's tokio runtime). The pipeline never
//! waits for the exporter: when the queue is full — the collector slow or away — spans are
//! dropped and counted (`wss_trace_spans_total{outcome="dropped"}`). Export failures are logged
//! once when they start and once when exporting works again, and counted (`outcome="failed"`).

use std::{
    borrow::Cow,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use opentelemetry::{
    trace::{Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _},
    Context, KeyValue,
};
use opentelemetry_otlp::WithTonicConfig as _;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor},
    Resource,
};
use prometheus::IntCounter;

pub use crate::trace_context::{is_trace_header, EventTrace, TRACEPARENT, TRACESTATE};
use crate::{
    deadletter::AttemptRecord,
    pipeline::messages::{EventMeta, Verdict},
};

/// Spans waiting for export, at most; beyond, they are dropped and counted. About 1 KB each.
pub const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;
/// A batch is sent at least this often when spans wait.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for a connection to the collector, and for one export.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the shutdown waits for the last spans to be exported.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Span name and attribute keys.
pub mod names {
    /// Every attempt span's name.
    pub const SPAN: &str = "webhook.attempt";
    pub const TENANT: &str = "wss.tenant";
    pub const WEBHOOK: &str = "wss.webhook";
    pub const EVENT_ID: &str = "wss.event.id";
    pub const EVENT_TYPE: &str = "wss.event.type";
    /// The attempt's number, from 1.
    pub const ATTEMPT: &str = "wss.attempt";
    /// What became of the delivery: `delivered`, `retrying` or `dead_lettered`.
    pub const OUTCOME: &str = "wss.outcome";
    /// The attempt's error message (an HTTP status line, or why no answer came).
    pub const ERROR: &str = "wss.error";
    /// OpenTelemetry semantic conventions (HTTP client spans).
    pub const METHOD: &str = "http.request.method";
    pub const STATUS: &str = "http.response.status_code";
    /// The attempt's error kind (`http_status`, `timeout`, `connect`, `tls`, …), as in the
    /// attempt record and `wss_delivery_attempt_errors_total`.
    pub const ERROR_TYPE: &str = "error.type";
}

/// What `wss_trace_spans_total{outcome}` counts: spans exported, dropped (the queue was full)
/// and failed (the collector refused them or could not be reached). Cloning shares them.
#[derive(Clone)]
pub struct SpanCounters {
    pub exported: IntCounter,
    pub dropped: IntCounter,
    pub failed: IntCounter,
}

/// OTLP export settings (`WSS_OTLP_ENDPOINT`, `WSS_OTLP_SERVICE_NAME`, `WSS_TRACE_SAMPLE_RATIO`).
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// The collector's OTLP/gRPC endpoint, `http://host:4317` or `https://…`.
    pub endpoint: String,
    /// The `service.name` of the spans' resource.
    pub service_name: String,
    /// Share of traces recorded when the event brings no sampling decision (0 to 1).
    pub sample_ratio: f64,
}

// ---------------------------------------------------------------------------------------------
// The event's trace context
// ---------------------------------------------------------------------------------------------

/// The producer's span, as the remote parent of the attempt's.
fn remote_parent(trace: &EventTrace) -> Context {
    let state = trace.tracestate.as_deref().and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
    let flags = TraceFlags::new(trace.flags & TraceFlags::SAMPLED.to_u8());
    let parent = SpanContext::new(TraceId::from_bytes(trace.trace_id), SpanId::from_bytes(trace.parent_id), flags, true, state);
    Context::new().with_remote_span_context(parent)
}

// ---------------------------------------------------------------------------------------------
// Spans of attempts
// ---------------------------------------------------------------------------------------------

/// Makes the attempt spans: cloned into every sender thread. [`Tracer::off`] (the default) makes
/// none.
#[derive(Clone, Default)]
pub struct Tracer {
    sdk: Option<SdkTracer>,
}

impl Tracer {
    pub fn off() -> Self {
        Self { sdk: None }
    }

    pub fn is_on(&self) -> bool {
        self.sdk.is_some()
    }

    /// The trace of an attempt about to be made: its span (tracing on) and the headers to send.
    #[inline]
    pub fn attempt<'a>(&self, event: &'a EventMeta, webhook: &Arc<str>, attempt: u32) -> AttemptTrace<'a> {
        match (&self.sdk, event.trace()) {
            (None, None) => AttemptTrace { span: None, traceparent: None, tracestate: None },
            (None, Some(trace)) => {
                AttemptTrace { span: None, traceparent: Some(Cow::Borrowed(&trace.traceparent)), tracestate: trace.tracestate.as_deref() }
            }
            (Some(sdk), trace) => start(sdk, event, webhook, attempt, trace),
        }
    }
}

fn start<'a>(sdk: &SdkTracer, event: &'a EventMeta, webhook: &Arc<str>, attempt: u32, trace: Option<&'a EventTrace>) -> AttemptTrace<'a> {
    let attributes = vec![
        KeyValue::new(names::TENANT, event.tenant().to_owned()),
        KeyValue::new(names::WEBHOOK, webhook.clone()),
        KeyValue::new(names::EVENT_ID, event.id().to_owned()),
        KeyValue::new(names::EVENT_TYPE, event.event_type().to_owned()),
        KeyValue::new(names::ATTEMPT, i64::from(attempt)),
        KeyValue::new(names::METHOD, "POST"),
    ];
    let builder = sdk.span_builder(names::SPAN).with_kind(SpanKind::Client).with_attributes(attributes);
    let parent = trace.map_or_else(Context::new, remote_parent);
    let span = sdk.build_with_context(builder, &parent);
    let context = span.span_context();
    let traceparent = context
        .is_valid()
        .then(|| Cow::Owned(format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8())));
    AttemptTrace { span: Some(span), traceparent, tracestate: trace.and_then(|t| t.tracestate.as_deref()) }
}

/// One attempt's span (tracing on) and trace headers.
pub struct AttemptTrace<'a> {
    span: Option<opentelemetry_sdk::trace::Span>,
    traceparent: Option<Cow<'a, str>>,
    tracestate: Option<&'a str>,
}

impl AttemptTrace<'_> {
    /// The `traceparent` header to send, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// The `tracestate` header to send, if any (only with a `traceparent`).
    pub fn tracestate(&self) -> Option<&str> {
        self.traceparent.as_ref().and(self.tracestate)
    }

    /// Ends the span with how the attempt went; `max_attempts`: the policy's, to tell a retry
    /// from the last attempt.
    pub fn end(self, record: &AttemptRecord, verdict: Verdict, max_attempts: u32) {
        let Some(mut span) = self.span else { return };
        if !span.is_recording() {
            return;
        }
        if record.status != 0 {
            span.set_attribute(KeyValue::new(names::STATUS, i64::from(record.status)));
        }
        span.set_attribute(KeyValue::new(names::OUTCOME, outcome(verdict, record.attempt, max_attempts)));
        if verdict != Verdict::Delivered {
            span.set_attribute(KeyValue::new(names::ERROR_TYPE, record.error_kind.to_string()));
            span.set_attribute(KeyValue::new(names::ERROR, record.error.clone()));
            span.set_status(Status::error(record.error.clone()));
        }
        span.end();
    }
}

/// What becomes of a delivery after an attempt, in the words of the logs' `outcome` field.
pub fn outcome(verdict: Verdict, attempt: u32, max_attempts: u32) -> &'static str {
    match verdict {
        Verdict::Delivered => "delivered",
        Verdict::Retry { .. } if attempt < max_attempts => "retrying",
        Verdict::Gone | Verdict::Retry { .. } => "dead_lettered",
    }
}

// ---------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------

/// The running exporter; [`Exporting::shutdown`] exports what is left.
pub struct Exporting {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

impl Exporting {
    /// Builds the OTLP exporter on `runtime` (its gRPC channel runs there) and the batch span
    /// processor (its own thread). Nothing connects yet: an unreachable collector shows as export
    /// errors, logged, never as a start-up failure. An `https://` endpoint is verified against
    /// the OS trust store; `OTEL_EXPORTER_OTLP_HEADERS` adds request headers (an API key).
    pub fn start(
        settings: &OtlpSettings,
        instance: &str,
        counters: SpanCounters,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        let _entered = runtime.enter();
        // The channel is made here rather than by the exporter's builder, for a connect timeout:
        // a collector behind a firewall that drops packets would hold each export for the OS's
        // connect timeout (minutes) instead.
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(settings.endpoint.clone())?.connect_timeout(CONNECT_TIMEOUT).timeout(EXPORT_TIMEOUT);
        if settings.endpoint.starts_with("https://") {
            endpoint = endpoint.tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())?;
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_channel(endpoint.connect_lazy()).build()?;
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter = Counting {
            inner: exporter,
            endpoint: settings.endpoint.clone(),
            queued: queued.clone(),
            counters: counters.clone(),
            failing: AtomicBool::new(false),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_max_export_batch_size(BATCH)
            .with_scheduled_delay(EXPORT_EVERY)
            .build();
        let processor = Bounded {
            inner: BatchSpanProcessor::builder(exporter).with_batch_config(batch).build(),
            queued,
            counters,
            warned: AtomicBool::new(false),
        };
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", instance.to_owned()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio))))
            .with_resource(resource)
            .build();
        let sdk = opentelemetry::trace::TracerProvider::tracer_with_scope(
            &provider,
            opentelemetry::InstrumentationScope::builder("wss").with_version(env!("CARGO_PKG_VERSION")).build(),
        );
        Ok(Self { provider, tracer: Tracer { sdk: Some(sdk) } })
    }

    pub fn tracer(&self) -> Tracer {
        self.tracer.clone()
    }

    /// Exports the spans still queued (waiting at most a few seconds) and stops. Call it while
    /// the runtime given to [`Exporting::start`] still runs.
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown_with_timeout(SHUTDOWN_WAIT) {
            log::warn!(target: "wss::otel", "the last trace spans may not all be exported: {err}");
        }
    }
}

/// The batch span processor behind a bound that it keeps exactly: spans queued and not yet
/// through the exporter, at most [`QUEUE`]. It counts what it drops (the processor itself would
/// only log it), and says so once.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    counters: SpanCounters,
    warned: AtomicBool,
}

impl std::fmt::Debug for SpanCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanCounters").finish_non_exhaustive()
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        // The count is released by the exporter once the span went (or failed), so the batch
        // processor's own queue, emptied before the export, never holds more.
        if self.queued.fetch_add(1, Ordering::Relaxed) >= QUEUE {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.counters.dropped.inc();
            if !self.warned.swap(true, Ordering::Relaxed) {
                log::warn!(target: "wss::otel",
                    "{QUEUE} trace spans are waiting for export: new spans are dropped until the collector catches up (counted in wss_trace_spans_total{{outcome=\"dropped\"}}; logged once)");
            }
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it exports and logging a failure once per outage.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    endpoint: String,
    queued: Arc<AtomicUsize>,
    counters: SpanCounters,
    /// The last export failed (its error was logged).
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(spans, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                self.counters.exported.inc_by(spans as u64);
                if self.failing.swap(false, Ordering::Relaxed) {
                    log::info!(target: "wss::otel", "exporting trace spans to {} works again", self.endpoint);
                }
            }
            Err(err) => {
                self.counters.failed.inc_by(spans as u64);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::warn!(target: "wss::otel",
                        "cannot export trace spans to {} (WSS_OTLP_ENDPOINT): {err}; deliveries go on, their spans are lost until it answers (counted in wss_trace_spans_total{{outcome=\"failed\"}}; logged again when it recovers)", self.endpoint);
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn shutdown(&mut self) -> OTelSdkResult {
        self.inner.shutdown()
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it exports.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<parking_lot::Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().extend(batch);
            Ok(())
        }
    }

    /// A valid `traceparent` (the W3C specification's example).
    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn with_tracing_off_the_event_s_headers_pass_unchanged_and_without_them_none() {
        let tracer = Tracer::off();
        let webhook: Arc<str> = "wh_1".into();
        let plain = EventMeta::new("evt-1", "t", "acme");
        let trace = tracer.attempt(&plain, &webhook, 1);
        assert_eq!((trace.traceparent(), trace.tracestate()), (None, None));
        let traced = EventMeta::new("evt-1", "t", "acme")
            .with_trace(EventTrace::from_attributes(&[("traceparent".into(), VALID.into()), ("tracestate".into(), "k=v".into())]));
        let trace = tracer.attempt(&traced, &webhook, 1);
        assert_eq!((trace.traceparent(), trace.tracestate()), (Some(VALID), Some("k=v")));
        trace.end(&AttemptRecord::default(), Verdict::Delivered, 5);
    }

    #[test]
    fn the_exporter_is_made_without_connecting_for_http_and_https_collectors() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let counters = SpanCounters {
            exported: IntCounter::new("e", "e").unwrap(),
            dropped: IntCounter::new("d", "d").unwrap(),
            failed: IntCounter::new("f", "f").unwrap(),
        };
        for endpoint in ["http://127.0.0.1:4317", "https://collector.example:4317"] {
            let settings = OtlpSettings { endpoint: endpoint.into(), service_name: "wss".into(), sample_ratio: 1.0 };
            let exporting = Exporting::start(&settings, "test-1", counters.clone(), runtime.handle()).unwrap();
            assert!(exporting.tracer().is_on(), "{endpoint}");
            exporting.shutdown();
        }
        assert_eq!(counters.exported.get() + counters.failed.get(), 0, "no span, no export");
    }

    #[test]
    fn outcomes_follow_the_retry_decision() {
        let retry = Verdict::Retry { retry_after: None };
        assert_eq!(outcome(Verdict::Delivered, 5, 5), "delivered");
        assert_eq!(outcome(retry, 1, 5), "retrying");
        assert_eq!(outcome(retry, 5, 5), "dead_lettered");
        assert_eq!(outcome(Verdict::Gone, 1, 5), "dead_lettered");
    }

    #[test]
    fn with_tracing_on_the_attempt_span_is_the_event_s_child_and_the_header_names_it() {
        let exporter = Kept::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let tracer = Tracer { sdk: Some(opentelemetry::trace::TracerProvider::tracer(&provider, "test")) };
        let webhook: Arc<str> = "wh_1".into();
        let traced = EventMeta::new("evt-1", "order.created", "acme")
            .with_trace(EventTrace::from_attributes(&[("traceparent".into(), VALID.into())]));
        let trace = tracer.attempt(&traced, &webhook, 2);
        let header = trace.traceparent().unwrap().to_owned();
        assert!(header.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && header.ends_with("-01"), "{header}");
        assert_ne!(&header[36..52], "b7ad6b7169203331", "the attempt's own span id");
        let record = AttemptRecord {
            attempt: 2,
            status: 503,
            error_kind: crate::deadletter::ErrorKind::HttpStatus,
            error: "HTTP 503".into(),
            ..Default::default()
        };
        trace.end(&record, Verdict::Retry { retry_after: None }, 2);
        let spans = exporter.0.lock().clone();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.span_context.span_id().to_string(), &header[36..52]);
        assert_eq!(span.parent_span_id.to_string(), "b7ad6b7169203331");
        let attr = |key: &str| span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string());
        assert_eq!(attr(names::TENANT).as_deref(), Some("acme"));
        assert_eq!(attr(names::WEBHOOK).as_deref(), Some("wh_1"));
        assert_eq!(attr(names::EVENT_ID).as_deref(), Some("evt-1"));
        assert_eq!(attr(names::ATTEMPT).as_deref(), Some("2"));
        assert_eq!(attr(names::STATUS).as_deref(), Some("503"));
        assert_eq!(attr(names::OUTCOME).as_deref(), Some("dead_lettered"));
        assert_eq!(attr(names::ERROR_TYPE).as_deref(), Some("http_status"));

        // Without a traceparent: a root span of its own trace, still named in the header.
        let plain = EventMeta::new("evt-2", "t", "acme");
        let trace = tracer.attempt(&plain, &webhook, 1);
        let header = trace.traceparent().unwrap().to_owned();
        trace.end(&AttemptRecord { attempt: 1, status: 200, ..Default::default() }, Verdict::Delivered, 5);
        let spans = exporter.0.lock().clone();
        let root = spans.iter().find(|s| s.span_context.span_id().to_string() == header[36..52]).unwrap();
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(root.span_context.trace_id().to_string(), header[3..35]);
    }
}
