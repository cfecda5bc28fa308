// The TypeScript client against a live `wss serve` on a real Redis: create a tenant and a webhook
// (to a receiver on 127.0.0.1:0), publish an event through EventService/PublishEvent, and read it
// back in DeliveryService/ListDeliveries. The service runs with an admin token and its own key
// prefix, so tests can share one Redis.
//
// Environment: WSS_BIN (default: <repo>/target/debug/wss, built by `cargo build`) and
// WSS_TEST_REDIS_URL (default redis://127.0.0.1:6379), as in the Rust integration tests.
import { strict as assert } from "node:assert";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { type AddressInfo, createServer as createTcpServer, type Socket } from "node:net";
import { resolve } from "node:path";
import { inspect } from "node:util";
import { after, before, test } from "node:test";

import { DeliveryStatus, errorDetails, promised, status, TenantServiceClient, TenantServiceDefinition, WssClient, type ServiceError } from "../src";

const PACKAGE = resolve(__dirname, "..", ".."); // compiled to dist/test/
const ROOT = resolve(PACKAGE, "..", "..");
const WSS_BIN = process.env.WSS_BIN ?? resolve(ROOT, "target", "debug", "wss");
const REDIS_URL = process.env.WSS_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const WAIT_MS = 20_000;

/** Runs `check` until it returns a value, pausing briefly between tries; fails after `withinMs`. */
async function eventually<T>(what: string, check: () => Promise<T | undefined>, withinMs = WAIT_MS): Promise<T> {
  const deadline = Date.now() + withinMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${withinMs} ms waiting for ${what}; last error: ${String(last)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `wss serve` as a child process; resolves with its control-plane address once it logs it. */
class Service {
  readonly logs: string[] = [];
  private constructor(readonly child: ChildProcess, readonly addr: string) {}

  static async start(prefix: string, token: string): Promise<Service> {
    const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("WSS_") && k !== "RUST_LOG"));
    Object.assign(env, {
      WSS_REDIS_URL: REDIS_URL,
      WSS_KEY_PREFIX: prefix,
      WSS_GRPC_ADDR: "127.0.0.1:0",
      WSS_METRICS_ADDR: "127.0.0.1:0",
      WSS_ADMIN_TOKEN: token,
      WSS_ALLOW_PRIVATE_TARGETS: "true",
      WSS_ALLOW_HTTP: "true",
      WSS_SENDER_THREADS: "4",
      WSS_READ_BLOCK: "200ms",
      WSS_CONSUMER: `ts-live-${process.pid}`,
    });
    const child = spawn(WSS_BIN, ["serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
    const logs: string[] = [];
    const addr = await new Promise<string>((resolveAddr, reject) => {
      const timer = setTimeout(() => reject(new Error(`wss did not report its control-plane address within ${WAIT_MS} ms:\n${logs.join("\n")}`)), WAIT_MS);
      let pending = "";
      child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
        pending += chunk;
        const lines = pending.split("\n");
        pending = lines.pop() ?? "";
        for (const line of lines) {
          logs.push(line);
          const m = /control plane listening on (\S+)/.exec(line);
          if (m) {
            clearTimeout(timer);
            resolveAddr(m[1]);
          }
        }
      });
      child.on("error", (e) => reject(new Error(`cannot start ${WSS_BIN} (run cargo build first, or set WSS_BIN): ${e.message}`)));
      child.on("exit", (code) => reject(new Error(`wss exited with ${code} before listening:\n${logs.join("\n")}`)));
    });
    const service = new Service(child, addr);
    service.logs.push(...logs);
    return service;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    this.child.kill("SIGTERM");
    await exited;
  }
}

interface Received { headers: IncomingHttpHeaders; body: Buffer }

/** A webhook receiver on 127.0.0.1:0 that records every request and answers 200. */
async function startReceiver(): Promise<{ server: Server; url: string; received: Received[] }> {
  const received: Received[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(200).end("ok");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return { server, url: `http://127.0.0.1:${port}/hook`, received };
}

const prefix = `wsstest:ts-client:${process.pid}:${Date.now()}:`;
const token = randomBytes(24).toString("hex");
let service: Service;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let wss: WssClient;

before(async () => {
  receiver = await startReceiver();
  service = await Service.start(prefix, token);
  wss = new WssClient(service.addr, { token, timeoutMs: 5_000 });
});

after(async () => {
  wss?.close();
  await service?.stop();
  receiver?.server.close();
  // Best effort: remove this test's keys when redis-cli is at hand.
  await new Promise((r) =>
    execFile("sh", ["-c", 'redis-cli -u "$0" --scan --pattern "$1*" | xargs -r redis-cli -u "$0" del >/dev/null', REDIS_URL, prefix], r),
  );
});

test("calls without the bearer token are refused", { timeout: 30_000 }, async () => {
  const anonymous = new WssClient(service.addr, { timeoutMs: 5_000 });
  try {
    await assert.rejects(anonymous.tenants.listTenants({}), (e: ServiceError) => e.code === status.UNAUTHENTICATED);
  } finally {
    anonymous.close();
  }
});

test("create a tenant and a webhook, publish an event, read it back in ListDeliveries", { timeout: 60_000 }, async () => {
  const tenant = await wss.tenants.createTenant({ tenantId: "acme", displayName: "Acme Corp" });
  assert.equal(tenant.tenantId, "acme");
  assert.ok(tenant.createdAt instanceof Date);

  const webhook = await wss.webhooks.createWebhook({ tenantId: "acme", url: receiver.url, eventTypes: ["order.*"], headers: { "X-Team": "orders" } });
  assert.match(webhook.webhookId, /^wh_/);
  assert.ok(webhook.secret.length >= 16, "CreateWebhook returns the generated secret");
  assert.deepEqual(webhook.eventTypes, ["order.*"]);

  const listed = await wss.webhooks.listWebhooks({ tenantId: "acme" });
  assert.deepEqual(listed.webhooks.map((w) => w.webhookId), [webhook.webhookId]);
  assert.equal(listed.webhooks[0].secret, "", "the secret is shown only by CreateWebhook");

  const data = JSON.stringify({ order_id: "A-1001", status: "created" });
  const published = await wss.events.publishEvent({ tenantId: "acme", eventType: "order.created", data, eventId: "evt-ts-1" });
  assert.equal(published.eventId, "evt-ts-1");
  assert.match(published.streamEntryId, /^\d+-\d+$/);

  const delivery = await eventually("the delivery to show DELIVERED in ListDeliveries", async () => {
    const page = await wss.deliveries.listDeliveries({ tenantId: "acme", eventId: "evt-ts-1" });
    return page.deliveries.find((d) => d.status === DeliveryStatus.DELIVERY_STATUS_DELIVERED);
  });
  assert.equal(delivery.webhookId, webhook.webhookId);
  assert.equal(delivery.eventType, "order.created");
  assert.equal(delivery.attempts[0].statusCode, 200);

  const fetched = await wss.deliveries.getDelivery({ deliveryId: delivery.deliveryId });
  assert.equal(fetched.deliveryId, delivery.deliveryId);
  assert.equal(fetched.attempts.length, 1);

  // What the receiver got: the event, signed with the webhook's secret (docs/contract.md §2–3).
  const request = receiver.received.find((r) => r.headers["x-wss-event-id"] === "evt-ts-1");
  assert.ok(request, "the receiver got the event");
  const ts = request.headers["x-wss-timestamp"] as string;
  const expected = createHmac("sha256", webhook.secret).update(ts).update(request.body).digest("hex");
  assert.equal(request.headers["x-wss-signature"], expected);
  assert.equal(request.headers["x-team"], "orders");
  assert.deepEqual(JSON.parse(request.body.toString("utf8")).data, JSON.parse(data));
});

test("errors carry gRPC codes", { timeout: 30_000 }, async () => {
  await assert.rejects(wss.tenants.getTenant({ tenantId: "nobody" }), (e: ServiceError) => e.code === status.NOT_FOUND);
  await assert.rejects(
    wss.webhooks.createWebhook({ tenantId: "acme", url: "not a url" }),
    (e: ServiceError) => e.code === status.INVALID_ARGUMENT && e.details.startsWith("url"),
  );
});

test("errorDetails reads the reason and the field", { timeout: 30_000 }, async () => {
  await assert.rejects(wss.tenants.getTenant({ tenantId: "nobody" }), (e: ServiceError) => {
    const details = errorDetails(e);
    assert.equal(details?.reason, "TENANT_NOT_FOUND");
    assert.equal(details?.domain, "wss");
    assert.equal(details?.metadata.id, "nobody");
    return true;
  });
  await assert.rejects(wss.webhooks.createWebhook({ tenantId: "acme", url: "not a url" }), (e: ServiceError) => {
    const details = errorDetails(e);
    assert.deepEqual([details?.reason, details?.field], ["INVALID_FIELD", "url"]);
    assert.ok(details?.fieldViolations[0].description);
    return true;
  });
});

test("tokens are issued, listed and revoked through wss.tokens", { timeout: 30_000 }, async () => {
  const issued = await wss.tokens.createToken({ tenantId: "acme", description: "typescript client test" });
  assert.ok(issued.token.startsWith(`${issued.tokenId}.`));
  const { tokens } = await wss.tokens.listTokens({ tenantId: "acme" });
  assert.ok(tokens.some((t) => t.tokenId === issued.tokenId));
  await wss.tokens.revokeToken({ tokenId: issued.tokenId });
  const after = await wss.tokens.listTokens({ tenantId: "acme" });
  assert.ok(!after.tokens.some((t) => t.tokenId === issued.tokenId));
});

test("stub() gives any generated service the same channel, token and deadline", { timeout: 30_000 }, async () => {
  const tenants = promised(TenantServiceDefinition, wss.stub(TenantServiceClient));
  const { tenants: listed } = await tenants.listTenants({ pageSize: 10 });
  assert.ok(listed.some((t) => t.tenantId === "acme"));
});

test("the default deadline applies", { timeout: 30_000 }, async () => {
  // A listener that accepts connections and never speaks HTTP/2: only the deadline ends the call.
  const sockets: Socket[] = [];
  const silent = createTcpServer((socket) => sockets.push(socket));
  await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
  const client = new WssClient(`127.0.0.1:${(silent.address() as AddressInfo).port}`, { timeoutMs: 300 });
  const started = Date.now();
  try {
    await assert.rejects(client.tenants.listTenants(), (e: ServiceError) => e.code === status.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - started < 5_000);
  } finally {
    client.close();
    for (const socket of sockets) socket.destroy();
    silent.close();
  }
});

test("the token is not shown by console.log or JSON", () => {
  const client = new WssClient("127.0.0.1:1", { token });
  try {
    assert.ok(!inspect(client, { depth: 5 }).includes(token));
    assert.ok(!JSON.stringify(client).includes(token));
  } finally {
    client.close();
  }
});

test("the example runs against the live service", { timeout: 60_000 }, async () => {
  const env = { ...process.env, WSS_GRPC_ADDR: service.addr, WSS_ADMIN_TOKEN: token };
  const out = await new Promise<string>((resolveOut, reject) =>
    execFile(process.execPath, [resolve(PACKAGE, "dist", "examples", "quickstart.js"), receiver.url, "example-ts"], { env, timeout: 45_000 }, (e, stdout, stderr) =>
      e ? reject(new Error(`${e.message}\n${stdout}\n${stderr}`)) : resolveOut(stdout),
    ),
  );
  assert.match(out, /DELIVERY_STATUS_DELIVERED after 1 attempt/);
  assert.ok(!out.includes(token));
});
