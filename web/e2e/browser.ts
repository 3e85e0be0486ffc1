// Debian's Chromium for the browser tests, with flags for a sandboxed CI machine without a
// network beyond loopback, and what the page tests share: opening the page on some counters
// (collecting its console errors), reading a card, and a counter's whole history over RPC.
import { chromium, type Browser, type BrowserContextOptions, type Page } from "playwright-core";
import { expect } from "vitest";
import { TallyClient, type Entry } from "../packages/client/src/index.js";
import { CHROMIUM } from "../scripts/ensure-chromium.js";

/** How long the tests wait for the page to show something, and how often they look. */
export const WAIT = { timeout: 20_000, interval: 50 };

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** What `openCounters` may be told besides the counters. */
export interface OpenOptions {
  /** The browser context's options (a viewport, say). */
  context?: BrowserContextOptions;
  /** Called (and awaited) with the page before it loads, to listen from its very first request. */
  beforeLoad?: (page: Page) => unknown;
}

/**
 * A new page (its own browser context, like another person) of the server at `baseUrl` showing
 * `names`, once every card is connected; its console errors and uncaught exceptions are pushed
 * to `problems`.
 */
export async function openCounters(
  browser: Browser,
  baseUrl: string,
  names: string | string[],
  problems: string[],
  options: OpenOptions = {},
): Promise<Page> {
  const counters = typeof names === "string" ? [names] : names;
  const context = await browser.newContext(options.context);
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  await options.beforeLoad?.(page);
  const query = counters.map((name) => `counter=${encodeURIComponent(name)}`).join("&");
  await page.goto(`${baseUrl}/${query ? `?${query}` : ""}`);
  for (const name of counters) await expect.poll(() => status(page, name), WAIT).toBe("Connected");
  return page;
}

/** The card of counter `name` on the page. */
export function card(page: Page, name: string) {
  return page.locator(`article[data-counter="${name}"]`);
}

/** What the card of `name` says of its connection. */
export function status(page: Page, name: string): Promise<string | null> {
  return card(page, name).getByTestId("connection-status").textContent();
}

/** The value the card of `name` shows. */
export function value(page: Page, name: string): Promise<string | null> {
  return card(page, name).getByTestId("counter-value").getAttribute("data-value");
}

/** Clicks the card's − or + button. */
export function press(page: Page, name: string, button: "Increment" | "Decrement"): Promise<void> {
  return card(page, name).getByRole("button", { name: button }).click();
}

/** Closes each page's browser context. */
export async function closeAll(...pages: Page[]): Promise<void> {
  for (const page of pages) await page.context().close();
}

/** Every history entry of `name`, newest first, read over RPC from the server at `baseUrl`. */
export async function fullHistory(baseUrl: string, name: string): Promise<Entry[]> {
  const client = new TallyClient({ baseUrl });
  const entries: Entry[] = [];
  let before: number | undefined;
  do {
    const page = await client.getHistory(name, { limit: 1000, before });
    entries.push(...page.entries);
    before = page.next;
  } while (before !== undefined);
  return entries;
}
