/**
 * Writes with idempotency keys, and the rule for sending a write again (PROTOCOL.md §3.4), the
 * same as the Rust client's (crates/tally-client/src/write.rs): a write whose fate is unknown (no
 * answer: a timeout, a connection lost mid-request, a server restart; or a temporary server fault
 * such as `503 unavailable`) is sent again with the same key, with backoff, so that it is applied
 * at most once. It stops when it is answered, after `retryFor`, or when the caller's
 * `AbortSignal` fires.
 */

import { Backoff, type BackoffOptions } from "./backoff.js";
import {
  IDEMPOTENCY_KEY_MAX_BYTES,
  IDEMPOTENCY_KEY_PATTERN,
  IDEMPOTENCY_KEY_RULE,
} from "./protocol.js";

/**
 * The delays between sending a write again: short, since the usual cause is a restart that takes
 * a second or two (250 ms doubling up to 5 s, with full jitter).
 */
export const WRITE_BACKOFF: Required<BackoffOptions> = { min: 250, max: 5_000, factor: 2 };

/** How long a write whose fate is unknown is sent again, by default. */
export const WRITE_RETRY_FOR = 30_000;

/** The four procedures that take an idempotency key. */
export const WRITE_PROCEDURES = ["increment", "decrement", "setValue", "reset"] as const;

/** Whether `procedure` is one of the four writes. */
export function isWrite(procedure: string): boolean {
  return (WRITE_PROCEDURES as readonly string[]).includes(procedure);
}

/**
 * A fresh idempotency key: 128 random bits as 32 hex digits, the Rust client's form, from
 * `crypto.getRandomValues` (browsers and Node.js 20+; unlike `crypto.randomUUID` it works on
 * pages that are not a secure context, such as `http://` on a LAN address).
 */
export function newIdempotencyKey(): string {
  const crypto = globalThis.crypto as Crypto | undefined;
  if (typeof crypto?.getRandomValues !== "function") {
    // Two writers of one principal must never pick the same key, so no weak fallback.
    throw new TypeError(
      "no crypto.getRandomValues is available here to make an idempotency key; pass one as idempotencyKey",
    );
  }
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

const KEY_REGEXP = new RegExp(IDEMPOTENCY_KEY_PATTERN);

/** Why `key` is not a valid idempotency key, or null when it is (the server's rule). */
export function idempotencyKeyProblem(key: string): string | null {
  // The pattern allows printable ASCII only, so where it matches, characters are bytes.
  if (key.length === 0 || key.length > IDEMPOTENCY_KEY_MAX_BYTES || !KEY_REGEXP.test(key)) {
    return `invalid idempotency key ${JSON.stringify(key)}: ${IDEMPOTENCY_KEY_RULE}`;
  }
  return null;
}

/**
 * The idempotency key a call of `procedure` is sent with: `given`, or a fresh one for a write;
 * undefined for a read. The one rule of the socket and the HTTP paths.
 *
 * @throws TypeError for a key given to a read, or a key that breaks the server's rule.
 */
export function keyForCall(procedure: string, given: string | undefined): string | undefined {
  if (!isWrite(procedure)) {
    if (given !== undefined) {
      throw new TypeError(`counter.${procedure} is a read; only writes take an idempotency key`);
    }
    return undefined;
  }
  const key = given ?? newIdempotencyKey();
  const problem = idempotencyKeyProblem(key);
  if (problem !== null) throw new TypeError(problem);
  return key;
}

/**
 * How one attempt of a write failed: `final` (the answer settles it: a refusal, an abort),
 * `notSent` (no connection could be made: it was not applied), or `unknown` (no answer, or an
 * answer saying to try again: it may or may not have been applied).
 */
export class AttemptFailure {
  constructor(
    readonly fate: "final" | "notSent" | "unknown",
    readonly error: unknown,
  ) {}
}

/** How `retrying` retries. */
export interface RetryOptions {
  /** How long to keep sending it again, from the first attempt, in ms. */
  retryFor: number;
  /** Stops the retries: the write then rejects with `signal.reason`. */
  signal?: AbortSignal | undefined;
  /** A source of numbers in `0..1` for the jitter (`Math.random` by default; tests fix it). */
  random?: () => number;
}

/**
 * Makes `attempt` until it succeeds or fails for good. A write that reached no server on its first
 * attempt is tried at once on each of the `servers` (1 by default; the attempt picks which, and one
 * that fails moves the next attempt on), and fails once none could be reached: nothing was applied
 * and nothing is there to answer. Once one may have been applied, it is sent again with backoff for up to `retryFor`, and refused connections
 * then count as "the server is restarting". When it gives up, `undecided` turns the last error into
 * one that names the key. An aborted `signal` rejects with its reason at once, also mid-attempt
 * (`attempt` gets the signal) or mid-delay.
 */
export async function retrying<T>(
  key: string,
  options: RetryOptions,
  attempt: () => Promise<T>,
  undecided: (error: unknown, key: string) => unknown,
  servers = 1,
): Promise<T> {
  const { signal } = options;
  const backoff = new Backoff(WRITE_BACKOFF, options.random);
  const deadline = Date.now() + options.retryFor;
  let sent = false;
  // Attempts that reached no server, before any did.
  let unreached = 0;
  for (let step = 0; ;) {
    signal?.throwIfAborted();
    let error: unknown;
    try {
      return await attempt();
    } catch (failure) {
      if (!(failure instanceof AttemptFailure)) throw failure;
      if (failure.fate === "final") throw failure.error;
      if (failure.fate === "notSent" && !sent) {
        unreached += 1;
        if (unreached >= servers) throw failure.error;
        // Nothing was applied anywhere: the next server at once, with no backoff.
        continue;
      }
      if (failure.fate === "unknown") sent = true;
      error = failure.error;
    }
    signal?.throwIfAborted();
    const delay = backoff.delay(step++);
    if (Date.now() + delay >= deadline) throw undecided(error, key);
    await sleep(delay, signal);
  }
}

/** Resolves after `ms`, or rejects with `signal.reason` when it aborts first. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The note a write that was given up on carries: what happened, and how to apply it once. */
export function undecidedNote(key: string): string {
  return `the write may or may not have been applied; send it again with idempotency key ${key} to apply it at most once`;
}
