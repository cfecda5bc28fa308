// The package's entry point: the client, and every generated message, enum and stub by name.
export { WssClient, promised, type WssClientOptions, type Promised } from "./client";
export { errorDetails, DETAILS_KEY, type ErrorDetails } from "./errors";
export { credentials, Metadata, status, type ServiceError, type CallOptions } from "@grpc/grpc-js";
export * from "./gen";
export { Duration } from "./gen/google/protobuf/duration";
