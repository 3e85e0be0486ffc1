//! The reference servers: `tally-reference` (the least a WebSocket server must do to fan out an
//! update, or to echo a message) started as a child process, a fresh one for each measurement,
//! so that the sockets of one never weigh on the next.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::server::{Memory, memory_of, wait_for_start_line};

/// The reference's fan-out designs (`tally-reference --design`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Design {
    /// A task per watcher, woken by a broadcast channel.
    Tasks,
    /// One loop per worker thread writes to its share of the sockets.
    Loop,
}

impl Design {
    pub(crate) const BOTH: [Design; 2] = [Design::Loop, Design::Tasks];

    pub(crate) fn flag(self) -> &'static str {
        match self {
            Design::Tasks => "tasks",
            Design::Loop => "loop",
        }
    }
}

/// A running `tally-reference`.
pub(crate) struct ReferenceProcess {
    child: Child,
    /// Where its WebSockets connect.
    pub(crate) addr: SocketAddr,
    /// `http://IP:PORT` of its control port.
    control: String,
    http: reqwest::Client,
}

impl ReferenceProcess {
    /// Starts `binary --design design` and waits for its start line.
    pub(crate) fn start(binary: &Path, design: Design) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(["--design", design.flag()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let (addr, control) =
            wait_for_start_line(&mut child, Duration::from_secs(10), "the reference", start_line)?;
        Ok(Self { child, addr, control: format!("http://{control}"), http: reqwest::Client::new() })
    }

    /// Has every watcher sent the update of `version`.
    pub(crate) async fn broadcast(&self, version: u64) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/broadcast/{version}", self.control))
            .send()
            .await
            .context("triggering the reference's broadcast")?
            .error_for_status()
            .context("triggering the reference's broadcast")?;
        Ok(())
    }

    /// Its memory now, from /proc.
    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.child.id())
    }
}

impl Drop for ReferenceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two addresses of `listening on A, control on B, design D`.
fn start_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix("listening on ")?;
    let (sockets, rest) = rest.split_once(", control on ")?;
    let control = rest.split(',').next()?;
    Some((sockets.parse().ok()?, control.parse().ok()?))
}

/// `tally-reference` next to this program (both are built into the same target folder).
pub(crate) fn sibling_reference() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating tally-bench")?;
    let reference = me.with_file_name("tally-reference");
    if !reference.exists() {
        bail!("{} not found: build it (cargo build --release -p tally-bench)", reference.display());
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::start_line;

    #[test]
    fn reads_the_start_line() {
        let line = "listening on 127.0.0.1:4100, control on 127.0.0.1:4101, design Loop";
        let (sockets, control) = start_line(line).expect("a start line");
        assert_eq!((sockets.port(), control.port()), (4100, 4101));
        assert_eq!(start_line("warming up"), None);
    }
}
