/**
 * The `google.rpc` details every wss error carries (docs/api.md, "Errors"): each refusal keeps its
 * gRPC code and message, and adds in the `grpc-status-details-bin` trailer a `google.rpc.ErrorInfo`
 * (domain `wss`, a stable UPPER_SNAKE `reason` such as `TENANT_NOT_FOUND` or `STALE_ETAG`) and, for
 * INVALID_ARGUMENT, a `google.rpc.BadRequest` naming the request field. Branch on `reason` (and
 * `field`), never on the message:
 *
 *     try {
 *       await wss.tenants.getTenant({ tenantId: "acme" });
 *     } catch (e) {
 *       if (errorDetails(e as ServiceError)?.reason === "TENANT_NOT_FOUND") { ... }
 *     }
 *
 * The three messages are read with the protobuf runtime's wire reader (they are small and fixed:
 * google/rpc/status.proto and error_details.proto), so the package needs no generated
 * googleapis code.
 */
import type { ServiceError } from "@grpc/grpc-js";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

/** The trailer that holds a serialized `google.rpc.Status`. */
export const DETAILS_KEY = "grpc-status-details-bin";

export interface ErrorDetails {
  /** `ErrorInfo.reason`: stable, UPPER_SNAKE (docs/api.md lists every one); "" when absent. */
  reason: string;
  /** `ErrorInfo.domain`: `wss`. */
  domain: string;
  /** `ErrorInfo.metadata`: `field` for INVALID_ARGUMENT, `kind` and `id` for NOT_FOUND. */
  metadata: Record<string, string>;
  /** `BadRequest` field violations. */
  fieldViolations: { field: string; description: string }[];
  /** The request field an INVALID_ARGUMENT names; "" otherwise. */
  field: string;
}

const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";
const BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest";

/** The length-delimited fields of a message, as (field number, bytes); other fields skipped. */
function lengthDelimited(bytes: Uint8Array): [number, Uint8Array][] {
  const reader = new BinaryReader(bytes);
  const out: [number, Uint8Array][] = [];
  while (reader.pos < reader.len) {
    const [no, type] = reader.tag();
    if (type === WireType.LengthDelimited) {
      out.push([no, reader.bytes()]);
    } else {
      reader.skip(type, no);
    }
  }
  return out;
}

const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);

/** The `string` fields 1 and 2 of a message (a map entry's key and value, a violation's field and description). */
function pair(bytes: Uint8Array): [string, string] {
  let first = "";
  let second = "";
  for (const [no, value] of lengthDelimited(bytes)) {
    if (no === 1) first = text(value);
    if (no === 2) second = text(value);
  }
  return [first, second];
}

/**
 * The details of a failed call's error; `undefined` when it carries none (an error made by gRPC
 * itself, such as a deadline or a refused connection).
 */
export function errorDetails(err: ServiceError): ErrorDetails | undefined {
  const raw = err?.metadata?.get(DETAILS_KEY)?.[0];
  if (raw === undefined || typeof raw === "string") return undefined;
  const details: ErrorDetails = { reason: "", domain: "", metadata: {}, fieldViolations: [], field: "" };
  // google.rpc.Status: 3 = repeated google.protobuf.Any details (1 = type_url, 2 = value).
  for (const [no, any] of lengthDelimited(raw)) {
    if (no !== 3) continue;
    const [typeUrl] = pair(any);
    const value = lengthDelimited(any).find(([n]) => n === 2)?.[1] ?? new Uint8Array();
    if (typeUrl === ERROR_INFO) {
      // google.rpc.ErrorInfo: 1 = reason, 2 = domain, 3 = map<string, string> metadata.
      for (const [n, part] of lengthDelimited(value)) {
        if (n === 1) details.reason = text(part);
        if (n === 2) details.domain = text(part);
        if (n === 3) {
          const [key, entry] = pair(part);
          details.metadata[key] = entry;
        }
      }
    } else if (typeUrl === BAD_REQUEST) {
      // google.rpc.BadRequest: 1 = repeated FieldViolation (1 = field, 2 = description).
      for (const [n, part] of lengthDelimited(value)) {
        if (n === 1) {
          const [field, description] = pair(part);
          details.fieldViolations.push({ field, description });
        }
      }
    }
  }
  details.field = details.fieldViolations[0]?.field ?? details.metadata.field ?? "";
  return details;
}
