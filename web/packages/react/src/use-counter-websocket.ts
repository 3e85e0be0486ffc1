/**
 * `useCounterWebSocket`: the seed's hook. It watches one counter live over the client's one
 * socket (`client.connection`, shared by every hook of that client: a remount or StrictMode's
 * double mount reuses it), exposes the subscription's state (what its principal may do, who
 * watches, which writes wait to be sent) through `useSyncExternalStore`, and keeps the TanStack
 * Query cache of that counter in sync (when a `QueryClientProvider` is above it), under the keys
 * of the principal the socket acts as.
 */

import {
  CounterSubscription,
  type Action,
  type ConnectionStatus,
  type Metadata,
  type Presence,
  type SubscriptionOptions,
  type TallyWatchError,
  type Update,
} from "@tally/client";
import { QueryClientContext } from "@tanstack/react-query";
import { useContext, useEffect, useMemo, useRef, useSyncExternalStore } from "react";
import { applySnapshot, applyUpdate } from "./cache.js";
import { useTallyClient } from "./context.js";
import { counterKeys } from "./keys.js";

/** Options of `useCounterWebSocket`. */
export interface UseCounterWebSocketOptions extends Omit<SubscriptionOptions, "enabled"> {
  /** Watch while true (the "Live updates" toggle); true by default. */
  enabled?: boolean;
  /** Called for each Update applied: live, or replayed after a reconnect. */
  onUpdate?: (update: Update) => void;
}

/** What `useCounterWebSocket` returns. */
export interface CounterWebSocket {
  status: ConnectionStatus;
  isConnected: boolean;
  isConnecting: boolean;
  /** Why the last connection ended or failed, or null. */
  error: TallyWatchError | null;
  /** When the last applied Update was committed. */
  lastUpdate: Date | null;
  /** The counter's value as last seen on the socket, or null before the first snapshot. */
  value: number | null;
  version: number | null;
  metadata: Metadata | null;
  /** When the next reconnect attempt is due (epoch ms), while one is scheduled. */
  retryAt: number | null;
  /**
   * What the socket's principal may do to the counter (`read`, `increment`, …, `admin`), from the
   * latest snapshot or `authenticated` answer; null until one came. See `allows`.
   */
  can: readonly Action[] | null;
  /** Whom the socket acts as (a JWT's `sub`, `key:ID`, `anonymous`), or null before it connects. */
  principal: string | null;
  /**
   * How many watch the counter (`watchers`: subscriptions over every socket; `users`: distinct
   * principals among them), with the `presence` option; null until the server said.
   */
  presence: Presence | null;
  /**
   * This counter's writes made through the client and not answered yet: queued while offline,
   * or on their way ("3 changes waiting").
   */
  pendingWrites: number;
  /**
   * `error` when it is an access-control refusal (`error.code` is `unauthenticated`,
   * `token_expired` or `forbidden`): a new credential is needed before watching again.
   */
  authError: TallyWatchError | null;
  /** Reconnects now instead of waiting for the backoff. */
  reconnect: () => void;
  /** The underlying subscription, for anything the hook does not expose. */
  subscription: CounterSubscription;
}

/**
 * Watches counter `name`. A change of `types`, `maxRate` or `presence` makes a new subscription
 * (the server's subscription is made with them); `since` is read when one is made. Two hooks of
 * one counter share the server's subscription, with the first one's options.
 */
export function useCounterWebSocket(
  name: string,
  options: UseCounterWebSocketOptions = {},
): CounterWebSocket {
  const { enabled = true, onUpdate, ...subscriptionOptions } = options;
  const { presence, maxRate, types } = subscriptionOptions;
  const client = useTallyClient();
  const queryClient = useContext(QueryClientContext);

  const optionsRef = useRef(subscriptionOptions);
  optionsRef.current = subscriptionOptions;
  const onUpdateRef = useRef(onUpdate);
  onUpdateRef.current = onUpdate;

  // Made during render but inert until the effect below enables it, so StrictMode's double
  // render and an aborted render open no socket. `types` counts by its contents, not identity.
  const typesKey = types?.join(",");
  const subscription = useMemo(
    () => new CounterSubscription(client, name, { ...optionsRef.current, enabled: false }),
    [client, name, presence, maxRate, typesKey],
  );

  useEffect(() => {
    // What the socket says goes to the keys of the principal it acts as.
    const keys = () => counterKeys(client, subscription.getState().principal);
    const offSnapshot = subscription.on("snapshot", (snapshot) => {
      if (queryClient) applySnapshot(queryClient, keys(), snapshot);
    });
    const offUpdate = subscription.on("update", (update) => {
      if (queryClient) applyUpdate(queryClient, keys(), update);
      onUpdateRef.current?.(update);
    });
    return () => {
      offSnapshot();
      offUpdate();
    };
  }, [client, queryClient, subscription]);

  useEffect(() => {
    subscription.setEnabled(enabled);
    return () => subscription.disable();
  }, [subscription, enabled]);

  const state = useSyncExternalStore(
    subscription.subscribe,
    subscription.getState,
    subscription.getState,
  );

  // Between the first render and the effect that enables it, a wanted connection is on its way.
  const status = enabled && !state.enabled && state.error === null ? "connecting" : state.status;
  return {
    status,
    isConnected: status === "connected",
    isConnecting: status === "connecting",
    error: state.error,
    lastUpdate: state.lastUpdate,
    value: state.value,
    version: state.version,
    metadata: state.metadata,
    retryAt: state.retryAt,
    can: state.can,
    principal: state.principal,
    presence: state.presence,
    pendingWrites: state.pendingWrites,
    authError: state.error?.code ? state.error : null,
    reconnect: () => subscription.reconnectNow(),
    subscription,
  };
}
