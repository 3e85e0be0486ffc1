/**
 * The server, live: its own figures as the sampler pushes them once a second (connections,
 * watchers, operations a second with their trend, p99 latency, commit time and rate, and the
 * store's readiness).
 */

import type { ServerStats } from "@tally/client";
import { formatNumber } from "../format";
import { Sparkline } from "./Sparkline";

const rate = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

function milliseconds(value: number | undefined): string {
  return value === undefined ? "—" : `${value.toFixed(value < 10 ? 2 : 1)} ms`;
}

export function ServerPanel({ stats, trend }: { stats: ServerStats; trend: number[] }) {
  const figures: [label: string, value: string, key: string][] = [
    ["Connections", formatNumber(stats.connections), "connections"],
    ["WebSockets", formatNumber(stats.websockets), "websockets"],
    ["Watchers", formatNumber(stats.watchers), "watchers"],
    ["Counters in memory", formatNumber(stats.countersInMemory), "counters-in-memory"],
    ["Operations / s", rate.format(stats.opsPerSecond), "ops-per-second"],
    ["p99 latency (10 s)", milliseconds(stats.p99Ms), "p99"],
    ["Commits / s", rate.format(stats.commitsPerSecond), "commits-per-second"],
    ["Commit + fsync (mean, 10 s)", milliseconds(stats.commitMs), "commit"],
    ["Commit p99 (10 s)", milliseconds(stats.commitP99Ms), "commit-p99"],
  ];
  return (
    <section
      className="server"
      aria-label="The server, live"
      data-testid="server"
      data-connections={stats.connections}
      data-ops-per-second={stats.opsPerSecond}
      data-ready={stats.ready}
    >
      <div className="server-head">
        <h2>Server</h2>
        <span
          className={stats.ready ? "ready ready-yes" : "ready ready-no"}
          data-testid="readiness"
          title={stats.readyReason}
        >
          {stats.ready ? "Store ready" : `Store not ready: ${stats.readyReason ?? "unknown"}`}
        </span>
        <span className="hint">sampled {new Date(stats.at).toLocaleTimeString()}</span>
      </div>
      <dl className="figures">
        {figures.map(([label, value, key]) => (
          <div key={key} className="figure" data-testid={`figure-${key}`}>
            <dt>{label}</dt>
            <dd>{value}</dd>
          </div>
        ))}
        <div className="figure figure-trend">
          <dt>Operations / s, last minute</dt>
          <dd>
            <Sparkline
              label={`Operations a second over the last minute, now ${stats.opsPerSecond}`}
              points={trend}
            />
          </dd>
        </div>
      </dl>
    </section>
  );
}
