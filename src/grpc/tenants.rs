//! `wss.v1.TenantService`: tenants are created with a caller-chosen id; deleting one deletes its
//! webhooks and tokens with it (the store does that in one transaction).
//!
//! Admin-only, except GetTenant, which a tenant token may call for its own tenant.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    auth::Principal,
    convert::{etag_from_proto, masked, max_chars, optional_id, page_size, update_mask, versioned_tenant_to_proto},
    paging::{fit, PageQuery, MAX_PAGE_BYTES},
    plane::{ControlPlane, TARGET},
};
use crate::{
    domain::{
        model::{validate_id, Tenant},
        DomainError,
    },
    proto::{self, tenant_service_server::TenantService},
};

/// Longest display name, in characters.
const MAX_DISPLAY_NAME: usize = 256;

pub(super) struct TenantApi {
    plane: Arc<ControlPlane>,
}

impl TenantApi {
    pub(super) fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }
}

/// The tenant a create request asks for, made at `now` (ms).
fn tenant_from_create(req: proto::CreateTenantRequest, now: u64) -> Result<Tenant, DomainError> {
    validate_id("tenant_id", &req.tenant_id)?;
    max_chars("display_name", &req.display_name, MAX_DISPLAY_NAME)?;
    optional_id("default_retry_policy_id", &req.default_retry_policy_id)?;
    Ok(Tenant {
        id: req.tenant_id,
        display_name: req.display_name,
        default_retry_policy_id: req.default_retry_policy_id,
        disabled: req.disabled,
        created_at_ms: now,
        updated_at_ms: now,
    })
}

/// The fields an update sets, already checked.
#[derive(Debug, Clone)]
struct TenantPatch {
    display_name: Option<String>,
    default_retry_policy_id: Option<String>,
    disabled: Option<bool>,
}

/// The paths an UpdateTenantRequest's update_mask may name.
const UPDATE_PATHS: &[&str] = &["display_name", "default_retry_policy_id", "disabled"];

impl TenantPatch {
    fn from_request(req: &proto::UpdateTenantRequest) -> Result<Self, DomainError> {
        let mask = update_mask(req.update_mask.as_ref(), UPDATE_PATHS)?;
        let display_name = masked(&mask, "display_name", req.display_name.clone());
        let default_retry_policy_id = masked(&mask, "default_retry_policy_id", req.default_retry_policy_id.clone());
        if let Some(name) = &display_name {
            max_chars("display_name", name, MAX_DISPLAY_NAME)?;
        }
        if let Some(id) = &default_retry_policy_id {
            optional_id("default_retry_policy_id", id)?;
        }
        Ok(Self { display_name, default_retry_policy_id, disabled: masked(&mask, "disabled", req.disabled) })
    }

    fn apply(&self, tenant: &mut Tenant) {
        if let Some(name) = &self.display_name {
            tenant.display_name.clone_from(name);
        }
        if let Some(id) = &self.default_retry_policy_id {
            tenant.default_retry_policy_id.clone_from(id);
        }
        if let Some(disabled) = self.disabled {
            tenant.disabled = disabled;
        }
    }
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(&self, request: Request<proto::CreateTenantRequest>) -> Result<Response<proto::Tenant>, Status> {
        let tenant = tenant_from_create(request.into_inner(), self.plane.clock.now_ms())?;
        let created = self.plane.write(move |store| store.create_tenant_versioned(tenant)).await?;
        log::info!(target: TARGET, "created tenant {}", created.value.id);
        Ok(Response::new(versioned_tenant_to_proto(created)))
    }

    async fn get_tenant(&self, request: Request<proto::GetTenantRequest>) -> Result<Response<proto::Tenant>, Status> {
        let principal = Principal::of(&request)?;
        let id = request.into_inner().tenant_id;
        validate_id("tenant_id", &id)?;
        principal.require_tenant("tenant", &id, &id)?;
        let tenant = self.plane.read(move |store| store.get_tenant_versioned(&id)).await?;
        Ok(Response::new(versioned_tenant_to_proto(tenant)))
    }

    async fn list_tenants(&self, request: Request<proto::ListTenantsRequest>) -> Result<Response<proto::ListTenantsResponse>, Status> {
        let req = request.into_inner();
        let size = page_size(req.page_size);
        let query = PageQuery::new("ListTenants", &[]);
        let cursor = query.open(&req.page_token)?;
        let page = self.plane.read(move |store| store.list_tenants_versioned(size, &cursor)).await?;
        let (tenants, next) = fit(page.items, page.next_token, MAX_PAGE_BYTES, versioned_tenant_to_proto, |t| t.value.id.clone())?;
        Ok(Response::new(proto::ListTenantsResponse { tenants, next_page_token: query.seal(next) }))
    }

    async fn update_tenant(&self, request: Request<proto::UpdateTenantRequest>) -> Result<Response<proto::Tenant>, Status> {
        let req = request.into_inner();
        validate_id("tenant_id", &req.tenant_id)?;
        let patch = TenantPatch::from_request(&req)?;
        let expected = etag_from_proto(&req.etag)?;
        let id = req.tenant_id;
        let updated = self
            .plane
            .write(move |store| {
                store.update_tenant_versioned(&id, expected, |tenant| {
                    patch.apply(tenant);
                    Ok(())
                })
            })
            .await?;
        log::info!(target: TARGET, "updated tenant {}", updated.value.id);
        Ok(Response::new(versioned_tenant_to_proto(updated)))
    }

    async fn delete_tenant(&self, request: Request<proto::DeleteTenantRequest>) -> Result<Response<proto::DeleteTenantResponse>, Status> {
        let id = request.into_inner().tenant_id;
        validate_id("tenant_id", &id)?;
        let log_id = id.clone();
        let deleted_webhooks = self.plane.write(move |store| store.delete_tenant(&id)).await?;
        log::info!(target: TARGET, "deleted tenant {log_id} and its {deleted_webhooks} webhooks");
        Ok(Response::new(proto::DeleteTenantResponse { deleted_webhooks }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::field_of;

    const NOW: u64 = 1_767_225_600_000;

    #[test]
    fn create_requests_are_checked_field_by_field() {
        let ok = proto::CreateTenantRequest { tenant_id: "acme".into(), display_name: "ACME".into(), ..Default::default() };
        let tenant = tenant_from_create(ok.clone(), NOW).unwrap();
        assert_eq!(tenant.id, "acme");
        assert!(tenant.created_at_ms == NOW && tenant.created_at_ms == tenant.updated_at_ms);

        let bad_id = proto::CreateTenantRequest { tenant_id: "ACME".into(), ..ok.clone() };
        assert_eq!(field_of(tenant_from_create(bad_id, NOW).unwrap_err()), "tenant_id");
        let long_name = proto::CreateTenantRequest { display_name: "x".repeat(257), ..ok.clone() };
        assert_eq!(field_of(tenant_from_create(long_name, NOW).unwrap_err()), "display_name");
        let bad_policy = proto::CreateTenantRequest { default_retry_policy_id: "no way".into(), ..ok };
        assert_eq!(field_of(tenant_from_create(bad_policy, NOW).unwrap_err()), "default_retry_policy_id");
    }

    #[test]
    fn updates_apply_only_present_fields() {
        let mut tenant = tenant_from_create(
            proto::CreateTenantRequest {
                tenant_id: "acme".into(),
                display_name: "ACME".into(),
                default_retry_policy_id: "fast".into(),
                disabled: false,
            },
            NOW,
        )
        .unwrap();
        let req = proto::UpdateTenantRequest {
            tenant_id: "acme".into(),
            default_retry_policy_id: Some(String::new()),
            disabled: Some(true),
            ..Default::default()
        };
        TenantPatch::from_request(&req).unwrap().apply(&mut tenant);
        assert_eq!(tenant.display_name, "ACME");
        assert_eq!(tenant.default_retry_policy_id, "");
        assert!(tenant.disabled);

        let req = proto::UpdateTenantRequest { display_name: Some("y".repeat(300)), ..Default::default() };
        assert_eq!(field_of(TenantPatch::from_request(&req).unwrap_err()), "display_name");
    }

    #[test]
    fn an_update_mask_changes_the_fields_it_names_and_only_those() {
        let mut tenant = tenant_from_create(
            proto::CreateTenantRequest {
                tenant_id: "acme".into(),
                display_name: "ACME".into(),
                default_retry_policy_id: "fast".into(),
                disabled: true,
            },
            NOW,
        )
        .unwrap();
        let mask = |paths: &[&str]| Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() });
        // disabled is named and unset: reset to false; display_name is set but not named: kept.
        let req = proto::UpdateTenantRequest {
            tenant_id: "acme".into(),
            display_name: Some("ignored".into()),
            update_mask: mask(&["disabled", "default_retry_policy_id"]),
            ..Default::default()
        };
        TenantPatch::from_request(&req).unwrap().apply(&mut tenant);
        assert_eq!((tenant.display_name.as_str(), tenant.default_retry_policy_id.as_str(), tenant.disabled), ("ACME", "", false));
        let bad = proto::UpdateTenantRequest { update_mask: mask(&["tenant_id"]), ..Default::default() };
        assert_eq!(field_of(TenantPatch::from_request(&bad).unwrap_err()), "update_mask");
    }
}
