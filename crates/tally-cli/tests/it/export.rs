//! `tally export` and `tally import` (issue 16, "Backups and moving data"): a SQLite database
//! exported under write load holds every write answered before the export began, moves into
//! the machine's real PostgreSQL and is served from there with the same counters, values,
//! versions and history, under a new epoch; and back into SQLite. Bad input and a wrong target
//! are refused, saying what was wrong, with nothing imported.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::postgres::{connect, fresh_database};
use crate::process::{Tally, tally};

/// (counter, version) → (value, when the answer arrived).
type Answers = Arc<std::sync::Mutex<BTreeMap<(String, u64), (i64, Instant)>>>;

const COUNTERS: [&str; 6] = ["e0", "e1", "e2", "e3", "e4", "e5"];

/// Writes every kind of operation in turn until `stop`, recording each answer.
async fn write_until(server: Arc<Tally>, writer: usize, stop: Arc<AtomicBool>, answers: Answers) {
    let mut i = writer;
    while !stop.load(Ordering::Relaxed) {
        let name = COUNTERS[i % COUNTERS.len()];
        let (procedure, body) = match i % 20 {
            7 => ("setValue", json!({"name": name, "value": i as i64})),
            13 => ("decrement", json!({"name": name, "amount": 3})),
            19 => ("reset", json!({"name": name})),
            _ => ("increment", json!({"name": name, "amount": 1 + i % 4})),
        };
        i += 1;
        let (status, update) = server.call(procedure, body).await.expect("the server answers");
        assert_eq!(status, 200, "{update}");
        let version = update["version"].as_u64().expect("version");
        let value = update["value"].as_i64().expect("value");
        answers.lock().expect("lock").insert((name.to_owned(), version), (value, Instant::now()));
    }
}

/// Runs `tally --json ARGS`, with no database from the environment.
fn run(args: &[&str]) -> std::process::Output {
    tally().arg("--json").args(args).env_remove("TALLY_DATABASE").output().expect("run tally")
}

fn succeeded(output: &std::process::Output) -> Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("one JSON line")
}

fn refused(output: &std::process::Output) -> String {
    assert!(!output.status.success(), "refused: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An export file: its header, and its counter lines by name.
fn read_export(path: &Path) -> (Value, BTreeMap<String, Value>) {
    let text = std::fs::read_to_string(path).expect("read the export");
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().expect("a header")).expect("json");
    let counters = lines
        .map(|line| {
            let counter: Value = serde_json::from_str(line).expect("json");
            (counter["name"].as_str().expect("name").to_owned(), counter)
        })
        .collect();
    (header, counters)
}

fn sqlite_epoch(database: &Path) -> String {
    let conn = rusqlite::Connection::open(database).expect("open");
    conn.query_row("SELECT epoch FROM meta", [], |row| row.get(0)).expect("an epoch")
}

async fn postgres_rows(name: &str, sql: &str) -> Vec<String> {
    let client = connect(name).await.expect("connect");
    let rows = client.query(sql, &[]).await.expect("query");
    rows.iter().map(|row| row.get::<_, String>(0)).collect()
}

/// Checks `server` serves each exported counter as the export has it: value, version, and the
/// history entry for entry.
async fn assert_serves(server: &Tally, counters: &BTreeMap<String, Value>) {
    for (name, exported) in counters {
        let answer = server.ok("getValue", json!({"name": name})).await;
        assert_eq!(answer["value"], exported["value"], "{name}: {answer}");
        assert_eq!(answer["version"], exported["version"], "{name}: {answer}");
        let served = server.history(name).await;
        let kept = exported["history"].as_array().expect("history");
        assert_eq!(served.len(), kept.len(), "{name}: the whole kept history");
        for (served, kept) in served.iter().zip(kept) {
            for field in ["version", "type", "previousValue", "value"] {
                assert_eq!(served[field], kept[field], "{name} {field}: {served} vs {kept}");
            }
            assert_eq!(served.get("amount"), kept.get("amount"), "{name}: {served} vs {kept}");
            assert_eq!(served["timestamp"], kept["at"], "{name}: {served} vs {kept}");
            if let Some(by) = served.get("by") {
                assert_eq!(Some(by), kept.get("by"), "{name}: {served} vs {kept}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_an_export_under_load_moves_to_postgres_and_back_with_its_history() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("tally.db");
    let out = dir.path().join("export.jsonl");
    let server = Arc::new(Tally::start(&database, &[]));
    let answers: Answers = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..12)
        .map(|writer| {
            tokio::spawn(write_until(
                Arc::clone(&server),
                writer,
                Arc::clone(&stop),
                Arc::clone(&answers),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers.lock().expect("lock").len() < 600 {
        assert!(Instant::now() < deadline, "writes are not being answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = answers.lock().expect("lock").len();
    let began = Instant::now();
    let exported = tokio::task::spawn_blocking({
        let (database, out) = (database.clone(), out.clone());
        move || run(&["export", &out.to_string_lossy(), "--database", &database.to_string_lossy()])
    })
    .await
    .expect("export");
    let during = answers.lock().expect("lock").len() - before;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let report = succeeded(&exported);
    assert!(during > 0, "the export ran while the server was writing");
    let source_epoch = sqlite_epoch(&database);
    assert_eq!(report["sourceEpoch"], source_epoch.as_str(), "{report}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an export is readable by its owner only");
    }

    let (header, counters) = read_export(&out);
    assert_eq!(header["format"], "tally-export", "{header}");
    assert_eq!(header["version"], 1, "{header}");
    assert_eq!(header["sourceEpoch"], source_epoch.as_str(), "{header}");
    assert_eq!(header["counters"], COUNTERS.len(), "{header}");
    assert_eq!(counters.len(), COUNTERS.len());
    // Every write answered before the export began is in it, at its version with its value.
    let mut checked = 0;
    for ((name, version), (value, at)) in answers.lock().expect("lock").iter() {
        if *at >= began {
            continue;
        }
        let history = counters[name]["history"].as_array().expect("history");
        let entry = history
            .iter()
            .find(|entry| entry["version"] == *version)
            .unwrap_or_else(|| panic!("{name}: answered version {version} is missing"));
        assert_eq!(entry["value"], *value, "{name} version {version}");
        checked += 1;
    }
    assert!(checked >= 600, "{checked} answered writes checked");
    for (name, counter) in &counters {
        let versions: Vec<u64> = counter["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|entry| entry["version"].as_u64().expect("version"))
            .collect();
        let last = counter["version"].as_u64().expect("version");
        assert_eq!(versions, (1..=last).collect::<Vec<_>>(), "{name}: the whole history, no gap");
    }
    drop(server);

    // Into PostgreSQL, served from there.
    let postgres = fresh_database();
    let imported =
        succeeded(&run(&["import", &out.to_string_lossy(), "--database", &postgres.url]));
    assert_eq!(imported["counters"], COUNTERS.len(), "{imported}");
    let postgres_epoch = postgres_rows(&postgres.name, "SELECT epoch FROM tally.meta").await;
    assert_eq!(imported["epoch"], postgres_epoch[0].as_str(), "{imported}");
    assert_ne!(postgres_epoch[0], source_epoch, "the imported database is another history");
    let on_postgres = Tally::start(Path::new(&postgres.url), &[]);
    assert_serves(&on_postgres, &counters).await;
    let next = on_postgres.ok("increment", json!({"name": "e0"})).await;
    assert_eq!(next["version"].as_u64(), counters["e0"]["version"].as_u64().map(|v| v + 1));

    // And back, exported online from the node's database (to stdout this time).
    let back_out = dir.path().join("back.jsonl");
    let from_postgres = tally()
        .args(["export", "--database", &postgres.url])
        .env_remove("TALLY_DATABASE")
        .output()
        .expect("run tally export");
    assert!(from_postgres.status.success(), "{}", String::from_utf8_lossy(&from_postgres.stderr));
    std::fs::write(&back_out, &from_postgres.stdout).expect("write");
    let (back_header, back) = read_export(&back_out);
    assert_eq!(back_header["sourceEpoch"], postgres_epoch[0].as_str(), "{back_header}");
    let restored = dir.path().join("restored.db");
    let imported = succeeded(&run(&[
        "import",
        &back_out.to_string_lossy(),
        "--database",
        &restored.to_string_lossy(),
    ]));
    assert_eq!(imported["epoch"], sqlite_epoch(&restored).as_str(), "{imported}");
    assert_ne!(sqlite_epoch(&restored), postgres_epoch[0]);
    drop(on_postgres);
    let on_sqlite = Tally::start(&restored, &[]);
    assert_serves(&on_sqlite, &back).await;
    // The round trip changed nothing but e0's one write on PostgreSQL.
    for (name, counter) in &counters {
        if name != "e0" {
            assert_eq!(&back[name], counter, "{name} came back as it left");
        }
    }
    assert_eq!(back["e0"]["version"].as_u64(), next["version"].as_u64());
}

/// A header and one counter line with two operations, as `tally export` writes them.
fn small_export(counter: &str) -> String {
    let header = json!({"format": "tally-export", "version": 1, "sourceEpoch": "0123456789abcdef",
        "exportedAt": "2026-12-03T12:00:00.000Z", "counters": 1});
    format!("{header}\n{counter}\n")
}

const GOOD: &str = r#"{"name":"ok","value":5,"version":2,"createdAt":"2026-12-03T12:00:00.000Z","updatedAt":"2026-12-03T12:00:01.000Z","history":[{"version":1,"type":"increment","amount":2,"previousValue":0,"value":2,"at":"2026-12-03T12:00:00.000Z"},{"version":2,"type":"increment","amount":3,"previousValue":2,"value":5,"at":"2026-12-03T12:00:01.000Z"}]}"#;

#[tokio::test]
async fn issue_16_bad_input_and_a_non_empty_target_are_refused_and_import_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let malformed = dir.path().join("malformed.jsonl");
    std::fs::write(&malformed, small_export(r#"{"name":"ok","value":5,"#)).expect("write");
    let gap = dir.path().join("gap.jsonl");
    std::fs::write(
        &gap,
        small_export(
            &GOOD
                .replace(r#""version":2,"type""#, r#""version":3,"type""#)
                .replace(r#""version":2,"createdAt""#, r#""version":3,"createdAt""#),
        ),
    )
    .expect("write");
    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, small_export(GOOD)).expect("write");

    // Into SQLite: refused, and no file is left.
    let target = dir.path().join("target.db");
    let error = refused(&run(&[
        "import",
        &malformed.to_string_lossy(),
        "--database",
        &target.to_string_lossy(),
    ]));
    assert!(error.contains("line 2: not a counter line"), "{error}");
    assert!(error.contains("nothing was imported"), "{error}");
    let error =
        refused(&run(&["import", &gap.to_string_lossy(), "--database", &target.to_string_lossy()]));
    assert!(error.contains("line 2: counter \"ok\": history jumps from version 1 to 3"), "{error}");
    assert!(!target.exists(), "a refused import leaves no database");

    // Into PostgreSQL: the same refusals, and no counter stored.
    let postgres = fresh_database();
    let error =
        refused(&run(&["import", &malformed.to_string_lossy(), "--database", &postgres.url]));
    assert!(error.contains("line 2: not a counter line"), "{error}");
    let error = refused(&run(&["import", &gap.to_string_lossy(), "--database", &postgres.url]));
    assert!(error.contains("history jumps from version 1 to 3"), "{error}");
    assert!(postgres_rows(&postgres.name, "SELECT name FROM tally.counters").await.is_empty());

    // A database a node is serving is not imported into, even when empty.
    let node = Tally::start(Path::new(&postgres.url), &[]);
    postgres.wait_for_listeners(1).await;
    let error = refused(&run(&["import", &good.to_string_lossy(), "--database", &postgres.url]));
    assert!(error.contains("1 tally serve node(s) are serving it; stop them"), "{error}");
    node.ok("increment", json!({"name": "there"})).await;
    drop(node);
    // The killed node's connections close a moment after it exits.
    postgres.wait_for_listeners(0).await;

    // A database with counters is not imported into: what it holds stays as it was.
    let error = refused(&run(&["import", &good.to_string_lossy(), "--database", &postgres.url]));
    assert!(
        error.contains("already holds 1 counter(s); import only into an empty database"),
        "{error}"
    );
    let names = postgres_rows(&postgres.name, "SELECT name FROM tally.counters").await;
    assert_eq!(names, ["there"]);

    // The good file goes into an empty SQLite database that a server made and served (a
    // server on it now is refused), under a new epoch, and not twice.
    let server = Tally::start(&target, &[]);
    let served_epoch = sqlite_epoch(&target);
    let error = refused(&run(&[
        "import",
        &good.to_string_lossy(),
        "--database",
        &target.to_string_lossy(),
    ]));
    assert!(error.contains("a Tally server is using it"), "{error}");
    drop(server);
    let imported = succeeded(&run(&[
        "import",
        &good.to_string_lossy(),
        "--database",
        &target.to_string_lossy(),
    ]));
    assert_eq!((imported["counters"].as_u64(), imported["entries"].as_u64()), (Some(1), Some(2)));
    assert_eq!(imported["epoch"], sqlite_epoch(&target).as_str(), "{imported}");
    assert_ne!(sqlite_epoch(&target), served_epoch, "the imported database is another history");
    let error = refused(&run(&[
        "import",
        &good.to_string_lossy(),
        "--database",
        &target.to_string_lossy(),
    ]));
    assert!(error.contains("already holds 1 counter(s)"), "{error}");

    // An export never overwrites a file.
    let error = refused(&run(&[
        "export",
        &good.to_string_lossy(),
        "--database",
        &target.to_string_lossy(),
    ]));
    assert!(error.contains("exists already; an export never overwrites a file"), "{error}");
    assert_eq!(std::fs::read_to_string(&good).expect("read"), small_export(GOOD));
}
