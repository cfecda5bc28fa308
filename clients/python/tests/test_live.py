"""The Python client against a live ``wss serve`` on a real Redis: create a tenant and a webhook (to
a receiver on 127.0.0.1:0), publish an event through EventService/PublishEvent, and read it back
in DeliveryService/ListDeliveries. The service runs with an admin token and its own key prefix, so
tests can share one Redis.

Environment: ``WSS_BIN`` (default: <repo>/target/debug/wss, built by ``cargo build``) and
``WSS_TEST_REDIS_URL`` (default redis://127.0.0.1:6379), as in the Rust integration tests.
"""

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

from wss.v1 import deliveries_pb2, events_pb2, tenants_pb2, webhooks_pb2
from wss_client import Client, error_details

PACKAGE = Path(__file__).resolve().parents[1]
ROOT = PACKAGE.parents[1]
WSS_BIN = os.environ.get("WSS_BIN", str(ROOT / "target" / "debug" / "wss"))
REDIS_URL = os.environ.get("WSS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
WAIT = 20.0


def eventually(what, check, within=WAIT):
    """Runs ``check`` until it returns something other than None; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    last = None
    while True:
        try:
            value = check()
            if value is not None:
                return value
        except grpc.RpcError as e:
            last = e
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}; last error: {last}")
        time.sleep(0.05)


class Service:
    """``wss serve`` as a child process, on its own key prefix, with an admin token."""

    def __init__(self, prefix, token):
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSS_") and k != "RUST_LOG"}
        env.update(
            WSS_REDIS_URL=REDIS_URL,
            WSS_KEY_PREFIX=prefix,
            WSS_GRPC_ADDR="127.0.0.1:0",
            WSS_METRICS_ADDR="127.0.0.1:0",
            WSS_ADMIN_TOKEN=token,
            WSS_ALLOW_PRIVATE_TARGETS="true",
            WSS_ALLOW_HTTP="true",
            WSS_SENDER_THREADS="4",
            WSS_READ_BLOCK="200ms",
            WSS_CONSUMER=f"py-live-{os.getpid()}",
        )
        if not os.access(WSS_BIN, os.X_OK):
            pytest.fail(f"{WSS_BIN} is not an executable: run `cargo build` first, or set WSS_BIN")
        self.process = subprocess.Popen([WSS_BIN, "serve"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.logs = []
        found = threading.Event()
        self.addr = None

        def read():
            for line in self.process.stderr:
                self.logs.append(line.rstrip("\n"))
                m = re.search(r"control plane listening on (\S+)", line)
                if m and not found.is_set():
                    self.addr = m.group(1)
                    found.set()
            found.set()  # EOF: the process is gone

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(WAIT) or self.addr is None:
            self.stop()
            pytest.fail("wss did not report its control-plane address:\n" + "\n".join(self.logs))

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Receiver:
    """A webhook receiver on 127.0.0.1:0 that records every request (header names lowercased) and answers 200."""

    def __init__(self):
        self.received = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def live():
    prefix = f"wsstest:py-client:{os.getpid()}:{time.time_ns()}:"
    token = secrets.token_hex(24)
    receiver = Receiver()
    service = Service(prefix, token)
    try:
        yield service, token, receiver
    finally:
        service.stop()
        receiver.close()
        if shutil.which("redis-cli"):  # best effort: remove this test's keys
            subprocess.run(
                ["sh", "-c", 'redis-cli -u "$0" --scan --pattern "$1*" | xargs -r redis-cli -u "$0" del >/dev/null', REDIS_URL, prefix],
                check=False,
            )


@pytest.fixture
def wss(live):
    service, token, _ = live
    with Client(service.addr, token=token, timeout=5.0) as client:
        yield client


def test_calls_without_the_bearer_token_are_refused(live):
    service, _, _ = live
    with Client(service.addr, timeout=5.0) as anonymous:
        with pytest.raises(grpc.RpcError) as refused:
            anonymous.tenants.ListTenants(tenants_pb2.ListTenantsRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    details = error_details(refused.value)
    assert details is not None and (details.reason, details.domain) == ("MISSING_TOKEN", "wss")


def test_errors_carry_their_reason_and_field(wss):
    with pytest.raises(grpc.RpcError) as missing:
        wss.tenants.GetTenant(tenants_pb2.GetTenantRequest(tenant_id="nobody"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    details = error_details(missing.value)
    assert details is not None and details.reason == "TENANT_NOT_FOUND" and details.metadata["id"] == "nobody"
    with pytest.raises(grpc.RpcError) as invalid:
        wss.tenants.CreateTenant(tenants_pb2.CreateTenantRequest(tenant_id="Not Valid"))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error_details(invalid.value)
    assert details is not None and (details.reason, details.field) == ("INVALID_FIELD", "tenant_id")


def test_create_tenant_and_webhook_publish_and_read_back_in_list_deliveries(live, wss):
    _, _, receiver = live
    tenant = wss.tenants.CreateTenant(tenants_pb2.CreateTenantRequest(tenant_id="acme", display_name="Acme Corp"))
    assert tenant.tenant_id == "acme" and tenant.HasField("created_at")

    webhook = wss.webhooks.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(tenant_id="acme", url=receiver.url, event_types=["order.*"], headers={"X-Team": "orders"})
    )
    assert webhook.webhook_id.startswith("wh_")
    assert len(webhook.secret) >= 16, "CreateWebhook returns the generated secret"
    listed = wss.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest(tenant_id="acme"))
    assert [w.webhook_id for w in listed.webhooks] == [webhook.webhook_id]
    assert listed.webhooks[0].secret == "", "the secret is shown only by CreateWebhook"

    data = json.dumps({"order_id": "A-1001", "status": "created"})
    published = wss.events.PublishEvent(
        events_pb2.PublishEventRequest(tenant_id="acme", event_type="order.created", data=data, event_id="evt-py-1")
    )
    assert published.event_id == "evt-py-1"
    assert re.fullmatch(r"\d+-\d+", published.stream_entry_id)

    request = deliveries_pb2.ListDeliveriesRequest(tenant_id="acme", event_id="evt-py-1")

    def delivered():
        found = [d for d in wss.deliveries.ListDeliveries(request).deliveries if d.status == deliveries_pb2.DELIVERY_STATUS_DELIVERED]
        return found[0] if found else None

    delivery = eventually("the delivery to show DELIVERED in ListDeliveries", delivered)
    assert delivery.webhook_id == webhook.webhook_id
    assert delivery.event_type == "order.created"
    assert delivery.attempts[0].status_code == 200

    fetched = wss.deliveries.GetDelivery(deliveries_pb2.GetDeliveryRequest(delivery_id=delivery.delivery_id))
    assert fetched.delivery_id == delivery.delivery_id and len(fetched.attempts) == 1

    # What the receiver got: the event, signed with the webhook's secret (docs/contract.md sections 2-3).
    got = [(h, b) for h, b in receiver.received if h.get("x-wss-event-id") == "evt-py-1"]
    assert got, "the receiver got the event"
    headers, body = got[0]
    expected = hmac.new(webhook.secret.encode(), headers["x-wss-timestamp"].encode() + body, hashlib.sha256).hexdigest()
    assert headers["x-wss-signature"] == expected
    assert headers["x-team"] == "orders"
    assert json.loads(body)["data"] == json.loads(data)


def test_errors_carry_grpc_codes(wss):
    with pytest.raises(grpc.RpcError) as missing:
        wss.tenants.GetTenant(tenants_pb2.GetTenantRequest(tenant_id="nobody"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as invalid:
        wss.webhooks.CreateWebhook(webhooks_pb2.CreateWebhookRequest(tenant_id="acme", url="not a url"))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.details().startswith("url")


def test_tokens_are_issued_listed_and_revoked_through_the_tokens_attribute(wss):
    from wss.v1 import tokens_pb2

    issued = wss.tokens.CreateToken(tokens_pb2.CreateTokenRequest(tenant_id="acme", description="python client test"))
    assert issued.token.startswith(issued.token_id + ".")
    listed = wss.tokens.ListTokens(tokens_pb2.ListTokensRequest(tenant_id="acme")).tokens
    assert issued.token_id in [t.token_id for t in listed]
    wss.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(token_id=issued.token_id))
    assert issued.token_id not in [t.token_id for t in wss.tokens.ListTokens(tokens_pb2.ListTokensRequest(tenant_id="acme")).tokens]


def test_stub_gives_any_generated_service_the_same_token_and_deadline(wss):
    from wss.v1 import tenants_pb2_grpc

    tenants = wss.stub(tenants_pb2_grpc.TenantServiceStub)
    assert "acme" in [t.tenant_id for t in tenants.ListTenants(tenants_pb2.ListTenantsRequest()).tenants]


def test_the_default_deadline_applies():
    # A listener that accepts connections and never speaks HTTP/2: only the deadline ends the call.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with Client(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as late:
                client.tenants.ListTenants(tenants_pb2.ListTenantsRequest())
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 5


def test_the_token_is_not_in_repr(live):
    _, token, _ = live
    assert token not in repr(Client("127.0.0.1:1", token=token))


def test_the_example_runs_against_the_live_service(live):
    service, token, receiver = live
    env = dict(os.environ, WSS_GRPC_ADDR=service.addr, WSS_ADMIN_TOKEN=token)
    out = subprocess.run(
        [sys.executable, str(PACKAGE / "examples" / "quickstart.py"), receiver.url, "example-py"],
        env=env, capture_output=True, text=True, timeout=45,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DELIVERY_STATUS_DELIVERED after 1 attempt" in out.stdout
    assert token not in out.stdout + out.stderr
