/**
 * How numbers, times and errors read on the page, and how it reads what a person types.
 */

import {
  MAX_VALUE,
  TallyConnectionError,
  TallyError,
  type Entry,
  type Update,
} from "@tally/client";

const numberFormat = new Intl.NumberFormat();
/** Digits with an optional sign: what a person types as a whole number (no 0x10, no 1e3). */
const WHOLE_NUMBER = /^[-+]?\d+$/;

/** A counter value with the reader's digit grouping. */
export function formatNumber(value: number): string {
  return numberFormat.format(value);
}

/** A time of day, with seconds. */
export function formatTime(date: Date): string {
  return date.toLocaleTimeString(undefined, {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

/** "increment: 41 → 42", as the toasts and history say it. */
export function describeChange(change: Update | Entry): string {
  return `${change.type}: ${formatNumber(change.previousValue)} → ${formatNumber(change.value)}`;
}

/** An error in words for the reader; `write` says whether it answered a change. */
export function describeError(error: unknown, write = false): string {
  if (error instanceof TallyError) {
    // The sign-in form above says what to do; the server's words are for programs here.
    if (error.code === "unauthenticated") {
      return `Sign in with a token to ${write ? "change" : "see"} this counter.`;
    }
    if (error.code === "token_expired") return "The session expired; sign in again.";
    return error.message;
  }
  if (error instanceof TallyConnectionError) {
    return write
      ? "Cannot reach the Tally server, so the change may or may not have been made; the value shown will tell once it is back."
      : "Cannot reach the Tally server. Check that it is running.";
  }
  if (error instanceof Error) return error.message;
  return String(error);
}

/** `text` (trimmed) as a whole number within ±MAX_VALUE, or null when it is not one. */
export function parseWholeNumber(text: string): number | null {
  const trimmed = text.trim();
  const parsed = Number(trimmed);
  return WHOLE_NUMBER.test(trimmed) && Math.abs(parsed) <= MAX_VALUE ? parsed : null;
}

/** `text` with its first letter in upper case. */
export function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
