//! An event's W3C trace context (its `traceparent` and `tracestate` attributes), parsed when the
//! event is read and carried with each of its deliveries; `crate::otel` makes the attempt spans
//! from it, and the sender passes it on. Pure, and apart from `crate::otel` so that the pipeline's
//! messages can hold it without importing the tracer (which imports them).

/// The W3C header (and event attribute) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header (and event attribute) with vendors' trace state, passed on with a valid
/// `traceparent`.
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` passed on (W3C: 512 characters is what every vendor must accept).
const TRACESTATE_MAX: usize = 512;

/// An event's W3C trace context: its `traceparent` attribute, parsed, and its `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTrace {
    /// As the producer wrote it: what the receiver gets when tracing is off.
    pub traceparent: Box<str>,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
    pub tracestate: Option<Box<str>>,
}

impl EventTrace {
    /// The trace context of an event with these attributes (names compared without regard to
    /// case: broker headers arrive lowercased); `None` without a valid `traceparent`.
    pub fn from_attributes(attributes: &[(String, String)]) -> Option<Box<Self>> {
        let find = |name: &str| attributes.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let mut trace = Self::parse(find(TRACEPARENT)?)?;
        trace.tracestate = find(TRACESTATE)
            .filter(|s| !s.is_empty() && s.len() <= TRACESTATE_MAX && s.bytes().all(|b| (0x20..=0x7e).contains(&b)))
            .map(Into::into);
        Some(Box::new(trace))
    }

    /// Parses a `traceparent` value by W3C Trace Context level 1: `vv-<32 hex>-<16 hex>-ff`,
    /// lowercase, version not `ff`, ids not all zeros; a version above `00` may add fields after
    /// a `-`.
    pub fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        if version == 0xff || (version == 0 && bytes.len() != 55) {
            return None;
        }
        if bytes.len() > 55 && (bytes[55] != b'-' || !bytes.iter().all(u8::is_ascii_graphic)) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, byte) in parent_id.iter_mut().enumerate() {
            *byte = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self { traceparent: value.into(), trace_id, parent_id, flags, tracestate: None })
    }
}

/// Two lowercase hex digits (W3C forbids upper case).
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// True for the header names wss sets from the trace context, which a webhook's static headers
/// then cannot add to.
pub fn is_trace_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(TRACEPARENT) || name.eq_ignore_ascii_case(TRACESTATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_parsed_and_kept_as_written() {
        let trace = EventTrace::parse(VALID).unwrap();
        assert_eq!(&*trace.traceparent, VALID);
        assert_eq!(trace.trace_id[0], 0x0a);
        assert_eq!(trace.trace_id[15], 0x9c);
        assert_eq!(trace.parent_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
        assert_eq!(trace.flags, 1);
        // A later version may add fields; it is kept whole.
        let future = format!("cc-{}-what-ever", &VALID[3..55]);
        assert_eq!(&*EventTrace::parse(&future).unwrap().traceparent, future);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let bad = [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "0é-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ];
        for value in bad {
            assert_eq!(EventTrace::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn attributes_give_the_trace_context_whatever_their_case() {
        let attrs = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(EventTrace::from_attributes(&attrs(&[("region", "eu")])), None);
        assert_eq!(EventTrace::from_attributes(&attrs(&[("traceparent", "nonsense"), ("tracestate", "a=b")])), None);
        let trace = EventTrace::from_attributes(&attrs(&[("TraceParent", VALID), ("tracestate", "congo=t61rcWkgMzE")])).unwrap();
        assert_eq!(&*trace.traceparent, VALID);
        assert_eq!(trace.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        let long = "a=".to_owned() + &"b".repeat(TRACESTATE_MAX);
        for dropped in [long.as_str(), "a=b\nc=d", ""] {
            let trace = EventTrace::from_attributes(&attrs(&[("traceparent", VALID), ("tracestate", dropped)])).unwrap();
            assert_eq!(trace.tracestate, None, "{dropped:?}");
        }
    }
}
