// Protocol messages for the unit tests: a counter's metadata, a snapshot and an increment, as the
// server would send them (a version of 0 is a counter never written).
import type { Metadata, SnapshotMessage, Update } from "../packages/client/src/protocol.js";

export function metadata(name: string, value: number, version: number): Metadata {
  return {
    id: version === 0 ? null : 1,
    name,
    value,
    createdAt: version === 0 ? null : "2026-01-01T00:00:00.000Z",
    updatedAt: version === 0 ? null : "2026-01-01T00:00:00.000Z",
    operationCount: version,
  };
}

export function snapshot(
  name: string,
  value: number,
  version: number,
  resync = false,
): SnapshotMessage {
  return {
    type: "snapshot",
    value,
    version,
    metadata: metadata(name, value, version),
    timestamp: "2026-01-01T00:00:00.000Z",
    ...(resync ? { resync: true } : {}),
  };
}

export function update(
  name: string,
  previousValue: number,
  value: number,
  version: number,
): Update {
  return {
    type: "increment",
    value,
    previousValue,
    version,
    metadata: metadata(name, value, version),
    timestamp: `2026-01-01T00:00:${String(version % 60).padStart(2, "0")}.000Z`,
  };
}
