//! Opaque page tokens (AIP-158), bound to the query they page through.
//!
//! A token is `v1.` + base64url (no padding) of a small JSON object: the rpc, a fingerprint of
//! the query (SHA-256 of the rpc name and every filter that shapes the result, `page_size` and
//! `view` excepted, cut to 8 bytes) and the store's cursor (a last id, `<ms>/<id>`, a stream id).
//! A token presented with another rpc, or with other filters than the page it came from, is
//! `INVALID_ARGUMENT` with reason `INVALID_PAGE_TOKEN`: the caller starts again without one.
//!
//! Tokens are opaque, not secret: nothing in them grants access (every page is scoped to the
//! caller again), so they are not signed.
//!
//! **Compatibility**: a token without the `v1.` prefix is a raw cursor as earlier releases
//! returned it, and is still accepted for one release (it cannot be checked against the query).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{model::invalid, DomainError};

/// What versioned tokens start with.
const PREFIX: &str = "v1.";

/// Longest token accepted (a cursor is at most a few hundred bytes).
const MAX_TOKEN_BYTES: usize = 2048;

#[derive(Serialize, Deserialize)]
struct Token {
    /// The rpc's name (`ListWebhooks`).
    r: String,
    /// The query's fingerprint, hex.
    q: String,
    /// The store's cursor.
    c: String,
}

/// One List query: the rpc and the filters that decide which items come in which order.
#[derive(Debug, Clone)]
pub struct PageQuery {
    rpc: &'static str,
    fingerprint: String,
}

impl PageQuery {
    /// `filters`: (name, value) of every request field that shapes the result, after scoping
    /// (the tenant a tenant token is restricted to included).
    pub fn new(rpc: &'static str, filters: &[(&str, &str)]) -> Self {
        let mut hash = Sha256::new();
        hash.update(rpc.as_bytes());
        for (name, value) in filters {
            hash.update([0]);
            hash.update(name.as_bytes());
            hash.update([1]);
            hash.update(value.as_bytes());
        }
        let digest = hash.finalize();
        let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self { rpc, fingerprint }
    }

    /// The store's cursor in `token` (empty for the first page). Refuses a token of another
    /// query or rpc, and one that is not a token at all.
    pub fn open(&self, token: &str) -> Result<String, DomainError> {
        let Some(body) = token.strip_prefix(PREFIX) else {
            // Empty (the first page) or a raw cursor of an earlier release: the store checks it.
            return Ok(token.to_owned());
        };
        let malformed = || invalid("page_token", "is not a token this service returned; pass next_page_token unchanged");
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed());
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| malformed())?;
        let parsed: Token = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
        if parsed.r != self.rpc {
            return Err(invalid("page_token", format!("was returned by {}, not {}; start again without a page_token", parsed.r, self.rpc)));
        }
        if parsed.q != self.fingerprint {
            return Err(invalid(
                "page_token",
                "was returned for other filters; keep every filter as on the first page, or start again without a page_token",
            ));
        }
        if parsed.c.is_empty() {
            return Err(malformed());
        }
        Ok(parsed.c)
    }

    /// The token of `cursor` for this query; empty (the last page) stays empty.
    pub fn seal(&self, cursor: String) -> String {
        if cursor.is_empty() {
            return cursor;
        }
        let token = Token { r: self.rpc.to_owned(), q: self.fingerprint.clone(), c: cursor };
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).expect("a token always serializes")))
    }
}

/// Most bytes of items one List response carries: the message limit ([`super::plane::MAX_MESSAGE_BYTES`],
/// also what a gRPC client accepts by default) less room for the token and framing.
pub const MAX_PAGE_BYTES: usize = super::plane::MAX_MESSAGE_BYTES - (64 << 10);

/// Converts a page of store items into wire items, stopping before their encoded size passes
/// `budget`: the page is then shorter, and the cursor leads on from its last item. `next`: the
/// store's cursor after the whole page. Answers RESOURCE_EXHAUSTED when even one item does not
/// fit (the store cuts records larger than half a page, so that does not happen).
pub fn fit<D, P: prost::Message>(
    items: Vec<D>,
    next: String,
    budget: usize,
    to_proto: impl Fn(D) -> P,
    cursor_of: impl Fn(&D) -> String,
) -> Result<(Vec<P>, String), tonic::Status> {
    let mut out = Vec::with_capacity(items.len());
    let mut bytes = 0;
    let mut last = String::new();
    for item in items {
        let cursor = cursor_of(&item);
        let message = to_proto(item);
        let len = message.encoded_len();
        // The repeated field's tag (at most 2 bytes for the field numbers used) and length.
        let len = len + prost::length_delimiter_len(len) + 2;
        if bytes + len > budget {
            if out.is_empty() {
                return Err(super::errors::status(
                    tonic::Code::ResourceExhausted,
                    "RESPONSE_TOO_LARGE",
                    format!("one record is {len} bytes, more than a response may carry ({budget}); list with view RECORD_VIEW_BASIC"),
                ));
            }
            return Ok((out, last));
        }
        bytes += len;
        out.push(message);
        last = cursor;
    }
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_opaque() {
        let q = PageQuery::new("ListWebhooks", &[("tenant_id", "acme")]);
        let token = q.seal("wh_01".into());
        assert!(token.starts_with("v1.") && !token.contains("wh_01"), "{token}");
        assert_eq!(q.open(&token).unwrap(), "wh_01");
        assert_eq!(q.seal(String::new()), "");
        assert_eq!(q.open("").unwrap(), "");
    }

    #[test]
    fn tokens_of_another_query_or_rpc_are_refused() {
        let acme = PageQuery::new("ListWebhooks", &[("tenant_id", "acme")]);
        let token = acme.seal("wh_01".into());
        let globex = PageQuery::new("ListWebhooks", &[("tenant_id", "globex")]);
        assert!(matches!(globex.open(&token), Err(DomainError::Invalid { field: "page_token", .. })));
        let tenants = PageQuery::new("ListTenants", &[]);
        let err = tenants.open(&token).unwrap_err();
        assert!(err.to_string().contains("ListWebhooks"), "{err}");
        // The same values under other names are another query.
        let a = PageQuery::new("ListDeliveries", &[("tenant_id", "x"), ("webhook_id", "")]);
        let b = PageQuery::new("ListDeliveries", &[("tenant_id", ""), ("webhook_id", "x")]);
        assert!(b.open(&a.seal("1/2".into())).is_err());
        for bad in ["v1.", "v1.!!!", "v1.e30", &format!("v1.{}", "A".repeat(3000))] {
            assert!(acme.open(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages_stop_by_size_and_lead_on_from_their_last_item() {
        let items: Vec<String> = (0..10).map(|i| format!("{i}{}", "x".repeat(99))).collect();
        let to_proto = |s: String| crate::proto::GetTenantRequest { tenant_id: s };
        let cursor = |s: &String| s[..1].to_owned();
        let (all, next) = fit(items.clone(), "end".into(), 10_000, to_proto, cursor).unwrap();
        assert_eq!((all.len(), next.as_str()), (10, "end"));
        // Each item is 100 bytes of text, 105 encoded with its tags and lengths.
        let (some, next) = fit(items.clone(), "end".into(), 350, to_proto, cursor).unwrap();
        assert_eq!((some.len(), next.as_str()), (3, "2"));
        let total: usize = some.iter().map(|m| prost::Message::encoded_len(m) + 3).sum();
        assert!(total <= 350);
        let too_big = fit(items, String::new(), 50, to_proto, cursor).unwrap_err();
        assert_eq!(too_big.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn raw_tokens_of_the_previous_release_pass_through() {
        let q = PageQuery::new("ListTenants", &[]);
        assert_eq!(q.open("acme").unwrap(), "acme");
    }
}
