//! Checks on the source tree itself that reviews would otherwise repeat.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").map(|entry| entry.expect("entry").path())
    {
        let name = entry.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if entry.is_dir() && !matches!(name, "target" | "node_modules" | ".git") {
            rust_files(&entry, found);
        } else if name.ends_with(".rs") {
            found.push(entry);
        }
    }
}

/// Every Rust file starts with a `//!` line saying what it is for.
#[test]
fn every_rust_file_says_what_it_is_for() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let missing: Vec<_> = files
        .iter()
        .filter(|file| !std::fs::read_to_string(file).expect("read").starts_with("//!"))
        .collect();
    assert!(missing.is_empty(), "files without a `//!` first line: {missing:?}");
}

/// Every default that PROTOCOL.md §1 and SECURITY.md give for a `tally serve` flag is the one
/// `tally serve --help` shows (which a unit test of `serve.rs` ties to the server's own).
#[test]
fn documented_flag_defaults_match_the_help() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--help"])
        .output()
        .expect("run tally");
    let help = String::from_utf8(help.stdout).expect("utf-8");
    let mut checked = 0;
    for doc in ["docs/PROTOCOL.md", "docs/SECURITY.md"] {
        let text = std::fs::read_to_string(root.join(doc)).expect("read doc");
        for line in text.lines().filter(|line| line.starts_with("| `--")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(flag), Some(default)) = (cells.get(1), cells.get(3)) else { continue };
            let flag = flag.trim_matches('`').split([' ', '`', ',']).next().unwrap_or_default();
            let Some(default) = default.strip_prefix('`').and_then(|d| d.split('`').next()) else {
                continue;
            };
            // The flag's paragraph in the help: from its line to the next flag's.
            let Some(start) =
                help.find(&format!("{flag} ")).or_else(|| help.find(&format!("{flag}\n")))
            else {
                panic!("{doc} documents {flag}, which `tally serve --help` does not have");
            };
            let paragraph = &help[start..];
            let end = paragraph[2..].find("\n      --").map_or(paragraph.len(), |end| end + 2);
            assert!(
                paragraph[..end].contains(&format!("[default: {default}]")),
                "{doc} says {flag} defaults to {default}; --help says:\n{}",
                &paragraph[..end]
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} documented defaults found");
}
