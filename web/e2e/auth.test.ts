// The page in Chromium against a server that requires tokens (`--jwt-secret-file`): a `#token=`
// link (kept in sessionStorage, gone from the address), a read-only token (controls disabled and
// saying why, no request refused), a writer token (a click counts), no token (the page asks for
// one and a token typed in works), and a token that expires (the page says to sign in again).
import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Browser, Page, Response } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TallyClient } from "../packages/client/src/index.js";
import { TallyServer, tempDir, type JwtServer } from "../test-support/server.js";
import type { TestClaims } from "../test-support/tokens.js";
import { card, launchChromium, status, value } from "./browser.js";

const ARTIFACTS = fileURLToPath(new URL("../test-results/", import.meta.url));
const WAIT = { timeout: 20_000, interval: 50 };

const dir = tempDir();
let jwt: JwtServer;
let browser: Browser;
const problems: string[] = [];

beforeAll(async () => {
  jwt = await TallyServer.startWithJwt(dir.path, {
    args: ["--jwt-leeway", "0s", "--auth-timeout", "2s"],
  });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await jwt?.server.stop();
  dir.remove();
});

function admin(): TallyClient {
  const token = jwt.token({ sub: "root", grants: ["*=admin"] });
  return new TallyClient({ baseUrl: jwt.server.url, getToken: () => token });
}

/**
 * A page in a fresh context (its own sessionStorage), opened at `path`, and its refusals;
 * `beforeLoad` may listen to the page from its first request on.
 */
async function open(
  path: string,
  beforeLoad?: (page: Page) => void,
): Promise<{ page: Page; refused: string[] }> {
  const context = await browser.newContext();
  const page = await context.newPage();
  const refused: string[] = [];
  page.on("response", (response: Response) => {
    if (response.status() >= 400) refused.push(`${response.status()} ${response.url()}`);
  });
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  beforeLoad?.(page);
  await page.goto(`${jwt.server.url}${path}`);
  return { page, refused };
}

/** `/?counter=NAME#token=…` for a token with `claims`. */
function link(name: string, claims: TestClaims): string {
  return `/?counter=${encodeURIComponent(name)}#token=${jwt.token(claims)}`;
}

describe("the page with tokens", () => {
  it("takes a #token= link into sessionStorage and out of the address", async () => {
    const claims = { sub: "linked", grants: ["link:*=admin"] };
    const { page, refused } = await open(link("link:a", claims));
    await expect.poll(() => status(page, "link:a"), WAIT).toBe("Connected");
    const url = new URL(page.url());
    expect(url.hash).toBe("");
    expect(url.searchParams.getAll("counter")).toEqual(["link:a"]);
    const stored = await page.evaluate(() => sessionStorage.getItem("tally.token"));
    expect(stored?.split(".")).toHaveLength(3);
    expect(await page.getByTestId("signed-in-as").textContent()).toBe("Signed in as linked");

    // A reload keeps the token (this tab's sessionStorage), with nothing in the address.
    await page.reload();
    await expect.poll(() => status(page, "link:a"), WAIT).toBe("Connected");
    expect(new URL(page.url()).hash).toBe("");
    expect(refused).toEqual([]);
    await page.context().close();
  });

  it("shows a read-only card for a token that may only read: disabled, saying why", async () => {
    await admin().setValue("ro:a", 41);
    const { page, refused } = await open(link("ro:a", { sub: "reader", grants: ["ro:*=read"] }));
    await expect.poll(() => status(page, "ro:a"), WAIT).toBe("Connected");
    await expect.poll(() => value(page, "ro:a"), WAIT).toBe("41");

    const ro = card(page, "ro:a");
    await expect
      .poll(() => ro.getByTestId("read-only-note").textContent(), WAIT)
      .toBe("Read-only: your token may not change ro:a.");
    for (const name of ["Increment", "Decrement", "Set value", "Reset"]) {
      const button = ro.getByRole("button", { name, exact: true });
      expect(await button.isDisabled()).toBe(true);
      expect(await button.getAttribute("title")).toMatch(/^Your token may not .* ro:a$/);
      expect(await button.getAttribute("aria-describedby")).toBeTruthy();
    }
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: `${ARTIFACTS}page-read-only.png`, fullPage: true });
    expect(await ro.getByLabel("Amount").isDisabled()).toBe(true);
    expect(await ro.getByLabel("New value").isDisabled()).toBe(true);
    // A click on a disabled button sends nothing.
    await ro.getByRole("button", { name: "Increment" }).click({ force: true });

    // Still live: a change made elsewhere shows up.
    await admin().increment("ro:a");
    await expect.poll(() => value(page, "ro:a"), WAIT).toBe("42");
    expect(await admin().getValue("ro:a")).toEqual({ value: 42, version: 2 });
    expect(refused).toEqual([]);
    await page.context().close();
  });

  it("lets a writer token change the counter", async () => {
    const claims = { sub: "writer", grants: ["rw:*=read,increment,decrement"] };
    const { page, refused } = await open(link("rw:a", claims));
    await expect.poll(() => status(page, "rw:a"), WAIT).toBe("Connected");
    const rw = card(page, "rw:a");
    await rw.getByRole("button", { name: "Increment" }).click();
    await rw.getByRole("button", { name: "Increment" }).click();
    await rw.getByRole("button", { name: "Decrement" }).click();
    await expect.poll(() => value(page, "rw:a"), WAIT).toBe("1");
    // The page shows its clicks at once, before the server answers them.
    await expect.poll(() => admin().getValue("rw:a"), WAIT).toEqual({ value: 1, version: 3 });
    // What it may not do is disabled, and it is not read-only.
    expect(await rw.getByRole("button", { name: "Reset" }).isDisabled()).toBe(true);
    expect(await rw.getByTestId("read-only-note").count()).toBe(0);
    expect(refused).toEqual([]);
    await page.context().close();
  });

  it("asks for a token when the server needs one, and works with the token given", async () => {
    const { page } = await open("/?counter=ask:a");
    const signIn = page.getByRole("alert").filter({ hasText: "This server needs a token" });
    await expect.poll(() => signIn.count(), WAIT).toBe(1);
    await expect
      .poll(() => card(page, "ask:a").getByRole("alert").first().textContent(), WAIT)
      .toBe("Sign in with a token to see this counter.");

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: `${ARTIFACTS}page-sign-in.png`, fullPage: true });
    await page
      .getByLabel("Token", { exact: true })
      .fill(jwt.token({ sub: "typed", grants: ["ask:*=admin"] }));
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect.poll(() => status(page, "ask:a"), WAIT).toBe("Connected");
    expect(await signIn.count()).toBe(0);
    await card(page, "ask:a").getByRole("button", { name: "Increment" }).click();
    await expect.poll(() => value(page, "ask:a"), WAIT).toBe("1");
    await expect.poll(() => admin().getValue("ask:a"), WAIT).toEqual({ value: 1, version: 1 });
    // The history of an admin says who made each change.
    await expect
      .poll(() => card(page, "ask:a").getByTestId("history-by").first().textContent(), WAIT)
      .toContain("typed");
    await page.context().close();
  });

  it("says the session expired when the token does, and signs in again", async () => {
    const claims = { sub: "brief", grants: ["exp:*=admin"], ttlSeconds: 3 };
    const { page } = await open(link("exp:a", claims));
    await expect.poll(() => status(page, "exp:a"), WAIT).toBe("Connected");
    const expired = page.getByRole("alert").filter({ hasText: "Session expired — sign in again" });
    await expect.poll(() => expired.count(), WAIT).toBe(1);
    expect(await status(page, "exp:a")).toBe("Disconnected");

    await page
      .getByLabel("Token", { exact: true })
      .fill(jwt.token({ sub: "brief", grants: ["exp:*=admin"] }));
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect.poll(() => status(page, "exp:a"), WAIT).toBe("Connected");
    expect(await expired.count()).toBe(0);
    await card(page, "exp:a").getByRole("button", { name: "Increment" }).click();
    await expect.poll(() => value(page, "exp:a"), WAIT).toBe("1");
    await page.context().close();
  });

  it("renews a short-lived token on the open socket: the card keeps its state and stays live", async () => {
    const claims = { sub: "renewed", grants: ["renew:*=admin"], ttlSeconds: 4 };
    const sockets: string[] = [];
    const { page, refused } = await open(link("renew:a", claims), (p) =>
      p.on("websocket", (socket) => sockets.push(socket.url())),
    );
    await expect.poll(() => status(page, "renew:a"), WAIT).toBe("Connected");
    await card(page, "renew:a").getByRole("button", { name: "Increment" }).click();
    await expect.poll(() => value(page, "renew:a"), WAIT).toBe("1");
    await page.evaluate(() => {
      (window as unknown as { notReloaded: boolean }).notReloaded = true;
    });

    // The page's getToken reads sessionStorage: a sign-in service would keep a fresh token
    // there. Three lifetimes of the first token pass, each token replaced within its life.
    const expired = page.getByRole("alert").filter({ hasText: "Session expired" });
    for (let second = 0; second < 12; second++) {
      const fresh = jwt.token(claims);
      await page.evaluate((token) => sessionStorage.setItem("tally.token", token), fresh);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(await status(page, "renew:a")).toBe("Connected");
      expect(await expired.count()).toBe(0);
    }

    expect(await value(page, "renew:a")).toBe("1");
    await admin().increment("renew:a", 10);
    await expect.poll(() => value(page, "renew:a"), WAIT).toBe("11");
    await card(page, "renew:a").getByRole("button", { name: "Increment" }).click();
    await expect.poll(() => value(page, "renew:a"), WAIT).toBe("12");
    await expect.poll(() => admin().getValue("renew:a"), WAIT).toEqual({ value: 12, version: 3 });
    // Renewed in band: the same socket all along, and the same page.
    expect(sockets.map((url) => new URL(url).pathname)).toEqual(["/ws"]);
    expect(
      await page.evaluate(() => (window as unknown as { notReloaded?: boolean }).notReloaded),
    ).toBe(true);
    expect(refused).toEqual([]);
    await page.context().close();
  });

  it("ran without console errors, uncaught exceptions or CSP violations", () => {
    // Expected: the 401s of the page that had no token yet.
    const expected = [/the server responded with a status of 401/];
    const unexpected = problems.filter((p) => !expected.some((pattern) => pattern.test(p)));
    expect(unexpected).toEqual([]);
  });
});
