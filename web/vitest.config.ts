// Four kinds of tests, run by `npm test` (and by `cargo test --workspace` through
// crates/tally-cli/tests/web/main.rs):
// - unit: the client's state machine and backoff, with fake timers and a scripted socket, and
//   the page's pure parts (the admin page's rate meter);
// - server: the client's protocol handling against a real `tally serve` process;
// - render: the React hooks in a real renderer (jsdom) against a real `tally serve` process;
// - e2e: the embedded page in real Chromium, driven by playwright-core.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: "unit",
          include: ["packages/*/test/**/*.unit.test.ts", "page/test/**/*.unit.test.ts"],
          environment: "node",
        },
      },
      {
        test: {
          name: "server",
          include: ["packages/*/test/**/*.server.test.ts"],
          environment: "node",
          testTimeout: 30_000,
          hookTimeout: 30_000,
        },
      },
      {
        test: {
          name: "render",
          include: ["packages/*/test/**/*.render.test.tsx"],
          environment: "jsdom",
          testTimeout: 30_000,
          hookTimeout: 30_000,
        },
      },
      {
        test: {
          name: "e2e",
          include: ["e2e/**/*.test.ts"],
          environment: "node",
          globalSetup: ["scripts/ensure-chromium.ts"],
          // Browsers are heavy on a 2-core machine: one file at a time.
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 60_000,
        },
      },
    ],
  },
});
