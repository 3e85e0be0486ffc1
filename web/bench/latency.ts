// Scenario 2: from a click in one tab to another tab showing its result. Both tabs stamp with
// `performance.timeOrigin + performance.now()`, which is on one clock for every tab of a browser
// (checked: `clockSkewMs`): the writer when the click reaches the page (a capture listener, before
// React's), the reader when its card's value element changes (a MutationObserver, right after
// React commits the new value, so at most one frame before it is painted). The reader also stamps
// each socket message when it arrives, which splits the time into the network's and the page's
// (the server's, the browser's network service and the socket) and the page's (the client, React,
// TanStack Query). Clicks are made one at
// a time: the next one only after the reader shows the last, and `gapMs` later, like a person
// clicking, rather than a burst that would measure queueing.
import type { Browser, Page } from "playwright-core";
import { incrementButton, openCards } from "./page.js";
import { quantile } from "./stats.js";

/** How long the reader may take to show one click before the run is given up. */
const CLICK_TIMEOUT_MS = 20_000;

export interface LatencyFigures {
  /** Click → shown in the other tab, in ms, in click order. */
  samplesMs: number[];
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Click → the update's socket message reaching the reader's page, in ms. */
  arrivalP50Ms: number;
  arrivalP99Ms: number;
  /**
   * Clicks whose value no socket message carried: the server merged them into a later update
   * (maxRate conflation). Clicks spaced as here should be 0; more means the timings include the
   * conflation's wait.
   */
  valuesSkipped: number;
  /** The reader's clock minus the writer's, in ms: how far apart the two tabs' stamps can be. */
  clockSkewMs: number;
  /** HTTP requests each tab made during the clicks (writes, refetches), by path. */
  writerRequests: Record<string, number>;
  readerRequests: Record<string, number>;
}

/** What the tabs record, on their `window`. */
interface Stamps {
  /** Writer: when each click on the card reached the page. */
  tallyBenchClicks?: number[];
  /** Reader: when each value was first shown, by value. */
  tallyBenchShown?: Record<string, number>;
  /** Reader: when a socket message first carried each value, by value. */
  tallyBenchArrived?: Record<string, number>;
}

/** Clicks + on `name` `clicks` times in one tab and times each one's arrival in another. */
export async function measureLatency(
  browser: Browser,
  serverUrl: string,
  name: string,
  clicks: number,
  gapMs: number,
): Promise<LatencyFigures> {
  const writer = await openCards(browser, serverUrl, [name]);
  const reader = await openCards(browser, serverUrl, [name], (page) =>
    page.addInitScript(recordSocketValues),
  );
  const clockSkewMs = (await clockOffset(reader)) - (await clockOffset(writer));
  const start = Number(await reader.evaluate(recordShownValues, name));
  await writer.evaluate(recordClicks, name);
  const writerRequests = countRequests(writer);
  const readerRequests = countRequests(reader);

  const button = incrementButton(writer, name);
  for (let click = 1; click <= clicks; click++) {
    await button.click();
    await reader.waitForFunction(
      (value) => (window as Stamps).tallyBenchShown?.[value] !== undefined,
      String(start + click),
      { timeout: CLICK_TIMEOUT_MS },
    );
    await writer.waitForTimeout(gapMs);
  }

  const sent = await writer.evaluate(() => (window as Stamps).tallyBenchClicks ?? []);
  const shown = await reader.evaluate(() => (window as Stamps).tallyBenchShown ?? {});
  const arrived = await reader.evaluate(() => (window as Stamps).tallyBenchArrived ?? {});
  if (sent.length !== clicks) throw new Error(`the writer saw ${sent.length} of ${clicks} clicks`);
  // A value no message carried (a conflated push skips versions) counts as arriving when shown.
  const after = (stamps: Record<string, number>) =>
    sent.map((at, index) => {
      const value = String(start + index + 1);
      return (stamps[value] ?? (shown[value] as number)) - at;
    });
  const samplesMs = after(shown);
  const arrivalsMs = after(arrived);
  const valuesSkipped = sent.filter((_, index) => !(String(start + index + 1) in arrived)).length;
  const figures = {
    samplesMs,
    p50Ms: quantile(samplesMs, 0.5),
    p99Ms: quantile(samplesMs, 0.99),
    maxMs: Math.max(...samplesMs),
    arrivalP50Ms: quantile(arrivalsMs, 0.5),
    arrivalP99Ms: quantile(arrivalsMs, 0.99),
    valuesSkipped,
    clockSkewMs,
    writerRequests: writerRequests(),
    readerRequests: readerRequests(),
  };
  await writer.context().close();
  await reader.context().close();
  return figures;
}

/**
 * Counts the tab's HTTP requests from now, by path (`/rpc/counter.getHistory`, …); the function
 * returned gives the counts so far.
 */
function countRequests(page: Page): () => Record<string, number> {
  const counts: Record<string, number> = {};
  page.on("request", (request) => {
    if (request.resourceType() === "websocket") return;
    const path = new URL(request.url()).pathname;
    counts[path] = (counts[path] ?? 0) + 1;
  });
  return () => ({ ...counts });
}

/**
 * In the reader: stamps each value the card of `name` shows, the first time it shows it, and
 * returns the value shown now. The card's whole subtree is observed, so a value element React
 * replaces is still seen.
 */
function recordShownValues(name: string): string {
  const card = document.querySelector(`article[data-counter="${CSS.escape(name)}"]`);
  if (card === null) throw new Error(`no card of ${name}`);
  const shownValue = () =>
    card.querySelector("[data-testid=counter-value]")?.getAttribute("data-value") ?? "";
  const shown: Record<string, number> = {};
  (window as Stamps).tallyBenchShown = shown;
  new MutationObserver(() => {
    const value = shownValue();
    if (value !== "" && shown[value] === undefined) {
      shown[value] = performance.timeOrigin + performance.now();
    }
  }).observe(card, {
    subtree: true,
    childList: true,
    attributes: true,
    attributeFilter: ["data-value"],
  });
  return shownValue();
}

/**
 * In the reader, before the page's scripts run: stamps each socket message carrying a counter
 * value (`value` at the top level: snapshots and updates of both protocols), the first time a
 * value arrives. The stamp is taken in a listener added when the socket is made, so before any
 * of the client's own.
 */
function recordSocketValues(): void {
  const arrived: Record<string, number> = {};
  (window as Stamps).tallyBenchArrived = arrived;
  const PageWebSocket = window.WebSocket;
  window.WebSocket = class extends PageWebSocket {
    constructor(url: string | URL, protocols?: string | string[]) {
      super(url, protocols);
      this.addEventListener("message", (event: MessageEvent) => {
        const at = performance.timeOrigin + performance.now();
        if (typeof event.data !== "string") return;
        const value: unknown = (JSON.parse(event.data) as { value?: unknown }).value;
        if (typeof value === "number" && arrived[String(value)] === undefined) {
          arrived[String(value)] = at;
        }
      });
    }
  };
}

/** In the writer: stamps each click on a button of the card of `name`. */
function recordClicks(name: string): void {
  const card = document.querySelector(`article[data-counter="${CSS.escape(name)}"]`);
  const clicks: number[] = [];
  (window as Stamps).tallyBenchClicks = clicks;
  window.addEventListener(
    "click",
    (event) => {
      const target = event.target instanceof Element ? event.target : null;
      if (target?.closest("button") && card?.contains(target)) {
        clicks.push(performance.timeOrigin + performance.now());
      }
    },
    { capture: true },
  );
}

/**
 * The tab's `performance.timeOrigin + performance.now()` minus `Date.now()`, in ms, averaged
 * over samples a millisecond or so apart (so `Date.now()`'s truncation to whole ms averages out
 * the same way in every tab). Two tabs' offsets differ by how far apart their stamps are.
 */
function clockOffset(page: Page): Promise<number> {
  return page.evaluate(async () => {
    const samples = 200;
    let sum = 0;
    for (let i = 0; i < samples; i++) {
      sum += performance.timeOrigin + performance.now() - Date.now();
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    return sum / samples;
  });
}
