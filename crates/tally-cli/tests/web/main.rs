//! The web packages' own tests, run by `cargo test` so that the README's one test command covers
//! them too, against the `tally` binary this build made (which embeds the page):
//! the TypeScript client's unit tests, the client against a real `tally serve`, and the embedded
//! page in Debian's Chromium (installed by the tests themselves when missing and allowed).
//! `npm test` in `web/` runs the same, given `TALLY_BIN` or a `target/debug/tally`; this runs
//! `npm run test:built`, which is `npm test` without its build, as the tally-web build script
//! has installed the packages and built them (under its lock) for the `tally` binary.

use std::path::Path;
use std::process::Command;

#[test]
fn web_client_and_page() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    // npm writes this when it has installed the packages; the build script installs them
    // unless TALLY_WEB_DIST was set, and installing here too would race it without its lock.
    assert!(
        web.join("node_modules/.package-lock.json").is_file(),
        "the web packages are not installed in {}: run `npm install` there (the tally-web build \
         script does so itself unless TALLY_WEB_DIST is set; `cargo clean -p tally-web` makes it \
         run again), then test again",
        web.display()
    );
    let status = Command::new("npm")
        .args(["run", "test:built"])
        .current_dir(&web)
        .env("TALLY_BIN", env!("CARGO_BIN_EXE_tally"))
        .env("FORCE_COLOR", "0")
        .env("NO_COLOR", "1")
        .status()
        .unwrap_or_else(|error| {
            panic!("cannot run npm ({error}): the web tests need Node.js 20.19 or newer with npm")
        });
    assert!(status.success(), "`npm run test:built` in {} failed: {status}", web.display());
}
