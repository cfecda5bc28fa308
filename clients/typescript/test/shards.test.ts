// shardOf and streamKey against every case of tests/vectors/shards.json, the cases the service's
// own shard function passes too, and against Node's zlib.crc32 (where this Node has it) on a
// thousand tenant ids. Pure: no Redis, no service.
import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { test } from "node:test";
import * as zlib from "node:zlib";

import { shardOf, streamKey } from "../src";

// Compiled to dist/test/: the package is two levels up, the repository two more.
const ROOT = resolve(__dirname, "..", "..", "..", "..");
const VECTORS = JSON.parse(readFileSync(resolve(ROOT, "tests", "vectors", "shards.json"), "utf8"));

interface Case { name: string; tenant: string; n: number; is_tenant_id: boolean; crc32: number; shard: number }
interface KeyCase { prefix: string; tenant: string; n: number; key: string }

test("the vectors are all there", () => {
  assert.ok(VECTORS.cases.length >= 30 && VECTORS.stream_keys.length >= 4);
  // A CRC above 2^31 (negative as an int32) with an n that is not a power of two, where `crc | 0`
  // would give a negative shard.
  assert.ok((VECTORS.cases as Case[]).some((c) => c.crc32 >= 2 ** 31 && (c.crc32 | 0) % c.n !== c.shard));
  // A character outside the BMP: two UTF-16 code units, four UTF-8 bytes.
  assert.ok((VECTORS.cases as Case[]).some((c) => [...c.tenant].length < c.tenant.length));
});

for (const c of VECTORS.cases as Case[]) {
  test(`vector: ${c.name}`, () => {
    assert.equal(shardOf(c.tenant, c.n), c.shard);
  });
}

for (const c of VECTORS.stream_keys as KeyCase[]) {
  test(`stream key: ${c.key}`, () => {
    assert.equal(streamKey(c.prefix, c.tenant, c.n), c.key);
  });
}

test("n = 1 keeps the unsharded stream's name", () => {
  assert.equal(streamKey("wss:", "acme", 1), "wss:events");
  assert.equal(streamKey("wss:", "acme", 8), "wss:events:{6}");
});

// zlib.crc32 arrived in Node 20.15 and 22.2; on an older Node this check has nothing to compare with.
const zlibCrc32 = (zlib as { crc32?: (data: Uint8Array) => number }).crc32;
test("agrees with zlib.crc32 on a thousand tenant ids", { skip: zlibCrc32 === undefined && "this Node has no zlib.crc32" }, () => {
  for (let i = 0; i < 1000; i++) {
    const tenant = `tenant-${i}`;
    for (const n of [1, 3, 8, 1000, 2 ** 32 - 1]) assert.equal(shardOf(tenant, n), zlibCrc32!(Buffer.from(tenant, "utf8")) % n, `${tenant} mod ${n}`);
  }
});

test("n must be an integer of at least 1", () => {
  for (const n of [0, -1, 1.5, NaN, Infinity, 2 ** 53]) {
    assert.throws(() => shardOf("acme", n), { name: "RangeError", message: /WSS_STREAM_SHARDS/ }, String(n));
    assert.throws(() => streamKey("wss:", "acme", n), { name: "RangeError", message: /WSS_STREAM_SHARDS/ }, String(n));
  }
  assert.throws(() => shardOf("acme", "8" as unknown as number), RangeError);
});

test("the tenant must be a string", () => {
  assert.throws(() => shardOf(Buffer.from("acme") as unknown as string, 8), { name: "TypeError", message: /tenant must be a string/ });
});

test("a lone surrogate is refused rather than hashed as U+FFFD", () => {
  assert.throws(() => shardOf("acme\ud800", 8), { name: "RangeError", message: /lone UTF-16 surrogate/ });
  assert.equal(shardOf("\u{1F680}", 1000), 46); // a well-formed pair is fine (the emoji vector)
});
