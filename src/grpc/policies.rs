//! `wss.v1.RetryPolicyService`: named retry schedules. A create fills the fields it leaves unset
//! from the built-in `default`; an update changes only the fields it sets. Either way the whole
//! policy is validated before it is stored (the store validates updates again inside its
//! transaction). `default` itself can be updated but not deleted.

use std::{sync::Arc, time::Duration};

use prost_types::Duration as PbDuration;
use tonic::{Request, Response, Status};

use super::{
    convert::{duration_from_proto, etag_from_proto, page_size, update_mask, versioned_policy_to_proto},
    paging::{fit, PageQuery, MAX_PAGE_BYTES},
    plane::{ControlPlane, TARGET},
};
use crate::{
    domain::{
        model::{validate_id, RetryPolicy},
        DomainError,
    },
    proto::{self, retry_policy_service_server::RetryPolicyService},
};

pub(super) struct RetryPolicyApi {
    plane: Arc<ControlPlane>,
}

impl RetryPolicyApi {
    pub(super) fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }
}

/// The fields a create or update request sets, durations already converted.
#[derive(Debug, Clone, Default)]
struct PolicyPatch {
    max_attempts: Option<u32>,
    initial_backoff: Option<Duration>,
    max_backoff: Option<Duration>,
    multiplier: Option<f64>,
    jitter: Option<f64>,
    attempt_timeout: Option<Duration>,
}

/// The patch of a create or an update request: two proto messages with the same six fields.
macro_rules! patch_of {
    ($req:expr) => {
        PolicyPatch::new(
            $req.max_attempts,
            $req.initial_backoff.as_ref(),
            $req.max_backoff.as_ref(),
            $req.multiplier,
            $req.jitter,
            $req.attempt_timeout.as_ref(),
        )
    };
}

fn optional_duration(field: &'static str, value: Option<&PbDuration>) -> Result<Option<Duration>, DomainError> {
    value.map(|d| duration_from_proto(field, d)).transpose()
}

impl PolicyPatch {
    fn new(
        max_attempts: Option<u32>,
        initial_backoff: Option<&PbDuration>,
        max_backoff: Option<&PbDuration>,
        multiplier: Option<f64>,
        jitter: Option<f64>,
        attempt_timeout: Option<&PbDuration>,
    ) -> Result<Self, DomainError> {
        Ok(Self {
            max_attempts,
            initial_backoff: optional_duration("initial_backoff", initial_backoff)?,
            max_backoff: optional_duration("max_backoff", max_backoff)?,
            multiplier,
            jitter,
            attempt_timeout: optional_duration("attempt_timeout", attempt_timeout)?,
        })
    }

    /// Each field the request sets replaces the policy's; the others stay.
    fn apply(&self, policy: &mut RetryPolicy) {
        policy.max_attempts = self.max_attempts.unwrap_or(policy.max_attempts);
        policy.initial_backoff = self.initial_backoff.unwrap_or(policy.initial_backoff);
        policy.max_backoff = self.max_backoff.unwrap_or(policy.max_backoff);
        policy.multiplier = self.multiplier.unwrap_or(policy.multiplier);
        policy.jitter = self.jitter.unwrap_or(policy.jitter);
        policy.attempt_timeout = self.attempt_timeout.unwrap_or(policy.attempt_timeout);
    }
}

fn policy_from_create(req: &proto::CreateRetryPolicyRequest) -> Result<RetryPolicy, DomainError> {
    validate_id("policy_id", &req.policy_id)?;
    let patch = patch_of!(req)?;
    let mut policy = RetryPolicy { id: req.policy_id.clone(), ..RetryPolicy::builtin_default() };
    patch.apply(&mut policy);
    policy.validate()?;
    Ok(policy)
}

/// The paths an UpdateRetryPolicyRequest's update_mask may name.
const UPDATE_PATHS: &[&str] = &["max_attempts", "initial_backoff", "max_backoff", "multiplier", "jitter", "attempt_timeout"];

/// With an update mask, exactly the fields it names change, those unset in the request to the
/// built-in `default` policy's values; without one, the fields set in the request.
fn patch_from_update(req: &proto::UpdateRetryPolicyRequest) -> Result<PolicyPatch, DomainError> {
    validate_id("policy_id", &req.policy_id)?;
    let mask = update_mask(req.update_mask.as_ref(), UPDATE_PATHS)?;
    let patch = patch_of!(req)?;
    let Some(paths) = mask else { return Ok(patch) };
    let named = |path: &str| paths.iter().any(|p| p == path);
    let d = RetryPolicy::builtin_default();
    Ok(PolicyPatch {
        max_attempts: named("max_attempts").then(|| patch.max_attempts.unwrap_or(d.max_attempts)),
        initial_backoff: named("initial_backoff").then(|| patch.initial_backoff.unwrap_or(d.initial_backoff)),
        max_backoff: named("max_backoff").then(|| patch.max_backoff.unwrap_or(d.max_backoff)),
        multiplier: named("multiplier").then(|| patch.multiplier.unwrap_or(d.multiplier)),
        jitter: named("jitter").then(|| patch.jitter.unwrap_or(d.jitter)),
        attempt_timeout: named("attempt_timeout").then(|| patch.attempt_timeout.unwrap_or(d.attempt_timeout)),
    })
}

#[tonic::async_trait]
impl RetryPolicyService for RetryPolicyApi {
    async fn create_retry_policy(&self, request: Request<proto::CreateRetryPolicyRequest>) -> Result<Response<proto::RetryPolicy>, Status> {
        let policy = policy_from_create(request.get_ref())?;
        let created = self.plane.write(move |store| store.create_policy_versioned(policy)).await?;
        log::info!(target: TARGET, "created retry policy {}", created.value.id);
        Ok(Response::new(versioned_policy_to_proto(created)))
    }

    async fn get_retry_policy(&self, request: Request<proto::GetRetryPolicyRequest>) -> Result<Response<proto::RetryPolicy>, Status> {
        let id = request.into_inner().policy_id;
        validate_id("policy_id", &id)?;
        let policy = self.plane.read(move |store| store.get_policy_versioned(&id)).await?;
        Ok(Response::new(versioned_policy_to_proto(policy)))
    }

    async fn list_retry_policies(
        &self,
        request: Request<proto::ListRetryPoliciesRequest>,
    ) -> Result<Response<proto::ListRetryPoliciesResponse>, Status> {
        let req = request.into_inner();
        let size = page_size(req.page_size);
        let query = PageQuery::new("ListRetryPolicies", &[]);
        let cursor = query.open(&req.page_token)?;
        let page = self.plane.read(move |store| store.list_policies_versioned(size, &cursor)).await?;
        let (retry_policies, next) = fit(page.items, page.next_token, MAX_PAGE_BYTES, versioned_policy_to_proto, |p| p.value.id.clone())?;
        Ok(Response::new(proto::ListRetryPoliciesResponse { retry_policies, next_page_token: query.seal(next) }))
    }

    async fn update_retry_policy(&self, request: Request<proto::UpdateRetryPolicyRequest>) -> Result<Response<proto::RetryPolicy>, Status> {
        let req = request.into_inner();
        let patch = patch_from_update(&req)?;
        let expected = etag_from_proto(&req.etag)?;
        let id = req.policy_id;
        let updated = self
            .plane
            .write(move |store| {
                store.update_policy_versioned(&id, expected, |policy| {
                    patch.apply(policy);
                    policy.validate()
                })
            })
            .await?;
        log::info!(target: TARGET, "updated retry policy {}", updated.value.id);
        Ok(Response::new(versioned_policy_to_proto(updated)))
    }

    async fn delete_retry_policy(
        &self,
        request: Request<proto::DeleteRetryPolicyRequest>,
    ) -> Result<Response<proto::DeleteRetryPolicyResponse>, Status> {
        let id = request.into_inner().policy_id;
        validate_id("policy_id", &id)?;
        let log_id = id.clone();
        self.plane.write(move |store| store.delete_policy(&id)).await?;
        log::info!(target: TARGET, "deleted retry policy {log_id}");
        Ok(Response::new(proto::DeleteRetryPolicyResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::field_of;

    fn secs(seconds: i64) -> Option<PbDuration> {
        Some(PbDuration { seconds, nanos: 0 })
    }

    #[test]
    fn create_fills_unset_fields_from_the_builtin_default() {
        let req = proto::CreateRetryPolicyRequest { policy_id: "fast".into(), max_attempts: Some(3), ..Default::default() };
        let policy = policy_from_create(&req).unwrap();
        let default = RetryPolicy::builtin_default();
        assert_eq!(policy.id, "fast");
        assert_eq!(policy.max_attempts, 3);
        assert_eq!(policy.initial_backoff, default.initial_backoff);
        assert_eq!(policy.max_backoff, default.max_backoff);
        assert_eq!(policy.multiplier, default.multiplier);
        assert_eq!(policy.jitter, default.jitter);
        assert_eq!(policy.attempt_timeout, default.attempt_timeout);
    }

    #[test]
    fn create_refuses_bad_ids_durations_and_ranges() {
        let base = proto::CreateRetryPolicyRequest { policy_id: "fast".into(), ..Default::default() };
        let bad = proto::CreateRetryPolicyRequest { policy_id: String::new(), ..base.clone() };
        assert_eq!(field_of(policy_from_create(&bad).unwrap_err()), "policy_id");
        let bad = proto::CreateRetryPolicyRequest { initial_backoff: secs(-1), ..base.clone() };
        assert_eq!(field_of(policy_from_create(&bad).unwrap_err()), "initial_backoff");
        let bad =
            proto::CreateRetryPolicyRequest { attempt_timeout: Some(PbDuration { seconds: 1, nanos: 2_000_000_000 }), ..base.clone() };
        assert_eq!(field_of(policy_from_create(&bad).unwrap_err()), "attempt_timeout");
        let bad = proto::CreateRetryPolicyRequest { max_backoff: secs(1), ..base.clone() };
        assert_eq!(field_of(policy_from_create(&bad).unwrap_err()), "max_backoff");
        let bad = proto::CreateRetryPolicyRequest { jitter: Some(f64::NAN), ..base.clone() };
        assert_eq!(field_of(policy_from_create(&bad).unwrap_err()), "jitter");
        let bad = proto::CreateRetryPolicyRequest { max_attempts: Some(0), ..base };
        assert_eq!(field_of(policy_from_create(&bad).unwrap_err()), "max_attempts");
    }

    #[test]
    fn updates_change_only_present_fields() {
        let req = proto::UpdateRetryPolicyRequest {
            policy_id: "default".into(),
            multiplier: Some(2.0),
            max_backoff: secs(60),
            ..Default::default()
        };
        let mut policy = RetryPolicy::builtin_default();
        patch_from_update(&req).unwrap().apply(&mut policy);
        assert_eq!(policy.multiplier, 2.0);
        assert_eq!(policy.max_backoff, Duration::from_secs(60));
        assert_eq!(policy.max_attempts, 8);
        assert_eq!(policy.initial_backoff, Duration::from_secs(5));
        policy.validate().unwrap();

        let bad = proto::UpdateRetryPolicyRequest { policy_id: "default".into(), max_backoff: secs(-3), ..Default::default() };
        assert_eq!(field_of(patch_from_update(&bad).unwrap_err()), "max_backoff");
    }

    #[test]
    fn masked_updates_reset_named_unset_fields_to_the_default_and_ignore_the_rest() {
        let mut policy = RetryPolicy { max_attempts: 3, multiplier: 4.0, jitter: 0.5, ..RetryPolicy::builtin_default() };
        let req = proto::UpdateRetryPolicyRequest {
            policy_id: "fast".into(),
            multiplier: Some(9.0),
            jitter: Some(0.1),
            update_mask: Some(prost_types::FieldMask { paths: vec!["max_attempts".into(), "jitter".into()] }),
            ..Default::default()
        };
        patch_from_update(&req).unwrap().apply(&mut policy);
        assert_eq!(policy.max_attempts, RetryPolicy::builtin_default().max_attempts, "named, unset: the default's");
        assert_eq!(policy.jitter, 0.1, "named and set");
        assert_eq!(policy.multiplier, 4.0, "set but not named: untouched");
        let bad = proto::UpdateRetryPolicyRequest {
            policy_id: "fast".into(),
            update_mask: Some(prost_types::FieldMask { paths: vec!["policy_id".into()] }),
            ..Default::default()
        };
        assert_eq!(field_of(patch_from_update(&bad).unwrap_err()), "update_mask");
    }
}
