//! Registering the bench's tenants, webhooks and retry policy through the real control plane:
//! the tonic clients of `wss::proto`, on a small runtime of the bench's own.
//!
//! Tenant `t<i>` gets one webhook, `<receiver>/w<i>` with secret [`secret_of`]`(i)`, so that the
//! receiver can verify any request from its path alone.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tonic::transport::Channel;
use wss::proto::{
    tenant_service_client::TenantServiceClient, webhook_service_client::WebhookServiceClient, CreateTenantRequest, CreateWebhookRequest,
};

use super::receiver::{secret_of, Receiver};

pub struct Control {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl Control {
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the bench's gRPC runtime")?;
        let channel = runtime
            .block_on(Channel::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(5)).connect())
            .with_context(|| format!("connecting to the control plane at {addr}"))?;
        Ok(Self { runtime, channel })
    }

    /// Tenants `t0…t<count-1>` with one webhook each at `receiver`, using `policy` (empty: the
    /// default policy).
    pub fn register(&self, count: usize, receiver: &Receiver, policy: &str) -> anyhow::Result<()> {
        self.register_at(count, |i| receiver.url(i), policy)
    }

    /// Tenant `t0` with one FIFO webhook (`ORDERING_FIFO`) at `receiver`.
    pub fn register_fifo(&self, receiver: &Receiver) -> anyhow::Result<()> {
        let mut tenants = TenantServiceClient::new(self.channel.clone());
        let mut webhooks = WebhookServiceClient::new(self.channel.clone());
        self.runtime.block_on(async {
            tenants.create_tenant(CreateTenantRequest { tenant_id: "t0".into(), ..Default::default() }).await.context("CreateTenant t0")?;
            let webhook = CreateWebhookRequest {
                tenant_id: "t0".into(),
                url: receiver.url(0),
                secret: secret_of(0),
                ordering: wss::proto::Ordering::Fifo as i32,
                ..Default::default()
            };
            webhooks.create_webhook(webhook).await.context("CreateWebhook (FIFO) for t0")?;
            Ok(())
        })
    }

    /// [`Control::register`] with webhook `i` at `url_of(i)` (so that some may go to another
    /// receiver; the path should stay `/w<i>` for signature checks).
    pub fn register_at(&self, count: usize, url_of: impl Fn(usize) -> String, policy: &str) -> anyhow::Result<()> {
        let mut tenants = TenantServiceClient::new(self.channel.clone());
        let mut webhooks = WebhookServiceClient::new(self.channel.clone());
        self.runtime.block_on(async {
            for i in 0..count {
                let tenant_id = format!("t{i}");
                let tenant =
                    CreateTenantRequest { tenant_id: tenant_id.clone(), default_retry_policy_id: policy.into(), ..Default::default() };
                tenants.create_tenant(tenant).await.with_context(|| format!("CreateTenant {tenant_id}"))?;
                let webhook =
                    CreateWebhookRequest { tenant_id: tenant_id.clone(), url: url_of(i), secret: secret_of(i), ..Default::default() };
                webhooks.create_webhook(webhook).await.with_context(|| format!("CreateWebhook for {tenant_id}"))?;
            }
            Ok(())
        })
    }
}
