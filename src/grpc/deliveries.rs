//! `wss.v1.DeliveryService`: what happened to events. ListDeliveries and GetDelivery read the
//! delivery history (`crate::history`); ListDeadLetters pages through
//! `<prefix>deadletters` newest first, optionally of one tenant. The tenant filter need not name
//! an existing tenant: entries rejected as `unknown_tenant`, and those of deleted tenants, must stay
//! listable.
//!
//! RedeliverDeadLetter validates the request and leaves the work to
//! [`crate::domain::redelivery`]: one dead letter by id, or a filter with a per-call limit and a
//! token to go on.
//!
//! ResendDelivery and ReplayEvents check the request and leave the work to
//! [`crate::domain::resend`]; ReplayEvents runs on a thread with the evaluators' stack, since it
//! evaluates webhooks' filters.
//!
//! A tenant token sees only its own tenant: its lists are restricted to it (an empty `tenant_id`
//! means its own, another tenant's is `PERMISSION_DENIED`), and GetDelivery of another tenant's
//! delivery, RedeliverDeadLetter of another tenant's dead letter, ResendDelivery of another
//! tenant's delivery and ReplayEvents of another tenant (or to its webhook) are
//! `PERMISSION_DENIED`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use prost_types::Timestamp;

use super::{
    auth::Principal,
    convert::{attempt_to_proto, dead_letter_to_proto, optional_id, page_size, reason_from_proto, required_ref, timestamp},
    paging::{fit, PageQuery, MAX_PAGE_BYTES},
    plane::{run_evaluating, ControlPlane},
};
use crate::{
    deadletter::Reason,
    domain::{
        model::{invalid, validate_event_types, TypePattern},
        redelivery::{self, Redeliverer},
        resend::{self, Resender},
        DomainError,
    },
    history::{DeliveryRecord, Query, Status as HistoryStatus},
    proto::{self, delivery_service_server::DeliveryService, redeliver_dead_letter_request::Target, DeliveryStatus},
};

pub(super) struct DeliveryApi {
    plane: Arc<ControlPlane>,
}

impl DeliveryApi {
    pub(super) fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }
}

/// A dead-letter page token is the stream id of the previous page's last record
/// (`<ms>-<seq>`); anything else would reach Redis as a malformed range.
fn check_stream_token(token: &str) -> Result<(), DomainError> {
    if token.is_empty() || crate::streams::parse_id(token).is_some() {
        return Ok(());
    }
    Err(invalid("page_token", "is not a token this service returned; pass next_page_token unchanged"))
}

fn status_from_proto(value: i32) -> Result<Option<HistoryStatus>, DomainError> {
    match DeliveryStatus::try_from(value) {
        Ok(DeliveryStatus::Unspecified) => Ok(None),
        Ok(DeliveryStatus::Retrying) => Ok(Some(HistoryStatus::Retrying)),
        Ok(DeliveryStatus::Delivered) => Ok(Some(HistoryStatus::Delivered)),
        Ok(DeliveryStatus::DeadLettered) => Ok(Some(HistoryStatus::DeadLettered)),
        Err(_) => Err(invalid("status", format!("{value} is not a DeliveryStatus"))),
    }
}

fn status_to_proto(status: HistoryStatus) -> DeliveryStatus {
    match status {
        HistoryStatus::Retrying => DeliveryStatus::Retrying,
        HistoryStatus::Delivered => DeliveryStatus::Delivered,
        HistoryStatus::DeadLettered => DeliveryStatus::DeadLettered,
    }
}

fn ms_from_proto(field: &'static str, value: Option<&Timestamp>) -> Result<Option<u64>, DomainError> {
    match value {
        None => Ok(None),
        Some(t) if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) => {
            Err(invalid(field, "must be a time after 1970-01-01T00:00:00Z"))
        }
        Some(t) => Ok(Some(t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000)),
    }
}

fn query_from_proto(req: &proto::ListDeliveriesRequest) -> Result<Query, DomainError> {
    optional_id("tenant_id", &req.tenant_id)?;
    if !req.webhook_id.is_empty() {
        required_ref("webhook_id", &req.webhook_id)?;
    }
    if !req.event_id.is_empty() {
        required_ref("event_id", &req.event_id)?;
    }
    Ok(Query {
        tenant_id: req.tenant_id.clone(),
        webhook_id: req.webhook_id.clone(),
        event_id: req.event_id.clone(),
        status: status_from_proto(req.status)?,
        updated_after_ms: ms_from_proto("updated_after", req.updated_after.as_ref())?,
        updated_before_ms: ms_from_proto("updated_before", req.updated_before.as_ref())?,
    })
}

/// A bulk redelivery's filter, checked; the tenant is still to be scoped to the caller.
fn filter_from_proto(filter: &proto::DeadLetterFilter) -> Result<redelivery::Filter, DomainError> {
    optional_id("filter.tenant_id", &filter.tenant_id)?;
    if !filter.webhook_id.is_empty() {
        required_ref("filter.webhook_id", &filter.webhook_id)?;
    }
    let reason = match filter.reason.as_str() {
        "" => None,
        text => Some(Reason::parse(text).ok_or_else(|| {
            let known: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
            invalid("filter.reason", format!("{text:?} is not a dead-letter reason; one of: {}", known.join(", ")))
        })?),
    };
    let reason = match (reason, reason_from_proto("filter.reason_code", filter.reason_code)?) {
        (Some(text), Some(code)) if text != code => {
            return Err(invalid(
                "filter.reason_code",
                format!("says {:?} where filter.reason says {:?}; set one of them", code.as_str(), text.as_str()),
            ))
        }
        (text, code) => text.or(code),
    };
    let after_ms = ms_from_proto("filter.dead_lettered_after", filter.dead_lettered_after.as_ref())?;
    let before_ms = ms_from_proto("filter.dead_lettered_before", filter.dead_lettered_before.as_ref())?;
    if let (Some(after), Some(before)) = (after_ms, before_ms) {
        if before <= after {
            return Err(invalid("filter.dead_lettered_before", "must be later than filter.dead_lettered_after"));
        }
    }
    Ok(redelivery::Filter { tenant_id: filter.tenant_id.clone(), webhook_id: filter.webhook_id.clone(), reason, after_ms, before_ms })
}

fn redelivered_to_proto(r: redelivery::Redelivered) -> proto::Redelivered {
    proto::Redelivered {
        dead_letter_id: r.dead_letter_id,
        event_id: r.event_id,
        stream_entry_id: r.stream_entry_id,
        webhook_id: r.webhook_id,
    }
}

fn report_to_proto(report: redelivery::Report) -> proto::RedeliverDeadLetterResponse {
    proto::RedeliverDeadLetterResponse {
        redelivered_count: report.redelivered.len() as u32,
        redelivered: report.redelivered.into_iter().map(redelivered_to_proto).collect(),
        skipped: report.skipped.into_iter().map(|(dead_letter_id, reason)| proto::SkippedDeadLetter { dead_letter_id, reason }).collect(),
        next_page_token: report.next_token,
    }
}

/// The longest period one replay may cover.
const MAX_REPLAY_PERIOD_MS: u64 = 31 * 24 * 3600 * 1000;

/// A replay request, checked; the tenant is still to be scoped to the caller.
fn replay_from_proto(req: &proto::ReplayEventsRequest) -> Result<resend::Replay, DomainError> {
    optional_id("tenant_id", &req.tenant_id)?;
    if !req.webhook_id.is_empty() {
        required_ref("webhook_id", &req.webhook_id)?;
    }
    validate_event_types(&req.event_types)?;
    let since_ms = ms_from_proto("since", req.since.as_ref())?.ok_or_else(|| invalid("since", "is required: the start of the period"))?;
    let until_ms = ms_from_proto("until", req.until.as_ref())?.ok_or_else(|| invalid("until", "is required: the end of the period"))?;
    if until_ms <= since_ms {
        return Err(invalid("until", "must be later than since"));
    }
    if until_ms - since_ms > MAX_REPLAY_PERIOD_MS {
        return Err(invalid("until", "at most 31 days after since; replay a longer period in several calls"));
    }
    Ok(resend::Replay {
        tenant_id: req.tenant_id.clone(),
        webhook_id: req.webhook_id.clone(),
        event_types: req.event_types.iter().map(|p| TypePattern::new(p)).collect(),
        since_ms,
        until_ms,
    })
}

fn scheduled_to_proto(s: resend::Scheduled) -> proto::ReplayedDelivery {
    proto::ReplayedDelivery {
        delivery_id: s.delivery_id,
        event_id: s.event_id,
        webhook_id: s.webhook_id,
        original_stream_entry_id: s.original_stream_entry_id,
    }
}

/// Whether a List call asked for bodies and attempts (UNSPECIFIED: yes, as before views existed).
fn full_view(value: i32) -> Result<bool, DomainError> {
    match proto::RecordView::try_from(value) {
        Ok(proto::RecordView::Unspecified | proto::RecordView::Full) => Ok(true),
        Ok(proto::RecordView::Basic) => Ok(false),
        Err(_) => Err(invalid("view", format!("{value} is not a RecordView"))),
    }
}

/// The fields of a history query that decide which deliveries a page holds.
fn delivery_filters(query: &Query) -> [(&'static str, String); 6] {
    let ms = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    [
        ("tenant_id", query.tenant_id.clone()),
        ("webhook_id", query.webhook_id.clone()),
        ("event_id", query.event_id.clone()),
        ("status", query.status.map(|s| format!("{s:?}")).unwrap_or_default()),
        ("updated_after", ms(query.updated_after_ms)),
        ("updated_before", ms(query.updated_before_ms)),
    ]
}

/// The fields of a bulk redelivery's filter, for its page token.
fn dead_letter_filters(filter: &redelivery::Filter) -> [(&'static str, String); 5] {
    let ms = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    [
        ("tenant_id", filter.tenant_id.clone()),
        ("webhook_id", filter.webhook_id.clone()),
        ("reason", filter.reason.map(|r| r.as_str().to_owned()).unwrap_or_default()),
        ("after", ms(filter.after_ms)),
        ("before", ms(filter.before_ms)),
    ]
}

fn borrowed<'a, const N: usize>(filters: &'a [(&'static str, String); N]) -> Vec<(&'static str, &'a str)> {
    filters.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

pub fn delivery_to_proto(record: DeliveryRecord) -> proto::Delivery {
    proto::Delivery {
        delivery_id: record.id,
        tenant_id: record.tenant_id,
        webhook_id: record.webhook_id,
        event_id: record.event_id,
        event_type: record.event_type,
        stream_entry_id: record.stream_entry_id,
        status: status_to_proto(record.status).into(),
        created_at: timestamp(record.created_at_ms),
        updated_at: timestamp(record.updated_at_ms),
        next_attempt_at: timestamp(record.next_attempt_at_ms),
        attempts: record.attempts.into_iter().map(attempt_to_proto).collect(),
        dead_letter_reason_code: super::convert::reason_to_proto(&record.dead_letter_reason).into(),
        dead_letter_reason: record.dead_letter_reason,
    }
}

#[tonic::async_trait]
impl DeliveryService for DeliveryApi {
    async fn list_deliveries(
        &self,
        request: Request<proto::ListDeliveriesRequest>,
    ) -> Result<Response<proto::ListDeliveriesResponse>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        let mut query = query_from_proto(&req)?;
        query.tenant_id = principal.scope("tenant_id", &query.tenant_id)?;
        let size = page_size(req.page_size);
        let full = full_view(req.view)?;
        let paging = PageQuery::new("ListDeliveries", &borrowed(&delivery_filters(&query)));
        let cursor = paging.open(&req.page_token)?;
        let page = self.plane.read(move |store| store.list_deliveries(&query, size, &cursor)).await?;
        let to_proto = |mut record: DeliveryRecord| {
            if !full {
                record.attempts.clear();
            }
            delivery_to_proto(record)
        };
        let (deliveries, next) = fit(page.items, page.next_token, MAX_PAGE_BYTES, to_proto, crate::history::encode_token)?;
        Ok(Response::new(proto::ListDeliveriesResponse { deliveries, next_page_token: paging.seal(next) }))
    }

    async fn get_delivery(&self, request: Request<proto::GetDeliveryRequest>) -> Result<Response<proto::Delivery>, Status> {
        let principal = Principal::of(&request)?;
        let id = request.into_inner().delivery_id;
        required_ref("delivery_id", &id)?;
        let record = self.plane.read(move |store| store.get_delivery(&id)).await?;
        principal.require_tenant("delivery", &record.id, &record.tenant_id)?;
        Ok(Response::new(delivery_to_proto(record)))
    }

    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        optional_id("tenant_id", &req.tenant_id)?;
        let tenant_id = principal.scope("tenant_id", &req.tenant_id)?;
        let size = page_size(req.page_size);
        let full = full_view(req.view)?;
        let paging = PageQuery::new("ListDeadLetters", &[("tenant_id", &tenant_id)]);
        let cursor = paging.open(&req.page_token)?;
        check_stream_token(&cursor)?;
        let page = self.plane.read(move |store| store.list_dead_letters_view(&tenant_id, size, &cursor, full)).await?;
        let (dead_letters, next) = fit(page.items, page.next_token, MAX_PAGE_BYTES, dead_letter_to_proto, |r| r.id.clone())?;
        Ok(Response::new(proto::ListDeadLettersResponse { dead_letters, next_page_token: paging.seal(next) }))
    }

    async fn redeliver_dead_letter(
        &self,
        request: Request<proto::RedeliverDeadLetterRequest>,
    ) -> Result<Response<proto::RedeliverDeadLetterResponse>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        let plane = self.plane.clone();
        // `plane.read`, although it writes: redelivery touches the streams only, never the
        // configuration, so there is no routing snapshot to reload afterwards.
        match req.target {
            None => Err(invalid("dead_letter_id", "give a dead_letter_id, or a filter for every dead letter matching it").into()),
            Some(Target::DeadLetterId(id)) => {
                if id.is_empty() {
                    return Err(invalid("dead_letter_id", "is required").into());
                }
                check_stream_token(&id)
                    .map_err(|_| invalid("dead_letter_id", "is not a dead-letter id (`<ms>-<seq>`, as ListDeadLetters shows)"))?;
                if !req.page_token.is_empty() {
                    return Err(invalid("page_token", "goes with a filter, not with one dead_letter_id").into());
                }
                if req.limit != 0 {
                    return Err(invalid("limit", "goes with a filter, not with one dead_letter_id (which redelivers that one only)").into());
                }
                let sent = self
                    .plane
                    .read(move |store| {
                        let record = store.get_dead_letter(&id)?;
                        principal.require_tenant("dead letter", &record.id, &record.tenant_id)?;
                        Redeliverer { store, routing: &plane.routing }.one(&record)
                    })
                    .await?;
                Ok(Response::new(report_to_proto(redelivery::Report { redelivered: vec![sent], ..Default::default() })))
            }
            Some(Target::Filter(filter)) => {
                let mut filter = filter_from_proto(&filter)?;
                filter.tenant_id = principal.scope("filter.tenant_id", &filter.tenant_id)?;
                let paging = PageQuery::new("RedeliverDeadLetter", &borrowed(&dead_letter_filters(&filter)));
                let cursor = paging.open(&req.page_token)?;
                check_stream_token(&cursor)?;
                let limit = page_size(req.limit);
                let mut report =
                    self.plane.read(move |store| Redeliverer { store, routing: &plane.routing }.matching(&filter, limit, &cursor)).await?;
                report.next_token = paging.seal(report.next_token);
                Ok(Response::new(report_to_proto(report)))
            }
        }
    }

    async fn resend_delivery(
        &self,
        request: Request<proto::ResendDeliveryRequest>,
    ) -> Result<Response<proto::ResendDeliveryResponse>, Status> {
        let principal = Principal::of(&request)?;
        let id = request.into_inner().delivery_id;
        required_ref("delivery_id", &id)?;
        let plane = self.plane.clone();
        // `plane.read`, although it writes: the event goes to the stream, the configuration is
        // untouched.
        let (sent, source) = self
            .plane
            .read(move |store| {
                let record = store.get_delivery(&id)?;
                principal.require_tenant("delivery", &record.id, &record.tenant_id)?;
                Resender { store, routing: &plane.routing, max_event_bytes: plane.max_event_bytes }.resend(&record)
            })
            .await?;
        Ok(Response::new(proto::ResendDeliveryResponse {
            delivery_id: sent.delivery_id,
            event_id: sent.event_id,
            stream_entry_id: sent.stream_entry_id,
            webhook_id: sent.webhook_id,
            event_source: source.as_str().to_owned(),
        }))
    }

    async fn replay_events(&self, request: Request<proto::ReplayEventsRequest>) -> Result<Response<proto::ReplayEventsResponse>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        let mut replay = replay_from_proto(&req)?;
        replay.tenant_id = principal.scope("tenant_id", &replay.tenant_id)?;
        if replay.tenant_id.is_empty() {
            return Err(invalid("tenant_id", "is required: the tenant whose events are replayed").into());
        }
        let (since, until, types) = (replay.since_ms.to_string(), replay.until_ms.to_string(), req.event_types.join("\n"));
        let paging = PageQuery::new(
            "ReplayEvents",
            &[
                ("tenant_id", &replay.tenant_id),
                ("webhook_id", &replay.webhook_id),
                ("event_types", &types),
                ("since", &since),
                ("until", &until),
            ],
        );
        let cursor = paging.open(&req.page_token)?;
        check_stream_token(&cursor)?;
        if !replay.webhook_id.is_empty() {
            let webhook_id = replay.webhook_id.clone();
            let webhook = self.plane.read(move |store| store.get_webhook(&webhook_id)).await?;
            principal.require_tenant("webhook", &webhook.id, &webhook.tenant_id)?;
            if webhook.tenant_id != replay.tenant_id {
                return Err(invalid("webhook_id", format!("is a webhook of another tenant than {:?}", replay.tenant_id)).into());
            }
        }
        let limit = page_size(req.limit);
        let plane = self.plane.clone();
        let report = run_evaluating(move |evaluator| {
            Resender { store: &plane.store, routing: &plane.routing, max_event_bytes: plane.max_event_bytes }
                .replay(&replay, evaluator, limit, &cursor)
        })
        .await?;
        Ok(Response::new(proto::ReplayEventsResponse {
            deliveries_scheduled: report.scheduled.len() as u32,
            events_examined: report.examined as u32,
            events_replayed: report.replayed as u32,
            next_page_token: paging.seal(report.next_token),
            deliveries: report.scheduled.into_iter().map(scheduled_to_proto).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_requests_become_queries() {
        let req = proto::ListDeliveriesRequest {
            tenant_id: "acme".into(),
            status: DeliveryStatus::Delivered.into(),
            updated_after: Some(Timestamp { seconds: 2, nanos: 5_000_000 }),
            ..Default::default()
        };
        let q = query_from_proto(&req).unwrap();
        assert_eq!(q.status, Some(HistoryStatus::Delivered));
        assert_eq!(q.updated_after_ms, Some(2005));
        assert_eq!(q.updated_before_ms, None);
        let bad = proto::ListDeliveriesRequest { status: 99, ..Default::default() };
        assert!(matches!(query_from_proto(&bad), Err(DomainError::Invalid { field: "status", .. })));
        let bad = proto::ListDeliveriesRequest { tenant_id: "Not Valid".into(), ..Default::default() };
        assert!(matches!(query_from_proto(&bad), Err(DomainError::Invalid { field: "tenant_id", .. })));
        let bad = proto::ListDeliveriesRequest { updated_before: Some(Timestamp { seconds: -5, nanos: 0 }), ..Default::default() };
        assert!(matches!(query_from_proto(&bad), Err(DomainError::Invalid { field: "updated_before", .. })));
    }

    #[test]
    fn redelivery_filters_are_checked_field_by_field() {
        let ok = proto::DeadLetterFilter {
            tenant_id: "acme".into(),
            reason: "max_attempts_exhausted".into(),
            dead_lettered_after: Some(Timestamp { seconds: 1, nanos: 0 }),
            ..Default::default()
        };
        let f = filter_from_proto(&ok).unwrap();
        assert_eq!((f.reason, f.after_ms, f.before_ms), (Some(Reason::MaxAttemptsExhausted), Some(1000), None));
        let field = |f: proto::DeadLetterFilter| match filter_from_proto(&f) {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("{f:?}: expected INVALID_ARGUMENT, got {other:?}"),
        };
        assert_eq!(field(proto::DeadLetterFilter { reason: "timeout".into(), ..Default::default() }), "filter.reason");
        assert_eq!(field(proto::DeadLetterFilter { tenant_id: "Not Valid".into(), ..Default::default() }), "filter.tenant_id");
        assert_eq!(field(proto::DeadLetterFilter { webhook_id: "wh 1".into(), ..Default::default() }), "filter.webhook_id");
        let backwards = proto::DeadLetterFilter {
            dead_lettered_after: Some(Timestamp { seconds: 5, nanos: 0 }),
            dead_lettered_before: Some(Timestamp { seconds: 5, nanos: 0 }),
            ..Default::default()
        };
        assert_eq!(field(backwards), "filter.dead_lettered_before");
    }

    #[test]
    fn replay_periods_are_required_ordered_and_bounded() {
        let at = |seconds| Some(Timestamp { seconds, nanos: 0 });
        let ok = proto::ReplayEventsRequest { tenant_id: "acme".into(), since: at(10), until: at(20), ..Default::default() };
        let r = replay_from_proto(&ok).unwrap();
        assert_eq!((r.since_ms, r.until_ms), (10_000, 20_000));
        let field = |req: proto::ReplayEventsRequest| match replay_from_proto(&req) {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("{req:?}: expected INVALID_ARGUMENT, got {other:?}"),
        };
        assert_eq!(field(proto::ReplayEventsRequest { since: None, ..ok.clone() }), "since");
        assert_eq!(field(proto::ReplayEventsRequest { until: None, ..ok.clone() }), "until");
        assert_eq!(field(proto::ReplayEventsRequest { until: at(10), ..ok.clone() }), "until");
        assert_eq!(field(proto::ReplayEventsRequest { until: at(10 + 32 * 86_400), ..ok.clone() }), "until");
        assert_eq!(field(proto::ReplayEventsRequest { event_types: vec!["".into()], ..ok.clone() }), "event_types");
        assert_eq!(field(proto::ReplayEventsRequest { tenant_id: "Not Valid".into(), ..ok.clone() }), "tenant_id");
    }

    #[test]
    fn page_tokens_must_be_stream_ids() {
        for ok in ["", "1767225600000-0", "0-18446744073709551615"] {
            assert!(check_stream_token(ok).is_ok(), "{ok}");
        }
        for bad in ["abc", "1767225600000", "-1", "1-", "1-0 ", "+", "(1-0", "1-0-0"] {
            assert!(check_stream_token(bad).is_err(), "{bad}");
        }
    }
}
