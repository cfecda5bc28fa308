//! The store's one connection and its optimistic transaction: every other module of the store
//! reaches Redis through [`Store::with_conn`] or [`Store::mutate`].
//!
//! The store holds one connection behind a mutex: control-plane traffic is light, and a
//! connection that failed is dropped and made anew on the next call.
//!
//! Writes to the configuration run as optimistic transactions (`WATCH` the four hashes, check,
//! `MULTI … EXEC`, retry when another writer got in between), so that checks across resources —
//! a webhook's tenant and policy exist, a policy in use cannot be deleted — hold under concurrent
//! writers and instances. Each one bumps `P config:version`, which instances poll to reload.

use std::time::Duration;

use parking_lot::Mutex;
use redis::Pipeline;

use crate::{
    clock::Clock,
    crypto::SecretCipher,
    domain::DomainError,
    keys::Keys,
    redis_conn::Conn,
    redis_conn::RedisTarget,
    streams::{parse_entries, RawEntry},
};

/// The control plane's storage: one per process, shared by the gRPC services, the routing
/// snapshot's loader and the status page; its methods are spread over the modules of
/// `domain::store` by what they store.
pub struct Store {
    target: RedisTarget,
    keys: Keys,
    conn: Mutex<Option<Conn>>,
    /// Seals webhook secrets at rest; `None`: stored in clear.
    pub(super) cipher: Option<SecretCipher>,
    /// How long a published `event_id` is remembered (`WSS_DEDUPE_WINDOW`).
    pub(super) dedupe_window: Duration,
    /// Where records' times (`updated_at`, a previous secret's end, stats minutes) come from.
    pub(super) clock: Clock,
}

impl Store {
    pub fn new(target: RedisTarget, keys: Keys) -> Self {
        Self { target, keys, conn: Mutex::new(None), cipher: None, dedupe_window: Duration::from_secs(86_400), clock: Clock::System }
    }

    /// Reads the time from `clock` (the system's by default).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
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
    pub(super) fn with_conn<T>(&self, f: impl FnOnce(&mut Conn, &Keys) -> Result<T, DomainError>) -> Result<T, DomainError> {
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

    pub(super) fn unavailable(&self, source: redis::RedisError) -> DomainError {
        DomainError::Unavailable { url: self.target.display_url().to_owned(), source }
    }

    /// An optimistic transaction over the four resource hashes (tenants, webhooks, policies,
    /// tokens): `check` reads what it needs and queues its writes on the pipeline (or refuses);
    /// the version bump is added here. Retried from the start when another writer changed a
    /// watched key meanwhile.
    pub(super) fn mutate<T>(
        &self,
        mut check: impl FnMut(&mut Conn, &Keys, &mut Pipeline) -> Result<T, DomainError>,
    ) -> Result<T, DomainError> {
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

    /// Entries of stream `key` between two `XRANGE` bounds (ids, `(id` for "after", `-`, `+`),
    /// at most `count` of them: oldest first from `start` to `end`, or with `newest_first`
    /// (`XREVRANGE`) from `end` down to `start`.
    pub(super) fn range(
        &self,
        con: &mut Conn,
        key: &str,
        (start, end): (&str, &str),
        count: Option<usize>,
        newest_first: bool,
    ) -> Result<Vec<RawEntry>, DomainError> {
        let command = if newest_first { "XREVRANGE" } else { "XRANGE" };
        let mut cmd = redis::cmd(command);
        if newest_first {
            cmd.arg(key).arg(end).arg(start);
        } else {
            cmd.arg(key).arg(start).arg(end);
        }
        if let Some(count) = count {
            cmd.arg("COUNT").arg(count);
        }
        let reply: redis::Value = cmd.query(con).map_err(|e| self.unavailable(e))?;
        parse_entries(reply)
            .map_err(|e| self.unavailable(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, command, e.to_string()))))
    }
}
