// The server's own count of what the page holds open, from its Prometheus `/metrics`.

/** The gauges the benchmark reports (names without the `tally_` prefix). */
export const GAUGES = [
  "connections_open",
  "websockets_open",
  "sessions_open",
  "watchers",
  "subscriptions",
] as const;

export type Gauge = (typeof GAUGES)[number];

/**
 * The server's gauges now. One a build does not have (`sessions_open` and `subscriptions` came
 * with the version-2 socket) reads as NaN, so an older binary can still be measured.
 */
export async function readGauges(serverUrl: string): Promise<Record<Gauge, number>> {
  const response = await fetch(`${serverUrl}/metrics`);
  if (!response.ok) throw new Error(`GET /metrics answered ${response.status}`);
  const text = await response.text();
  const gauges = {} as Record<Gauge, number>;
  for (const gauge of GAUGES) {
    const line = new RegExp(`^tally_${gauge} (\\S+)$`, "m").exec(text);
    gauges[gauge] = line?.[1] === undefined ? Number.NaN : Number(line[1]);
  }
  return gauges;
}
