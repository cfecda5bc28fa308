//! The routing snapshot: an immutable, in-memory view of the configuration that the pipeline
//! reads without touching Redis — for each tenant its enabled webhooks with their event-type
//! patterns and their filter and transform expressions compiled, their retry policy resolved and
//! their signing key prepared. Nothing is compiled per event; and since compiling a CEL
//! expression costs tens of microseconds, a rebuild reuses the programs of the snapshot it
//! replaces for every expression whose text did not change.
//!
//! A new snapshot is built whole and swapped in behind an `Arc`; readers keep the one they took
//! for the event at hand.
//!
//! [`run_refresher`] polls `<prefix>config:version` four times a second and reloads when it
//! moved, so an instance sees another instance's change within a second; the control plane calls
//! [`RoutingHandle::reload`] right after its own writes.
//!
//! **Memory.** A snapshot may hold 100,000 webhooks, and it stays resident, so a [`Route`] keeps
//! only what routing, signing and sending need (not the stored `Webhook`: tenant and policy ids,
//! description, disabled reason, timestamps), and the webhooks are read from Redis a page at a
//! time ([`Store::scan_webhooks`]) and turned into routes as they arrive: the whole Redis reply,
//! every decoded `Webhook` and the new snapshot are never in memory at once. (The heap's
//! high-water mark stays resident after a load: what a load holds at its peak is what the
//! service costs.)

use std::{collections::HashMap, sync::Arc, time::Duration};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::{Mutex, RwLock};

use super::{
    model::{RetryPolicy, SignatureScheme, Tenant, TypePattern, Webhook, DEFAULT_POLICY_ID},
    store::{ConfigHead, Everything, Store},
    DomainError,
};
use crate::{
    expr::{CompileError, Filter, Transform},
    http::ClientIdentity,
    signature::{StandardSigner, WssSigner},
};

/// How a route signs; its key is read (a Standard Webhooks secret decoded) once per snapshot.
#[derive(Clone)]
pub enum RouteSigner {
    Wss(WssSigner),
    Standard(StandardSigner),
    /// A secret being rotated (docs/contract.md §3): every request is signed with `current` first, then —
    /// until `until_ms` (Unix milliseconds), checked at signing time — with `previous` too.
    /// Both are of the webhook's one scheme; neither is itself `Rotating`.
    Rotating {
        current: Box<RouteSigner>,
        previous: Box<RouteSigner>,
        until_ms: u64,
    },
}

impl RouteSigner {
    /// The signer of one secret in `scheme`; `Err` with the reason when the secret cannot be a
    /// key of that scheme.
    fn for_secret(scheme: SignatureScheme, secret: &str) -> Result<Self, String> {
        match scheme {
            SignatureScheme::Wss => Ok(RouteSigner::Wss(WssSigner::new(secret.as_bytes()))),
            SignatureScheme::StandardWebhooks => StandardSigner::new(secret).map(RouteSigner::Standard).map_err(|e| e.to_string()),
        }
    }

    /// The webhook's signer: its secret's, and during a rotation's overlap the previous one's too.
    fn for_webhook(webhook: &Webhook, now_ms: u64) -> Result<Self, String> {
        let current = Self::for_secret(webhook.signature_scheme, webhook.secret.expose())?;
        let Some(previous) = webhook.previous_secret_at(now_ms) else { return Ok(current) };
        match Self::for_secret(webhook.signature_scheme, previous.expose()) {
            Ok(previous) => Ok(RouteSigner::Rotating {
                current: Box::new(current),
                previous: Box::new(previous),
                until_ms: webhook.previous_secret_until_ms,
            }),
            // The previous secret was usable when it was current; should it not be, signing
            // with the new one alone is still right.
            Err(_) => Ok(current),
        }
    }
}

/// One webhook as the pipeline sees it: what routing, signing and sending need, no more (see
/// the module's note on memory).
pub struct Route {
    /// The webhook's id, shared with the key of [`Routing::webhooks`].
    pub id: Arc<str>,
    pub url: Box<str>,
    /// Static headers added to every request (usually none).
    pub headers: Box<[(Box<str>, Box<str>)]>,
    pub enabled: bool,
    pub tenant_disabled: bool,
    pub patterns: Box<[TypePattern]>,
    /// The filter, if any. Its `compiled` is `Err` when the stored text does not compile with
    /// this version (written by another version, or by hand): the webhook's deliveries are then
    /// dead-lettered with that error rather than silently dropped or sent unfiltered.
    pub filter: Option<Arc<Expression<Filter>>>,
    /// The transform, if any; `compiled` may be `Err` as for `filter`.
    pub transform: Option<Arc<Expression<Transform>>>,
    pub policy: Arc<RetryPolicy>,
    pub signer: RouteSigner,
    /// The client certificate presented to the receiver, if the webhook has one; the sender
    /// picks the agent that presents it (`crate::http::Agents`).
    pub client: Option<Arc<RouteClient>>,
    /// `ORDERING_FIFO`: every delivery waits its turn in the backlog (`crate::pipeline::backlog`).
    pub fifo: bool,
    /// Attempts per second at most, across all instances; 0: unlimited.
    pub rate_limit: u32,
}

/// A webhook's client certificate, parsed and checked once, and the PEM it came from (public),
/// so that a rebuilt snapshot reuses it while the certificate is unchanged (its key is the
/// certificate's, so the same chain is the same identity).
pub struct RouteClient {
    pub certificate: Box<str>,
    pub identity: ClientIdentity,
}

/// A stored filter or transform: its text and the program compiled from it (or why it does not
/// compile). Behind an `Arc`, so that a rebuilt snapshot shares it while the text is unchanged,
/// and a webhook without one pays a null pointer.
pub struct Expression<T> {
    pub source: Box<str>,
    pub compiled: Result<T, CompileError>,
}

impl Route {
    /// True when every delivery to this webhook goes through the durable backlog, which alone
    /// orders them (FIFO) and meters them (rate limit) across instances. Unordered, unlimited
    /// webhooks never do: their fresh deliveries go out at once, as before.
    pub fn through_backlog(&self) -> bool {
        self.fifo || self.rate_limit > 0
    }

    /// True when the event type matches one of the patterns (or there are none).
    pub fn wants(&self, event_type: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(event_type))
    }

    /// Deliverable right now: enabled, and its tenant too.
    pub fn is_active(&self) -> bool {
        self.enabled && !self.tenant_disabled
    }
}

/// A route for the stages' unit tests: enabled, for every event type, the default policy, a
/// fixed key; `filter` and `transform` compiled as a snapshot compiles them (a failure kept).
#[cfg(test)]
pub(crate) fn test_route(id: &str, filter: Option<&str>, transform: Option<&str>) -> Arc<Route> {
    Arc::new(Route {
        id: id.into(),
        url: "https://example.com/".into(),
        headers: Box::default(),
        enabled: true,
        tenant_disabled: false,
        patterns: Box::default(),
        filter: filter.map(|source| Arc::new(Expression { source: source.into(), compiled: Filter::compile(source) })),
        transform: transform.map(|source| Arc::new(Expression { source: source.into(), compiled: Transform::compile(source) })),
        policy: Arc::new(RetryPolicy::builtin_default()),
        signer: RouteSigner::Wss(WssSigner::new(b"whsec_0123456789abcdef")),
        client: None,
        fifo: false,
        rate_limit: 0,
    })
}

pub struct TenantRoutes {
    pub tenant: Tenant,
    /// The tenant's enabled webhooks, ordered by id.
    pub routes: Vec<Arc<Route>>,
}

#[derive(Default)]
pub struct Routing {
    pub version: u64,
    pub tenants: HashMap<String, TenantRoutes>,
    /// Every webhook by id, disabled ones included (the signer tells "disabled" from "deleted").
    pub webhooks: HashMap<Arc<str>, Arc<Route>>,
}

impl Routing {
    /// Builds a snapshot from a configuration in hand; `previous` lends the compiled
    /// expressions that did not change.
    pub fn build(everything: Everything, previous: &Routing) -> Self {
        let head = ConfigHead { version: everything.version, tenants: everything.tenants, policies: everything.policies };
        let mut builder = RoutingBuilder::new(head, previous);
        for webhook in everything.webhooks {
            builder.add(webhook);
        }
        builder.finish()
    }
}

/// A snapshot being built: tenants and policies first, then webhooks one at a time, in any
/// order, each turned into its [`Route`] at once (and the stored `Webhook` dropped).
pub struct RoutingBuilder<'p> {
    version: u64,
    now_ms: u64,
    policies: HashMap<String, Arc<RetryPolicy>>,
    builtin: Arc<RetryPolicy>,
    tenants: HashMap<String, TenantRoutes>,
    webhooks: HashMap<Arc<str>, Arc<Route>>,
    previous: &'p Routing,
}

impl<'p> RoutingBuilder<'p> {
    pub fn new(head: ConfigHead, previous: &'p Routing) -> Self {
        let policies: HashMap<String, Arc<RetryPolicy>> = head.policies.into_iter().map(|p| (p.id.clone(), Arc::new(p))).collect();
        let builtin = policies.get(DEFAULT_POLICY_ID).cloned().unwrap_or_else(|| Arc::new(RetryPolicy::builtin_default()));
        let tenants = head.tenants.into_iter().map(|t| (t.id.clone(), TenantRoutes { tenant: t, routes: Vec::new() })).collect();
        Self { version: head.version, now_ms: crate::clock::now_ms(), policies, builtin, tenants, webhooks: HashMap::new(), previous }
    }

    /// Adds one webhook; a webhook of an unknown tenant, or one already added (a scan may
    /// return an entry twice), is left out.
    pub fn add(&mut self, webhook: Webhook) {
        if self.webhooks.contains_key(webhook.id.as_str()) {
            return;
        }
        let Some(tenant) = self.tenants.get_mut(&webhook.tenant_id) else { return };
        let policy_id = [&webhook.retry_policy_id, &tenant.tenant.default_retry_policy_id].into_iter().find(|id| !id.is_empty());
        let policy = policy_id.and_then(|id| self.policies.get(id.as_str())).cloned().unwrap_or_else(|| self.builtin.clone());
        let signer = match RouteSigner::for_webhook(&webhook, self.now_ms) {
            Ok(signer) => signer,
            Err(err) => {
                log::error!(target: "wss::routing", "webhook {} has an unusable Standard Webhooks secret ({err}); it receives nothing until its secret is replaced", webhook.id);
                return;
            }
        };
        let before = self.previous.webhooks.get(webhook.id.as_str());
        let client = match (&webhook.client_key, before.and_then(|r| r.client.as_ref())) {
            (None, _) => None,
            (Some(_), Some(previous)) if *previous.certificate == *webhook.client_certificate => Some(previous.clone()),
            (Some(key), _) => match ClientIdentity::from_pem(&webhook.client_certificate, key.expose()) {
                Ok(identity) => Some(Arc::new(RouteClient { certificate: webhook.client_certificate.as_str().into(), identity })),
                Err(err) => {
                    log::error!(target: "wss::routing", "webhook {} has an unusable client certificate ({err}); it receives nothing until it is replaced", webhook.id);
                    return;
                }
            },
        };
        let refused = |field: &'static str| {
            let id = &webhook.id;
            move |err: &CompileError| {
                log::error!(target: "wss::routing", "the stored {field} of webhook {id} does not compile ({err}); its deliveries are dead-lettered until it is replaced");
            }
        };
        let filter = reuse_or_compile(&webhook.filter, before.and_then(|r| r.filter.as_ref()), |source| {
            Filter::compile(source).inspect_err(refused("filter"))
        });
        let transform = reuse_or_compile(&webhook.transform, before.and_then(|r| r.transform.as_ref()), |source| {
            Transform::compile(source).inspect_err(refused("transform"))
        });
        let Webhook { id, url, event_types, headers, enabled, ordering, rate_limit_per_second, .. } = webhook;
        let id: Arc<str> = id.into();
        let route = Arc::new(Route {
            id: id.clone(),
            url: url.into_boxed_str(),
            headers: headers.into_iter().map(|(name, value)| (name.into_boxed_str(), value.into_boxed_str())).collect(),
            enabled,
            tenant_disabled: tenant.tenant.disabled,
            patterns: event_types.iter().map(|p| TypePattern::new(p)).collect(),
            filter,
            transform,
            policy,
            signer,
            client,
            fifo: ordering == crate::domain::model::Ordering::Fifo,
            rate_limit: rate_limit_per_second,
        });
        if route.enabled {
            tenant.routes.push(route.clone());
        }
        self.webhooks.insert(id, route);
    }

    pub fn finish(mut self) -> Routing {
        for tenant in self.tenants.values_mut() {
            tenant.routes.sort_by(|a, b| a.id.cmp(&b.id));
            tenant.routes.shrink_to_fit();
        }
        self.webhooks.shrink_to_fit();
        Routing { version: self.version, tenants: self.tenants, webhooks: self.webhooks }
    }
}

/// A stored expression compiled: the previous snapshot's when its text is the same, compiled
/// afresh otherwise; `None` for none.
fn reuse_or_compile<T>(
    source: &str,
    previous: Option<&Arc<Expression<T>>>,
    compile: impl FnOnce(&str) -> Result<T, CompileError>,
) -> Option<Arc<Expression<T>>> {
    if source.is_empty() {
        return None;
    }
    match previous {
        Some(before) if &*before.source == source => Some(before.clone()),
        _ => Some(Arc::new(Expression { compiled: compile(source), source: source.into() })),
    }
}

/// The current snapshot, shared by the pipeline and the control plane.
pub struct RoutingHandle {
    current: RwLock<Arc<Routing>>,
    reloading: Mutex<()>,
}

impl Default for RoutingHandle {
    fn default() -> Self {
        Self { current: RwLock::new(Arc::new(Routing::default())), reloading: Mutex::new(()) }
    }
}

impl RoutingHandle {
    pub fn current(&self) -> Arc<Routing> {
        self.current.read().clone()
    }

    /// Loads everything from Redis and swaps the new snapshot in.
    pub fn reload(&self, store: &Store) -> Result<u64, DomainError> {
        let _one_at_a_time = self.reloading.lock();
        let previous = self.current();
        let mut builder = RoutingBuilder::new(store.load_config_head()?, &previous);
        store.scan_webhooks(|webhook| builder.add(webhook))?;
        let routing = builder.finish();
        let version = routing.version;
        log::debug!(target: "wss::routing", "loaded config version {version}: {} tenants, {} webhooks", routing.tenants.len(), routing.webhooks.len());
        *self.current.write() = Arc::new(routing);
        Ok(version)
    }
}

/// Polls the config version every `interval` and reloads when it differs from the snapshot's,
/// until `shutdown` fires.
///
/// It starts from the snapshot in hand: the service loads the configuration before it starts
/// the pipeline, and a first poll that rebuilt it regardless built it twice, with the old one
/// still alive meanwhile, which raised the heap's high-water mark (and so the resident memory)
/// of a large configuration.
pub fn run_refresher(handle: Arc<RoutingHandle>, store: Arc<Store>, interval: Duration, shutdown: Receiver<()>) {
    loop {
        let seen = handle.current().version;
        match store.config_version() {
            Ok(version) if seen == version => {}
            Ok(_) => {
                if let Err(err) = handle.reload(&store) {
                    log::warn!(target: "wss::routing", "could not reload the configuration: {err}");
                }
            }
            Err(DomainError::Unavailable { .. }) => {} // the outage is logged by the connection layer
            Err(err) => log::warn!(target: "wss::routing", "could not read the config version: {err}"),
        }
        match shutdown.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::model::Secret;

    fn everything(filters: &[(&str, &str)]) -> Everything {
        let tenant = Tenant {
            id: "acme".into(),
            display_name: String::new(),
            default_retry_policy_id: String::new(),
            disabled: false,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let webhooks = filters
            .iter()
            .map(|(id, filter)| Webhook {
                id: (*id).into(),
                tenant_id: "acme".into(),
                url: "https://example.com/".into(),
                event_types: Vec::new(),
                filter: (*filter).into(),
                transform: String::new(),
                retry_policy_id: String::new(),
                headers: BTreeMap::new(),
                description: String::new(),
                enabled: true,
                disabled_reason: String::new(),
                signature_scheme: SignatureScheme::Wss,
                secret: Secret::new("whsec_0123456789abcdef".into()),
                previous_secret: None,
                previous_secret_until_ms: 0,
                client_certificate: String::new(),
                client_key: None,
                ordering: Default::default(),
                rate_limit_per_second: 0,
                created_at_ms: 0,
                updated_at_ms: 0,
            })
            .collect();
        Everything { version: 1, tenants: vec![tenant], webhooks, policies: Vec::new() }
    }

    fn filter_of<'a>(routing: &'a Routing, id: &str) -> Option<&'a Result<Filter, CompileError>> {
        routing.webhooks[id].filter.as_deref().map(|e| &e.compiled)
    }

    #[test]
    fn a_rebuild_reuses_unchanged_programs_and_compiles_changed_ones() {
        let first =
            Routing::build(everything(&[("wh_a", "event.type == 'a'"), ("wh_b", "event.type == 'b'"), ("wh_c", "")]), &Routing::default());
        assert!(filter_of(&first, "wh_c").is_none());
        let second = Routing::build(everything(&[("wh_a", "event.type == 'a'"), ("wh_b", "event.type == 'B'"), ("wh_c", "")]), &first);
        let (Some(Ok(a1)), Some(Ok(a2))) = (filter_of(&first, "wh_a"), filter_of(&second, "wh_a")) else { panic!("wh_a compiles") };
        assert!(a1.shares_program_with(a2), "unchanged text: the same program");
        let (Some(Ok(b1)), Some(Ok(b2))) = (filter_of(&first, "wh_b"), filter_of(&second, "wh_b")) else { panic!("wh_b compiles") };
        assert!(!b1.shares_program_with(b2), "changed text: compiled anew");
        assert_eq!(b2.source(), "event.type == 'B'");
    }

    #[test]
    fn a_stored_expression_that_does_not_compile_stays_routed_with_its_error() {
        let routing = Routing::build(everything(&[("wh_bad", "event.data.")]), &Routing::default());
        assert!(matches!(filter_of(&routing, "wh_bad"), Some(Err(CompileError::Syntax(_)))));
        assert_eq!(routing.tenants["acme"].routes.len(), 1, "its events are dead-lettered, not dropped");
    }
}
