//! How a resource is kept: JSON in a hash (`P tenants`, `P webhooks`, `P policies`, `P tokens`)
//! from id to record, with its version in `<hash key>:versions`; reading, listing and paging them;
//! and sealing webhook secrets at rest.
//!
//! Webhook secrets (and client keys) are sealed with `WSS_ENCRYPTION_KEY` when one is configured
//! ([`Store::with_cipher`]): the JSON of a webhook then holds `enc:v1:…` instead of the secret,
//! and only this module seals and opens it, so every other module sees the secret in clear and
//! Redis never does. Without a key, secrets are stored in clear.

use crate::redis_conn::Conn;
use redis::{Commands, Pipeline};
use serde::{de::DeserializeOwned, Serialize};

use super::connection::Store;
use crate::{
    crypto::{self, SecretCipher},
    domain::{
        model::{RetryPolicy, Secret, Tenant, Webhook},
        token::ApiToken,
        DomainError,
    },
    keys::versions_key,
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

impl Store {
    pub(super) fn fetch<T: Stored>(&self, con: &mut Conn, key: &str, kind: &'static str, id: &str) -> Result<T, DomainError> {
        debug_assert_eq!(kind, T::KIND);
        let raw: Option<String> = con.hget(key, id).map_err(|e| self.unavailable(e))?;
        let raw = raw.ok_or_else(|| DomainError::NotFound { kind, id: id.to_owned() })?;
        self.decode(id, &raw)
    }

    /// A record and its version in one MULTI, so that they always match.
    pub(super) fn fetch_versioned<T: Stored>(&self, con: &mut Conn, key: &str, id: &str) -> Result<Versioned<T>, DomainError> {
        self.fetch_versioned_in(con, key, id, true)
    }

    /// [`Store::fetch_versioned`] inside [`Store::mutate`]: no MULTI of its own (an EXEC would end
    /// the WATCH); the transaction's EXEC fails when either changed meanwhile.
    pub(super) fn fetch_versioned_in<T: Stored>(
        &self,
        con: &mut Conn,
        key: &str,
        id: &str,
        atomic: bool,
    ) -> Result<Versioned<T>, DomainError> {
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
    pub(super) fn all_versioned<T: Stored>(&self, con: &mut Conn, key: &str) -> Result<Vec<Versioned<T>>, DomainError> {
        let (raw, versions): (Vec<(String, String)>, std::collections::HashMap<String, u64>) =
            redis::pipe().atomic().hgetall(key).hgetall(versions_key(key)).query(con).map_err(|e| self.unavailable(e))?;
        raw.iter()
            .map(|(id, json)| Ok(Versioned { value: self.decode(id, json)?, version: versions.get(id).copied().unwrap_or(0) }))
            .collect()
    }

    /// Queues version n+1 of a new record `id` of hash `key` (n: the version its id last had, kept
    /// across a deletion) and returns it.
    pub(super) fn bump_version(&self, con: &mut Conn, pipe: &mut Pipeline, key: &str, id: &str) -> Result<u64, DomainError> {
        let versions = versions_key(key);
        let last: Option<u64> = con.hget(&versions, id).map_err(|e| self.unavailable(e))?;
        let version = last.unwrap_or(0) + 1;
        pipe.hset(versions, id, version).ignore();
        Ok(version)
    }

    /// Queues the write of `value`, a changed record `id` of hash `key` read at `version`, with
    /// version n+1: the record and its version move together.
    pub(super) fn queue_next_version<T: Stored>(
        &self,
        pipe: &mut Pipeline,
        key: &str,
        id: &str,
        value: T,
        version: u64,
    ) -> Result<Versioned<T>, DomainError> {
        pipe.hset(key, id, self.encode(&value)?).ignore();
        pipe.hset(versions_key(key), id, version + 1).ignore();
        Ok(Versioned { value, version: version + 1 })
    }

    pub(super) fn all<T: Stored>(&self, con: &mut Conn, key: &str, kind: &'static str) -> Result<Vec<T>, DomainError> {
        debug_assert_eq!(kind, T::KIND);
        let raw: Vec<(String, String)> = con.hgetall(key).map_err(|e| self.unavailable(e))?;
        self.decode_all(raw)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn list<T: Stored>(
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

    /// The JSON stored for `value`, its secrets sealed when a key is configured.
    pub(super) fn encode<T: Stored>(&self, value: &T) -> Result<String, DomainError> {
        let sealed = value.sealed(self.cipher.as_ref(), self.clock.now_ms())?;
        Ok(serde_json::to_string(sealed.as_ref().unwrap_or(value)).expect("domain types always serialize"))
    }

    pub(super) fn decode<T: Stored>(&self, id: &str, raw: &str) -> Result<T, DomainError> {
        let mut value: T = serde_json::from_str(raw).map_err(|source| DomainError::Corrupt { kind: T::KIND, id: id.to_owned(), source })?;
        value.open(self.cipher.as_ref(), self.clock.now_ms())?;
        Ok(value)
    }

    pub(super) fn decode_all<T: Stored>(&self, raw: Vec<(String, String)>) -> Result<Vec<T>, DomainError> {
        raw.iter().map(|(id, json)| self.decode(id, json)).collect()
    }
}

/// What the store keeps as JSON in a hash. Only webhooks hold secrets; the default methods do
/// nothing.
pub(super) trait Stored: Serialize + DeserializeOwned + Clone {
    const KIND: &'static str;

    /// A copy with its secrets sealed, or `None` when there is nothing to seal; `now_ms`: the
    /// time of the write.
    fn sealed(&self, _cipher: Option<&SecretCipher>, _now_ms: u64) -> Result<Option<Self>, DomainError> {
        Ok(None)
    }

    /// Opens the secrets of a value just read at `now_ms`.
    fn open(&mut self, _cipher: Option<&SecretCipher>, _now_ms: u64) -> Result<(), DomainError> {
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
    fn sealed(&self, cipher: Option<&SecretCipher>, now_ms: u64) -> Result<Option<Self>, DomainError> {
        let mut copy = self.clone();
        copy.drop_expired_secret(now_ms);
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

    fn open(&mut self, cipher: Option<&SecretCipher>, now_ms: u64) -> Result<(), DomainError> {
        self.drop_expired_secret(now_ms);
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

/// Ok when the stored `version` is the `expected` one (or none is expected); otherwise
/// `ABORTED` with reason `STALE_ETAG`.
pub(super) fn check_version(kind: &str, id: &str, version: u64, expected: Option<u64>) -> Result<(), DomainError> {
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
}
