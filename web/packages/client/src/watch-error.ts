/**
 * Why a connection (or one watch on it) ended or could not be made, in words and as codes.
 */

import { CloseCode, type ErrorCode } from "./protocol.js";

/** Why the last connection, or one watch on it, ended or could not be made. */
export class TallyWatchError extends Error {
  override readonly name = "TallyWatchError";
  /** The WebSocket close code, or null when the socket could not even be created. */
  readonly closeCode: number | null;
  /** True when the connection will try again by itself. */
  readonly willRetry: boolean;
  /**
   * The refusal as an error code: for the access-control closes `unauthenticated` (4501: a new
   * credential is needed), `token_expired` (4502, when `getToken` had no fresh token) and
   * `forbidden` (4503); for a subscribe the server refused, or a subscription it ended, the
   * server's code (`forbidden`, `unauthenticated`, `too_many_subscriptions`, …); null otherwise.
   */
  readonly code: ErrorCode | null;

  constructor(
    message: string,
    closeCode: number | null,
    willRetry: boolean,
    options: { code?: ErrorCode | null; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.closeCode = closeCode;
    this.willRetry = willRetry;
    this.code = options.code ?? authCode(closeCode);
  }
}

/** The error code of an access-control close, or null. */
function authCode(closeCode: number | null): ErrorCode | null {
  switch (closeCode) {
    case CloseCode.UNAUTHENTICATED:
      return "unauthenticated";
    case CloseCode.TOKEN_EXPIRED:
      return "token_expired";
    case CloseCode.FORBIDDEN:
      return "forbidden";
    default:
      return null;
  }
}

/** A close code and reason in words, for people. */
export function describeClose(code: number, reason: string): string {
  const why = reason ? `: ${reason}` : "";
  switch (code) {
    case CloseCode.ABNORMAL:
      return "the connection to the server was lost";
    case CloseCode.SERVICE_RESTART:
      return `the server is restarting${why}`;
    case CloseCode.SLOW_CONSUMER:
      return `this client fell behind the updates${why}`;
    case CloseCode.PING_TIMEOUT:
      return `the server heard nothing from this client${why}`;
    case CloseCode.POLICY_VIOLATION:
      return `the server closed the connection: too many messages${why}`;
    case CloseCode.MESSAGE_TOO_BIG:
      return `the server closed the connection: message too big${why}`;
    case CloseCode.PROTOCOL_ERROR:
      return `the server closed the connection: this client broke the WebSocket protocol${why}`;
    case CloseCode.INVALID_PAYLOAD:
      return `the server closed the connection: a text message was not valid UTF-8${why}`;
    case CloseCode.INTERNAL_ERROR:
      return `the server could not serve this counter${why}`;
    case CloseCode.UNAUTHENTICATED:
      return `the server needs a valid token to watch this counter${why}`;
    case CloseCode.TOKEN_EXPIRED:
      return `the token expired${why}`;
    case CloseCode.FORBIDDEN:
      return `this token may not watch this counter${why}`;
    case CloseCode.COUNTER_DELETED:
      return `the counter was deleted${why}`;
    default:
      return `the connection closed with code ${code}${why}`;
  }
}
