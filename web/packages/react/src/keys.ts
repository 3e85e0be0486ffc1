/**
 * One query-key factory for every Tally query, so that hooks, live updates and invalidations all
 * name the same cache entries. Keys start with the server's base URL and the principal, so two
 * servers on one page, or two identities on one server, never share entries: an admin's history
 * shows who made each change, and a reader's must not show what the admin's fetch saw.
 */

import type { TallyClient } from "@tally/client";

/** Paging of a history query. */
export interface HistoryParams {
  limit?: number;
  before?: number;
}

/**
 * The query keys of one server's counters, as seen by `principal` (`client.principal` by
 * default: a JWT's `sub`, `key:ID`, or `anonymous`; `unknown` while `getToken` has not answered,
 * when the hooks fetch nothing).
 */
export function counterKeys(client: TallyClient, principal: string | null = client.principal) {
  const all = ["tally", client.baseUrl, principal ?? "unknown"] as const;
  return {
    /** Every Tally query of this server and principal. */
    all,
    /** Every query of one counter. */
    counter: (name: string) => [...all, "counter", name] as const,
    /** `counter.getValue`. */
    value: (name: string) => [...all, "counter", name, "getValue"] as const,
    /** `counter.getMetadata`. */
    metadata: (name: string) => [...all, "counter", name, "getMetadata"] as const,
    /** Every `counter.getHistory` page of one counter (the prefix invalidations use). */
    histories: (name: string) => [...all, "counter", name, "getHistory"] as const,
    /** One `counter.getHistory` page. */
    history: (name: string, params: HistoryParams = {}) =>
      [
        ...all,
        "counter",
        name,
        "getHistory",
        { limit: params.limit, before: params.before },
      ] as const,
  };
}

/** What `counterKeys` returns. */
export type CounterKeys = ReturnType<typeof counterKeys>;
