/**
 * The page's credential: a token kept in sessionStorage (this tab only, gone when it closes),
 * taken from a `#token=…` fragment when the page is opened with one, and what the page knows of
 * why it needs a new one (the server asked for a token, or the session expired).
 *
 * A fragment is never sent to the server; the page removes it from the address at once, so that
 * it is not kept in the history, bookmarked or shared by accident.
 */

import type { TallyClient } from "@tally/client";
import { useSyncExternalStore } from "react";

const STORAGE_KEY = "tally.token";

/** Why the page asks for a token: none was given and the server needs one, or it expired. */
export type SignInReason = "required" | "expired";

export interface Session {
  /** Whether a token is stored. */
  readonly signedIn: boolean;
  /** Why the page asks for a token now, or null when it does not. */
  readonly reason: SignInReason | null;
}

let session: Session = { signedIn: storedToken() !== null, reason: null };
const listeners = new Set<() => void>();

function setSession(change: Partial<Session>): void {
  const next = { ...session, ...change };
  if (next.signedIn === session.signedIn && next.reason === session.reason) return;
  session = next;
  for (const listener of listeners) listener();
}

/** The stored token, or null (also when storage is disabled). */
export function storedToken(): string | null {
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

function storeToken(token: string | null): void {
  try {
    if (token === null) sessionStorage.removeItem(STORAGE_KEY);
    else sessionStorage.setItem(STORAGE_KEY, token);
  } catch {
    // Without storage the token lasts as long as this page: kept in memory below.
  }
  memoryToken = token;
}

/** The token when sessionStorage refuses to keep it. */
let memoryToken: string | null = null;

/** The page's `getToken`: the stored token, or null to act as anonymous. */
export async function getToken(): Promise<string | null> {
  return storedToken() ?? memoryToken;
}

/**
 * Moves a `#token=…` fragment into sessionStorage and removes it from the address bar (other
 * fragment parameters stay). Call it before the first request.
 */
export function takeTokenFromAddress(): void {
  const fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const token = fragment.get("token");
  if (token === null) return;
  fragment.delete("token");
  const rest = fragment.toString();
  const { pathname, search } = window.location;
  window.history.replaceState(
    window.history.state,
    "",
    `${pathname}${search}${rest ? `#${rest}` : ""}`,
  );
  if (token.trim() !== "") {
    storeToken(token.trim());
    setSession({ signedIn: true, reason: null });
  }
}

/** Keeps `token` for this tab and makes `client` use it. */
export function signIn(client: TallyClient, token: string): void {
  storeToken(token);
  setSession({ signedIn: true, reason: null });
  client.resetToken();
}

/** Forgets the token; the page goes on as anonymous. */
export function signOut(client: TallyClient): void {
  storeToken(null);
  setSession({ signedIn: false, reason: null });
  client.resetToken();
}

/**
 * What an error says about the credential: a refusal that a (new) token may fix asks for one.
 * `forbidden` does not: the token is fine, it only does not allow that.
 */
export function reportAuthProblem(error: unknown): void {
  // TallyError (an RPC) and TallyWatchError (a socket) both carry the code.
  const code = (error as { code?: unknown } | null | undefined)?.code;
  if (code === "token_expired") setSession({ reason: "expired" });
  else if (code === "unauthenticated") setSession({ reason: "required" });
}

/** The session, kept current. */
export function useSession(): Session {
  return useSyncExternalStore(subscribe, getSession, getSession);
}

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function getSession(): Session {
  return session;
}
