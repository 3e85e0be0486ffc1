/**
 * One open counter: its value, live status, who else watches it, the changes waiting to be sent,
 * controls (disabled, saying why, where the token may not use them), a toast for each change made
 * elsewhere, a chart of its value, and its recent history.
 */

import { allows, MAX_VALUE, WRITE_ACTIONS, type Action, type Update } from "@tally/client";
import {
  useCounterHistory,
  useCounterValue,
  useCounterWebSocket,
  useDecrementCounter,
  useIncrementCounter,
  useResetCounter,
  useSetCounterValue,
  type CounterWebSocket,
} from "@tally/react";
import { useEffect, useId, useRef, useState, useSyncExternalStore, type FormEvent } from "react";
import { ValueSeries } from "./chart-series";
import {
  capitalize,
  describeChange,
  describeError,
  formatNumber,
  formatTime,
  parseWholeNumber,
} from "./format";
import { reportAuthProblem } from "./session";
import { useToast } from "./toasts";
import { ValueChart } from "./ValueChart";

const HISTORY_ROWS = 10;
/** Points the chart keeps: the head history page it starts from is this long too. */
const CHART_POINTS = 50;
/**
 * Updates a second the card is sent at most (the server conflates to the latest state): more
 * than a person can read, and a hot counter costs a phone no more than this.
 */
const DISPLAY_RATE = 20;
/** Versions of own writes remembered at most (their updates normally arrive within moments). */
const MAX_OWN_VERSIONS = 1_000;

export function CounterCard({ name, onClose }: { name: string; onClose: () => void }) {
  const [live, setLive] = useState(true);
  const [amount, setAmount] = useState("1");
  const [target, setTarget] = useState("");
  const [actionError, setActionError] = useState<string | null>(null);
  const fieldId = useId();

  const elsewhere = useChangesMadeElsewhere(name);
  const [series] = useState(() => new ValueSeries(CHART_POINTS));
  const socket = useCounterWebSocket(name, {
    enabled: live,
    presence: true,
    maxRate: DISPLAY_RATE,
    onUpdate: (update) => {
      series.addUpdate(update);
      elsewhere.onUpdate(update);
    },
  });
  const valueQuery = useCounterValue(name);
  const history = useCounterHistory(name, { limit: CHART_POINTS });
  useEffect(() => {
    if (history.data) series.addEntries(history.data.entries);
  }, [series, history.data]);

  const writeOptions = {
    onMutate: () => {
      elsewhere.writeStarted();
      setActionError(null);
    },
    onSuccess: (update: Update) => {
      series.addUpdate(update);
      elsewhere.writeAnswered(update);
    },
    onError: (error: Error) => {
      reportAuthProblem(error);
      setActionError(describeError(error, true));
    },
    onSettled: () => elsewhere.writeSettled(),
  };
  const increment = useIncrementCounter(writeOptions);
  const decrement = useDecrementCounter(writeOptions);
  const setValue = useSetCounterValue(writeOptions);
  const reset = useResetCounter(writeOptions);

  /** The amount field as a whole number ≥ 1, or null after telling the reader what is wrong. */
  const parsedAmount = (): number | null => {
    const parsed = parseWholeNumber(amount);
    if (parsed === null || parsed < 1) {
      setActionError(`The amount must be a whole number of at least 1, not "${amount}".`);
      return null;
    }
    return parsed;
  };

  const onSet = (event: FormEvent) => {
    event.preventDefault();
    const parsed = parseWholeNumber(target);
    if (parsed === null) {
      setActionError(
        `The new value must be a whole number between ${formatNumber(-MAX_VALUE)} and ${formatNumber(MAX_VALUE)}, not "${target}".`,
      );
      return;
    }
    setValue.mutate({ name, value: parsed }, { onSuccess: () => setTarget("") });
  };

  // A refusal a new token may fix makes the page ask for one.
  useEffect(() => reportAuthProblem(socket.authError), [socket.authError]);
  useEffect(() => reportAuthProblem(valueQuery.error), [valueQuery.error]);
  useEffect(() => reportAuthProblem(history.error), [history.error]);

  const permissions = usePermissions(name, socket);

  const value = valueQuery.data?.value ?? socket.value;
  // The last change seen live, or else the one the snapshot reports.
  const updatedAt = socket.metadata?.updatedAt;
  const lastUpdate = socket.lastUpdate ?? (updatedAt ? new Date(updatedAt) : null);
  const version = valueQuery.data?.version ?? socket.version;
  const statusText =
    socket.status === "connected"
      ? "Connected"
      : socket.status === "connecting"
        ? "Connecting"
        : "Disconnected";

  return (
    <article className="card" aria-labelledby={`${fieldId}-title`} data-counter={name}>
      <header className="card-head">
        <h2 id={`${fieldId}-title`} className="card-title" title={name}>
          {name}
        </h2>
        <button type="button" className="icon" onClick={onClose} aria-label={`Close ${name}`}>
          ×
        </button>
      </header>

      <div className="status-row">
        <div className="status-badges">
          <span className={`status status-${socket.status}`} data-testid="connection-status">
            {statusText}
          </span>
          {permissions.readOnly && (
            <span className="badge" title={permissions.readOnlyText}>
              Read-only
            </span>
          )}
          <Presence presence={live && socket.isConnected ? socket.presence : null} />
          <PendingWrites count={socket.pendingWrites} connected={socket.isConnected} />
        </div>
        <label className="toggle">
          <input
            type="checkbox"
            checked={live}
            onChange={(event) => setLive(event.target.checked)}
          />
          <span>Live updates</span>
        </label>
      </div>
      <ConnectionNote live={live} socket={socket} />

      <output
        className="value"
        data-testid="counter-value"
        data-value={value ?? ""}
        aria-live="polite"
      >
        {value === null || value === undefined ? "…" : formatNumber(value)}
      </output>
      <p className="meta">
        {version ? <>version {formatNumber(version)}</> : <>never written</>}
        {lastUpdate && (
          <>
            {" · last update "}
            <time dateTime={lastUpdate.toISOString()} data-testid="last-update">
              {formatTime(lastUpdate)}
            </time>
          </>
        )}
      </p>

      {permissions.readOnly && (
        <p className="read-only-note" id={permissions.noteId} data-testid="read-only-note">
          {permissions.readOnlyText}
        </p>
      )}

      <div className="steppers">
        <StepButton
          label="Decrement"
          symbol="−"
          onStep={(by) => decrement.mutate({ name, amount: by })}
          amount={parsedAmount}
          refusal={permissions.refusal("decrement")}
        />
        <label className="amount">
          <span>by</span>
          <input
            inputMode="numeric"
            value={amount}
            onChange={(event) => setAmount(event.target.value)}
            aria-label="Amount"
            disabled={!permissions.may("increment") && !permissions.may("decrement")}
          />
        </label>
        <StepButton
          label="Increment"
          symbol="+"
          onStep={(by) => increment.mutate({ name, amount: by })}
          amount={parsedAmount}
          refusal={permissions.refusal("increment")}
        />
      </div>

      <form className="set-row" onSubmit={onSet}>
        <input
          inputMode="numeric"
          value={target}
          onChange={(event) => setTarget(event.target.value)}
          placeholder="New value"
          aria-label="New value"
          disabled={!permissions.may("set")}
        />
        <button type="submit" {...refusalProps(permissions.refusal("set"))}>
          Set value
        </button>
        <button
          type="button"
          className="danger"
          onClick={() => reset.mutate({ name })}
          {...refusalProps(permissions.refusal("reset"))}
        >
          Reset
        </button>
      </form>

      {(actionError ?? valueQuery.error) && (
        <p className="card-error" role="alert">
          {actionError ?? describeError(valueQuery.error)}
        </p>
      )}

      <ValueChart name={name} series={series} />

      <section className="history" aria-label={`Recent history of ${name}`}>
        <h3>Recent changes</h3>
        {history.error ? (
          <p className="card-error" role="alert">
            {describeError(history.error)}
          </p>
        ) : history.data && history.data.entries.length > 0 ? (
          <ol data-testid="history">
            {history.data.entries.slice(0, HISTORY_ROWS).map((entry) => (
              <li key={entry.version} data-version={entry.version}>
                <span className="history-version">#{entry.version}</span>
                <span className="history-change">
                  {describeChange(entry)}
                  {entry.amount !== undefined && entry.amount !== 1 && (
                    <span className="history-amount"> (by {formatNumber(entry.amount)})</span>
                  )}
                  {entry.by !== undefined && (
                    <span className="history-by" data-testid="history-by">
                      {" "}
                      · {entry.by}
                    </span>
                  )}
                </span>
                <time dateTime={entry.timestamp}>{formatTime(new Date(entry.timestamp))}</time>
              </li>
            ))}
          </ol>
        ) : (
          <p className="hint">{history.isPending ? "Loading…" : "No changes yet."}</p>
        )}
      </section>
    </article>
  );
}

/** Why an action is refused, for a disabled control (and the note it refers to, if any). */
interface Refusal {
  text: string;
  noteId: string | null;
}

/**
 * What the socket's principal may do to counter `name` (its `can`); everything while that is not
 * known yet (the server refuses what it must, and says why).
 */
function usePermissions(name: string, socket: CounterWebSocket) {
  const noteId = `${useId()}-read-only`;
  const can = socket.can;
  const may = (action: Action) => can === null || allows(can, action);
  const readOnly = can !== null && !WRITE_ACTIONS.some((action) => allows(can, action));
  const who = socket.principal === "anonymous" ? "Without a token you" : "Your token";
  return {
    readOnly,
    readOnlyText: `Read-only: ${who.charAt(0).toLowerCase()}${who.slice(1)} may not change ${name}.`,
    noteId,
    may,
    refusal: (action: Action): Refusal | null =>
      may(action)
        ? null
        : {
            text: `${who} may not ${ACTION_WORDS[action]} ${name}`,
            noteId: readOnly ? noteId : null,
          },
  };
}

const ACTION_WORDS: Record<Action, string> = {
  read: "read",
  increment: "increment",
  decrement: "decrement",
  set: "set the value of",
  reset: "reset",
  admin: "administer",
};

/**
 * A refused control's attributes: disabled, saying why in its title (its accessible
 * description), and pointing at the card's read-only note when there is one.
 */
function refusalProps(refusal: Refusal | null) {
  if (refusal === null) return {};
  return {
    disabled: true,
    title: refusal.text,
    ...(refusal.noteId === null ? {} : { "aria-describedby": refusal.noteId }),
  };
}

/** − or +: steps by the amount field, once it reads as a whole number ≥ 1. */
function StepButton(props: {
  label: "Increment" | "Decrement";
  symbol: string;
  amount: () => number | null;
  onStep: (by: number) => void;
  refusal: Refusal | null;
}) {
  return (
    <button
      type="button"
      className="step"
      aria-label={props.label}
      onClick={() => {
        const by = props.amount();
        if (by !== null) props.onStep(by);
      }}
      {...refusalProps(props.refusal)}
    >
      {props.symbol}
    </button>
  );
}

/**
 * "3 watching": the subscriptions to the counter, this one included, while it is watched (the
 * last count heard is not shown while disconnected: it may no longer hold).
 */
function Presence({ presence }: { presence: { watchers: number; users: number } | null }) {
  if (presence === null) return null;
  const people = presence.users === 1 ? "1 person" : `${formatNumber(presence.users)} people`;
  return (
    <span className="badge" data-testid="presence" title={`${people} watching this counter`}>
      {formatNumber(presence.watchers)} watching
    </span>
  );
}

/**
 * The card's writes not answered yet: "2 waiting to send" while there is no connection (they are
 * queued and sent in order when it is back), "sending 2" while they are on their way.
 */
function PendingWrites({ count, connected }: { count: number; connected: boolean }) {
  if (count === 0) return null;
  return (
    <span className="badge badge-pending" data-testid="pending-writes">
      {connected ? `sending ${formatNumber(count)}` : `${formatNumber(count)} waiting to send`}
    </span>
  );
}

/** Why the counter is not live, and when it will try again, in words. */
function ConnectionNote({ live, socket }: { live: boolean; socket: CounterWebSocket }) {
  const now = useNow(socket.retryAt !== null);
  const online = useOnline();
  if (!live) {
    return <p className="connection-note">Live updates are off; the value may be out of date.</p>;
  }
  if (socket.status === "connected" || socket.error === null) return null;
  if (socket.authError !== null && socket.authError.code !== "forbidden") {
    return (
      <p className="connection-note" role="status">
        {socket.authError.code === "token_expired"
          ? "The session expired; sign in again to watch this counter."
          : "Sign in with a token to watch this counter."}
      </p>
    );
  }
  const retry =
    socket.retryAt !== null
      ? ` Reconnecting in ${Math.max(0, Math.ceil((socket.retryAt - now) / 1000))} s.`
      : "";
  const why = online
    ? `${capitalize(socket.error.message)}.`
    : "This device is offline; changes made meanwhile wait here until it is back.";
  return (
    <p className="connection-note" role="status">
      {why}
      {retry}
      {socket.retryAt !== null && (
        <button type="button" className="link" onClick={socket.reconnect}>
          Retry now
        </button>
      )}
    </p>
  );
}

/** Whether the browser says it is online, kept current. */
function useOnline(): boolean {
  return useSyncExternalStore(
    (changed) => {
      window.addEventListener("online", changed);
      window.addEventListener("offline", changed);
      return () => {
        window.removeEventListener("online", changed);
        window.removeEventListener("offline", changed);
      };
    },
    () => navigator.onLine,
  );
}

/** The current time, refreshed each second while `ticking`. */
function useNow(ticking: boolean): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!ticking) return;
    setNow(Date.now());
    const timer = setInterval(() => setNow(Date.now()), 1_000);
    return () => clearInterval(timer);
  }, [ticking]);
  return now;
}

/**
 * Toasts the changes other clients made. The server announces a write to watchers before it
 * answers the writer, so an update that arrives while this card's own writes are in flight is
 * held until they are answered, and then toasted only if its version is not one of ours.
 * A conflated update stands for every change since the last one sent, and is judged by its
 * (latest) version: changes made elsewhere just before one of ours, in one display slot, are not
 * toasted.
 */
function useChangesMadeElsewhere(name: string) {
  const toast = useToast();
  const inFlight = useRef(0);
  const ownVersions = useRef(new Set<number>());
  const held = useRef<Update[]>([]);

  const flush = () => {
    if (inFlight.current > 0) return;
    const others = held.current.filter((update) => !ownVersions.current.delete(update.version));
    held.current = [];
    if (others.length === 0) return;
    const latest = others[others.length - 1] as Update;
    toast({
      tone: "info",
      title: name,
      text:
        others.length === 1
          ? describeChange(latest)
          : `${others.length} changes elsewhere; latest ${describeChange(latest)}`,
    });
  };

  return {
    onUpdate: (update: Update) => {
      held.current.push(update);
      flush();
    },
    writeStarted: () => {
      inFlight.current += 1;
    },
    writeAnswered: (update: Update) => {
      const own = ownVersions.current;
      own.add(update.version);
      // Updates never seen (live updates off, a resync) would otherwise be kept forever.
      if (own.size > MAX_OWN_VERSIONS) own.delete(own.values().next().value as number);
    },
    writeSettled: () => {
      inFlight.current = Math.max(0, inFlight.current - 1);
      flush();
    },
  };
}
