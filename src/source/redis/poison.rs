//! Poison entries: a stream entry whose processing crashes the instance (or hangs it until it is
//! killed) stays pending, and would be read again at every restart and by every instance that
//! claims it — one entry could crash-loop the whole service. Redis counts how often each pending
//! entry was delivered (`XPENDING`), so an entry re-read from this consumer's own pending list or
//! claimed with `XAUTOCLAIM` [`MAX_READS`] times or more is not processed again: it is
//! dead-lettered with reason `poison` and acknowledged, its fields kept for inspection and
//! `RedeliverDeadLetter`.
//!
//! Entries in flight have their count reset to one whenever their lease is renewed
//! (`super::leases`), so reconnects and restarts during an entry's long retry schedule do not
//! count against it: only reads not followed by a renewal (a crash soon after) add up.
//!
//! An entry whose processing panics without killing the process is dead-lettered `poison` at
//! once by the transformer (the panic is caught around each event).
//!
//! Also here: oversized entries are never pulled whole into this process. The reader and the
//! claimer read through [`READ_SCRIPT`] and [`CLAIM_SCRIPT`], which run `XREADGROUP` /
//! `XAUTOCLAIM` inside Redis and replace the fields of every entry larger than
//! `WSS_MAX_EVENT_BYTES` by a stub ([`OVERSIZED_MARK`], the size, and the first bytes of its
//! first fields) before the reply leaves Redis. A read therefore costs at most its batch size
//! times `WSS_MAX_EVENT_BYTES` here, whatever producers append; the `too_large` record keeps the
//! size and an excerpt ([`excerpt`]), not the entry.

use std::collections::HashMap;

use crate::redis_conn::Conn;
use redis::{RedisError, Value};

use super::GROUP;
use crate::pipeline::event::Rejection;
use crate::{deadletter::Reason, streams::RawEntry};

/// Reads of one pending entry, without its lease being renewed, after which it is poison.
pub const MAX_READS: u64 = 5;

/// First field name of an oversized entry's stub (a NUL byte: no producer's field by accident).
pub const OVERSIZED_MARK: &[u8] = b"\0wss:oversized";

/// Lua: replaces the fields of oversized entries in `entries` (an `XREADGROUP`/`XAUTOCLAIM`
/// entry list) by a stub: the mark, the size, then up to 16 fields with the first 256 bytes of
/// each value.
const STUB_LUA: &str = r#"
local function stub_oversized(entries, max)
  for _, e in ipairs(entries) do
    local fields = e[2]
    if fields then
      local size = 0
      for j = 1, #fields do size = size + #fields[j] end
      if size > max then
        local stub = {'\0wss:oversized', tostring(size)}
        for j = 1, math.min(#fields, 32), 2 do
          stub[#stub + 1] = string.sub(fields[j], 1, 64)
          stub[#stub + 1] = string.sub(fields[j + 1] or '', 1, 256)
        end
        e[2] = stub
      end
    end
  end
  return entries
end
"#;

/// `XREADGROUP GROUP <ARGV[1]> <ARGV[2]> COUNT <ARGV[3]> STREAMS <KEYS[1]> <ARGV[4]>` (never
/// blocking: scripts cannot), oversized entries stubbed (ARGV[5]: the limit). Returns the
/// entries, or an empty list.
pub fn read_script() -> redis::Script {
    redis::Script::new(&format!(
        "{STUB_LUA}
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], ARGV[4])
if not reply then return {{}} end
return stub_oversized(reply[1][2], tonumber(ARGV[5]))"
    ))
}

/// `XAUTOCLAIM <KEYS[1]> <ARGV[1]> <ARGV[2]> <ARGV[3]> <ARGV[4]> COUNT <ARGV[5]>`, oversized
/// entries stubbed (ARGV[6]: the limit). Returns `{next start, entries}`.
pub fn claim_script() -> redis::Script {
    redis::Script::new(&format!(
        "{STUB_LUA}
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
return {{reply[1], stub_oversized(reply[2], tonumber(ARGV[6]))}}"
    ))
}

/// A stream entry's fields, names and values as bytes.
type Fields = [(Vec<u8>, Vec<u8>)];

/// The size of an entry whose fields the scripts replaced by a stub, and its stubbed fields.
pub fn oversized(fields: &Fields) -> Option<(u64, &Fields)> {
    let (mark, size) = fields.first()?;
    if mark != OVERSIZED_MARK {
        return None;
    }
    let size = std::str::from_utf8(size).ok()?.parse().ok()?;
    Some((size, &fields[1..]))
}

/// Most bytes of each field value kept in a `too_large` record's excerpt.
const EXCERPT_VALUE_BYTES: usize = 256;
/// Most fields named in the excerpt.
const EXCERPT_FIELDS: usize = 16;

/// How many times each of `ids` was delivered (`XPENDING <stream> wss <id> <id> 1`, pipelined);
/// an id no longer pending is left out.
pub fn delivery_counts(con: &mut Conn, stream: &str, ids: &[&str]) -> Result<HashMap<String, u64>, RedisError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("XPENDING").arg(stream).arg(GROUP).arg(*id).arg(*id).arg(1);
    }
    let replies: Vec<Value> = pipe.query(con)?;
    let mut counts = HashMap::with_capacity(ids.len());
    for reply in replies {
        let Value::Array(rows) = reply else { continue };
        for row in rows {
            let Value::Array(parts) = row else { continue };
            let id = match parts.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            if let Some(Value::Int(count)) = parts.get(3) {
                counts.insert(id, u64::try_from(*count).unwrap_or(0));
            }
        }
    }
    Ok(counts)
}

/// The rejection of an entry read `reads` times without being finished.
pub fn poison_rejection(entry: &RawEntry, reads: u64) -> Rejection {
    let lossy = |name: &str| -> String {
        entry
            .fields
            .iter()
            .flatten()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).chars().take(256).collect())
            .unwrap_or_default()
    };
    Rejection {
        reason: Reason::Poison,
        detail: format!(
            "the entry was read {reads} times without being finished (at most {MAX_READS}): processing it crashed or hung an instance each time; it is set aside so that it cannot stop delivery (look at the instances' logs at the time, then RedeliverDeadLetter once fixed)"
        ),
        tenant: lossy("tenant"),
        event_type: lossy("type"),
        event_id: lossy("id"),
    }
}

/// What a `too_large` record says of the entry instead of keeping it: each field's name and
/// size, and the first bytes of its value (bounded: [`EXCERPT_FIELDS`] × [`EXCERPT_VALUE_BYTES`]).
pub fn excerpt(fields: &[(Vec<u8>, Vec<u8>)]) -> String {
    let mut out = String::from("excerpt:");
    for (name, value) in fields.iter().take(EXCERPT_FIELDS) {
        let name: String = String::from_utf8_lossy(name).chars().take(64).collect();
        let shown = String::from_utf8_lossy(&value[..value.len().min(EXCERPT_VALUE_BYTES)]).into_owned();
        let more = if value.len() > EXCERPT_VALUE_BYTES { "…" } else { "" };
        out.push_str(&format!(" {name} ({} bytes) = {shown:?}{more};", value.len()));
    }
    if fields.len() > EXCERPT_FIELDS {
        out.push_str(&format!(" and {} more fields", fields.len() - EXCERPT_FIELDS));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_excerpt_is_bounded_whatever_the_entry() {
        let huge: Vec<(Vec<u8>, Vec<u8>)> = (0..100).map(|i| (format!("f{i}").repeat(100).into_bytes(), vec![b'x'; 10 << 20])).collect();
        let text = excerpt(&huge);
        assert!(text.len() < EXCERPT_FIELDS * (EXCERPT_VALUE_BYTES + 128) + 64, "{}", text.len());
        assert!(text.contains(&format!("({} bytes)", 10 << 20)) && text.ends_with("and 84 more fields"), "{text}");
        assert_eq!(excerpt(&[(b"type".to_vec(), b"t".to_vec())]), r#"excerpt: type (1 bytes) = "t";"#);
    }

    #[test]
    fn only_the_scripts_stub_reads_as_oversized() {
        let stub = vec![(OVERSIZED_MARK.to_vec(), b"10485760".to_vec()), (b"tenant".to_vec(), b"acme".to_vec())];
        let (size, rest) = oversized(&stub).unwrap();
        assert_eq!((size, rest.len()), (10_485_760, 1));
        assert!(oversized(&[(b"wss:oversized".to_vec(), b"1".to_vec())]).is_none());
        assert!(oversized(&[(OVERSIZED_MARK.to_vec(), b"many".to_vec())]).is_none());
        assert!(oversized(&[]).is_none());
        assert!(STUB_LUA.contains("\\0wss:oversized") && OVERSIZED_MARK.starts_with(b"\0"), "the script writes the mark Rust reads");
    }

    #[test]
    fn a_poison_rejection_says_what_could_be_read() {
        let entry =
            RawEntry { id: "1-0".into(), fields: Some(vec![(b"tenant".to_vec(), b"acme".to_vec()), (b"type".to_vec(), b"t".to_vec())]) };
        let r = poison_rejection(&entry, 6);
        assert_eq!((r.reason, r.tenant.as_str(), r.event_type.as_str(), r.event_id.as_str()), (Reason::Poison, "acme", "t", ""));
        assert!(r.detail.starts_with("the entry was read 6 times"), "{}", r.detail);
    }
}
