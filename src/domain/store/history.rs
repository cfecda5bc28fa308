//! The delivery history as the control plane reads it (`crate::history` owns the layout), and
//! the one attempt made outside the pipeline (SendTestEvent) recorded as the outcome stage would.

use super::{connection::Store, records::Page};
use crate::{
    domain::DomainError,
    history::{self, DeliveryRecord},
    stats,
};

impl Store {
    /// Records one attempt made outside the pipeline (SendTestEvent): its history record and
    /// its webhook's stats, in one transaction, as the outcome stage writes them.
    pub fn record_attempt(&self, record: &DeliveryRecord, retention: history::Retention, succeeded: bool) -> Result<(), DomainError> {
        self.with_conn(|con, keys| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            history::queue_writes(&mut pipe, keys, retention, [record]);
            let mut tally = stats::Tally::default();
            for attempt in &record.attempts {
                tally.attempt(&record.webhook_id, attempt, succeeded);
            }
            stats::queue_writes(&mut pipe, keys, &tally, &mut stats::Trims::default(), self.clock.now_ms(), stats::KEY_TTL);
            pipe.query::<()>(con).map_err(|e| self.unavailable(e))
        })
    }

    /// Deliveries, newest first (see `crate::history::list`).
    pub fn list_deliveries(&self, query: &history::Query, page_size: usize, token: &str) -> Result<Page<DeliveryRecord>, DomainError> {
        let token = if token.is_empty() {
            None
        } else {
            Some(history::decode_token(token).ok_or_else(|| DomainError::Invalid {
                field: "page_token",
                message: "is not a token this service returned; pass next_page_token unchanged".into(),
            })?)
        };
        self.with_conn(|con, keys| {
            let (items, next_token) = history::list(con, keys, query, page_size, token, 20_000).map_err(|e| self.unavailable(e))?;
            Ok(Page { items, next_token })
        })
    }

    pub fn get_delivery(&self, id: &str) -> Result<DeliveryRecord, DomainError> {
        self.with_conn(|con, keys| {
            history::get(con, keys, id)
                .map_err(|e| self.unavailable(e))?
                .ok_or_else(|| DomainError::NotFound { kind: "delivery", id: id.to_owned() })
        })
    }
}
