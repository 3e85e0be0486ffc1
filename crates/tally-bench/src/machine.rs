//! Facts about the machine during a run that explain noisy figures.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the disk under `folder` takes to make a small overwrite durable: the median of
/// `rounds` rounds of writing 4 KiB over the start of a scratch file and `fsync`ing it, as a
/// commit to SQLite's write-ahead log does (the bundled SQLite calls `fsync`, not `fdatasync`,
/// so the file's changed times are written too). Every acknowledged write waits for one of
/// these (shared by a whole group commit), so hot-counter figures move with it.
pub(crate) fn sync_latency(folder: &Path, rounds: usize) -> std::io::Result<Duration> {
    let path = folder.join("sync-probe");
    let file = File::options().create(true).write(true).truncate(true).open(&path)?;
    let block = [0x5a_u8; 4096];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        file.write_all_at(&block, 0)?;
        file.sync_all()?;
        times.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// The kernel's slab memory (`Slab:` of `/proc/meminfo`, reclaimable or not) in bytes: where its
/// sockets, their inodes and their TCP state live.
pub(crate) fn kernel_slab_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    slab_of(&meminfo)
}

fn slab_of(meminfo: &str) -> Option<u64> {
    let rest = meminfo.lines().find_map(|line| line.strip_prefix("Slab:"))?;
    let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The 1-minute load average (`/proc/loadavg`): how many tasks wanted a CPU, on average.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// The cumulative CPU time counters of all CPUs, from `/proc/stat` (in clock ticks).
pub(crate) struct CpuTimes {
    total: u64,
    steal: u64,
}

impl CpuTimes {
    /// The counters now, or `None` where `/proc/stat` is not readable.
    pub(crate) fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        // Guest time is already counted in user time.
        let total = fields.iter().take(8).sum();
        Some(Self { total, steal: *fields.get(7)? })
    }

    /// The share of CPU time the host took away between `earlier` and this reading.
    pub(crate) fn steal_percent_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.steal.saturating_sub(earlier.steal) as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::{CpuTimes, sync_latency};

    #[test]
    fn sync_latency_is_measured_and_leaves_nothing_behind() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let latency = sync_latency(folder.path(), 5).expect("a writable folder");
        assert!(latency > std::time::Duration::ZERO);
        assert_eq!(std::fs::read_dir(folder.path()).expect("folder").count(), 0);
    }

    #[test]
    fn steal_is_a_share_of_all_time() {
        let earlier = CpuTimes { total: 1000, steal: 100 };
        let later = CpuTimes { total: 2000, steal: 350 };
        assert_eq!(later.steal_percent_since(&earlier), 25.0);
        assert_eq!(earlier.steal_percent_since(&earlier), 0.0);
    }
}

#[cfg(test)]
mod slab_tests {
    use super::slab_of;

    #[test]
    fn reads_the_slab_line() {
        let meminfo =
            "MemTotal:       24000000 kB\nSlab:             123456 kB\nSReclaimable:      1 kB\n";
        assert_eq!(slab_of(meminfo), Some(123_456 * 1024));
        assert_eq!(slab_of("MemTotal: 1 kB\n"), None);
    }
}
