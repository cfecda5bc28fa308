//! The shard of a tenant (docs/contract.md §8): which of `WSS_STREAM_SHARDS` streams holds its
//! events.
//!
//! One Redis stream is one key, and a key lives on one Redis Cluster node: a single stream caps
//! what a cluster can take at one master's CPU. With N shards the events are spread over N
//! streams by tenant — CRC-32 (zlib's) of the tenant id mod N — so that one tenant's events stay
//! in one stream, in order, while different tenants' spread over the cluster. Producers compute
//! the same function (the clients' `shard_of`, `tests/vectors/shards.json`), so it can never
//! change: a tenant moving shard would see its order broken.
//!
//! Every key that a script or transaction uses together with a shard's stream carries the
//! shard's hash tag `{k}` ([`crate::keys::Keys::shard`]), which puts it in the stream's slot.

/// The shard of `tenant` among `shards` streams: `crc32(tenant's UTF-8 bytes) mod shards`.
/// `shards` must be at least 1 (the configuration refuses 0).
pub fn shard_of(tenant: &str, shards: u32) -> u32 {
    crc32fast::hash(tenant.as_bytes()) % shards.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_zlib_s() {
        // The CRC-32 check value (IEEE, reflected, as zlib computes it).
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32fast::hash(b""), 0);
    }

    /// Every case of the vectors the clients are tested on too.
    #[test]
    fn every_shared_vector_gives_its_shard() {
        let text = include_str!("../tests/vectors/shards.json");
        let vectors: serde_json::Value = serde_json::from_str(text).expect("tests/vectors/shards.json is JSON");
        let cases = vectors["cases"].as_array().expect("the vectors have cases");
        assert!(cases.len() > 20, "the vectors lost their cases");
        for case in cases {
            let name = case["name"].as_str().expect("a case has a name");
            let tenant = case["tenant"].as_str().expect("a case has a tenant");
            let n = u32::try_from(case["n"].as_u64().expect("n is a number")).expect("n fits 32 bits");
            assert_eq!(u64::from(crc32fast::hash(tenant.as_bytes())), case["crc32"].as_u64().expect("crc32"), "{name}: crc32");
            assert_eq!(u64::from(shard_of(tenant, n)), case["shard"].as_u64().expect("shard"), "{name}: shard");
        }
    }

    #[test]
    fn one_shard_is_shard_zero() {
        for tenant in ["acme", "globex", "t-49"] {
            assert_eq!(shard_of(tenant, 1), 0);
        }
    }
}
