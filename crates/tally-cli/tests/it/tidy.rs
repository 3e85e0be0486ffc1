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
