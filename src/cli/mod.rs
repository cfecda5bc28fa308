//! The admin CLI: `wss <resource> <verb>` for every control-plane call, over gRPC, so that an
//! operator needs neither grpcurl nor jq (docs/cli.md).
//!
//! Each command is parsed by clap into a request message, sent with the tonic clients of
//! `wss::proto` on a small runtime of its own (as the bench does), and its answer printed by
//! [`render`]: a table on a terminal, JSON otherwise (`--output` chooses). The connection options
//! are the same for every command and mirror the server's: `--server` (`WSS_SERVER`, the local
//! control plane by default), `--token` (`WSS_TOKEN`, sent as `authorization: Bearer …`), and for
//! a TLS control plane `--ca-file`, with `--client-cert-file`/`--client-key-file` for mutual TLS.
//!
//! The server's refusals are printed as it gave them — the status code and its message, which
//! names the field (`wss: INVALID_ARGUMENT: url: …`) — with a hint for the two an operator meets
//! first (no token, server not reachable). Exit status: 0 on success, 1 when the server refused
//! the call, 2 when it could not be made (bad arguments, no connection).
//!
//! `wss config check FILE` lives here too: it runs the file through the real configuration loader
//! and prints every problem.

mod render;

use std::{
    collections::HashMap,
    future::Future,
    io::{IsTerminal, Read, Write},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use render::{Printed, Record};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request, Status,
};
use wss::proto::{
    delivery_service_client::DeliveryServiceClient, event_service_client::EventServiceClient, redeliver_dead_letter_request::Target,
    retry_policy_service_client::RetryPolicyServiceClient, tenant_service_client::TenantServiceClient,
    token_service_client::TokenServiceClient, webhook_service_client::WebhookServiceClient, *,
};

/// The admin commands, flattened into `wss`'s own.
/// `--limit`, `--page-token`, `--all` of the commands that work through many items in calls
/// (redeliver, replay).
#[derive(Args)]
pub struct Calls {
    /// At most this many per call (server default 100, at most 1000).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// Continue where a previous call stopped (its next_page_token).
    #[arg(long, default_value = "")]
    page_token: String,
    /// Call again until nothing is left: every matching dead letter tried, the whole period
    /// replayed.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
pub enum Admin {
    /// Tenants: who events belong to (create, get, list, update, delete).
    Tenant(Resource<TenantVerb>),
    /// Webhooks: where a tenant's events go (create, get, list, update, delete, rotate-secret, stats, test).
    Webhook(Resource<WebhookVerb>),
    /// Retry policies: when failed deliveries are tried again (create, get, list, update, delete).
    Policy(Resource<PolicyVerb>),
    /// Tenant tokens for the control plane (create, list, revoke).
    Token(Resource<TokenVerb>),
    /// Deliveries: what happened to events (list, get, resend).
    Delivery(Resource<DeliveryVerb>),
    /// Dead letters: deliveries that will not be tried again by themselves (list, redeliver).
    DeadLetter(Resource<DeadLetterVerb>),
    /// Events: publish one through the control plane (as an XADD would), replay a period.
    Event(Resource<EventVerb>),
    /// The service's configuration file.
    Config {
        #[command(subcommand)]
        verb: ConfigVerb,
    },
}

#[derive(Subcommand)]
pub enum ConfigVerb {
    /// Check a configuration file with the loader `wss serve --config` uses: defaults, then the
    /// file (the environment is not read). Prints every problem; exit status 1 when there is one.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

/// A resource's verbs, with the connection options (which may come before or after the verb).
#[derive(Args)]
pub struct Resource<V: Subcommand> {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    verb: V,
}

/// How to reach the control plane, and how to print.
#[derive(Args)]
#[command(next_help_heading = "Connection and output")]
pub struct Conn {
    /// The control plane: host:port, http://host:port or https://host:port (https: TLS).
    #[arg(long, env = "WSS_SERVER", default_value = "127.0.0.1:50051", global = true)]
    server: String,
    /// Bearer token: the admin token (WSS_ADMIN_TOKEN of the server) or a tenant token.
    #[arg(long, env = "WSS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM CA certificate to check a TLS control plane's certificate with (implies TLS).
    #[arg(long, env = "WSS_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// PEM client certificate, for a control plane that requires one (mutual TLS).
    #[arg(long, env = "WSS_CLIENT_CERT_FILE", global = true, requires = "client_key_file")]
    client_cert_file: Option<PathBuf>,
    /// PEM private key of --client-cert-file.
    #[arg(long, env = "WSS_CLIENT_KEY_FILE", global = true, requires = "client_cert_file")]
    client_key_file: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --server).
    #[arg(long, global = true)]
    tls_server_name: Option<String>,
    /// table or json (default: table on a terminal, json otherwise).
    #[arg(long, short = 'o', value_enum, global = true)]
    output: Option<Output>,
    /// Give up on a call after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `--page-size`, `--page-token`, `--all` of every list.
#[derive(Args)]
pub struct Paging {
    /// Items per page (server default 100, at most 1000).
    #[arg(long, default_value_t = 0)]
    page_size: u32,
    /// Continue after a previous page (its next_page_token).
    #[arg(long, default_value = "")]
    page_token: String,
    /// Follow next_page_token until the last page.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
pub enum TenantVerb {
    /// Create a tenant.
    Create {
        /// `[a-z0-9][a-z0-9_-]{0,63}`, immutable.
        tenant_id: String,
        #[arg(long, default_value = "")]
        display_name: String,
        /// Policy for its webhooks that name none (default: `default`).
        #[arg(long, default_value = "")]
        retry_policy: String,
        /// Create it disabled (its events are dead-lettered as tenant_disabled).
        #[arg(long)]
        disabled: bool,
    },
    /// Show one tenant.
    Get { tenant_id: String },
    /// List tenants by id.
    List(Paging),
    /// Change the given fields.
    Update {
        tenant_id: String,
        #[arg(long)]
        display_name: Option<String>,
        /// Empty: back to the built-in `default`.
        #[arg(long)]
        retry_policy: Option<String>,
        #[arg(long)]
        disabled: Option<bool>,
    },
    /// Delete a tenant with its webhooks.
    Delete { tenant_id: String },
}

/// `--ordering` (docs/contract.md §9, docs/ordering.md).
#[derive(Clone, Copy, ValueEnum)]
pub enum OrderingFlag {
    /// Attempts may overlap (the default).
    Unordered,
    /// One attempt at a time, in stream order.
    Fifo,
}

impl OrderingFlag {
    fn to_proto(self) -> i32 {
        match self {
            OrderingFlag::Unordered => wss::proto::Ordering::Unordered as i32,
            OrderingFlag::Fifo => wss::proto::Ordering::Fifo as i32,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Scheme {
    Wss,
    StandardWebhooks,
}

#[derive(Subcommand)]
pub enum WebhookVerb {
    /// Register a webhook; prints its secret (the only time it is shown).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        url: String,
        /// Event-type pattern (`order.*`, `*.created`); repeat for more; none: every type.
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// CEL boolean expression over `event` (try it first with `wss check-expr`).
        #[arg(long, default_value = "")]
        filter: String,
        /// CEL expression whose value is the body instead of the envelope.
        #[arg(long, default_value = "")]
        transform: String,
        #[arg(long, default_value = "")]
        retry_policy: String,
        /// NAME=VALUE header added to every request; repeat for more.
        #[arg(long = "header", value_parser = key_value)]
        headers: Vec<(String, String)>,
        #[arg(long, default_value = "")]
        description: String,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        #[arg(long, value_enum, default_value_t = Scheme::Wss)]
        scheme: Scheme,
        /// The signing secret (default: the server generates one).
        #[arg(long, default_value = "", hide_default_value = true)]
        secret: String,
        /// fifo: one attempt at a time, in stream order (docs/ordering.md).
        #[arg(long, value_enum, default_value_t = OrderingFlag::Unordered)]
        ordering: OrderingFlag,
        /// Attempts per second at most, across all instances (0: unlimited; docs/rate-limits.md).
        #[arg(long = "rate-limit", default_value_t = 0)]
        rate_limit: u32,
    },
    /// Show one webhook (without its secret).
    Get { webhook_id: String },
    /// List webhooks by id.
    List {
        /// Only this tenant's.
        #[arg(long, default_value = "")]
        tenant: String,
        #[command(flatten)]
        paging: Paging,
    },
    /// Change the given fields.
    Update {
        webhook_id: String,
        #[arg(long)]
        url: Option<String>,
        /// Replaces the patterns; repeat for more.
        #[arg(long = "event-type", conflicts_with = "all_event_types")]
        event_types: Vec<String>,
        /// Remove every pattern: the webhook gets every event type.
        #[arg(long)]
        all_event_types: bool,
        /// Empty: remove the filter.
        #[arg(long)]
        filter: Option<String>,
        /// Empty: remove the transform.
        #[arg(long)]
        transform: Option<String>,
        /// Empty: back to the tenant's default.
        #[arg(long)]
        retry_policy: Option<String>,
        /// Replaces the headers; repeat for more.
        #[arg(long = "header", value_parser = key_value, conflicts_with = "no_headers")]
        headers: Vec<(String, String)>,
        /// Remove every header.
        #[arg(long)]
        no_headers: bool,
        #[arg(long)]
        description: Option<String>,
        /// true also clears disabled_reason.
        #[arg(long)]
        enabled: Option<bool>,
        /// fifo or unordered (docs/ordering.md).
        #[arg(long, value_enum)]
        ordering: Option<OrderingFlag>,
        /// Attempts per second at most (0: unlimited).
        #[arg(long = "rate-limit")]
        rate_limit: Option<u32>,
    },
    /// Delete a webhook (its scheduled retries are dead-lettered as webhook_deleted).
    Delete { webhook_id: String },
    /// Replace the secret; prints the new one (the only time it is shown).
    RotateSecret {
        webhook_id: String,
        /// How long the old secret keeps signing too (0s: switch at once).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        overlap: Duration,
        /// The new secret (default: the server generates one).
        #[arg(long, default_value = "", hide_default_value = true)]
        secret: String,
    },
    /// How the webhook is doing: attempts, success rate, circuit, backlog.
    Stats {
        webhook_id: String,
        /// What the counts cover, back from now (60s to 1h).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        window: Duration,
    },
    /// Send one signed test event now and show the receiver's answer (status, latency, error,
    /// start of the body); recorded in the history like any attempt, never retried.
    Test {
        webhook_id: String,
        /// The event type (default: wss.test).
        #[arg(long = "type", default_value = "")]
        event_type: String,
        /// The data, JSON text (default: {"test":true,...}).
        #[arg(long, default_value = "")]
        data: String,
    },
}

#[derive(Args)]
pub struct PolicyFields {
    /// Attempts in all, the first included (1..=50).
    #[arg(long)]
    max_attempts: Option<u32>,
    #[arg(long, value_parser = humantime::parse_duration)]
    initial_backoff: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    max_backoff: Option<Duration>,
    #[arg(long)]
    multiplier: Option<f64>,
    /// A fraction of each delay (0.0..=1.0).
    #[arg(long)]
    jitter: Option<f64>,
    /// Connect + send + response, for one attempt.
    #[arg(long, value_parser = humantime::parse_duration)]
    attempt_timeout: Option<Duration>,
}

#[derive(Subcommand)]
pub enum PolicyVerb {
    /// Create a policy; unset fields take the `default` policy's values.
    Create {
        policy_id: String,
        #[command(flatten)]
        fields: PolicyFields,
    },
    /// Show one policy.
    Get { policy_id: String },
    /// List policies by id, `default` included.
    List(Paging),
    /// Change the given fields.
    Update {
        policy_id: String,
        #[command(flatten)]
        fields: PolicyFields,
    },
    /// Delete a policy no webhook or tenant uses.
    Delete { policy_id: String },
}

#[derive(Subcommand)]
pub enum TokenVerb {
    /// Issue a token for a tenant; prints it (the only time it is shown).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (without the tokens themselves).
    List {
        #[arg(long, default_value = "")]
        tenant: String,
        #[command(flatten)]
        paging: Paging,
    },
    /// Revoke a token at once, on every instance.
    Revoke { token_id: String },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Retrying,
    Delivered,
    DeadLettered,
}

#[derive(Subcommand)]
pub enum DeliveryVerb {
    /// List deliveries, newest first.
    List {
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long, default_value = "")]
        webhook: String,
        /// Only the deliveries of this event id.
        #[arg(long, default_value = "")]
        event: String,
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Updated at or after: RFC 3339, or a duration ago (`1h`).
        #[arg(long, value_parser = time_arg)]
        after: Option<SystemTime>,
        /// Updated before: RFC 3339, or a duration ago.
        #[arg(long, value_parser = time_arg)]
        before: Option<SystemTime>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one delivery with all its attempts.
    Get { delivery_id: String },
    /// Attempt a delivered or dead-lettered delivery again, as a new delivery with the same event
    /// id, freshly signed; prints the new delivery's id.
    Resend { delivery_id: String },
}

#[derive(Subcommand)]
pub enum DeadLetterVerb {
    /// List dead letters, newest first.
    List {
        #[arg(long, default_value = "")]
        tenant: String,
        #[command(flatten)]
        paging: Paging,
    },
    /// Send dead letters again: one by id, or every one matching the filter flags (oldest first,
    /// --limit per call). Each is removed as it is sent, so running it twice sends nothing twice.
    Redeliver {
        /// One dead letter, by id (no filter flags then).
        #[arg(conflicts_with_all = ["tenant", "webhook", "reason", "after", "before", "all"])]
        dead_letter_id: Option<String>,
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long, default_value = "")]
        webhook: String,
        /// `max_attempts_exhausted`, `unknown_tenant`, `gone`, ...
        #[arg(long, default_value = "")]
        reason: String,
        /// Dead-lettered at or after: RFC 3339, or a duration ago (`1h`).
        #[arg(long, value_parser = time_arg)]
        after: Option<SystemTime>,
        /// Dead-lettered before: RFC 3339, or a duration ago.
        #[arg(long, value_parser = time_arg)]
        before: Option<SystemTime>,
        #[command(flatten)]
        calls: Calls,
    },
}

#[derive(Subcommand)]
pub enum EventVerb {
    /// Append an event to the stream.
    Publish {
        #[arg(long)]
        tenant: String,
        #[arg(long = "type")]
        event_type: String,
        /// The data, JSON text; `-` or absent: read from stdin.
        #[arg(long)]
        data: Option<String>,
        /// The event id receivers see (default: the stream entry id). Publishing the same id for
        /// the tenant again within WSS_DEDUPE_WINDOW appends nothing (duplicate: true).
        #[arg(long, default_value = "")]
        id: String,
        /// NAME=VALUE stored as a further stream field; repeat for more.
        #[arg(long = "attribute", value_parser = key_value)]
        attributes: Vec<(String, String)>,
    },
    /// Send a tenant's events of a period again to the webhooks that match them now (as far back
    /// as the stream retains entries, WSS_STREAM_RETENTION); --limit events per call.
    Replay {
        #[arg(long)]
        tenant: String,
        /// Only to this webhook of the tenant.
        #[arg(long, default_value = "")]
        webhook: String,
        /// Only events of this type pattern (`order.*`); repeat for more.
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// Events that entered the stream at or after: RFC 3339, or a duration ago (`1h`).
        #[arg(long, value_parser = time_arg)]
        since: SystemTime,
        /// Events that entered the stream before: RFC 3339, or a duration ago (default: now).
        #[arg(long, value_parser = time_arg)]
        until: Option<SystemTime>,
        #[command(flatten)]
        calls: Calls,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// RFC 3339 (`2026-12-06T04:00:00Z`), or a duration before now (`90m`).
fn time_arg(text: &str) -> Result<SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now().checked_sub(ago).ok_or_else(|| format!("{text} ago is before 1970")),
        Err(_) => Err(format!("{text:?} is neither an RFC 3339 time nor a duration ago like 1h")),
    }
}

fn pb_time(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// Why a command failed: the server refused it, or it could not be made.
enum Failure {
    Refused(Status),
    Other(anyhow::Error),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Self::Refused(status)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Self::Other(err)
    }
}

/// Runs an admin command; prints its answer or its error.
pub fn run(admin: Admin) -> ExitCode {
    let (conn, result) = match admin {
        Admin::Config { verb: ConfigVerb::Check { file } } => return config_check(&file),
        Admin::Tenant(r) => (r.conn, Box::new(move |c: Clients| Box::pin(tenant(c, r.verb)) as Call) as Command),
        Admin::Webhook(r) => (r.conn, Box::new(move |c: Clients| Box::pin(webhook(c, r.verb)) as Call) as Command),
        Admin::Policy(r) => (r.conn, Box::new(move |c: Clients| Box::pin(policy(c, r.verb)) as Call) as Command),
        Admin::Token(r) => (r.conn, Box::new(move |c: Clients| Box::pin(token(c, r.verb)) as Call) as Command),
        Admin::Delivery(r) => (r.conn, Box::new(move |c: Clients| Box::pin(delivery(c, r.verb)) as Call) as Command),
        Admin::DeadLetter(r) => (r.conn, Box::new(move |c: Clients| Box::pin(dead_letter(c, r.verb)) as Call) as Command),
        Admin::Event(r) => (r.conn, Box::new(move |c: Clients| Box::pin(event(c, r.verb)) as Call) as Command),
    };
    let output = conn.output.unwrap_or(if std::io::stdout().is_terminal() { Output::Table } else { Output::Json });
    let server = conn.server.clone();
    match execute(conn, result) {
        Ok(printed) => {
            let text = match output {
                Output::Json => format!("{:#}\n", printed.json),
                Output::Table => printed.table,
            };
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_err() {
                return ExitCode::from(2);
            }
            if let (Output::Table, Some(note)) = (output, printed.note) {
                eprintln!("{note}");
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Refused(status)) => {
            eprintln!("wss: {}", describe(&status, &server));
            ExitCode::from(1)
        }
        Err(Failure::Other(err)) => {
            eprintln!("wss: {err:#}");
            ExitCode::from(2)
        }
    }
}

type Call = std::pin::Pin<Box<dyn Future<Output = Result<Printed, Failure>>>>;
type Command = Box<dyn FnOnce(Clients) -> Call>;

fn execute(conn: Conn, command: Command) -> Result<Printed, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the CLI's gRPC runtime")?;
    runtime.block_on(async move {
        let clients = connect(&conn).await?;
        command(clients).await
    })
}

/// A status as `CODE: message`, with what to do for the usual first mistakes.
fn describe(status: &Status, server: &str) -> String {
    let code = code_name(status.code());
    let hint = match status.code() {
        Code::Unauthenticated => " (pass --token or set WSS_TOKEN: the server's WSS_ADMIN_TOKEN, or a tenant token)",
        Code::PermissionDenied => " (a tenant token reaches its own tenant only; admin calls need the admin token)",
        Code::Unavailable => " (is `wss serve` running there? check --server / WSS_SERVER, and --ca-file for a TLS control plane)",
        _ => "",
    };
    let message = if status.message().is_empty() { "(no message)" } else { status.message() };
    let details = details_of(status);
    if status.code() == Code::Unavailable {
        format!("{code}: {message} (server {server}){hint}{details}")
    } else {
        format!("{code}: {message}{hint}{details}")
    }
}

/// The status's `google.rpc` details as the CLI shows them: ` [reason POLICY_IN_USE]`, with the
/// field of an INVALID_ARGUMENT (` [reason INVALID_FIELD, field url]`); empty without details.
fn details_of(status: &Status) -> String {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let mut parts = Vec::new();
    if let Some(info) = details.error_info() {
        parts.push(format!("reason {}", info.reason));
    }
    if let Some(bad) = details.bad_request() {
        parts.extend(bad.field_violations.iter().map(|v| format!("field {}", v.field)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" [{}]", parts.join(", "))
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

/// One connection, and a client of every service on it.
struct Clients {
    tenants: TenantServiceClient<Svc>,
    webhooks: WebhookServiceClient<Svc>,
    policies: RetryPolicyServiceClient<Svc>,
    tokens: TokenServiceClient<Svc>,
    deliveries: DeliveryServiceClient<Svc>,
    events: EventServiceClient<Svc>,
}

/// The endpoint URI of `--server`, and whether it speaks TLS.
fn endpoint_uri(server: &str, tls_requested: bool) -> Result<(String, bool), String> {
    let server = server.trim();
    if server.is_empty() {
        return Err("--server is empty: give host:port, e.g. 127.0.0.1:50051".into());
    }
    if let Some(rest) = server.strip_prefix("https://") {
        return Ok((format!("https://{}", rest.trim_end_matches('/')), true));
    }
    if let Some(rest) = server.strip_prefix("http://") {
        if tls_requested {
            return Err(format!("--server {server} says http://, but TLS options were given: use https:// (or host:port)"));
        }
        return Ok((format!("http://{}", rest.trim_end_matches('/')), false));
    }
    if server.contains("://") {
        return Err(format!("--server {server}: only http:// and https:// are understood"));
    }
    Ok((format!("{}://{server}", if tls_requested { "https" } else { "http" }), tls_requested))
}

async fn connect(conn: &Conn) -> anyhow::Result<Clients> {
    let (uri, tls) = endpoint_uri(&conn.server, conn.ca_file.is_some() || conn.client_cert_file.is_some()).map_err(anyhow::Error::msg)?;
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("--server {}: not a usable address (give host:port)", conn.server))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(conn.timeout);
    if tls {
        let Some(ca_file) = &conn.ca_file else {
            anyhow::bail!("--server {} is https://: give the CA that signed its certificate with --ca-file (or WSS_CA_FILE)", conn.server);
        };
        let ca = std::fs::read(ca_file).with_context(|| format!("reading --ca-file {}", ca_file.display()))?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let (Some(cert), Some(key)) = (&conn.client_cert_file, &conn.client_key_file) {
            let cert_pem = std::fs::read(cert).with_context(|| format!("reading --client-cert-file {}", cert.display()))?;
            let key_pem = std::fs::read(key).with_context(|| format!("reading --client-key-file {}", key.display()))?;
            config = config.identity(Identity::from_pem(cert_pem, key_pem));
        }
        if let Some(name) = &conn.tls_server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(config).context("setting up TLS for the control plane connection")?;
    }
    let channel = endpoint.connect().await.map_err(|err| {
        let mut text = format!("cannot connect to the control plane at {uri}: {err}");
        let mut source = std::error::Error::source(&err);
        let mut last = err.to_string();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !last.ends_with(&cause_text) {
                text.push_str(&format!(": {cause_text}"));
            }
            last = cause_text;
            source = cause.source();
        }
        anyhow::anyhow!("{text} (is `wss serve` running there? set --server or WSS_SERVER)")
    })?;
    let bearer = match &conn.token {
        None => Bearer(None),
        Some(token) => Bearer(Some(
            format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| anyhow::anyhow!("--token / WSS_TOKEN holds characters a header cannot carry"))?,
        )),
    };
    let svc = || InterceptedService::new(channel.clone(), bearer.clone());
    Ok(Clients {
        tenants: TenantServiceClient::new(svc()),
        webhooks: WebhookServiceClient::new(svc()),
        policies: RetryPolicyServiceClient::new(svc()),
        tokens: TokenServiceClient::new(svc()),
        deliveries: DeliveryServiceClient::new(svc()),
        events: EventServiceClient::new(svc()),
    })
}

/// One page, or every page with `--all`, of a list rpc (`$client.$method`, whose response lists
/// `$items`), printed as `$key` with `$render` and `$columns`; `$request` makes the request of a
/// page from its size and token. A macro: each list rpc has its own client, request and
/// response types, and the pages are otherwise fetched and printed alike.
macro_rules! listing {
    ($paging:expr, $client:expr, $method:ident, $request:expr, $items:ident, $key:expr, $render:path, $columns:expr) => {{
        let make = $request;
        let (items, next) = pages(&$paging, |page_size, page_token| {
            let mut client = $client.clone();
            let request = make(page_size, page_token);
            async move {
                let r = client.$method(request).await?.into_inner();
                Ok((r.$items, r.next_page_token))
            }
        })
        .await?;
        page($key, items.iter().map($render).collect(), $columns, &next)
    }};
}

/// Fetches one page, or every page with `--all`: (items, the token of the page after).
async fn pages<T, F, Fut>(paging: &Paging, mut fetch: F) -> Result<(Vec<T>, String), Status>
where
    F: FnMut(u32, String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut items = Vec::new();
    let mut token = paging.page_token.clone();
    loop {
        let (page, next) = fetch(paging.page_size, token).await?;
        items.extend(page);
        if !paging.all || next.is_empty() {
            return Ok((items, next));
        }
        token = next;
    }
}

fn page(key: &str, records: Vec<Record>, columns: &[&str], next: &str) -> Printed {
    Printed::page(key, &records, columns, next)
}

/// One record's answer: the call's response, rendered.
async fn one<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    render: fn(&T) -> render::Record,
) -> Result<Printed, Failure> {
    Ok(Printed::one(&render(&call.await?.into_inner())))
}

/// A deletion's answer: the response's fields, and a line for people.
fn done(json: serde_json::Value, line: String) -> Printed {
    Printed { json, table: format!("{line}\n"), note: None }
}

async fn tenant(mut c: Clients, verb: TenantVerb) -> Result<Printed, Failure> {
    const COLUMNS: &[&str] = &["tenant_id", "display_name", "default_retry_policy_id", "disabled", "created_at"];
    Ok(match verb {
        TenantVerb::Create { tenant_id, display_name, retry_policy, disabled } => {
            let request = CreateTenantRequest { tenant_id, display_name, default_retry_policy_id: retry_policy, disabled };
            one(c.tenants.create_tenant(request), render::tenant).await?
        }
        TenantVerb::Get { tenant_id } => one(c.tenants.get_tenant(GetTenantRequest { tenant_id }), render::tenant).await?,
        TenantVerb::List(paging) => {
            let request = |page_size, page_token| ListTenantsRequest { page_size, page_token };
            listing!(paging, c.tenants, list_tenants, request, tenants, "tenants", render::tenant, COLUMNS)
        }
        TenantVerb::Update { tenant_id, display_name, retry_policy, disabled } => {
            let request =
                UpdateTenantRequest { tenant_id, display_name, default_retry_policy_id: retry_policy, disabled, ..Default::default() };
            one(c.tenants.update_tenant(request), render::tenant).await?
        }
        TenantVerb::Delete { tenant_id } => {
            let r = c.tenants.delete_tenant(DeleteTenantRequest { tenant_id: tenant_id.clone() }).await?.into_inner();
            done(
                serde_json::json!({ "deleted_webhooks": r.deleted_webhooks }),
                format!("deleted tenant {tenant_id} and its {} webhook(s)", r.deleted_webhooks),
            )
        }
    })
}

async fn webhook(mut c: Clients, verb: WebhookVerb) -> Result<Printed, Failure> {
    const COLUMNS: &[&str] = &[
        "webhook_id",
        "tenant_id",
        "url",
        "event_types",
        "enabled",
        "ordering",
        "rate_limit_per_second",
        "disabled_reason",
        "description",
    ];
    Ok(match verb {
        WebhookVerb::Create {
            tenant,
            url,
            event_types,
            filter,
            transform,
            retry_policy,
            headers,
            description,
            disabled,
            scheme,
            secret,
            ordering,
            rate_limit,
        } => {
            // `..Default::default()`: fields this CLI has no flag for stay unset (newer servers
            // may have more); the secret is set after, so that the literal never names them all.
            let mut request = CreateWebhookRequest {
                tenant_id: tenant,
                url,
                event_types,
                filter,
                transform,
                retry_policy_id: retry_policy,
                headers: headers.into_iter().collect::<HashMap<_, _>>(),
                description,
                enabled: disabled.then_some(false),
                signature_scheme: match scheme {
                    Scheme::Wss => SignatureScheme::Wss,
                    Scheme::StandardWebhooks => SignatureScheme::StandardWebhooks,
                } as i32,
                ..Default::default()
            };
            request.secret = secret;
            request.ordering = ordering.to_proto();
            request.rate_limit_per_second = rate_limit;
            one(c.webhooks.create_webhook(request), render::webhook).await?
        }
        WebhookVerb::Get { webhook_id } => one(c.webhooks.get_webhook(GetWebhookRequest { webhook_id }), render::webhook).await?,
        WebhookVerb::List { tenant, paging } => {
            let request = |page_size, page_token| ListWebhooksRequest { tenant_id: tenant.clone(), page_size, page_token };
            listing!(paging, c.webhooks, list_webhooks, request, webhooks, "webhooks", render::webhook, COLUMNS)
        }
        WebhookVerb::Update {
            webhook_id,
            url,
            event_types,
            all_event_types,
            filter,
            transform,
            retry_policy,
            headers,
            no_headers,
            description,
            enabled,
            ordering,
            rate_limit,
        } => {
            // As for create: unset fields are left as they are by the server.
            let mut request = UpdateWebhookRequest {
                webhook_id,
                url,
                event_types: (all_event_types || !event_types.is_empty()).then_some(EventTypes { patterns: event_types }),
                filter,
                transform,
                retry_policy_id: retry_policy,
                headers: (no_headers || !headers.is_empty()).then(|| Headers { headers: headers.into_iter().collect() }),
                description,
                ..Default::default()
            };
            request.enabled = enabled;
            request.ordering = ordering.map(OrderingFlag::to_proto);
            request.rate_limit_per_second = rate_limit;
            one(c.webhooks.update_webhook(request), render::webhook).await?
        }
        WebhookVerb::Delete { webhook_id } => {
            c.webhooks.delete_webhook(DeleteWebhookRequest { webhook_id: webhook_id.clone() }).await?;
            done(serde_json::json!({}), format!("deleted webhook {webhook_id}"))
        }
        WebhookVerb::RotateSecret { webhook_id, overlap, secret } => {
            let request = RotateWebhookSecretRequest { webhook_id, overlap: Some(pb_duration(overlap)), secret };
            one(c.webhooks.rotate_webhook_secret(request), render::webhook).await?
        }
        WebhookVerb::Stats { webhook_id, window } => {
            let request = GetWebhookStatsRequest { webhook_id, window: Some(pb_duration(window)) };
            one(c.webhooks.get_webhook_stats(request), render::stats).await?
        }
        WebhookVerb::Test { webhook_id, event_type, data } => {
            let request = SendTestEventRequest { webhook_id, event_type, data };
            render::test_event(&c.webhooks.send_test_event(request).await?.into_inner())
        }
    })
}

/// A create or an update request with the policy's fields from the command line: two proto
/// messages with the same six fields (the update's others given as `..rest`).
macro_rules! policy_request {
    ($request:ident, $policy_id:expr, $f:expr $(, ..$rest:expr)?) => {
        $request {
            policy_id: $policy_id,
            max_attempts: $f.max_attempts,
            initial_backoff: $f.initial_backoff.map(pb_duration),
            max_backoff: $f.max_backoff.map(pb_duration),
            multiplier: $f.multiplier,
            jitter: $f.jitter,
            attempt_timeout: $f.attempt_timeout.map(pb_duration),
            $(..$rest)?
        }
    };
}

async fn policy(mut c: Clients, verb: PolicyVerb) -> Result<Printed, Failure> {
    const COLUMNS: &[&str] = &["policy_id", "max_attempts", "initial_backoff", "max_backoff", "multiplier", "jitter", "attempt_timeout"];
    Ok(match verb {
        PolicyVerb::Create { policy_id, fields: f } => {
            let request = policy_request!(CreateRetryPolicyRequest, policy_id, f);
            one(c.policies.create_retry_policy(request), render::policy).await?
        }
        PolicyVerb::Get { policy_id } => one(c.policies.get_retry_policy(GetRetryPolicyRequest { policy_id }), render::policy).await?,
        PolicyVerb::List(paging) => {
            let request = |page_size, page_token| ListRetryPoliciesRequest { page_size, page_token };
            listing!(paging, c.policies, list_retry_policies, request, retry_policies, "retry_policies", render::policy, COLUMNS)
        }
        PolicyVerb::Update { policy_id, fields: f } => {
            let request = policy_request!(UpdateRetryPolicyRequest, policy_id, f, ..Default::default());
            one(c.policies.update_retry_policy(request), render::policy).await?
        }
        PolicyVerb::Delete { policy_id } => {
            c.policies.delete_retry_policy(DeleteRetryPolicyRequest { policy_id: policy_id.clone() }).await?;
            done(serde_json::json!({}), format!("deleted retry policy {policy_id}"))
        }
    })
}

async fn token(mut c: Clients, verb: TokenVerb) -> Result<Printed, Failure> {
    Ok(match verb {
        TokenVerb::Create { tenant, description } => {
            one(c.tokens.create_token(CreateTokenRequest { tenant_id: tenant, description }), render::token).await?
        }
        TokenVerb::List { tenant, paging } => {
            let request = |page_size, page_token| ListTokensRequest { tenant_id: tenant.clone(), page_size, page_token };
            let columns = &["token_id", "tenant_id", "description", "created_at"];
            listing!(paging, c.tokens, list_tokens, request, tokens, "tokens", render::token, columns)
        }
        TokenVerb::Revoke { token_id } => {
            c.tokens.revoke_token(RevokeTokenRequest { token_id: token_id.clone() }).await?;
            done(serde_json::json!({}), format!("revoked token {token_id}"))
        }
    })
}

async fn delivery(mut c: Clients, verb: DeliveryVerb) -> Result<Printed, Failure> {
    const COLUMNS: &[&str] =
        &["delivery_id", "tenant_id", "webhook_id", "event_id", "event_type", "status", "attempt_count", "last_status_code", "updated_at"];
    Ok(match verb {
        DeliveryVerb::List { tenant, webhook, event, status, after, before, paging } => {
            let status = match status {
                None => DeliveryStatus::Unspecified,
                Some(StatusArg::Retrying) => DeliveryStatus::Retrying,
                Some(StatusArg::Delivered) => DeliveryStatus::Delivered,
                Some(StatusArg::DeadLettered) => DeliveryStatus::DeadLettered,
            } as i32;
            let request = |page_size, page_token| ListDeliveriesRequest {
                tenant_id: tenant.clone(),
                webhook_id: webhook.clone(),
                event_id: event.clone(),
                status,
                updated_after: after.map(pb_time),
                updated_before: before.map(pb_time),
                page_size,
                page_token,
                ..Default::default()
            };
            listing!(paging, c.deliveries, list_deliveries, request, deliveries, "deliveries", render::delivery, COLUMNS)
        }
        DeliveryVerb::Get { delivery_id } => one(c.deliveries.get_delivery(GetDeliveryRequest { delivery_id }), render::delivery).await?,
        DeliveryVerb::Resend { delivery_id } => {
            let r = c.deliveries.resend_delivery(ResendDeliveryRequest { delivery_id }).await?.into_inner();
            Printed::one(&Record(vec![
                ("delivery_id", r.delivery_id.into()),
                ("event_id", r.event_id.into()),
                ("webhook_id", r.webhook_id.into()),
                ("stream_entry_id", r.stream_entry_id.into()),
                ("event_source", r.event_source.into()),
            ]))
        }
    })
}

async fn dead_letter(mut c: Clients, verb: DeadLetterVerb) -> Result<Printed, Failure> {
    const COLUMNS: &[&str] = &["dead_letter_id", "reason", "tenant_id", "webhook_id", "event_id", "event_type", "dead_lettered_at"];
    Ok(match verb {
        DeadLetterVerb::List { tenant, paging } => {
            let request =
                |page_size, page_token| ListDeadLettersRequest { tenant_id: tenant.clone(), page_size, page_token, ..Default::default() };
            listing!(paging, c.deliveries, list_dead_letters, request, dead_letters, "dead_letters", render::dead_letter, COLUMNS)
        }
        DeadLetterVerb::Redeliver { dead_letter_id: Some(id), calls: Calls { limit, page_token, .. }, .. } => {
            let request = RedeliverDeadLetterRequest { target: Some(Target::DeadLetterId(id)), limit, page_token };
            render::redelivered(&c.deliveries.redeliver_dead_letter(request).await?.into_inner())
        }
        DeadLetterVerb::Redeliver {
            dead_letter_id: None,
            tenant,
            webhook,
            reason,
            after,
            before,
            calls: Calls { limit, mut page_token, all },
        } => {
            let filter = DeadLetterFilter {
                tenant_id: tenant,
                webhook_id: webhook,
                reason,
                dead_lettered_after: after.map(pb_time),
                dead_lettered_before: before.map(pb_time),
                ..Default::default()
            };
            // With --all, every call's answers are put together into one.
            let mut total = RedeliverDeadLetterResponse::default();
            loop {
                let request = RedeliverDeadLetterRequest { target: Some(Target::Filter(filter.clone())), limit, page_token };
                let r = c.deliveries.redeliver_dead_letter(request).await?.into_inner();
                total.redelivered.extend(r.redelivered);
                total.skipped.extend(r.skipped);
                total.redelivered_count += r.redelivered_count;
                total.next_page_token = r.next_page_token;
                if !all || total.next_page_token.is_empty() {
                    break;
                }
                page_token = total.next_page_token.clone();
            }
            render::redelivered(&total)
        }
    })
}

async fn event(mut c: Clients, verb: EventVerb) -> Result<Printed, Failure> {
    match verb {
        EventVerb::Publish { tenant, event_type, data, id, attributes } => {
            let data = match data.as_deref() {
                None | Some("-") => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text).context("reading the event's data from stdin (or give --data JSON)")?;
                    text
                }
                Some(text) => text.to_owned(),
            };
            let request =
                PublishEventRequest { tenant_id: tenant, event_type, data, event_id: id, attributes: attributes.into_iter().collect() };
            let r = c.events.publish_event(request).await?.into_inner();
            let record = Record(vec![
                ("stream_entry_id", r.stream_entry_id.clone().into()),
                ("event_id", r.event_id.clone().into()),
                ("duplicate", r.duplicate.into()),
            ]);
            Ok(Printed::one(&record))
        }
        EventVerb::Replay { tenant, webhook, event_types, since, until, calls: Calls { limit, mut page_token, all } } => {
            let request = ReplayEventsRequest {
                tenant_id: tenant,
                webhook_id: webhook,
                event_types,
                since: Some(pb_time(since)),
                until: Some(pb_time(until.unwrap_or_else(SystemTime::now))),
                limit,
                page_token: String::new(),
            };
            // With --all, every call's answers are put together into one.
            let mut total = ReplayEventsResponse::default();
            loop {
                let r = c.deliveries.replay_events(ReplayEventsRequest { page_token, ..request.clone() }).await?.into_inner();
                total.deliveries.extend(r.deliveries);
                total.deliveries_scheduled += r.deliveries_scheduled;
                total.events_examined += r.events_examined;
                total.events_replayed += r.events_replayed;
                total.next_page_token = r.next_page_token;
                if !all || total.next_page_token.is_empty() {
                    break;
                }
                page_token = total.next_page_token.clone();
            }
            Ok(render::replayed(&total))
        }
    }
}

/// `wss config check FILE`.
fn config_check(file: &std::path::Path) -> ExitCode {
    match wss::config::Layers::new().file(file).build() {
        Ok(config) => {
            println!("{}: valid", file.display());
            let cluster = if wss::redis_conn::cluster_nodes(&config.redis_url).is_some() { " (a Redis Cluster)" } else { "" };
            println!(
                "  redis_url {}{cluster}, key prefix {:?}, {} stream shard(s), control plane {}, {} sender threads",
                wss::redis_conn::redact_url(&config.redis_url),
                config.key_prefix,
                config.stream_shards,
                config.grpc_addr,
                config.sender_threads
            );
            let sources: Vec<String> = config.sources.iter().map(wss::source::SourceSpec::label).collect();
            println!("  sources: {}", sources.join(", "));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {} problem(s)", file.display(), errors.0.len());
            for problem in &errors.0 {
                eprintln!("  {problem}");
            }
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_scheme_is_plaintext_unless_tls_options_are_given() {
        assert_eq!(endpoint_uri("127.0.0.1:50051", false), Ok(("http://127.0.0.1:50051".into(), false)));
        assert_eq!(endpoint_uri("wss.internal:50051", true), Ok(("https://wss.internal:50051".into(), true)));
        assert_eq!(endpoint_uri("https://wss.internal:50051/", false), Ok(("https://wss.internal:50051".into(), true)));
        assert!(endpoint_uri("http://x:1", true).is_err_and(|e| e.contains("https://")));
        assert!(endpoint_uri("grpc://x:1", false).is_err());
        assert!(endpoint_uri(" ", false).is_err());
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        assert_eq!(time_arg("2026-12-06T04:00:00Z"), humantime::parse_rfc3339("2026-12-06T04:00:00Z").map_err(|e| e.to_string()));
        let an_hour_ago = time_arg("1h").expect("a duration");
        let age = SystemTime::now().duration_since(an_hour_ago).expect("in the past");
        assert!(age >= Duration::from_secs(3600) && age < Duration::from_secs(3700), "{age:?}");
        assert!(time_arg("yesterday").is_err());
    }

    #[test]
    fn headers_and_attributes_are_name_equals_value() {
        assert_eq!(key_value("X-Team=payments=eu"), Ok(("X-Team".into(), "payments=eu".into())));
        assert!(key_value("=x").is_err());
        assert!(key_value("novalue").is_err());
    }

    #[test]
    fn refusals_read_as_code_and_message_with_a_hint_for_a_missing_token() {
        let text = describe(&Status::invalid_argument("url: must start with https://"), "127.0.0.1:50051");
        assert_eq!(text, "INVALID_ARGUMENT: url: must start with https://");
        assert!(describe(&Status::unauthenticated("missing authorization metadata"), "x").contains("WSS_TOKEN"));
        let rich = wss::grpc::status_of(wss::domain::DomainError::Invalid { field: "url", message: "must start with https://".into() });
        assert_eq!(describe(&rich, "x"), "INVALID_ARGUMENT: url: must start with https:// [reason INVALID_FIELD, field url]");
    }
}
