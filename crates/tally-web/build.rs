//! Gets the web page's files and writes `$OUT_DIR/assets.rs`, the table that `src/lib.rs`
//! includes: from `TALLY_WEB_DIST` if set, else built from `web/` with npm if npm is on `PATH`,
//! else a fallback page that says how to get the real one.
//!
//! npm runs here, rather than in a separate step, so that the README's
//! `cargo run --release --bin tally -- serve` gives a working page with nothing else to do.
//! Each npm step runs only when its inputs are newer than its outputs, so a build with an
//! unchanged `web/` costs a walk over its files.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::SystemTime;

use flate2::Compression;
use flate2::write::GzEncoder;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Cargo shows a failed build script's stderr under its name.
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Why the page could not be embedded; the build stops with it.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error("environment variable {0} is not set (cargo sets it for build scripts)")]
    MissingEnv(&'static str),
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: String, source: std::io::Error },
    #[error(
        "TALLY_WEB_DIST={0:?} is not an absolute path; set it to the absolute path of a built \
         page directory (one with index.html), or unset it to build web/ with npm"
    )]
    DistNotAbsolute(PathBuf),
    #[error(
        "TALLY_WEB_DIST={0:?} has no index.html; set it to a built page directory (what \
         `npm run build` writes to web/page/dist), or unset it to build web/ with npm"
    )]
    DistWithoutIndex(PathBuf),
    #[error(
        "`npm {step}` in {web} failed ({status}).\n{output}\n\
         The web page is built by the tally-web build script so that `tally serve` can serve \
         it at /. To fix it: read npm's output above; run `npm {step}` in {web} yourself to \
         retry; check that Node.js is version 20.19 or newer (`node --version`) and that the \
         npm registry can be reached. To build without npm, set TALLY_WEB_DIST to the absolute \
         path of a page built elsewhere (a directory with index.html)."
    )]
    Npm { step: String, web: String, status: String, output: String },
    #[error(
        "`npm run build` in {web} succeeded but wrote no {index}; the page's build must write \
         it there (check the build scripts in web/package.json and web/page/package.json)"
    )]
    BuildWroteNoIndex { web: String, index: String },
    #[error(
        "cannot embed {0:?}: a file name in the page must be UTF-8 and use only letters, digits \
         and -._~!$&'()*+,;=:@ (so that its URL path needs no escaping), and must not be . or \
         ..; rename the file"
    )]
    BadFileName(PathBuf),
}

/// Wraps an I/O error with what was being done to which path.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.display().to_string();
    move |source| BuildError::Io { action, path, source }
}

fn env_var(name: &'static str) -> Result<PathBuf, BuildError> {
    std::env::var_os(name).map(PathBuf::from).ok_or(BuildError::MissingEnv(name))
}

fn run() -> Result<(), BuildError> {
    let manifest_dir = env_var("CARGO_MANIFEST_DIR")?;
    let out_dir = env_var("OUT_DIR")?;
    println!("cargo::rerun-if-env-changed=TALLY_WEB_DIST");
    println!("cargo::rerun-if-changed=fallback/index.html");

    // The files are copied here and embedded from here, not from where they were found: a
    // concurrent build script (clippy, rust-analyzer, another profile) may be rebuilding
    // web/page/dist while rustc reads them.
    let embed_dir = out_dir.join("web");
    recreate_dir(&embed_dir)?;

    let dist = std::env::var_os("TALLY_WEB_DIST").filter(|value| !value.is_empty());
    let (mut files, fallback) = match dist {
        Some(dist) => {
            let dist = PathBuf::from(dist);
            if !dist.is_absolute() {
                return Err(BuildError::DistNotAbsolute(dist));
            }
            if !dist.join("index.html").is_file() {
                return Err(BuildError::DistWithoutIndex(dist));
            }
            println!("cargo::rerun-if-changed={}", dist.display());
            (copy_tree(&dist, &embed_dir)?, None)
        }
        None => {
            let web = manifest_dir.join("..").join("..").join("web");
            // Messages and rerun paths read better without the `..`s.
            let web = fs::canonicalize(&web).unwrap_or(web);
            if web.join("package.json").is_file() {
                let inputs = web_inputs(&web)?;
                for input in &inputs {
                    println!("cargo::rerun-if-changed={}", input.display());
                }
                match find_npm() {
                    Some(npm) => (build_with_npm(&npm, &web, &inputs, &embed_dir)?, None),
                    None => {
                        // A shell with Node.js on its PATH may come along (nvm, a new
                        // terminal); that is worth another try.
                        println!("cargo::rerun-if-env-changed=PATH");
                        (Vec::new(), Some(Fallback::no_npm()))
                    }
                }
            } else {
                (Vec::new(), Some(Fallback::no_web(&web)))
            }
        }
    };
    if let Some(fallback) = &fallback {
        files.push(fallback.write(&manifest_dir, &embed_dir)?);
        println!("cargo::warning={}", fallback.warning);
    }
    let assets = collect(&embed_dir, files, &out_dir.join("web-gzip"))?;
    write_table(&out_dir.join("assets.rs"), &assets, fallback.as_ref())
}

/// The built-in page embedded when the real one cannot be built.
struct Fallback {
    /// Why, for people: plain text, shown on the page and returned by `fallback_reason()`.
    reason: String,
    /// How to get the real page: HTML written here, shown on the page.
    fix_html: &'static str,
    /// One line for `cargo::warning`.
    warning: String,
}

impl Fallback {
    fn no_npm() -> Self {
        let reason = "The web page was not built because Node.js and npm were not found when \
                      this binary was compiled (no npm on PATH)."
            .to_owned();
        Self {
            warning: format!(
                "{reason} `tally serve` will serve a page that says so at /; the RPC and \
                 WebSocket API work regardless. To get the page, install Node.js 20.19 or newer, \
                 then run `cargo clean -p tally-web` and build again."
            ),
            reason,
            fix_html: "Install <a href=\"https://nodejs.org/\">Node.js</a> 20 or newer (npm \
                       comes with it), then rebuild: <code>cargo clean -p tally-web</code>, then \
                       <code>cargo run --release --bin tally -- serve</code>. The build runs \
                       <code>npm install</code> and <code>npm run build</code> in \
                       <code>web/</code> by itself. Packagers with a page built elsewhere can \
                       set <code>TALLY_WEB_DIST</code> to its directory instead.",
        }
    }

    fn no_web(web: &Path) -> Self {
        let reason = format!(
            "The web page was not built because its sources were not found when this binary \
             was compiled (no package.json in {}).",
            web.display()
        );
        Self {
            warning: format!(
                "{reason} `tally serve` will serve a page that says so at /; the RPC and \
                 WebSocket API work regardless. Build from a full checkout of the repository, \
                 or set TALLY_WEB_DIST to a built page directory."
            ),
            reason,
            fix_html: "Build from a full checkout of the Tally repository (it has \
                       <code>web/</code>) with Node.js 20.19 or newer installed, or set \
                       <code>TALLY_WEB_DIST</code> to the absolute path of a built page \
                       directory, then rebuild.",
        }
    }

    /// Writes the page, from the template in `fallback/`, as `index.html` in `embed_dir`;
    /// returns its path.
    fn write(&self, manifest_dir: &Path, embed_dir: &Path) -> Result<PathBuf, BuildError> {
        let template_path = manifest_dir.join("fallback").join("index.html");
        let template =
            fs::read_to_string(&template_path).map_err(io_error("reading", &template_path))?;
        let page = template
            .replace("{{REASON}}", &escape_html(&self.reason))
            .replace("{{FIX}}", self.fix_html);
        let index = embed_dir.join("index.html");
        fs::write(&index, page).map_err(io_error("writing", &index))?;
        Ok(index)
    }
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The first `npm` on `PATH`, as the shell would find it.
fn find_npm() -> Option<PathBuf> {
    let names: &[&str] = if cfg!(windows) { &["npm.cmd", "npm.exe"] } else { &["npm"] };
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Every file whose change should rebuild the page: the workspace's manifests and TypeScript
/// settings, and the sources of each package and of the page. Build outputs and caches are
/// left out, or each build would make the next one look stale.
fn web_inputs(web: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let mut inputs = Vec::new();
    for name in ["package.json", "package-lock.json"] {
        let path = web.join(name);
        if path.is_file() {
            inputs.push(path);
        }
    }
    for entry in fs::read_dir(web).map_err(io_error("listing", web))? {
        let path = entry.map_err(io_error("listing", web))?.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if name.starts_with("tsconfig") && name.ends_with(".json") && path.is_file() {
            inputs.push(path);
        }
    }
    let packages = web.join("packages");
    if packages.is_dir() {
        for entry in fs::read_dir(&packages).map_err(io_error("listing", &packages))? {
            let path = entry.map_err(io_error("listing", &packages))?.path();
            if path.is_dir() {
                source_files(&path, &mut inputs)?;
            }
        }
    }
    let page = web.join("page");
    if page.is_dir() {
        source_files(&page, &mut inputs)?;
    }
    inputs.sort();
    Ok(inputs)
}

/// Adds the files under `dir`, skipping what builds, installs and tests write.
fn source_files(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    for entry in fs::read_dir(dir).map_err(io_error("listing", dir))? {
        let entry = entry.map_err(io_error("listing", dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let file_type = entry.file_type().map_err(io_error("reading", &path))?;
        if file_type.is_dir() {
            let generated = matches!(name.as_str(), "node_modules" | "dist" | "test-results")
                || name == "coverage"
                || name.starts_with('.');
            if !generated {
                source_files(&path, found)?;
            }
        } else if !name.ends_with(".tsbuildinfo") {
            found.push(path);
        }
    }
    Ok(())
}

/// Runs the npm steps that are out of date, then copies `web/page/dist` into `embed_dir`, all
/// under an exclusive lock, since cargo may run this script for several targets at once
/// (build, clippy, doc, rust-analyzer) and two npm runs in one tree would trample each other.
/// Returns the copies' paths.
fn build_with_npm(
    npm: &Path,
    web: &Path,
    inputs: &[PathBuf],
    embed_dir: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    let node_modules = web.join("node_modules");
    fs::create_dir_all(&node_modules).map_err(io_error("creating", &node_modules))?;
    let lock_path = node_modules.join(".tally-build.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error("opening", &lock_path))?;
    lock.lock().map_err(io_error("locking", &lock_path))?;

    // npm writes this copy of the lockfile when it has installed what the lockfile says.
    let installed = node_modules.join(".package-lock.json");
    if is_stale(&installed, &[web.join("package-lock.json")]) {
        run_npm(npm, web, &["install", "--no-audit", "--no-fund"])?;
        // npm leaves it alone when nothing needed installing (say, after a checkout that
        // only touched the lockfile); mark it current so the next build does not ask again.
        mark_current(&installed)?;
    }
    let dist = web.join("page").join("dist");
    let index = dist.join("index.html");
    if is_stale(&index, inputs) {
        run_npm(npm, web, &["run", "build"])?;
        if !index.is_file() {
            return Err(BuildError::BuildWroteNoIndex {
                web: web.display().to_string(),
                index: index.display().to_string(),
            });
        }
        mark_current(&index)?;
    }
    let copied = copy_tree(&dist, embed_dir)?;
    // Closing the file releases the lock; said out loud so it is not moved up by accident.
    drop(lock);
    Ok(copied)
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|metadata| metadata.modified()).ok()
}

/// Whether `output` is missing or older than any of `inputs`.
fn is_stale(output: &Path, inputs: &[PathBuf]) -> bool {
    let Some(built) = modified(output) else { return true };
    inputs.iter().filter_map(|input| modified(input)).any(|changed| changed > built)
}

/// Sets the modification time of `path`, if it exists, to now.
fn mark_current(path: &Path) -> Result<(), BuildError> {
    if !path.is_file() {
        return Ok(());
    }
    let file = File::options().write(true).open(path).map_err(io_error("opening", path))?;
    file.set_modified(SystemTime::now()).map_err(io_error("touching", path))
}

fn run_npm(npm: &Path, web: &Path, args: &[&str]) -> Result<(), BuildError> {
    let step = args.join(" ");
    let output = Command::new(npm)
        .args(args)
        .current_dir(web)
        // Cargo gives build scripts these generic names; Node tools may read some of them
        // (`DEBUG` turns on the `debug` package's logging), so npm does not see them.
        .env_remove("DEBUG")
        .env_remove("PROFILE")
        .env_remove("OPT_LEVEL")
        .env_remove("TARGET")
        .env_remove("HOST")
        .env_remove("NUM_JOBS")
        .stdin(Stdio::null())
        .output()
        .map_err(io_error("running", npm))?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::new();
    for (name, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let _ = writeln!(text, "--- npm {step}: {name} (last 150 lines) ---");
        let all = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = all.lines().collect();
        for line in &lines[lines.len().saturating_sub(150)..] {
            let _ = writeln!(text, "{line}");
        }
    }
    Err(BuildError::Npm {
        step,
        web: web.display().to_string(),
        status: output.status.to_string(),
        output: text,
    })
}

fn recreate_dir(dir: &Path) -> Result<(), BuildError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_error("removing", dir))?;
    }
    fs::create_dir_all(dir).map_err(io_error("creating", dir))
}

/// Copies every file under `from` to the same place under `to` (symbolic links followed);
/// returns the copies' paths.
fn copy_tree(from: &Path, to: &Path) -> Result<Vec<PathBuf>, BuildError> {
    fs::create_dir_all(to).map_err(io_error("creating", to))?;
    let mut copied = Vec::new();
    for entry in fs::read_dir(from).map_err(io_error("listing", from))? {
        let entry = entry.map_err(io_error("listing", from))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        if source.is_dir() {
            copied.extend(copy_tree(&source, &target)?);
        } else {
            fs::copy(&source, &target).map_err(io_error("copying", &source))?;
            copied.push(target);
        }
    }
    Ok(copied)
}

/// One file to embed.
struct Asset {
    /// `/` and the file's path under the page directory, with `/` between parts.
    url_path: String,
    /// Where the bytes are (absolute), for `include_bytes!`.
    file: PathBuf,
    content_type: String,
    /// Where a gzip copy is, when it is worth sending.
    gzip_file: Option<PathBuf>,
}

/// Gives `files`, which are under `embed_dir`, their URL paths and content types, writing gzip
/// copies of compressible ones under `gzip_dir`.
fn collect(
    embed_dir: &Path,
    files: Vec<PathBuf>,
    gzip_dir: &Path,
) -> Result<Vec<Asset>, BuildError> {
    recreate_dir(gzip_dir)?;
    let mut assets = Vec::new();
    for file in files {
        let relative = file.strip_prefix(embed_dir).unwrap_or(&file);
        let mut url_path = String::new();
        for part in relative.components() {
            let part = part.as_os_str().to_str().filter(|part| is_plain_segment(part));
            let Some(part) = part else { return Err(BuildError::BadFileName(file.clone())) };
            url_path.push('/');
            url_path.push_str(part);
        }
        let content_type = content_type(&file);
        let gzip_file = if is_compressible(&content_type) {
            gzip_copy(&file, &gzip_dir.join(relative))?
        } else {
            None
        };
        assets.push(Asset { url_path, file, content_type, gzip_file });
    }
    assets.sort_by(|left, right| left.url_path.cmp(&right.url_path));
    Ok(assets)
}

/// Whether `part` can stand in a URL path as it is: the characters RFC 3986 allows in a path
/// segment without percent-escapes, and not `.` or `..`. The server matches request paths
/// byte for byte, so a name that needed escaping could never be requested.
fn is_plain_segment(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte))
}

fn content_type(file: &Path) -> String {
    let mime = mime_guess::from_path(file).first_or_octet_stream();
    let essence = mime.essence_str();
    // Say the charset of text, so browsers need not guess it; the page is built as UTF-8.
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(essence, "application/javascript" | "application/json");
    if textual { format!("{essence}; charset=utf-8") } else { essence.to_owned() }
}

fn is_compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default();
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/manifest+json"
                | "application/wasm"
                | "application/xml"
                | "image/svg+xml"
        )
}

/// Writes a gzip copy of `file` to `target` when it is at least a tenth smaller; small files
/// gain too little to be worth a second copy in the binary.
fn gzip_copy(file: &Path, target: &Path) -> Result<Option<PathBuf>, BuildError> {
    let bytes = fs::read(file).map_err(io_error("reading", file))?;
    if bytes.len() < 512 {
        return Ok(None);
    }
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(&bytes).map_err(io_error("compressing", file))?;
    let compressed = encoder.finish().map_err(io_error("compressing", file))?;
    if compressed.len() > bytes.len() / 10 * 9 {
        return Ok(None);
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
    }
    fs::write(target, compressed).map_err(io_error("writing", target))?;
    Ok(Some(target.to_path_buf()))
}

/// Writes the Rust table that `src/lib.rs` includes.
fn write_table(
    target: &Path,
    assets: &[Asset],
    fallback: Option<&Fallback>,
) -> Result<(), BuildError> {
    let mut code = String::from("// Generated by build.rs; do not edit.\n\n");
    let _ = writeln!(code, "pub(crate) static ASSETS: &[crate::Asset] = &[");
    for asset in assets {
        // `{:?}` of a `str` is a valid Rust string literal, escapes included.
        let gzip = match &asset.gzip_file {
            Some(path) => format!("Some(include_bytes!({:?}))", path.display().to_string()),
            None => "None".to_owned(),
        };
        let _ = writeln!(
            code,
            "    crate::Asset {{ path: {:?}, content_type: {:?}, bytes: include_bytes!({:?}), \
             gzip: {gzip} }},",
            asset.url_path,
            asset.content_type,
            asset.file.display().to_string(),
        );
    }
    let _ = writeln!(code, "];\n");
    let reason = match fallback {
        Some(fallback) => format!("Some({:?})", fallback.reason),
        None => "None".to_owned(),
    };
    let _ = writeln!(code, "pub(crate) const FALLBACK_REASON: Option<&str> = {reason};");
    fs::write(target, code).map_err(io_error("writing", target))
}
