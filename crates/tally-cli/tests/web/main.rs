//! The web packages' own tests, run by `cargo test` so that the README's one test command covers
//! them too, against the `tally` binary this build made (which embeds the page):
//! the TypeScript client's unit tests, the client against a real `tally serve`, and the embedded
//! page in Debian's Chromium (installed by the tests themselves when missing and allowed).
//! `npm test` in `web/` runs the same, given `TALLY_BIN` or a `target/debug/tally`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|meta| meta.modified()).ok()
}

fn npm(web: &Path, args: &[&str]) {
    let status = Command::new("npm")
        .args(args)
        .current_dir(web)
        .env("TALLY_BIN", env!("CARGO_BIN_EXE_tally"))
        .env("FORCE_COLOR", "0")
        .env("NO_COLOR", "1")
        .status()
        .unwrap_or_else(|error| {
            panic!("cannot run npm ({error}): the web tests need Node.js 20.19 or newer with npm")
        });
    assert!(status.success(), "`npm {}` in {} failed: {status}", args.join(" "), web.display());
}

#[test]
fn web_client_and_page() {
    let web = web_dir();
    // The build script usually installed the packages already; install only what is missing.
    let installed = modified(&web.join("node_modules/.package-lock.json"));
    let locked = modified(&web.join("package-lock.json"));
    if installed.is_none() || installed < locked {
        npm(&web, &["install", "--no-audit", "--no-fund"]);
    }
    npm(&web, &["test"]);
}
