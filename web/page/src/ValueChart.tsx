/**
 * A card's live chart: the value over its recent changes, a step line (a counter holds its value
 * until the next change), drawn with uPlot on a canvas.
 *
 * Drawing is kept off React: the series tells the chart it changed, and the chart redraws at most
 * once per animation frame, however many updates came in between (100 a second stay smooth on a
 * phone). What was last drawn is also written on the element (`data-points`, `data-last-value`,
 * `data-last-version`), for the tests and anyone inspecting the page.
 */

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { useEffect, useRef, useSyncExternalStore } from "react";
import type { ValueSeries } from "./chart-series";
import { formatNumber } from "./format";

const HEIGHT = 120;
/** How often the chart moves on with the clock when nothing changes (ms). */
const TICK = 1_000;
/** Steps between time ticks (seconds): whole seconds and up, as the labels read. */
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400];
/** Steps between value ticks: whole numbers (1, 2, 5, 10, 20, 50, …), as a counter holds. */
const VALUE_STEPS = Array.from({ length: 16 }, (_, e) => [1, 2, 5].map((m) => m * 10 ** e)).flat();
const clock = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

export function ValueChart({ name, series }: { name: string; series: ValueSeries }) {
  const holder = useRef<HTMLDivElement>(null);
  // The colours are read when the chart is made: a switch to dark or light makes it again.
  const dark = usePrefersDark();

  useEffect(() => {
    const element = holder.current;
    if (element === null) return;
    const plot = new uPlot(chartOptions(element), series.columns(Date.now() / 1000), element);

    let frame: number | null = null;
    const draw = () => {
      frame = null;
      plot.setData(series.columns(Date.now() / 1000));
      describeDrawn(element, series);
    };
    const scheduleDraw = () => {
      frame ??= requestAnimationFrame(draw);
    };
    describeDrawn(element, series);
    const stopListening = series.subscribe(scheduleDraw);
    // The last value holds until now, and now moves on.
    const ticking = setInterval(scheduleDraw, TICK);

    // The card's width follows the layout (a phone, a resized window).
    const resize = new ResizeObserver(() => {
      plot.setSize({ width: element.clientWidth, height: HEIGHT });
    });
    resize.observe(element);

    return () => {
      stopListening();
      clearInterval(ticking);
      resize.disconnect();
      if (frame !== null) cancelAnimationFrame(frame);
      plot.destroy();
    };
  }, [series, dark]);

  return (
    <div
      ref={holder}
      className="chart"
      data-testid="chart"
      role="img"
      aria-label={`Chart of the value of ${name} over its recent changes`}
    />
  );
}

const DARK = "(prefers-color-scheme: dark)";

/** Whether the reader's system prefers dark colours, kept current. */
function usePrefersDark(): boolean {
  return useSyncExternalStore(
    (changed) => {
      const query = matchMedia(DARK);
      query.addEventListener("change", changed);
      return () => query.removeEventListener("change", changed);
    },
    () => matchMedia(DARK).matches,
  );
}

/** Writes what the chart shows onto its element. */
function describeDrawn(element: HTMLElement, series: ValueSeries): void {
  const last = series.points.at(-1);
  element.dataset.points = String(series.points.length);
  element.dataset.lastValue = last === undefined ? "" : String(last.value);
  element.dataset.lastVersion = last === undefined ? "" : String(last.version);
}

/**
 * The values' range with a tenth of room above and below (at least 1, so that a flat line sits
 * inside the chart); 0 need not be in it: a counter near a million moving by ones stays legible.
 */
function valueRange(_: uPlot, min: number, max: number): uPlot.Range.MinMax {
  const room = Math.max(1, (max - min) / 10);
  return [min - room, max + room];
}

/** uPlot's options, in the page's colours (its CSS variables, light or dark). */
function chartOptions(element: HTMLElement): uPlot.Options {
  const style = getComputedStyle(element);
  const color = (variable: string) => style.getPropertyValue(variable).trim();
  const axis: uPlot.Axis = {
    stroke: color("--muted"),
    grid: { stroke: color("--line"), width: 1 },
    ticks: { stroke: color("--line"), width: 1 },
    font: `11px ${style.fontFamily}`,
  };
  return {
    width: element.clientWidth,
    height: HEIGHT,
    legend: { show: false },
    cursor: { show: false },
    scales: { x: { time: true }, y: { range: valueRange } },
    axes: [
      {
        ...axis,
        space: 90,
        // One line of labels: uPlot's default leaves room for two.
        size: 28,
        incrs: TIME_STEPS,
        values: (_, ticks) => ticks.map((t) => clock.format(t * 1000)),
      },
      {
        ...axis,
        // As wide as its longest label (a value may have up to 16 digits).
        size: (_, labels) => 16 + 7 * Math.max(2, ...(labels ?? []).map((l) => l.length)),
        incrs: VALUE_STEPS,
        // Ticks closer than uPlot's default, so that a short chart still labels a few values.
        space: 20,
        values: (_, ticks) => ticks.map(formatNumber),
      },
    ],
    series: [
      {},
      {
        label: "value",
        stroke: color("--accent"),
        fill: color("--accent-soft"),
        width: 2,
        // Filled down to the chart's bottom, wherever the range starts (not to 0).
        fillTo: (self) => self.scales.y?.min ?? 0,
        paths: uPlot.paths.stepped?.({ align: 1 }),
        points: { show: false },
      },
    ],
  };
}
