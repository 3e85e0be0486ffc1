//! A FUSE file system for power-loss tests, in the spirit of LazyFS: it serves a backing folder,
//! but keeps every write to a file (and every size change) in memory until that file is
//! fsynced. [`LazyFs::power_cut`] then drops whatever was not synced and unmounts, so the backing
//! folder holds exactly what a disk with a volatile write cache would still hold after the
//! power went: the synced data, and nothing written after the last sync.
//!
//! What it models, and what not (docs/RELIABILITY.md says the same):
//! - modelled: a volatile cache of unsynced file data, lost whole at the cut; an fsync (or
//!   fdatasync) of a file makes all of its data so far durable;
//! - not modelled: torn or reordered writes within what was unsynced (all of it is lost, none
//!   of it half-kept), lost directory entries (create, unlink and rename reach the backing
//!   folder at once), and anything a real disk's firmware does.
//!
//! Mounting needs root (mount(2) on `/dev/fuse`), or `fusermount3` on the PATH.
//!
//! # Layout
//! - `volatile`: one file's unsynced blocks and size, read through, applied at fsync.
//! - `fs`: the FUSE requests, a passthrough of the backing folder over `volatile`.

mod fs;
mod volatile;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, Config, MountOption};

/// Why a [`LazyFs`] could not be mounted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    #[error("the backing folder {path} cannot be used: {source}")]
    Backing { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot mount a FUSE file system at {mount_point} (needs root, or fusermount3): {source}"
    )]
    Mount { mount_point: PathBuf, source: std::io::Error },
}

/// What a power cut dropped: each file that had unsynced data (its path in the backing
/// folder, or `None` if it was unlinked), with the bytes lost, in whole 4 KiB blocks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CutReport {
    pub dropped: Vec<(Option<PathBuf>, u64)>,
}

impl CutReport {
    pub fn bytes(&self) -> u64 {
        self.dropped.iter().map(|(_, bytes)| bytes).sum()
    }
}

/// A mounted lazy file system. Dropping it cuts the power too.
pub struct LazyFs {
    session: Option<BackgroundSession>,
    state: Arc<Mutex<fs::State>>,
    mount_point: PathBuf,
}

impl std::fmt::Debug for LazyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFs").field("mount_point", &self.mount_point).finish_non_exhaustive()
    }
}

impl LazyFs {
    /// Mounts the file system at `mount_point` (an empty folder), serving `backing`.
    pub fn mount(backing: &Path, mount_point: &Path) -> Result<Self, MountError> {
        let backing = backing
            .canonicalize()
            .map_err(|source| MountError::Backing { path: backing.to_path_buf(), source })?;
        let state = Arc::new(Mutex::new(fs::State::new(backing)));
        let mut config = Config::default();
        config.mount_options =
            vec![MountOption::FSName("tally-faultfs".to_owned()), MountOption::NoAtime];
        let session =
            fuser::spawn_mount(fs::LazyFsImpl { state: Arc::clone(&state) }, mount_point, &config)
                .map_err(|source| MountError::Mount {
                    mount_point: mount_point.to_path_buf(),
                    source,
                })?;
        Ok(Self { session: Some(session), state, mount_point: mount_point.to_path_buf() })
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Bytes a cut would drop now (whole blocks), over all files.
    pub fn unsynced_bytes(&self) -> u64 {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.nodes.values().filter_map(|node| node.unsynced.as_ref()).map(|u| u.held_bytes()).sum()
    }

    /// Cuts the power: every unsynced write is dropped, every later request fails with EIO,
    /// and the file system is unmounted. Stop (and reap) the programs using it first, or the
    /// unmount is lazy and finishes when they close their files.
    pub fn power_cut(mut self) -> CutReport {
        self.cut()
    }

    fn cut(&mut self) -> CutReport {
        let mut report = CutReport::default();
        {
            let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            state.cut = true;
            for node in state.nodes.values_mut() {
                if let Some(unsynced) = node.unsynced.take()
                    && unsynced.held_bytes() > 0
                {
                    report
                        .dropped
                        .push((node.path().map(Path::to_path_buf), unsynced.held_bytes()));
                }
            }
        }
        report.dropped.sort();
        if let Some(session) = self.session.take()
            && session.umount_and_join().is_err()
        {
            // Busy (a file still open): detach it now; the kernel finishes the unmount when
            // the last file is closed, and every request until then fails with EIO.
            let _ = nix::mount::umount2(&self.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
        report
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if self.session.is_some() {
            self.cut();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A mounted LazyFs over a fresh backing folder, or `None` (said why) where this process
    /// cannot mount FUSE; under CI (`CI` set) that is a failure, not a skip.
    fn mounted() -> Option<(tempfile::TempDir, LazyFs)> {
        let dir = tempfile::tempdir().expect("dir");
        let (backing, mount_point) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).expect("backing");
        std::fs::create_dir(&mount_point).expect("mount point");
        match LazyFs::mount(&backing, &mount_point) {
            Ok(lazy) => Some((dir, lazy)),
            Err(error) => {
                assert!(std::env::var_os("CI").is_none(), "CI must run the LazyFs tests: {error}");
                eprintln!("LazyFs test not run: {error}");
                None
            }
        }
    }

    #[test]
    fn a_power_cut_keeps_what_was_fsynced_and_drops_the_rest() {
        let Some((dir, lazy)) = mounted() else { return };
        let mount = lazy.mount_point().to_path_buf();
        let mut synced = std::fs::File::create(mount.join("synced")).expect("create");
        synced.write_all(&[1; 10_000]).expect("write");
        synced.sync_all().expect("fsync");
        synced.write_all(&[2; 5_000]).expect("write after the sync");
        // Read back through the mount: the unsynced part is there until the cut.
        assert_eq!(std::fs::read(mount.join("synced")).expect("read").len(), 15_000);
        let mut never = std::fs::File::create(mount.join("never")).expect("create");
        never.write_all(b"never synced").expect("write");
        drop((synced, never));
        assert!(lazy.unsynced_bytes() > 0);

        let report = lazy.power_cut();
        let names: Vec<_> = report.dropped.iter().map(|(path, _)| path.clone()).collect();
        assert_eq!(names, [Some("never".into()), Some("synced".into())], "{report:?}");
        let backing = dir.path().join("backing");
        assert_eq!(std::fs::read(backing.join("synced")).expect("read"), vec![1; 10_000]);
        // Its entry was made at once (metadata is not volatile), its data never reached it.
        assert_eq!(std::fs::read(backing.join("never")).expect("read"), b"");
    }

    #[test]
    fn an_fdatasync_and_a_truncation_count_like_writes() {
        let Some((dir, lazy)) = mounted() else { return };
        let path = lazy.mount_point().join("file");
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(&[3; 8192]).expect("write");
        file.sync_data().expect("fdatasync");
        file.set_len(100).expect("truncate");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 100);
        drop(file);
        lazy.power_cut();
        let backing = dir.path().join("backing").join("file");
        assert_eq!(
            std::fs::read(backing).expect("read"),
            vec![3; 8192],
            "unsynced truncation kept"
        );
    }
}
