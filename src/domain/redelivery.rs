//! Redelivery of dead letters (`DeliveryService/RedeliverDeadLetter`): one by id, or every one
//! matching a filter, oldest first, a bounded number per call.
//!
//! A dead letter goes back through the events stream as a new entry (`crate::deadletter` makes
//! its fields and removes the record in the same atomic step), so it takes the ordinary path:
//! routing, a fresh signature per attempt, attempt count 1, its webhook's current retry policy
//! and the delivery history (under the new entry's delivery id). Nothing here sends anything.
//!
//! Before a dead letter is put back it is checked against the configuration (the routing
//! snapshot, brought up to date first): a record that would only be dead-lettered again — its
//! tenant missing or disabled, its webhook deleted, disabled or moved to another tenant — is
//! left alone and reported, as a `FAILED_PRECONDITION` for one or a skipped entry for many, with
//! what to do about it. Records whose event is not stored any more are reported the same way.

use std::sync::Arc;

use super::{
    routing::{Routing, RoutingHandle},
    store::Store,
    DomainError,
};
use crate::{
    deadletter::{DeadLetter, Reason},
    streams::parse_id,
};

/// Most dead-letter records one bulk call examines, matching or not, so that a rare filter
/// cannot make a call take unbounded time; the call then returns a token to go on.
const SCAN_LIMIT: usize = 20_000;

/// Which dead letters a bulk redelivery takes; every part that is set must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub tenant_id: String,
    pub webhook_id: String,
    pub reason: Option<Reason>,
    /// Written to the dead-letter stream at or after (Unix ms; the record id's time, which the
    /// stream range can use — `dead_lettered_at` is that or a little earlier, when the write
    /// waited for Redis).
    pub after_ms: Option<u64>,
    /// Written before (Unix ms).
    pub before_ms: Option<u64>,
}

impl Filter {
    pub fn matches(&self, record: &DeadLetter) -> bool {
        (self.tenant_id.is_empty() || record.tenant_id == self.tenant_id)
            && (self.webhook_id.is_empty() || record.webhook_id == self.webhook_id)
            && self.reason.is_none_or(|r| r.as_str() == record.reason)
            && self.after_ms.is_none_or(|ms| record_ms(record) >= ms)
            && self.before_ms.is_none_or(|ms| record_ms(record) < ms)
    }

    /// The `XRANGE` bounds that cover the time range (a record's id is its write time), resuming
    /// after `token` when given.
    fn range(&self, token: &str) -> (String, String) {
        let from_time = self.after_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms}-0"));
        // A token from before the time range (the filter changed between calls) starts at the range.
        let token_before_range = self.after_ms.is_some_and(|ms| parse_id(token).is_some_and(|(t, _)| t < ms));
        let start = if token.is_empty() || token_before_range { from_time } else { format!("({token}") };
        let end = match self.before_ms {
            None => "+".to_owned(),
            Some(0) => "0-0".to_owned(),
            Some(ms) => format!("{}-18446744073709551615", ms - 1),
        };
        (start, end)
    }
}

/// When a record was written: its id's time (else, for an id that is not a stream id, its
/// stored time).
fn record_ms(record: &DeadLetter) -> u64 {
    parse_id(&record.id).map_or(record.dead_lettered_at_ms, |(ms, _)| ms)
}

/// One dead letter sent again.
#[derive(Debug, Clone, PartialEq)]
pub struct Redelivered {
    pub dead_letter_id: String,
    pub event_id: String,
    /// The new entry in `<prefix>events`.
    pub stream_entry_id: String,
    /// The only webhook it goes to; empty when routed to every webhook of its tenant that wants it.
    pub webhook_id: String,
}

/// The result of a bulk redelivery.
#[derive(Debug, Default)]
pub struct Report {
    pub redelivered: Vec<Redelivered>,
    /// (dead letter id, why it was left alone).
    pub skipped: Vec<(String, String)>,
    /// Non-empty when more records may match: the last record examined.
    pub next_token: String,
}

/// Why `record` cannot be sent again right now, by the configuration in `routing`; `None` when
/// it can. Pure.
///
/// With its stable reason (`TENANT_NOT_FOUND`, `TENANT_DISABLED`,
/// `WEBHOOK_DISABLED`, `WEBHOOK_MOVED`, `WEBHOOK_NOT_FOUND`: docs/api.md).
pub fn hindrance(routing: &Routing, record: &DeadLetter) -> Option<(&'static str, String)> {
    let tenant = &record.tenant_id;
    let Some(routes) = routing.tenants.get(tenant) else {
        return Some((
            "TENANT_NOT_FOUND",
            format!("tenant {tenant:?} does not exist; create it with TenantService/CreateTenant, then redeliver"),
        ));
    };
    if routes.tenant.disabled {
        return Some((
            "TENANT_DISABLED",
            format!("tenant {tenant:?} is disabled; enable it with TenantService/UpdateTenant, then redeliver"),
        ));
    }
    if record.webhook_id.is_empty() {
        return None;
    }
    let id = &record.webhook_id;
    // The tenant's routes hold its enabled webhooks only: a disabled one is known by its id alone.
    match routing.webhooks.get(id.as_str()) {
        Some(route) if !route.enabled => Some((
            "WEBHOOK_DISABLED",
            format!("webhook {id:?} is disabled; enable it with WebhookService/UpdateWebhook (enabled: true), then redeliver"),
        )),
        Some(_) if !routes.routes.iter().any(|r| *r.id == **id) => {
            Some(("WEBHOOK_MOVED", format!("webhook {id:?} no longer belongs to tenant {tenant:?}")))
        }
        Some(_) => None,
        None => Some(("WEBHOOK_NOT_FOUND", format!("webhook {id:?} no longer exists; nothing would receive the event"))),
    }
}

/// Redelivery against one store and its routing snapshot.
pub struct Redeliverer<'a> {
    pub store: &'a Store,
    pub routing: &'a RoutingHandle,
}

impl Redeliverer<'_> {
    /// The routing snapshot, reloaded first when the configuration moved (a tenant created or a
    /// webhook enabled on another instance just before the call).
    fn fresh_routing(&self) -> Result<Arc<Routing>, DomainError> {
        if self.store.config_version()? != self.routing.current().version {
            self.routing.reload(self.store)?;
        }
        Ok(self.routing.current())
    }

    /// Sends `record` again, unless something stands in the way (`FAILED_PRECONDITION`) or it was
    /// redelivered meanwhile (`NOT_FOUND`).
    pub fn one(&self, record: &DeadLetter) -> Result<Redelivered, DomainError> {
        let routing = self.fresh_routing()?;
        self.send(&routing, record)?.map_err(|(reason, why)| DomainError::Precondition {
            reason,
            message: format!("dead letter {:?} cannot be redelivered: {why}", record.id),
        })
    }

    /// Sends again up to `limit` records matching `filter`, oldest first, after `token`.
    pub fn matching(&self, filter: &Filter, limit: usize, token: &str) -> Result<Report, DomainError> {
        let routing = self.fresh_routing()?;
        let (mut start, end) = filter.range(token);
        let mut report = Report::default();
        let mut scanned = 0;
        let batch = (limit * 2).clamp(64, 1000);
        loop {
            let records = self.store.dead_letters_between(&start, &end, batch)?;
            let exhausted = records.len() < batch;
            for record in records {
                scanned += 1;
                start = format!("({}", record.id);
                if !filter.matches(&record) {
                    continue;
                }
                match self.send(&routing, &record) {
                    Ok(Ok(sent)) => report.redelivered.push(sent),
                    Ok(Err((_, why))) => report.skipped.push((record.id.clone(), why)),
                    // Redelivered by someone else meanwhile: nothing to report.
                    Err(DomainError::NotFound { .. }) => {}
                    Err(err) => return Err(err),
                }
                if report.redelivered.len() == limit {
                    report.next_token = record.id;
                    return Ok(report);
                }
            }
            if exhausted {
                return Ok(report);
            }
            if scanned >= SCAN_LIMIT {
                report.next_token = start[1..].to_owned();
                return Ok(report);
            }
        }
    }

    /// `Ok(Err((reason, why)))`: left alone, and why.
    fn send(&self, routing: &Routing, record: &DeadLetter) -> Result<Result<Redelivered, (&'static str, String)>, DomainError> {
        if let Some(hindered) = hindrance(routing, record) {
            return Ok(Err(hindered));
        }
        let source = if record.raw_fields.is_empty() && !record.stream_entry_id.is_empty() {
            self.store.event_entry(&record.tenant_id, &record.stream_entry_id)?
        } else {
            None
        };
        let fields = match record.redelivery_fields(source) {
            Ok(fields) => fields,
            Err(why) => {
                let reason = match why {
                    crate::deadletter::NotRedeliverable::EventGone => "EVENT_NOT_STORED",
                    crate::deadletter::NotRedeliverable::TenantMismatch { .. } => "EVENT_ALTERED",
                };
                return Ok(Err((reason, why.to_string())));
            }
        };
        let Some(entry_id) = self.store.redeliver_dead_letter(&record.tenant_id, &record.id, &fields)? else {
            return Err(DomainError::NotFound { kind: "dead letter", id: record.id.clone() });
        };
        let event_id = fields.iter().find(|(k, _)| k == b"id").map(|(_, v)| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        log::info!(target: "wss::grpc", tenant = record.tenant_id.as_str(), webhook = record.webhook_id.as_str(), event_id = event_id.as_str(), outcome = "redelivered";
            "dead letter {} ({}) redelivered as stream entry {entry_id}", record.id, record.reason);
        Ok(Ok(Redelivered {
            dead_letter_id: record.id.clone(),
            event_id,
            stream_entry_id: entry_id,
            webhook_id: record.webhook_id.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tenant: &str, webhook: &str, reason: Reason, at_ms: u64) -> DeadLetter {
        DeadLetter {
            id: id.into(),
            tenant_id: tenant.into(),
            webhook_id: webhook.into(),
            reason: reason.as_str().into(),
            dead_lettered_at_ms: at_ms,
            ..Default::default()
        }
    }

    #[test]
    fn filters_match_every_part_that_is_set() {
        let r = record("1000-0", "acme", "wh_1", Reason::MaxAttemptsExhausted, 1000);
        assert!(Filter::default().matches(&r));
        assert!(Filter {
            tenant_id: "acme".into(),
            webhook_id: "wh_1".into(),
            reason: Some(Reason::MaxAttemptsExhausted),
            after_ms: Some(1000),
            before_ms: Some(1001)
        }
        .matches(&r));
        assert!(!Filter { tenant_id: "globex".into(), ..Default::default() }.matches(&r));
        assert!(!Filter { webhook_id: "wh_2".into(), ..Default::default() }.matches(&r));
        assert!(!Filter { reason: Some(Reason::Gone), ..Default::default() }.matches(&r));
        assert!(!Filter { after_ms: Some(1001), ..Default::default() }.matches(&r));
        assert!(!Filter { before_ms: Some(1000), ..Default::default() }.matches(&r), "before is exclusive");
        let late_write = DeadLetter { dead_lettered_at_ms: 990, ..r };
        assert!(
            Filter { after_ms: Some(1000), ..Default::default() }.matches(&late_write),
            "the record's id time decides, as in the range"
        );
    }

    #[test]
    fn ranges_cover_the_times_and_resume_after_the_token() {
        let all = Filter::default();
        assert_eq!(all.range(""), ("-".to_owned(), "+".to_owned()));
        assert_eq!(all.range("5-1"), ("(5-1".to_owned(), "+".to_owned()));
        let timed = Filter { after_ms: Some(10), before_ms: Some(20), ..Default::default() };
        assert_eq!(timed.range(""), ("10-0".to_owned(), "19-18446744073709551615".to_owned()));
        assert_eq!(timed.range("12-3"), ("(12-3".to_owned(), "19-18446744073709551615".to_owned()));
        assert_eq!(timed.range("3-0").0, "10-0", "a token before the range starts at the range");
        assert_eq!(Filter { before_ms: Some(0), ..Default::default() }.range("").1, "0-0");
    }
}
