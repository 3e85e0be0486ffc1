// The admin page (`/admin`) in Chromium against a real `tally serve` that requires tokens: an
// admin token sees the server live and finds one counter among 1 000 by prefix; a script's
// writes move that counter's value and sparkline; its detail shows the history chart and who
// made each change; set, reset and delete ask for a confirmation (Cancel changes nothing); a token
// that is not an admin's is refused and shown nothing of the server. No console error (a CSP
// violation is one) may appear.
import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TallyClient } from "../packages/client/src/index.js";
import { TallyServer, tempDir, type JwtServer } from "../test-support/server.js";
import type { TestClaims } from "../test-support/tokens.js";
import { launchChromium, WAIT } from "./browser.js";

const ARTIFACTS = fileURLToPath(new URL("../test-results/", import.meta.url));
const COUNTERS = 1_000;
const TARGET = "adm:0777";

const dir = tempDir();
let jwt: JwtServer;
let browser: Browser;
const problems: string[] = [];

beforeAll(async () => {
  jwt = await TallyServer.startWithJwt(dir.path);
  browser = await launchChromium();
  mkdirSync(ARTIFACTS, { recursive: true });
  // 1 000 counters, written 50 at a time.
  const client = clientFor({ sub: "root", grants: ["*=admin"] });
  for (let start = 0; start < COUNTERS; start += 50) {
    const names = Array.from({ length: 50 }, (_, i) => `adm:${String(start + i).padStart(4, "0")}`);
    await Promise.all(names.map((name) => client.increment(name, 1)));
  }
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await jwt?.server.stop();
  dir.remove();
});

function clientFor(claims: TestClaims): TallyClient {
  const token = jwt.token(claims);
  return new TallyClient({ baseUrl: jwt.server.url, getToken: () => token });
}

/** The admin page in a fresh context, signed in with a token of `claims`. */
async function openAdmin(claims: TestClaims): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  await page.goto(`${jwt.server.url}/admin#token=${jwt.token(claims)}`);
  return page;
}

function row(page: Page, name: string) {
  return page.locator(`tr[data-counter="${name}"]`);
}

/** The samples of the sparkline of `name`'s row. */
async function series(page: Page, name: string): Promise<number[]> {
  const text = await row(page, name).getByTestId("sparkline").getAttribute("data-series");
  return (text ?? "")
    .split(",")
    .filter((s) => s !== "")
    .map(Number);
}

describe("the admin page", () => {
  it("shows the server live and finds, watches and changes one counter among 1 000", async () => {
    const page = await openAdmin({ sub: "root", grants: ["*=admin"] });
    const server = page.getByTestId("server");
    await expect.poll(() => server.getAttribute("data-ready"), WAIT).toBe("true");
    expect(Number(await server.getAttribute("data-connections"))).toBeGreaterThanOrEqual(1);
    await expect.poll(() => page.locator("tbody tr[data-counter]").count(), WAIT).toBe(20);

    // Found by prefix among 1 000: one row.
    await page.getByLabel("Name starts with").fill(TARGET);
    await page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => page.locator("tbody tr[data-counter]").count(), WAIT).toBe(1);
    await expect.poll(() => row(page, TARGET).getAttribute("data-value"), WAIT).toBe("1");
    // The page's own subscription watches it now.
    await expect
      .poll(() => row(page, TARGET).getByTestId("row-watchers").textContent(), WAIT)
      .toBe("1");
    // Written once, in the last minute: the meter says 1 until the script starts.
    expect(new Set(await series(page, TARGET))).toEqual(new Set([1]));

    // A script writes to it for a few seconds: the value and the sparkline move.
    const script = clientFor({ sub: "script", grants: ["adm:*=read,increment"] });
    let writes = 0;
    const writing = (async () => {
      const until = Date.now() + 7_000;
      while (Date.now() < until) {
        await script.increment(TARGET, 1);
        writes += 1;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    })();
    await expect
      .poll(async () => Math.max(...(await series(page, TARGET))), WAIT)
      .toBeGreaterThan(10);
    await expect
      .poll(async () => Number(await server.getAttribute("data-ops-per-second")), WAIT)
      .toBeGreaterThan(0);
    await page.screenshot({ path: `${ARTIFACTS}admin-live.png`, fullPage: true });
    await writing;
    await expect
      .poll(() => row(page, TARGET).getAttribute("data-value"), WAIT)
      .toBe(String(1 + writes));

    // Its detail: the chart of its value, and who made each change.
    await row(page, TARGET).getByRole("button", { name: TARGET }).click();
    const detail = page.getByTestId("detail");
    await expect
      .poll(async () => Number(await detail.getByTestId("chart").getAttribute("data-points")), WAIT)
      .toBeGreaterThan(10);
    const by = await detail.getByTestId("entry-by").allTextContents();
    expect(by).toContain("script");
    await page.screenshot({ path: `${ARTIFACTS}admin-detail.png`, fullPage: true });

    // Reset asks first; Cancel changes nothing.
    const admin = clientFor({ sub: "root", grants: ["*=admin"] });
    const before = await admin.getValue(TARGET);
    await detail.getByRole("button", { name: "Reset…", exact: true }).click();
    const confirm = page.getByTestId("confirm");
    expect(await confirm.textContent()).toContain(`Reset ${TARGET} to 0?`);
    await page.screenshot({ path: `${ARTIFACTS}admin-confirm.png`, fullPage: true });
    await confirm.getByRole("button", { name: "Cancel" }).click();
    expect(await confirm.count()).toBe(0);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await admin.getValue(TARGET)).toEqual(before);
    // Confirmed, it is done, and the row follows.
    await detail.getByRole("button", { name: "Reset…", exact: true }).click();
    await confirm.getByRole("button", { name: "Reset", exact: true }).click();
    await expect.poll(async () => (await admin.getValue(TARGET)).value, WAIT).toBe(0);
    await expect.poll(() => row(page, TARGET).getAttribute("data-value"), WAIT).toBe("0");
    // The page's own change is the newest entry, made by the page's principal.
    await expect
      .poll(() => detail.getByTestId("entry-by").first().textContent(), WAIT)
      .toBe("root");

    // Set: a bad number is refused on the page and sends nothing; a good one asks first.
    const field = detail.getByLabel("Set to");
    await field.fill("twelve");
    await detail.getByRole("button", { name: "Set…", exact: true }).click();
    expect(await detail.getByTestId("detail-message").textContent()).toContain("whole number");
    expect(await confirm.count()).toBe(0);
    await field.fill("42");
    await detail.getByRole("button", { name: "Set…", exact: true }).click();
    await confirm.getByRole("button", { name: "Set", exact: true }).click();
    await expect
      .poll(() => detail.getByTestId("detail-value").getAttribute("data-value"), WAIT)
      .toBe("42");
    expect((await admin.getValue(TARGET)).value).toBe(42);

    // Delete asks first; Cancel deletes nothing. Confirmed, the counter is gone (version 0),
    // its row says so, and its detail forgets its history.
    await detail.getByRole("button", { name: "Delete…", exact: true }).click();
    expect(await confirm.textContent()).toContain(`Delete ${TARGET}?`);
    await page.screenshot({ path: `${ARTIFACTS}admin-delete.png`, fullPage: true });
    await confirm.getByRole("button", { name: "Cancel", exact: true }).click();
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await admin.getValue(TARGET)).toEqual({ value: 42, version: before.version + 2 });
    await detail.getByRole("button", { name: "Delete…", exact: true }).click();
    await confirm.getByRole("button", { name: "Delete", exact: true }).click();
    await expect.poll(async () => (await admin.getValue(TARGET)).version, WAIT).toBe(0);
    await expect.poll(() => row(page, TARGET).getAttribute("data-deleted"), WAIT).toBe("true");
    await expect
      .poll(() => detail.getByTestId("detail-message").textContent(), WAIT)
      .toContain("was deleted");
    expect(await detail.locator("[data-testid=detail-history] tbody tr").count()).toBe(0);
    expect((await admin.list({ prefix: TARGET })).counters).toEqual([]);

    expect(problems).toEqual([]);
    await page.context().close();
  }, 120_000);

  it("refuses a token that is not an admin's and shows nothing of the server", async () => {
    const page = await openAdmin({ sub: "reader", grants: ["adm:*=read,increment"] });
    const refused = page.getByTestId("refused");
    await expect.poll(() => refused.isVisible(), WAIT).toBe(true);
    const text = (await refused.textContent()) ?? "";
    expect(text).toContain("needs an admin token");
    expect(text).toContain("*=admin");
    expect(text).toContain("reader does not have it");
    expect(await page.getByTestId("server").count()).toBe(0);
    expect(await page.getByTestId("counter-table").count()).toBe(0);
    await page.screenshot({ path: `${ARTIFACTS}admin-refused.png`, fullPage: true });
    expect(problems).toEqual([]);
    await page.context().close();
  }, 60_000);
});
