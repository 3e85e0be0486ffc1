// Debian's Chromium for the browser tests, with flags for a sandboxed CI machine without a
// network beyond loopback.
import { chromium, type Browser, type Page } from "playwright-core";
import { CHROMIUM } from "../scripts/ensure-chromium.js";

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
