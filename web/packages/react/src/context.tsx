/**
 * Which Tally server the hooks talk to: a `TallyClient` given by `TallyProvider`, or, without a
 * provider, one for the page's own origin (the page `tally serve` embeds); and whom they act as.
 */

import { TallyClient } from "@tally/client";
import {
  createContext,
  useCallback,
  useContext,
  useEffect,
  useSyncExternalStore,
  type ReactNode,
} from "react";

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

/**
 * Whom the client's requests act as (`TallyClient.principal`), kept current: null until
 * `getToken` first answers (this asks it), then a JWT's `sub`, `key:ID` or `anonymous`.
 */
export function useTallyPrincipal(): string | null {
  const client = useTallyClient();
  const subscribe = useCallback(
    (listener: () => void) => client.credentials.subscribe(listener),
    [client],
  );
  const getPrincipal = () => client.principal;
  const principal = useSyncExternalStore(subscribe, getPrincipal, getPrincipal);
  useEffect(() => {
    // A failure shows where the token is used (the subscription's error); queries wait.
    if (principal === null) client.credentials.token().catch(() => {});
  }, [client, principal]);
  return principal;
}
