/**
 * `useCounterWebSocket`: the seed's hook. It watches one counter live, exposes the connection's
 * state through `useSyncExternalStore`, and keeps the TanStack Query cache of that counter in sync
 * (when a `QueryClientProvider` is above it).
 */

import {
  CounterSubscription,
  type ConnectionStatus,
  type Metadata,
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
export interface UseCounterWebSocketOptions extends Omit<
  SubscriptionOptions,
  "enabled" | "random"
> {
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
  /** Reconnects now instead of waiting for the backoff. */
  reconnect: () => void;
  /** The underlying subscription, for anything the hook does not expose. */
  subscription: CounterSubscription;
}

/**
 * Watches counter `name`. The other options (ping interval, backoff, …) are read when the
 * subscription is made, that is when `name` or the client changes.
 */
export function useCounterWebSocket(
  name: string,
  options: UseCounterWebSocketOptions = {},
): CounterWebSocket {
  const { enabled = true, onUpdate, ...subscriptionOptions } = options;
  const client = useTallyClient();
  const queryClient = useContext(QueryClientContext);

  const optionsRef = useRef(subscriptionOptions);
  optionsRef.current = subscriptionOptions;
  const onUpdateRef = useRef(onUpdate);
  onUpdateRef.current = onUpdate;

  // Made during render but inert until the effect below enables it, so StrictMode's double
  // render and an aborted render open no socket.
  const subscription = useMemo(
    () => new CounterSubscription(client, name, { ...optionsRef.current, enabled: false }),
    [client, name],
  );

  useEffect(() => {
    const keys = counterKeys(client);
    const offSnapshot = subscription.on("snapshot", (snapshot) => {
      if (queryClient) applySnapshot(queryClient, keys, snapshot);
    });
    const offUpdate = subscription.on("update", (update) => {
      if (queryClient) applyUpdate(queryClient, keys, update);
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
    reconnect: () => subscription.reconnectNow(),
    subscription,
  };
}
