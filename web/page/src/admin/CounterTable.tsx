/**
 * The counters: found by name prefix, a page at a time (`counter.list`, following `next`), each
 * with its value, version, watchers, an operations-a-minute sparkline and its last change. The
 * counters on the page are watched (one subscription each on the client's socket, at most 10
 * updates a second, with presence), so values, watchers and sparklines move as they change; the
 * watchers then count this page's own subscription too.
 */

import type { ListedCounter } from "@tally/client";
import { useTallyClient } from "@tally/react";
import { useEffect, useState, type FormEvent } from "react";
import { describeError, formatNumber } from "../format";
import { RateMeter } from "./rate-meter";
import { Sparkline } from "./Sparkline";

/** Counters a page shows. */
export const PAGE_SIZE = 20;
/** How often the sparklines take a sample (ms). */
const SAMPLE_MS = 2_000;
/** The most updates a second a watched row asks for: a person cannot read more. */
const ROW_RATE = 10;

interface Page {
  counters: ListedCounter[];
  next?: string;
}

export function CounterTable({ onOpen }: { onOpen: (name: string) => void }) {
  const client = useTallyClient();
  const [draft, setDraft] = useState("");
  const [prefix, setPrefix] = useState("");
  /** Where each page shown so far started (`after`), the current one last. */
  const [starts, setStarts] = useState<(string | undefined)[]>([undefined]);
  const [page, setPage] = useState<Page | null>(null);
  const [error, setError] = useState<string | null>(null);
  const after = starts.at(-1);

  useEffect(() => {
    let current = true;
    setError(null);
    client.list({ prefix, limit: PAGE_SIZE, ...(after === undefined ? {} : { after }) }).then(
      (list) => current && setPage(list),
      (failure: unknown) => current && setError(describeError(failure)),
    );
    return () => {
      current = false;
    };
  }, [client, prefix, after]);

  const now = useTick(SAMPLE_MS);

  const onSearch = (event: FormEvent) => {
    event.preventDefault();
    setPrefix(draft.trim());
    setStarts([undefined]);
    setPage(null);
  };

  return (
    <section className="counters-admin" aria-label="Counters">
      <form className="search" onSubmit={onSearch} role="search">
        <label htmlFor="prefix">Name starts with</label>
        <div className="open-row">
          <input
            id="prefix"
            value={draft}
            onChange={(event) => setDraft(event.target.value)}
            placeholder="likes:"
            autoComplete="off"
            spellCheck={false}
          />
          <button type="submit" className="primary">
            Search
          </button>
        </div>
      </form>
      {error !== null && (
        <p className="field-error" role="alert">
          {error}
        </p>
      )}
      {page === null ? (
        <p className="hint">Loading…</p>
      ) : page.counters.length === 0 ? (
        <p className="hint" data-testid="no-counters">
          No counter {prefix === "" ? "yet" : `starts with “${prefix}”`}.
        </p>
      ) : (
        <table className="admin-table" data-testid="counter-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col" className="number">
                Value
              </th>
              <th scope="col" className="number">
                Version
              </th>
              <th scope="col" className="number">
                Watchers
              </th>
              <th scope="col">Ops / min</th>
              <th scope="col">Last change</th>
            </tr>
          </thead>
          <tbody>
            {page.counters.map((counter) => (
              <CounterRow key={counter.name} listed={counter} now={now} onOpen={onOpen} />
            ))}
          </tbody>
        </table>
      )}
      <nav className="pager" aria-label="Pages">
        <button
          type="button"
          disabled={starts.length === 1}
          onClick={() => {
            setPage(null);
            setStarts((before) => before.slice(0, -1));
          }}
        >
          Previous
        </button>
        <span className="hint" data-testid="page-number">
          Page {starts.length}
        </span>
        <button
          type="button"
          disabled={page?.next === undefined}
          onClick={() => {
            const next = page?.next;
            if (next === undefined) return;
            setPage(null);
            setStarts((before) => [...before, next]);
          }}
        >
          Next
        </button>
      </nav>
    </section>
  );
}

/** One counter, watched while it is on the page. */
function CounterRow({
  listed,
  now,
  onOpen,
}: {
  listed: ListedCounter;
  now: number;
  onOpen: (name: string) => void;
}) {
  const client = useTallyClient();
  const [state, setState] = useState({
    value: listed.value,
    version: listed.version,
    updatedAt: listed.updatedAt,
  });
  const [watchers, setWatchers] = useState(listed.watchers);
  const [deleted, setDeleted] = useState(false);
  const [meter] = useState(() => new RateMeter(listed.opsLastMinute, listed.version, Date.now()));
  const [points, setPoints] = useState<readonly number[]>(meter.points);

  useEffect(
    () =>
      client.connection.watch(
        listed.name,
        { maxRate: ROW_RATE, presence: true },
        {
          snapshot: (snapshot) => {
            meter.observe(snapshot.version, Date.now());
            setState({
              value: snapshot.value,
              version: snapshot.version,
              updatedAt: snapshot.metadata.updatedAt ?? listed.updatedAt,
            });
          },
          update: (update) => {
            meter.observe(update.version, Date.now());
            setState({ value: update.value, version: update.version, updatedAt: update.timestamp });
          },
          presence: (presence) => setWatchers(presence.watchers),
          // Deleted (by this page or anyone): its row says so until the page is read again.
          ended: (error) => setDeleted(error.code === "counter_deleted"),
        },
      ),
    [client, listed.name, listed.updatedAt, meter],
  );

  useEffect(() => {
    meter.sample(now);
    setPoints(meter.points);
  }, [meter, now]);

  const perMinute = points.at(-1) ?? 0;
  return (
    <tr
      data-counter={listed.name}
      data-value={state.value}
      data-version={state.version}
      data-deleted={deleted}
      className={deleted ? "deleted" : undefined}
    >
      <th scope="row">
        <button type="button" className="link" onClick={() => onOpen(listed.name)}>
          {listed.name}
        </button>
      </th>
      <td className="number" data-testid="row-value">
        {formatNumber(state.value)}
      </td>
      <td className="number">{state.version}</td>
      <td className="number" data-testid="row-watchers">
        {watchers}
      </td>
      <td className="rate" data-testid="row-rate" data-ops={perMinute}>
        <Sparkline
          label={`${listed.name}: ${perMinute} operations in the last minute`}
          points={points}
        />
        <span className="rate-number">{formatNumber(perMinute)}</span>
      </td>
      <td>
        {deleted ? (
          "deleted"
        ) : (
          <time dateTime={state.updatedAt}>{new Date(state.updatedAt).toLocaleString()}</time>
        )}
      </td>
    </tr>
  );
}

/** The time, moved on every `ms`. */
function useTick(ms: number): number {
  const [now, setNow] = useState(Date.now);
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(timer);
  }, [ms]);
  return now;
}
