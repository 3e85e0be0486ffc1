// Opening the page on a set of counters, as a person would: a fresh browser context (cookies,
// storage and renderer of its own) per tab.
import type { Browser, Page } from "playwright-core";

/** How long a page may take to show every card connected. */
const OPEN_TIMEOUT_MS = 60_000;

/**
 * A new tab, in a context of its own, showing the cards of `names`, all connected; `beforeLoad`
 * sees the tab before it loads anything.
 */
export async function openCards(
  browser: Browser,
  serverUrl: string,
  names: readonly string[],
  beforeLoad: (page: Page) => unknown = () => {},
): Promise<Page> {
  const context = await browser.newContext();
  const page = await context.newPage();
  await beforeLoad(page);
  const problems: string[] = [];
  page.on("pageerror", (error) => problems.push(error.message));
  const query = names.map((name) => `counter=${encodeURIComponent(name)}`).join("&");
  await page.goto(`${serverUrl}/?${query}`);
  await waitUntilShown(page, names.length).catch((error: unknown) => {
    throw new Error(`the page did not show ${names.length} connected cards: ${problems}`, {
      cause: error,
    });
  });
  return page;
}

/** Waits until the page has `count` cards, each connected and showing a value. */
function waitUntilShown(page: Page, count: number): Promise<unknown> {
  return page.waitForFunction(
    (expected) => {
      const cards = [...document.querySelectorAll("article[data-counter]")];
      return (
        cards.length === expected &&
        cards.every(
          (card) =>
            card.querySelector("[data-testid=connection-status]")?.textContent === "Connected" &&
            (card.querySelector("[data-testid=counter-value]")?.getAttribute("data-value") ??
              "") !== "",
        )
      );
    },
    count,
    { timeout: OPEN_TIMEOUT_MS, polling: 100 },
  );
}

/** The card of counter `name`'s + button. */
export function incrementButton(page: Page, name: string) {
  return page.locator(`article[data-counter="${name}"]`).getByRole("button", { name: "Increment" });
}
