/**
 * Query and mutation hooks for the seven procedures, on one key factory. Mutations write their
 * answer into the cache the same way live updates do, so the writer's own view never waits for
 * its socket. Queries are keyed by the principal and wait until it is known.
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
import { useTallyClient, useTallyPrincipal } from "./context.js";
import { counterKeys, type HistoryParams } from "./keys.js";

type QueryOptions<T> = Omit<
  UseQueryOptions<T, Error, T, readonly unknown[]>,
  "queryKey" | "queryFn"
>;

/** The query keys of the current server and principal (see `counterKeys`). */
export function useCounterKeys() {
  return counterKeys(useTallyClient(), useTallyPrincipal());
}

/** The principal changed while a query was fetched, so its answer is not kept under its key. */
class PrincipalChangedError extends Error {
  override readonly name = "PrincipalChangedError";
}

/**
 * Fetches for `principal` only: if the client's credential changed before or during the
 * request, the answer may be another identity's and is not cached under this key.
 */
async function asPrincipal<T>(
  client: TallyClient,
  principal: string | null,
  fetch: () => Promise<T>,
): Promise<T> {
  const changed = () => new PrincipalChangedError("the credential changed during the request");
  if (client.principal !== principal) throw changed();
  const answer = await fetch();
  if (client.principal !== principal) throw changed();
  return answer;
}

/** `options.enabled`, and only once the principal is known. */
function enabledFor<T>(principal: string | null, options: QueryOptions<T>) {
  return principal === null ? false : (options.enabled ?? true);
}

/**
 * A query of state that live updates also write. An answer that left the server before a live
 * update may arrive after it, so the cached entry is kept when its version is newer.
 */
function useLiveQuery<T>(
  key: (keys: ReturnType<typeof counterKeys>) => readonly unknown[],
  fetch: (client: TallyClient) => Promise<T>,
  version: (data: T) => number,
  options: QueryOptions<T>,
) {
  const client = useTallyClient();
  const principal = useTallyPrincipal();
  const queryClient = useQueryClient();
  const queryKey = key(counterKeys(client, principal));
  return useQuery({
    ...options,
    queryKey,
    queryFn: async () => {
      const answer = await asPrincipal(client, principal, () => fetch(client));
      const cached = queryClient.getQueryData<T>(queryKey);
      return cached !== undefined && version(cached) > version(answer) ? cached : answer;
    },
    enabled: enabledFor(principal, options),
  });
}

/** `counter.getValue`: `{ value, version }`, kept live by `useCounterWebSocket`. */
export function useCounterValue(name: string, options: QueryOptions<ValueAnswer> = {}) {
  return useLiveQuery(
    (keys) => keys.value(name),
    (client) => client.getValue(name),
    (data) => data.version,
    options,
  );
}

/** `counter.getMetadata`, kept live by `useCounterWebSocket`. */
export function useCounterMetadata(name: string, options: QueryOptions<Metadata> = {}) {
  return useLiveQuery(
    (keys) => keys.metadata(name),
    (client) => client.getMetadata(name),
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
  const principal = useTallyPrincipal();
  return useQuery({
    ...options,
    queryKey: counterKeys(client, principal).history(name, params),
    queryFn: () => asPrincipal(client, principal, () => client.getHistory(name, params)),
    enabled: enabledFor(principal, options),
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
      // The principal the answer came for: the request got its token before it was sent.
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
