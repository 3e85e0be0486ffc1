/**
 * The calls of one connection that are not answered yet, in the order they were made, and the
 * rule for which of them may go out now (docs/PROTOCOL.md §10.2: the server may run the calls of
 * one socket in any order, so the order a client needs it keeps itself):
 *
 * - at most `limit` calls are on their way at once;
 * - increments and decrements of one counter commute, so they are pipelined;
 * - a `setValue` or `reset` does not commute with anything: it waits until every earlier write
 *   of its counter is answered, and every later write of its counter waits for it.
 *
 * A call that was sent on a socket that dropped has an unknown fate: it is queued again in its
 * place (so it goes out before the calls made after it), to be sent again with the same key.
 *
 * A call whose caller gave up (an abort) while it was on its way keeps its place until its answer
 * comes or its socket drops, since the server may still apply it: a `setValue` behind it must not
 * overtake it. It is not sent again, and it no longer counts as waiting.
 */

import type { Procedure } from "./protocol.js";

/** One call waiting for its answer. */
export interface QueuedCall {
  readonly procedure: Procedure;
  /** The RPC body's fields. */
  readonly body: Readonly<Record<string, unknown>>;
  /** A write's idempotency key (every write has one); undefined for a read. */
  readonly key: string | undefined;
  /** The counter a write changes, or null for a read (reads are not ordered). */
  readonly counter: string | null;
  /** A `setValue` or `reset`: a barrier for the other writes of its counter. */
  readonly barrier: boolean;
  /** The command id while it is on its way over the current socket, else null. */
  id: number | null;
  /** Not sent before this time (epoch ms): after a temporary refusal. */
  notBefore: number;
  /** Temporary refusals so far, for the backoff. */
  refusals: number;
  /** The caller gave up while it was on its way: it only holds its place (see the file comment). */
  abandoned: boolean;
  /** It was sent at least once: until its answer comes, whether it was applied is unknown. */
  sent: boolean;
}

/** Calls in the order they were made. */
export class CallQueue<Call extends QueuedCall = QueuedCall> {
  readonly #calls: Call[] = [];

  /** Adds a new call, after every call made before it. */
  add(call: Call): void {
    this.#calls.push(call);
  }

  /** Forgets `call` (answered, given up); false if it was not here. */
  remove(call: Call): boolean {
    const at = this.#calls.indexOf(call);
    if (at < 0) return false;
    this.#calls.splice(at, 1);
    return true;
  }

  /**
   * The caller gave up on `call`: one not on its way is forgotten, one on its way is abandoned.
   * False if it was not here (answered already).
   */
  abandon(call: Call): boolean {
    if (!this.#calls.includes(call)) return false;
    if (call.id === null) this.remove(call);
    else call.abandoned = true;
    return true;
  }

  /** How many calls are here, reads and writes, waiting or on their way. */
  get size(): number {
    return this.#calls.filter((call) => !call.abandoned).length;
  }

  /** Takes out the calls that `test` picks (in order) and returns them. */
  takeOut(test: (call: Call) => boolean): Call[] {
    const out = this.#calls.filter(test);
    for (const call of out) this.remove(call);
    return out;
  }

  /** The call sent with command `id` on the current socket. */
  sentAs(id: number): Call | undefined {
    return this.#calls.find((call) => call.id === id);
  }

  /**
   * The calls that may be sent now, in order: not on their way already, not waiting after a
   * refusal, not held back by a set/reset barrier of their counter, and no more than `limit` on
   * their way in all.
   */
  ready(now: number, limit: number): Call[] {
    let onTheirWay = this.#calls.filter((call) => call.id !== null).length;
    // Per counter: whether an earlier write is unanswered, and whether one of them is a barrier.
    const earlier = new Map<string, { any: boolean; barrier: boolean }>();
    const out: Call[] = [];
    for (const call of this.#calls) {
      let allowed = call.id === null && call.notBefore <= now && onTheirWay < limit;
      if (call.counter !== null) {
        const seen = earlier.get(call.counter) ?? { any: false, barrier: false };
        if (call.barrier ? seen.any : seen.barrier) allowed = false;
        seen.any = true;
        seen.barrier ||= call.barrier;
        earlier.set(call.counter, seen);
      }
      if (allowed) {
        out.push(call);
        onTheirWay++;
      }
    }
    return out;
  }

  /** The earliest time a call waiting after a refusal may go, or null if none waits. */
  nextRetryAt(now: number): number | null {
    let next: number | null = null;
    for (const call of this.#calls) {
      if (call.id === null && call.notBefore > now && (next === null || call.notBefore < next)) {
        next = call.notBefore;
      }
    }
    return next;
  }

  /**
   * The socket dropped: every call on its way has an unknown fate and is queued again in place;
   * an abandoned one is forgotten (nothing it could overtake any more is on that socket).
   */
  unsend(): void {
    this.#forgetAbandoned();
    for (const call of this.#calls) call.id = null;
  }

  /** Takes every call out (the connection stopped), but the abandoned ones, which are forgotten. */
  drain(): Call[] {
    this.#forgetAbandoned();
    return this.#calls.splice(0, this.#calls.length);
  }

  #forgetAbandoned(): void {
    for (let at = this.#calls.length - 1; at >= 0; at--) {
      if (this.#calls[at]?.abandoned) this.#calls.splice(at, 1);
    }
  }

  /** How many writes wait (all counters, or `counter`'s). */
  writes(counter?: string): number {
    return this.#calls.filter(
      (call) =>
        !call.abandoned &&
        call.counter !== null &&
        (counter === undefined || call.counter === counter),
    ).length;
  }
}

/**
 * Starts `run` for each of `calls` (taken out of a queue, in the order they were made) under the
 * queue's rule for writes, for when they go another way (over HTTP after a stop): a `setValue` or
 * `reset` starts once every earlier write of its counter settled, and a later write of its
 * counter once it settled. Returns each call's outcome, in the same order.
 */
export function inWriteOrder<Call extends QueuedCall, T>(
  calls: readonly Call[],
  run: (call: Call) => Promise<T>,
): Promise<T>[] {
  const counters = new Map<string, { earlier: Promise<void>[]; barrier: Promise<void> | null }>();
  return calls.map((call) => {
    if (call.counter === null) return run(call);
    const seen = counters.get(call.counter) ?? { earlier: [], barrier: null };
    counters.set(call.counter, seen);
    const after = call.barrier ? Promise.all(seen.earlier) : (seen.barrier ?? Promise.resolve());
    const outcome = after.then(() => run(call));
    const settled = outcome.then(
      () => {},
      () => {},
    );
    seen.earlier.push(settled);
    if (call.barrier) seen.barrier = settled;
    return outcome;
  });
}
