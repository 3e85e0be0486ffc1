//! The `tally` client subcommands end to end: the real binary against a real `tally serve`,
//! checking what a user sees (output, exit codes, stderr), and `watch` across a server restart
//! and into a closed pipe.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::process::{PATIENCE, Tally, tally};

/// How long a watch may take to come back after its server restarted: its first retry waits up
/// to 3 s, a retry that finds the server still down up to 6 s more.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// What one run of `tally` printed and how it ended.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// `tally` with no `TALLY_URL` from the environment running the tests, and no stdin.
pub(crate) fn command() -> std::process::Command {
    let mut command = tally();
    command.env_remove("TALLY_URL").stdin(Stdio::null());
    command
}

/// Runs `tally --url <url> <args>` to its end.
pub(crate) fn run(url: &str, args: &[&str]) -> Ran {
    let output = command().arg("--url").arg(url).args(args).output().expect("run tally");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// Runs a command that must succeed and print nothing on stderr; answers its stdout.
pub(crate) fn run_ok(url: &str, args: &[&str]) -> String {
    let ran = run(url, args);
    assert_eq!(ran.code, Some(0), "tally {args:?}: {ran:?}");
    assert_eq!(ran.stderr, "", "tally {args:?} wrote to stderr");
    ran.stdout
}

/// Runs a command that must fail with `code` and one `error:` line on stderr; answers that line.
pub(crate) fn run_err(url: &str, args: &[&str], code: i32) -> String {
    let ran = run(url, args);
    assert_eq!(ran.code, Some(code), "tally {args:?}: {ran:?}");
    assert_eq!(ran.stdout, "", "tally {args:?} printed on stdout");
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("error: ") && ran.stderr.ends_with('\n'),
        "tally {args:?}: stderr is not one `error:` line: {:?}",
        ran.stderr
    );
    lines[0].to_owned()
}

pub(crate) fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect()
}

fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// An RPC call to a server not started by [`Tally::start`].
async fn rpc(http: &reqwest::Client, addr: SocketAddr, procedure: &str, body: Value) -> Value {
    let response = http
        .post(format!("http://{addr}/rpc/counter.{procedure}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let answer: Value = response.json().await.expect("JSON answer");
    assert_eq!(status, 200, "{procedure} {body}: {answer}");
    answer
}

/// Sends `signal` (e.g. "INT") to process `pid`.
fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Waits for `child` to exit, at most `PATIENCE`.
fn wait_with_deadline(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `tally serve` on a given address: `Tally::start` always picks a free port, and a restart
/// must come back on the port its watchers know.
struct ServerAt {
    child: Child,
    /// Keeps the server's stderr drained.
    _log: mpsc::Receiver<String>,
}

impl ServerAt {
    fn start(database: &Path, addr: SocketAddr) -> Self {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut child = command()
                .args(["serve", "--listen", &addr.to_string(), "--database"])
                .arg(database)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn tally serve");
            let log = line_channel(child.stderr.take().expect("stderr"), None).0;
            let mut said = Vec::new();
            loop {
                match log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(line) if line.contains(&format!("listening on http://{addr}")) => {
                        return Self { child, _log: log };
                    }
                    Ok(line) => said.push(line),
                    // The process ended: it could not bind (yet), or failed otherwise.
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        let _ = child.kill();
                        panic!("tally serve on {addr} did not start in time: {said:?}");
                    }
                }
            }
            let status = wait_with_deadline(&mut child, "tally serve");
            let cannot_bind = said.iter().any(|line| line.contains("cannot listen on"));
            assert!(
                cannot_bind && Instant::now() < deadline,
                "tally serve on {addr} failed ({status}): {said:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServerAt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `pipe` line by line on a thread into a channel; stops (closing the pipe) after
/// `max_lines` lines if given.
fn line_channel(
    pipe: impl Read + Send + 'static,
    max_lines: Option<usize>,
) -> (mpsc::Receiver<String>, JoinHandle<()>) {
    let (sender, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut pipe = BufReader::new(pipe);
        let mut count = 0;
        while max_lines.is_none_or(|max| count < max) {
            let mut line = String::new();
            match pipe.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            count += 1;
            if sender.send(line.trim_end_matches('\n').to_owned()).is_err() {
                break;
            }
        }
        drop(pipe);
    });
    (lines, reader)
}

/// A running `tally watch`: its stdout lines arrive on a channel, its stderr is collected.
pub(crate) struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts `tally --url <url> watch <args>`; with `max_lines`, the read end of its stdout is
    /// closed after that many lines (like `| head -n <max_lines>`).
    pub(crate) fn start(url: &str, args: &[&str], max_lines: Option<usize>) -> Self {
        let mut child = command()
            .arg("--url")
            .arg(url)
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally watch");
        let (lines, stdout_reader) = line_channel(child.stdout.take().expect("stdout"), max_lines);
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut stderr_pipe = BufReader::new(child.stderr.take().expect("stderr"));
        let collected = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            let mut line = String::new();
            while stderr_pipe.read_line(&mut line).is_ok_and(|read| read > 0) {
                collected.lock().expect("stderr lock").push_str(&line);
                line.clear();
            }
        });
        Self {
            child,
            lines,
            stdout_reader: Some(stdout_reader),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// What the watch wrote on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Everything the watch wrote on stderr, once it has exited.
    fn final_stderr(&mut self) -> String {
        assert!(self.child.try_wait().expect("try_wait").is_some(), "tally watch still runs");
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("stderr reader");
        }
        self.stderr()
    }

    /// The next line on stdout, waiting until `deadline`.
    fn line_by(&self, deadline: Instant) -> String {
        match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(error) => panic!("no line from tally watch ({error}); stderr: {}", self.stderr()),
        }
    }

    pub(crate) fn line(&self) -> String {
        self.line_by(Instant::now() + PATIENCE)
    }

    fn json_line_by(&self, deadline: Instant) -> Value {
        let line = self.line_by(deadline);
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"))
    }

    /// Waits until the stdout reader stopped after its `max_lines`: the pipe's read end is
    /// closed.
    fn join_stdout_reader(&mut self) {
        if let Some(reader) = self.stdout_reader.take() {
            reader.join().expect("stdout reader");
        }
    }

    /// Sends SIGINT (Ctrl-C), waits for the exit, and answers the status and the lines printed
    /// since the last one read.
    pub(crate) fn interrupt(&mut self) -> (ExitStatus, Vec<String>) {
        send_signal(self.child.id(), "INT");
        let status = wait_with_deadline(&mut self.child, "tally watch");
        let deadline = Instant::now() + PATIENCE;
        let mut rest = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => rest.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stdout of tally watch did not end"),
            }
        }
        (status, rest)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn each_change_prints_old_and_new_value_with_the_version() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);
    let cases: [(&[&str], &str); 9] = [
        (&["incr", "likes"], "likes: 0 → 1  (increment +1, version 1)"),
        (&["incr", "likes", "5"], "likes: 1 → 6  (increment +5, version 2)"),
        (&["decr", "likes"], "likes: 6 → 5  (decrement -1, version 3)"),
        (&["decr", "likes", "3"], "likes: 5 → 2  (decrement -3, version 4)"),
        (&["set", "likes", "-7"], "likes: 2 → -7  (setValue, version 5)"),
        (&["reset", "likes"], "likes: -7 → 0  (reset, version 6)"),
        (&["set", "likes", "42"], "likes: 0 → 42  (setValue, version 7)"),
        (&["decr", "likes", "50"], "likes: 42 → -8  (decrement -50, version 8)"),
        (&["incr", "other.counter:x-1_"], "other.counter:x-1_: 0 → 1  (increment +1, version 1)"),
    ];
    for (args, expected) in cases {
        assert_eq!(run_ok(&url, args), format!("{expected}\n"), "tally {args:?}");
    }

    let get = run_ok(&url, &["get", "likes"]);
    let lines: Vec<&str> = get.lines().collect();
    assert_eq!(lines.len(), 2, "{get}");
    assert_eq!(lines[0], "likes: -8");
    assert!(lines[1].starts_with("  version 8, created 20"), "{get}");
    assert!(lines[1].contains(", updated 20"), "{get}");
    assert!(lines[1].ends_with(", 8 in the last minute"), "{get}");
    assert_eq!(run_ok(&url, &["get", "nothing"]), "nothing: 0  (never written)\n");

    // TALLY_URL stands in for --url.
    let output = command().args(["get", "likes"]).env("TALLY_URL", &url).output().expect("run");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), get);
}

#[tokio::test]
async fn json_prints_one_object_per_line() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);

    let incr = json_lines(&run_ok(&url, &["--json", "incr", "likes", "5"]));
    assert_eq!(incr.len(), 1, "{incr:?}");
    let update = &incr[0];
    assert_eq!(update["type"], "increment");
    assert_eq!((update["previousValue"].as_i64(), update["value"].as_i64()), (Some(0), Some(5)));
    assert_eq!(update["version"], 1);
    assert_eq!(update["metadata"]["name"], "likes");
    assert_eq!(update["metadata"]["operationCount"], 1);
    assert!(update["timestamp"].is_string(), "{update}");

    // --json may also come after the subcommand.
    let decr = json_lines(&run_ok(&url, &["decr", "likes", "--json"]));
    assert_eq!((decr[0]["type"].as_str(), decr[0]["value"].as_i64()), (Some("decrement"), Some(4)));
    let set = json_lines(&run_ok(&url, &["--json", "set", "likes", "-3"]));
    assert_eq!((set[0]["type"].as_str(), set[0]["value"].as_i64()), (Some("setValue"), Some(-3)));

    let get = json_lines(&run_ok(&url, &["--json", "get", "likes"]));
    assert_eq!(get.len(), 1, "{get:?}");
    let metadata = &get[0];
    assert_eq!(metadata["name"], "likes");
    assert_eq!(metadata["value"], -3);
    assert_eq!(metadata["operationCount"], 3);
    assert!(metadata["createdAt"].is_string() && metadata["updatedAt"].is_string(), "{metadata}");
    assert_eq!(server.ok("getMetadata", json!({"name": "likes"})).await, *metadata);

    let history = json_lines(&run_ok(&url, &["--json", "history", "likes"]));
    let summary: Vec<(u64, &str, Option<i64>, i64, i64)> = history
        .iter()
        .map(|entry| {
            (
                entry["version"].as_u64().expect("version"),
                entry["type"].as_str().expect("type"),
                entry["amount"].as_i64(),
                entry["previousValue"].as_i64().expect("previousValue"),
                entry["value"].as_i64().expect("value"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (3, "setValue", None, 4, -3),
            (2, "decrement", Some(1), 5, 4),
            (1, "increment", Some(5), 0, 5),
        ]
    );
    assert_eq!(run_ok(&url, &["--json", "history", "nothing"]), "");
}

#[tokio::test]
async fn history_is_an_aligned_table_with_a_hint_for_older_entries() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);
    server.ok("increment", json!({"name": "likes", "amount": 5})).await;
    server.ok("decrement", json!({"name": "likes", "amount": 2})).await;
    server.ok("setValue", json!({"name": "likes", "value": -7})).await;
    server.ok("reset", json!({"name": "likes"})).await;
    server.ok("increment", json!({"name": "likes", "amount": 12345})).await;

    let table = run_ok(&url, &["history", "likes"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    let header = lines[0];
    assert!(header.starts_with("VERSION  TIME"), "{table}");
    let column = |title: &str| header.find(title).unwrap_or_else(|| panic!("{title}: {header}"));
    let (time, change, value) = (column("TIME"), column("CHANGE"), column("VALUE"));
    assert!(time < change && change < value, "{header}");
    let expected = [
        (5, "increment +12345", "0 → 12345"),
        (4, "reset", "-7 → 0"),
        (3, "setValue", "3 → -7"),
        (2, "decrement -2", "5 → 3"),
        (1, "increment +5", "0 → 5"),
    ];
    for (row, (version, what, values)) in lines[1..].iter().zip(expected) {
        // Every cell before VALUE is ASCII, so byte offsets are column offsets.
        assert_eq!(row[..time], format!("{version:>7}  "), "right-aligned:\n{table}");
        let stamp = row[time..change].trim_end();
        assert_eq!(stamp.len(), "2026-11-25 21:04:05.123".len(), "{table}");
        assert!(
            stamp.char_indices().all(|(i, c)| match i {
                4 | 7 => c == '-',
                10 => c == ' ',
                13 | 16 => c == ':',
                19 => c == '.',
                _ => c.is_ascii_digit(),
            }),
            "time {stamp:?} in\n{table}"
        );
        assert_eq!(row[change..value].trim_end(), what, "{table}");
        assert_eq!(&row[value..], values, "{table}");
    }

    // One page of two, with the way to the next page on stderr; following it to the end.
    let mut pages = Vec::new();
    let mut args = vec!["history".to_owned(), "likes".into(), "--limit".into(), "2".into()];
    loop {
        let args_str: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = run(&url, &args_str);
        assert_eq!(ran.code, Some(0), "{ran:?}");
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert!(lines[0].starts_with("VERSION"), "{ran:?}");
        let versions: Vec<u64> = lines[1..]
            .iter()
            .map(|row| row.split_whitespace().next().expect("cell").parse().expect("version"))
            .collect();
        pages.push(versions);
        if ran.stderr.is_empty() {
            break;
        }
        let hint = ran.stderr.strip_prefix("(older entries: tally history likes --before ");
        let before = hint.and_then(|rest| rest.strip_suffix(")\n")).unwrap_or_else(|| {
            panic!("stderr is not the hint about older entries: {:?}", ran.stderr)
        });
        assert!(pages.len() < 5, "paging does not end: {pages:?}");
        args.truncate(4);
        args.extend(["--before".to_owned(), before.to_owned()]);
    }
    assert_eq!(pages, vec![vec![5, 4], vec![3, 2], vec![1]]);

    // --all: one table, no hint.
    let all = run_ok(&url, &["history", "likes", "--all", "--limit", "2"]);
    assert_eq!(all, table, "--all pages into the same table as one big page");
    assert_eq!(run_ok(&url, &["history", "nothing"]), "nothing: no history\n");
}

#[tokio::test]
async fn history_all_pages_through_every_entry() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);
    for amount in 1..=45 {
        server.ok("increment", json!({"name": "likes", "amount": amount})).await;
    }

    let all = json_lines(&run_ok(&url, &["--json", "history", "likes", "--all", "--limit", "10"]));
    let versions: Vec<u64> =
        all.iter().map(|entry| entry["version"].as_u64().expect("v")).collect();
    assert_eq!(versions, (1..=45).rev().collect::<Vec<u64>>());
    for entry in &all {
        let version = entry["version"].as_i64().expect("version");
        assert_eq!(entry["amount"].as_i64(), Some(version), "{entry}");
        assert_eq!(entry["value"].as_i64(), Some(version * (version + 1) / 2), "{entry}");
    }

    // One page: the entries on stdout, and how to get older ones on stderr (for people; a
    // script reading stdout is not disturbed).
    let ran = run(&url, &["--json", "history", "likes", "--limit", "10"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let versions: Vec<u64> =
        json_lines(&ran.stdout).iter().map(|entry| entry["version"].as_u64().expect("v")).collect();
    assert_eq!(versions, (36..=45).rev().collect::<Vec<u64>>());
    assert_eq!(ran.stderr, "(older entries: tally history likes --before 36)\n");

    let table = run_ok(&url, &["history", "likes", "--all", "--limit", "10"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 46, "one header and 45 rows:\n{table}");
    assert_eq!(lines.iter().filter(|line| line.starts_with("VERSION")).count(), 1);
}

#[tokio::test]
async fn list_prints_a_table_by_prefix_and_pages_with_all() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);
    for index in 0..12 {
        server
            .ok("increment", json!({"name": format!("likes:{index:02}"), "amount": index + 1}))
            .await;
    }
    server.ok("increment", json!({"name": "votes:a"})).await;

    let table = run_ok(&url, &["list", "likes:", "--all", "--limit", "5"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 13, "one header and 12 rows:\n{table}");
    assert!(lines[0].starts_with("NAME") && lines[0].contains("WATCHERS"), "{table}");
    assert!(lines[0].contains("OPS/MIN"), "the rate meter has a column: {table}");
    assert!(lines[1].starts_with("likes:00") && lines[1].contains("1 (v1)"), "{table}");
    assert!(lines[12].starts_with("likes:11") && lines[12].contains("12 (v1)"), "{table}");

    // One page: the counters on stdout, how to get the next page on stderr.
    let ran = run(&url, &["--json", "list", "--limit", "10"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let listed = json_lines(&ran.stdout);
    let names: Vec<&str> =
        listed.iter().map(|counter| counter["name"].as_str().expect("name")).collect();
    assert_eq!(names, (0..10).map(|index| format!("likes:{index:02}")).collect::<Vec<_>>());
    assert_eq!(listed[3]["value"], 4);
    assert_eq!(ran.stderr, "(more: tally list --after likes:09, or --all)\n");
    let rest = json_lines(&run_ok(&url, &["--json", "list", "--after", "likes:09"]));
    assert_eq!(rest.len(), 3);
    assert_eq!(rest[2]["name"], "votes:a");

    assert_eq!(run_ok(&url, &["list", "nothing:"]), "no counters named nothing:…\n");
    let error = run_err(&url, &["list", "bad prefix"], 1);
    assert!(error.contains("prefix") && error.contains("allowed"), "{error}");
    let ran = run(&url, &["list", "--limit", "0"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.contains("1..=1000"), "{ran:?}");
}

#[tokio::test]
async fn delete_needs_yes_removes_the_counter_and_is_safe_to_run_again() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);
    for _ in 0..3 {
        server.ok("increment", json!({"name": "doomed"})).await;
    }
    let ran = run(&url, &["delete", "doomed"]);
    assert_eq!(ran.code, Some(2), "without --yes nothing is sent: {ran:?}");
    assert!(ran.stderr.contains("--yes"), "{ran:?}");
    assert_eq!(server.ok("getValue", json!({"name": "doomed"})).await["version"], 3);

    assert_eq!(
        run_ok(&url, &["delete", "doomed", "--yes"]),
        "deleted doomed (it was at version 3)\n"
    );
    assert_eq!(
        server.ok("getValue", json!({"name": "doomed"})).await,
        json!({"value": 0, "version": 0})
    );
    assert_eq!(
        run_ok(&url, &["delete", "doomed", "--yes"]),
        "doomed is not stored; nothing was deleted\n"
    );
    let answer = json_lines(&run_ok(&url, &["--json", "delete", "doomed", "--yes"]));
    assert_eq!(answer, [json!({"name": "doomed", "deleted": false, "version": 0})]);
    let error = run_err(&url, &["delete", "bad name", "--yes"], 1);
    assert!(error.contains("allowed"), "{error}");
}

#[test]
fn watch_of_an_unreachable_server_exits_3_instead_of_waiting() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let line = run_err(&url_of(addr), &["watch", "likes"], 3);
    assert!(line.contains(&addr.to_string()) && line.contains("tally serve"), "{line}");
}

#[test]
fn an_unreachable_server_exits_3_and_says_where_it_looked() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let url = url_of(addr);
    for args in [
        &["get", "likes"][..],
        &["incr", "likes"],
        &["set", "likes", "3"],
        &["--json", "history", "likes"],
    ] {
        let error = run_err(&url, args, 3);
        assert!(error.contains(&url), "tally {args:?}: {error}");
        assert!(error.contains("tally serve"), "tally {args:?}: {error}");
    }
}

#[tokio::test]
async fn refusals_exit_1_and_say_what_is_allowed() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);

    for args in [
        &["incr", "bad name!"][..],
        &["get", "a/b"],
        &["set", "é", "1"],
        &["--json", "history", "x?y"],
        &["watch", "bad name!"],
    ] {
        let error = run_err(&url, args, 1);
        assert!(error.contains("A-Z a-z 0-9 _ . : -"), "tally {args:?}: {error}");
    }
    let too_long = "n".repeat(129);
    let error = run_err(&url, &["incr", &too_long], 1);
    assert!(error.contains("A-Z a-z 0-9 _ . : -"), "{error}");

    let error = run_err(&url, &["set", "x", "9007199254740992"], 1);
    assert!(error.contains("9007199254740991"), "{error}");
    let error = run_err(&url, &["set", "x", "-9007199254740992"], 1);
    assert!(error.contains("9007199254740991"), "{error}");
    assert_eq!(run_ok(&url, &["get", "x"]), "x: 0  (never written)\n", "nothing was stored");

    run_ok(&url, &["set", "x", "9007199254740991"]);
    let error = run_err(&url, &["incr", "x"], 1);
    assert!(error.contains("9007199254740991"), "{error}");
    let error = run_err(&url, &["incr", "x", "0"], 1);
    assert!(error.contains(">= 1"), "{error}");
    assert_eq!(
        server.ok("getValue", json!({"name": "x"})).await,
        json!({"value": 9_007_199_254_740_991_i64, "version": 1})
    );
}

/// `--expect-version`: the write applies at that version only; at another it exits 1 saying
/// where the counter is, and changes nothing.
#[tokio::test]
async fn a_write_expecting_another_version_exits_1_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);
    run_ok(&url, &["set", "stock", "5", "--expect-version", "0"]);
    let error = run_err(&url, &["decr", "stock", "--expect-version", "0"], 1);
    assert!(
        error.contains("version 1, not the expected 0") && error.contains("version_conflict"),
        "{error}"
    );
    run_ok(&url, &["decr", "stock", "2", "--expect-version", "1"]);
    let error = run_err(&url, &["incr", "stock", "--expect-version", "1"], 1);
    assert!(error.contains("at version 2"), "{error}");
    assert_eq!(
        server.ok("getValue", json!({"name": "stock"})).await,
        json!({"value": 3, "version": 2})
    );
}

#[test]
fn bad_command_lines_and_urls_exit_2() {
    for url in ["ftp://127.0.0.1:8094", "http://127.0.0.1:8094/api", "127.0.0.1:8094"] {
        let error = run_err(url, &["get", "likes"], 2);
        assert!(error.contains(url), "{error}");
        assert!(
            error.contains("http://") && error.contains("https://"),
            "says what is allowed: {error}"
        );
    }
    let error = run_err("ws://example.com", &["watch", "likes"], 2);
    assert!(error.contains("https://"), "{error}");

    // clap's own refusals: exit 2, `error:` first (with usage after it).
    for args in [
        &["incr"][..],
        &["incr", "likes", "-1"],
        &["incr", "likes", "1.5"],
        &["set", "likes"],
        &["history", "likes", "--limit", "0"],
        &["history", "likes", "--limit", "1001"],
        &["completions", "nosuchshell"],
        &["frobnicate"],
    ] {
        let ran = run("http://127.0.0.1:1", args);
        assert_eq!(ran.code, Some(2), "tally {args:?}: {ran:?}");
        assert!(ran.stderr.starts_with("error: "), "tally {args:?}: {ran:?}");
    }
}

#[test]
fn completions_print_a_script_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = command().args(["completions", shell]).output().expect("run");
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(output.stdout).expect("UTF-8");
        for word in ["tally", "watch", "history", "json"] {
            assert!(script.contains(word), "{shell} script does not mention {word}");
        }
    }
}

#[test]
fn completions_into_a_closed_pipe_exit_0() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = command().args(["completions", "bash"]).stdout(writer).output().expect("run");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn watch_prints_every_change_once_in_order_across_a_server_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("tally.db");
    let mut server = Tally::start(&database, &[]);
    let addr = server.addr;
    let mut watcher = Watcher::start(&url_of(addr), &["likes", "--json"], None);

    let mut messages = vec![watcher.json_line_by(Instant::now() + PATIENCE)];
    assert_eq!(messages[0]["type"], "snapshot", "{}", messages[0]);
    assert_eq!(
        (messages[0]["value"].as_i64(), messages[0]["version"].as_u64()),
        (Some(0), Some(0))
    );
    for _ in 0..3 {
        server.ok("increment", json!({"name": "likes"})).await;
    }
    let is_update_of = |message: &Value, version: u64| {
        message["type"] != "resumed" && message["version"].as_u64() == Some(version)
    };
    let deadline = Instant::now() + PATIENCE;
    while !is_update_of(messages.last().expect("message"), 3) {
        messages.push(watcher.json_line_by(deadline));
    }

    server.signal("TERM");
    assert_eq!(server.wait().code(), Some(0), "server exit status");
    drop(server);
    let _restarted = ServerAt::start(&database, addr);
    // Changes right after the restart: replayed after the resume, or live, never both.
    let http = reqwest::Client::new();
    for _ in 0..3 {
        rpc(&http, addr, "increment", json!({"name": "likes"})).await;
    }
    let deadline = Instant::now() + RECONNECT_PATIENCE;
    while !is_update_of(messages.last().expect("message"), 6) {
        messages.push(watcher.json_line_by(deadline));
    }

    let (status, rest) = watcher.interrupt();
    assert_eq!(status.code(), Some(0), "Ctrl-C ends watch with 0");
    messages.extend(rest.iter().map(|line| serde_json::from_str(line).expect("JSON")));
    let resumed: Vec<&Value> =
        messages.iter().filter(|message| message["type"] == "resumed").collect();
    assert!(!resumed.is_empty(), "no resume after the restart: {messages:#?}");
    assert!(resumed.iter().all(|message| message["since"] == 3), "{resumed:?}");
    let updates: Vec<&Value> = messages[1..]
        .iter()
        .filter(|message| message["type"] != "resumed")
        .inspect(|message| assert_eq!(message["type"], "increment", "{message}"))
        .collect();
    let versions: Vec<u64> =
        updates.iter().map(|update| update["version"].as_u64().expect("version")).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6], "every version once, in order");
    for update in updates {
        assert_eq!(update["value"], update["version"], "{update}");
        assert_eq!(update["name"], "likes", "every JSON line names its counter: {update}");
        assert_eq!(update["metadata"]["name"], "likes", "{update}");
    }
    let stderr = watcher.final_stderr();
    assert!(stderr.contains("disconnected: ") && stderr.contains("retrying in"), "{stderr}");
    assert!(!stderr.lines().any(|line| line.starts_with("error")), "{stderr}");
}

#[tokio::test]
async fn watch_since_replays_the_missed_changes_then_goes_live() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    for value in [10, 20, 30, 40, 50] {
        server.ok("setValue", json!({"name": "likes", "value": value})).await;
    }
    let mut watcher =
        Watcher::start(&url_of(server.addr), &["likes", "--since", "2", "--json"], None);
    let deadline = Instant::now() + PATIENCE;
    let mut resumed = watcher.json_line_by(deadline);
    let epoch = resumed.as_object_mut().and_then(|fields| fields.remove("epoch"));
    let epoch = epoch.and_then(|epoch| epoch.as_str().map(str::to_owned)).expect("an epoch");
    assert!(epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()), "{epoch}");
    assert_eq!(resumed, json!({"type": "resumed", "name": "likes", "since": 2, "version": 5}));
    for version in 3..=5 {
        let update = watcher.json_line_by(deadline);
        assert_eq!(
            (update["type"].as_str(), update["version"].as_u64()),
            (Some("setValue"), Some(version))
        );
        assert_eq!(update["value"].as_u64(), Some(version * 10), "{update}");
    }
    server.ok("reset", json!({"name": "likes"})).await;
    let live = watcher.json_line_by(Instant::now() + PATIENCE);
    assert_eq!((live["type"].as_str(), live["version"].as_u64()), (Some("reset"), Some(6)));
    let (status, rest) = watcher.interrupt();
    assert_eq!(status.code(), Some(0));
    assert_eq!(rest, Vec::<String>::new());
}

/// `--epoch` names the database `--since` is a version of: the server's own epoch resumes,
/// another starts over with a resync snapshot, and without `--since` it is refused.
#[tokio::test]
async fn watch_since_with_another_epoch_starts_over_from_a_snapshot() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    for _ in 0..3 {
        server.ok("increment", json!({"name": "likes"})).await;
    }
    let url = url_of(server.addr);
    let mut first = Watcher::start(&url, &["likes", "--json"], None);
    let snapshot = first.json_line_by(Instant::now() + PATIENCE);
    let epoch = snapshot["epoch"].as_str().expect("the snapshot names its epoch").to_owned();
    let _ = first.interrupt();

    let mut same =
        Watcher::start(&url, &["likes", "--since", "1", "--epoch", &epoch, "--json"], None);
    let resumed = same.json_line_by(Instant::now() + PATIENCE);
    assert_eq!((resumed["type"].as_str(), resumed["since"].as_u64()), (Some("resumed"), Some(1)));
    let _ = same.interrupt();

    let other = if epoch == "0000000000000000" { "0000000000000001" } else { "0000000000000000" };
    let mut resynced =
        Watcher::start(&url, &["likes", "--since", "1", "--epoch", other, "--json"], None);
    let snapshot = resynced.json_line_by(Instant::now() + PATIENCE);
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["resync"], true, "{snapshot}");
    assert_eq!(
        (snapshot["version"].as_u64(), snapshot["epoch"].as_str()),
        (Some(3), Some(&*epoch))
    );
    let _ = resynced.interrupt();

    let ran = run(&url, &["watch", "likes", "--epoch", &epoch]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.contains("--since"), "{}", ran.stderr);
    let ran = run(&url, &["watch", "likes", "--since", "1", "--epoch", "XYZ"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.contains("16 lowercase hexadecimal digits"), "{}", ran.stderr);
}

#[tokio::test]
async fn watch_into_a_closed_pipe_exits_0_like_under_head() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    // `tally watch likes | head -n 3`
    let mut watcher = Watcher::start(&url_of(server.addr), &["likes"], Some(3));
    assert_eq!(watcher.line(), "likes: 0  (version 0)");
    server.ok("increment", json!({"name": "likes", "amount": 2})).await;
    server.ok("decrement", json!({"name": "likes", "amount": 3})).await;
    let lines = [watcher.line(), watcher.line()];
    for (line, expected) in
        lines.iter().zip(["increment +2  0 → 2  (version 1)", "decrement -3  2 → -1  (version 2)"])
    {
        // `21:04:05.123  increment +2  0 → 2  (version 1)`
        let (clock, rest) = line.split_at_checked(12).unwrap_or_else(|| panic!("{line}"));
        assert!(clock.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '.'), "{line}");
        assert_eq!(rest, format!("  {expected}"));
    }
    watcher.join_stdout_reader();
    // The next change is written to a pipe nobody reads any more.
    server.ok("increment", json!({"name": "likes"})).await;
    let status = wait_with_deadline(&mut watcher.child, "tally watch");
    let stderr = watcher.final_stderr();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stderr, format!("connected to {}\n", url_of(server.addr)));
}

#[test]
fn one_shot_commands_into_a_closed_pipe_exit_0() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);
    run_ok(&url, &["incr", "likes"]);
    for args in [
        &["get", "likes"][..],
        &["history", "likes"],
        &["--json", "history", "likes", "--all"],
        &["incr", "likes"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let output =
            command().arg("--url").arg(&url).args(args).stdout(writer).output().expect("run");
        assert_eq!(output.status.code(), Some(0), "tally {args:?}: {output:?}");
        assert!(output.stderr.is_empty(), "tally {args:?}: {output:?}");
    }
    // The write was applied even though nobody read its answer.
    assert_eq!(run_ok(&url, &["get", "likes"]).lines().next(), Some("likes: 2"));
}

/// `tally watch a b c` follows several counters over one socket: each JSON line names its
/// counter, each counter's versions arrive once each, in order; text lines name the counter
/// too. `--presence` adds the watcher counts.
#[tokio::test]
async fn watch_several_counters_over_one_socket() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);
    server.ok("increment", json!({"name": "b"})).await;
    let mut watcher = Watcher::start(&url, &["a", "b", "c", "b", "--json"], None);
    let deadline = Instant::now() + PATIENCE;
    let mut snapshots = BTreeMap::new();
    while snapshots.len() < 3 {
        let line = watcher.json_line_by(deadline);
        assert_eq!(line["type"], "snapshot", "{line}");
        snapshots.insert(line["name"].as_str().expect("name").to_owned(), line["version"].clone());
    }
    assert_eq!(
        snapshots,
        BTreeMap::from([("a".into(), json!(0)), ("b".into(), json!(1)), ("c".into(), json!(0))])
    );
    for name in ["c", "a", "c", "b"] {
        server.ok("increment", json!({"name": name})).await;
    }
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..4 {
        let line = watcher.json_line_by(deadline);
        assert_eq!(line["type"], "increment", "{line}");
        let name = line["name"].as_str().expect("a name on every line").to_owned();
        assert_eq!(line["metadata"]["name"], name.as_str(), "{line}");
        versions.entry(name).or_default().push(line["version"].as_u64().expect("version"));
    }
    assert_eq!(
        versions,
        BTreeMap::from([("a".into(), vec![1]), ("b".into(), vec![2]), ("c".into(), vec![1, 2])])
    );
    let (status, rest) = watcher.interrupt();
    assert_eq!(status.code(), Some(0));
    assert_eq!(rest, Vec::<String>::new());

    // Text, with presence: each line names its counter.
    let mut watcher = Watcher::start(&url, &["a", "c", "--presence"], None);
    let deadline = Instant::now() + PATIENCE;
    let (mut snapshots, mut presence) = (Vec::new(), None);
    while snapshots.len() < 2 || presence.is_none() {
        let line = watcher.line_by(deadline);
        if line.contains(" watcher") {
            if line.starts_with("a: ") {
                presence = Some(line);
            }
        } else {
            snapshots.push(line);
        }
    }
    snapshots.sort();
    assert_eq!(snapshots, vec!["a: 1  (version 1)", "c: 2  (version 2)"]);
    assert_eq!(presence.as_deref(), Some("a: 1 watcher, 1 user"));
    server.ok("increment", json!({"name": "a"})).await;
    let change = loop {
        let line = watcher.line_by(deadline);
        if !line.contains("watcher") {
            break line;
        }
    };
    let (_clock, rest) = change.split_once("  ").unwrap_or_else(|| panic!("{change}"));
    assert_eq!(rest, "a  increment +1  1 → 2  (version 2)");
    let (status, _) = watcher.interrupt();
    assert_eq!(status.code(), Some(0));

    let error = run_err(&url, &["watch", "a", "b", "--since", "3"], 2);
    assert!(error.contains("--since"), "{error}");
}

/// Every write carries an idempotency key; a script that runs `tally incr` again with the same
/// `--idempotency-key` (after a timeout, say) applies it once and prints the original answer.
#[tokio::test]
async fn a_write_run_again_with_its_idempotency_key_counts_once() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);
    let args = ["--json", "incr", "likes", "3", "--idempotency-key", "script-run-17"];
    let first = json_lines(&run_ok(&url, &args));
    let again = json_lines(&run_ok(&url, &args));
    assert_eq!(first, again, "the original answer, byte for byte");
    assert_eq!((first[0]["value"].as_i64(), first[0]["version"].as_u64()), (Some(3), Some(1)));
    assert_eq!(
        server.ok("getValue", json!({"name": "likes"})).await,
        json!({"value": 3, "version": 1})
    );
    // Without a key, each run is a new write.
    run_ok(&url, &["incr", "likes", "3"]);
    run_ok(&url, &["incr", "likes", "3"]);
    assert_eq!(server.ok("getValue", json!({"name": "likes"})).await["value"], 9);
    // The same key for another write is refused.
    let error = run_err(&url, &["incr", "likes", "4", "--idempotency-key", "script-run-17"], 1);
    assert!(error.contains("idempotency"), "{error}");
    let ran = run(&url, &["incr", "likes", "--idempotency-key", "has space"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.contains("printable ASCII"), "{ran:?}");
}

/// `tally configure`: bounds that refuse a write past them (exit 1, out_of_bounds, naming the
/// bound), shown by `tally get`, clamp mode's stop at the bound, and a bare configure clearing
/// them.
#[tokio::test]
async fn configure_sets_bounds_that_get_shows_and_writes_respect() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let url = url_of(server.addr);
    let configured = run_ok(&url, &["configure", "seats", "--min", "0", "--max", "2"]);
    assert!(
        configured.contains("bounds: min 0 and max 2 (writes past one are refused)"),
        "{configured}"
    );
    run_ok(&url, &["incr", "seats", "2"]);
    let error = run_err(&url, &["incr", "seats"], 1);
    assert!(error.contains("past its max 2") && error.contains("out_of_bounds"), "{error}");
    let shown = run_ok(&url, &["get", "seats"]);
    assert!(shown.contains("seats: 2") && shown.contains("bounds: min 0 and max 2"), "{shown}");
    let error = run_err(&url, &["configure", "seats", "--max", "1"], 1);
    assert!(error.contains("is at 2, outside the asked max 1"), "{error}");

    run_ok(&url, &["configure", "seats", "--min", "-3", "--max", "2", "--clamp"]);
    let clamped = run_ok(&url, &["decr", "seats", "10"]);
    assert!(clamped.contains("2 → -3") && clamped.contains("clamped"), "{clamped}");
    let json = json_lines(&run_ok(&url, &["--json", "get", "seats"]));
    assert_eq!(json[0]["bounds"], json!({"min": -3, "max": 2, "clamp": true}));

    let cleared = run_ok(&url, &["configure", "seats"]);
    assert!(!cleared.contains("bounds"), "{cleared}");
    run_ok(&url, &["decr", "seats", "10"]);
    assert_eq!(
        server.ok("getValue", json!({"name": "seats"})).await,
        json!({"value": -13, "version": 3})
    );
}
