// wss-verify against every signature test vector of the project (tests/vectors/signatures.json)
// and every shared verifier case (clients/verify/cases.json), plus the Node-specific header forms.
import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { test } from "node:test";

import { REASONS, sign, verify } from "../src/wss-verify";

// Compiled to dist/test/: the package is two levels up, the repository three more.
const ROOT = resolve(__dirname, "..", "..", "..", "..", "..");
const readJson = (...parts: string[]) => JSON.parse(readFileSync(resolve(ROOT, ...parts), "utf8"));
const VECTORS = readJson("tests", "vectors", "signatures.json");
const SHARED = readJson("clients", "verify", "cases.json");

const T = 1767225600; // 2026-01-01T00:00:00Z
const SECRET = "wss_test_secret";
const BODY = Buffer.from('{"order_id":"A-1001","status":"shipped"}');
const at = (seconds: number) => new Date(seconds * 1000);
const signedAt = (ts: string) => (/^[0-9]+$/.test(ts) ? Number(ts) : Date.parse(ts) / 1000);
const headers = (ts: string, sig: string) => ({ "x-wss-timestamp": ts, "x-wss-signature": sig });

interface Vector { name: string; secret: string; timestamp: string; body_base64: string; signature: string }

test("the vectors are all there", () => {
  assert.ok(VECTORS.valid.length >= 7 && VECTORS.invalid.length >= 6);
  assert.ok(SHARED.cases.length >= 40);
});

for (const c of VECTORS.valid as Vector[]) {
  test(`valid vector: ${c.name}`, () => {
    const body = Buffer.from(c.body_base64, "base64");
    assert.equal(sign(c.secret, c.timestamp, body), c.signature);
    assert.deepEqual(verify(c.secret, headers(c.timestamp, c.signature), body, { now: at(signedAt(c.timestamp) + 10) }), { ok: true });
  });
}

for (const c of VECTORS.invalid as Vector[]) {
  test(`invalid vector: ${c.name}`, () => {
    const body = Buffer.from(c.body_base64, "base64");
    const result = verify(c.secret, headers(c.timestamp, c.signature), body, { now: at(signedAt(c.timestamp) + 10) });
    assert.equal(result.ok ? "ok" : result.reason, "no_match");
  });
}

interface Shared { name: string; headers: [string, string][]; now: number; expect: string; secret?: string; body?: string; tolerance?: number }

for (const c of SHARED.cases as Shared[]) {
  test(`shared case: ${c.name}`, () => {
    // As Node's req.headersDistinct has them: lowercase names, every value kept, in order.
    const distinct: Record<string, string[]> = {};
    for (const [name, value] of c.headers) (distinct[name.toLowerCase()] ??= []).push(value);
    const args = [c.secret ?? SHARED.secret, Buffer.from(c.body ?? SHARED.body, "utf8")] as const;
    const options = { tolerance: c.tolerance ?? SHARED.tolerance, now: at(c.now) };
    for (const source of [c.headers, distinct]) {
      const result = verify(args[0], source, args[1], options);
      assert.equal(result.ok ? "ok" : result.reason, c.expect, JSON.stringify(result));
      if (!result.ok) {
        assert.ok(REASONS.includes(result.reason));
        assert.ok(!result.detail.includes(args[0]), "the detail must not show the secret");
      }
    }
  });
}

test("ISO 8601 and epoch timestamps: the header is signed as sent", () => {
  for (const ts of ["1767225600", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00"]) {
    assert.ok(verify(SECRET, headers(ts, sign(SECRET, ts, BODY)), BODY, { now: at(T) }).ok, ts);
  }
  const r = verify(SECRET, headers("2026-01-01T00:00:00Z", sign(SECRET, "1767225600", BODY)), BODY, { now: at(T) });
  assert.equal(r.ok ? "ok" : r.reason, "no_match");
});

test("the five-minute window, both ways", () => {
  const h = headers(String(T), sign(SECRET, String(T), BODY));
  const reason = (now: number, tolerance?: number) => {
    const r = verify(SECRET, h, BODY, { now: at(now), tolerance });
    return r.ok ? "ok" : r.reason;
  };
  assert.equal(reason(T + 300), "ok");
  assert.equal(reason(T - 300), "ok");
  assert.equal(reason(T + 301), "too_old");
  assert.equal(reason(T - 301), "too_new");
  assert.equal(reason(T + 400, 600), "ok");
});

test("the default clock is now", () => {
  const ts = String(Math.floor(Date.now() / 1000));
  assert.ok(verify(SECRET, headers(ts, sign(SECRET, ts, BODY)), BODY).ok);
  assert.equal(verify(SECRET, headers(String(T), sign(SECRET, String(T), BODY)), BODY).ok, false);
});

test("rotation: a new,old header verifies with either secret", () => {
  const h = headers(String(T), `${sign(SECRET, String(T), BODY)},${sign("wss_previous_secret", String(T), BODY)}`);
  assert.ok(verify(SECRET, h, BODY, { now: at(T) }).ok);
  assert.ok(verify("wss_previous_secret", h, BODY, { now: at(T) }).ok);
  assert.equal(verify("wss_neither_secret", h, BODY, { now: at(T) }).ok, false);
});

test("header forms: Node record, fetch Headers, Map, pairs; body as string or bytes", () => {
  const sig = sign(SECRET, String(T), BODY);
  const now = { now: at(T) };
  assert.ok(verify(SECRET, { "X-WSS-Timestamp": String(T), "X-WSS-Signature": sig }, BODY, now).ok);
  assert.ok(verify(SECRET, new Headers({ "X-WSS-Timestamp": String(T), "X-WSS-Signature": sig }), BODY, now).ok);
  assert.ok(verify(SECRET, new Map([["x-wss-timestamp", String(T)], ["x-wss-signature", sig]]), BODY, now).ok);
  assert.ok(verify(SECRET, [["X-WSS-Timestamp", String(T)], ["X-WSS-Signature", sig]], BODY.toString("utf8"), now).ok);
  assert.ok(verify(Buffer.from(SECRET), headers(String(T), sig), new Uint8Array(BODY), now).ok);
  const missing = verify(SECRET, { "x-wss-signature": undefined }, BODY, now);
  assert.equal(missing.ok ? "ok" : missing.reason, "missing_timestamp");
});

test("absurd timestamps are refused, not thrown", () => {
  const r = verify(SECRET, headers("9".repeat(5000), "0".repeat(64)), BODY, { now: at(T) });
  assert.equal(r.ok ? "ok" : r.reason, "bad_timestamp");
  const padded = "0".repeat(5000) + String(T);
  assert.ok(verify(SECRET, headers(padded, sign(SECRET, padded, BODY)), BODY, { now: at(T) }).ok);
});
