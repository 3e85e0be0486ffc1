// A scripted stand-in for the browser's WebSocket, for the unit tests of the connection and its
// subscriptions: the tests decide when it opens, what arrives and how it closes. Protocol handling
// against a real server is tested in *.server.test.ts.

export class FakeSocket {
  static instances: FakeSocket[] = [];

  static reset(): void {
    FakeSocket.instances = [];
  }

  /** The newest socket. */
  static get last(): FakeSocket {
    const socket = FakeSocket.instances[FakeSocket.instances.length - 1];
    if (socket === undefined) throw new Error("no socket was opened");
    return socket;
  }

  readonly url: string;
  readyState = 0;
  readonly sent: string[] = [];
  closedWith: number | null = null;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(url: string) {
    this.url = url;
    FakeSocket.instances.push(this);
  }

  send(data: string): void {
    this.sent.push(data);
  }

  close(code = 1000): void {
    // Like Node's `ws`: closing a socket that is still connecting emits an error, which throws
    // when nobody listens for it.
    if (this.readyState === 0) {
      if (this.onerror === null) throw new Error("Unhandled 'error' event");
      this.onerror({});
    }
    this.closedWith = code;
    this.readyState = 3;
  }

  /** The connection opens (the `open` event). */
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** The messages the client sent, parsed. */
  get messages(): unknown[] {
    return this.sent.map((text) => JSON.parse(text) as unknown);
  }

  /** The server sends `message` (as JSON). */
  receive(message: unknown): void {
    this.readyState = 1;
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  /** The connection ends with `code` (1006: no close frame). */
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}
