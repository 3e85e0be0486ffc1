// Scenario 1: what one tab with many open cards costs. The tab opens the cards, waits until the
// page is quiet, collects garbage, and reads Chromium's own counters (CDP Performance.getMetrics)
// beside the WebSockets it opened, the browser's processes' memory (before the tab, and with it)
// and the server's gauges.
import type { Browser } from "playwright-core";
import { openCards } from "./page.js";
import { browserPssBytes } from "./processes.js";
import { readGauges, type Gauge } from "./server-metrics.js";

/** What the page is left to do after every card shows its value, before it is measured. */
const SETTLE_MS = 2_000;

export interface MemoryFigures {
  /** WebSockets the tab opened while loading the cards. */
  socketsOpened: number;
  /** Of those, the ones still open when measured. */
  socketsOpen: number;
  /** Chromium's figures for the tab, after a garbage collection. */
  jsHeapUsedBytes: number;
  jsHeapTotalBytes: number;
  domNodes: number;
  jsEventListeners: number;
  /** The browser's processes before the tab was opened, and with it open. */
  browserPssBeforeBytes: number;
  browserPssWithTabBytes: number;
  /** The server's gauges with the tab open. */
  server: Record<Gauge, number>;
}

/** Opens one tab on `names` and measures it. */
export async function measureMemory(
  browser: Browser,
  serverUrl: string,
  names: readonly string[],
): Promise<MemoryFigures> {
  const browserPssBeforeBytes = await browserPssBytes(browser);
  let socketsOpened = 0;
  let socketsClosed = 0;
  // Watched from before the first request: a socket opened while loading counts even if it is
  // closed again before the cards show (as a React StrictMode double mount would).
  const page = await openCards(browser, serverUrl, names, (page) =>
    page.on("websocket", (socket) => {
      socketsOpened += 1;
      socket.on("close", () => (socketsClosed += 1));
    }),
  );
  await page.waitForLoadState("networkidle");
  await page.waitForTimeout(SETTLE_MS);

  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Performance.enable");
  await cdp.send("HeapProfiler.collectGarbage");
  const { metrics } = await cdp.send("Performance.getMetrics");
  const metric = (name: string) => metrics.find((m) => m.name === name)?.value ?? Number.NaN;
  const server = await readGauges(serverUrl);
  const browserPssWithTabBytes = await browserPssBytes(browser);
  await page.context().close();
  return {
    socketsOpened,
    socketsOpen: socketsOpened - socketsClosed,
    jsHeapUsedBytes: metric("JSHeapUsedSize"),
    jsHeapTotalBytes: metric("JSHeapTotalSize"),
    domNodes: metric("Nodes"),
    jsEventListeners: metric("JSEventListeners"),
    browserPssBeforeBytes,
    browserPssWithTabBytes,
    server,
  };
}
