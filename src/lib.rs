//! wss — the Webhook Sender Service.
//!
//! Internal systems append events to a Redis stream; wss delivers each to the webhooks its tenant
//! registered, signed with HMAC-SHA256 over timestamp ++ body, retried with exponential backoff,
//! and dead-lettered when the retries run out. A gRPC control plane manages tenants, webhooks and
//! retry policies. See docs/architecture.md for the picture and docs/contract.md for the contract.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod crypto;
pub mod deadletter;
pub mod domain;
pub mod expr;
pub mod grpc;
pub mod health;
pub mod history;
pub mod http;
pub mod http_listener;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod pipeline;
pub mod receive;
pub mod redis_conn;
pub mod reserved;
pub mod retry;
pub mod shard;
pub mod signature;
pub mod source;
pub mod stats;
pub mod status;
pub mod streams;
pub mod trace_context;

pub mod proto {
    //! Code generated from `proto/wss/v1/*.proto` by `build.rs`.
    #![allow(clippy::all)]
    tonic::include_proto!("wss.v1");
    /// The encoded descriptor set served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wss_descriptor");
}

pub use signature::verify;
