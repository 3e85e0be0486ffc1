// The page's browser benchmark, `npm run bench:page`: minutes of Chromium against a release
// `tally serve`, measuring rather than checking, so it has a config of its own and is never part
// of `npm test` (whose projects do not include bench/).
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    root: fileURLToPath(new URL("..", import.meta.url)),
    include: ["bench/**/*.measure.ts"],
    environment: "node",
    globalSetup: ["scripts/ensure-chromium.ts"],
    testTimeout: 60 * 60_000,
    hookTimeout: 60_000,
  },
});
