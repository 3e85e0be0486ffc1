// Order statistics of the benchmark's samples.

/** The `fraction` quantile of `samples` (nearest rank: always one of the samples). */
export function quantile(samples: readonly number[], fraction: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil(fraction * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] as number;
}

/** The median (for an even count, the lower of the two middle samples, so it is one of them). */
export function median(samples: readonly number[]): number {
  return quantile(samples, 0.5);
}
