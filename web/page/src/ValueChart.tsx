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
import { useEffect, useRef } from "react";
import type { ValueSeries } from "./chart-series";
import { formatNumber } from "./format";

const HEIGHT = 120;
/** The shortest time the chart spans (seconds), so that a burst of changes is not drawn over milliseconds. */
const MIN_SPAN = 60;
const clock = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

export function ValueChart({ name, series }: { name: string; series: ValueSeries }) {
  const holder = useRef<HTMLDivElement>(null);

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

    // The card's width follows the layout (a phone, a resized window).
    const resize = new ResizeObserver(() => {
      plot.setSize({ width: element.clientWidth, height: HEIGHT });
    });
    resize.observe(element);

    return () => {
      stopListening();
      resize.disconnect();
      if (frame !== null) cancelAnimationFrame(frame);
      plot.destroy();
    };
  }, [series]);

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

/** Writes what the chart shows onto its element. */
function describeDrawn(element: HTMLElement, series: ValueSeries): void {
  const last = series.points.at(-1);
  element.dataset.points = String(series.points.length);
  element.dataset.lastValue = last === undefined ? "" : String(last.value);
  element.dataset.lastVersion = last === undefined ? "" : String(last.version);
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
    scales: {
      x: { time: true, range: (_, min, max) => [Math.min(min, max - MIN_SPAN), max] },
    },
    axes: [
      { ...axis, space: 90, values: (_, ticks) => ticks.map((t) => clock.format(t * 1000)) },
      { ...axis, size: 56, values: (_, ticks) => ticks.map(formatNumber) },
    ],
    series: [
      {},
      {
        label: "value",
        stroke: color("--accent"),
        fill: color("--accent-soft"),
        width: 2,
        paths: uPlot.paths.stepped?.({ align: 1 }),
        points: { show: false },
      },
    ],
  };
}
