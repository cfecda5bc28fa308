//! The configuration: tenants, webhooks and retry policies (`P tenants`, `P webhooks`,
//! `P policies`: hashes from id to the JSON of the resource), and the version the routing
//! snapshot follows (`P config:version`, bumped by every write in [`Store::mutate`]).
//!
//! A webhook's statistics (`P stats:webhook:<id>`, written by the outcome stage, see
//! `crate::stats`) are deleted with it, in the same transaction; a tenant's webhooks and tokens
//! go with the tenant.

use crate::redis_conn::Conn;
use redis::Commands;

use super::{
    connection::Store,
    records::{check_version, paginate, Page, Versioned},
};
use crate::{
    crypto,
    domain::{
        model::{RetryPolicy, Tenant, Webhook, DEFAULT_POLICY_ID},
        token::ApiToken,
        DomainError,
    },
    keys::{versions_key, Keys},
};

/// Everything the routing snapshot is built from, in one value (tests build snapshots from it;
/// the service reads a [`ConfigHead`] and then scans the webhooks).
#[derive(Debug)]
pub struct Everything {
    pub version: u64,
    pub tenants: Vec<Tenant>,
    pub webhooks: Vec<Webhook>,
    pub policies: Vec<RetryPolicy>,
}

/// The small part of the configuration, read whole in one round trip: the version, tenants and
/// retry policies (the built-in default included).
#[derive(Debug)]
pub struct ConfigHead {
    pub version: u64,
    pub tenants: Vec<Tenant>,
    pub policies: Vec<RetryPolicy>,
}

/// Webhooks per `HSCAN` page when the routing snapshot is loaded: a page's reply (~600 B per
/// webhook) is all of the stored JSON in memory at once.
const WEBHOOK_PAGE: usize = 500;

impl Store {
    pub fn config_version(&self) -> Result<u64, DomainError> {
        self.with_conn(|con, keys| {
            let v: Option<u64> = con.get(&keys.config_version).map_err(|e| self.unavailable(e))?;
            Ok(v.unwrap_or(0))
        })
    }

    /// The version, tenants and policies, in one round trip. Read before the webhooks
    /// ([`Store::scan_webhooks`]): a change made while they are scanned moves the version past
    /// the one read here, so the snapshot is rebuilt at the next poll.
    pub fn load_config_head(&self) -> Result<ConfigHead, DomainError> {
        self.with_conn(|con, keys| {
            type Hash = Vec<(String, String)>;
            let (version, tenants, policies): (Option<u64>, Hash, Hash) = redis::pipe()
                .get(&keys.config_version)
                .hgetall(&keys.tenants)
                .hgetall(&keys.policies)
                .query(con)
                .map_err(|e| self.unavailable(e))?;
            Ok(ConfigHead {
                version: version.unwrap_or(0),
                tenants: self.decode_all(tenants)?,
                policies: with_builtin_default(self.decode_all(policies)?),
            })
        })
    }

    /// Every stored webhook, decoded, handed to `each` a page of [`WEBHOOK_PAGE`] at a time
    /// (`HSCAN`): what is in memory at once is one page, not the whole hash. As with any
    /// `SCAN`, a webhook present for the whole scan is handed over at least once (possibly
    /// twice); one written meanwhile may or may not be — the version moved, so a reload follows.
    pub fn scan_webhooks(&self, mut each: impl FnMut(Webhook)) -> Result<(), DomainError> {
        self.with_conn(|con, keys| {
            let mut cursor: u64 = 0;
            loop {
                let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                    .arg(&keys.webhooks)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(WEBHOOK_PAGE)
                    .query(con)
                    .map_err(|e| self.unavailable(e))?;
                for (id, json) in &page {
                    each(self.decode(id, json)?);
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        })
    }

    // ---- tenants ----

    pub fn create_tenant(&self, tenant: Tenant) -> Result<Tenant, DomainError> {
        self.create_tenant_versioned(tenant).map(|v| v.value)
    }

    pub fn create_tenant_versioned(&self, tenant: Tenant) -> Result<Versioned<Tenant>, DomainError> {
        self.mutate(|con, keys, pipe| {
            if con.hexists(&keys.tenants, &tenant.id).map_err(|e| self.unavailable(e))? {
                return Err(DomainError::AlreadyExists { kind: "tenant", id: tenant.id.clone() });
            }
            self.require_policy(con, keys, "default_retry_policy_id", &tenant.default_retry_policy_id)?;
            pipe.hset(&keys.tenants, &tenant.id, self.encode(&tenant)?).ignore();
            let version = self.bump_version(con, pipe, &keys.tenants, &tenant.id)?;
            Ok(Versioned { value: tenant.clone(), version })
        })
    }

    pub fn get_tenant(&self, id: &str) -> Result<Tenant, DomainError> {
        self.with_conn(|con, keys| self.fetch(con, &keys.tenants, "tenant", id))
    }

    /// The tenant and its version, read together.
    pub fn get_tenant_versioned(&self, id: &str) -> Result<Versioned<Tenant>, DomainError> {
        self.with_conn(|con, keys| self.fetch_versioned(con, &keys.tenants, id))
    }

    pub fn list_tenants(&self, page_size: usize, token: &str) -> Result<Page<Tenant>, DomainError> {
        self.with_conn(|con, keys| self.list(con, &keys.tenants, "tenant", page_size, token, |_: &Tenant| true, |t| &t.id))
    }

    /// [`Store::list_tenants`] with each tenant's version.
    pub fn list_tenants_versioned(&self, page_size: usize, token: &str) -> Result<Page<Versioned<Tenant>>, DomainError> {
        self.with_conn(|con, keys| {
            Ok(paginate(self.all_versioned::<Tenant>(con, &keys.tenants)?, page_size, token, |_| true, |t| &t.value.id))
        })
    }

    /// Applies `patch` to the stored tenant and stores the result after checking it.
    pub fn update_tenant(&self, id: &str, patch: impl Fn(&mut Tenant) -> Result<(), DomainError>) -> Result<Tenant, DomainError> {
        self.update_tenant_versioned(id, None, patch).map(|v| v.value)
    }

    /// [`Store::update_tenant`], refused with `ABORTED` (`STALE_ETAG`) unless the stored version
    /// is `expected` (when given).
    pub fn update_tenant_versioned(
        &self,
        id: &str,
        expected: Option<u64>,
        patch: impl Fn(&mut Tenant) -> Result<(), DomainError>,
    ) -> Result<Versioned<Tenant>, DomainError> {
        self.mutate(|con, keys, pipe| {
            let Versioned { value: mut tenant, version } = self.fetch_versioned_in::<Tenant>(con, &keys.tenants, id, false)?;
            check_version("tenant", id, version, expected)?;
            patch(&mut tenant)?;
            self.require_policy(con, keys, "default_retry_policy_id", &tenant.default_retry_policy_id)?;
            tenant.updated_at_ms = self.clock.now_ms();
            self.queue_next_version(pipe, &keys.tenants, id, tenant, version)
        })
    }

    /// Deletes the tenant, its webhooks and its tokens; returns how many webhooks went with it.
    pub fn delete_tenant(&self, id: &str) -> Result<u32, DomainError> {
        self.mutate(|con, keys, pipe| {
            let _: Tenant = self.fetch(con, &keys.tenants, "tenant", id)?;
            let webhooks: Vec<Webhook> = self.all(con, &keys.webhooks, "webhook")?;
            let doomed: Vec<&str> = webhooks.iter().filter(|w| w.tenant_id == id).map(|w| w.id.as_str()).collect();
            pipe.hdel(&keys.tenants, id).ignore();
            if !doomed.is_empty() {
                pipe.hdel(&keys.webhooks, &doomed).ignore();
                pipe.hdel(versions_key(&keys.webhooks), &doomed).ignore();
                pipe.del(doomed.iter().map(|w| keys.webhook_stats(w)).collect::<Vec<_>>()).ignore();
            }
            let tokens: Vec<ApiToken> = self.all(con, &keys.tokens, "token")?;
            let revoked: Vec<&str> = tokens.iter().filter(|t| t.tenant_id == id).map(|t| t.id.as_str()).collect();
            if !revoked.is_empty() {
                pipe.hdel(&keys.tokens, &revoked).ignore();
            }
            Ok(doomed.len() as u32)
        })
    }

    // ---- webhooks ----

    pub fn create_webhook(&self, webhook: Webhook) -> Result<Webhook, DomainError> {
        self.create_webhook_versioned(webhook).map(|v| v.value)
    }

    pub fn create_webhook_versioned(&self, webhook: Webhook) -> Result<Versioned<Webhook>, DomainError> {
        self.mutate(|con, keys, pipe| {
            self.require_tenant(con, keys, &webhook.tenant_id)?;
            self.require_policy(con, keys, "retry_policy_id", &webhook.retry_policy_id)?;
            if con.hexists(&keys.webhooks, &webhook.id).map_err(|e| self.unavailable(e))? {
                return Err(DomainError::AlreadyExists { kind: "webhook", id: webhook.id.clone() });
            }
            pipe.hset(&keys.webhooks, &webhook.id, self.encode(&webhook)?).ignore();
            let version = self.bump_version(con, pipe, &keys.webhooks, &webhook.id)?;
            Ok(Versioned { value: webhook.clone(), version })
        })
    }

    pub fn get_webhook(&self, id: &str) -> Result<Webhook, DomainError> {
        self.with_conn(|con, keys| self.fetch(con, &keys.webhooks, "webhook", id))
    }

    /// The webhook and its version, read together.
    pub fn get_webhook_versioned(&self, id: &str) -> Result<Versioned<Webhook>, DomainError> {
        self.with_conn(|con, keys| self.fetch_versioned(con, &keys.webhooks, id))
    }

    /// [`Store::list_webhooks`] with each webhook's version.
    pub fn list_webhooks_versioned(&self, tenant_id: &str, page_size: usize, token: &str) -> Result<Page<Versioned<Webhook>>, DomainError> {
        self.with_conn(|con, keys| {
            if !tenant_id.is_empty() {
                self.require_tenant(con, keys, tenant_id)?;
            }
            let all = self.all_versioned::<Webhook>(con, &keys.webhooks)?;
            Ok(paginate(all, page_size, token, |w| tenant_id.is_empty() || w.value.tenant_id == tenant_id, |w| &w.value.id))
        })
    }

    pub fn list_webhooks(&self, tenant_id: &str, page_size: usize, token: &str) -> Result<Page<Webhook>, DomainError> {
        self.with_conn(|con, keys| {
            if !tenant_id.is_empty() {
                self.require_tenant(con, keys, tenant_id)?;
            }
            self.list(
                con,
                &keys.webhooks,
                "webhook",
                page_size,
                token,
                |w: &Webhook| tenant_id.is_empty() || w.tenant_id == tenant_id,
                |w| &w.id,
            )
        })
    }

    pub fn update_webhook(&self, id: &str, patch: impl Fn(&mut Webhook) -> Result<(), DomainError>) -> Result<Webhook, DomainError> {
        self.update_webhook_versioned(id, None, patch).map(|v| v.value)
    }

    /// [`Store::update_webhook`], refused with `ABORTED` (`STALE_ETAG`) unless the stored version
    /// is `expected` (when given).
    pub fn update_webhook_versioned(
        &self,
        id: &str,
        expected: Option<u64>,
        patch: impl Fn(&mut Webhook) -> Result<(), DomainError>,
    ) -> Result<Versioned<Webhook>, DomainError> {
        self.mutate(|con, keys, pipe| {
            let Versioned { value: mut webhook, version } = self.fetch_versioned_in::<Webhook>(con, &keys.webhooks, id, false)?;
            check_version("webhook", id, version, expected)?;
            patch(&mut webhook)?;
            self.require_policy(con, keys, "retry_policy_id", &webhook.retry_policy_id)?;
            webhook.updated_at_ms = self.clock.now_ms();
            self.queue_next_version(pipe, &keys.webhooks, id, webhook, version)
        })
    }

    /// Deletes the webhook and its statistics (`crate::stats`).
    pub fn delete_webhook(&self, id: &str) -> Result<(), DomainError> {
        self.mutate(|con, keys, pipe| {
            let _: Webhook = self.fetch(con, &keys.webhooks, "webhook", id)?;
            pipe.hdel(&keys.webhooks, id).ignore();
            pipe.hdel(versions_key(&keys.webhooks), id).ignore();
            pipe.del(keys.webhook_stats(id)).ignore();
            Ok(())
        })
    }

    /// Seals every webhook secret still stored in clear (written before `WSS_ENCRYPTION_KEY` was
    /// configured); returns how many were sealed. Does nothing without a key.
    pub fn seal_clear_secrets(&self) -> Result<usize, DomainError> {
        if self.cipher.is_none() {
            return Ok(0);
        }
        self.mutate(|con, keys, pipe| {
            let raw: Vec<(String, String)> = con.hgetall(&keys.webhooks).map_err(|e| self.unavailable(e))?;
            let mut sealed = 0;
            for (id, json) in raw {
                let stored: Webhook =
                    serde_json::from_str(&json).map_err(|source| DomainError::Corrupt { kind: "webhook", id: id.clone(), source })?;
                if crypto::is_sealed(stored.secret.expose()) && stored.client_key.as_ref().is_none_or(|k| crypto::is_sealed(k.expose())) {
                    continue;
                }
                pipe.hset(&keys.webhooks, &id, self.encode(&stored)?).ignore();
                sealed += 1;
            }
            Ok(sealed)
        })
    }

    // ---- retry policies ----

    pub fn create_policy(&self, policy: RetryPolicy) -> Result<RetryPolicy, DomainError> {
        self.create_policy_versioned(policy).map(|v| v.value)
    }

    pub fn create_policy_versioned(&self, policy: RetryPolicy) -> Result<Versioned<RetryPolicy>, DomainError> {
        self.mutate(|con, keys, pipe| {
            if policy.id == DEFAULT_POLICY_ID || con.hexists(&keys.policies, &policy.id).map_err(|e| self.unavailable(e))? {
                return Err(DomainError::AlreadyExists { kind: "retry policy", id: policy.id.clone() });
            }
            pipe.hset(&keys.policies, &policy.id, self.encode(&policy)?).ignore();
            let version = self.bump_version(con, pipe, &keys.policies, &policy.id)?;
            Ok(Versioned { value: policy.clone(), version })
        })
    }

    pub fn get_policy(&self, id: &str) -> Result<RetryPolicy, DomainError> {
        self.with_conn(|con, keys| self.fetch_policy(con, keys, id))
    }

    /// The policy and its version, read together (the built-in default, never changed: 0).
    pub fn get_policy_versioned(&self, id: &str) -> Result<Versioned<RetryPolicy>, DomainError> {
        self.with_conn(|con, keys| self.fetch_policy_versioned(con, keys, id, true))
    }

    /// [`Store::list_policies`] with each policy's version.
    pub fn list_policies_versioned(&self, page_size: usize, token: &str) -> Result<Page<Versioned<RetryPolicy>>, DomainError> {
        self.with_conn(|con, keys| {
            let mut all = self.all_versioned::<RetryPolicy>(con, &keys.policies)?;
            if !all.iter().any(|p| p.value.id == DEFAULT_POLICY_ID) {
                all.push(Versioned { value: RetryPolicy::builtin_default(), version: 0 });
            }
            Ok(paginate(all, page_size, token, |_| true, |p| &p.value.id))
        })
    }

    pub fn list_policies(&self, page_size: usize, token: &str) -> Result<Page<RetryPolicy>, DomainError> {
        self.with_conn(|con, keys| {
            let all = with_builtin_default(self.all(con, &keys.policies, "retry policy")?);
            Ok(paginate(all, page_size, token, |_| true, |p| &p.id))
        })
    }

    pub fn update_policy(&self, id: &str, patch: impl Fn(&mut RetryPolicy) -> Result<(), DomainError>) -> Result<RetryPolicy, DomainError> {
        self.update_policy_versioned(id, None, patch).map(|v| v.value)
    }

    /// [`Store::update_policy`], refused with `ABORTED` (`STALE_ETAG`) unless the stored version
    /// is `expected` (when given).
    pub fn update_policy_versioned(
        &self,
        id: &str,
        expected: Option<u64>,
        patch: impl Fn(&mut RetryPolicy) -> Result<(), DomainError>,
    ) -> Result<Versioned<RetryPolicy>, DomainError> {
        self.mutate(|con, keys, pipe| {
            let Versioned { value: mut policy, version } = self.fetch_policy_versioned(con, keys, id, false)?;
            check_version("retry policy", id, version, expected)?;
            patch(&mut policy)?;
            policy.validate()?;
            self.queue_next_version(pipe, &keys.policies, id, policy, version)
        })
    }

    pub fn delete_policy(&self, id: &str) -> Result<(), DomainError> {
        self.mutate(|con, keys, pipe| {
            if id == DEFAULT_POLICY_ID {
                return Err(DomainError::Precondition {
                    reason: "BUILTIN_POLICY",
                    message: "the built-in policy \"default\" cannot be deleted (it can be updated)".into(),
                });
            }
            let _: RetryPolicy = self.fetch(con, &keys.policies, "retry policy", id)?;
            let tenants: Vec<Tenant> = self.all(con, &keys.tenants, "tenant")?;
            if let Some(t) = tenants.iter().find(|t| t.default_retry_policy_id == id) {
                return Err(DomainError::Precondition {
                    reason: "POLICY_IN_USE",
                    message: format!("retry policy {id:?} is the default of tenant {:?}; change that first", t.id),
                });
            }
            let webhooks: Vec<Webhook> = self.all(con, &keys.webhooks, "webhook")?;
            if let Some(w) = webhooks.iter().find(|w| w.retry_policy_id == id) {
                return Err(DomainError::Precondition {
                    reason: "POLICY_IN_USE",
                    message: format!("retry policy {id:?} is used by webhook {:?}; change that first", w.id),
                });
            }
            pipe.hdel(&keys.policies, id).ignore();
            Ok(())
        })
    }

    fn fetch_policy_versioned(&self, con: &mut Conn, keys: &Keys, id: &str, atomic: bool) -> Result<Versioned<RetryPolicy>, DomainError> {
        match self.fetch_versioned_in(con, &keys.policies, id, atomic) {
            Err(DomainError::NotFound { .. }) if id == DEFAULT_POLICY_ID => {
                let version: Option<u64> = con.hget(versions_key(&keys.policies), id).map_err(|e| self.unavailable(e))?;
                Ok(Versioned { value: RetryPolicy::builtin_default(), version: version.unwrap_or(0) })
            }
            other => other,
        }
    }

    fn fetch_policy(&self, con: &mut Conn, keys: &Keys, id: &str) -> Result<RetryPolicy, DomainError> {
        match self.fetch(con, &keys.policies, "retry policy", id) {
            Err(DomainError::NotFound { .. }) if id == DEFAULT_POLICY_ID => Ok(RetryPolicy::builtin_default()),
            other => other,
        }
    }

    pub(super) fn require_tenant(&self, con: &mut Conn, keys: &Keys, id: &str) -> Result<(), DomainError> {
        if con.hexists(&keys.tenants, id).map_err(|e| self.unavailable(e))? {
            Ok(())
        } else {
            Err(DomainError::NotFound { kind: "tenant", id: id.to_owned() })
        }
    }

    /// An empty id means "inherit" and is always fine; `default` always exists.
    fn require_policy(&self, con: &mut Conn, keys: &Keys, field: &'static str, id: &str) -> Result<(), DomainError> {
        if id.is_empty() || id == DEFAULT_POLICY_ID {
            return Ok(());
        }
        if con.hexists(&keys.policies, id).map_err(|e| self.unavailable(e))? {
            Ok(())
        } else {
            Err(DomainError::Invalid { field, message: format!("retry policy {id:?} does not exist; create it first") })
        }
    }
}

fn with_builtin_default(mut policies: Vec<RetryPolicy>) -> Vec<RetryPolicy> {
    if !policies.iter().any(|p| p.id == DEFAULT_POLICY_ID) {
        policies.push(RetryPolicy::builtin_default());
    }
    policies
}
