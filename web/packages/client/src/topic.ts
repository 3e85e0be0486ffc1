/**
 * One counter watched on a connection, and everyone watching it. The server holds one
 * subscription per counter per socket, so the watches of one counter share it: the first
 * watch's options are the subscription's, and a later watch starts from the state so far.
 */

import type { OperationType, ResumedMessage, SnapshotMessage, Update } from "./protocol.js";
import type { ReconnectEvent } from "./reconnect.js";
import type { Presence, SubscribeFields } from "./socket-frames.js";
import type { TallyWatchError } from "./watch-error.js";

/** How one watch asks for a counter (see `TallyConnection.watch`). */
export interface WatchOptions {
  /** Resume after this version instead of starting with a snapshot. */
  since?: number;
  /**
   * The database epoch `since` belongs to (a snapshot's or resume's `epoch`, kept with the
   * version): a resume against another database then gets a resync snapshot.
   */
  epoch?: string;
  /** Only updates of these types (versions then jump by design). */
  types?: OperationType[];
  /** At most this many updates a second, each the latest state (0 < R ≤ 1000). */
  maxRate?: number;
  /** Also get presence: how many watch the counter. */
  presence?: boolean;
}

/** What a watch is told. Each is optional. */
export interface WatchHandlers {
  /**
   * The counter's whole state: the subscribe's reply, a resync push, or the state so far for a
   * later watch of a counter already watched.
   */
  snapshot?(snapshot: SnapshotMessage): void;
  /** A resume is served: the updates after `since` follow. */
  resumed?(resumed: ResumedMessage): void;
  /** One update newer than the last one passed on (`conflated` for a `maxRate` watch). */
  update?(update: Update & { conflated?: boolean }): void;
  /** How many watch the counter (a watch with `presence`). */
  presence?(presence: Presence): void;
  /** The watch is over: refused for good, ended by the server, or the connection stopped. */
  ended?(error: TallyWatchError): void;
}

/** Why `options` cannot be sent, in words, or null (the server's rules, checked early). */
export function watchOptionsProblem(options: WatchOptions): string | null {
  const { maxRate, types, since, epoch } = options;
  if (maxRate !== undefined && !(maxRate > 0 && maxRate <= 1000)) {
    return `maxRate is ${maxRate}; it must be above 0 and at most 1000 updates per second`;
  }
  if (types !== undefined && types.length === 0) {
    return "types must hold at least one update type (or be left out for all)";
  }
  if (since !== undefined && !(Number.isSafeInteger(since) && since >= 0)) {
    return `since is ${since}; it must be a whole number >= 0`;
  }
  if (epoch !== undefined && !/^[0-9a-f]{16}$/.test(epoch)) {
    return `epoch is ${JSON.stringify(epoch)}; it must be 16 lowercase hexadecimal digits, as a snapshot gave it`;
  }
  return null;
}

/**
 * One watch of a topic: its own object, so that one handlers object watched twice is two
 * watches, each ended by its own unwatch.
 */
export interface Member {
  readonly handlers: WatchHandlers;
}

/** One watched counter. */
export class Topic {
  readonly name: string;
  readonly #options: WatchOptions;
  readonly #members = new Set<Member>();
  /** The state so far, given to a watch that joins later. */
  #latest: SnapshotMessage | null = null;
  /** Whether the subscription was answered (snapshot or resume) and has not ended since. */
  #answered = false;
  #presence: Presence | null = null;
  /** The last version passed on (what a start over resumes from). */
  #since: number | undefined;
  /** The epoch `#since` belongs to, when known. */
  #epoch: string | undefined;
  /**
   * Why the server or the connection ended it, while it is over; it is kept so that a new
   * credential or a new watch of the counter subscribes again.
   */
  ended: TallyWatchError | null = null;

  /** A topic with the first watch's options; the first watch joins it like any other. */
  constructor(name: string, options: WatchOptions) {
    this.name = name;
    this.#options = { ...options };
    this.#since = options.since;
    this.#epoch = options.epoch;
  }

  /**
   * A watch joins: one that comes later is given the state so far, if the subscription is live:
   * the latest state, or (resumed with `since` and nothing since) a resume from the last version,
   * so that it knows it is live.
   */
  join(handlers: WatchHandlers): Member {
    const member: Member = { handlers };
    this.#members.add(member);
    if (this.ended !== null) return member;
    if (this.#latest !== null) {
      handlers.snapshot?.(this.#latest);
    } else if (this.#answered && this.#since !== undefined) {
      handlers.resumed?.({ type: "resumed", since: this.#since, version: this.#since });
    }
    if (this.#presence !== null) handlers.presence?.(this.#presence);
    return member;
  }

  /** A watch ends; true when it was the last one. */
  leave(member: Member): boolean {
    return this.#members.delete(member) && this.#members.size === 0;
  }

  /** The machine's `subscribe` event, resuming after what was passed on. */
  subscribeEvent(): ReconnectEvent {
    const jumps = this.#options.types !== undefined || this.#options.maxRate !== undefined;
    if (this.#since === undefined) return { type: "subscribe", name: this.name, jumps };
    const epoch = this.#epoch === undefined ? {} : { epoch: this.#epoch };
    return { type: "subscribe", name: this.name, since: this.#since, ...epoch, jumps };
  }

  /** The `subscribe` command's options. */
  subscribeFields(): SubscribeFields {
    const { types, maxRate, presence } = this.#options;
    return {
      ...(types === undefined ? {} : { types }),
      ...(maxRate === undefined ? {} : { maxRate }),
      ...(presence ? { presence: true } : {}),
    };
  }

  snapshot(snapshot: SnapshotMessage): void {
    this.#since = snapshot.version;
    this.#epoch = snapshot.epoch;
    this.#latest = snapshot;
    this.#answered = true;
    this.#tell((watcher) => watcher.snapshot?.(snapshot));
  }

  resumed(resumed: ResumedMessage): void {
    if (resumed.epoch !== undefined) this.#epoch = resumed.epoch;
    this.#answered = true;
    this.#tell((watcher) => watcher.resumed?.(resumed));
  }

  update(update: Update & { conflated?: boolean }): void {
    this.#since = update.version;
    const can = this.#latest?.can;
    this.#latest = {
      type: "snapshot",
      value: update.value,
      version: update.version,
      metadata: update.metadata,
      timestamp: update.timestamp,
      ...(can === undefined ? {} : { can }),
      ...(this.#epoch === undefined ? {} : { epoch: this.#epoch }),
    };
    this.#tell((watcher) => watcher.update?.(update));
  }

  presence(presence: Presence): void {
    this.#presence = presence;
    this.#tell((watcher) => watcher.presence?.(presence));
  }

  /** Tells every watch that it is over; the topic stays for a later subscribe. */
  end(error: TallyWatchError): void {
    this.ended = error;
    this.#latest = null;
    this.#answered = false;
    this.#presence = null;
    this.#tell((watcher) => watcher.ended?.(error));
  }

  #tell(what: (watcher: WatchHandlers) => void): void {
    for (const member of [...this.#members]) callSafely(() => what(member.handlers));
  }
}

/**
 * Calls a user's handler; an exception it throws is logged but does not stop the others or the
 * connection's own bookkeeping.
 */
export function callSafely(handler: () => void): void {
  try {
    handler();
  } catch (error) {
    console.error("a listener of a Tally connection threw:", error);
  }
}
