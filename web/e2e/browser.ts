// Debian's Chromium for the browser tests, with flags for a sandboxed CI machine without a
// network beyond loopback.
import { chromium, type Browser } from "playwright-core";
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
