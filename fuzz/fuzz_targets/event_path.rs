//! The whole event path, as the transformer runs it: stream-entry fields → `parse_entry` → a
//! generated filter and transform compiled as at registration → bound to the event → applied →
//! the request body. Whatever the input: no panic, no stack overflow, no unbounded work (the
//! compile limits and the evaluation budget of `wss::expr`), and a body that is JSON.
//!
//! The input is split at NUL bytes: the first part is the filter, the second the transform (each
//! empty for none), the third the entry's `data`, the rest more field names and values, pairwise
//! (attributes, reserved fields, or a second `tenant` that breaks the entry). The entry always
//! has `tenant` and `type`, so that most inputs reach the expressions; `parse_entry` on arbitrary
//! fields is the `parse_entry` target's job.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wss::{
    expr::{Envelope, Evaluator, Filter, Outcome, Transform, EVAL_STACK_BYTES},
    pipeline::event::{envelope, parse_entry, rfc3339_seconds},
    streams::RawEntry,
};

fn run(data: Vec<u8>) {
    let mut parts = data.split(|b| *b == 0);
    let filter_source = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let transform_source = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let data = parts.next().unwrap_or(b"{}");
    let mut fields = vec![(b"tenant".to_vec(), b"acme".to_vec()), (b"type".to_vec(), b"order.created".to_vec()), (b"data".to_vec(), data.to_vec())];
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        fields.push((name.to_vec(), value.to_vec()));
    }
    let entry = RawEntry { id: "1767225600000-0".into(), fields: Some(fields) };
    let Ok(event) = parse_entry(&entry, 64 << 10) else { return };
    let filter = if filter_source.is_empty() { None } else { Filter::compile(&filter_source).ok() };
    let transform = if transform_source.is_empty() { None } else { Transform::compile(&transform_source).ok() };
    let created_at = rfc3339_seconds(event.created_at_ms);
    let view = Envelope {
        id: &event.id,
        event_type: &event.event_type,
        tenant: &event.tenant,
        created_at: &created_at,
        data: event.data.get(),
        attributes: &event.attributes,
    };
    let evaluator = Evaluator::new();
    let Ok(bound) = evaluator.bind(&view) else { return };
    let body = match bound.apply(filter.as_ref(), transform.as_ref()) {
        Ok(Outcome::Skip) | Err(_) => return,
        Ok(Outcome::Envelope) => envelope(&event),
        Ok(Outcome::Body(body)) => body,
    };
    let parsed = serde_json::from_slice::<Box<serde_json::value::RawValue>>(&body);
    assert!(parsed.is_ok(), "a body is JSON: {parsed:?}");
}

fuzz_target!(|data: &[u8]| {
    // On a thread with the transformer's stack, as in the service.
    let data = data.to_vec();
    let worker = std::thread::Builder::new().stack_size(EVAL_STACK_BYTES).spawn(move || run(data)).expect("a thread");
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
});
