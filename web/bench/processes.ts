// The memory of the whole browser, beyond a tab's JS heap: a WebSocket's buffers live in the
// renderer's Blink and in the network service, not in JavaScript. Chromium lists its processes
// (CDP SystemInfo.getProcessInfo); each one's proportional set size (PSS: its private pages, plus
// its share of the pages it shares) comes from /proc, so the sum counts shared libraries once.
import { readFileSync } from "node:fs";
import type { Browser } from "playwright-core";

/**
 * The browser's memory now: the PSS of all its processes, in bytes. Only the sum is meaningful:
 * a new process takes a share of the pages the others share, so they shrink as it appears.
 */
export async function browserPssBytes(browser: Browser): Promise<number> {
  const cdp = await browser.newBrowserCDPSession();
  const { processInfo } = (await cdp.send("SystemInfo.getProcessInfo")) as {
    processInfo: { type: string; id: number }[];
  };
  await cdp.detach();
  return processInfo.reduce((sum, process) => sum + pssBytes(process.id), 0);
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
