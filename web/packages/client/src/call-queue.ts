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

  /** The socket dropped: every call on its way has an unknown fate and is queued again in place. */
  unsend(): void {
    for (const call of this.#calls) call.id = null;
  }

  /** Takes every call out (the connection stopped). */
  drain(): Call[] {
    return this.#calls.splice(0, this.#calls.length);
  }

  /** How many writes wait (all counters, or `counter`'s). */
  writes(counter?: string): number {
    return this.#calls.filter(
      (call) => call.counter !== null && (counter === undefined || call.counter === counter),
    ).length;
  }
}
