// Makes sure Debian's Chromium is installed before the browser tests start: the project installs
// what its tests need, rather than asking people to. Installing needs root (CI has it); without
// it, the message says what to install.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";

export const CHROMIUM = process.env.TALLY_CHROMIUM ?? "/usr/bin/chromium";

export default function ensureChromium(): void {
  if (existsSync(CHROMIUM)) return;
  if (process.getuid?.() !== 0) {
    throw new Error(
      `the browser tests need Chromium at ${CHROMIUM}: install Debian's package with ` +
        "`sudo apt-get install chromium`, or set TALLY_CHROMIUM to another Chromium",
    );
  }
  const install = ["install", "-y", "--no-install-recommends", "chromium"];
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  console.log("installing Debian's chromium for the browser tests…");
  try {
    execFileSync("apt-get", install, { stdio: "inherit", env });
  } catch {
    // The package lists may be missing or stale on a fresh machine.
    execFileSync("apt-get", ["update"], { stdio: "inherit", env });
    execFileSync("apt-get", install, { stdio: "inherit", env });
  }
  if (!existsSync(CHROMIUM))
    throw new Error(`apt-get installed chromium but ${CHROMIUM} is missing`);
}
