// Registers a tenant and a webhook, publishes an event through EventService/PublishEvent, and
// waits until DeliveryService/ListDeliveries shows it delivered (or dead-lettered).
//
//   WSS_GRPC_ADDR=127.0.0.1:50051 WSS_ADMIN_TOKEN=… npm run example -- http://127.0.0.1:8787/hook [tenant]
import { DeliveryStatus, deliveryStatusToJSON, status, WssClient, type ServiceError } from "../src";

async function main(): Promise<void> {
  const [url = "http://127.0.0.1:8787/hook", tenantId = "acme"] = process.argv.slice(2);
  const wss = new WssClient(process.env.WSS_GRPC_ADDR ?? "127.0.0.1:50051", { token: process.env.WSS_ADMIN_TOKEN, timeoutMs: 5_000 });
  try {
    try {
      await wss.tenants.createTenant({ tenantId, displayName: "Acme Corp" });
    } catch (e) {
      if ((e as ServiceError).code !== status.ALREADY_EXISTS) throw e;
    }
    const webhook = await wss.webhooks.createWebhook({ tenantId, url, eventTypes: ["order.*"], description: "TypeScript example" });
    // webhook.secret is shown only now: hand it to the receiver (never log it).
    console.log(`webhook ${webhook.webhookId} -> ${webhook.url}`);

    const published = await wss.events.publishEvent({
      tenantId,
      eventType: "order.created",
      data: JSON.stringify({ order_id: "A-1001", total: 42 }),
    });
    console.log(`published event ${published.eventId}`);

    const deadline = Date.now() + 20_000;
    for (;;) {
      const { deliveries } = await wss.deliveries.listDeliveries({ tenantId, eventId: published.eventId });
      const done = deliveries.find((d) => d.status === DeliveryStatus.DELIVERY_STATUS_DELIVERED || d.status === DeliveryStatus.DELIVERY_STATUS_DEAD_LETTERED);
      if (done) {
        console.log(`delivery ${done.deliveryId}: ${deliveryStatusToJSON(done.status)} after ${done.attempts.length} attempt(s)`);
        return;
      }
      if (Date.now() > deadline) throw new Error(`event ${published.eventId} was not delivered within 20 s: ${JSON.stringify(deliveries)}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    wss.close();
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
