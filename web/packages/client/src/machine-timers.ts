/**
 * The timers the reconnect machine asks for (reconnect.ts reads no clock): one per kind, and one
 * retry wait per subscription (`later`). Arming one again replaces it, so none piles up, and
 * `clearAll` leaves nothing that would keep a Node.js process alive.
 */

import type { ReconnectEvent, TimerKind } from "./reconnect.js";

type Handle = ReturnType<typeof setTimeout>;

/** The kinds that belong to one socket: all but the wait between attempts. */
const SOCKET_TIMERS: readonly TimerKind[] = ["connectTimeout", "minUptime", "ping", "token"];

export class MachineTimers {
  readonly #fire: (event: ReconnectEvent) => void;
  readonly #timers = new Map<TimerKind, Handle>();
  readonly #later = new Map<string, Handle>();

  /** `fire` tells the machine: a `timer` event, or `due` for a subscription's retry. */
  constructor(fire: (event: ReconnectEvent) => void) {
    this.#fire = fire;
  }

  /** Arms `timer` to fire in `ms`, replacing one armed already. */
  set(timer: TimerKind, ms: number): void {
    this.clear(timer);
    this.#timers.set(
      timer,
      setTimeout(() => {
        this.#timers.delete(timer);
        this.#fire({ type: "timer", timer });
      }, ms),
    );
  }

  clear(timer: TimerKind): void {
    const handle = this.#timers.get(timer);
    if (handle !== undefined) clearTimeout(handle);
    this.#timers.delete(timer);
  }

  /** Arms subscription `name`'s retry to be due in `ms`, replacing one armed already. */
  later(name: string, ms: number): void {
    this.clearLater(name);
    this.#later.set(
      name,
      setTimeout(() => {
        this.#later.delete(name);
        this.#fire({ type: "due", name });
      }, ms),
    );
  }

  clearLater(name: string): void {
    const handle = this.#later.get(name);
    if (handle !== undefined) clearTimeout(handle);
    this.#later.delete(name);
  }

  /** The socket is gone: its timers and every subscription's retry (a new socket resubscribes). */
  clearSocket(): void {
    for (const timer of SOCKET_TIMERS) this.clear(timer);
    this.#clearAllLater();
  }

  clearAll(): void {
    for (const timer of [...this.#timers.keys()]) this.clear(timer);
    this.#clearAllLater();
  }

  #clearAllLater(): void {
    for (const name of [...this.#later.keys()]) this.clearLater(name);
  }
}

/** A uniform random delay within `[minMs, maxMs]`: the jitter the machine leaves to its driver. */
export function pickDelay(minMs: number, maxMs: number, random: () => number): number {
  return minMs + Math.round(random() * (maxMs - minMs));
}
