// Scenario 1: what one tab with many open cards costs. The tab opens the cards, waits until the
// page is quiet, collects garbage, and reads Chromium's own counters (CDP Performance.getMetrics)
// beside the WebSockets it opened, the browser's processes' memory (before the tab, and with it)
// and the server's gauges.
import type { Browser } from "playwright-core";
import { openCards } from "./page.js";
import { browserMemory, type BrowserMemory } from "./processes.js";
import { readGauges, type Gauge } from "./server-metrics.js";

/** What the page is left to do after every card shows its value, before it is measured. */
const SETTLE_MS = 2_000;
/** What a new browser is left to start its helper processes (GPU, network) in. */
const BROWSER_SETTLE_MS = 1_000;

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
  /** The browser's processes with only a blank tab, and with the cards' tab beside it. */
  browserBefore: BrowserMemory;
  browserWithTab: BrowserMemory;
  /** The server's gauges with the tab open. */
  server: Record<Gauge, number>;
}

/** Opens one tab on `names` and measures it. */
export async function measureMemory(
  browser: Browser,
  serverUrl: string,
  names: readonly string[],
): Promise<MemoryFigures> {
  const browserBefore = await blankTabMemory(browser);
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
  const browserWithTab = await browserMemory(browser);
  await page.context().close();
  return {
    socketsOpened,
    socketsOpen: socketsOpened - socketsClosed,
    jsHeapUsedBytes: metric("JSHeapUsedSize"),
    jsHeapTotalBytes: metric("JSHeapTotalSize"),
    domNodes: metric("Nodes"),
    jsEventListeners: metric("JSEventListeners"),
    browserBefore,
    browserWithTab,
    server,
  };
}

/**
 * The browser's memory with one blank tab open (and left open), once its helper processes have
 * started: the reference the cards' tab is measured against.
 */
async function blankTabMemory(browser: Browser): Promise<BrowserMemory> {
  const context = await browser.newContext();
  const blank = await context.newPage();
  await blank.waitForTimeout(BROWSER_SETTLE_MS);
  return browserMemory(browser);
}
