//! Storage faults caused for real: the database on a small tmpfs that fills up, or is
//! remounted read-only. Tally must answer 503 while the fault lasts, never acknowledge a write
//! it did not commit, and serve again by itself once the fault clears.
//!
//! Mounting needs root (CAP_SYS_ADMIN), which CI has; elsewhere these tests say so and stop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::process::{PATIENCE, Tally, serve_once};

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. "1m"); `None` when this process may not mount.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("dir");
        let mount_point = dir.path().join("disk");
        std::fs::create_dir(&mount_point).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount_point)
            .status()
            .ok()?;
        if !status.success() {
            // CI runs as root and must run these: a skip there would pass quietly.
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs (needs root), and CI must run the storage-fault tests"
            );
            eprintln!("cannot mount a tmpfs here (needs root): storage-fault test not run");
            return None;
        }
        Some(Self { mount_point, _dir: dir })
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.mount_point)
            .status()
            .expect("mount");
        assert!(status.success(), "remount {options}");
    }

    fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
    }
}

/// Increments `name` until the server refuses; returns how many were acknowledged and the
/// refusal. Panics if a refusal never comes.
async fn write_until_refused(server: &Tally, name: &str) -> (i64, Value) {
    let mut acknowledged = 0;
    for _ in 0..100_000 {
        let (status, answer) =
            server.call("increment", json!({"name": name})).await.expect("server answers");
        match status {
            200 => acknowledged += 1,
            503 => return (acknowledged, answer),
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    panic!("the disk never filled up");
}

/// Increments `name` until the server accepts again (the fault cleared); returns how many were
/// acknowledged (1) after the refusals.
async fn write_until_accepted(server: &Tally, name: &str) -> i64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, answer) =
            server.call("increment", json!({"name": name})).await.expect("server answers");
        match status {
            200 => return 1,
            503 => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still refusing after the fault cleared: {answer}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
}

fn assert_not_ready(readiness: &Value, says: &str) {
    assert_eq!(readiness["ready"], false, "{readiness}");
    assert_eq!(readiness["restartRequired"], false, "{readiness}");
    let reason = readiness["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(says), "{readiness}");
}

fn assert_unavailable(answer: &Value, says: &str) {
    assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    assert_eq!(answer["error"]["temporary"], true, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("nothing was stored") && message.contains(says), "{message}");
}

#[tokio::test]
async fn a_full_disk_is_answered_with_503_loses_nothing_and_recovers() {
    let Some(disk) = SmallDisk::mount("1m") else { return };
    let database = disk.path().join("tally.db");
    let started = std::time::Instant::now();
    let mut server = Tally::start(&database, &[]);
    assert_eq!(server.readyz().await.0, 200);

    let (mut acknowledged, refusal) = write_until_refused(&server, "full").await;
    assert!(acknowledged > 0, "nothing was written before the disk filled");
    assert_unavailable(&refusal, "full");
    // Not ready, and it says why; a full disk mends without a restart.
    let (status, readiness) = server.readyz().await;
    assert_eq!(status, 503, "{readiness}");
    assert_not_ready(&readiness, "full");
    // Every refused write failed a commit and a request, but the log has at most one line of
    // each a second.
    for _ in 0..200 {
        let (status, answer) =
            server.call("increment", json!({"name": "full"})).await.expect("answer");
        assert_eq!(status, 503, "{answer}");
    }
    let log = server.drain_log();
    let seconds = started.elapsed().as_secs() as usize + 1;
    for line_of in ["commit failed", "request failed"] {
        let lines = log.iter().filter(|line| line.contains(line_of)).count();
        assert!(
            (1..=seconds).contains(&lines),
            "{lines} lines of {line_of:?} in {seconds} s: {log:#?}"
        );
    }
    // Reads go on while writes cannot.
    assert_eq!(
        server.ok("getValue", json!({"name": "full"})).await["value"].as_i64(),
        Some(acknowledged)
    );

    // Room again: ready again with no write to show it (a probe finds out), and the server
    // takes writes by itself, without a restart.
    disk.remount("size=64m");
    assert_eq!(server.await_readyz(200).await, json!({"ready": true, "restartRequired": false}));
    acknowledged += write_until_accepted(&server, "full").await;
    let value = server.ok("getValue", json!({"name": "full"})).await;
    assert_eq!(value["value"].as_i64(), Some(acknowledged), "a refused write was counted");

    // And all of it is on disk: exactly the acknowledged writes, none of the refused ones.
    server.signal("TERM");
    assert_eq!(server.wait().code(), Some(0));
    let server = Tally::start(&database, &[]);
    let value = server.ok("getValue", json!({"name": "full"})).await;
    assert_eq!(
        (value["value"].as_i64(), value["version"].as_i64()),
        (Some(acknowledged), Some(acknowledged))
    );
}

/// A disk cannot be made read-only under a running server (the kernel refuses while files are
/// open for writing), so this is the start-up case: Tally refuses with a message that says what
/// is wrong, changes nothing, and starts normally once the disk is writable again.
#[tokio::test]
async fn a_read_only_disk_is_refused_at_start_with_a_clear_message() {
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let database = disk.path().join("tally.db");
    let mut server = Tally::start(&database, &[]);
    for _ in 0..5 {
        server.ok("increment", json!({"name": "ro"})).await;
    }
    server.signal("TERM");
    assert_eq!(server.wait().code(), Some(0));

    disk.remount("ro");
    let output = serve_once(&database);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Read-only file system") || stderr.contains("writable"), "{stderr}");
    assert!(stderr.contains(&database.display().to_string()), "{stderr}");

    disk.remount("rw");
    let server = Tally::start(&database, &[]);
    assert_eq!(server.ok("getValue", json!({"name": "ro"})).await["value"].as_i64(), Some(5));
}

/// Issue 16: a server nobody writes to still notices within a second that its disk filled (a
/// probe writes when `/readyz` is asked and no commit said it first), and that it has room
/// again; its writes follow what `/readyz` said.
#[tokio::test]
async fn an_idle_server_notices_its_disk_filling_up_and_emptying() {
    let Some(disk) = SmallDisk::mount("1m") else { return };
    let database = disk.path().join("tally.db");
    let server = Tally::start(&database, &[]);
    for _ in 0..3 {
        server.ok("increment", json!({"name": "idle"})).await;
    }
    assert_eq!(server.readyz().await.0, 200);

    // Another program fills the disk while the server writes nothing.
    let filler = disk.path().join("filler");
    fill(&filler);
    let readiness = server.await_readyz(503).await;
    assert_not_ready(&readiness, "full");
    let (status, answer) = server.call("increment", json!({"name": "idle"})).await.expect("answer");
    assert_eq!(status, 503, "{answer}");
    assert_eq!(
        server.metrics().await.lines().find(|line| line.starts_with("tally_store_ready ")),
        Some("tally_store_ready 0")
    );

    std::fs::remove_file(&filler).expect("free the space");
    server.await_readyz(200).await;
    let value = server.ok("increment", json!({"name": "idle"})).await;
    assert_eq!(value["value"].as_i64(), Some(4), "the refused write was counted: {value}");
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create the filler");
    let block = vec![0xA5_u8; 4096];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(28) => break, // ENOSPC
            Err(error) => panic!("filling the disk: {error}"),
        }
    }
    // What is buffered may not fit either; the disk is full all the same.
    let _ = file.sync_all();
}

/// Issue 16: a node whose PostgreSQL database goes away (it refuses connections, and those it
/// had are ended) is not ready within a second, with no write to show it, and ready again,
/// taking writes, once the database is back.
#[tokio::test]
async fn a_node_whose_database_goes_away_is_not_ready_until_it_is_back() {
    let database = crate::postgres::fresh_database();
    let server = Tally::start(Path::new(&database.url), &[]);
    server.ok("increment", json!({"name": "away"})).await;
    assert_eq!(server.readyz().await.0, 200);

    database.refuse_connections(true);
    let readiness = server.await_readyz(503).await;
    assert_eq!(readiness["restartRequired"], false, "{readiness}");
    assert!(
        readiness["reason"].as_str().unwrap_or_default().contains("storage is unavailable"),
        "{readiness}"
    );
    let (status, answer) = server.call("increment", json!({"name": "away"})).await.expect("answer");
    assert_eq!((status, &answer["error"]["code"]), (503, &json!("unavailable")), "{answer}");

    database.refuse_connections(false);
    server.await_readyz(200).await;
    // The refused write was not stored: the next one makes version 2.
    let update = write_until_accepted_update(&server, "away").await;
    assert_eq!((update["value"].as_i64(), update["version"].as_i64()), (Some(2), Some(2)));
}

/// Increments `name` until the server accepts (a writer reconnecting may refuse the first);
/// returns the update.
async fn write_until_accepted_update(server: &Tally, name: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, answer) =
            server.call("increment", json!({"name": name})).await.expect("server answers");
        if status == 200 {
            return answer;
        }
        assert!(status == 503 && tokio::time::Instant::now() < deadline, "{status}: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
