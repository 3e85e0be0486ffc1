// The memory of the whole browser, beyond a tab's JS heap: a WebSocket's buffers live in the
// renderer's Blink and in the network service, not in JavaScript. Chromium lists its processes
// (CDP SystemInfo.getProcessInfo); each one's proportional set size (PSS: its private pages, plus
// its share of the pages it shares) comes from /proc, so the sum counts shared memory once. Only
// the memory the processes allocated counts (anonymous and shared memory, not the pages of
// Chromium's 200 MB binary, which come and go with what code ran and what the kernel kept
// cached: they made the total move by 50 MiB from one run to the next).
import { readFileSync } from "node:fs";
import type { Browser } from "playwright-core";

/**
 * The memory the browser allocated: the PSS of all its processes, and by kind of process, in
 * bytes.
 */
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

/** A process's allocated PSS (anonymous + shared memory); 0 for one that has exited since. */
function pssBytes(pid: number): number {
  let rollup: string;
  try {
    rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  } catch {
    return 0;
  }
  const kib = (field: string) =>
    Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(rollup)?.[1] ?? 0);
  return (kib("Pss_Anon") + kib("Pss_Shmem")) * 1024;
}
