// The admin page's rate meter: the list's count spread over its minute, then the operations
// the versions of live updates count, each leaving the window a minute after it came.
import { describe, expect, it } from "vitest";
import { RateMeter, WINDOW_MS } from "../src/admin/rate-meter.js";

describe("RateMeter", () => {
  it("counts the list's operations until they leave their minute", () => {
    const meter = new RateMeter(60, 100, 0);
    expect(meter.opsLastMinute(0)).toBe(60);
    expect(meter.opsLastMinute(WINDOW_MS / 2)).toBe(30);
    expect(meter.opsLastMinute(WINDOW_MS)).toBe(0);
    expect(meter.opsLastMinute(WINDOW_MS * 3)).toBe(0);
  });

  it("counts every version a live update moved, conflated jumps included", () => {
    const meter = new RateMeter(0, 10, 0);
    meter.observe(11, 1_000);
    meter.observe(15, 2_000); // a conflated update: four operations
    meter.observe(15, 3_000); // the same version again counts nothing
    expect(meter.opsLastMinute(3_000)).toBe(5);
    expect(meter.opsLastMinute(1_000 + WINDOW_MS)).toBe(4);
    expect(meter.opsLastMinute(2_000 + WINDOW_MS)).toBe(0);
  });

  it("takes a version below the last as a counter started afresh", () => {
    const meter = new RateMeter(0, 50, 0);
    meter.observe(2, 1_000);
    expect(meter.opsLastMinute(1_000)).toBe(2);
  });

  it("keeps the newest samples for the sparkline", () => {
    const meter = new RateMeter(3, 3, 0, 3);
    for (let second = 1; second <= 5; second++) {
      meter.observe(3 + second, second * 1_000);
      meter.sample(second * 1_000);
    }
    expect(meter.points).toHaveLength(3);
    expect(meter.points.at(-1)).toBe(meter.opsLastMinute(5_000));
  });
});
