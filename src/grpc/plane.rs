//! What every service of the control plane serves from ([`ControlPlane`]), how a handler runs
//! a store call (on the blocking pool, a write followed by a routing reload) and the one mapping
//! from domain errors to statuses ([`status_of`]). Apart from `grpc/mod.rs`, which wires the
//! services, so that the services import it and not the wiring.

use std::sync::Arc;

use tonic::{Code, Status};

use super::errors;
use crate::{
    domain::{routing::RoutingHandle, store::Store, DomainError},
    pipeline::live::LiveView,
};

/// The log target of the control plane.
pub(super) const TARGET: &str = "wss::grpc";

/// Largest request message accepted (tonic's default, made explicit): a PublishEvent carries at
/// most one event, and every other request is small. Larger ones are refused before decoding.
/// Also the largest response sent (what a gRPC client accepts by default): List pages stop
/// short of it ([`super::paging::fit`]).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// What the control plane serves from.
pub struct ControlPlane {
    pub store: Arc<Store>,
    /// Reloaded after every successful write.
    pub routing: Arc<RoutingHandle>,
    /// What this instance's pipeline holds per webhook now (GetWebhookStats).
    pub live: Arc<LiveView>,
    /// Accept `http://` webhook URLs (`WSS_ALLOW_HTTP`).
    pub allow_http: bool,
    /// Accept webhook URLs whose host is a loopback/private IP literal (`WSS_ALLOW_PRIVATE_TARGETS`).
    pub allow_private_targets: bool,
    /// Private ranges accepted all the same (`WSS_ALLOWED_TARGET_CIDRS`).
    pub allowed_target_cidrs: Vec<crate::http::Cidr>,
    /// The delivery agents, built from the same settings as the sender's (address guard, proxy,
    /// trusted roots): SendTestEvent's attempts go through them.
    pub agents: crate::http::Agents,
    /// `WSS_MAX_EVENT_BYTES`: the size rule of test events and replayed entries.
    pub max_event_bytes: usize,
    /// How long and how many deliveries the history keeps (SendTestEvent writes one).
    pub history_retention: crate::history::Retention,
    /// Where the services read the time: records' creation, a secret's rotation, stats
    /// windows, test events (the store reads its own).
    pub clock: crate::clock::Clock,
}

impl ControlPlane {
    /// Which addresses this instance lets webhooks reach, as the delivery agent sees it.
    pub fn target_policy(&self) -> crate::http::TargetPolicy {
        crate::http::TargetPolicy { allow_private: self.allow_private_targets, allowed: self.allowed_target_cidrs.clone() }
    }
}

/// The one mapping from domain errors to gRPC statuses, with their `google.rpc` details
/// ([`errors`]).
pub fn status_of(err: DomainError) -> Status {
    let status = errors::rich(&err);
    if status.code() == Code::Internal {
        log::error!(target: TARGET, "{err}");
    }
    status
}

/// INTERNAL (`RANDOM_UNAVAILABLE`): the operating system's random number generator failed to
/// draw `what`; the cause goes to the log, not to the caller.
pub(super) fn random_unavailable(what: &str, err: impl std::fmt::Display) -> Status {
    log::error!(target: TARGET, "cannot draw {what}: {err}");
    errors::status(Code::Internal, "RANDOM_UNAVAILABLE", "the operating system's random number generator failed; see the server log")
}

impl From<DomainError> for Status {
    fn from(err: DomainError) -> Self {
        status_of(err)
    }
}

// ---- running store calls ----

impl ControlPlane {
    /// Runs a read on the blocking pool.
    pub(super) async fn read<T, F>(&self, op: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, DomainError> + Send + 'static,
    {
        let store = self.store.clone();
        run_blocking(move || op(&store)).await
    }

    /// Runs a write on the blocking pool, then reloads the routing snapshot in the same task.
    pub(super) async fn write<T, F>(&self, op: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, DomainError> + Send + 'static,
    {
        let store = self.store.clone();
        let routing = self.routing.clone();
        run_blocking(move || {
            let value = op(&store)?;
            if let Err(err) = routing.reload(&store) {
                log::warn!(target: TARGET, "the write succeeded, but reloading the routing snapshot failed ({err}); the refresher will pick it up");
            }
            Ok(value)
        })
        .await
    }
}

/// Runs `op` on a thread of its own with the stack expression evaluation needs
/// ([`crate::expr::EVAL_STACK_BYTES`]; the blocking pool's threads have 2 MiB), handing it an
/// evaluator (ReplayEvents runs webhooks' filters).
pub(super) async fn run_evaluating<T, F>(op: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(&crate::expr::Evaluator) -> Result<T, DomainError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("wss-grpc-eval".into()).stack_size(crate::expr::EVAL_STACK_BYTES).spawn(move || {
        let evaluator = crate::expr::Evaluator::new();
        let _ = tx.send(op(&evaluator));
    });
    if let Err(err) = spawned {
        log::error!(target: TARGET, "cannot start a thread to evaluate expressions: {err}");
        return Err(Status::unavailable("cannot start a worker thread now; try again"));
    }
    match rx.await {
        Ok(result) => result.map_err(Status::from),
        Err(_) => {
            log::error!(target: TARGET, "a control-plane evaluation did not complete (its thread panicked)");
            Err(Status::internal("the call did not complete; see the server log"))
        }
    }
}

pub(super) async fn run_blocking<T, F>(op: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DomainError> + Send + 'static,
{
    match tokio::task::spawn_blocking(op).await {
        Ok(result) => result.map_err(Status::from),
        Err(join) => {
            log::error!(target: TARGET, "a control-plane store call did not complete: {join}");
            Err(errors::status(Code::Internal, "INTERNAL", "the store call did not complete; see the server log"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_their_codes() {
        let cases = [
            (DomainError::Invalid { field: "url", message: "is required".into() }, Code::InvalidArgument),
            (DomainError::NotFound { kind: "tenant", id: "acme".into() }, Code::NotFound),
            (DomainError::AlreadyExists { kind: "tenant", id: "acme".into() }, Code::AlreadyExists),
            (DomainError::FailedPrecondition("in use".into()), Code::FailedPrecondition),
            (DomainError::PermissionDenied("not yours".into()), Code::PermissionDenied),
            (DomainError::Sealed { kind: "webhook", id: "wh_1".into(), source: crate::crypto::CryptoError::NoKey }, Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(status_of(err).code(), code);
        }
        let invalid = status_of(DomainError::Invalid { field: "url", message: "is required".into() });
        assert_eq!(invalid.message(), "url: is required");
        let corrupt = serde_json::from_str::<u32>("x").unwrap_err();
        let status = status_of(DomainError::Corrupt { kind: "tenant", id: "a".into(), source: corrupt });
        assert_eq!(status.code(), Code::Internal);
    }
}
