/**
 * The server's own figures, live (`watchServer` on the client's socket): the latest, the recent
 * operations a second for a trend, and why the server refused them (they need admin on every
 * counter, so a refusal is also how the page learns its token is not an admin's).
 */

import type { ServerStats, TallyWatchError } from "@tally/client";
import { useTallyClient } from "@tally/react";
import { useEffect, useState } from "react";
import { reportAuthProblem } from "../session";

/** How many seconds of operations a second the trend keeps. */
const TREND = 60;

export interface ServerView {
  stats: ServerStats | null;
  /** Operations a second, one a sample, oldest first. */
  trend: number[];
  /** Why the figures were refused or ended, while they are. */
  refused: TallyWatchError | null;
}

export function useServerStats(): ServerView {
  const client = useTallyClient();
  const [view, setView] = useState<ServerView>({ stats: null, trend: [], refused: null });
  useEffect(
    () =>
      client.connection.watchServer({
        stats: (stats) =>
          setView((before) => ({
            stats,
            trend: [...before.trend, stats.opsPerSecond].slice(-TREND),
            refused: null,
          })),
        ended: (error) => {
          // No token, or an expired one: the sign-in form asks for one.
          reportAuthProblem(error);
          setView({ stats: null, trend: [], refused: error });
        },
      }),
    [client],
  );
  return view;
}
