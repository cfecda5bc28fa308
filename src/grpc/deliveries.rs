//! `wss.v1.DeliveryService`: what happened to events. ListDeadLetters pages through
//! `<prefix>deadletters` newest first, optionally of one tenant. The tenant filter need not name
//! an existing tenant: entries rejected as `unknown_tenant`, and those of deleted tenants, must stay
//! listable.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    convert::{dead_letter_to_proto, optional_id, page_size},
    ControlPlane,
};
use crate::{
    domain::{model::invalid, DomainError},
    proto::{self, delivery_service_server::DeliveryService},
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
    if token.is_empty() {
        return Ok(());
    }
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match token.split_once('-') {
        Some((ms, seq)) if digits(ms) && digits(seq) => Ok(()),
        _ => Err(invalid("page_token", "is not a token this service returned; pass next_page_token unchanged")),
    }
}

#[tonic::async_trait]
impl DeliveryService for DeliveryApi {
    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        optional_id("tenant_id", &req.tenant_id)?;
        let size = page_size(req.page_size)?;
        check_stream_token(&req.page_token)?;
        let page = self.plane.read(move |store| store.list_dead_letters(&req.tenant_id, size, &req.page_token)).await?;
        Ok(Response::new(proto::ListDeadLettersResponse {
            dead_letters: page.items.into_iter().map(dead_letter_to_proto).collect(),
            next_page_token: page.next_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
