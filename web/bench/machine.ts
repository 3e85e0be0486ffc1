// How busy the shared machine was during a run: its load average and the CPU time the host took
// away (steal), from /proc. A run with noticeable steal measured the neighbours, not Tally.
import { readFileSync } from "node:fs";

/** The 1-minute load average. */
export function loadAverage(): number {
  return Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
}

/** The machine's CPU time so far, in jiffies: all of it, and the part stolen by the host. */
interface CpuTimes {
  total: number;
  steal: number;
}

function cpuTimes(): CpuTimes {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  // cpu user nice system idle iowait irq softirq steal guest guest_nice
  const fields = line.trim().split(/\s+/).slice(1, 9).map(Number);
  return { total: fields.reduce((sum, field) => sum + field, 0), steal: fields[7] ?? 0 };
}

/** Starts counting stolen CPU time; the function returned gives the percentage since then. */
export function stealMeter(): () => number {
  const start = cpuTimes();
  return () => {
    const end = cpuTimes();
    const total = end.total - start.total;
    return total > 0 ? (100 * (end.steal - start.steal)) / total : 0;
  };
}
