//! Storage in Redis of what the control plane manages and reads, split by what it stores:
//!
//! - [`config`]: tenants, webhooks, retry policies and the configuration version;
//! - [`tokens`]: tenant tokens' records;
//! - [`publish`]: events published through the API;
//! - [`dead_letters`]: reading dead letters;
//! - [`redelivery`]: putting events back (a dead letter's redelivery, resend, replay);
//! - [`history`] and [`stats`]: the delivery history and a webhook's statistics and backlog, as
//!   the control plane reads them (their layouts belong to `crate::history`, `crate::stats` and
//!   `crate::pipeline::backlog`).
//!
//! All of them are methods of one [`Store`], which holds the one connection and runs the
//! optimistic transaction ([`connection`]); how a record is encoded, versioned, sealed and paged
//! is in [`records`]. Key names come from `crate::keys`, the clock from `crate::clock`.
//!
//! This file only names the parts: items that several of them share live in a part of their
//! own, so that no part imports this one (tests/architecture.rs).

pub mod config;
pub mod connection;
pub mod dead_letters;
pub mod history;
pub mod publish;
pub mod records;
pub mod redelivery;
pub mod stats;
pub mod tokens;

pub use config::{ConfigHead, Everything};
pub use connection::Store;
pub use dead_letters::MAX_DEAD_LETTER_PAGE_BYTES;
pub use publish::Published;
pub use records::{paginate, Page, Versioned};
