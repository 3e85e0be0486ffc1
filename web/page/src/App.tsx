/**
 * The page: open counters by name (or by `/?counter=NAME` links), see each one live, side by side;
 * sign in with a token when the server needs one.
 */

import { nameProblem } from "@tally/client";
import { useEffect, useState, type FormEvent } from "react";
import { CounterCard } from "./CounterCard";
import { capitalize } from "./format";
import { loadRecent, rememberRecent } from "./recent";
import { SignIn } from "./SignIn";

/** The counters named in the address, in order, without repeats. */
function countersInAddress(): string[] {
  const names = new URLSearchParams(window.location.search).getAll("counter");
  return [...new Set(names.filter((name) => name !== ""))];
}

/** Writes the open counters into the address, so that it can be shared or reloaded. */
function writeAddress(names: string[]): void {
  const params = new URLSearchParams(window.location.search);
  params.delete("counter");
  for (const name of names) params.append("counter", name);
  const query = params.toString();
  const url = `${window.location.pathname}${query ? `?${query}` : ""}${window.location.hash}`;
  window.history.replaceState(null, "", url);
}

export function App() {
  const [open, setOpen] = useState<string[]>(countersInAddress);
  const [recent, setRecent] = useState<string[]>(loadRecent);
  const [draft, setDraft] = useState("");
  const [draftError, setDraftError] = useState<string | null>(null);

  useEffect(() => writeAddress(open), [open]);
  useEffect(() => {
    for (const name of countersInAddress()) setRecent(rememberRecent(name));
  }, []);

  const openCounter = (name: string) => {
    setOpen((current) => (current.includes(name) ? current : [...current, name]));
    setRecent(rememberRecent(name));
  };

  const onSubmit = (event: FormEvent) => {
    event.preventDefault();
    const name = draft.trim();
    const problem = nameProblem(name);
    if (problem !== null) {
      setDraftError(`${capitalize(problem)}.`);
      return;
    }
    setDraftError(null);
    setDraft("");
    openCounter(name);
  };

  const closeCounter = (name: string) => setOpen((current) => current.filter((n) => n !== name));

  return (
    <div className="app">
      <header className="masthead">
        <a className="brand" href="/" aria-label="Tally home">
          <img src="/favicon.svg" alt="" width="32" height="32" />
          <span>Tally</span>
        </a>
        <p className="tagline">Live counters. Every change, in every open tab, as it happens.</p>
      </header>

      <SignIn />

      <section className="opener" aria-label="Open a counter">
        <form onSubmit={onSubmit} className="open-form" noValidate>
          <label htmlFor="counter-name">Counter name</label>
          <div className="open-row">
            <input
              id="counter-name"
              name="counter"
              value={draft}
              onChange={(event) => setDraft(event.target.value)}
              placeholder="likes:post-42"
              autoComplete="off"
              spellCheck={false}
              aria-invalid={draftError !== null}
              aria-describedby="counter-name-help"
            />
            <button type="submit" className="primary">
              Open
            </button>
          </div>
          <p
            id="counter-name-help"
            className={draftError ? "field-error" : "hint"}
            role={draftError ? "alert" : undefined}
          >
            {draftError ?? "1 to 128 characters: letters, digits and _ . : -"}
          </p>
        </form>
        {recent.length > 0 && (
          <nav className="recent" aria-label="Recently opened counters">
            <span className="recent-label">Recent</span>
            <ul>
              {recent.map((name) => (
                <li key={name}>
                  <button
                    type="button"
                    className="chip"
                    onClick={() => openCounter(name)}
                    aria-pressed={open.includes(name)}
                  >
                    {name}
                  </button>
                </li>
              ))}
            </ul>
          </nav>
        )}
      </section>

      {open.length === 0 ? (
        <section className="empty">
          <h2>No counter open</h2>
          <p>
            Type a name above to open a counter, or share a link such as{" "}
            <code>/?counter=likes</code>. A counter that was never written starts at 0; open the
            same one in a second tab and watch both change together.
          </p>
        </section>
      ) : (
        <main className="counters">
          {open.map((name) => (
            <CounterCard key={name} name={name} onClose={() => closeCounter(name)} />
          ))}
        </main>
      )}

      <footer className="footer">
        <a href="/metrics">Metrics</a>
        <span aria-hidden="true">·</span>
        <span>Changes are on disk before anyone sees them.</span>
      </footer>
    </div>
  );
}
