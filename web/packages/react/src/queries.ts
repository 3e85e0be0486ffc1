/**
 * Query and mutation hooks for the seven procedures, on one key factory. Mutations go through
 * the client (over the shared socket, or into its offline queue, or over HTTP), show at once on
 * the counter's value (optimistic.ts), and write their answer into the cache the same way live
 * updates do, so the writer's own view never waits for its socket. Queries are keyed by the
 * principal and wait until it is known.
 */

import type { HistoryPage, Metadata, TallyClient, Update, ValueAnswer } from "@tally/client";
import {
  useMutation,
  useQuery,
  useQueryClient,
  type QueryClient,
  type UseMutationOptions,
  type UseQueryOptions,
} from "@tanstack/react-query";
import { applyUpdate } from "./cache.js";
import { useTallyClient, useTallyPrincipal } from "./context.js";
import { newestVersion } from "./history.js";
import { counterKeys, type HistoryParams } from "./keys.js";
import { beginWrite, commitValue, type Operation } from "./optimistic.js";

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

/** `counter.getValue`: `{ value, version }`, kept live by `useCounterWebSocket`, with this query
 * client's pending writes shown on top (see optimistic.ts). */
export function useCounterValue(name: string, options: QueryOptions<ValueAnswer> = {}) {
  const client = useTallyClient();
  const principal = useTallyPrincipal();
  const queryClient = useQueryClient();
  const queryKey = counterKeys(client, principal).value(name);
  return useQuery({
    ...options,
    queryKey,
    queryFn: async () => {
      const answer = await asPrincipal(client, principal, () => client.getValue(name));
      // An answer that left the server before a live update may arrive after it.
      return commitValue(queryClient, queryKey, answer).shown;
    },
    enabled: enabledFor(principal, options),
  });
}

/** `counter.getMetadata`, kept live by `useCounterWebSocket`. */
export function useCounterMetadata(name: string, options: QueryOptions<Metadata> = {}) {
  const client = useTallyClient();
  const principal = useTallyPrincipal();
  const queryClient = useQueryClient();
  const queryKey = counterKeys(client, principal).metadata(name);
  return useQuery({
    ...options,
    queryKey,
    queryFn: async () => {
      const answer = await asPrincipal(client, principal, () => client.getMetadata(name));
      // An answer that left the server before a live update may arrive after it.
      const cached = queryClient.getQueryData<Metadata>(queryKey);
      return cached !== undefined && cached.operationCount > answer.operationCount
        ? cached
        : answer;
    },
    enabled: enabledFor(principal, options),
  });
}

/**
 * The query of one history page (key and fetch) for `principal`, as `useCounterHistory` makes it:
 * the newest page's answer gives way to a newer page that live updates patched meanwhile.
 */
export function historyQuery(
  client: TallyClient,
  principal: string | null,
  queryClient: QueryClient,
  name: string,
  params: HistoryParams = {},
) {
  const keys = counterKeys(client, principal);
  const queryKey = keys.history(name, params);
  return {
    queryKey,
    queryFn: async (): Promise<HistoryPage> => {
      const page = await asPrincipal(client, principal, () => client.getHistory(name, params));
      if (params.before !== undefined) return page;
      // Updates that came while the page was on its way could not patch it; they have it fetched
      // once more (history-refresh.ts). A cached page patched meanwhile is exact too, and may be
      // newer; but not one newer than the version seen, which a resync (the server's data
      // replaced) has made stale.
      const seen = () => queryClient.getQueryData<Metadata>(keys.metadata(name))?.operationCount;
      const cached = queryClient.getQueryData<HistoryPage>(queryKey);
      const newest = cached === undefined ? 0 : newestVersion(cached);
      return newest > newestVersion(page) && newest <= (seen() ?? 0)
        ? (cached as HistoryPage)
        : page;
    },
  };
}

/**
 * One page of `counter.getHistory`, newest first. Live updates patch the newest page (no
 * `before`) where that is exact (see history.ts); otherwise, and for older pages, they have the
 * page fetched again, at most once at a time and a few times a second (history-refresh.ts).
 */
export function useCounterHistory(
  name: string,
  params: HistoryParams = {},
  options: QueryOptions<HistoryPage> = {},
) {
  const client = useTallyClient();
  const principal = useTallyPrincipal();
  const queryClient = useQueryClient();
  return useQuery({
    ...options,
    ...historyQuery(client, principal, queryClient, name, params),
    enabled: enabledFor(principal, options),
  });
}

/**
 * The options of a mutation hook: TanStack's, but for `mutationFn`. `onError` gets what the
 * client threw: a `TallyError` when the server refused the write (its `code` and `message` say
 * why), a `TallyConnectionError` when it could not be sent (the offline queue is full). Mutations
 * run whatever TanStack thinks of the network (`networkMode: "always"`): the client's queue is
 * what holds a write made offline, so it counts in `pendingWrites`.
 */
export type CounterMutationOptions<V> = Omit<UseMutationOptions<Update, Error, V>, "mutationFn">;

function useWrite<V extends { name: string }>(
  write: (client: TallyClient, variables: V) => Promise<Update>,
  operation: (variables: V) => Operation,
  options: CounterMutationOptions<V>,
) {
  const client = useTallyClient();
  const queryClient = useQueryClient();
  return useMutation<Update, Error, V>({
    networkMode: "always",
    ...options,
    mutationFn: async (variables) => {
      const keys = counterKeys(client);
      const settle = beginWrite(queryClient, keys.value(variables.name), operation(variables));
      let update: Update;
      try {
        update = await write(client, variables);
      } catch (error) {
        // Refused, or given up: its optimistic change is rolled back.
        settle(false);
        throw error;
      }
      // The principal the answer came for: the request got its token before it was sent.
      applyUpdate(queryClient, counterKeys(client), update);
      settle(true);
      return update;
    },
  });
}

/** `counter.increment`: `mutate({ name, amount })`. */
export function useIncrementCounter(
  options: CounterMutationOptions<{ name: string; amount?: number }> = {},
) {
  return useWrite(
    (client, { name, amount }) => client.increment(name, amount),
    ({ amount = 1 }) => ({ type: "increment", amount }),
    options,
  );
}

/** `counter.decrement`: `mutate({ name, amount })`. */
export function useDecrementCounter(
  options: CounterMutationOptions<{ name: string; amount?: number }> = {},
) {
  return useWrite(
    (client, { name, amount }) => client.decrement(name, amount),
    ({ amount = 1 }) => ({ type: "decrement", amount }),
    options,
  );
}

/** `counter.setValue`: `mutate({ name, value })`. */
export function useSetCounterValue(
  options: CounterMutationOptions<{ name: string; value: number }> = {},
) {
  return useWrite(
    (client, { name, value }) => client.setValue(name, value),
    ({ value }) => ({ type: "setValue", value }),
    options,
  );
}

/** `counter.reset`: `mutate({ name })`. */
export function useResetCounter(options: CounterMutationOptions<{ name: string }> = {}) {
  return useWrite(
    (client, { name }) => client.reset(name),
    () => ({ type: "reset" }),
    options,
  );
}
