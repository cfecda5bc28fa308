//! The reserved fields an event entry may carry besides the contract's own (docs/contract.md §1):
//! written by wss when it puts an event back (a dead letter's redelivery, a resend, a replay) or
//! hands on a broker's message, and read when an entry is parsed (`crate::pipeline::event`).
//!
//! Apart from the parser so that the dead letters (`crate::deadletter`), which the parser's
//! rejections name, can make an event's fields without importing the parser.

/// Reserved field: route the event to this webhook only (if it is one of the event's tenant's).
pub const ONLY_WEBHOOK_FIELD: &str = "_wss_webhook";
/// Reserved field: the event's `created_at` in Unix milliseconds, instead of the entry id's.
pub const CREATED_AT_FIELD: &str = "_wss_created_at_ms";
