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
    let mut server = Tally::start(&database, &[]);

    let (mut acknowledged, refusal) = write_until_refused(&server, "full").await;
    assert!(acknowledged > 0, "nothing was written before the disk filled");
    assert_unavailable(&refusal, "full");
    // Reads go on while writes cannot.
    assert_eq!(
        server.ok("getValue", json!({"name": "full"})).await["value"].as_i64(),
        Some(acknowledged)
    );

    // Room again: the server takes writes by itself, without a restart.
    disk.remount("size=64m");
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
