/**
 * The counters this browser opened recently, newest first, kept in localStorage.
 */

const KEY = "tally.recentCounters";
const MAX_RECENT = 8;

/** The recently opened counter names. */
export function loadRecent(): string[] {
  try {
    const stored: unknown = JSON.parse(localStorage.getItem(KEY) ?? "[]");
    return Array.isArray(stored) ? stored.filter((n): n is string => typeof n === "string") : [];
  } catch {
    // Storage may be disabled or hold something else; recent counters are a convenience only.
    return [];
  }
}

/** Puts `name` first in the recent list and returns the new list. */
export function rememberRecent(name: string): string[] {
  const recent = [name, ...loadRecent().filter((n) => n !== name)].slice(0, MAX_RECENT);
  try {
    localStorage.setItem(KEY, JSON.stringify(recent));
  } catch {
    // As above: without storage the list lasts only as long as the page.
  }
  return recent;
}
