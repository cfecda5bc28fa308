/**
 * A thin client for the wss control plane: the generated grpc-js stubs (src/gen/, from proto/ by
 * clients/generate) behind one channel, with the bearer token and a default deadline added to
 * every call, and promise-returning methods that take partial requests.
 *
 *     const wss = new WssClient("127.0.0.1:50051", { token: process.env.WSS_ADMIN_TOKEN });
 *     await wss.tenants.createTenant({ tenantId: "acme" });
 *
 * Each service's methods are built from its generated definition, so a new rpc or field in
 * proto/ appears here after `clients/generate` without any change to this file.
 */
import {
  type CallOptions,
  type ChannelCredentials,
  type Client,
  type ClientOptions,
  credentials as grpcCredentials,
  InterceptingCall,
  type Interceptor,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";

import { DeliveryServiceClient, DeliveryServiceDefinition } from "./gen/wss/v1/deliveries";
import { EventServiceClient, EventServiceDefinition } from "./gen/wss/v1/events";
import { RetryPolicyServiceClient, RetryPolicyServiceDefinition } from "./gen/wss/v1/retry_policies";
import { TenantServiceClient, TenantServiceDefinition } from "./gen/wss/v1/tenants";
import { TokenServiceClient, TokenServiceDefinition } from "./gen/wss/v1/tokens";
import { WebhookServiceClient, WebhookServiceDefinition } from "./gen/wss/v1/webhooks";

export interface WssClientOptions {
  /** Sent as `authorization: Bearer <token>` on every call; needed when wss has WSS_ADMIN_TOKEN. */
  token?: string;
  /** Deadline of a call that sets none of its own, in milliseconds; default 10 000. */
  timeoutMs?: number;
  /** Default: plaintext (`credentials.createInsecure()`); use `credentials.createSsl()` behind TLS. */
  credentials?: ChannelCredentials;
  /** Further grpc-js channel options. */
  channelOptions?: Partial<ClientOptions>;
}

type MethodDefinition = {
  requestType: { fromPartial(object: never): unknown };
  responseType: { decode(input: Uint8Array, length?: number): unknown };
};
type ServiceDefinition = { methods: Record<string, MethodDefinition> };

/** One promise-returning method per rpc: a partial request in, the response message out. */
export type Promised<D extends ServiceDefinition> = {
  [K in keyof D["methods"]]: (
    request?: Parameters<D["methods"][K]["requestType"]["fromPartial"]>[0],
    options?: Partial<CallOptions>,
  ) => Promise<ReturnType<D["methods"][K]["responseType"]["decode"]>>;
};

type UnaryFn = (request: unknown, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: unknown) => void) => void;

/**
 * Promise-returning methods for any generated service: `definition` is its `…ServiceDefinition`,
 * `stub` its grpc-js client (e.g. from {@link WssClient.stub}).
 */
export function promised<D extends ServiceDefinition>(definition: D, stub: Client): Promised<D> {
  const methods: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(definition.methods)) {
    const call = (stub as unknown as Record<string, UnaryFn>)[name].bind(stub);
    const fromPartial = method.requestType.fromPartial as (object: unknown) => unknown;
    methods[name] = (request: unknown = {}, options: Partial<CallOptions> = {}) =>
      new Promise((resolve, reject) => {
        call(fromPartial(request), new Metadata(), options, (error, response) => (error ? reject(error) : resolve(response)));
      });
  }
  return methods as Promised<D>;
}

/** Adds the bearer token (unless the call brings its own) and the default deadline. */
function authAndDeadline(token: string | undefined, timeoutMs: number): Interceptor {
  return (options, nextCall) => {
    const withDeadline = options.deadline === undefined ? { ...options, deadline: Date.now() + timeoutMs } : options;
    return new InterceptingCall(nextCall(withDeadline), {
      start(metadata, listener, next) {
        if (token && metadata.get("authorization").length === 0) metadata.set("authorization", `Bearer ${token}`);
        next(metadata, listener);
      },
    });
  };
}

export class WssClient {
  readonly tenants: Promised<typeof TenantServiceDefinition>;
  readonly webhooks: Promised<typeof WebhookServiceDefinition>;
  readonly retryPolicies: Promised<typeof RetryPolicyServiceDefinition>;
  readonly events: Promised<typeof EventServiceDefinition>;
  readonly deliveries: Promised<typeof DeliveryServiceDefinition>;
  readonly tokens: Promised<typeof TokenServiceDefinition>;
  /** The generated callback-style stubs, sharing the same channel, token and deadline. */
  readonly stubs: {
    tenants: TenantServiceClient;
    webhooks: WebhookServiceClient;
    retryPolicies: RetryPolicyServiceClient;
    events: EventServiceClient;
    deliveries: DeliveryServiceClient;
    tokens: TokenServiceClient;
  };

  private readonly creds: ChannelCredentials;
  private readonly sharedOptions: ClientOptions;

  /** `target`: `host:port` of the control plane (wss's WSS_GRPC_ADDR). */
  constructor(readonly target: string, options: WssClientOptions = {}) {
    const creds = options.credentials ?? grpcCredentials.createInsecure();
    const clientOptions: ClientOptions = {
      ...options.channelOptions,
      interceptors: [authAndDeadline(options.token, options.timeoutMs ?? 10_000), ...(options.channelOptions?.interceptors ?? [])],
    };
    const tenants = new TenantServiceClient(target, creds, clientOptions);
    const shared = { ...clientOptions, channelOverride: tenants.getChannel() };
    this.creds = creds;
    this.sharedOptions = shared;
    this.stubs = {
      tenants,
      webhooks: new WebhookServiceClient(target, creds, shared),
      retryPolicies: new RetryPolicyServiceClient(target, creds, shared),
      events: new EventServiceClient(target, creds, shared),
      deliveries: new DeliveryServiceClient(target, creds, shared),
      tokens: new TokenServiceClient(target, creds, shared),
    };
    this.tenants = promised(TenantServiceDefinition, this.stubs.tenants);
    this.webhooks = promised(WebhookServiceDefinition, this.stubs.webhooks);
    this.retryPolicies = promised(RetryPolicyServiceDefinition, this.stubs.retryPolicies);
    this.events = promised(EventServiceDefinition, this.stubs.events);
    this.deliveries = promised(DeliveryServiceDefinition, this.stubs.deliveries);
    this.tokens = promised(TokenServiceDefinition, this.stubs.tokens);
  }

  /**
   * A generated stub of any other service (one added to proto/ after this file was written), on
   * the same channel, token and deadline: `promised(FooServiceDefinition, wss.stub(FooServiceClient))`.
   */
  stub<C extends Client>(ctor: new (address: string, credentials: ChannelCredentials, options?: Partial<ClientOptions>) => C): C {
    return new ctor(this.target, this.creds, this.sharedOptions);
  }

  /** Closes the channel; calls made afterwards fail. */
  close(): void {
    this.stubs.tenants.close();
  }

  /** Keeps the token out of logs and `console.log(client)`. */
  toJSON(): { target: string } {
    return { target: this.target };
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `WssClient { target: ${JSON.stringify(this.target)} }`;
  }
}
