/**
 * One counter in detail: a chart of its value over its recent changes, who made each change
 * (`by`, which the server shows to admins), and set, reset and delete, each asked again in a
 * confirmation dialog before it is sent.
 */

import type { Entry } from "@tally/client";
import { entryOf, useTallyClient } from "@tally/react";
import { useEffect, useId, useState } from "react";
import { ValueSeries } from "../chart-series";
import { describeChange, describeError, formatNumber, parseWholeNumber } from "../format";
import { ValueChart } from "../ValueChart";

/** The changes the detail reads and charts. */
const HISTORY = 100;
/** The newest of them it lists. */
const LISTED = 20;

/** A change waiting for its confirmation. */
type Pending = { kind: "set"; value: number } | { kind: "reset" } | { kind: "delete" };

export function CounterDetail({ name, onClose }: { name: string; onClose: () => void }) {
  const client = useTallyClient();
  const fieldId = useId();
  const [series] = useState(() => new ValueSeries(HISTORY));
  const [entries, setEntries] = useState<Entry[]>([]);
  const [current, setCurrent] = useState<{ value: number; version: number } | null>(null);
  const [target, setTarget] = useState("");
  const [pending, setPending] = useState<Pending | null>(null);
  const [message, setMessage] = useState<string | null>(null);

  useEffect(() => {
    let open = true;
    // Live first, so that no change falls between the history page and the watch; both land
    // in the series, which merges by version.
    const stop = client.connection.watch(
      name,
      {},
      {
        snapshot: (snapshot) =>
          open && setCurrent({ value: snapshot.value, version: snapshot.version }),
        update: (update) => {
          if (!open) return;
          series.addUpdate(update);
          setCurrent({ value: update.value, version: update.version });
          setEntries((before) =>
            before.some((entry) => entry.version === update.version)
              ? before
              : [entryOf(update), ...before].slice(0, HISTORY),
          );
        },
        ended: (error) => {
          if (!open) return;
          if (error.code === "counter_deleted") {
            // Deleted, here or elsewhere: nothing of it is left to show.
            series.clear();
            setCurrent({ value: 0, version: 0 });
            setEntries([]);
            setMessage(`${name} was deleted: its value, history and keys are gone.`);
          } else {
            setMessage(describeError(error));
          }
        },
      },
    );
    client.getHistory(name, { limit: HISTORY }).then(
      (page) => {
        if (!open) return;
        series.addEntries(page.entries);
        setEntries((live) => {
          const known = new Set(live.map((entry) => entry.version));
          const merged = [...live, ...page.entries.filter((entry) => !known.has(entry.version))];
          return merged.sort((a, b) => b.version - a.version).slice(0, HISTORY);
        });
      },
      (error: unknown) => open && setMessage(describeError(error)),
    );
    return () => {
      open = false;
      stop();
    };
  }, [client, name, series]);

  const askSet = () => {
    const value = parseWholeNumber(target);
    if (value === null) {
      setMessage("Type a whole number to set, such as 0 or -12.");
      return;
    }
    setMessage(null);
    setPending({ kind: "set", value });
  };

  const confirm = async (what: Pending) => {
    setPending(null);
    try {
      if (what.kind === "set") {
        await client.setValue(name, what.value);
        setMessage(`${name} was set to ${formatNumber(what.value)}.`);
      } else if (what.kind === "reset") {
        await client.reset(name);
        setMessage(`${name} was reset to 0.`);
      } else {
        const answer = await client.deleteCounter(name);
        setMessage(
          answer.deleted
            ? `${name} was deleted: its value, history and keys are gone.`
            : `${name} was already gone.`,
        );
        series.clear();
        setEntries([]);
        setCurrent({ value: 0, version: 0 });
      }
    } catch (error) {
      setMessage(describeError(error, true));
    }
  };

  return (
    <section className="detail" aria-labelledby={`${fieldId}-title`} data-testid="detail">
      <div className="detail-head">
        <h2 id={`${fieldId}-title`}>{name}</h2>
        <span className="detail-value" data-testid="detail-value" data-value={current?.value}>
          {current === null ? "…" : formatNumber(current.value)}
        </span>
        <span className="hint">version {current?.version ?? "…"}</span>
        <button type="button" className="link" onClick={onClose}>
          Close
        </button>
      </div>

      <ValueChart name={name} series={series} />

      <div className="detail-actions">
        <label htmlFor={`${fieldId}-target`}>Set to</label>
        <input
          id={`${fieldId}-target`}
          inputMode="numeric"
          value={target}
          onChange={(event) => setTarget(event.target.value)}
          placeholder="0"
          autoComplete="off"
        />
        <button type="button" onClick={askSet}>
          Set…
        </button>
        <button type="button" onClick={() => setPending({ kind: "reset" })}>
          Reset…
        </button>
        <button
          type="button"
          className="danger"
          onClick={() => setPending({ kind: "delete" })}
          title={`Delete ${name}: its value, history and keys`}
        >
          Delete…
        </button>
      </div>
      {message !== null && (
        <p className="hint" role="status" data-testid="detail-message">
          {message}
        </p>
      )}

      {pending !== null && (
        <ConfirmDialog
          name={name}
          pending={pending}
          onCancel={() => setPending(null)}
          onConfirm={() => void confirm(pending)}
        />
      )}

      <table className="admin-table history-table" data-testid="detail-history">
        <thead>
          <tr>
            <th scope="col" className="number">
              Version
            </th>
            <th scope="col">When</th>
            <th scope="col">Change</th>
            <th scope="col">By</th>
          </tr>
        </thead>
        <tbody>
          {entries.slice(0, LISTED).map((entry) => (
            <tr key={entry.version} data-version={entry.version}>
              <td className="number">{entry.version}</td>
              <td>
                <time dateTime={entry.timestamp}>
                  {new Date(entry.timestamp).toLocaleTimeString()}
                </time>
              </td>
              <td>{describeChange(entry)}</td>
              <td data-testid="entry-by">{entry.by ?? "—"}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

/** Asks once more before a change is sent; nothing is sent on Cancel. */
function ConfirmDialog({
  name,
  pending,
  onCancel,
  onConfirm,
}: {
  name: string;
  pending: Pending;
  onCancel: () => void;
  onConfirm: () => void;
}) {
  const titleId = useId();
  const [question, verb] =
    pending.kind === "set"
      ? [`Set ${name} to ${formatNumber(pending.value)}?`, "Set"]
      : pending.kind === "reset"
        ? [`Reset ${name} to 0? Its history stays.`, "Reset"]
        : [
            `Delete ${name}? Its value, history and idempotency keys are removed for good.`,
            "Delete",
          ];
  return (
    <div className="dialog-backdrop">
      <div
        className="dialog"
        role="alertdialog"
        aria-modal="true"
        aria-labelledby={titleId}
        data-testid="confirm"
      >
        <p id={titleId}>{question}</p>
        <div className="dialog-buttons">
          <button type="button" onClick={onCancel} autoFocus>
            Cancel
          </button>
          <button
            type="button"
            className={pending.kind === "delete" ? "danger" : "primary"}
            onClick={onConfirm}
          >
            {verb}
          </button>
        </div>
      </div>
    </div>
  );
}
