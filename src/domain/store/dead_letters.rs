//! Reading dead letters (`P deadletters`, a stream of records: see `crate::deadletter`): listed
//! newest first in pages a gRPC reply can carry, one by id, a range, or the record of one delivery.

use super::{connection::Store, records::Page};
use crate::{deadletter::DeadLetter, domain::DomainError, streams::parse_entries};

impl Store {
    /// Dead letters newest first, optionally of one tenant; `token` is the last id of the
    /// previous page. Scans at most 20,000 records per call, so that a rare tenant's page cannot
    /// take unbounded time: a short page with a token means "more may follow".
    ///
    /// A page also stops before [`MAX_DEAD_LETTER_PAGE_BYTES`], so that no page exceeds what a
    /// gRPC client accepts (4 MiB by default), and a record larger than half that is listed with
    /// its body cut (see [`cut_for_listing`]).
    pub fn list_dead_letters(&self, tenant_id: &str, page_size: usize, token: &str) -> Result<Page<DeadLetter>, DomainError> {
        self.list_dead_letters_view(tenant_id, page_size, token, true)
    }

    /// [`Store::list_dead_letters`]; without `full`, the records' bodies and attempts are dropped
    /// as they are read (the BASIC view), so that they neither fill the page nor travel further.
    pub fn list_dead_letters_view(
        &self,
        tenant_id: &str,
        page_size: usize,
        token: &str,
        full: bool,
    ) -> Result<Page<DeadLetter>, DomainError> {
        const SCAN_LIMIT: usize = 20_000;
        self.with_conn(|con, keys| {
            let mut items: Vec<DeadLetter> = Vec::new();
            let mut page_bytes = 0usize;
            let mut cursor = if token.is_empty() { "+".to_owned() } else { format!("({token}") };
            let mut scanned = 0;
            let batch = (page_size * 2).clamp(64, 1000);
            loop {
                let reply: redis::Value = redis::cmd("XREVRANGE")
                    .arg(&keys.dead_letters)
                    .arg(&cursor)
                    .arg("-")
                    .arg("COUNT")
                    .arg(batch)
                    .query(con)
                    .map_err(|e| self.unavailable(e))?;
                let entries = parse_entries(reply).map_err(|e| {
                    self.unavailable(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "XREVRANGE", e.to_string())))
                })?;
                let exhausted = entries.len() < batch;
                for entry in entries {
                    scanned += 1;
                    cursor = format!("({}", entry.id);
                    let mut record = DeadLetter::from_fields(entry.id, entry.fields.unwrap_or_default());
                    if tenant_id.is_empty() || record.tenant_id == tenant_id {
                        if !full {
                            record.body.clear();
                            record.attempts.clear();
                        }
                        cut_for_listing(&mut record);
                        let bytes = listed_bytes(&record);
                        if page_bytes + bytes > MAX_DEAD_LETTER_PAGE_BYTES && !items.is_empty() {
                            let next_token = items.last().map(|r| r.id.clone()).unwrap_or_default();
                            return Ok(Page { items, next_token });
                        }
                        page_bytes += bytes;
                        items.push(record);
                        if items.len() == page_size {
                            let next_token = items.last().map(|r| r.id.clone()).unwrap_or_default();
                            return Ok(Page { items, next_token });
                        }
                    }
                }
                if exhausted {
                    return Ok(Page { items, next_token: String::new() });
                }
                if scanned >= SCAN_LIMIT {
                    return Ok(Page { items, next_token: cursor[1..].to_owned() });
                }
            }
        })
    }

    /// One dead letter by its record id (whole, however large).
    pub fn get_dead_letter(&self, id: &str) -> Result<DeadLetter, DomainError> {
        let mut found = self.dead_letters_between(id, id, 1)?;
        found.pop().ok_or_else(|| DomainError::NotFound { kind: "dead letter", id: id.to_owned() })
    }

    /// Dead letters oldest first, from `start` to `end` (`XRANGE` bounds: ids, `(id` for
    /// "after", `-`, `+`), at most `count`.
    pub fn dead_letters_between(&self, start: &str, end: &str, count: usize) -> Result<Vec<DeadLetter>, DomainError> {
        self.with_conn(|con, keys| {
            let reply: redis::Value = redis::cmd("XRANGE")
                .arg(&keys.dead_letters)
                .arg(start)
                .arg(end)
                .arg("COUNT")
                .arg(count)
                .query(con)
                .map_err(|e| self.unavailable(e))?;
            let entries = parse_entries(reply).map_err(|e| {
                self.unavailable(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "XRANGE", e.to_string())))
            })?;
            Ok(entries.into_iter().map(|e| DeadLetter::from_fields(e.id, e.fields.unwrap_or_default())).collect())
        })
    }

    /// The dead-letter record of delivery (`stream_entry_id`, `webhook_id`), looked for among
    /// the records written from `from_ms` on (at most `scan` of them).
    pub fn find_dead_letter(
        &self,
        stream_entry_id: &str,
        webhook_id: &str,
        from_ms: u64,
        scan: usize,
    ) -> Result<Option<DeadLetter>, DomainError> {
        let mut start = format!("{from_ms}-0");
        let mut scanned = 0;
        loop {
            let batch = self.dead_letters_between(&start, "+", 500)?;
            let exhausted = batch.len() < 500;
            for record in batch {
                scanned += 1;
                start = format!("({}", record.id);
                if record.stream_entry_id == stream_entry_id && record.webhook_id == webhook_id {
                    return Ok(Some(record));
                }
            }
            if exhausted || scanned >= scan {
                return Ok(None);
            }
        }
    }
}

/// Most bytes of dead letters one `ListDeadLetters` page carries (about: the fields a listing
/// shows), well under the 4 MiB a gRPC client accepts by default.
pub const MAX_DEAD_LETTER_PAGE_BYTES: usize = 3 << 20;

/// About how many bytes a listed record takes in a reply.
fn listed_bytes(record: &DeadLetter) -> usize {
    let attempts: usize = record.attempts.iter().map(|a| a.error.len() + a.response_excerpt.len() + a.error_kind.len() + 32).sum();
    256 + record.body.len()
        + record.detail.len()
        + record.tenant_id.len()
        + record.webhook_id.len()
        + record.event_id.len()
        + record.event_type.len()
        + attempts
}

/// Cuts the body (and, were it huge, the detail) of a record larger than half a page, saying so;
/// the stored record keeps everything, and redelivery uses its original fields.
fn cut_for_listing(record: &mut DeadLetter) {
    const KEEP: usize = 64 << 10;
    if listed_bytes(record) <= MAX_DEAD_LETTER_PAGE_BYTES / 2 {
        return;
    }
    for text in [&mut record.body, &mut record.detail] {
        if text.len() > KEEP {
            let total = text.len();
            text.truncate(char_floor(text, KEEP));
            text.push_str(&format!("… [cut for listing: {total} bytes in all]"));
        }
    }
    for attempt in &mut record.attempts {
        let keep = char_floor(&attempt.response_excerpt, 1024);
        attempt.response_excerpt.truncate(keep);
    }
}

/// The largest char boundary of `text` at or before `at`.
fn char_floor(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_too_large_to_list_is_cut_and_says_so() {
        let small = DeadLetter { body: "{}".into(), detail: "d".into(), ..Default::default() };
        let mut same = small.clone();
        cut_for_listing(&mut same);
        assert_eq!(same, small, "a record of ordinary size is listed whole");
        let mut huge = DeadLetter { body: "é".repeat(1 << 20), detail: "x".repeat(10), ..Default::default() };
        cut_for_listing(&mut huge);
        assert!(huge.body.ends_with(&format!("… [cut for listing: {} bytes in all]", 2 << 20)), "{}", &huge.body[huge.body.len() - 60..]);
        assert!(listed_bytes(&huge) < 70 << 10 && huge.detail.len() == 10);
        assert!(listed_bytes(&huge) * 40 < MAX_DEAD_LETTER_PAGE_BYTES * 2, "many cut records still fit a couple of pages");
    }
}
