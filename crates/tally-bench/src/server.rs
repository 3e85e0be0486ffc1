//! The server under test: a `tally serve` child process on a free loopback port, or a URL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A `tally serve` started for the benchmark, with its own temporary database.
pub(crate) struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    dir: PathBuf,
}

/// Resident and proportional set size of a process, in bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    pub(crate) rss: u64,
    pub(crate) pss: u64,
}

impl ServerProcess {
    /// The folder of its database.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `binary serve` with `extra` flags on a fresh SQLite database and waits for its
    /// start line.
    pub(crate) fn start(binary: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(binary, None, extra)
    }

    /// [`start`](Self::start) on `database` (a PostgreSQL URL that other nodes may share), or on
    /// a fresh SQLite file when `None`.
    pub(crate) fn start_on(
        binary: &Path,
        database: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "tally-bench-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let database = match database {
            Some(url) => std::ffi::OsString::from(url),
            None => dir.join("bench.db").into_os_string(),
        };
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--database"])
            .arg(database)
            .args(extra)
            .env("RUST_LOG", "warn,tally=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let base =
            wait_for_start_line(&mut child, Duration::from_secs(20), "the server", |line| {
                let rest = line.split("listening on ").nth(1)?;
                Some(rest.split(',').next().unwrap_or_default().to_owned())
            })?;
        Ok(Self { child, base, dir })
    }

    /// The server's memory now, from /proc.
    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.child.id())
    }

    /// The CPU time the server has used so far, user and system, over all its threads.
    pub(crate) fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time_of(self.child.id())
    }
}

/// Reads `child`'s stderr until a line that `parse` accepts, within `within`, and returns what
/// it parsed. Lines come through a channel from a thread that also keeps draining the log after
/// the start (so the child never blocks on a full pipe), so that waiting can time out even if
/// the child writes nothing at all.
pub(crate) fn wait_for_start_line<T>(
    child: &mut Child,
    within: Duration,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<T> {
    let stderr = child.stderr.take().with_context(|| format!("{what}'s stderr"))?;
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Once the start line is found nobody listens; the log is still drained.
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + within;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(parsed) = parse(&line) {
                    return Ok(parsed);
                }
            }
            Err(RecvTimeoutError::Timeout) => bail!("{what} did not start in {within:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("{what} exited before it listened"),
        }
    }
}

/// Linux reports a process's times in `/proc` in USER_HZ ticks, which the kernel's ABI fixes at
/// 100 a second whatever the kernel's own tick rate.
const USER_HZ: u64 = 100;

/// The user + system CPU time of process `pid`, every thread included (also ended ones), from
/// `/proc/PID/stat`.
pub(crate) fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    cpu_ticks(&text).map(ticks_to_duration).with_context(|| format!("unexpected {path}: {text:?}"))
}

/// The command name (field 2) and utime + stime of a `/proc/PID/stat` line.
pub(crate) fn comm_and_ticks(stat: &str) -> Option<(&str, u64)> {
    let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?;
    Some((name, cpu_ticks(stat)?))
}

/// CPU ticks (`USER_HZ`) as a duration.
pub(crate) fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2) is
/// in parentheses and may hold spaces, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Whether `binary serve` has the flag `flag` (e.g. `--max-in-flight`): a benchmark may measure
/// an older build, which would refuse a flag it does not know.
pub(crate) fn supports_flag(binary: &Path, flag: &str) -> bool {
    Command::new(binary)
        .args(["serve", "--help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
                .any(|word| word == flag)
        })
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// RSS and PSS of process `pid` (Linux `smaps_rollup`).
pub(crate) fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    Ok(Memory { rss: field("Rss:"), pss: field("Pss:") })
}

/// The `tally` binary next to this one (both are built into the same target folder).
pub(crate) fn sibling_tally() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating tally-bench")?;
    let tally = me.with_file_name("tally");
    if !tally.exists() {
        bail!(
            "{} not found: build it (cargo build --release --bin tally) or pass --tally PATH",
            tally.display()
        );
    }
    Ok(tally)
}

/// The value of an unlabelled gauge or counter (`name`, without `_total`) on the server's
/// `/metrics`, or `None` when it is not there.
pub(crate) async fn metric(
    http: &reqwest::Client,
    base: &str,
    name: &str,
) -> anyhow::Result<Option<f64>> {
    let text = http.get(format!("{base}/metrics")).send().await?.text().await?;
    Ok(text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse::<f64>().ok()
    }))
}

#[cfg(test)]
mod tests {
    use super::{comm_and_ticks, cpu_ticks};

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat = "4242 (tally serve) S 1 4242 4242 0 -1 4194560 2010 0 0 0 731 269 0 0 20 0 5 0 \
                    123 456 789";
        assert_eq!(cpu_ticks(stat), Some(1000));
        assert_eq!(cpu_ticks("4242 (tally) S 1"), None);
        assert_eq!(comm_and_ticks(stat), Some(("tally serve", 1000)));
    }
}
