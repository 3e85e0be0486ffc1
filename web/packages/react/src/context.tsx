/**
 * Which Tally server the hooks talk to: a `TallyClient` given by `TallyProvider`, or, without a
 * provider, one for the page's own origin (the page `tally serve` embeds).
 */

import { TallyClient } from "@tally/client";
import { createContext, useContext, type ReactNode } from "react";

const TallyClientContext = createContext<TallyClient | null>(null);

let sameOriginClient: TallyClient | null = null;

/** Makes `client` the server of every Tally hook below it. */
export function TallyProvider({ client, children }: { client: TallyClient; children: ReactNode }) {
  return <TallyClientContext.Provider value={client}>{children}</TallyClientContext.Provider>;
}

/** The client of the nearest `TallyProvider`, or a same-origin client without one. */
export function useTallyClient(): TallyClient {
  const client = useContext(TallyClientContext);
  if (client !== null) return client;
  sameOriginClient ??= new TallyClient();
  return sameOriginClient;
}
