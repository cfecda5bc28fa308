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

/// Queues the acknowledgement of `ids` of `stream` in `pipe` (the outcome stage's transaction).
pub fn queue_ack(pipe: &mut redis::Pipeline, stream: &str, ids: &[String]) {
    if !ids.is_empty() {
        pipe.cmd("XACK").arg(stream).arg(GROUP).arg(ids).ignore();
    }
}
