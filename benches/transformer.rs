//! The transformer stage's per-event cost, on one core: what `src/pipeline/transformer.rs` does
//! for an event once its webhooks are picked — `created_at`, the conversion of the event for
//! CEL (only when a webhook has an expression), the filter, the transform, and the envelope's
//! serialization (shared by every webhook that sends it).
//!
//! `cargo bench --bench transformer`; criterion prints each case's time per event and its
//! throughput in events/s (`thrpt`). The figures are in docs/performance.md.

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;
use wss::{
    expr::{Envelope, Evaluator, Filter, Outcome, Transform},
    pipeline::event::{envelope, rfc3339_seconds, Event},
};

/// A typical order event: a dozen fields, a nested object, a list of two line items.
const DATA: &str = r#"{"order_id":"A-1001","status":"shipped","customer":{"id":"c-77","tier":"gold","email":"ana@example.com"},"items":[{"sku":"X-1","qty":2,"price":19.99},{"sku":"Y-2","qty":1,"price":5.5}],"total":45.48,"currency":"EUR","carrier":"DHL","tracking":"JD014600003SE"}"#;
const FILTER: &str = r#"event.data.status in ["shipped", "delivered"]"#;
const FILTER_AND_TYPE: &str =
    r#"event.type.startsWith("order.") && event.data.status in ["shipped", "delivered"] && event.data.total > 10"#;
const TRANSFORM: &str = r#"{"order_id": event.data.order_id, "status": event.data.status, "tracking": event.data.tracking}"#;

fn event() -> Event {
    Event {
        stream_id: "1767225600000-0".into(),
        id: "1767225600000-0".into(),
        event_type: "order.status_updated".into(),
        tenant: "acme".into(),
        created_at_ms: 1_767_225_600_000,
        data: RawValue::from_string(DATA.into()).expect("valid JSON"),
        attributes: vec![("region".into(), "eu".into())],
        only_webhook: None,
    }
}

/// One webhook's expressions, each if it has one.
type Webhook<'a> = (Option<&'a Filter>, Option<&'a Transform>);

/// One event through the transformer's steps for `webhooks`; returns the bodies to send, as the
/// stage would hand them on.
fn per_event(evaluator: &Evaluator, event: &Event, webhooks: &[Webhook<'_>]) -> Vec<Arc<[u8]>> {
    let created_at = rfc3339_seconds(event.created_at_ms);
    let view = Envelope {
        id: &event.id,
        event_type: &event.event_type,
        tenant: &event.tenant,
        created_at: &created_at,
        data: event.data.get(),
        attributes: &event.attributes,
    };
    let mut bound = None;
    let mut envelope_body: Option<Arc<[u8]>> = None;
    let mut bodies = Vec::with_capacity(webhooks.len());
    for (filter, transform) in webhooks {
        let outcome = if filter.is_none() && transform.is_none() {
            Outcome::Envelope
        } else {
            let bound = bound.get_or_insert_with(|| evaluator.bind(&view).expect("the event binds"));
            bound.apply(*filter, *transform).expect("the expressions evaluate")
        };
        match outcome {
            Outcome::Skip => {}
            Outcome::Envelope => bodies.push(envelope_body.get_or_insert_with(|| envelope(event).into()).clone()),
            Outcome::Body(body) => bodies.push(body.into()),
        }
    }
    bodies
}

fn transformer(c: &mut Criterion) {
    let event = event();
    let evaluator = Evaluator::new();
    let filter = Filter::compile(FILTER).expect("compiles");
    let filter_and_type = Filter::compile(FILTER_AND_TYPE).expect("compiles");
    let transform = Transform::compile(TRANSFORM).expect("compiles");
    // Ten webhooks of one tenant, each wanting other statuses; the last one with a transform.
    let fan_filters: Vec<Filter> =
        (0..10).map(|i| Filter::compile(&format!(r#"event.data.status in ["shipped", "status-{i}"]"#)).expect("compiles")).collect();
    let mut fan_out: Vec<Webhook<'_>> = fan_filters.iter().map(|f| (Some(f), None)).collect();
    fan_out[9].1 = Some(&transform);

    let cases: [(&str, Vec<Webhook<'_>>); 5] = [
        ("no filter", vec![(None, None)]),
        ("typical filter", vec![(Some(&filter), None)]),
        ("filter on type, data and a number", vec![(Some(&filter_and_type), None)]),
        ("filter + transform", vec![(Some(&filter), Some(&transform))]),
        ("10 webhooks with filters, one with a transform", fan_out),
    ];
    let mut group = c.benchmark_group("transformer per event");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    for (name, webhooks) in &cases {
        assert!(!per_event(&evaluator, &event, webhooks).is_empty(), "{name}: the event is delivered");
        group.bench_function(*name, |b| b.iter(|| per_event(&evaluator, black_box(&event), webhooks)));
    }
    group.finish();

    let mut group = c.benchmark_group("pieces");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("bind (convert the event for CEL)", |b| {
        let created_at = rfc3339_seconds(event.created_at_ms);
        let view = Envelope {
            id: &event.id,
            event_type: &event.event_type,
            tenant: &event.tenant,
            created_at: &created_at,
            data: event.data.get(),
            attributes: &event.attributes,
        };
        b.iter(|| evaluator.bind(black_box(&view)).map(|_| ()))
    });
    group.bench_function("cel::Context::default() (why the root context is built once)", |b| b.iter(cel::Context::default));
    group.bench_function("compile the typical filter (once per webhook change)", |b| b.iter(|| Filter::compile(black_box(FILTER))));
    group.finish();
}

criterion_group!(benches, transformer);
criterion_main!(benches);
