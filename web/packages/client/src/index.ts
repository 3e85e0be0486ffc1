/**
 * Tally's TypeScript client: typed calls for the seven RPC procedures, writes that count once
 * (idempotency keys, sent again while their fate is unknown, queued while offline), and live
 * subscriptions to counters, all on one socket per client (`client.connection`) that keeps
 * itself alive, reconnects by the shared rules and resumes without gaps.
 * It has no runtime dependencies and runs in browsers and in Node.js (pass `ws` as `WebSocket`
 * on Node.js versions without a global one).
 *
 * ```ts
 * const client = new TallyClient({ baseUrl: "http://127.0.0.1:8094" });
 * await client.increment("likes");
 * const likes = new CounterSubscription(client, "likes");
 * likes.subscribe(() => console.log(likes.getState().value));
 * ```
 */

export * from "./protocol.js";
export {
  Credentials,
  TallyTokenError,
  inspectToken,
  type GetToken,
  type TokenInfo,
} from "./auth.js";
export { Backoff, type BackoffOptions } from "./backoff.js";
export {
  TallyClient,
  TallyConnectionError,
  TallyError,
  type CallOptions,
  type TallyClientOptions,
  type WebSocketConstructor,
  type CompareOptions,
  type WriteOptions,
} from "./rpc.js";
export {
  WRITE_BACKOFF,
  WRITE_RETRY_FOR,
  idempotencyKeyProblem,
  newIdempotencyKey,
} from "./write.js";
export {
  TallyConnection,
  type ConnectionSettings,
  type ConnectionState,
  type ServerWatchHandlers,
  type SocketStatus,
  type WatchHandlers,
  type WatchOptions,
} from "./connection.js";
export type { Presence, ServerStats } from "./socket-frames.js";
export {
  DEFAULT_RECONNECT_RULES,
  ReconnectMachine,
  type ReconnectAction,
  type ReconnectEvent,
  type ReconnectRules,
} from "./reconnect.js";
export {
  CounterSubscription,
  TallyWatchError,
  describeClose,
  type ConnectionStatus,
  type SubscriptionEvents,
  type SubscriptionOptions,
  type SubscriptionState,
} from "./subscription.js";
