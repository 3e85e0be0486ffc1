/**
 * React bindings for Tally: `useCounterWebSocket` watches a counter live and keeps the TanStack
 * Query cache in sync; query and mutation hooks cover the seven procedures on one key factory.
 */

export { TallyProvider, useTallyClient, useTallyPrincipal } from "./context.js";
export { counterKeys, type CounterKeys, type HistoryParams } from "./keys.js";
export { applySnapshot, applyUpdate } from "./cache.js";
export { entryOf } from "./history.js";
export {
  useCounterWebSocket,
  type CounterWebSocket,
  type UseCounterWebSocketOptions,
} from "./use-counter-websocket.js";
export {
  useCounterHistory,
  useCounterKeys,
  useCounterMetadata,
  useCounterValue,
  useDecrementCounter,
  useIncrementCounter,
  useResetCounter,
  useSetCounterValue,
  type CounterMutationOptions,
} from "./queries.js";
