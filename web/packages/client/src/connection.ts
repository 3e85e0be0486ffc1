/**
 * One socket per client (protocol version 2, `GET /ws`, docs/PROTOCOL.md §10) carrying every
 * watched counter and the writes made while it is wanted.
 *
 * The reconnect rules are the pure `ReconnectMachine`'s (reconnect.ts, PROTOCOL.md §11): this
 * file tells it what happens (the socket opened, a frame came, a timer fired, …) and does what
 * it answers (connect, wait, subscribe, deliver, …). It decides nothing about reconnecting
 * itself; it moves frames, timers, tokens and calls. `crates/tally-client/src/connection/
 * driver.rs` is the Rust client's driver of the same machine.
 *
 * The socket is reference counted: it opens at the first `retain` (a watch retains) and closes
 * `lingerMs` after the last release, so a React remount reuses it.
 */

import { Backoff } from "./backoff.js";
import { CallQueue, inWriteOrder, type QueuedCall } from "./call-queue.js";
import { TallyConnectionError, TallyError } from "./errors.js";
import {
  CloseCode,
  ERROR_CODES,
  nameProblem,
  type Procedure,
  type Procedures,
  type ResumedMessage,
  type SnapshotMessage,
  type Update,
} from "./protocol.js";
import {
  DEFAULT_RECONNECT_RULES,
  ReconnectMachine,
  type ReconnectAction,
  type ReconnectEvent,
  type ReconnectRules,
  type StopKind,
  type TimerKind,
} from "./reconnect.js";
import type { TallyClient, WriteOptions } from "./rpc.js";
import {
  isUpdateFrame,
  parseSocketFrame,
  type SocketCommand,
  type SocketFrame,
} from "./socket-frames.js";
import {
  Topic,
  callSafely,
  type Member,
  watchOptionsProblem,
  type WatchHandlers,
  type WatchOptions,
} from "./topic.js";
import { TallyWatchError, describeClose } from "./watch-error.js";

export type { WatchHandlers, WatchOptions } from "./topic.js";
import { WRITE_BACKOFF, idempotencyKeyProblem, isWrite, newIdempotencyKey } from "./write.js";

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
  /** The most writes that may wait on the socket path; one more is refused at once. */
  maxQueuedWrites: number;
}

/** At most this many calls are on their way over one socket (the server allows 256). */
const MAX_CALLS_IN_FLIGHT = 64;

/** Refusals after which a call is sent again with the same key: its fate is unknown or it may work later. */
const RETRIED_CODES = new Set(["unavailable", "internal", "too_many_in_flight", "rate_limited"]);

/** A call waiting on the socket path. */
interface SocketCall extends QueuedCall {
  resolve(answer: unknown): void;
  reject(error: unknown): void;
  /** The same call over HTTP (with the same key), for when the connection stopped. */
  overHttp(): Promise<unknown>;
  /** Releases what the call holds (its retain, its abort listener). */
  finish(): void;
}

/** A command other than a call on its way, by id. */
type Flight =
  | { kind: "subscribe"; name: string }
  | { kind: "unsubscribe" | "ping" }
  /** `first`: the credential of a new socket (a refusal means it is not valid). */
  | { kind: "auth"; first: boolean };

/** What the event being fed carries for the actions it causes. */
interface Context {
  snapshot?: SnapshotMessage;
  update?: Update & { conflated?: boolean };
  /** Why a subscribe was refused (for an `end`). */
  refusal?: TallyWatchError;
}

type Listener = () => void;

/**
 * One client's socket. Get it as `client.connection`; `CounterSubscription` and the React hooks
 * use it. See the file comment.
 */
export class TallyConnection {
  readonly client: TallyClient;
  readonly #settings: ConnectionSettings;
  readonly #backoff: Backoff;
  #machine: ReconnectMachine;
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
  #started = false;
  #stopCredentials: (() => void) | null = null;
  #credentialGeneration = 0;

  #socket: WebSocket | null = null;
  /** The credential of the current (or last) socket. */
  #socketToken: string | null = null;
  /** Whether calls may go out: the socket is open and its credential was accepted. */
  #callsOpen = false;
  /** Bumped when an attempt starts or a socket is dropped, so a late token is not used. */
  #attemptSerial = 0;
  #nextId = 1;
  readonly #flights = new Map<number, Flight>();
  readonly #timers = new Map<TimerKind, ReturnType<typeof setTimeout>>();
  readonly #later = new Map<string, ReturnType<typeof setTimeout>>();
  /** Why the current or last connection ended, for the `wait` or `stop` it causes. */
  #reason: TallyWatchError | null = null;

  readonly #topics = new Map<string, Topic>();
  readonly #calls = new CallQueue<SocketCall>();
  #callTimer: ReturnType<typeof setTimeout> | null = null;
  /** Writes on their way over HTTP, by counter. */
  readonly #httpWrites = new Map<string, number>();

  constructor(client: TallyClient, settings: Partial<ConnectionSettings> = {}) {
    this.client = client;
    this.#settings = {
      rules: settings.rules ?? DEFAULT_RECONNECT_RULES,
      random: settings.random ?? Math.random,
      lingerMs: settings.lingerMs ?? 1000,
      maxQueuedWrites: settings.maxQueuedWrites ?? 1000,
    };
    this.#backoff = new Backoff(WRITE_BACKOFF, this.#settings.random);
    this.#machine = new ReconnectMachine(this.#settings.rules);
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
    if (!this.#started) this.#start();
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
    this.#feed({ type: "wake" });
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
      if (stopped) topic.end(this.#stoppedError());
      else this.#feed(topic.subscribeEvent());
    } else {
      member = topic.join(handlers);
      if (stopped) {
        handlers.ended?.(this.#stoppedError());
      } else if (topic.ended !== null) {
        // Refused or ended before: a new watch asks again.
        topic.ended = null;
        this.#feed(topic.subscribeEvent());
      }
    }
    const watched = topic;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (this.#topics.get(name) === watched && watched.leave(member)) {
        this.#topics.delete(name);
        this.#clearLater(name);
        this.#feed({ type: "unsubscribe", name });
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
   * goes over HTTP instead, which answers the real refusal.
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
    const write = isWrite(procedure);
    if (!write && options.idempotencyKey !== undefined) {
      throw new TypeError(`counter.${procedure} is a read; only writes take an idempotency key`);
    }
    const key = write ? (options.idempotencyKey ?? newIdempotencyKey()) : undefined;
    const problem = key === undefined ? null : idempotencyKeyProblem(key);
    if (problem !== null) throw new TypeError(problem);
    const httpOptions: WriteOptions =
      key === undefined ? { signal } : { signal, idempotencyKey: key };
    const overHttp = () =>
      this.client.callOverHttp(procedure, request, httpOptions) as Promise<unknown>;
    if (this.#state.status === "stopped") {
      const answer = write ? this.track(request.name, overHttp()) : overHttp();
      return (await answer) as Procedures[P]["answer"];
    }
    const bound = this.#settings.maxQueuedWrites;
    if (write && this.#calls.writes() >= bound) {
      throw new TallyConnectionError(
        this.#url(),
        `the write queue is full: ${bound} writes are waiting to be sent (maxQueuedWrites is ${bound}); this write was not made`,
      );
    }
    // Reads are bounded too, by every call waiting, so that no queue here grows without limit.
    if (!write && this.#calls.size >= bound) {
      throw new TallyConnectionError(
        this.#url(),
        `the call queue is full: ${bound} calls are waiting to be sent (maxQueuedWrites is ${bound}); this read was not sent`,
      );
    }
    return await new Promise<Procedures[P]["answer"]>((resolve, reject) => {
      const release = this.retain();
      const onAbort = () => {
        if (!this.#calls.abandon(call)) return;
        call.finish();
        this.#pendingChanged();
        reject(signal?.reason);
        // What it held back may go now; a retry timer it needed is no longer needed.
        this.#pump();
      };
      const call: SocketCall = {
        procedure,
        body: request,
        key,
        counter: write ? request.name : null,
        barrier: procedure === "setValue" || procedure === "reset",
        id: null,
        notBefore: 0,
        refusals: 0,
        abandoned: false,
        resolve: resolve as (answer: unknown) => void,
        reject,
        overHttp,
        finish: () => {
          signal?.removeEventListener("abort", onAbort);
          release();
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#calls.add(call);
      this.#pendingChanged();
      this.#pump();
    });
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
    this.#started = true;
    const credentials = this.client.credentials;
    this.#credentialGeneration = credentials.generation;
    this.#stopCredentials = credentials.subscribe(this.#onCredentials);
    this.#listenToBrowser(true);
    this.#feed({ type: "start", credentials: credentials.enabled });
  }

  /** The linger ended with nothing retaining: close everything and start afresh next time. */
  #shutDown(): void {
    this.#lingerTimer = null;
    if (this.#refs > 0) return;
    this.#started = false;
    this.#stopCredentials?.();
    this.#stopCredentials = null;
    this.#listenToBrowser(false);
    this.#dropSocket();
    this.#clearTimers();
    this.#clearCallTimer();
    this.#machine = new ReconnectMachine(this.#settings.rules);
    this.#reason = null;
    this.#setState({ status: "idle", error: null, retryAt: null });
  }

  /**
   * The credential was reset (signing in or out): what this socket was allowed is no longer
   * known, so the connection starts over with the new one, every watch resuming after the last
   * version it passed on; a stopped connection comes back too.
   */
  readonly #onCredentials = (): void => {
    const generation = this.client.credentials.generation;
    if (generation === this.#credentialGeneration) return;
    this.#credentialGeneration = generation;
    this.#dropSocket();
    this.#clearTimers();
    this.#machine = new ReconnectMachine(this.#settings.rules);
    this.#reason = null;
    this.#setState({ error: null, retryAt: null, principal: null });
    this.#feed({ type: "start", credentials: this.client.credentials.enabled });
    for (const topic of this.#topics.values()) {
      topic.ended = null;
      this.#feed(topic.subscribeEvent());
    }
  };

  #listenToBrowser(on: boolean): void {
    if (typeof window === "undefined" || typeof window.addEventListener !== "function") return;
    const method = on ? "addEventListener" : "removeEventListener";
    window[method]("online", this.#onWake);
    window[method]("offline", this.#onOffline);
    if (typeof document !== "undefined") document[method]("visibilitychange", this.#onWake);
  }

  readonly #onWake = (): void => {
    if (typeof document !== "undefined" && document.visibilityState === "hidden") return;
    this.#feed({ type: "wake" });
  };

  /** The OS says the network is gone: the socket is dead even if the browser has not noticed. */
  readonly #onOffline = (): void => {
    if (this.#state.status !== "connecting" && this.#state.status !== "connected") return;
    this.#reason = new TallyWatchError("the browser went offline", null, true);
    this.#dropSocket();
    this.#feed({ type: "lost" });
  };

  // ---- the machine ----

  #feed(event: ReconnectEvent, context: Context = {}): void {
    for (const action of this.#machine.handle(event)) this.#act(action, context);
  }

  #act(action: ReconnectAction, context: Context): void {
    switch (action.type) {
      case "connect":
        this.#clearTimer("retry");
        this.#connect();
        break;
      case "close":
        this.#reason = new TallyWatchError(
          action.why === "connectTimeout"
            ? `the server did not answer within ${this.#settings.rules.connectTimeoutMs} ms; retrying`
            : `no answer to a ping for ${this.#settings.rules.pingIntervalMs} ms; reconnecting`,
          null,
          true,
        );
        this.#dropSocket();
        break;
      case "wait": {
        const span = action.maxMs - action.minMs;
        const ms = action.minMs + Math.round(this.#settings.random() * span);
        this.#setTimer("retry", ms);
        this.#setState({
          status: "disconnected",
          retryAt: Date.now() + ms,
          error: this.#reason ?? new TallyWatchError("the connection was lost", null, true),
        });
        break;
      }
      case "timer":
        this.#setTimer(action.timer, action.ms);
        break;
      case "connected":
        this.#reason = null;
        this.#setState({ status: "connected", error: null, retryAt: null });
        break;
      case "subscribe": {
        const topic = this.#topics.get(action.name);
        if (topic === undefined) break;
        this.#send(
          {
            type: "subscribe",
            name: action.name,
            ...(action.since === undefined ? {} : { since: action.since }),
            ...topic.subscribeFields(),
          },
          { kind: "subscribe", name: action.name },
        );
        break;
      }
      case "unsubscribe":
        this.#clearLater(action.name);
        this.#send({ type: "unsubscribe", name: action.name }, { kind: "unsubscribe" });
        break;
      case "deliver":
        this.#deliver(action.name, context);
        break;
      case "ping":
        this.#send({ type: "ping" }, { kind: "ping" });
        break;
      case "refreshToken":
        this.#refreshToken();
        break;
      case "sendAuth":
        if (this.#socketToken !== null) {
          this.#send({ type: "auth", token: this.#socketToken }, { kind: "auth", first: false });
        }
        break;
      case "later": {
        this.#clearLater(action.name);
        const span = action.maxMs - action.minMs;
        const ms = action.minMs + Math.round(this.#settings.random() * span);
        const name = action.name;
        this.#later.set(
          name,
          setTimeout(() => {
            this.#later.delete(name);
            this.#feed({ type: "due", name });
          }, ms),
        );
        break;
      }
      case "end": {
        this.#topics.get(action.name)?.end(context.refusal ?? this.#stoppedError());
        break;
      }
      case "stop":
        this.#stop(action.stop);
        break;
    }
  }

  /** Passes the snapshot or update being handled on to `name`'s watchers. */
  #deliver(name: string, context: Context): void {
    const topic = this.#topics.get(name);
    if (context.snapshot !== undefined) topic?.snapshot(context.snapshot);
    else if (context.update !== undefined) topic?.update(context.update);
  }

  #stop(kind: StopKind): void {
    const error = this.#stoppedErrorFor(kind);
    this.#dropSocket();
    this.#clearTimers();
    this.#setState({ status: "stopped", error, retryAt: null });
    // The topics stay, so that `resetToken` brings them back; their watchers hear it now.
    for (const topic of this.#topics.values()) topic.end(error);
    // HTTP answers what the server thinks of these writes now (the real refusal, or success),
    // in the order the socket would have kept.
    this.#clearCallTimer();
    const calls = this.#calls.drain();
    for (const call of calls) call.finish();
    const answers = inWriteOrder(calls, (call) => call.overHttp());
    calls.forEach((call, at) => {
      const answer = answers[at] as Promise<unknown>;
      const tracked = call.counter === null ? answer : this.track(call.counter, answer);
      tracked.then(call.resolve, call.reject);
    });
    this.#pendingChanged();
  }

  /** The error a stop leaves, from why the last connection ended. */
  #stoppedErrorFor(kind: StopKind): TallyWatchError {
    if (kind === "tokenExpired") {
      return new TallyWatchError(
        "the token expired and getToken returned no fresh one",
        CloseCode.TOKEN_EXPIRED,
        false,
        { code: "token_expired" },
      );
    }
    const reason = this.#reason;
    const code = kind === "unauthenticated" || kind === "forbidden" ? kind : (reason?.code ?? null);
    const message = reason?.message ?? "the connection stopped";
    return new TallyWatchError(message, reason?.closeCode ?? null, false, { code });
  }

  #stoppedError(): TallyWatchError {
    return this.#state.error ?? new TallyWatchError("the connection stopped", null, false);
  }

  // ---- the socket ----

  #url(): string {
    try {
      return this.client.socketUrl();
    } catch {
      return "/ws";
    }
  }

  /** Gets the credential (when the client has `getToken`), then opens the socket. */
  #connect(): void {
    const attempt = ++this.#attemptSerial;
    this.#setState({ status: "connecting", retryAt: null });
    const WebSocketClass = this.client.WebSocket;
    let url: string;
    try {
      if (WebSocketClass === undefined) {
        throw new TypeError(
          "no WebSocket is available here; pass one as the client's WebSocket option",
        );
      }
      url = this.client.socketUrl();
    } catch (cause) {
      this.#cannotConnect(cause);
      return;
    }
    const credentials = this.client.credentials;
    if (!credentials.enabled) {
      this.#open(WebSocketClass, url, null);
      return;
    }
    credentials.token().then(
      (token) => {
        if (attempt === this.#attemptSerial) this.#open(WebSocketClass, url, token);
      },
      (error: unknown) => {
        if (attempt !== this.#attemptSerial) return;
        const message = error instanceof Error ? error.message : String(error);
        this.#reason = new TallyWatchError(message, null, true, { cause: error });
        this.#feed({ type: "lost" });
      },
    );
  }

  /** The request itself cannot be made: nothing the server says can fix it. */
  #cannotConnect(cause: unknown): void {
    const reason = cause instanceof Error ? cause.message : String(cause);
    this.#reason = new TallyWatchError(`cannot open the WebSocket: ${reason}`, null, false, {
      cause,
    });
    this.#feed({ type: "refused", status: 0, code: "" });
  }

  #open(
    WebSocketClass: NonNullable<TallyClient["WebSocket"]>,
    url: string,
    token: string | null,
  ): void {
    let socket: WebSocket;
    try {
      socket = new WebSocketClass(url);
    } catch (cause) {
      this.#cannotConnect(cause);
      return;
    }
    this.#socket = socket;
    this.#socketToken = token;
    this.#callsOpen = false;
    // Handlers ignore a socket that is no longer the current one.
    socket.onopen = () => {
      if (this.#socket !== socket) return;
      const credentials = this.client.credentials;
      if (token !== null) {
        // A browser cannot set headers: the credential is the first command. The server answers
        // it before it reads the next one, so the subscribes below run as its principal.
        this.#send({ type: "auth", token }, { kind: "auth", first: true });
      } else {
        this.#callsOpen = true;
        this.#setState({ principal: "anonymous" });
      }
      const refreshAt = credentials.refreshAt(token);
      this.#feed(
        refreshAt === null
          ? { type: "opened" }
          : { type: "opened", tokenRefreshMs: Math.max(0, refreshAt - Date.now()) },
      );
      this.#pump();
    };
    socket.onmessage = (event: MessageEvent) => {
      if (this.#socket === socket && typeof event.data === "string") this.#receive(event.data);
    };
    socket.onclose = (event: CloseEvent) => {
      if (this.#socket !== socket) return;
      this.#dropSocket();
      this.#closed(event.code, event.reason);
    };
    // A close always follows an error, and decides what happens next. The handler stays even
    // after the socket is dropped: Node's `ws` throws an error nobody listens to.
    socket.onerror = () => {};
  }

  #closed(code: number, reason: string): void {
    if (code === CloseCode.TOKEN_EXPIRED) this.client.credentials.expired(this.#socketToken);
    this.#reason = new TallyWatchError(describeClose(code, reason), code, true);
    this.#feed({ type: "closed", code, reason });
  }

  /** Sends `command` with a fresh id on the open socket; false if there is none. */
  #send(command: SocketCommand, flight: Flight | null): number | null {
    const socket = this.#socket;
    if (socket === null || socket.readyState !== 1) return null;
    const id = this.#nextId++;
    socket.send(JSON.stringify({ id, ...command }));
    if (flight !== null) this.#flights.set(id, flight);
    return id;
  }

  /** Forgets the socket (its events no longer reach us), closes it, and unsends its calls. */
  #dropSocket(): void {
    this.#attemptSerial += 1;
    this.#flights.clear();
    this.#calls.unsend();
    this.#callsOpen = false;
    for (const timer of ["connectTimeout", "minUptime", "ping", "token"] as const) {
      this.#clearTimer(timer);
    }
    for (const name of [...this.#later.keys()]) this.#clearLater(name);
    const socket = this.#socket;
    this.#socket = null;
    if (socket === null) return;
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = null;
    if (socket.readyState === 0 || socket.readyState === 1) socket.close(CloseCode.NORMAL);
  }

  #receive(text: string): void {
    const frame = parseSocketFrame(text);
    if (frame === null) {
      // Newer than this client: still a sign of life.
      this.#feed({ type: "heard" });
      return;
    }
    if (isUpdateFrame(frame)) {
      const { name, ...update } = frame;
      this.#feed(
        { type: "update", name, version: update.version, conflated: update.conflated === true },
        { update },
      );
      return;
    }
    switch (frame.type) {
      case "snapshot": {
        const { id, name, ...snapshot } = frame;
        if (id !== undefined) this.#flights.delete(id);
        this.#feed(
          { type: "snapshot", name, version: snapshot.version, push: id === undefined },
          { snapshot },
        );
        return;
      }
      case "resumed": {
        this.#flights.delete(frame.id);
        const resumed: ResumedMessage = {
          type: "resumed",
          since: frame.since,
          version: frame.version,
        };
        this.#topics.get(frame.name)?.resumed(resumed);
        this.#feed({
          type: "resumed",
          name: frame.name,
          since: frame.since,
          version: frame.version,
        });
        return;
      }
      case "presence": {
        this.#feed({ type: "heard" });
        this.#topics.get(frame.name)?.presence({ watchers: frame.watchers, users: frame.users });
        return;
      }
      case "unsubscribed": {
        if (frame.id !== undefined) {
          this.#flights.delete(frame.id);
          this.#feed({ type: "heard" });
          return;
        }
        // The server ended this subscription (lost permission, say); the socket goes on.
        const topic = this.#topics.get(frame.name);
        this.#clearLater(frame.name);
        if (topic !== undefined) {
          const error = new TallyWatchError(
            frame.reason ?? `the server ended the subscription to ${frame.name}`,
            null,
            false,
            frame.code === undefined ? {} : { code: frame.code },
          );
          topic.end(error);
        }
        this.#feed({ type: "ended", name: frame.name });
        return;
      }
      case "reconnect":
        this.#feed({ type: "advised", afterMs: frame.afterMs });
        return;
      case "result": {
        this.#feed({ type: "heard" });
        const call = this.#calls.sentAs(frame.id);
        if (call !== undefined) this.#settle(call, () => call.resolve(frame.result));
        return;
      }
      case "authenticated": {
        const flight = this.#flights.get(frame.id);
        this.#flights.delete(frame.id);
        this.#setState({ principal: frame.principal });
        this.#feed({ type: "heard" });
        if (flight?.kind === "auth" && flight.first) {
          this.#callsOpen = true;
          this.#pump();
        }
        return;
      }
      case "pong":
        this.#flights.delete(frame.id);
        this.#feed({ type: "heard" });
        return;
      case "error":
        this.#refused(frame);
        return;
    }
  }

  #refused(frame: Extract<SocketFrame, { type: "error" }>): void {
    const id = frame.id;
    const flight = id === undefined ? undefined : this.#flights.get(id);
    if (id !== undefined) this.#flights.delete(id);
    const call = id === undefined ? undefined : this.#calls.sentAs(id);
    if (flight?.kind === "subscribe") {
      const refusal = new TallyWatchError(frame.message, null, frame.temporary === true, {
        code: frame.code,
      });
      this.#feed(
        {
          type: "subscribeRefused",
          name: flight.name,
          temporary: frame.temporary === true,
          ...(frame.retryAfterMs === undefined ? {} : { retryAfterMs: frame.retryAfterMs }),
        },
        { refusal },
      );
    } else if (flight?.kind === "auth" && flight.first) {
      // The socket's credential is not valid: as the close a version-1 socket gets for it.
      const code =
        frame.code === "token_expired"
          ? CloseCode.TOKEN_EXPIRED
          : frame.code === "unauthenticated"
            ? CloseCode.UNAUTHENTICATED
            : CloseCode.ABNORMAL;
      this.#dropSocket();
      this.#closed(code, frame.message);
    } else if (call !== undefined) {
      this.#feed({ type: "heard" });
      this.#callRefused(call, frame);
    } else {
      // A refused fresh token leaves the socket on its current principal until that one
      // expires (then 4502); an unsubscribe of what is already gone needs nothing either.
      this.#feed({ type: "heard" });
    }
  }

  // ---- calls ----

  /** Sends the calls that may go now (see CallQueue), and wakes up for those that wait. */
  #pump(): void {
    this.#clearCallTimer();
    const now = Date.now();
    if (this.#callsOpen) {
      for (const call of this.#calls.ready(now, MAX_CALLS_IN_FLIGHT)) {
        const command: SocketCommand = {
          type: "call",
          procedure: `counter.${call.procedure}`,
          ...call.body,
          ...(call.key === undefined ? {} : { idempotencyKey: call.key }),
        };
        const id = this.#send(command, null);
        if (id === null) break;
        call.id = id;
      }
    }
    const next = this.#calls.nextRetryAt(now);
    if (next !== null) this.#callTimer = setTimeout(() => this.#pump(), next - now);
  }

  #clearCallTimer(): void {
    if (this.#callTimer !== null) clearTimeout(this.#callTimer);
    this.#callTimer = null;
  }

  #callRefused(call: SocketCall, frame: Extract<SocketFrame, { type: "error" }>): void {
    if (RETRIED_CODES.has(frame.code) && !call.abandoned) {
      // Its fate is unknown or it may work later: the same call, with the same key, later.
      call.id = null;
      call.notBefore = Date.now() + (frame.retryAfterMs ?? this.#backoff.delay(call.refusals));
      call.refusals += 1;
      this.#pump();
      return;
    }
    const known = (ERROR_CODES as Record<string, { status: number; temporary: boolean }>)[
      frame.code
    ];
    const error = new TallyError(
      known?.status ?? 0,
      frame.code,
      frame.message,
      frame.temporary ?? known?.temporary ?? false,
      frame.retryAfterMs ?? null,
    );
    this.#settle(call, () => call.reject(error));
  }

  #settle(call: SocketCall, outcome: () => void): void {
    if (!this.#calls.remove(call)) return;
    // An abandoned call was settled by its abort; its answer only frees its place.
    if (!call.abandoned) {
      call.finish();
      this.#pendingChanged();
      outcome();
    }
    this.#pump();
  }

  #pendingChanged(): void {
    const pendingWrites =
      this.#calls.writes() + [...this.#httpWrites.values()].reduce((sum, n) => sum + n, 0);
    this.#setState({ pendingWrites });
  }

  // ---- tokens and timers ----

  /** Asks for a credential to replace the socket's, then tells the machine what came. */
  #refreshToken(): void {
    const stale = this.#socketToken;
    const attempt = this.#attemptSerial;
    const credentials = this.client.credentials;
    credentials.renew(stale).then(
      (token) => {
        if (attempt !== this.#attemptSerial) return;
        const fresh = token !== stale;
        if (fresh && token === null && this.#socket !== null) {
          // Signed out: a socket cannot become anonymous in band, so it starts over.
          this.#reason = new TallyWatchError("the credential was withdrawn", null, true);
          this.#dropSocket();
          this.#feed({ type: "lost" });
          return;
        }
        if (fresh && this.#socket !== null) this.#socketToken = token;
        const refreshAt = credentials.refreshAt(token);
        this.#feed(
          refreshAt === null
            ? { type: "tokenRefreshed", fresh }
            : { type: "tokenRefreshed", fresh, refreshMs: Math.max(0, refreshAt - Date.now()) },
        );
      },
      (error: unknown) => {
        if (attempt !== this.#attemptSerial) return;
        const message = error instanceof Error ? error.message : String(error);
        this.#reason = new TallyWatchError(message, null, true, { cause: error });
        this.#feed({ type: "tokenFailed" });
      },
    );
  }

  #setTimer(timer: TimerKind, ms: number): void {
    this.#clearTimer(timer);
    this.#timers.set(
      timer,
      setTimeout(() => {
        this.#timers.delete(timer);
        this.#feed({ type: "timer", timer });
      }, ms),
    );
  }

  #clearTimer(timer: TimerKind): void {
    const handle = this.#timers.get(timer);
    if (handle !== undefined) clearTimeout(handle);
    this.#timers.delete(timer);
  }

  #clearLater(name: string): void {
    const handle = this.#later.get(name);
    if (handle !== undefined) clearTimeout(handle);
    this.#later.delete(name);
  }

  #clearTimers(): void {
    for (const timer of [...this.#timers.keys()]) this.#clearTimer(timer);
    for (const name of [...this.#later.keys()]) this.#clearLater(name);
  }

  #setState(change: Partial<ConnectionState>): void {
    this.#state = { ...this.#state, ...change };
    for (const listener of [...this.#listeners]) callSafely(listener);
  }
}
