//! Decoding Redis stream replies by hand, so that an entry whose fields were deleted (`XDEL` or
//! trimming while it was pending: Redis answers nil fields) or whose values are not UTF-8 reaches
//! the pipeline as what it is, instead of failing the whole reply.

use redis::Value;

/// One stream entry; `fields` is `None` when Redis returned the id with nil fields.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEntry {
    pub id: String,
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl RawEntry {
    /// Total bytes of field names and values.
    pub fn size(&self) -> usize {
        self.fields.iter().flatten().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// A stream reply that is not shaped as Redis's stream commands answer: what was expected,
/// with the value found (so the caller can tell a proxy's or an old server's reply apart).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeError {
    #[error("unexpected reply shape from Redis: expected a string, got {0:?}")]
    NotAString(Value),
    #[error("unexpected reply shape from Redis: expected an array, got {0:?}")]
    NotAnArray(Value),
    #[error("unexpected reply shape from Redis: entry without id")]
    EntryWithoutId,
    #[error("unexpected reply shape from Redis: entry id is not UTF-8")]
    IdNotUtf8(#[source] std::string::FromUtf8Error),
}

fn bytes(value: Value) -> Result<Vec<u8>, ShapeError> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(ShapeError::NotAString(other)),
    }
}

fn items(value: Value) -> Result<Vec<Value>, ShapeError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Map(pairs) => Ok(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => Err(ShapeError::NotAnArray(other)),
    }
}

/// A stream entry id, `<ms>-<seq>`, as its two numbers; `None` for anything else (signs,
/// spaces, a number past `u64`), which Redis would refuse as an id or a range bound.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let number = |part: &str| part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok()).flatten();
    let (ms, seq) = id.split_once('-')?;
    Some((number(ms)?, number(seq)?))
}

/// Decodes an `XRANGE`/`XREVRANGE` reply (or one stream's part of an `XREADGROUP` reply).
pub fn parse_entries(value: Value) -> Result<Vec<RawEntry>, ShapeError> {
    if value == Value::Nil {
        return Ok(Vec::new());
    }
    items(value)?
        .into_iter()
        .map(|entry| {
            let mut parts = items(entry)?.into_iter();
            let id = parts.next().ok_or(ShapeError::EntryWithoutId)?;
            let id = String::from_utf8(bytes(id)?).map_err(ShapeError::IdNotUtf8)?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(list) => {
                    let flat = items(list)?;
                    let mut pairs = Vec::with_capacity(flat.len() / 2);
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((bytes(k)?, bytes(v)?));
                    }
                    Some(pairs)
                }
            };
            Ok(RawEntry { id, fields })
        })
        .collect()
}

/// Decodes an `XREADGROUP` reply for one stream (nil when BLOCK timed out).
pub fn parse_read_reply(value: Value) -> Result<Vec<RawEntry>, ShapeError> {
    if value == Value::Nil {
        return Ok(Vec::new());
    }
    let mut entries = Vec::new();
    let mut streams = items(value)?.into_iter();
    // RESP2: [[name, entries], ...]; RESP3 map flattened: name, entries, ...
    while let Some(first) = streams.next() {
        match first {
            Value::Array(pair) => {
                let mut pair = pair.into_iter();
                pair.next();
                if let Some(list) = pair.next() {
                    entries.extend(parse_entries(list)?);
                }
            }
            _ => {
                if let Some(list) = streams.next() {
                    entries.extend(parse_entries(list)?);
                }
            }
        }
    }
    Ok(entries)
}

/// The key/value pairs of a RESP2 flat list or a RESP3 map (`XINFO GROUPS`' groups, read by
/// the gauges and the retention).
pub(crate) fn pairs(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Array(items) => items.chunks_exact(2).filter_map(|kv| Some((text(&kv[0])?, &kv[1]))).collect(),
        Value::Map(items) => items.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
        _ => Vec::new(),
    }
}

/// A bulk or simple string's text (not UTF-8: replaced); `None` for any other value.
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Replies written by hand, for the tests of their readers.
#[cfg(test)]
pub(crate) mod replies {
    use redis::Value;

    pub(crate) fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// A RESP2 map: its keys and values in one flat list.
    pub(crate) fn flat(pairs: Vec<(&str, Value)>) -> Value {
        Value::Array(pairs.into_iter().flat_map(|(k, v)| [bulk(k), v]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::replies::bulk;
    use super::*;

    #[test]
    fn ids_are_two_numbers_and_nothing_else() {
        assert_eq!(parse_id("1767225600000-12"), Some((1_767_225_600_000, 12)));
        assert_eq!(parse_id("0-18446744073709551615"), Some((0, u64::MAX)));
        for bad in ["", "1", "1-", "-1", "+1-0", "1-+0", "1-0 ", "1-0-0", "18446744073709551616-0", "(1-0"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn read_replies_keep_deleted_entries_and_binary_values() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("wss:events"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("tenant"), bulk("acme"), bulk("data"), Value::BulkString(vec![0xff])]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].fields.as_ref().unwrap()[1], (b"data".to_vec(), vec![0xff]));
        assert_eq!(entries[0].size(), 6 + 4 + 4 + 1);
        assert_eq!(entries[1].fields, None);
        assert!(parse_read_reply(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn a_misshapen_reply_says_what_was_found() {
        assert_eq!(parse_entries(Value::Int(3)), Err(ShapeError::NotAnArray(Value::Int(3))));
        assert_eq!(parse_entries(Value::Array(vec![Value::Array(vec![])])), Err(ShapeError::EntryWithoutId));
        assert_eq!(parse_entries(Value::Array(vec![Value::Array(vec![Value::Nil])])), Err(ShapeError::NotAString(Value::Nil)));
        let not_utf8 = parse_entries(Value::Array(vec![Value::Array(vec![Value::BulkString(vec![0xff])])])).unwrap_err();
        assert!(matches!(not_utf8, ShapeError::IdNotUtf8(_)), "{not_utf8:?}");
        assert!(std::error::Error::source(&not_utf8).is_some(), "the UTF-8 error is kept as the cause");
    }
}
