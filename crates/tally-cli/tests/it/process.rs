//! Runs `tally serve` as a child process and talks to it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for something that should happen at once.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// A running `tally serve`.
pub(crate) struct Tally {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Every line the server wrote to stderr after its start line (in a mutex so that a
    /// `Tally` can be shared between tasks).
    pub(crate) log: std::sync::Mutex<mpsc::Receiver<String>>,
    http: reqwest::Client,
}

pub(crate) fn tally() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally"))
}

impl Tally {
    /// Starts `tally serve` on a free port with its database at `database`.
    pub(crate) fn start(database: &Path, extra: &[&str]) -> Self {
        let mut child = tally()
            .args(["serve", "--listen", "127.0.0.1:0", "--database"])
            .arg(database)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally");
        let stderr = child.stderr.take().expect("stderr");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let addr = loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!("tally did not log its start line; status {:?}", child.try_wait())
                });
            let after_scheme = line
                .split("listening on http://")
                .nth(1)
                .or_else(|| line.split("listening on https://").nth(1));
            if let Some(rest) = after_scheme {
                let addr = rest.split(',').next().expect("address");
                assert!(line.contains("storing counters in"), "{line}");
                break addr.parse().expect("socket address");
            }
        };
        Self { child, addr, log: std::sync::Mutex::new(lines), http: reqwest::Client::new() }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the server.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit.
    pub(crate) fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "tally did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server has logged since its start line (or since the last call).
    pub(crate) fn drain_log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").try_iter().collect()
    }

    pub(crate) async fn call(
        &self,
        procedure: &str,
        body: Value,
    ) -> Result<(u16, Value), reqwest::Error> {
        let response = self
            .http
            .post(format!("http://{}/rpc/counter.{procedure}", self.addr))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = response.status().as_u16();
        let answer = response.json().await?;
        Ok((status, answer))
    }

    /// `GET /metrics`, as text.
    pub(crate) async fn metrics(&self) -> String {
        let response =
            self.http.get(format!("http://{}/metrics", self.addr)).send().await.expect("metrics");
        response.text().await.expect("metrics text")
    }

    /// `GET /readyz`: its status and body.
    pub(crate) async fn readyz(&self) -> (u16, Value) {
        let response =
            self.http.get(format!("http://{}/readyz", self.addr)).send().await.expect("readyz");
        let status = response.status().as_u16();
        (status, response.json().await.expect("readyz body"))
    }

    /// Asks `/readyz` until it answers `status` (the store's state changed), and returns that
    /// answer; panics if it does not within [`PATIENCE`].
    pub(crate) async fn await_readyz(&self, status: u16) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (now, answer) = self.readyz().await;
            if now == status {
                return answer;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz still answers {now} ({answer}), not {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn ok(&self, procedure: &str, body: Value) -> Value {
        let (status, answer) = self.call(procedure, body.clone()).await.expect("request");
        assert_eq!(status, 200, "{procedure} {body}: {answer}");
        answer
    }

    /// The whole kept history of `name`, oldest first, paging with `next`.
    pub(crate) async fn history(&self, name: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut before: Option<Value> = None;
        loop {
            let mut body = serde_json::json!({"name": name, "limit": 1000});
            if let Some(before) = &before {
                body["before"] = before.clone();
            }
            let page = self.ok("getHistory", body).await;
            entries.extend(page["entries"].as_array().expect("entries").iter().cloned());
            match page.get("next") {
                Some(next) => before = Some(next.clone()),
                None => break,
            }
        }
        entries.reverse();
        entries
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every answered write, as (counter, version) → value.
pub(crate) type Answered =
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<(String, u64), i64>>>;

/// Increments `counters` in turn (by `writer + 1`) until the server stops answering; records
/// every answered write in `answered`. A write in flight when the server died may or may not
/// have been committed, so it is not recorded.
pub(crate) async fn write_until_killed(
    server: std::sync::Arc<Tally>,
    counters: &[&str],
    writer: usize,
    answered: Answered,
) {
    for i in 0_usize.. {
        let name = counters[(writer + i) % counters.len()];
        match server
            .call("increment", serde_json::json!({"name": name, "amount": writer + 1}))
            .await
        {
            Ok((200, update)) => {
                let version = update["version"].as_u64().expect("version");
                let value = update["value"].as_i64().expect("value");
                answered.lock().expect("lock").insert((name.to_owned(), version), value);
            }
            Ok((status, answer)) => panic!("unexpected answer {status}: {answer}"),
            Err(_) => return,
        }
    }
}

/// After a restart: every answered write is stored with the value it was answered with, versions
/// have no gap, history chains from 0, and the current value is the last entry's.
pub(crate) async fn check_storage(
    server: &Tally,
    counters: &[&str],
    answered: &std::collections::BTreeMap<(String, u64), i64>,
) {
    for &name in counters {
        let history = server.history(name).await;
        let mut running = 0;
        for (expected_version, entry) in (1_u64..).zip(&history) {
            assert_eq!(
                entry["version"].as_u64(),
                Some(expected_version),
                "{name}: versions have a gap"
            );
            assert_eq!(
                entry["previousValue"].as_i64(),
                Some(running),
                "{name}: history does not chain"
            );
            running = entry["value"].as_i64().expect("value");
            if let Some(value) = answered.get(&(name.to_owned(), expected_version)) {
                assert_eq!(
                    running, *value,
                    "{name} v{expected_version}: stored value differs from the answer"
                );
            }
        }
        let stored_versions = history.len() as u64;
        let last_answered =
            answered.range((name.to_owned(), 0)..=(name.to_owned(), u64::MAX)).next_back();
        if let Some(((_, version), _)) = last_answered {
            assert!(*version <= stored_versions, "{name}: answered version {version} lost");
        }
        let current = server.ok("getValue", serde_json::json!({"name": name})).await;
        assert_eq!(
            (current["value"].as_i64(), current["version"].as_u64()),
            (Some(running), Some(stored_versions))
        );
    }
}

/// Runs `tally serve` on `database` once, to its end (for start-up refusals).
pub(crate) fn serve_once(database: &Path) -> std::process::Output {
    tally()
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(database)
        .output()
        .expect("run tally")
}
