// Starts and stops real `tally serve` processes for the tests: the binary cargo built (or
// TALLY_BIN), a database in a fresh temporary folder, a free loopback port, and extra flags such
// as those of access control (`TallyServer.startWithJwt`).
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { mintToken, writeSecretFile, type TestClaims } from "./tokens.js";

// From a path, not a URL object: under jsdom (the render tests) `URL` is jsdom's.
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The `tally` binary under test. */
export function tallyBinary(): string {
  const binary = process.env.TALLY_BIN ?? join(REPO, "target", "debug", "tally");
  if (!existsSync(binary)) {
    throw new Error(
      `no tally binary at ${binary}: run \`cargo build -p tally-cli\` first, or set TALLY_BIN ` +
        "(`cargo test --workspace` does both)",
    );
  }
  return binary;
}

/** A temporary folder for one test file's databases; removed by `remove`. */
export function tempDir(): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), "tally-web-test-"));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** How to start a server. */
export interface StartOptions {
  /** The port (0, the default: any free one). */
  port?: number;
  /** Extra flags for `tally serve`. */
  args?: string[];
  /** Extra environment variables. */
  env?: Record<string, string>;
}

/** A server started with `--jwt-secret-file`, and a way to mint tokens it accepts. */
export interface JwtServer {
  server: TallyServer;
  /** An HS256 token signed with the server's secret. */
  token: (claims: TestClaims) => string;
  /** The secret file's path (kept for restarts). */
  secretFile: string;
}

/** One running `tally serve`. */
export class TallyServer {
  readonly url: string;
  readonly port: number;
  readonly database: string;
  /** The flags and environment it was started with, reused by `restart`. */
  readonly options: StartOptions;
  readonly #child: ChildProcess;
  readonly #exited: Promise<number | null>;

  private constructor(
    child: ChildProcess,
    address: string,
    database: string,
    options: StartOptions,
  ) {
    this.#child = child;
    this.url = `http://${address}`;
    this.port = Number(address.split(":").pop());
    this.database = database;
    this.options = options;
    this.#exited = new Promise((resolveExit) => {
      if (child.exitCode !== null) resolveExit(child.exitCode);
      else child.once("exit", (code) => resolveExit(code));
    });
  }

  /** Starts a server on `database`, on `port` (0: any free one), with extra flags. */
  static start(database: string, options: StartOptions = {}) {
    const listen = `127.0.0.1:${options.port ?? 0}`;
    const args = ["serve", "--listen", listen, "--database", database, ...(options.args ?? [])];
    const child = spawn(tallyBinary(), args, {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1", ...options.env },
    });
    return new Promise<TallyServer>((resolveStart, rejectStart) => {
      let log = "";
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        rejectStart(new Error(`tally serve did not start within 20 s; it wrote:\n${log}`));
      }, 20_000);
      child.stderr?.setEncoding("utf8");
      child.stderr?.on("data", (chunk: string) => {
        log += chunk;
        const match = /listening on http:\/\/([0-9.]+:[0-9]+)/.exec(log);
        if (match?.[1]) {
          clearTimeout(timer);
          child.stderr?.removeAllListeners("data");
          child.stderr?.resume();
          resolveStart(new TallyServer(child, match[1], database, options));
        }
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        rejectStart(
          new Error(`tally serve exited with ${code} before listening; it wrote:\n${log}`),
        );
      });
    });
  }

  /** Stops the server with SIGTERM (sockets get 1012) and waits for it to exit. */
  async stop(): Promise<void> {
    if (this.#child.exitCode === null) this.#child.kill("SIGTERM");
    await this.#exited;
  }

  /** Freezes the server with SIGSTOP: it reads, answers and commits nothing until killed. */
  freeze(): void {
    if (this.#child.exitCode === null) this.#child.kill("SIGSTOP");
  }

  /**
   * Kills the server with SIGKILL, as a crash would (no close frames, answers in flight lost), and
   * waits for it to exit.
   */
  async kill(): Promise<void> {
    if (this.#child.exitCode === null) this.#child.kill("SIGKILL");
    await this.#exited;
  }

  /**
   * Starts a server that requires tokens: `--jwt-secret-file` with a fresh secret in `dir`, and
   * `--anonymous GRANT` for each of `anonymous` (none: anonymous may do nothing).
   */
  static async startWithJwt(
    dir: string,
    options: StartOptions & { anonymous?: string[] } = {},
  ): Promise<JwtServer> {
    const { path: secretFile, secret } = writeSecretFile(dir);
    const anonymous = (options.anonymous ?? []).flatMap((grant) => ["--anonymous", grant]);
    const server = await TallyServer.start(join(dir, "tally.db"), {
      ...options,
      args: ["--jwt-secret-file", secretFile, ...anonymous, ...(options.args ?? [])],
    });
    return { server, secretFile, token: (claims) => mintToken(secret, claims) };
  }

  /** Starts the same database again on the same port, with the same flags unless given others. */
  restart(args?: string[]): Promise<TallyServer> {
    return TallyServer.start(this.database, {
      ...this.options,
      port: this.port,
      args: args ?? this.options.args,
    });
  }
}
