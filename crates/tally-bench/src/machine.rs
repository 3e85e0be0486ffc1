//! Facts about the machine during a run that explain noisy figures.

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
    use super::CpuTimes;

    #[test]
    fn steal_is_a_share_of_all_time() {
        let earlier = CpuTimes { total: 1000, steal: 100 };
        let later = CpuTimes { total: 2000, steal: 350 };
        assert_eq!(later.steal_percent_since(&earlier), 25.0);
        assert_eq!(earlier.steal_percent_since(&earlier), 0.0);
    }
}
