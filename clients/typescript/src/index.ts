// The package's entry point: the client, the shard function, and every generated message, enum and stub
// by name.
export { WssClient, promised, type WssClientOptions, type Promised } from "./client";
export { errorDetails, DETAILS_KEY, type ErrorDetails } from "./errors";
export { shardOf, streamKey } from "./shards";
export { credentials, Metadata, status, type ServiceError, type CallOptions } from "@grpc/grpc-js";
export * from "./gen";
export { Duration } from "./gen/google/protobuf/duration";
