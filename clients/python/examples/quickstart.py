"""Registers a tenant and a webhook, publishes an event through EventService/PublishEvent, and
waits until DeliveryService/ListDeliveries shows it delivered (or dead-lettered).

    WSS_GRPC_ADDR=127.0.0.1:50051 WSS_ADMIN_TOKEN=... python examples/quickstart.py http://127.0.0.1:8787/hook [tenant]
"""

import json
import sys
import time

import grpc

from wss.v1 import deliveries_pb2, events_pb2, tenants_pb2, webhooks_pb2
from wss_client import Client

FINISHED = (deliveries_pb2.DELIVERY_STATUS_DELIVERED, deliveries_pb2.DELIVERY_STATUS_DEAD_LETTERED)


def main(url: str = "http://127.0.0.1:8787/hook", tenant_id: str = "acme") -> None:
    with Client.from_env(timeout=5.0) as wss:
        try:
            wss.tenants.CreateTenant(tenants_pb2.CreateTenantRequest(tenant_id=tenant_id, display_name="Acme Corp"))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        webhook = wss.webhooks.CreateWebhook(
            webhooks_pb2.CreateWebhookRequest(tenant_id=tenant_id, url=url, event_types=["order.*"], description="Python example")
        )
        # webhook.secret is shown only now: hand it to the receiver (never log it).
        print(f"webhook {webhook.webhook_id} -> {webhook.url}")

        published = wss.events.PublishEvent(
            events_pb2.PublishEventRequest(
                tenant_id=tenant_id, event_type="order.created", data=json.dumps({"order_id": "A-1001", "total": 42})
            )
        )
        print(f"published event {published.event_id}")

        deadline = time.monotonic() + 20
        request = deliveries_pb2.ListDeliveriesRequest(tenant_id=tenant_id, event_id=published.event_id)
        while True:
            done = [d for d in wss.deliveries.ListDeliveries(request).deliveries if d.status in FINISHED]
            if done:
                d = done[0]
                print(f"delivery {d.delivery_id}: {deliveries_pb2.DeliveryStatus.Name(d.status)} after {len(d.attempts)} attempt(s)")
                return
            if time.monotonic() > deadline:
                sys.exit(f"event {published.event_id} was not delivered within 20 s")
            time.sleep(0.1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
