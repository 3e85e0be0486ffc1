/**
 * One query-key factory for every Tally query, so that hooks, live updates and invalidations all
 * name the same cache entries. Keys start with the server's base URL, so two servers on one page
 * never share entries.
 */

import type { TallyClient } from "@tally/client";

/** Paging of a history query. */
export interface HistoryParams {
  limit?: number;
  before?: number;
}

/** The query keys of one server's counters. */
export function counterKeys(client: TallyClient) {
  const all = ["tally", client.baseUrl] as const;
  return {
    /** Every Tally query of this server. */
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
