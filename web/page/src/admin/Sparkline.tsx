/**
 * A small line of a counter's operations a minute, an SVG path built here (no inline style, so
 * the server's CSP holds). The samples are written on the element (`data-series`), for the tests
 * and anyone inspecting the page.
 */

const WIDTH = 120;
const HEIGHT = 28;

export function Sparkline({ label, points }: { label: string; points: readonly number[] }) {
  const top = Math.max(1, ...points);
  const step = points.length > 1 ? WIDTH / (points.length - 1) : 0;
  const y = (value: number) => (HEIGHT - 2 - (value / top) * (HEIGHT - 4)).toFixed(1);
  const line = points.map((value, index) => `${(index * step).toFixed(1)},${y(value)}`).join(" ");
  const latest = points.at(-1) ?? 0;
  return (
    <svg
      className="sparkline"
      viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
      width={WIDTH}
      height={HEIGHT}
      role="img"
      aria-label={label}
      data-testid="sparkline"
      data-series={points.join(",")}
    >
      {points.length > 1 ? (
        <polyline points={line} className="sparkline-line" />
      ) : (
        <line x1="0" x2={WIDTH} y1={y(latest)} y2={y(latest)} className="sparkline-line" />
      )}
    </svg>
  );
}
