/**
 * Verify the requests wss sends to a webhook receiver. Node's `crypto` only; one file to copy.
 *
 *     const result = verify(secret, req.headers, rawBody);
 *     if (!result.ok) return res.status(401).send(result.reason);
 *
 * The scheme (docs/contract.md §3): `X-WSS-Signature` is the lowercase hex HMAC-SHA256, keyed with the
 * UTF-8 bytes of the webhook's secret, of the `X-WSS-Timestamp` header value *as sent* followed
 * directly by the *raw* request body. The timestamp is Unix epoch seconds (wss sends those) or an
 * RFC 3339 date-time with an offset; it must be within `tolerance` seconds of the receiver's
 * clock, either way, which makes a captured request useless for replays. During a secret rotation
 * the signature header carries several comma-separated signatures (new first, then old): the
 * request is accepted when any of them matches. Comparisons are constant-time.
 *
 * The rules, the reason codes and their order match the Rust reference `wss::verify_headers`;
 * both are tested against `tests/vectors/signatures.json` and `clients/verify/cases.json`.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

export const TIMESTAMP_HEADER = "X-WSS-Timestamp";
export const SIGNATURE_HEADER = "X-WSS-Signature";
/** Seconds a timestamp may be away from the receiver's clock, in either direction. */
export const DEFAULT_TOLERANCE = 300;

/** Every reason a request can be refused for, in the order they are checked. */
export const REASONS = ["missing_timestamp", "missing_signature", "bad_timestamp", "too_old", "too_new", "no_match"] as const;
export type Reason = (typeof REASONS)[number];

/** `ok`, or why not: `reason` is one of {@link REASONS}; `detail` says what to check. Never the secret. */
export type Verification = { ok: true } | { ok: false; reason: Reason; detail: string };

/**
 * Node's `req.headers` (or `req.headersDistinct`), a fetch `Headers`, a `Map`, or `[name, value]`
 * pairs. Names match case-insensitively.
 */
export type HeaderSource =
  | Record<string, string | string[] | undefined>
  | { get(name: string): string | null }
  | Iterable<readonly [string, string]>;

export interface VerifyOptions {
  /** Seconds; default 300. */
  tolerance?: number;
  /** The receiver's clock, for tests; default now. */
  now?: Date;
}

type Secret = string | Uint8Array;
type Body = Uint8Array | string;

/** The `X-WSS-Signature` value wss sends: hex HMAC-SHA256(secret, timestamp ++ rawBody). */
export function sign(secret: Secret, timestamp: string, rawBody: Body): string {
  return mac(secret, timestamp, rawBody).toString("hex");
}

/**
 * Checks a request's `X-WSS-Timestamp` and `X-WSS-Signature` headers. The first timestamp header
 * counts; every signature header counts. `rawBody` must be the bytes exactly as received (with
 * Express: `express.raw({ type: "*\/*" })`), never re-serialized JSON.
 */
export function verify(secret: Secret, headers: HeaderSource, rawBody: Body, options: VerifyOptions = {}): Verification {
  const tolerance = options.tolerance ?? DEFAULT_TOLERANCE;
  const { timestamp, signatures } = findHeaders(headers);
  if (timestamp === undefined) return refuse("missing_timestamp", `the ${TIMESTAMP_HEADER} header is missing`);
  if (signatures.length === 0) return refuse("missing_signature", `the ${SIGNATURE_HEADER} header is missing`);
  const signedAt = parseTimestamp(timestamp);
  if (signedAt === undefined) {
    return refuse(
      "bad_timestamp",
      `the timestamp ${JSON.stringify(timestamp)} is neither Unix epoch seconds nor an RFC 3339 date-time with an offset`,
    );
  }
  const clock = (options.now ?? new Date()).getTime() / 1000;
  const age = clock - signedAt;
  if (age > tolerance) return refuse("too_old", `the timestamp is ${Math.ceil(age)} s old, more than the ${tolerance} s tolerance`);
  if (-age > tolerance) {
    return refuse("too_new", `the timestamp is ${Math.ceil(-age)} s in the future, more than the ${tolerance} s tolerance`);
  }

  const expected = mac(secret, timestamp, rawBody);
  let matched = false;
  for (const header of signatures) {
    for (const raw of header.split(",")) {
      const candidate = raw.trim();
      if (HEX64.test(candidate)) {
        // No early exit: every candidate is compared, each in constant time.
        matched = timingSafeEqual(Buffer.from(candidate, "hex"), expected) || matched;
      }
    }
  }
  if (matched) return { ok: true };
  return refuse(
    "no_match",
    "no signature matches: check that the secret is the webhook's current one and that the raw body is verified exactly as received",
  );
}

const HEX64 = /^[0-9a-fA-F]{64}$/;
const EPOCH = /^[0-9]+$/;
const RFC3339 = /^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))$/;
const I64_MAX = 9223372036854775807n;

function refuse(reason: Reason, detail: string): Verification {
  return { ok: false, reason, detail };
}

function toBytes(value: Secret | Body): Uint8Array {
  return typeof value === "string" ? Buffer.from(value, "utf8") : value;
}

function mac(secret: Secret, timestamp: string, rawBody: Body): Buffer {
  return createHmac("sha256", toBytes(secret)).update(Buffer.from(timestamp, "utf8")).update(toBytes(rawBody)).digest();
}

function findHeaders(headers: HeaderSource): { timestamp?: string; signatures: string[] } {
  let timestamp: string | undefined;
  const signatures: string[] = [];
  const take = (name: string, value: string | readonly string[] | undefined | null) => {
    if (value === undefined || value === null) return;
    const values = typeof value === "string" ? [value] : value;
    const lower = name.toLowerCase();
    if (lower === "x-wss-timestamp") {
      if (timestamp === undefined && values.length > 0) timestamp = values[0];
    } else if (lower === "x-wss-signature") {
      signatures.push(...values);
    }
  };
  if (headers instanceof Map || Array.isArray(headers)) {
    for (const [name, value] of headers as Iterable<readonly [string, string]>) take(name, value);
  } else if (typeof (headers as { get?: unknown }).get === "function") {
    const getter = headers as { get(name: string): string | null };
    take(TIMESTAMP_HEADER, getter.get(TIMESTAMP_HEADER));
    take(SIGNATURE_HEADER, getter.get(SIGNATURE_HEADER));
  } else if (typeof (headers as { [Symbol.iterator]?: unknown })[Symbol.iterator] === "function") {
    for (const [name, value] of headers as Iterable<readonly [string, string]>) take(name, value);
  } else {
    for (const [name, value] of Object.entries(headers as Record<string, string | string[] | undefined>)) take(name, value);
  }
  return { timestamp, signatures };
}

/** Unix seconds, or an RFC 3339 date-time with an offset (leap second 60 rolls over). */
function parseTimestamp(value: string): number | undefined {
  if (EPOCH.test(value)) {
    const digits = value.replace(/^0+(?=.)/, "");
    if (digits.length > 19 || BigInt(digits) > I64_MAX) return undefined;
    return Number(digits);
  }
  const m = RFC3339.exec(value);
  if (m === null) return undefined;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month) || hour > 23 || minute > 59 || second > 60) {
    return undefined;
  }
  let offset = 0;
  if (m[9] !== undefined) {
    const oh = Number(m[10]);
    const om = Number(m[11]);
    if (oh > 23 || om > 59) return undefined;
    offset = (oh * 3600 + om * 60) * (m[9] === "-" ? -1 : 1);
  }
  const fraction = m[7] === undefined ? 0 : Number(`0.${m[7].slice(0, 9)}`);
  return daysFromCivil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset + fraction;
}

function daysInMonth(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}

/** Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * ((month + 9) % 12) + 2) / 5) + day - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}
