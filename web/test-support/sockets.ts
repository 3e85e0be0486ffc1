// What the tests count of a client's sockets: the WebSockets it made (Node's `ws`, wrapped), and
// what the server says it holds open (its Prometheus `/metrics` gauges).
import WebSocket from "ws";

/** `ws` as a client's `WebSocket` option, counting the sockets made through it. */
export class SocketCount {
  /** WebSockets made so far. */
  made = 0;
  /** The constructor to pass as `TallyClientOptions.WebSocket`. */
  readonly WebSocket: typeof globalThis.WebSocket;

  constructor() {
    const counted = () => {
      this.made += 1;
    };
    class CountedWebSocket extends WebSocket {
      constructor(url: string) {
        super(url);
        counted();
      }
    }
    this.WebSocket = CountedWebSocket as unknown as typeof globalThis.WebSocket;
  }
}

/**
 * The server's gauge or counter `name` (such as `tally_sessions_open`) now; NaN when the server
 * has no such metric, so that a test can never pass on a metric that is missing.
 */
export async function readMetric(serverUrl: string, name: string): Promise<number> {
  const response = await fetch(`${serverUrl}/metrics`);
  if (!response.ok) throw new Error(`GET /metrics answered ${response.status}`);
  const line = new RegExp(`^${name} (\\S+)$`, "m").exec(await response.text());
  return line?.[1] === undefined ? Number.NaN : Number(line[1]);
}
