/**
 * A live subscription to one counter, as immutable state snapshots (suited to React's
 * `useSyncExternalStore`, or to any other framework). It is a view over the client's one socket
 * (`client.connection.watch`), which keeps itself alive, reconnects, resumes after the last
 * version passed on, and authenticates in band; many subscriptions share it.
 */

import type { TallyConnection, WatchHandlers } from "./connection.js";
import type {
  Action,
  Metadata,
  OperationType,
  ResumedMessage,
  SnapshotMessage,
  Update,
} from "./protocol.js";
import type { TallyClient } from "./rpc.js";
import type { Presence } from "./socket-frames.js";
import { TallyWatchError } from "./watch-error.js";

export { TallyWatchError, describeClose } from "./watch-error.js";

/**
 * Where a subscription is: `connected` once the socket is connected and this counter's first
 * answer (snapshot or resume) came. A disabled subscription is `disconnected`.
 */
export type ConnectionStatus = "connecting" | "connected" | "disconnected";

/** One subscription's state. Each change makes a new object, so `===` tells whether it changed. */
export interface SubscriptionState {
  readonly name: string;
  readonly enabled: boolean;
  readonly status: ConnectionStatus;
  /** The counter's value, or null until the first snapshot. */
  readonly value: number | null;
  /** The last version applied, or null until the first snapshot. */
  readonly version: number | null;
  readonly metadata: Metadata | null;
  /** The last Update applied. */
  readonly update: Update | null;
  /** When the last applied Update was committed (its `timestamp`). */
  readonly lastUpdate: Date | null;
  /** Why the last connection (or this watch) ended or failed; cleared when synced again. */
  readonly error: TallyWatchError | null;
  /** When the next reconnect attempt is due (epoch ms), while one is scheduled. */
  readonly retryAt: number | null;
  /**
   * What the socket's principal may do to the counter, from the latest `snapshot`; null until
   * one came (or from a server without access control).
   */
  readonly can: readonly Action[] | null;
  /** Whom the socket acts as (see `TallyClient.principal`); null before the first connection. */
  readonly principal: string | null;
  /** How many watch the counter (with the `presence` option); null until the server said. */
  readonly presence: Presence | null;
  /** This counter's writes made through the client and not settled yet. */
  readonly pendingWrites: number;
  /**
   * True once the server said the counter was deleted (`counter.delete`): the watch ended and
   * `error.code` is `counter_deleted`; enable it again (after `disable`) to watch the counter
   * start over at version 0. Cleared by the next snapshot.
   */
  readonly deleted: boolean;
}

/** What a subscription asks for. */
export interface SubscriptionOptions {
  /** Watch at once (true by default); see `enable` and `disable`. */
  enabled?: boolean;
  /**
   * Resume after this version on the first connection, instead of starting with a snapshot
   * (for a client that kept the state itself). `value` stays null until the first update.
   */
  since?: number;
  /** The database epoch `since` belongs to (a snapshot's `epoch`, kept with the version). */
  epoch?: string;
  /** Only updates of these types (versions then jump over the others by design). */
  types?: OperationType[];
  /** At most this many updates a second, each the counter's latest state (conflation). */
  maxRate?: number;
  /** Also keep `presence` (how many watch the counter) in the state. */
  presence?: boolean;
}

/** What a subscription announces besides state changes. */
export interface SubscriptionEvents {
  /** A snapshot replaced the state (`resync` says a resume could not be served). */
  snapshot: (snapshot: SnapshotMessage) => void;
  /** An Update newer than the state was applied: live, or replayed after a reconnect. */
  update: (update: Update) => void;
}

type Listener = () => void;

/**
 * A live subscription to one counter. Create it with `new CounterSubscription(client, name)`.
 * Subscriptions of one client share its socket; two of one counter share its one server
 * subscription, with the first one's `types`, `maxRate` and `presence`.
 */
export class CounterSubscription {
  readonly client: TallyClient;
  readonly name: string;

  #state: SubscriptionState;
  readonly #listeners = new Set<Listener>();
  readonly #events: { [K in keyof SubscriptionEvents]: Set<SubscriptionEvents[K]> } = {
    snapshot: new Set(),
    update: new Set(),
  };
  readonly #options: SubscriptionOptions;
  /** Stops the watch and the connection-state listener while enabled. */
  #unwatch: (() => void) | null = null;
  /** Whether this watch got its first answer (snapshot or resume). */
  #synced = false;
  /** Whether the connection ended this watch (refused, ended by the server, stopped). */
  #ended = false;
  /** The database epoch of `version` (from the last snapshot or resume), sent with it. */
  #epoch: string | undefined;

  constructor(client: TallyClient, name: string, options: SubscriptionOptions = {}) {
    this.client = client;
    this.name = name;
    this.#options = { ...options };
    this.#epoch = options.epoch;
    this.#state = {
      name,
      enabled: false,
      status: "disconnected",
      value: null,
      version: null,
      metadata: null,
      update: null,
      lastUpdate: null,
      error: null,
      retryAt: null,
      can: null,
      principal: null,
      presence: null,
      pendingWrites: 0,
      deleted: false,
    };
    if (options.enabled ?? true) this.enable();
  }

  /** The current state; the same object until something changes. */
  getState = (): SubscriptionState => this.#state;

  /** Calls `listener` after every state change; returns the function that stops it. */
  subscribe = (listener: Listener): (() => void) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };

  /** Calls `listener` on each `event`; returns the function that stops it. */
  on<K extends keyof SubscriptionEvents>(event: K, listener: SubscriptionEvents[K]): () => void {
    const listeners = this.#events[event] as Set<SubscriptionEvents[K]>;
    listeners.add(listener);
    return () => listeners.delete(listener);
  }

  /** Starts watching (the seed's connection toggle, on). Does nothing if already enabled. */
  enable(): void {
    if (this.#state.enabled) return;
    const connection = this.client.connection;
    this.#synced = false;
    this.#ended = false;
    this.#setState({ enabled: true, error: null });
    const stopListening = connection.subscribe(() => this.#follow(connection));
    const since = this.#state.version ?? this.#options.since;
    const epoch = since === undefined ? undefined : this.#epoch;
    const { types, maxRate, presence } = this.#options;
    const unwatch = connection.watch(
      this.name,
      {
        ...(since === undefined ? {} : { since }),
        ...(epoch === undefined ? {} : { epoch }),
        ...(types === undefined ? {} : { types }),
        ...(maxRate === undefined ? {} : { maxRate }),
        ...(presence === undefined ? {} : { presence }),
      },
      this.#handlers,
    );
    this.#unwatch = () => {
      stopListening();
      unwatch();
    };
    // A watch refused at once (an invalid name) has set its error already.
    if (this.#state.enabled) this.#follow(connection);
  }

  /** Stops watching; the state (value, version) is kept for `enable`, which resumes from it. */
  disable(): void {
    if (!this.#state.enabled) return;
    const unwatch = this.#unwatch;
    this.#unwatch = null;
    unwatch?.();
    this.#setState({ enabled: false, status: "disconnected", retryAt: null });
  }

  /** Enables or disables. */
  setEnabled(enabled: boolean): void {
    if (enabled) this.enable();
    else this.disable();
  }

  /**
   * Reconnects now if the connection is waiting to reconnect, skipping the rest of the wait
   * (done by itself when the browser comes back online or the tab becomes visible).
   */
  reconnectNow(): void {
    if (this.#state.enabled) this.client.connection.reconnectNow();
  }

  /** Mirrors the connection's state into this one's. */
  #follow(connection: TallyConnection): void {
    if (!this.#state.enabled) return;
    const shared = connection.getState();
    const change: { -readonly [K in keyof SubscriptionState]?: SubscriptionState[K] } = {
      principal: shared.principal,
      pendingWrites: connection.pendingWritesFor(this.name),
    };
    // What one principal may do says nothing of another's (a reset credential).
    if (this.#state.principal !== null && shared.principal !== this.#state.principal) {
      change.can = null;
    }
    if (!this.#ended) {
      change.status =
        shared.status === "connected"
          ? this.#synced
            ? "connected"
            : "connecting"
          : shared.status === "connecting"
            ? "connecting"
            : "disconnected";
      change.retryAt = shared.retryAt;
      if (shared.error !== null || shared.status === "connected") change.error = shared.error;
      if (shared.status !== "connected") this.#synced = false;
    }
    const state = this.#state;
    const same = (Object.keys(change) as (keyof SubscriptionState)[]).every(
      (key) => state[key] === change[key],
    );
    if (!same) this.#setState(change);
  }

  readonly #handlers: WatchHandlers = {
    snapshot: (snapshot) => {
      this.#synced = true;
      this.#ended = false;
      this.#epoch = snapshot.epoch;
      const updatedAt = snapshot.metadata.updatedAt;
      this.#setState({
        value: snapshot.value,
        version: snapshot.version,
        metadata: snapshot.metadata,
        // A resync may replace a state whose last update no longer exists.
        update: null,
        lastUpdate: updatedAt === null ? null : new Date(updatedAt),
        deleted: false,
        ...(snapshot.can === undefined ? {} : { can: snapshot.can }),
        ...this.#syncedStatus(),
      });
      this.#emit("snapshot", snapshot);
    },
    resumed: (resumed: ResumedMessage) => {
      this.#synced = true;
      if (resumed.epoch !== undefined) this.#epoch = resumed.epoch;
      // A first resume from the `since` option: the replay continues from that version.
      this.#setState({
        ...(this.#state.version === null ? { version: resumed.since } : {}),
        ...this.#syncedStatus(),
      });
    },
    update: (update) => {
      const current = this.#state.version;
      // The connection passes on only newer versions; this guards a state kept across a
      // disable and a later watch that started from a snapshot.
      if (current !== null && update.version <= current) return;
      const { conflated: _conflated, ...plain } = update;
      this.#setState({
        value: plain.value,
        version: plain.version,
        metadata: plain.metadata,
        update: plain,
        lastUpdate: new Date(plain.timestamp),
      });
      this.#emit("update", plain);
    },
    presence: (presence) => this.#setState({ presence }),
    ended: (error) => {
      this.#ended = true;
      this.#synced = false;
      const deleted = error.code === "counter_deleted";
      this.#setState({ status: "disconnected", error, retryAt: null, deleted });
    },
  };

  /** The status once this watch is answered, if the connection is connected. */
  #syncedStatus(): Partial<SubscriptionState> {
    return this.client.connection.getState().status === "connected"
      ? { status: "connected", error: null }
      : {};
  }

  #setState(change: Partial<SubscriptionState>): void {
    this.#state = { ...this.#state, ...change };
    for (const listener of [...this.#listeners]) callSafely(listener);
  }

  #emit<K extends keyof SubscriptionEvents>(
    event: K,
    payload: Parameters<SubscriptionEvents[K]>[0],
  ): void {
    for (const listener of [...this.#events[event]]) {
      callSafely(() => (listener as (payload: unknown) => void)(payload));
    }
  }
}

/**
 * Calls a user's listener; an exception it throws is logged but does not stop the other
 * listeners or the subscription's own bookkeeping.
 */
function callSafely(listener: () => void): void {
  try {
    listener();
  } catch (error) {
    console.error("a listener of a Tally subscription threw:", error);
  }
}
