//! `tally backup`: a copy taken while writers keep the server busy holds every write answered
//! before it started, passes as a Tally database when served, and has an epoch of its own;
//! refusals leave nothing behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::process::{Tally, tally};

/// (counter, version) → (value, when the answer arrived).
type Answers = Arc<std::sync::Mutex<BTreeMap<(String, u64), (i64, Instant)>>>;

const COUNTERS: [&str; 8] = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"];

async fn write_until(server: Arc<Tally>, writer: usize, stop: Arc<AtomicBool>, answers: Answers) {
    let mut i = writer;
    while !stop.load(Ordering::Relaxed) {
        let name = COUNTERS[i % COUNTERS.len()];
        i += 1;
        let (status, update) =
            server.call("increment", json!({"name": name})).await.expect("the server answers");
        assert_eq!(status, 200, "{update}");
        let version = update["version"].as_u64().expect("version");
        let value = update["value"].as_i64().expect("value");
        answers.lock().expect("lock").insert((name.to_owned(), version), (value, Instant::now()));
    }
}

fn epoch_in(database: &Path) -> String {
    let conn = rusqlite::Connection::open(database).expect("open");
    conn.query_row("SELECT epoch FROM meta", [], |row| row.get(0)).expect("an epoch")
}

fn backup(database: &Path, out: &Path) -> std::process::Output {
    tally()
        .args(["--json", "backup"])
        .arg(out)
        .arg("--database")
        .arg(database)
        .env_remove("TALLY_DATABASE")
        .output()
        .expect("run tally backup")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_serves_every_write_answered_before_it_began() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("tally.db");
    let out = dir.path().join("backup.db");
    let server = Arc::new(Tally::start(&database, &[]));
    let answers: Answers = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..16)
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
    while answers.lock().expect("lock").len() < 500 {
        assert!(Instant::now() < deadline, "writes are not being answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let before = answers.lock().expect("lock").len();
    let began = Instant::now();
    let ran = tokio::task::spawn_blocking({
        let (database, out) = (database.clone(), out.clone());
        move || backup(&database, &out)
    })
    .await
    .expect("backup");
    let took = began.elapsed();
    let during = answers.lock().expect("lock").len() - before;
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    // The writers go on a little after the backup: those writes are not in it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    eprintln!(
        "backup took {took:?} while {during} writes were answered ({:.0}/s)",
        during as f64 / took.as_secs_f64().max(0.001)
    );
    assert!(during > 0, "the backup ran while the server was writing");

    let report: Value = serde_json::from_slice(&ran.stdout).expect("one JSON line");
    assert_eq!(report["integrity"], "ok", "{report}");
    assert_eq!(report["counters"], COUNTERS.len(), "{report}");
    let source_epoch = epoch_in(&database);
    assert_eq!(report["sourceEpoch"], source_epoch.as_str(), "{report}");
    assert_eq!(report["epoch"], epoch_in(&out).as_str(), "{report}");
    assert_ne!(epoch_in(&out), source_epoch, "the copy has an epoch of its own");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup is readable by its owner only");
    }
    let answers = answers.lock().expect("lock").clone();
    drop(server);

    // Restored: the copy served as it is.
    let restored = Tally::start(&out, &[]);
    let mut checked = 0;
    for name in COUNTERS {
        let history = restored.history(name).await;
        let stored: BTreeMap<u64, i64> = history
            .iter()
            .map(|entry| {
                (
                    entry["version"].as_u64().expect("version"),
                    entry["value"].as_i64().expect("value"),
                )
            })
            .collect();
        let versions: Vec<u64> = stored.keys().copied().collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>(), "{name}: a gap");
        for ((counter, version), (value, at)) in &answers {
            if counter == name && *at < began {
                assert_eq!(
                    stored.get(version),
                    Some(value),
                    "{name}: answered version {version} is missing"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 500, "{checked} answered writes checked");
    // It takes writes, under its own epoch.
    let next = restored.ok("increment", json!({"name": "b0"})).await;
    assert!(next["version"].as_u64().is_some(), "{next}");
}

#[test]
fn a_refused_backup_says_why_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("missing.db");
    let out = dir.path().join("out.db");
    let ran = backup(&missing, &out);
    assert_eq!(ran.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ran.stderr).contains("there is no database at"), "{ran:?}");
    assert!(!out.exists());

    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .and_then(|conn| conn.execute_batch("CREATE TABLE t (x)"))
        .expect("another program's database");
    let ran = backup(&foreign, &out);
    assert_eq!(ran.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ran.stderr).contains("not a Tally database"), "{ran:?}");
    assert!(!out.exists());

    let database = dir.path().join("tally.db");
    drop(Tally::start(&database, &[]));
    std::fs::write(&out, b"keep me").expect("an existing file");
    let ran = backup(&database, &out);
    assert_eq!(ran.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ran.stderr).contains("exists already"), "{ran:?}");
    assert_eq!(std::fs::read(&out).expect("read"), b"keep me", "an existing file is untouched");

    let ran = tally()
        .args(["backup", "x.db", "--database", "postgres://postgres@127.0.0.1/db"])
        .output()
        .expect("run");
    assert_eq!(ran.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&ran.stderr).contains("pg_dump"), "{ran:?}");
}

/// A backup's new database epoch covers every name: the epoch a deleted name was given in the
/// live database is not carried into the copy, so a client holding it resyncs there too.
#[tokio::test]
async fn a_backup_drops_the_epochs_of_deleted_names() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("tally.db");
    let server = Tally::start(&database, &[]);
    for _ in 0..2 {
        server.call("increment", json!({"name": "gone"})).await.expect("the server answers");
    }
    let (status, deleted) =
        server.call("delete", json!({"name": "gone"})).await.expect("the server answers");
    assert_eq!((status, deleted["deleted"].as_bool()), (200, Some(true)), "{deleted}");
    server.call("increment", json!({"name": "gone"})).await.expect("the server answers");
    let epochs = |path: &Path| -> i64 {
        let conn = rusqlite::Connection::open(path).expect("open");
        conn.query_row("SELECT count(*) FROM counter_epochs", [], |row| row.get(0)).expect("count")
    };
    assert_eq!(epochs(&database), 1, "the live database keeps the deleted name's epoch");
    let out = dir.path().join("copy.db");
    let ran = backup(&database, &out);
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert_eq!(epochs(&out), 0, "the copy's new epoch covers every name");
    assert_ne!(epoch_in(&out), epoch_in(&database));
    drop(server);
}

fn restore(backup: &Path, database: &Path) -> std::process::Output {
    tally()
        .args(["--json", "restore"])
        .arg(backup)
        .arg("--database")
        .arg(database)
        .env_remove("TALLY_DATABASE")
        .output()
        .expect("run tally restore")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_restore_of_a_backup_is_a_history_of_its_own() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("tally.db");
    let copy = dir.path().join("backup.db");
    {
        let server = Tally::start(&database, &[]);
        for _ in 0..3 {
            server.ok("increment", json!({"name": "seats"})).await;
        }
    }
    let ran = backup(&database, &copy);
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));

    let first = dir.path().join("first.db");
    let second = dir.path().join("second.db");
    for restored in [&first, &second] {
        let ran = restore(&copy, restored);
        assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
        let report: Value = serde_json::from_slice(&ran.stdout).expect("one JSON line");
        assert_eq!(report["counters"], 1, "{report}");
        assert_eq!(report["sourceEpoch"], epoch_in(&copy).as_str(), "{report}");
        assert_eq!(report["epoch"], epoch_in(restored).as_str(), "{report}");
    }
    let epochs = [epoch_in(&database), epoch_in(&copy), epoch_in(&first), epoch_in(&second)];
    for (i, a) in epochs.iter().enumerate() {
        for b in &epochs[i + 1..] {
            assert_ne!(a, b, "every copy and restore has an epoch of its own: {epochs:?}");
        }
    }
    // The restore holds the backup's counters.
    let server = Tally::start(&second, &[]);
    let value = server.ok("getValue", json!({"name": "seats"})).await;
    assert_eq!(value["value"], 3, "{value}");
    assert_eq!(value["version"], 3, "{value}");
    drop(server);

    // Never over a database, nor over a write-ahead log an old one left.
    let ran = restore(&copy, &first);
    assert_eq!(ran.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ran.stderr).contains("exists already"), "{ran:?}");
    let moved = dir.path().join("moved.db");
    std::fs::write(dir.path().join("moved.db-wal"), b"an old log").expect("a leftover log");
    let ran = restore(&copy, &moved);
    assert_eq!(ran.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ran.stderr).contains("moved.db-wal exists"), "{ran:?}");
    assert!(!moved.exists(), "a refused restore makes nothing");
}
