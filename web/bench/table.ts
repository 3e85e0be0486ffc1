// The benchmark's printed table: one row per figure, one column per run, and the median.
import { median } from "./stats.js";

/** One figure: its label, how to read it off a run, and how many decimals to print. */
export interface Row<Run> {
  label: string;
  of: (run: Run) => number;
  decimals: number;
}

/** The table of `rows` over `runs`, as lines of text. */
export function formatTable<Run>(rows: readonly Row<Run>[], runs: readonly Run[]): string {
  const header = ["", ...runs.map((_, index) => `run ${index + 1}`), "median"];
  const lines = rows.map((row) => {
    const values = runs.map(row.of);
    return [row.label, ...[...values, median(values)].map((value) => format(value, row.decimals))];
  });
  const widths = header.map((_, column) =>
    Math.max(...[header, ...lines].map((line) => (line[column] ?? "").length)),
  );
  return [header, ...lines]
    .map((line) =>
      line
        .map((cell, column) =>
          column === 0 ? cell.padEnd(widths[0] ?? 0) : cell.padStart(widths[column] ?? 0),
        )
        .join("  "),
    )
    .join("\n");
}

function format(value: number, decimals: number): string {
  if (Number.isNaN(value)) return "–";
  // A value that rounds to zero prints as 0, not -0.00.
  return (Math.abs(value) < 0.5 * 10 ** -decimals ? 0 : value).toFixed(decimals);
}
