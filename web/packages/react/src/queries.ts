/**
 * Query and mutation hooks for the seven procedures, on one key factory. Mutations write their
 * answer into the cache the same way live updates do, so the writer's own view never waits for
 * its socket.
 */

import type { HistoryPage, Metadata, TallyClient, Update, ValueAnswer } from "@tally/client";
import {
  useMutation,
  useQuery,
  useQueryClient,
  type UseMutationOptions,
  type UseQueryOptions,
} from "@tanstack/react-query";
import { applyUpdate } from "./cache.js";
import { useTallyClient } from "./context.js";
import { counterKeys, type HistoryParams } from "./keys.js";

type QueryOptions<T> = Omit<
  UseQueryOptions<T, Error, T, readonly unknown[]>,
  "queryKey" | "queryFn"
>;

/** The query keys of the current server (see `counterKeys`). */
export function useCounterKeys() {
  return counterKeys(useTallyClient());
}

/**
 * A query of state that live updates also write. An answer that left the server before a live
 * update may arrive after it, so the cached entry is kept when its version is newer.
 */
function useLiveQuery<T>(
  queryKey: readonly unknown[],
  fetch: () => Promise<T>,
  version: (data: T) => number,
  options: QueryOptions<T>,
) {
  const queryClient = useQueryClient();
  return useQuery({
    queryKey,
    queryFn: async () => {
      const answer = await fetch();
      const cached = queryClient.getQueryData<T>(queryKey);
      return cached !== undefined && version(cached) > version(answer) ? cached : answer;
    },
    ...options,
  });
}

/** `counter.getValue`: `{ value, version }`, kept live by `useCounterWebSocket`. */
export function useCounterValue(name: string, options: QueryOptions<ValueAnswer> = {}) {
  const client = useTallyClient();
  const key = counterKeys(client).value(name);
  return useLiveQuery(
    key,
    () => client.getValue(name),
    (data) => data.version,
    options,
  );
}

/** `counter.getMetadata`, kept live by `useCounterWebSocket`. */
export function useCounterMetadata(name: string, options: QueryOptions<Metadata> = {}) {
  const client = useTallyClient();
  const key = counterKeys(client).metadata(name);
  return useLiveQuery(
    key,
    () => client.getMetadata(name),
    (data) => data.operationCount,
    options,
  );
}

/** One page of `counter.getHistory`, newest first; refetched after each live update. */
export function useCounterHistory(
  name: string,
  params: HistoryParams = {},
  options: QueryOptions<HistoryPage> = {},
) {
  const client = useTallyClient();
  return useQuery({
    queryKey: counterKeys(client).history(name, params),
    queryFn: () => client.getHistory(name, params),
    ...options,
  });
}

type WriteOptions<V> = Omit<UseMutationOptions<Update, Error, V>, "mutationFn">;

function useWrite<V extends { name: string }>(
  write: (client: TallyClient, variables: V) => Promise<Update>,
  options: WriteOptions<V>,
) {
  const client = useTallyClient();
  const queryClient = useQueryClient();
  return useMutation<Update, Error, V>({
    ...options,
    mutationFn: (variables) => write(client, variables),
    onSuccess: (update, variables, onMutateResult, context) => {
      applyUpdate(queryClient, counterKeys(client), update);
      return options.onSuccess?.(update, variables, onMutateResult, context);
    },
  });
}

/** `counter.increment`: `mutate({ name, amount })`. */
export function useIncrementCounter(options: WriteOptions<{ name: string; amount?: number }> = {}) {
  return useWrite((client, { name, amount }) => client.increment(name, amount), options);
}

/** `counter.decrement`: `mutate({ name, amount })`. */
export function useDecrementCounter(options: WriteOptions<{ name: string; amount?: number }> = {}) {
  return useWrite((client, { name, amount }) => client.decrement(name, amount), options);
}

/** `counter.setValue`: `mutate({ name, value })`. */
export function useSetCounterValue(options: WriteOptions<{ name: string; value: number }> = {}) {
  return useWrite((client, { name, value }) => client.setValue(name, value), options);
}

/** `counter.reset`: `mutate({ name })`. */
export function useResetCounter(options: WriteOptions<{ name: string }> = {}) {
  return useWrite((client, { name }) => client.reset(name), options);
}
