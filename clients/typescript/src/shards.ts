/**
 * Which stream an event goes to when wss runs with sharded streams (docs/contract.md §8).
 *
 * With `WSS_STREAM_SHARDS=N` the service reads N streams, and one tenant's events must all land in
 * the same one, or they are not delivered in order. `PublishEvent` picks the shard itself; a
 * producer that writes with `XADD` picks it here, by the same function as the service:
 *
 *     await redis.xadd(streamKey("wss:", "acme", 8), "*", "tenant", "acme", "type", "order.created", "data", '{"order_id":"A-7"}');
 *
 * The function is fixed by the contract, so every implementation (the service's, these, a
 * producer's own) gives the same shard; `tests/vectors/shards.json` holds the cases they all pass.
 * The CRC is computed here rather than with `zlib.crc32`, which Node has only from 20.15 and 22.2.
 */

/** The IEEE CRC-32's table (reflected polynomial 0xEDB88320), as zlib builds it. */
const CRC_TABLE: Uint32Array = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let bit = 0; bit < 8; bit++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[i] = c;
  }
  return table;
})();

/** The CRC-32 of `bytes` that zlib's `crc32` computes, as an unsigned integer (0 ..= 2^32 - 1). */
function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  // JavaScript's bitwise operators yield signed 32-bit integers; `>>> 0` reads the bits unsigned,
  // without which a CRC with the high bit set would give a negative remainder below.
  return (crc ^ 0xffffffff) >>> 0;
}

/** A lone (unpaired) UTF-16 surrogate: `\p{Cs}` matches only those in a `u` regular expression. */
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * The shard, in `0 .. n-1`, of `tenant`'s events when the service runs with `n` shards: the CRC-32
 * (IEEE, zlib's) of the tenant id's UTF-8 bytes, mod `n`.
 *
 * `n` is the service's `WSS_STREAM_SHARDS`; with `n === 1` every tenant is in shard 0. Throws a
 * `RangeError` when `n` is not an integer ≥ 1 or `tenant` holds a lone surrogate (it has no UTF-8
 * form; encoding it as U+FFFD would hash another string), a `TypeError` when `tenant` is not a
 * string.
 */
export function shardOf(tenant: string, n: number): number {
  if (typeof tenant !== "string") throw new TypeError(`tenant must be a string (the tenant id), got ${typeof tenant}`);
  if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`n must be the service's WSS_STREAM_SHARDS, an integer >= 1; got ${String(n)}`);
  if (LONE_SURROGATE.test(tenant)) throw new RangeError("tenant holds a lone UTF-16 surrogate, which has no UTF-8 form");
  return crc32(new TextEncoder().encode(tenant)) % n;
}

/**
 * The Redis key of the stream that holds `tenant`'s events: `<prefix>events` when `n === 1` (the
 * unsharded stream keeps its name), else `<prefix>events:{k}` with `k = shardOf(tenant, n)`; the
 * braces are the Redis Cluster hash tag that keeps the shard's keys in one slot.
 *
 * `prefix` is the service's `WSS_KEY_PREFIX` (default `wss:`), used as it is.
 */
export function streamKey(prefix: string, tenant: string, n: number): string {
  const shard = shardOf(tenant, n);
  return n === 1 ? `${prefix}events` : `${prefix}events:{${shard}}`;
}
