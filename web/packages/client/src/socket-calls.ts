/**
 * The calls a connection carries over its socket (the `call` command, PROTOCOL.md §10.3), from
 * the moment one is made until it is settled: bounded (`maxQueuedWrites`), sent in the queue's
 * order (call-queue.ts) when the socket may carry calls, sent again with the same key after a
 * drop or a temporary refusal, rejected with `signal.reason` on abort, and handed to HTTP when
 * the connection stops for good. Every write has an idempotency key, so none of this can apply
 * one twice; none is dropped either, short of an answer, an abort or the bound.
 */

import { Backoff } from "./backoff.js";
import { CallQueue, inWriteOrder, type QueuedCall } from "./call-queue.js";
import { TallyConnectionError, TallyError } from "./errors.js";
import { ERROR_CODES, type Procedure } from "./protocol.js";
import type { SocketCommand, SocketFrame } from "./socket-frames.js";
import { WRITE_BACKOFF, undecidedNote } from "./write.js";

/** At most this many calls are on their way over one socket (the server allows 256). */
const MAX_CALLS_IN_FLIGHT = 64;

/**
 * Refusals after which a call is sent again with the same key: its fate is unknown or it may work later.
 * Not `quota_exceeded` nor `store_stopped`: sending again changes nothing until an operator acts.
 */
const RETRIED_CODES = new Set(["unavailable", "internal", "too_many_in_flight", "rate_limited"]);

type ErrorFrame = Extract<SocketFrame, { type: "error" }>;

/** A call waiting on the socket path. */
interface SocketCall extends QueuedCall {
  resolve(answer: unknown): void;
  reject(error: unknown): void;
  /** The same call over HTTP (with the same key), for when the connection stopped. */
  overHttp(): Promise<unknown>;
  /** Releases what the call holds (its retain, its abort listener). */
  finish(): void;
}

/** One call to make. */
export interface CallRequest {
  procedure: Procedure;
  /** The RPC body: `name` (every procedure but `list`) and the procedure's fields. */
  body: Readonly<Record<string, unknown>> & { name?: string };
  /** A write's idempotency key; undefined for a read. */
  key: string | undefined;
  signal: AbortSignal | undefined;
}

/** What the calls need of their connection. */
export interface CallsHost {
  /** Sends a `call` command on the open socket: its id, or null when none is open. */
  send(command: SocketCommand): number | null;
  /** The writes waiting may have changed (for `pendingWrites`). */
  changed(): void;
  /** The socket's URL, to name in an error. */
  url(): string;
}

export class SocketCalls {
  readonly #queue = new CallQueue<SocketCall>();
  readonly #host: CallsHost;
  readonly #maxQueued: number;
  readonly #backoff: Backoff;
  /** The wake-up for calls waiting out a refusal. */
  #timer: ReturnType<typeof setTimeout> | null = null;
  /** Whether calls may go out: the socket is open and its credential was accepted. */
  #open = false;

  constructor(host: CallsHost, maxQueued: number, random: () => number) {
    this.#host = host;
    this.#maxQueued = maxQueued;
    this.#backoff = new Backoff(WRITE_BACKOFF, random);
  }

  /** Writes not settled yet (all counters, or `counter`'s). */
  writes(counter?: string): number {
    return this.#queue.writes(counter);
  }

  /**
   * Queues `request`, holding `retain`'s retain until it settles; the promise settles with the
   * server's answer, the refusal as a TallyError, or `signal.reason`. Throws at once (and changes
   * nothing) when the bound is reached.
   */
  make(
    request: CallRequest,
    retain: () => () => void,
    overHttp: () => Promise<unknown>,
  ): Promise<unknown> {
    const { procedure, body, key, signal } = request;
    const write = key !== undefined;
    const bound = this.#maxQueued;
    if (write && this.#queue.writes() >= bound) {
      throw new TallyConnectionError(
        this.#host.url(),
        `the write queue is full: ${bound} writes are waiting to be sent (maxQueuedWrites is ${bound}); this write was not made`,
      );
    }
    // Reads are bounded too, by every call waiting, so that no queue here grows without limit.
    if (!write && this.#queue.size >= bound) {
      throw new TallyConnectionError(
        this.#host.url(),
        `the call queue is full: ${bound} calls are waiting to be sent (maxQueuedWrites is ${bound}); this read was not sent`,
      );
    }
    return new Promise<unknown>((resolve, reject) => {
      const release = retain();
      const onAbort = () => {
        if (!this.#queue.abandon(call)) return;
        call.finish();
        this.#host.changed();
        reject(signal?.reason);
        // What it held back may go now; a retry timer it needed is no longer needed.
        this.#pump();
      };
      const call: SocketCall = {
        procedure,
        body,
        key,
        counter: write ? (body.name ?? null) : null,
        barrier: procedure === "setValue" || procedure === "reset",
        id: null,
        notBefore: 0,
        refusals: 0,
        abandoned: false,
        sent: false,
        resolve,
        reject,
        overHttp,
        finish: () => {
          signal?.removeEventListener("abort", onAbort);
          release();
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.add(call);
      this.#host.changed();
      this.#pump();
    });
  }

  /** The socket may carry calls now: send what may go. */
  open(): void {
    this.#open = true;
    this.#pump();
  }

  /** The socket dropped: the calls on their way have an unknown fate and wait for the next one. */
  close(): void {
    this.#open = false;
    this.#queue.unsend();
  }

  /** The `result` of command `id`, if it was a call of ours. */
  answered(id: number, result: unknown): void {
    const call = this.#queue.sentAs(id);
    if (call !== undefined) this.#settle(call, () => call.resolve(result));
  }

  /** An `error` reply; false if it was not to a call of ours. */
  refused(frame: ErrorFrame): boolean {
    const call = frame.id === undefined ? undefined : this.#queue.sentAs(frame.id);
    if (call === undefined) return false;
    if (RETRIED_CODES.has(frame.code) && !call.abandoned) {
      // Its fate is unknown or it may work later: the same call, with the same key, later.
      call.id = null;
      call.notBefore = Date.now() + (frame.retryAfterMs ?? this.#backoff.delay(call.refusals));
      call.refusals += 1;
      this.#pump();
    } else {
      this.#settle(call, () => call.reject(refusalError(frame)));
    }
    return true;
  }

  /**
   * The connection stopped for good: every call goes over HTTP instead, which answers what the
   * server thinks of it now (the real refusal, or success), in the order the socket would have
   * kept. `track` counts a write's HTTP answer in `pendingWrites` until it settles.
   */
  handOver(track: (counter: string, answer: Promise<unknown>) => Promise<unknown>): void {
    this.stopTimer();
    this.#open = false;
    const calls = this.#queue.drain();
    for (const call of calls) call.finish();
    const answers = inWriteOrder(calls, (call) => call.overHttp());
    calls.forEach((call, at) => {
      const answer = answers[at] as Promise<unknown>;
      const tracked = call.counter === null ? answer : track(call.counter, answer);
      tracked.then(call.resolve, call.reject);
    });
    this.#host.changed();
  }

  /**
   * The credential was reset (signed in or out), and the socket with it: a write that was sent
   * has an unknown fate, and an idempotency key belongs to one principal, so sent again as the
   * new one it could count twice. It is rejected instead, naming its key; a write never sent
   * goes as whoever is signed in when it is sent, as it would over HTTP.
   */
  credentialChanged(): void {
    const undecided = this.#queue.takeOut(
      (call) => call.sent && call.key !== undefined && !call.abandoned,
    );
    for (const call of undecided) {
      const key = call.key as string;
      call.finish();
      call.reject(
        new TallyConnectionError(
          this.#host.url(),
          `the credential changed before this write was answered, so it is not sent again as the new principal; ${undecidedNote(key)} as the principal that made it`,
          { idempotencyKey: key },
        ),
      );
    }
    if (undecided.length > 0) this.#host.changed();
  }

  /** Disarms the retry wake-up (nothing is left to send). */
  stopTimer(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Sends the calls that may go now (see CallQueue), and wakes up for those that wait. */
  #pump(): void {
    this.stopTimer();
    const now = Date.now();
    if (this.#open) {
      for (const call of this.#queue.ready(now, MAX_CALLS_IN_FLIGHT)) {
        const id = this.#host.send({
          type: "call",
          procedure: `counter.${call.procedure}`,
          ...call.body,
          ...(call.key === undefined ? {} : { idempotencyKey: call.key }),
        });
        if (id === null) break;
        call.id = id;
        call.sent = true;
      }
    }
    const next = this.#queue.nextRetryAt(now);
    if (next !== null) this.#timer = setTimeout(() => this.#pump(), next - now);
  }

  #settle(call: SocketCall, outcome: () => void): void {
    if (!this.#queue.remove(call)) return;
    // An abandoned call was settled by its abort; its answer only frees its place.
    if (!call.abandoned) {
      call.finish();
      this.#host.changed();
      outcome();
    }
    this.#pump();
  }
}

/** A call's refusal as the TallyError its RPC would have thrown. */
function refusalError(frame: ErrorFrame): TallyError {
  const known = (ERROR_CODES as Record<string, { status: number; temporary: boolean }>)[frame.code];
  return new TallyError(
    known?.status ?? 0,
    frame.code,
    frame.message,
    frame.temporary ?? known?.temporary ?? false,
    frame.retryAfterMs ?? null,
    null,
    frame.currentVersion ?? null,
    { min: frame.min, max: frame.max },
  );
}
