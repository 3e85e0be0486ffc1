/**
 * The admin page (`/admin`): the server live, every counter by prefix and page, and one counter
 * in detail. It needs a token with admin on every counter (`*=admin`): the server's answer to
 * `watchServer` decides (access is the server's to decide), and until it says yes the page shows
 * nothing of the server or its counters.
 */

import { useTallyPrincipal } from "@tally/react";
import { useState } from "react";
import { SignIn } from "../SignIn";
import { CounterDetail } from "./CounterDetail";
import { CounterTable } from "./CounterTable";
import { ServerPanel } from "./ServerPanel";
import { useServerStats } from "./use-server-stats";

export function AdminApp() {
  const { stats, trend, refused } = useServerStats();
  const principal = useTallyPrincipal();
  const [open, setOpen] = useState<string | null>(null);

  return (
    <div className="app admin">
      <header className="masthead">
        <a className="brand" href="/admin" aria-label="Tally admin">
          <img src="/favicon.svg" alt="" width="32" height="32" />
          <span>Tally admin</span>
        </a>
        <p className="tagline">
          Every counter and the server, live. <a href="/">The counter page</a>
        </p>
      </header>

      <SignIn />

      {refused !== null ? (
        <section className="empty" role="alert" data-testid="refused">
          <h2>This page needs an admin token</h2>
          <p>
            The admin page shows the whole server, so it needs a token with admin on every counter
            (a grant <code>*=admin</code>)
            {refused.code === "forbidden"
              ? `; ${principal ?? "this token"} does not have it. Sign in with another token.`
              : ". Sign in with one above."}
          </p>
        </section>
      ) : stats === null ? (
        <p className="hint" data-testid="checking">
          Asking the server…
        </p>
      ) : (
        <>
          <ServerPanel stats={stats} trend={trend} />
          <div className={open === null ? "admin-main" : "admin-main admin-main-split"}>
            <CounterTable onOpen={setOpen} />
            {open !== null && (
              <CounterDetail key={open} name={open} onClose={() => setOpen(null)} />
            )}
          </div>
        </>
      )}
    </div>
  );
}
