//! The Redis Streams source (docs/contract.md §1): the stream `<prefix>events`, consumer group [`GROUP`].
//!
//! - [`reader`] (thread `wss-reader`) reads it with `XREADGROUP`, this consumer's own pending
//!   entries first, through a script that stubs oversized entries ([`poison`]);
//! - [`leases`] (thread `wss-leases`) renews this instance's entries and claims those of
//!   instances that stopped renewing theirs;
//! - [`queue_ack`] is the acknowledgement: an `XACK` queued in the outcome stage's `MULTI` with
//!   the hand-offs and records of the same batch, so that acknowledging costs one command per
//!   batch, not per delivery (the Redis stream's entries carry no `BrokerHold`: they are
//!   acknowledged here, not through `super::Ack`);
//! - [`retention`] (thread `wss-retention`) trims what every group is done with;
//! - the lag (`XINFO GROUPS`: `lag`, `pending`) is read by `crate::pipeline::gauges`.

pub(crate) mod leases;
pub mod poison;
pub(crate) mod reader;
pub(crate) mod retention;

/// The consumer group every instance reads `<prefix>events` in (docs/contract.md §6).
pub const GROUP: &str = "wss";

/// Why reading the stream failed: Redis's own error, or a reply that could not be read — each
/// kept as it came, so that the threads tell an outage (reconnect quietly) from the rest by type.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// `command`'s reply was not shaped as a stream reply: not a Redis server wss supports
    /// (Redis 7 or later, or a proxy that passes stream commands through unchanged)?
    #[error("reading the reply to {command}: {source}; is the server Redis 7 or later, reached without a proxy that rewrites replies?")]
    Shape {
        command: &'static str,
        #[source]
        source: crate::streams::ShapeError,
    },
    /// `command`'s reply lacked what it always carries (`detail` says what).
    #[error("reading the reply to {command}: {detail}")]
    Reply { command: &'static str, detail: String },
}

impl ReadError {
    /// The connection failed (or timed out): a reconnect is the remedy, and the outage is logged
    /// once (`crate::redis_conn::RedisTarget::connection_lost`).
    pub fn connection_lost(&self) -> Option<&redis::RedisError> {
        match self {
            ReadError::Redis(err) if crate::redis_conn::is_connection_error(err) => Some(err),
            _ => None,
        }
    }

    /// The error code Redis answered with (`NOGROUP`, …), if it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReadError::Redis(err) => err.code(),
            _ => None,
        }
    }

    /// A reply to `command` that was not shaped as expected.
    pub fn shape(command: &'static str) -> impl FnOnce(crate::streams::ShapeError) -> Self {
        move |source| ReadError::Shape { command, source }
    }
}

/// Queues the acknowledgement of `ids` of `stream` in `pipe` (the outcome stage's transaction).
pub fn queue_ack(pipe: &mut redis::Pipeline, stream: &str, ids: &[String]) {
    if !ids.is_empty() {
        pipe.cmd("XACK").arg(stream).arg(GROUP).arg(ids).ignore();
    }
}
