/**
 * One socket per client (protocol version 2, `GET /ws`, docs/PROTOCOL.md §10) carrying every
 * watched counter and the writes made while it is wanted. This file is its public face: its
 * state, reference counting, watches and calls. The work is done by:
 *
 * - socket-driver.ts: drives the pure `ReconnectMachine` (the reconnect rules, PROTOCOL.md §11)
 *   and reads the socket's frames;
 * - socket-link.ts: the one WebSocket at a time, command ids and what each reply answers;
 * - socket-calls.ts (with call-queue.ts): the calls, their order, bound, retries and abort;
 * - topic.ts: the watches of one counter sharing its one server subscription;
 * - machine-timers.ts and browser-signals.ts: the machine's timers, the browser's network events.
 *
 * The socket is reference counted: it opens at the first `retain` (a watch retains) and closes
 * `lingerMs` after the last release, so a React remount reuses it.
 */

import { listenToBrowser } from "./browser-signals.js";
import { nameProblem, type Procedure, type Procedures } from "./protocol.js";
import { DEFAULT_RECONNECT_RULES, type ReconnectRules } from "./reconnect.js";
import type { TallyClient, WriteOptions } from "./rpc.js";
import { SocketCalls } from "./socket-calls.js";
import { SocketDriver, stoppedError } from "./socket-driver.js";
import type { ServerStats } from "./socket-frames.js";
import {
  Topic,
  callSafely,
  watchOptionsProblem,
  type Member,
  type WatchHandlers,
  type WatchOptions,
} from "./topic.js";
import { TallyWatchError } from "./watch-error.js";
import { keyForCall } from "./write.js";

export type { WatchHandlers, WatchOptions } from "./topic.js";

/** Where the connection is. */
export type SocketStatus =
  /** Not wanted: nothing retains it (or it lingered and closed). */
  | "idle"
  /** Getting a token, opening the socket, waiting for its first frame. */
  | "connecting"
  /** The socket's first frame arrived. */
  | "connected"
  /** Lost; waiting until `retryAt` to try again. */
  | "disconnected"
  /** Given up for good (4501, 4503, a refused upgrade, …) until `resetToken` or a new retain after idle. */
  | "stopped";

/** The connection's state; each change makes a new object. */
export interface ConnectionState {
  readonly status: SocketStatus;
  /** Why the last connection ended or failed. */
  readonly error: TallyWatchError | null;
  /** When the next attempt is due (epoch ms), while waiting. */
  readonly retryAt: number | null;
  /** Whom the socket acts as: from `authenticated`, or `anonymous` without a credential. */
  readonly principal: string | null;
  /** Writes made through the client and not settled yet (queued and in flight), all counters. */
  readonly pendingWrites: number;
}

/** The numbers of a connection; the client's options give them (see `TallyClientOptions`). */
export interface ConnectionSettings {
  rules: Readonly<ReconnectRules>;
  /** Numbers in `0..1` for the jitter of waits. */
  random: () => number;
  /** How long the socket stays open after the last release. */
  lingerMs: number;
  /**
   * The most writes that may wait on the socket path (and the most calls of any kind); one more
   * is refused at once.
   */
  maxQueuedWrites: number;
}

type Listener = () => void;

/** What a watch of the server's figures is told (`TallyConnection.watchServer`). */
export interface ServerWatchHandlers {
  /** The latest figures: the reply to `watchServer`, then once a second. */
  stats(stats: ServerStats): void;
  /**
   * The server refused the watch (`forbidden`, `unauthenticated`: it needs admin on every
   * counter) or ended it; no more figures come until a new watch or a new credential.
   */
  ended?(error: TallyWatchError): void;
}

/**
 * One client's socket. Get it as `client.connection`; `CounterSubscription` and the React hooks
 * use it. See the file comment.
 */
export class TallyConnection {
  readonly client: TallyClient;
  readonly #settings: ConnectionSettings;
  #state: ConnectionState = {
    status: "idle",
    error: null,
    retryAt: null,
    principal: null,
    pendingWrites: 0,
  };
  readonly #listeners = new Set<Listener>();

  #refs = 0;
  #lingerTimer: ReturnType<typeof setTimeout> | null = null;
  /** Stops listening to the credentials and the browser, while started. */
  #stopListening: (() => void) | null = null;
  #credentialGeneration = 0;

  readonly #topics = new Map<string, Topic>();
  readonly #calls: SocketCalls;
  /** Writes on their way over HTTP, by counter. */
  readonly #httpWrites = new Map<string, number>();
  readonly #driver: SocketDriver;
  /** The watches of the server's figures, which share the socket's one `watchServer`. */
  readonly #serverWatches = new Set<ServerWatchHandlers>();
  /** Why the server refused or ended the figures, until a new credential. */
  #serverEnded: TallyWatchError | null = null;

  constructor(client: TallyClient, settings: Partial<ConnectionSettings> = {}) {
    this.client = client;
    this.#settings = {
      rules: settings.rules ?? DEFAULT_RECONNECT_RULES,
      random: settings.random ?? Math.random,
      lingerMs: settings.lingerMs ?? 1000,
      maxQueuedWrites: settings.maxQueuedWrites ?? 1000,
    };
    this.#calls = new SocketCalls(
      {
        send: (command) => this.#driver.sendCall(command),
        changed: () => this.#pendingChanged(),
        url: () => this.#url(),
      },
      this.#settings.maxQueuedWrites,
      this.#settings.random,
    );
    this.#driver = new SocketDriver({
      client,
      settings: this.#settings,
      calls: this.#calls,
      topic: (name) => this.#topics.get(name),
      topics: () => this.#topics.values(),
      state: () => this.#state,
      setState: (change) => this.#setState(change),
      track: (counter, answer) => this.track(counter, answer),
      watchingServer: () => this.#serverWatches.size > 0 && this.#serverEnded === null,
      serverStats: (stats) => {
        for (const handlers of [...this.#serverWatches]) callSafely(() => handlers.stats(stats));
      },
      serverStatsEnded: (error) => {
        this.#serverEnded = error;
        for (const handlers of [...this.#serverWatches]) {
          callSafely(() => handlers.ended?.(error));
        }
      },
    });
  }

  /** The current state; the same object until something changes. */
  getState = (): ConnectionState => this.#state;

  /** Calls `listener` after every state change; returns the function that stops it. */
  subscribe = (listener: Listener): (() => void) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };

  /** Whether anything retains the connection (a watch, a call on its way, a `retain`). */
  get retained(): boolean {
    return this.#refs > 0;
  }

  /**
   * Wants the socket: it opens on the first retain and closes `lingerMs` after the last
   * release. Returns the release, which does nothing when called again.
   */
  retain(): () => void {
    this.#refs += 1;
    if (this.#lingerTimer !== null) {
      clearTimeout(this.#lingerTimer);
      this.#lingerTimer = null;
    }
    if (this.#stopListening === null) this.#start();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#refs -= 1;
      if (this.#refs === 0) {
        this.#lingerTimer = setTimeout(() => this.#shutDown(), this.#settings.lingerMs);
      }
    };
  }

  /** Writes not settled yet on counter `name` (queued, in flight, or over HTTP). */
  pendingWritesFor(name: string): number {
    return this.#calls.writes(name) + (this.#httpWrites.get(name) ?? 0);
  }

  /** Connects now if waiting to reconnect, skipping the rest of the wait. */
  reconnectNow(): void {
    this.#driver.feed({ type: "wake" });
  }

  /**
   * Watches counter `name` while the returned function is not called (it is idempotent). Two
   * watches of one counter share the socket's one subscription to it, with the first one's
   * options; a later one is given the state so far as a snapshot. A watch of a counter whose
   * subscription ended (refused, ended by the server) subscribes again.
   */
  watch(name: string, options: WatchOptions, handlers: WatchHandlers): () => void {
    const problem = nameProblem(name) ?? watchOptionsProblem(options);
    if (problem !== null) {
      handlers.ended?.(new TallyWatchError(problem, null, false));
      return () => {};
    }
    const release = this.retain();
    const stopped = this.#state.status === "stopped";
    let topic = this.#topics.get(name);
    let member: Member;
    if (topic === undefined) {
      topic = new Topic(name, options);
      this.#topics.set(name, topic);
      member = topic.join(handlers);
      if (stopped) topic.end(stoppedError(this.#state));
      else this.#driver.feed(topic.subscribeEvent());
    } else {
      member = topic.join(handlers);
      if (stopped) {
        handlers.ended?.(stoppedError(this.#state));
      } else if (topic.ended !== null) {
        // Refused or ended before: a new watch asks again.
        topic.ended = null;
        this.#driver.feed(topic.subscribeEvent());
      }
    }
    const watched = topic;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (this.#topics.get(name) === watched && watched.leave(member)) {
        this.#topics.delete(name);
        this.#driver.forget(name);
        this.#driver.feed({ type: "unsubscribe", name });
      }
      release();
    };
  }

  /**
   * Watches the server's own figures (connections, watchers, operations a second, latency,
   * commit time, readiness; PROTOCOL.md §10.3 `watchServer`) while the returned function is
   * not called. It needs a credential with admin on every counter; a refusal reaches `ended`.
   * Every watch shares the socket's one `watchServer`, asked again on each new socket.
   */
  watchServer(handlers: ServerWatchHandlers): () => void {
    const release = this.retain();
    const first = this.#serverWatches.size === 0;
    this.#serverWatches.add(handlers);
    if (this.#serverEnded !== null) {
      const ended = this.#serverEnded;
      callSafely(() => handlers.ended?.(ended));
    } else if (this.#state.status === "stopped") {
      // Stopped for good until `resetToken`, which asks again.
      const stopped = stoppedError(this.#state);
      callSafely(() => handlers.ended?.(stopped));
    } else if (first) {
      this.#driver.watchServer();
    }
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#serverWatches.delete(handlers);
      if (this.#serverWatches.size === 0) {
        if (this.#serverEnded === null) this.#driver.unwatchServer();
        this.#serverEnded = null;
      }
      release();
    };
  }

  /**
   * Calls `procedure` over the socket (the `call` command), retaining the connection until it is
   * answered. A write carries `idempotencyKey` (a fresh random one by default) and, when the
   * socket drops before its answer, is sent again with the same key on the next one, before the
   * calls made after it; temporary refusals are sent again after a backoff (or `retryAfterMs`).
   * It waits until answered, refused, or `signal` aborts. If the connection stops for good, it
   * goes over HTTP instead, which answers the real refusal. A write already sent when the
   * credential is reset (`resetToken`) is rejected with TallyConnectionError naming its key
   * rather than sent again as the new principal, for whom the key would be a new one.
   *
   * @throws TallyError for a refusal; TallyConnectionError when the write queue is full
   * (`maxQueuedWrites`); `signal.reason` on abort; TypeError for a bad key.
   */
  async call<P extends Procedure>(
    procedure: P,
    request: Procedures[P]["request"],
    options: WriteOptions = {},
  ): Promise<Procedures[P]["answer"]> {
    const { signal } = options;
    signal?.throwIfAborted();
    const key = keyForCall(procedure, options.idempotencyKey);
    const httpOptions: WriteOptions =
      key === undefined ? { signal } : { signal, idempotencyKey: key };
    const overHttp = () =>
      this.client.callOverHttp(procedure, request, httpOptions) as Promise<unknown>;
    if (this.#state.status === "stopped") {
      // Only writes have a key, and every write names its counter.
      const name = (request as { name?: string }).name ?? "";
      const answer = key !== undefined ? this.track(name, overHttp()) : overHttp();
      return (await answer) as Procedures[P]["answer"];
    }
    const answer = this.#calls.make(
      { procedure, body: request, key, signal },
      () => this.retain(),
      overHttp,
    );
    return (await answer) as Procedures[P]["answer"];
  }

  /**
   * Counts `write` (a write of counter `name` made over HTTP) in `pendingWrites` until it
   * settles. For `TallyClient.call`.
   */
  track<T>(name: string, write: Promise<T>): Promise<T> {
    this.#httpWrites.set(name, (this.#httpWrites.get(name) ?? 0) + 1);
    this.#pendingChanged();
    const settled = () => {
      const left = (this.#httpWrites.get(name) ?? 1) - 1;
      if (left === 0) this.#httpWrites.delete(name);
      else this.#httpWrites.set(name, left);
      this.#pendingChanged();
    };
    write.then(settled, settled);
    return write;
  }

  // ---- lifecycle ----

  #start(): void {
    const credentials = this.client.credentials;
    this.#credentialGeneration = credentials.generation;
    const stopCredentials = credentials.subscribe(this.#onCredentials);
    const stopBrowser = listenToBrowser({
      wake: () => this.#driver.feed({ type: "wake" }),
      offline: () => this.#driver.offline(),
    });
    this.#stopListening = () => {
      stopCredentials();
      stopBrowser();
    };
    this.#driver.feed({
      type: "start",
      credentials: credentials.enabled,
      urls: this.client.baseUrls.length,
    });
  }

  /** The linger ended with nothing retaining: close everything and start afresh next time. */
  #shutDown(): void {
    this.#lingerTimer = null;
    if (this.#refs > 0) return;
    this.#stopListening?.();
    this.#stopListening = null;
    this.#driver.reset();
    this.#calls.stopTimer();
    this.#setState({ status: "idle", error: null, retryAt: null });
  }

  /**
   * The credential was reset (signing in or out): what this socket was allowed is no longer
   * known, so the connection starts over with the new one, every watch resuming after the last
   * version it passed on; a stopped connection comes back too.
   */
  readonly #onCredentials = (): void => {
    const credentials = this.client.credentials;
    if (credentials.generation === this.#credentialGeneration) return;
    this.#credentialGeneration = credentials.generation;
    this.#driver.reset();
    this.#calls.credentialChanged();
    this.#setState({ error: null, retryAt: null, principal: null });
    // The new principal may watch the server where the old one could not: asked again.
    this.#serverEnded = null;
    this.#driver.feed({
      type: "start",
      credentials: credentials.enabled,
      urls: this.client.baseUrls.length,
    });
    for (const topic of this.#topics.values()) {
      topic.ended = null;
      this.#driver.feed(topic.subscribeEvent());
    }
  };

  #url(): string {
    try {
      return this.client.socketUrl(this.#driver.urlIndex);
    } catch {
      return "/ws";
    }
  }

  #pendingChanged(): void {
    let pendingWrites = this.#calls.writes();
    for (const count of this.#httpWrites.values()) pendingWrites += count;
    this.#setState({ pendingWrites });
  }

  #setState(change: Partial<ConnectionState>): void {
    this.#state = { ...this.#state, ...change };
    for (const listener of [...this.#listeners]) callSafely(listener);
  }
}
