//! Storage of tenants, webhooks and retry policies in Redis.
//!
//! Keys (all under the configured prefix `P`):
//! - `P tenants`, `P webhooks`, `P policies`: hashes from id to the JSON of the resource;
//! - `P tokens`: hash from token id to a tenant token's record (its SHA-256 digest, never the
//!   token: see `crate::crypto`);
//! - `P config:version`: a counter bumped by every write, which instances poll to reload.
//!
//! A webhook's statistics (`P stats:webhook:<id>`, written by the outcome stage, see
//! `crate::stats`) are deleted with it, in the same transaction.
//!
//! Webhook secrets (and client keys) are sealed with `WSS_ENCRYPTION_KEY` when one is configured ([`Store::with_cipher`]):
//! the JSON of a webhook then holds `enc:v1:…` instead of the secret, and only this module seals
//! and opens it, so every other module sees the secret in clear and Redis never does. Without a
//! key, secrets are stored in clear.
//!
//! Writes run as optimistic transactions (`WATCH` the four hashes, check, `MULTI … EXEC`, retry
//! when another writer got in between), so that checks across resources — a webhook's tenant and
//! policy exist, a policy in use cannot be deleted — hold under concurrent writers and instances.
//! The store holds one connection behind a mutex: control-plane traffic is light, and a
//! connection that failed is dropped and made anew on the next call.

use std::time::Duration;

use crate::redis_conn::Conn;
use parking_lot::Mutex;
use redis::{Commands, Pipeline};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    model::{RetryPolicy, Secret, Tenant, Webhook, DEFAULT_POLICY_ID},
    token::ApiToken,
    DomainError,
};
use crate::{
    clock::now_ms,
    crypto::{self, SecretCipher},
    deadletter::DeadLetter,
    history::{self, DeliveryRecord},
    keys::{versions_key, Keys},
    redis_conn::RedisTarget,
    stats,
    streams::parse_entries,
};

/// A record with its version: 1 when created, one more at every change, stored beside it
/// (`<hash key>:versions`, written in the same MULTI as the record), and shown as its `etag`. A
/// record written before versions were kept has version 0 until its next change. Versions of
/// tenants and retry policies outlive a deletion, so that a re-created id never repeats an etag.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

/// One page of a listing, ordered by id.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The last id of this page when more follow; empty on the last page.
    pub next_token: String,
}

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

pub struct Store {
    target: RedisTarget,
    keys: Keys,
    conn: Mutex<Option<Conn>>,
    /// Seals webhook secrets at rest; `None`: stored in clear.
    cipher: Option<SecretCipher>,
    /// How long a published `event_id` is remembered (`WSS_DEDUPE_WINDOW`).
    dedupe_window: Duration,
}

/// What publishing an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The stream entry: new, or the first publication's for a duplicate.
    pub stream_entry_id: String,
    /// The same `event_id` was published for the tenant within the dedupe window: nothing was
    /// appended.
    pub duplicate: bool,
}

/// Appends an event unless its id was published for its tenant within the window, atomically:
/// two concurrent publications of one id append once.
///
/// KEYS: the dedupe key, the stream. ARGV: the window in ms, then the entry's fields.
const PUBLISH_ONCE_SCRIPT: &str = r#"
local first = redis.call('GET', KEYS[1])
if first then return {first, 1} end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return {id, 0}
"#;

impl Store {
    pub fn new(target: RedisTarget, keys: Keys) -> Self {
        Self { target, keys, conn: Mutex::new(None), cipher: None, dedupe_window: Duration::from_secs(86_400) }
    }

    /// Remembers published event ids this long (`WSS_DEDUPE_WINDOW`; default 24 h).
    pub fn with_dedupe_window(mut self, window: Duration) -> Self {
        self.dedupe_window = window;
        self
    }

    /// Seals webhook secrets with `cipher` from now on (`WSS_ENCRYPTION_KEY`).
    pub fn with_cipher(mut self, cipher: Option<SecretCipher>) -> Self {
        self.cipher = cipher;
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs `f` on the shared connection, connecting first when there is none. A Redis error
    /// drops the connection so that the next call starts afresh.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Conn, &Keys) -> Result<T, DomainError>) -> Result<T, DomainError> {
        let mut guard = self.conn.lock();
        if guard.is_none() {
            let conn = self.target.connect_once(Duration::from_secs(2)).map_err(|e| self.unavailable(e))?;
            *guard = Some(conn);
        }
        let conn = guard.as_mut().expect("connection was just made");
        let result = f(conn, &self.keys);
        if matches!(result, Err(DomainError::Unavailable { .. })) {
            *guard = None;
        }
        result
    }

    fn unavailable(&self, source: redis::RedisError) -> DomainError {
        DomainError::Unavailable { url: self.target.display_url().to_owned(), source }
    }

    /// An optimistic transaction over the four resource hashes (tenants, webhooks, policies,
    /// tokens): `check` reads what it needs and queues its writes on the pipeline (or refuses);
    /// the version bump is added here. Retried from the start when another writer changed a
    /// watched key meanwhile.
    fn mutate<T>(&self, mut check: impl FnMut(&mut Conn, &Keys, &mut Pipeline) -> Result<T, DomainError>) -> Result<T, DomainError> {
        self.with_conn(|con, keys| loop {
            let watched = [&keys.tenants, &keys.webhooks, &keys.policies, &keys.tokens];
            redis::cmd("WATCH").arg(&watched).exec(con).map_err(|e| self.unavailable(e))?;
            let mut pipe = redis::pipe();
            pipe.atomic();
            let value = match check(con, keys, &mut pipe) {
                Ok(value) => value,
                Err(err) => {
                    redis::cmd("UNWATCH").exec(con).map_err(|e| self.unavailable(e))?;
                    return Err(err);
                }
            };
            pipe.incr(&keys.config_version, 1).ignore();
            let committed: Option<()> = pipe.query(con).map_err(|e| self.unavailable(e))?;
            if committed.is_some() {
                return Ok(value);
            }
        })
    }

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
            tenant.updated_at_ms = now_ms();
            pipe.hset(&keys.tenants, id, self.encode(&tenant)?).ignore();
            pipe.hset(versions_key(&keys.tenants), id, version + 1).ignore();
            Ok(Versioned { value: tenant, version: version + 1 })
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
            webhook.updated_at_ms = now_ms();
            pipe.hset(&keys.webhooks, id, self.encode(&webhook)?).ignore();
            pipe.hset(versions_key(&keys.webhooks), id, version + 1).ignore();
            Ok(Versioned { value: webhook, version: version + 1 })
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

    // ---- tokens ----

    /// Stores a new tenant token's record (its digest, never the token).
    pub fn create_token(&self, token: ApiToken) -> Result<ApiToken, DomainError> {
        self.mutate(|con, keys, pipe| {
            self.require_tenant(con, keys, &token.tenant_id)?;
            if con.hexists(&keys.tokens, &token.id).map_err(|e| self.unavailable(e))? {
                return Err(DomainError::AlreadyExists { kind: "token", id: token.id.clone() });
            }
            pipe.hset(&keys.tokens, &token.id, self.encode(&token)?).ignore();
            Ok(token.clone())
        })
    }

    /// A token's record by id; `None` when there is none (never issued, revoked, or its tenant
    /// deleted). One `HGET`: the control plane calls it for every call carrying a tenant token,
    /// so that a revocation holds at once on every instance.
    pub fn find_token(&self, id: &str) -> Result<Option<ApiToken>, DomainError> {
        self.with_conn(|con, keys| match self.fetch(con, &keys.tokens, "token", id) {
            Ok(token) => Ok(Some(token)),
            Err(DomainError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        })
    }

    pub fn list_tokens(&self, tenant_id: &str, page_size: usize, token: &str) -> Result<Page<ApiToken>, DomainError> {
        self.with_conn(|con, keys| {
            self.list(
                con,
                &keys.tokens,
                "token",
                page_size,
                token,
                |t: &ApiToken| tenant_id.is_empty() || t.tenant_id == tenant_id,
                |t| &t.id,
            )
        })
    }

    /// Revokes a token; returns its record.
    pub fn revoke_token(&self, id: &str) -> Result<ApiToken, DomainError> {
        self.mutate(|con, keys, pipe| {
            let token: ApiToken = self.fetch(con, &keys.tokens, "token", id)?;
            pipe.hdel(&keys.tokens, id).ignore();
            Ok(token)
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
            pipe.hset(&keys.policies, id, self.encode(&policy)?).ignore();
            pipe.hset(versions_key(&keys.policies), id, version + 1).ignore();
            Ok(Versioned { value: policy, version: version + 1 })
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

    // ---- events and dead letters ----

    /// Appends an event of `tenant` to its stream (docs/contract.md §8) exactly as an `XADD` by
    /// another system would.
    pub fn publish_event(&self, tenant: &str, fields: &[(&str, &str)]) -> Result<String, DomainError> {
        self.with_conn(|con, keys| {
            redis::cmd("XADD").arg(keys.stream_of(tenant)).arg("*").arg(fields).query(con).map_err(|e| self.unavailable(e))
        })
    }

    /// [`Store::publish_event`] of an event with its own id (docs/contract.md §9): appended once per tenant
    /// and id within the dedupe window; a repeat answers the first publication's entry.
    pub fn publish_event_once(&self, tenant: &str, event_id: &str, fields: &[(&str, &str)]) -> Result<Published, DomainError> {
        let window_ms = self.dedupe_window.as_millis().max(1) as u64;
        self.with_conn(|con, keys| {
            let (stream_entry_id, duplicate): (String, i64) = redis::cmd("EVAL")
                .arg(PUBLISH_ONCE_SCRIPT)
                .arg(2)
                .arg(keys.published(tenant, event_id))
                .arg(keys.stream_of(tenant))
                .arg(window_ms)
                .arg(fields)
                .query(con)
                .map_err(|e| self.unavailable(e))?;
            Ok(Published { stream_entry_id, duplicate: duplicate == 1 })
        })
    }

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

    /// The fields of stream entry `id` of `tenant`'s stream, if it is still there.
    pub fn event_entry(&self, tenant: &str, id: &str) -> Result<Option<crate::deadletter::Fields>, DomainError> {
        self.with_conn(|con, keys| {
            let reply: redis::Value =
                redis::cmd("XRANGE").arg(keys.stream_of(tenant)).arg(id).arg(id).query(con).map_err(|e| self.unavailable(e))?;
            let entries = parse_entries(reply).map_err(|e| {
                self.unavailable(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "XRANGE", e.to_string())))
            })?;
            Ok(entries.into_iter().next().and_then(|e| e.fields))
        })
    }

    /// Appends `fields` to `tenant`'s stream and deletes dead letter `id`, atomically and only
    /// if it still exists ([`crate::deadletter::REDELIVER_SCRIPT`]). `None`: it was gone already.
    ///
    /// On a Redis Cluster the two streams are in different slots: the event is appended first,
    /// then the record deleted; when another redelivery deleted it meanwhile, the new entry is
    /// deleted again (read already, it is delivered twice: at least once, as always).
    pub fn redeliver_dead_letter(&self, tenant: &str, id: &str, fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<String>, DomainError> {
        self.with_conn(|con, keys| {
            let stream = keys.stream_of(tenant);
            if keys.cluster() && keys.shard_slot(keys.shard_of(tenant)).is_some() {
                let entry: String = redis::cmd("XADD").arg(&stream).arg("*").arg(fields).query(con).map_err(|e| self.unavailable(e))?;
                let deleted: i64 = redis::cmd("XDEL").arg(&keys.dead_letters).arg(id).query(con).map_err(|e| self.unavailable(e))?;
                if deleted == 0 {
                    let _: i64 = redis::cmd("XDEL").arg(&stream).arg(&entry).query(con).map_err(|e| self.unavailable(e))?;
                    return Ok(None);
                }
                return Ok(Some(entry));
            }
            redis::cmd("EVAL")
                .arg(crate::deadletter::REDELIVER_SCRIPT)
                .arg(2)
                .arg(&keys.dead_letters)
                .arg(&stream)
                .arg(id)
                .arg(fields)
                .query(con)
                .map_err(|e| self.unavailable(e))
        })
    }

    /// Entries of `tenant`'s stream oldest first, from `start` to `end` (`XRANGE` bounds), at
    /// most `count` (ReplayEvents).
    pub fn events_between(&self, tenant: &str, start: &str, end: &str, count: usize) -> Result<Vec<crate::streams::RawEntry>, DomainError> {
        self.with_conn(|con, keys| {
            let reply: redis::Value = redis::cmd("XRANGE")
                .arg(keys.stream_of(tenant))
                .arg(start)
                .arg(end)
                .arg("COUNT")
                .arg(count)
                .query(con)
                .map_err(|e| self.unavailable(e))?;
            parse_entries(reply)
                .map_err(|e| self.unavailable(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "XRANGE", e.to_string()))))
        })
    }

    /// Appends every entry of `entries`, events of `tenant`, to its stream, all or none
    /// (`MULTI … EXEC`), and returns their new ids in order (ResendDelivery, ReplayEvents).
    pub fn append_events(&self, tenant: &str, entries: &[crate::deadletter::Fields]) -> Result<Vec<String>, DomainError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.with_conn(|con, keys| {
            let stream = keys.stream_of(tenant);
            let mut pipe = redis::pipe();
            pipe.atomic();
            for fields in entries {
                pipe.cmd("XADD").arg(&stream).arg("*").arg(fields);
            }
            pipe.query(con).map_err(|e| self.unavailable(e))
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
            stats::queue_writes(&mut pipe, keys, &tally, &mut stats::Trims::default(), now_ms(), stats::KEY_TTL);
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

    /// A webhook's stored statistics (empty when it has none yet), read at `now_ms`.
    pub fn webhook_stats(&self, id: &str, now_ms: u64) -> Result<stats::Stored, DomainError> {
        self.with_conn(|con, keys| stats::read(con, keys, id, now_ms).map_err(|e| self.unavailable(e)))
    }

    /// [`Store::webhook_stats`] of several webhooks, in their order, in one round trip.
    pub fn webhooks_stats(&self, ids: &[&str], now_ms: u64) -> Result<Vec<stats::Stored>, DomainError> {
        self.with_conn(|con, keys| stats::read_many(con, keys, ids, now_ms).map_err(|e| self.unavailable(e)))
    }

    /// How many deliveries of webhook `id` wait in the durable backlog, and since when the oldest.
    pub fn backlog_depth(&self, id: &str) -> Result<crate::pipeline::backlog::Depth, DomainError> {
        self.with_conn(|con, keys| crate::pipeline::backlog::depth(con, keys, id).map_err(|e| self.unavailable(e)))
    }

    /// [`Store::backlog_depth`] of several webhooks, in their order, in one round trip.
    pub fn backlog_depths(&self, ids: &[&str]) -> Result<Vec<crate::pipeline::backlog::Depth>, DomainError> {
        self.with_conn(|con, keys| crate::pipeline::backlog::depths_of(con, keys, ids).map_err(|e| self.unavailable(e)))
    }

    pub fn get_delivery(&self, id: &str) -> Result<DeliveryRecord, DomainError> {
        self.with_conn(|con, keys| {
            history::get(con, keys, id)
                .map_err(|e| self.unavailable(e))?
                .ok_or_else(|| DomainError::NotFound { kind: "delivery", id: id.to_owned() })
        })
    }

    // ---- helpers ----

    fn fetch<T: Stored>(&self, con: &mut Conn, key: &str, kind: &'static str, id: &str) -> Result<T, DomainError> {
        debug_assert_eq!(kind, T::KIND);
        let raw: Option<String> = con.hget(key, id).map_err(|e| self.unavailable(e))?;
        let raw = raw.ok_or_else(|| DomainError::NotFound { kind, id: id.to_owned() })?;
        self.decode(id, &raw)
    }

    /// A record and its version in one MULTI, so that they always match.
    fn fetch_versioned<T: Stored>(&self, con: &mut Conn, key: &str, id: &str) -> Result<Versioned<T>, DomainError> {
        self.fetch_versioned_in(con, key, id, true)
    }

    /// [`Store::fetch_versioned`] inside [`Store::mutate`]: no MULTI of its own (an EXEC would end
    /// the WATCH); the transaction's EXEC fails when either changed meanwhile.
    fn fetch_versioned_in<T: Stored>(&self, con: &mut Conn, key: &str, id: &str, atomic: bool) -> Result<Versioned<T>, DomainError> {
        let mut pipe = redis::pipe();
        if atomic {
            pipe.atomic();
        }
        let (raw, version): (Option<String>, Option<u64>) =
            pipe.hget(key, id).hget(versions_key(key), id).query(con).map_err(|e| self.unavailable(e))?;
        let raw = raw.ok_or_else(|| DomainError::NotFound { kind: T::KIND, id: id.to_owned() })?;
        Ok(Versioned { value: self.decode(id, &raw)?, version: version.unwrap_or(0) })
    }

    /// Every record of hash `key` with its version, read in one MULTI.
    fn all_versioned<T: Stored>(&self, con: &mut Conn, key: &str) -> Result<Vec<Versioned<T>>, DomainError> {
        let (raw, versions): (Vec<(String, String)>, std::collections::HashMap<String, u64>) =
            redis::pipe().atomic().hgetall(key).hgetall(versions_key(key)).query(con).map_err(|e| self.unavailable(e))?;
        raw.iter()
            .map(|(id, json)| Ok(Versioned { value: self.decode(id, json)?, version: versions.get(id).copied().unwrap_or(0) }))
            .collect()
    }

    /// Queues version n+1 of a new record `id` of hash `key` (n: the version its id last had, kept
    /// across a deletion) and returns it.
    fn bump_version(&self, con: &mut Conn, pipe: &mut Pipeline, key: &str, id: &str) -> Result<u64, DomainError> {
        let versions = versions_key(key);
        let last: Option<u64> = con.hget(&versions, id).map_err(|e| self.unavailable(e))?;
        let version = last.unwrap_or(0) + 1;
        pipe.hset(versions, id, version).ignore();
        Ok(version)
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

    fn all<T: Stored>(&self, con: &mut Conn, key: &str, kind: &'static str) -> Result<Vec<T>, DomainError> {
        debug_assert_eq!(kind, T::KIND);
        let raw: Vec<(String, String)> = con.hgetall(key).map_err(|e| self.unavailable(e))?;
        self.decode_all(raw)
    }

    #[allow(clippy::too_many_arguments)]
    fn list<T: Stored>(
        &self,
        con: &mut Conn,
        key: &str,
        kind: &'static str,
        page_size: usize,
        token: &str,
        keep: impl Fn(&T) -> bool,
        id_of: impl Fn(&T) -> &String,
    ) -> Result<Page<T>, DomainError> {
        Ok(paginate(self.all(con, key, kind)?, page_size, token, keep, id_of))
    }

    fn require_tenant(&self, con: &mut Conn, keys: &Keys, id: &str) -> Result<(), DomainError> {
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

impl Store {
    /// The JSON stored for `value`, its secrets sealed when a key is configured.
    fn encode<T: Stored>(&self, value: &T) -> Result<String, DomainError> {
        let sealed = value.sealed(self.cipher.as_ref())?;
        Ok(serde_json::to_string(sealed.as_ref().unwrap_or(value)).expect("domain types always serialize"))
    }

    fn decode<T: Stored>(&self, id: &str, raw: &str) -> Result<T, DomainError> {
        let mut value: T = serde_json::from_str(raw).map_err(|source| DomainError::Corrupt { kind: T::KIND, id: id.to_owned(), source })?;
        value.open(self.cipher.as_ref())?;
        Ok(value)
    }

    fn decode_all<T: Stored>(&self, raw: Vec<(String, String)>) -> Result<Vec<T>, DomainError> {
        raw.iter().map(|(id, json)| self.decode(id, json)).collect()
    }
}

/// What the store keeps as JSON in a hash. Only webhooks hold secrets; the default methods do
/// nothing.
trait Stored: Serialize + DeserializeOwned + Clone {
    const KIND: &'static str;

    /// A copy with its secrets sealed, or `None` when there is nothing to seal.
    fn sealed(&self, _cipher: Option<&SecretCipher>) -> Result<Option<Self>, DomainError> {
        Ok(None)
    }

    /// Opens the secrets of a value just read.
    fn open(&mut self, _cipher: Option<&SecretCipher>) -> Result<(), DomainError> {
        Ok(())
    }
}

impl Stored for Tenant {
    const KIND: &'static str = "tenant";
}

impl Stored for RetryPolicy {
    const KIND: &'static str = "retry policy";
}

impl Stored for ApiToken {
    const KIND: &'static str = "token";
}

/// The associated data a webhook's client key is sealed with: it opens only on that webhook, and
/// only as its client key.
fn client_key_context(webhook_id: &str) -> String {
    format!("webhook-client-key:{webhook_id}")
}

/// The associated data a webhook secret is sealed with: it opens only on that webhook, and only
/// in its place (current or previous).
fn secret_context(webhook_id: &str, previous: bool) -> String {
    if previous {
        format!("webhook-previous-secret:{webhook_id}")
    } else {
        format!("webhook-secret:{webhook_id}")
    }
}

impl Stored for Webhook {
    const KIND: &'static str = "webhook";

    /// Also forgets a previous secret whose overlap has ended: it is never stored longer than it
    /// is used.
    fn sealed(&self, cipher: Option<&SecretCipher>) -> Result<Option<Self>, DomainError> {
        let mut copy = self.clone();
        copy.drop_expired_secret(now_ms());
        let Some(cipher) = cipher else {
            return Ok((copy.previous_secret != self.previous_secret).then_some(copy));
        };
        let seal = |secret: &Secret, previous: bool| {
            cipher.seal(secret.expose(), &secret_context(&self.id, previous)).map(Secret::new).map_err(|source| DomainError::Sealed {
                kind: Self::KIND,
                id: self.id.clone(),
                source,
            })
        };
        copy.secret = seal(&self.secret, false)?;
        copy.previous_secret = copy.previous_secret.as_ref().map(|s| seal(s, true)).transpose()?;
        copy.client_key = self
            .client_key
            .as_ref()
            .map(|key| {
                cipher.seal(key.expose(), &client_key_context(&self.id)).map(Secret::new).map_err(|source| DomainError::Sealed {
                    kind: Self::KIND,
                    id: self.id.clone(),
                    source,
                })
            })
            .transpose()?;
        Ok(Some(copy))
    }

    fn open(&mut self, cipher: Option<&SecretCipher>) -> Result<(), DomainError> {
        self.drop_expired_secret(now_ms());
        let open = |secret: &Secret, previous: bool| {
            crypto::open(cipher, secret.expose(), &secret_context(&self.id, previous))
                .map(Secret::new)
                .map_err(|source| DomainError::Sealed { kind: Self::KIND, id: self.id.clone(), source })
        };
        self.secret = open(&self.secret, false)?;
        self.previous_secret = self.previous_secret.as_ref().map(|s| open(s, true)).transpose()?;
        self.client_key =
            self.client_key
                .as_ref()
                .map(|key| {
                    crypto::open(cipher, key.expose(), &client_key_context(&self.id))
                        .map(Secret::new)
                        .map_err(|source| DomainError::Sealed { kind: Self::KIND, id: self.id.clone(), source })
                })
                .transpose()?;
        Ok(())
    }
}

fn with_builtin_default(mut policies: Vec<RetryPolicy>) -> Vec<RetryPolicy> {
    if !policies.iter().any(|p| p.id == DEFAULT_POLICY_ID) {
        policies.push(RetryPolicy::builtin_default());
    }
    policies
}

/// Ok when the stored `version` is the `expected` one (or none is expected); otherwise
/// `ABORTED` with reason `STALE_ETAG`.
fn check_version(kind: &str, id: &str, version: u64, expected: Option<u64>) -> Result<(), DomainError> {
    match expected {
        Some(expected) if expected != version => Err(DomainError::Aborted {
            reason: "STALE_ETAG",
            message: format!(
                "{kind} {id:?} changed since it was read (etag \"{expected}\", now \"{version}\"); read it again and reapply the change"
            ),
        }),
        _ => Ok(()),
    }
}

/// Sorts by id and returns the page after `token` (an id; empty for the first page).
pub fn paginate<T>(mut items: Vec<T>, page_size: usize, token: &str, keep: impl Fn(&T) -> bool, id_of: impl Fn(&T) -> &String) -> Page<T> {
    items.retain(|item| keep(item) && (token.is_empty() || id_of(item).as_str() > token));
    items.sort_by(|a, b| id_of(a).cmp(id_of(b)));
    let more = items.len() > page_size;
    items.truncate(page_size);
    let next_token = if more { items.last().map(|i| id_of(i).clone()).unwrap_or_default() } else { String::new() };
    Page { items, next_token }
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
    fn pages_follow_ids_and_stop_at_the_end() {
        let ids: Vec<String> = ["c", "a", "e", "b", "d"].iter().map(|s| s.to_string()).collect();
        let p1 = paginate(ids.clone(), 2, "", |_| true, |s| s);
        assert_eq!(p1.items, ["a", "b"]);
        assert_eq!(p1.next_token, "b");
        let p2 = paginate(ids.clone(), 2, &p1.next_token, |_| true, |s| s);
        assert_eq!(p2.items, ["c", "d"]);
        let p3 = paginate(ids.clone(), 2, &p2.next_token, |_| true, |s| s);
        assert_eq!(p3.items, ["e"]);
        assert_eq!(p3.next_token, "");
        let even = paginate(ids, 10, "", |s| s != "c", |s| s);
        assert_eq!(even.items, ["a", "b", "d", "e"]);
    }

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
