// Runs every scenario of protocol/reconnect-scenarios.json, the file the Rust client's
// reconnect tests run too (crates/tally-client/src/reconnect/tests.rs), against the TypeScript
// machine: each step's event must produce exactly the step's actions, in order. Also checks that
// the file's numbers are the machine's defaults and that the file still covers every rule.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { Backoff } from "../src/backoff.js";
import {
  DEFAULT_RECONNECT_RULES,
  ReconnectMachine,
  TIMER_KINDS,
  advisedIn,
  compareNames,
  type ReconnectAction,
  type ReconnectEvent,
  type ReconnectRules,
} from "../src/reconnect.js";

/** The shared file, from the repository root (this file is web/packages/client/test/). */
const SCENARIOS = fileURLToPath(
  new URL("../../../../protocol/reconnect-scenarios.json", import.meta.url),
);

interface Step {
  event: ReconnectEvent;
  expect: ReconnectAction[];
}

interface Scenario {
  name: string;
  /** Which rules of docs/PROTOCOL.md §11 the scenario checks. */
  rules: string[];
  steps: Step[];
}

interface ScenarioFile {
  rules: ReconnectRules;
  scenarios: Scenario[];
}

/** What a field of an event or an action holds; `?` marks one that may be absent. */
type FieldType = "string" | "number" | "boolean" | "timer" | "why" | "stop";
type Shapes = Record<string, Record<string, `${FieldType}${"" | "?"}`>>;

/** Every event type and its fields, as `ReconnectEvent` declares them. */
const EVENT_SHAPES: Shapes = {
  start: { credentials: "boolean?", urls: "number?" },
  subscribe: { name: "string", since: "number?", epoch: "string?", jumps: "boolean?" },
  unsubscribe: { name: "string" },
  opened: { tokenRefreshMs: "number?" },
  heard: {},
  snapshot: { name: "string", version: "number", push: "boolean?", epoch: "string?" },
  resumed: { name: "string", since: "number", version: "number", epoch: "string?" },
  update: { name: "string", version: "number", conflated: "boolean?" },
  subscribeRefused: { name: "string", temporary: "boolean?", retryAfterMs: "number?" },
  ended: { name: "string" },
  full: { name: "string" },
  drained: { name: "string" },
  advised: { afterMs: "number" },
  closed: { code: "number", reason: "string?" },
  lost: {},
  refused: { status: "number", code: "string", temporary: "boolean?" },
  timer: { timer: "timer" },
  due: { name: "string" },
  tokenRefreshed: { fresh: "boolean", refreshMs: "number?" },
  tokenFailed: {},
  wake: {},
};

/** Every action type and its fields, as `ReconnectAction` declares them. */
const ACTION_SHAPES: Shapes = {
  connect: { url: "number?" },
  close: { why: "why" },
  wait: { minMs: "number", maxMs: "number" },
  timer: { timer: "timer", ms: "number" },
  connected: {},
  subscribe: { name: "string", since: "number?", epoch: "string?" },
  unsubscribe: { name: "string" },
  deliver: { name: "string", version: "number" },
  ping: {},
  refreshToken: {},
  sendAuth: {},
  later: { name: "string", minMs: "number", maxMs: "number" },
  end: { name: "string" },
  stop: { stop: "stop" },
};

const ENUMS: Record<"timer" | "why" | "stop", readonly string[]> = {
  timer: TIMER_KINDS,
  why: ["connectTimeout", "silent"],
  stop: ["unauthenticated", "forbidden", "tokenExpired", "refused", "closed"],
};

/**
 * Checks that `value` is an object of one of `shapes`, with no field it does not know, so that a
 * misspelt field in the file fails here instead of being read as absent.
 */
function checkShape(value: unknown, shapes: Shapes, where: string): void {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`${where}: expected an object, got ${JSON.stringify(value)}`);
  }
  const record = value as Record<string, unknown>;
  const type = record.type;
  const shape = typeof type === "string" ? shapes[type] : undefined;
  if (shape === undefined) {
    throw new Error(`${where}: unknown type ${JSON.stringify(type)}`);
  }
  for (const key of Object.keys(record)) {
    if (key !== "type" && !(key in shape)) throw new Error(`${where}: unknown field ${key}`);
  }
  for (const [key, spec] of Object.entries(shape)) {
    const optional = spec.endsWith("?");
    const kind = spec.replace("?", "") as FieldType;
    const field = record[key];
    if (field === undefined) {
      if (!optional) throw new Error(`${where}: ${type} lacks ${key}`);
      continue;
    }
    const ok =
      kind === "timer" || kind === "why" || kind === "stop"
        ? typeof field === "string" && ENUMS[kind].includes(field)
        : kind === "number"
          ? Number.isSafeInteger(field) && (field as number) >= 0
          : typeof field === kind;
    if (!ok) throw new Error(`${where}: ${type}.${key} is ${JSON.stringify(field)}`);
  }
}

function checkKeys(value: object, keys: readonly string[], where: string): void {
  expect(Object.keys(value).sort(), `${where}: fields`).toEqual([...keys].sort());
}

/** Reads and checks the shared file. */
function readScenarios(): ScenarioFile {
  const file = JSON.parse(readFileSync(SCENARIOS, "utf8")) as ScenarioFile;
  checkKeys(file, ["$comment", "rules", "scenarios"], "the file");
  for (const scenario of file.scenarios) {
    checkKeys(scenario, ["name", "rules", "steps"], scenario.name);
    scenario.steps.forEach((step, index) => {
      const where = `${scenario.name}, step ${index + 1}`;
      checkKeys(step, ["event", "expect"], where);
      checkShape(step.event, EVENT_SHAPES, `${where}, event`);
      step.expect.forEach((action, n) =>
        checkShape(action, ACTION_SHAPES, `${where}, action ${n}`),
      );
    });
  }
  return file;
}

const file = readScenarios();

describe("the shared reconnect scenarios", () => {
  it("are all there", () => {
    expect(file.scenarios.length).toBeGreaterThanOrEqual(40);
  });

  // One test per scenario, so a failure names it; each runs on a fresh machine.
  it.each(file.scenarios.map((scenario) => [scenario.name, scenario] as const))(
    "%s",
    (_name, scenario) => {
      const machine = new ReconnectMachine(file.rules);
      scenario.steps.forEach((step, index) => {
        const actions = machine.handle(structuredClone(step.event));
        expect(actions, `step ${index + 1}: ${JSON.stringify(step.event)}`).toStrictEqual(
          step.expect,
        );
      });
    },
  );

  it("use the rules the client ships with", () => {
    // The scenarios then check the real numbers; both clients' defaults are this file's.
    expect(file.rules).toStrictEqual(DEFAULT_RECONNECT_RULES);
    const backoff = new Backoff();
    expect([backoff.min, backoff.max, backoff.factor]).toEqual([
      DEFAULT_RECONNECT_RULES.backoffMinMs,
      DEFAULT_RECONNECT_RULES.backoffMaxMs,
      DEFAULT_RECONNECT_RULES.backoffFactor,
    ]);
  });

  it("cover every rule and class of close code", () => {
    // Deleting a scenario must not leave a rule unchecked (the same list as the Rust test's).
    const rules = new Set(file.scenarios.flatMap((scenario) => scenario.rules));
    for (const rule of [
      "established",
      "connect-timeout",
      "backoff",
      "min-uptime",
      "resume",
      "versions",
      "jumps",
      "gap",
      "advised-delay",
      "ping",
      "token-expired",
      "token-in-band",
      "stop",
      "upgrade-refused",
      "subscribe-refused",
      "ended",
      "slow-reader",
      "epoch",
      "wake",
      "rotation",
    ]) {
      expect(rules, `no scenario checks the rule ${rule}`).toContain(rule);
    }
    const codes = new Set(
      file.scenarios
        .flatMap((scenario) => scenario.steps)
        .flatMap((step) => (step.event.type === "closed" ? [step.event.code] : [])),
    );
    for (const code of [
      1000, 1002, 1007, 1008, 1009, 1011, 1012, 1013, 4000, 4001, 4501, 4502, 4503,
    ]) {
      expect(codes, `no scenario closes with ${code}`).toContain(code);
    }
    expect(codes, "no scenario closes with 4599").toContain(4599);
    const names = new Set(file.scenarios.map((scenario) => scenario.name));
    expect(names.size, "scenario names are unique").toBe(file.scenarios.length);
  });
});

describe("the reconnect machine", () => {
  it("reads advice from a close reason as the Rust client does", () => {
    expect(advisedIn("server is restarting; reconnect after 1500 ms")).toBe(1500);
    expect(advisedIn("reconnect after 0 ms")).toBe(0);
    expect(advisedIn("reconnect after 12ms, please")).toBe(12);
    expect(advisedIn("reconnect with since=4")).toBeUndefined();
    expect(advisedIn("reconnect after soon")).toBeUndefined();
    expect(advisedIn("reconnect after 5 s")).toBeUndefined();
    expect(advisedIn("reconnect after 99999999999999999999999 ms")).toBeUndefined();
  });

  it("resumes subscriptions in code point order, as Rust orders names", () => {
    // U+1F600 sorts after U+FF5E by code point, before it by UTF-16 code unit.
    const names = ["\u{1F600}", "\uFF5E", "b", "a"];
    expect([...names].sort(compareNames)).toEqual(["a", "b", "\uFF5E", "\u{1F600}"]);
    const machine = new ReconnectMachine();
    for (const name of names) machine.handle({ type: "subscribe", name });
    machine.handle({ type: "start" });
    expect(machine.handle({ type: "opened" })).toStrictEqual(
      ["a", "b", "\uFF5E", "\u{1F600}"].map((name) => ({ type: "subscribe", name })),
    );
  });
});
