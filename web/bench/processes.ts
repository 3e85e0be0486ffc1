// The memory of the whole browser, beyond a tab's JS heap: a WebSocket's buffers live in the
// renderer's Blink and in the network service, not in JavaScript. Chromium lists its processes
// (CDP SystemInfo.getProcessInfo); each one's proportional set size (PSS: its private pages, plus
// its share of the pages it shares) comes from /proc, so the sum counts shared libraries once.
import { readFileSync } from "node:fs";
import type { Browser } from "playwright-core";

/** The browser's memory: the PSS of all its processes, and by kind of process, in bytes. */
export interface BrowserMemory {
  /**
   * Only the total is meaningful for comparisons: a new process takes a share of the pages the
   * others share, so they shrink as it appears.
   */
  pssBytes: number;
  /** By Chromium's name for the kind (`browser`, `renderer`, `network.mojom.NetworkService`, …). */
  pssBytesByKind: Record<string, number>;
}

/** The browser's memory now. */
export async function browserMemory(browser: Browser): Promise<BrowserMemory> {
  const cdp = await browser.newBrowserCDPSession();
  const { processInfo } = (await cdp.send("SystemInfo.getProcessInfo")) as {
    processInfo: { type: string; id: number }[];
  };
  await cdp.detach();
  const memory: BrowserMemory = { pssBytes: 0, pssBytesByKind: {} };
  for (const process of processInfo) {
    const pss = pssBytes(process.id);
    memory.pssBytes += pss;
    memory.pssBytesByKind[process.type] = (memory.pssBytesByKind[process.type] ?? 0) + pss;
  }
  return memory;
}

/** A process's PSS; 0 for one that has exited since Chromium listed it. */
function pssBytes(pid: number): number {
  let rollup: string;
  try {
    rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  } catch {
    return 0;
  }
  const kib = /^Pss:\s+(\d+) kB$/m.exec(rollup)?.[1];
  return kib === undefined ? 0 : Number(kib) * 1024;
}
