//! Prometheus metrics: what the pipeline counts, and their text form for `/metrics`
//! (`WSS_METRICS_ADDR`, served by `crate::status`).
//!
//! One [`Metrics`] is made in `main` and shared by every stage. The hot path only touches
//! counters that were resolved here, once: a labelled series is looked up by a hash of its label
//! values, so the labels that a delivery can take (`outcome`, `class`, `reason`) are resolved at
//! start into fields and arrays, and counting is one atomic add — no allocation, no lock.
//! Gauges that describe state rather than events (channel depths, the in-flight window, circuits,
//! the stream's lag) are set by the pipeline's `wss-gauges` thread about once a second, not by
//! the stages themselves.
//!
//! Besides the pipeline's own figures: `wss_build_info` (the version, as a label), and the
//! process collector of the `prometheus` crate (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_threads`, …, read from /proc
//! at each scrape; Linux only).
//!
//! Labels and their cardinality (docs/operating.md, "Metrics and status page"):
//! - `outcome`, `class`, `reason`, `edge`, `kind`: fixed sets, listed below.
//! - `webhook` on `wss_circuit_open` only: one series per webhook that has a circuit state in
//!   this instance (it failed recently, or has attempts out), removed when the webhook is
//!   deleted or its circuit closes. No tenant label anywhere: tenants are unbounded, and per-tenant
//!   figures are on the status page instead.

use prometheus::{
    core::Collector, Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::deadletter::Reason;

/// Buckets of `wss_delivery_attempt_duration_seconds`: from a fast receiver on the same network
/// to the 30 s an attempt may take by default.
const ATTEMPT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Buckets of `wss_event_delivery_latency_seconds`: from a delivery on the first attempt to one
/// that waited out a long retry schedule (4 h, a day).
const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0];

/// Seconds from a stream entry's id (`<ms>-<seq>`: the time Redis appended it) to `now_ms`;
/// `None` for an id that is not of that form (an entry id given explicitly may be anything
/// Redis accepts, but always `<ms>-<seq>`). A clock behind Redis's gives 0, not a negative age.
pub fn entry_age_seconds(stream_id: &str, now_ms: u64) -> Option<f64> {
    let ms: u64 = stream_id.split_once('-')?.0.parse().ok()?;
    Some(now_ms.saturating_sub(ms) as f64 / 1000.0)
}

/// How an attempt ended, for `wss_delivery_attempts_total{class}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptClass {
    /// No response: connect, DNS, timeout, TLS, I/O or protocol error.
    Error,
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
}

impl AttemptClass {
    const ALL: [AttemptClass; 5] = [Self::Error, Self::Status2xx, Self::Status3xx, Self::Status4xx, Self::Status5xx];

    /// The class of an HTTP status (0: no response).
    pub fn of(status: u16) -> Self {
        match status {
            200..=299 => Self::Status2xx,
            300..=399 => Self::Status3xx,
            400..=499 => Self::Status4xx,
            500..=999 => Self::Status5xx,
            _ => Self::Error, // 0 (no response), and 1xx, which ureq never hands back as final
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Status2xx => "2xx",
            Self::Status3xx => "3xx",
            Self::Status4xx => "4xx",
            Self::Status5xx => "5xx",
        }
    }
}

/// Why an attempt got no answer, for `wss_delivery_attempt_errors_total{kind}`: the
/// `error_kind` of its attempt record (`crate::deadletter::AttemptRecord`).
pub const ERROR_KINDS: [&str; 8] = ["connect", "dns", "timeout", "tls", "io", "protocol", "refused_target", "error"];

/// `wss_delivery_attempt_errors_total`, its series resolved; counted by the sender threads.
/// Cloning shares the counters.
#[derive(Clone)]
pub struct AttemptErrors(std::sync::Arc<[IntCounter]>);

impl AttemptErrors {
    /// Counts an attempt that got no answer, by its error kind (an unknown kind counts as `error`).
    pub fn count(&self, kind: &str) {
        let i = ERROR_KINDS.iter().position(|k| *k == kind).unwrap_or(ERROR_KINDS.len() - 1);
        self.0[i].inc();
    }
}

/// The pipeline's channels, for `wss_channel_depth{edge}`.
pub const EDGES: [&str; 5] = ["inbound", "fresh", "due", "signed", "completions"];

/// Every metric wss exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Stream entries read (each entry once per read: a re-read after a restart counts again).
    pub events_read: IntCounter,
    /// Entries acknowledged without a delivery: no webhook of the tenant wants the event.
    pub events_unrouted: IntCounter,
    /// Entries rejected before routing, by reason (bad entries and unknown/disabled tenants),
    /// indexed like [`Reason::ALL`]; `None` for reasons that only deliveries have.
    bad_entries: Vec<Option<IntCounter>>,
    pub delivered: IntCounter,
    pub dead_lettered: IntCounter,
    pub retried: IntCounter,
    /// Every dead-letter record written, by reason (indexed like [`Reason::ALL`]).
    dead_letters: Vec<IntCounter>,
    attempts: Vec<IntCounter>,
    pub attempt_duration: Histogram,
    /// From the event's stream entry (its `XADD`, or the redelivery's) to the 2xx that delivered it.
    event_delivery_latency: Histogram,
    /// Age of the oldest entry read by group `wss` and not acknowledged, by any instance.
    pub oldest_pending_age: Gauge,
    pub redis_outages: IntCounter,
    pub backlog_handed_off: IntCounter,
    pub backlog_taken: IntCounter,
    /// Deliveries in the backlog, of the webhooks sampled (see `pipeline::gauges`).
    pub backlog_deliveries: IntGauge,
    pub backlog_webhooks: IntGauge,
    pub backlog_depth: IntGaugeVec,
    pub backlog_oldest_age: IntGaugeVec,
    pub in_flight: IntGauge,
    pub in_flight_limit: IntGauge,
    pub parked: IntGauge,
    pub stream_lag: IntGauge,
    pub stream_pending: IntGauge,
    /// 1 when Redis answered the last health probe (`crate::health`), else 0.
    pub redis_up: IntGauge,
    pub dead_letter_stream_length: IntGauge,
    /// Entries of `<prefix>events` removed by wss's own trimming (`WSS_STREAM_RETENTION`).
    pub stream_trimmed: IntCounter,
    pub circuit_open: IntGaugeVec,
    channel_depth: Vec<IntGauge>,
    /// Attempts without an answer, by error kind (`tls`, `timeout`, …).
    pub attempt_errors: AttemptErrors,
    /// Spans of attempts exported, dropped or failed (`crate::otel`; all 0 with tracing off).
    pub trace_spans: crate::otel::SpanCounters,
    /// Message-queue sources (`crate::source`), by name: 1 while reachable.
    pub source_up: IntGaugeVec,
    /// Outages of a message-queue source (each counted once, when it starts).
    pub source_outages: IntCounterVec,
    /// A message-queue source's messages not yet handed to wss plus those in hand and not yet
    /// acknowledged (JetStream: `num_pending + num_ack_pending`).
    pub source_pending: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("a valid metric name");
            register(&registry, &c);
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("a valid metric name");
            register(&registry, &g);
            g
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid histogram options");
            register(&registry, &h);
            h
        };
        let counter_vec = |name: &str, help: &str, label: &str, values: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid metric name");
            register(&registry, &vec);
            // Resolved now, so that every series is exported from the start (at 0: a rate over
            // a series that appears later misses its first increment) and counting is one add.
            values.iter().map(|v| vec.with_label_values(&[*v])).collect::<Vec<_>>()
        };

        let deliveries = counter_vec(
            "wss_deliveries_total",
            "Deliveries (one event to one webhook) that ended: delivered, or dead-lettered; and failed attempts that were scheduled for a retry.",
            "outcome",
            &["delivered", "dead_lettered", "retry_scheduled"],
        );
        let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let classes: Vec<&str> = AttemptClass::ALL.iter().map(|c| c.as_str()).collect();
        let attempt_duration = histogram(
            "wss_delivery_attempt_duration_seconds",
            "Duration of delivery attempts: connect, request, response and the start of its body.",
            ATTEMPT_BUCKETS,
        );
        let event_delivery_latency = histogram(
            "wss_event_delivery_latency_seconds",
            "From an event's stream entry (its XADD; for a redelivered dead letter, the redelivery) to the 2xx that delivered it to a webhook, retries included.",
            LATENCY_BUCKETS,
        );
        let oldest_pending_age = Gauge::new(
            "wss_oldest_pending_age_seconds",
            "Age of the oldest entry of <prefix>events read by group wss and not yet acknowledged, by any instance (0 when none): how long the oldest work in progress has been in hand.",
        )
        .expect("a valid metric name");
        register(&registry, &oldest_pending_age);
        let build_info =
            IntGaugeVec::new(Opts::new("wss_build_info", "Always 1; the labels say which wss this is."), &["version", "profile"])
                .expect("a valid metric name");
        register(&registry, &build_info);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), if cfg!(debug_assertions) { "debug" } else { "release" }]).set(1);
        // CPU, memory, file descriptors and threads of this process, read at each scrape (each
        // `Metrics` has a registry of its own, so tests may make several).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("the process collector is registered once");
        let circuit_open = IntGaugeVec::new(
            Opts::new("wss_circuit_open", "1 while the webhook's circuit is open or half-open (a probe is out), 0 while closed; only webhooks with a circuit state in this instance."),
            &["webhook"],
        )
        .expect("a valid metric name");
        register(&registry, &circuit_open);
        let depth =
            IntGaugeVec::new(Opts::new("wss_channel_depth", "Messages waiting in the channel between two pipeline stages."), &["edge"])
                .expect("a valid metric name");
        register(&registry, &depth);
        let per_webhook = |name: &str, help: &str| {
            let vec = IntGaugeVec::new(Opts::new(name, help), &["webhook"]).expect("a valid metric name");
            register(&registry, &vec);
            vec
        };
        let backlog_depth = per_webhook(
            "wss_backlog_depth",
            "Deliveries of the webhook waiting in the durable backlog (cluster-wide; only webhooks with a backlog).",
        );
        let backlog_oldest_age = per_webhook(
            "wss_backlog_oldest_age_seconds",
            "Age of the webhook's oldest delivery in the durable backlog: seconds since it entered it (only webhooks with a backlog).",
        );

        let source_up =
            IntGaugeVec::new(Opts::new("wss_source_up", "1 while the message-queue source answers, 0 during an outage."), &["source"])
                .expect("a valid metric name");
        register(&registry, &source_up);
        let source_outages = IntCounterVec::new(
            Opts::new("wss_source_outages_total", "Outages of the message-queue source (each counted once, when it starts)."),
            &["source"],
        )
        .expect("a valid metric name");
        register(&registry, &source_outages);
        let source_pending = IntGaugeVec::new(
            Opts::new(
                "wss_source_pending",
                "Messages of the message-queue source not yet read by wss plus those read and not yet acknowledged (its lag).",
            ),
            &["source"],
        )
        .expect("a valid metric name");
        register(&registry, &source_pending);

        Self {
            source_up,
            source_outages,
            source_pending,
            events_read: counter("wss_events_read_total", "Stream entries read from <prefix>events (re-reads after a restart or a claim count again)."),
            events_unrouted: counter("wss_events_unrouted_total", "Events acknowledged without a delivery: no webhook of their tenant wants them."),
            bad_entries: {
                let entry_reasons: Vec<&str> = Reason::ALL.iter().filter(|r| r.is_entry_reason()).map(|r| r.as_str()).collect();
                let mut resolved = counter_vec(
                    "wss_bad_entries_total",
                    "Stream entries rejected before routing (dead-lettered and acknowledged), by reason.",
                    "reason",
                    &entry_reasons,
                )
                .into_iter();
                Reason::ALL.iter().map(|r| if r.is_entry_reason() { resolved.next() } else { None }).collect()
            },
            delivered: deliveries[0].clone(),
            dead_lettered: deliveries[1].clone(),
            retried: deliveries[2].clone(),
            dead_letters: counter_vec("wss_dead_letters_total", "Dead-letter records written, by reason.", "reason", &reasons),
            attempts: counter_vec(
                "wss_delivery_attempts_total",
                "Delivery attempts by the class of the receiver's answer (error: no answer).",
                "class",
                &classes,
            ),
            attempt_duration,
            event_delivery_latency,
            oldest_pending_age,
            redis_outages: counter("wss_redis_outages_total", "Times Redis became unreachable (a failed connect after a successful one)."),
            backlog_handed_off: counter(
                "wss_backlog_handed_off_total",
                "Deliveries written into the durable backlog: retries, and deliveries postponed for a full webhook or an open circuit.",
            ),
            backlog_taken: counter("wss_backlog_taken_total", "Due deliveries this instance took from the durable backlog under a lease."),
            backlog_deliveries: gauge("wss_backlog_deliveries", "Deliveries waiting in the durable backlog, all webhooks (cluster-wide; summed over at most 1,000 webhooks)."),
            backlog_webhooks: gauge("wss_backlog_webhooks", "Webhooks with deliveries in the durable backlog (cluster-wide)."),
            backlog_depth,
            backlog_oldest_age,
            in_flight: gauge("wss_in_flight_entries", "Stream entries read and not yet acknowledged (the in-flight window)."),
            in_flight_limit: gauge("wss_in_flight_limit", "Size of the in-flight window (WSS_MAX_IN_FLIGHT)."),
            parked: gauge("wss_parked_deliveries", "Deliveries held by the signer until their webhook has a free slot (WSS_WEBHOOK_CONCURRENCY)."),
            stream_lag: gauge("wss_stream_lag", "Entries of <prefix>events not yet read by group wss (XINFO GROUPS lag; -1 when Redis cannot tell)."),
            stream_pending: gauge("wss_stream_pending", "Entries read by group wss and not yet acknowledged, by all instances (XINFO GROUPS pending)."),
            redis_up: gauge("wss_redis_up", "1 when Redis answered the last health probe (PING, once a second), else 0."),
            dead_letter_stream_length: gauge("wss_dead_letter_stream_length", "Records in <prefix>deadletters (XLEN)."),
            stream_trimmed: counter(
                "wss_stream_trimmed_entries_total",
                "Entries of <prefix>events removed by wss's trimming: acknowledged by every consumer group and older than WSS_STREAM_RETENTION.",
            ),
            circuit_open,
            channel_depth: EDGES.iter().map(|edge| depth.with_label_values(&[*edge])).collect(),
            attempt_errors: AttemptErrors(
                counter_vec(
                    "wss_delivery_attempt_errors_total",
                    "Delivery attempts that got no answer, by error kind (connect, dns, timeout, tls, io, protocol, refused_target, error).",
                    "kind",
                    &ERROR_KINDS,
                )
                .into(),
            ),
            trace_spans: {
                let spans = counter_vec(
                    "wss_trace_spans_total",
                    "Trace spans of delivery attempts (WSS_OTLP_ENDPOINT): exported to the collector; dropped because the export queue was full; failed: the collector refused them or could not be reached.",
                    "outcome",
                    &["exported", "dropped", "failed"],
                );
                crate::otel::SpanCounters { exported: spans[0].clone(), dropped: spans[1].clone(), failed: spans[2].clone() }
            },
            registry,
        }
    }

    /// Counts a dead-letter record.
    pub fn dead_letter(&self, reason: Reason) {
        self.dead_letters[reason as usize].inc();
    }

    /// Dead-letter records this instance wrote since it started, by reason (those rejected
    /// before routing included); reasons with none left out.
    pub fn dead_letter_counts(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL.iter().zip(&self.dead_letters).map(|(r, c)| (r.as_str(), c.get())).filter(|(_, n)| *n > 0).collect()
    }

    /// Counts an entry rejected before routing (its dead letter is counted by [`Self::dead_letter`]).
    pub fn bad_entry(&self, reason: Reason) {
        if let Some(counter) = &self.bad_entries[reason as usize] {
            counter.inc();
        }
    }

    /// Counts an attempt that took `seconds`, answered with `status` (0: no answer).
    pub fn attempt(&self, status: u16, seconds: f64) {
        self.attempts[AttemptClass::of(status) as usize].inc();
        self.attempt_duration.observe(seconds);
    }

    /// Counts an event delivered to a webhook now: the time since its stream entry `stream_id`.
    pub fn event_delivered(&self, stream_id: &str, now_ms: u64) {
        if let Some(seconds) = entry_age_seconds(stream_id, now_ms) {
            self.event_delivery_latency.observe(seconds);
        }
    }

    /// Sets the depth of the channel `EDGES[edge]`.
    pub fn channel_depth(&self, edge: usize, depth: usize) {
        self.channel_depth[edge].set(depth as i64);
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding a registry's own families into a Vec cannot fail: their names were checked
        // at registration, and writes to a Vec do not fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn register(registry: &Registry, collector: &(impl Collector + Clone + 'static)) {
    registry.register(Box::new(collector.clone())).expect("each metric is registered once");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_resolved_series_are_indexed_by_their_enums() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "Reason::ALL is in declaration order");
        }
        for (i, class) in AttemptClass::ALL.iter().enumerate() {
            assert_eq!(*class as usize, i);
        }
        let m = Metrics::new();
        m.dead_letter(Reason::TooLarge);
        m.bad_entry(Reason::TooLarge);
        m.attempt(503, 0.2);
        m.attempt(0, 1.0);
        m.attempt_errors.count("tls");
        m.attempt_errors.count("no such kind");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("wss_dead_letters_total{reason=\"too_large\"} 1\n"), "{text}");
        assert!(text.contains("wss_dead_letters_total{reason=\"gone\"} 0\n"), "{text}");
        assert!(text.contains("wss_bad_entries_total{reason=\"too_large\"} 1\n"), "{text}");
        assert!(!text.contains("wss_bad_entries_total{reason=\"gone\"}"), "only entry reasons: {text}");
        assert!(text.contains("wss_delivery_attempts_total{class=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("wss_delivery_attempts_total{class=\"error\"} 1\n"), "{text}");
        assert!(text.contains("wss_delivery_attempt_errors_total{kind=\"tls\"} 1\n"), "{text}");
        assert!(text.contains("wss_delivery_attempt_errors_total{kind=\"error\"} 1\n"), "{text}");
        assert!(text.contains("wss_delivery_attempt_errors_total{kind=\"timeout\"} 0\n"), "{text}");
        assert!(text.contains("wss_delivery_attempt_duration_seconds_count 2\n"), "{text}");
        assert!(text.contains("# TYPE wss_delivery_attempt_duration_seconds histogram\n"), "{text}");
    }

    #[test]
    fn latency_is_measured_from_the_entry_id_and_build_and_process_figures_are_exported() {
        assert_eq!(entry_age_seconds("1700000000000-3", 1_700_000_002_500), Some(2.5));
        assert_eq!(entry_age_seconds("1700000000000-0", 1_699_999_999_000), Some(0.0), "a clock behind Redis's is not a negative age");
        assert_eq!(entry_age_seconds("not-an-id", 1), None);
        assert_eq!(entry_age_seconds("12345", 1), None);
        let m = Metrics::new();
        m.event_delivered("1700000000000-0", 1_700_000_000_040);
        m.event_delivered("1700000000000-1", 1_700_000_007_200);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("# TYPE wss_event_delivery_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("wss_event_delivery_latency_seconds_bucket{le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("wss_event_delivery_latency_seconds_bucket{le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("wss_event_delivery_latency_seconds_count 2\n"), "{text}");
        assert!(text.contains("wss_oldest_pending_age_seconds 0\n"), "{text}");
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        assert!(text.contains(&format!("wss_build_info{{profile=\"{profile}\",version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))), "{text}");
        for family in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_threads"] {
            assert!(text.contains(&format!("\n{family} ")), "{family} missing: {text}");
        }
    }

    #[test]
    fn statuses_fall_into_classes() {
        assert_eq!(AttemptClass::of(204), AttemptClass::Status2xx);
        assert_eq!(AttemptClass::of(301), AttemptClass::Status3xx);
        assert_eq!(AttemptClass::of(410), AttemptClass::Status4xx);
        assert_eq!(AttemptClass::of(503), AttemptClass::Status5xx);
        assert_eq!(AttemptClass::of(0), AttemptClass::Error);
    }
}
