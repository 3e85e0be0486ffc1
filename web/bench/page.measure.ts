// The page's browser benchmark (issue 13, "Measure"): a tab with many open cards (its memory and
// WebSockets, and the server's count of them), and the time from a click in one tab to another
// tab showing it. Each run starts a fresh `tally serve` (TALLY_BIN: measure any build, such as
// the one before a change) and fresh browsers; the table gives every run and the medians.
//
//   TALLY_BIN=../target/release/tally npm run bench:page
//
// Tuning, from the environment: BENCH_RUNS (3), BENCH_CARDS (20), BENCH_CLICKS (200),
// BENCH_GAP_MS (100: pause after each click is shown), BENCH_JSON (a file for every figure).
import { writeFileSync } from "node:fs";
import type { Browser } from "playwright-core";
import { it } from "vitest";
import { launchChromium } from "../e2e/browser.js";
import { TallyClient } from "../packages/client/src/index.js";
import { TallyServer, tallyBinary, tempDir } from "../test-support/server.js";
import { measureLatency, type LatencyFigures } from "./latency.js";
import { loadAverage, stealMeter } from "./machine.js";
import { measureMemory, type MemoryFigures } from "./memory.js";
import { formatTable, type Row } from "./table.js";

const RUNS = setting("BENCH_RUNS", 3);
const CARDS = setting("BENCH_CARDS", 20);
const CLICKS = setting("BENCH_CLICKS", 200);
const GAP_MS = setting("BENCH_GAP_MS", 100);
/** Writes made to each card's counter before the tab opens, so that every card has a history. */
const SEED_WRITES = 5;
/**
 * Writes made to the clicked counter before its tabs open: more than a page shows of its history
 * (50 chart points), as for a counter in use. A shorter history is refetched on each update by
 * design, since an update cannot tell whether it trims the oldest entry (packages/react/src/history.ts).
 */
const LATENCY_SEED_WRITES = 100;
const MIB = 1024 * 1024;
/** The RPC procedures that write. */
const WRITES = ["increment", "decrement", "setValue", "reset"];
/** Chromium's name for its network process, where the sockets' buffers are. */
const NETWORK = "network.mojom.NetworkService";

interface Run {
  memory: MemoryFigures;
  latency: LatencyFigures;
  loadAverage: number;
  stealPercent: number;
}

function setting(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === "") return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`${name} must be a whole number ≥ 0, not ${JSON.stringify(text)}`);
  }
  return value;
}

const ROWS: Row<Run>[] = [
  row("tab: WebSockets opened", (r) => r.memory.socketsOpened),
  row("tab: WebSockets open", (r) => r.memory.socketsOpen),
  row("tab: JS heap used, MiB", (r) => r.memory.jsHeapUsedBytes / MIB, 2),
  row("tab: JS heap total, MiB", (r) => r.memory.jsHeapTotalBytes / MIB, 2),
  row("tab: DOM nodes", (r) => r.memory.domNodes),
  row("tab: JS event listeners", (r) => r.memory.jsEventListeners),
  row("browser: allocated PSS, MiB", (r) => r.memory.browserWithTab.pssBytes / MIB, 1),
  row("browser: allocated PSS for the tab, MiB", (r) => pssGrowth(r.memory) / MIB, 1),
  row("  of which renderers, MiB", (r) => pssGrowth(r.memory, "renderer") / MIB, 1),
  row("  of which network service, MiB", (r) => pssGrowth(r.memory, NETWORK) / MIB, 1),
  row("server: connections_open", (r) => r.memory.server.connections_open),
  row("server: websockets_open", (r) => r.memory.server.websockets_open),
  row("server: sessions_open (v2)", (r) => r.memory.server.sessions_open),
  row("server: watchers (v1)", (r) => r.memory.server.watchers),
  row("server: subscriptions (v2)", (r) => r.memory.server.subscriptions),
  row("click → other tab p50, ms", (r) => r.latency.p50Ms, 1),
  row("click → other tab p99, ms", (r) => r.latency.p99Ms, 1),
  row("click → other tab max, ms", (r) => r.latency.maxMs, 1),
  row("click → other tab's socket p50, ms", (r) => r.latency.arrivalP50Ms, 1),
  row("click → other tab's socket p99, ms", (r) => r.latency.arrivalP99Ms, 1),
  row("clicks: values no socket message carried", (r) => r.latency.valuesSkipped),
  row("clicks: writer's HTTP requests", (r) => total(r.latency.writerRequests)),
  row("  of which writes", (r) => total(r.latency.writerRequests, WRITES)),
  row("clicks: reader's HTTP requests", (r) => total(r.latency.readerRequests)),
  row("  of which getHistory", (r) => total(r.latency.readerRequests, ["getHistory"])),
  row("tabs' clock skew, ms", (r) => r.latency.clockSkewMs, 2),
  row("machine: load average at start", (r) => r.loadAverage, 2),
  row("machine: CPU steal %", (r) => r.stealPercent, 2),
];

/** How much the browser's memory grew when the tab was opened. */
function pssGrowth(memory: MemoryFigures, kind?: string): number {
  const { browserBefore: before, browserWithTab: after } = memory;
  if (kind === undefined) return after.pssBytes - before.pssBytes;
  return (after.pssBytesByKind[kind] ?? 0) - (before.pssBytesByKind[kind] ?? 0);
}

/** The requests counted, or those to the procedures named. */
function total(requests: Record<string, number>, procedures?: readonly string[]): number {
  return Object.entries(requests)
    .filter(([path]) => procedures?.some((p) => path === `/rpc/counter.${p}`) ?? true)
    .reduce((sum, [, count]) => sum + count, 0);
}

function row(label: string, of: (run: Run) => number, decimals = 0): Row<Run> {
  return { label, of, decimals };
}

/** One run: a fresh server and database, the memory tab, then the two latency tabs. */
async function run(): Promise<Run> {
  const startLoad = loadAverage();
  const steal = stealMeter();
  const dir = tempDir();
  const server = await TallyServer.start(`${dir.path}/tally.db`);
  try {
    const names = Array.from({ length: CARDS }, (_, i) => `card-${String(i + 1).padStart(2, "0")}`);
    const client = new TallyClient({ baseUrl: server.url });
    const seed = async (name: string, writes: number) => {
      for (let write = 0; write < writes; write++) await client.increment(name);
    };
    for (const name of names) await seed(name, SEED_WRITES);
    await seed("latency", LATENCY_SEED_WRITES);
    const memory = await inFreshBrowser((browser) => measureMemory(browser, server.url, names));
    const latency = await inFreshBrowser((browser) =>
      measureLatency(browser, server.url, "latency", CLICKS, GAP_MS),
    );
    return { memory, latency, loadAverage: startLoad, stealPercent: steal() };
  } finally {
    await server.stop();
    dir.remove();
  }
}

/** Runs `scenario` in a browser of its own, so no run inherits another's caches or processes. */
async function inFreshBrowser<T>(scenario: (browser: Browser) => Promise<T>): Promise<T> {
  const browser = await launchChromium();
  try {
    return await scenario(browser);
  } finally {
    await browser.close();
  }
}

it("measures the page: memory and sockets of open cards, click to other tab", async () => {
  const binary = tallyBinary();
  const runs: Run[] = [];
  for (let index = 0; index < RUNS; index++) runs.push(await run());
  const title =
    `page benchmark: ${binary} · ${RUNS} runs · ${CARDS} cards · ` +
    `${CLICKS} clicks, ${GAP_MS} ms after each is shown`;
  console.log(`${title}\n${formatTable(ROWS, runs)}`);
  const json = process.env.BENCH_JSON;
  if (json) writeFileSync(json, `${JSON.stringify({ binary, runs }, null, 2)}\n`);
});
