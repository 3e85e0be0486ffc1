/**
 * The driver of a connection's `ReconnectMachine` (reconnect.ts, PROTOCOL.md §11): it tells the
 * machine what happened (the socket opened, a frame came, a timer fired, a token came) and does
 * what the machine answers (connect, wait, subscribe, deliver, refresh the token, stop, …). It
 * decides nothing about reconnecting itself. `crates/tally-client/src/connection/driver.rs` is
 * the Rust client's driver of the same machine.
 *
 * It reads the frames of the socket (socket-frames.ts parses them) and routes each: updates and
 * snapshots through the machine to the watched topics, replies to calls to `SocketCalls`.
 */

import { CloseCode, type ResumedMessage, type SnapshotMessage, type Update } from "./protocol.js";
import {
  ReconnectMachine,
  type ReconnectAction,
  type ReconnectEvent,
  type StopKind,
} from "./reconnect.js";
import type { TallyClient } from "./rpc.js";
import { MachineTimers, pickDelay } from "./machine-timers.js";
import type { SocketCalls } from "./socket-calls.js";
import {
  isUpdateFrame,
  parseSocketFrame,
  type ServerStats,
  type SocketCommand,
  type SocketFrame,
} from "./socket-frames.js";
import { SocketLink } from "./socket-link.js";
import type { Topic } from "./topic.js";
import { TallyWatchError, describeClose } from "./watch-error.js";
import type { ConnectionSettings, ConnectionState } from "./connection.js";

/** How soon a refused unsubscribe goes again when the server did not say (its window is 1 s). */
const UNSUBSCRIBE_RETRY_MS = 1000;

/** What the event being fed carries for the actions it causes. */
interface Context {
  snapshot?: SnapshotMessage;
  update?: Update & { conflated?: boolean };
  /** Why a subscribe was refused (for an `end`). */
  refusal?: TallyWatchError;
}

/** What the driver needs of its connection. */
export interface DriverHost {
  readonly client: TallyClient;
  readonly settings: ConnectionSettings;
  readonly calls: SocketCalls;
  /** The watched counter `name`, if it is watched. */
  topic(name: string): Topic | undefined;
  topics(): Iterable<Topic>;
  state(): ConnectionState;
  setState(change: Partial<ConnectionState>): void;
  /** Counts a write's HTTP answer in `pendingWrites` until it settles. */
  track(counter: string, answer: Promise<unknown>): Promise<unknown>;
  /** Whether anyone watches the server's figures (so each new socket asks for them). */
  watchingServer(): boolean;
  /** The server's figures came (the reply to `watchServer`, or a push). */
  serverStats(stats: ServerStats): void;
  /** `watchServer` was refused, or the server ended the watch. */
  serverStatsEnded(error: TallyWatchError): void;
}

/** The error a stopped connection gives a watch: why it stopped. */
export function stoppedError(state: ConnectionState): TallyWatchError {
  return state.error ?? new TallyWatchError("the connection stopped", null, false);
}

export class SocketDriver {
  readonly #host: DriverHost;
  #machine: ReconnectMachine;
  readonly #link = new SocketLink();
  readonly #timers = new MachineTimers((event) => this.feed(event));
  /** The credential of the current (or last) socket. */
  #socketToken: string | null = null;
  /** Bumped when an attempt starts or a socket is dropped, so a late token is not used. */
  #attemptSerial = 0;
  /** The index of the base URL of the current (or last) attempt, as the machine chose it. */
  #urlIndex = 0;
  /** Why the current or last connection ended, for the `wait` or `stop` it causes. */
  #reason: TallyWatchError | null = null;
  /** Unsubscribes refused for now (rate limited), by counter, waiting to be sent again. */
  readonly #unsubscribeRetries = new Map<string, ReturnType<typeof setTimeout>>();

  constructor(host: DriverHost) {
    this.#host = host;
    this.#machine = new ReconnectMachine(host.settings.rules);
  }

  /** Tells the machine `event` and does what it answers. */
  feed(event: ReconnectEvent, context: Context = {}): void {
    for (const action of this.#machine.handle(event)) this.#act(action, context);
  }

  /** Drops everything and starts with a fresh machine (shut down, or a new credential). */
  reset(): void {
    this.#dropSocket();
    this.#timers.clearAll();
    this.#machine = new ReconnectMachine(this.#host.settings.rules);
    this.#reason = null;
  }

  /** The index in the client's `baseUrls` of the server of the current (or last) attempt. */
  get urlIndex(): number {
    return this.#urlIndex;
  }

  /** Sends a `call` command on the open socket: its id, or null when none is open. */
  sendCall(command: SocketCommand): number | null {
    return this.#link.send(command, null);
  }

  /**
   * Asks for the server's figures on the open socket; without one, the next socket asks when
   * it opens (`#opened`), as it does after every reconnect.
   */
  watchServer(): void {
    this.#link.send({ type: "watchServer" }, { kind: "watchServer" });
  }

  /** Stops the server's figures on the open socket (a new socket does not ask for them). */
  unwatchServer(): void {
    this.#link.send({ type: "unwatchServer" }, { kind: "unwatchServer" });
  }

  /** Subscription `name` is no longer watched: its retry, if one waits, is not needed. */
  forget(name: string): void {
    this.#timers.clearLater(name);
  }

  /** The OS says the network is gone: the socket is dead even if the browser has not noticed. */
  offline(): void {
    const status = this.#host.state().status;
    if (status !== "connecting" && status !== "connected") return;
    this.#reason = new TallyWatchError("the browser went offline", null, true);
    this.#dropSocket();
    this.feed({ type: "lost" });
  }

  #act(action: ReconnectAction, context: Context): void {
    const host = this.#host;
    switch (action.type) {
      case "connect":
        this.#timers.clear("retry");
        // The machine counts within the list it was given; `min` only guards the index.
        this.#urlIndex = Math.min(action.url ?? 0, host.client.baseUrls.length - 1);
        this.#connect();
        break;
      case "close":
        this.#reason = new TallyWatchError(
          action.why === "connectTimeout"
            ? `the server did not answer within ${host.settings.rules.connectTimeoutMs} ms; retrying`
            : `no answer to a ping for ${host.settings.rules.pingIntervalMs} ms; reconnecting`,
          null,
          true,
        );
        this.#dropSocket();
        break;
      case "wait": {
        const ms = pickDelay(action.minMs, action.maxMs, host.settings.random);
        this.#timers.set("retry", ms);
        host.setState({
          status: "disconnected",
          retryAt: Date.now() + ms,
          error: this.#reason ?? new TallyWatchError("the connection was lost", null, true),
        });
        break;
      }
      case "timer":
        this.#timers.set(action.timer, action.ms);
        break;
      case "connected":
        this.#reason = null;
        host.setState({ status: "connected", error: null, retryAt: null });
        break;
      case "subscribe": {
        const topic = host.topic(action.name);
        if (topic === undefined) break;
        this.#link.send(
          {
            type: "subscribe",
            name: action.name,
            ...(action.since === undefined ? {} : { since: action.since }),
            ...(action.epoch === undefined ? {} : { epoch: action.epoch }),
            ...topic.subscribeFields(),
          },
          { kind: "subscribe", name: action.name },
        );
        break;
      }
      case "unsubscribe":
        this.#timers.clearLater(action.name);
        this.#unsubscribe(action.name);
        break;
      case "deliver": {
        const topic = host.topic(action.name);
        if (context.snapshot !== undefined) topic?.snapshot(context.snapshot);
        else if (context.update !== undefined) topic?.update(context.update);
        break;
      }
      case "ping":
        this.#link.send({ type: "ping" }, { kind: "ping" });
        break;
      case "refreshToken":
        this.#refreshToken();
        break;
      case "sendAuth":
        if (this.#socketToken !== null) {
          this.#link.send(
            { type: "auth", token: this.#socketToken },
            { kind: "auth", first: false },
          );
        }
        break;
      case "later":
        this.#timers.later(
          action.name,
          pickDelay(action.minMs, action.maxMs, host.settings.random),
        );
        break;
      case "end":
        host.topic(action.name)?.end(context.refusal ?? stoppedError(host.state()));
        break;
      case "stop":
        this.#stop(action.stop);
        break;
    }
  }

  #unsubscribe(name: string): void {
    this.#clearUnsubscribeRetry(name);
    this.#link.send({ type: "unsubscribe", name }, { kind: "unsubscribe", name });
  }

  /**
   * An unsubscribe refused for now leaves the server's subscription in place: sent again after
   * the delay, or a later subscribe of the counter (a gap's resubscribe, a remount) would be
   * refused `already_subscribed`, which ends its watch for good.
   */
  #unsubscribeLater(name: string, ms: number): void {
    this.#clearUnsubscribeRetry(name);
    this.#unsubscribeRetries.set(
      name,
      setTimeout(() => {
        this.#unsubscribeRetries.delete(name);
        this.#unsubscribe(name);
      }, ms),
    );
  }

  #clearUnsubscribeRetry(name: string): void {
    const handle = this.#unsubscribeRetries.get(name);
    if (handle !== undefined) clearTimeout(handle);
    this.#unsubscribeRetries.delete(name);
  }

  #stop(kind: StopKind): void {
    const host = this.#host;
    const error = this.#stoppedErrorFor(kind);
    this.#dropSocket();
    this.#timers.clearAll();
    host.setState({ status: "stopped", error, retryAt: null });
    // The topics stay, so that `resetToken` brings them back; their watchers hear it now.
    for (const topic of host.topics()) topic.end(error);
    if (host.watchingServer()) host.serverStatsEnded(error);
    host.calls.handOver((counter, answer) => host.track(counter, answer));
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

  // ---- the socket ----

  /** Gets the credential (when the client has `getToken`), then opens the socket. */
  #connect(): void {
    const attempt = ++this.#attemptSerial;
    const client = this.#host.client;
    this.#host.setState({ status: "connecting", retryAt: null });
    const WebSocketClass = client.WebSocket;
    let url: string;
    try {
      if (WebSocketClass === undefined) {
        throw new TypeError(
          "no WebSocket is available here; pass one as the client's WebSocket option",
        );
      }
      url = client.socketUrl(this.#urlIndex);
    } catch (cause) {
      this.#cannotConnect(cause);
      return;
    }
    const credentials = client.credentials;
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
        this.feed({ type: "lost" });
      },
    );
  }

  /** The request itself cannot be made: nothing the server says can fix it. */
  #cannotConnect(cause: unknown): void {
    const reason = cause instanceof Error ? cause.message : String(cause);
    this.#reason = new TallyWatchError(`cannot open the WebSocket: ${reason}`, null, false, {
      cause,
    });
    this.feed({ type: "refused", status: 0, code: "" });
  }

  #open(
    WebSocketClass: NonNullable<TallyClient["WebSocket"]>,
    url: string,
    token: string | null,
  ): void {
    this.#socketToken = token;
    try {
      this.#link.open(WebSocketClass, url, {
        opened: () => this.#opened(token),
        message: (text) => this.#receive(text),
        closed: (code, reason) => {
          this.#dropSocket();
          this.#closed(code, reason);
        },
      });
    } catch (cause) {
      this.#cannotConnect(cause);
    }
  }

  #opened(token: string | null): void {
    const credentials = this.#host.client.credentials;
    if (token !== null) {
      // A browser cannot set headers: the credential is the first command. The server answers
      // it before it reads the next one, so the subscribes below run as its principal.
      this.#link.send({ type: "auth", token }, { kind: "auth", first: true });
    }
    const refreshAt = credentials.refreshAt(token);
    this.feed(
      refreshAt === null
        ? { type: "opened" }
        : { type: "opened", tokenRefreshMs: Math.max(0, refreshAt - Date.now()) },
    );
    if (token === null) {
      this.#host.setState({ principal: "anonymous" });
      this.#host.calls.open();
    }
    // After the auth, which the server answers first: asked as the socket's principal.
    if (this.#host.watchingServer()) this.watchServer();
  }

  #closed(code: number, reason: string): void {
    if (code === CloseCode.TOKEN_EXPIRED) this.#host.client.credentials.expired(this.#socketToken);
    this.#reason = new TallyWatchError(describeClose(code, reason), code, true);
    this.feed({ type: "closed", code, reason });
  }

  /** Forgets the socket (its events no longer reach us), closes it, and unsends its calls. */
  #dropSocket(): void {
    this.#attemptSerial += 1;
    this.#host.calls.close();
    this.#timers.clearSocket();
    // The socket's subscriptions went with it.
    for (const name of [...this.#unsubscribeRetries.keys()]) this.#clearUnsubscribeRetry(name);
    this.#link.drop();
  }

  // ---- frames ----

  #receive(text: string): void {
    const frame = parseSocketFrame(text);
    if (frame === null) {
      // Newer than this client: still a sign of life.
      this.feed({ type: "heard" });
      return;
    }
    if (isUpdateFrame(frame)) {
      const { name, ...update } = frame;
      this.feed(
        { type: "update", name, version: update.version, conflated: update.conflated === true },
        { update },
      );
      return;
    }
    const host = this.#host;
    switch (frame.type) {
      case "snapshot": {
        const { id, name, ...snapshot } = frame;
        this.#link.take(id);
        this.feed(
          {
            type: "snapshot",
            name,
            version: snapshot.version,
            push: id === undefined,
            ...(snapshot.epoch === undefined ? {} : { epoch: snapshot.epoch }),
          },
          { snapshot },
        );
        return;
      }
      case "resumed": {
        this.#link.take(frame.id);
        const epoch = frame.epoch === undefined ? {} : { epoch: frame.epoch };
        const resumed: ResumedMessage = {
          type: "resumed",
          since: frame.since,
          version: frame.version,
          ...epoch,
        };
        host.topic(frame.name)?.resumed(resumed);
        this.feed({
          type: "resumed",
          name: frame.name,
          since: frame.since,
          version: frame.version,
          ...epoch,
        });
        return;
      }
      case "presence":
        this.feed({ type: "heard" });
        host.topic(frame.name)?.presence({ watchers: frame.watchers, users: frame.users });
        return;
      case "unsubscribed": {
        if (frame.id !== undefined) {
          this.#link.take(frame.id);
          this.feed({ type: "heard" });
          return;
        }
        // The server ended this subscription (lost permission, say); the socket goes on.
        this.#timers.clearLater(frame.name);
        host
          .topic(frame.name)
          ?.end(
            new TallyWatchError(
              frame.reason ?? `the server ended the subscription to ${frame.name}`,
              null,
              false,
              frame.code === undefined ? {} : { code: frame.code },
            ),
          );
        this.feed({ type: "ended", name: frame.name });
        return;
      }
      case "reconnect":
        this.feed({ type: "advised", afterMs: frame.afterMs });
        return;
      case "result":
        this.feed({ type: "heard" });
        host.calls.answered(frame.id, frame.result);
        return;
      case "authenticated": {
        const flight = this.#link.take(frame.id);
        host.setState({ principal: frame.principal });
        this.feed({ type: "heard" });
        if (flight?.kind === "auth" && flight.first) host.calls.open();
        return;
      }
      case "pong":
        this.#link.take(frame.id);
        this.feed({ type: "heard" });
        return;
      case "serverUnwatched":
        this.feed({ type: "heard" });
        if (frame.id !== undefined) {
          this.#link.take(frame.id);
          return;
        }
        host.serverStatsEnded(
          new TallyWatchError(
            frame.reason ?? "the server ended the watch of its figures",
            null,
            false,
            frame.code === undefined ? {} : { code: frame.code },
          ),
        );
        return;
      case "serverStats": {
        const { type: _type, id, ...stats } = frame;
        this.#link.take(id);
        this.feed({ type: "heard" });
        host.serverStats(stats);
        return;
      }
      case "error":
        this.#refused(frame);
        return;
    }
  }

  #refused(frame: Extract<SocketFrame, { type: "error" }>): void {
    const flight = this.#link.take(frame.id);
    if (flight?.kind === "subscribe") {
      const refusal = new TallyWatchError(frame.message, null, frame.temporary === true, {
        code: frame.code,
      });
      this.feed(
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
    } else if (flight?.kind === "watchServer") {
      // Refused: not an admin on every counter.
      this.feed({ type: "heard" });
      this.#host.serverStatsEnded(
        new TallyWatchError(frame.message, null, frame.temporary === true, { code: frame.code }),
      );
    } else if (flight?.kind === "unsubscribe" && frame.temporary === true) {
      this.feed({ type: "heard" });
      this.#unsubscribeLater(flight.name, frame.retryAfterMs ?? UNSUBSCRIBE_RETRY_MS);
    } else {
      // A call's refusal is the call's business. A refused fresh token leaves the socket on its
      // current principal until that one expires (then 4502); an unsubscribe of what is already
      // gone needs nothing either.
      this.feed({ type: "heard" });
      this.#host.calls.refused(frame);
    }
  }

  // ---- tokens ----

  /** Asks for a credential to replace the socket's, then tells the machine what came. */
  #refreshToken(): void {
    const stale = this.#socketToken;
    const attempt = this.#attemptSerial;
    const credentials = this.#host.client.credentials;
    credentials.renew(stale).then(
      (token) => {
        if (attempt !== this.#attemptSerial) return;
        const fresh = token !== stale;
        if (fresh && token === null && this.#link.present) {
          // Signed out: a socket cannot become anonymous in band, so it starts over.
          this.#reason = new TallyWatchError("the credential was withdrawn", null, true);
          this.#dropSocket();
          this.feed({ type: "lost" });
          return;
        }
        if (fresh && this.#link.present) this.#socketToken = token;
        const refreshAt = credentials.refreshAt(token);
        this.feed(
          refreshAt === null
            ? { type: "tokenRefreshed", fresh }
            : { type: "tokenRefreshed", fresh, refreshMs: Math.max(0, refreshAt - Date.now()) },
        );
      },
      (error: unknown) => {
        if (attempt !== this.#attemptSerial) return;
        const message = error instanceof Error ? error.message : String(error);
        this.#reason = new TallyWatchError(message, null, true, { cause: error });
        this.feed({ type: "tokenFailed" });
      },
    );
  }
}
