//! Several real `tally serve` processes on one PostgreSQL database, and the clients the cluster
//! tests load them with: watchers on raw version-2 sockets that record every version they are
//! sent (no client library in between to hide a duplicate or a gap), and writers that send
//! keyed increments over HTTP and retry a write whose answer was lost, with the same key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::postgres::{TestDatabase, fresh_database};
use crate::process::{PATIENCE, Tally};

/// Every node keeps the whole history, so every version can be checked at the end and a
/// watcher's resume is always served from history (a resync would be a fault).
const SERVE_FLAGS: [&str; 2] = ["--history-limit", "1000000"];

/// Nodes on a fresh database of their own. When a test fails, each node's last log lines are
/// printed, and the database is dropped after the nodes are gone.
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Tally>,
    pub(crate) database: TestDatabase,
}

impl Cluster {
    /// Starts `count` nodes on a fresh database and waits until each listens for the others'
    /// commits.
    pub(crate) async fn start(count: usize) -> Self {
        Self::start_with(&vec![&[][..]; count]).await
    }

    /// Starts a node for each entry of `flags`, with those flags besides the usual ones.
    pub(crate) async fn start_with(flags: &[&[&str]]) -> Self {
        let database = fresh_database();
        let mut nodes = Vec::new();
        for extra in flags {
            let all: Vec<&str> = SERVE_FLAGS.iter().chain(extra.iter()).copied().collect();
            nodes.push(Tally::start(Path::new(&database.url), &all));
        }
        database.wait_for_listeners(flags.len() as i64).await;
        Self { nodes, database }
    }

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.addr).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (index, node) in self.nodes.iter().enumerate() {
                let log = node.drain_log();
                let start = log.len().saturating_sub(40);
                eprintln!("--- node {index} ({}), last log lines:", node.addr);
                for line in &log[start..] {
                    eprintln!("{line}");
                }
            }
        }
        // The nodes first (killed and reaped), then the database (dropped with FORCE anyway).
        self.nodes.clear();
    }
}

/// What one watcher saw, across all its sockets.
#[derive(Default)]
pub(crate) struct Seen {
    /// Every update version delivered, in arrival order.
    pub(crate) versions: Vec<u64>,
    /// Each (re)subscription: the node and the `since` it resumed after (`None`: a snapshot).
    pub(crate) subscriptions: Vec<(SocketAddr, Option<u64>)>,
    /// How many of them were answered (a snapshot or `resumed`).
    pub(crate) answered: usize,
    /// Versions replayed from history after `resumed` replies, all told.
    pub(crate) replayed: u64,
    /// Anything the protocol forbids here (a resync, a refusal, a frame that does not parse).
    pub(crate) faults: Vec<String>,
}

/// A task following one counter over version-2 sockets, moving to the next node when its node
/// cannot be reached, and resuming after the last version it was sent each time.
pub(crate) struct Watcher {
    pub(crate) name: String,
    /// The node it started on.
    pub(crate) home: SocketAddr,
    pub(crate) seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Subscribes to `name` on `nodes[home]` and returns once the subscription is answered.
    pub(crate) async fn start(name: &str, nodes: Vec<SocketAddr>, home: usize) -> Self {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let task = tokio::spawn(follow(name.to_owned(), nodes.clone(), home, Arc::clone(&seen)));
        let deadline = Instant::now() + PATIENCE;
        while seen.lock().expect("lock").answered == 0 {
            assert!(Instant::now() < deadline, "watcher of {name} not subscribed in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Self { name: name.to_owned(), home: nodes[home], seen, task }
    }

    /// The last version it was sent (0 before any).
    pub(crate) fn latest(&self) -> u64 {
        self.seen.lock().expect("lock").versions.last().copied().unwrap_or(0)
    }

    /// Waits until the watcher was sent version `version` (or a fault), stops it, and checks
    /// that it saw 1..=`version` exactly once each, in order, and nothing it should not have.
    pub(crate) async fn finish(self, version: u64) -> Seen {
        let deadline = Instant::now() + PATIENCE;
        loop {
            {
                let seen = self.seen.lock().expect("lock");
                if seen.versions.last().copied().unwrap_or(0) >= version || !seen.faults.is_empty()
                {
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.task.abort();
        if let Err(error) = self.task.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
        let seen = std::mem::take(&mut *self.seen.lock().expect("lock"));
        let who = format!("watcher of {} started on {}", self.name, self.home);
        assert!(
            seen.faults.is_empty(),
            "{who}: {:?} (subscriptions {:?})",
            seen.faults,
            seen.subscriptions
        );
        if let Some(problem) = sequence_problem(&seen.versions, version) {
            panic!("{who}: {problem}; subscriptions (node, since): {:?}", seen.subscriptions);
        }
        seen
    }
}

/// Why `versions` is not exactly 1..=`last`, or `None` when it is.
pub(crate) fn sequence_problem(versions: &[u64], last: u64) -> Option<String> {
    let first_wrong = (1..=last)
        .zip(versions)
        .position(|(expected, got)| expected != *got)
        .or_else(|| (versions.len() as u64 != last).then(|| versions.len().min(last as usize)))?;
    let from = first_wrong.saturating_sub(3);
    let to = (first_wrong + 5).min(versions.len());
    let mut sorted = versions.to_vec();
    sorted.sort_unstable();
    let distinct = {
        let mut d = sorted.clone();
        d.dedup();
        d
    };
    let missing: Vec<u64> =
        (1..=last).filter(|v| distinct.binary_search(v).is_err()).take(10).collect();
    Some(format!(
        "expected versions 1..={last} once each in order, got {} ({} distinct, {} repeated); first wrong at position {first_wrong}: {:?} (positions {from}..{to}); missing (first 10): {missing:?}",
        versions.len(),
        distinct.len(),
        versions.len() - distinct.len(),
        &versions[from..to],
    ))
}

/// The watcher's task: one socket at a time, resubscribing after the last version seen.
async fn follow(name: String, nodes: Vec<SocketAddr>, mut at: usize, seen: Arc<Mutex<Seen>>) {
    let mut first = true;
    loop {
        let addr = nodes[at];
        match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
            Ok((socket, _)) => {
                watch_on(&name, addr, socket, &mut first, &seen).await;
                // The socket ended: try the same node again first.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                // The node is down (or not yet back): the next one.
                at = (at + 1) % nodes.len();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Follows `name` on one socket until it ends, recording into `seen`.
async fn watch_on(
    name: &str,
    addr: SocketAddr,
    mut socket: Socket,
    first: &mut bool,
    seen: &Mutex<Seen>,
) {
    let mut next_id = 1_u64;
    let mut subscribe = |socket_seen: &Mutex<Seen>, first: bool| {
        let id = next_id;
        next_id += 1;
        let mut seen = socket_seen.lock().expect("lock");
        let since = (!first).then(|| seen.versions.last().copied().unwrap_or(0));
        let mut command = json!({"id": id, "type": "subscribe", "name": name});
        if let Some(since) = since {
            command["since"] = json!(since);
        }
        seen.subscriptions.push((addr, since));
        (id, since, command.to_string())
    };
    let (mut waiting_for, mut since, command) = subscribe(seen, *first);
    if socket.send(Message::text(command)).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else { continue };
        let fault = |what: String| seen.lock().expect("lock").faults.push(what);
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            fault(format!("{addr}: not JSON: {text}"));
            return;
        };
        let kind = frame["type"].as_str().unwrap_or_default();
        let version = frame["version"].as_u64();
        match (frame.get("id").and_then(Value::as_u64), kind) {
            (Some(id), "snapshot") if id == waiting_for && since.is_none() => {
                if version != Some(0) {
                    fault(format!("{addr}: first snapshot at {version:?}, not 0: {text}"));
                }
                *first = false;
                seen.lock().expect("lock").answered += 1;
            }
            (Some(id), "resumed") if id == waiting_for && since.is_some() => {
                if frame["since"].as_u64() != since {
                    fault(format!("{addr}: resumed after {since:?}: {text}"));
                }
                let mut seen = seen.lock().expect("lock");
                seen.answered += 1;
                seen.replayed += version.unwrap_or(0).saturating_sub(since.unwrap_or(0));
            }
            (Some(id), "error") if id == waiting_for && frame["temporary"] == json!(true) => {
                // Storage was away (a PostgreSQL restart): subscribe again in a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let command;
                (waiting_for, since, command) = subscribe(seen, *first);
                if socket.send(Message::text(command)).await.is_err() {
                    return;
                }
            }
            (None, "unsubscribed") if frame["code"] == json!("unavailable") => {
                // Storage failed while catching up: subscribe again after what we have.
                let command;
                (waiting_for, since, command) = subscribe(seen, *first);
                if socket.send(Message::text(command)).await.is_err() {
                    return;
                }
            }
            (None, "increment" | "decrement" | "setValue" | "reset")
                if frame["name"] == json!(name) =>
            {
                match version {
                    Some(version) => seen.lock().expect("lock").versions.push(version),
                    None => fault(format!("{addr}: update without a version: {text}")),
                }
            }
            (None, "presence" | "reconnect") => {}
            _ => fault(format!("{addr}: unexpected frame {text}")),
        }
    }
}

/// Every keyed write the writers got an answer to, and how they got it.
#[derive(Default)]
pub(crate) struct Writes {
    /// Idempotency key → (counter, the node that answered, the answer's text).
    pub(crate) answered: Mutex<BTreeMap<String, (String, SocketAddr, String)>>,
    /// Sends of a write again after its answer was lost (no answer, or a temporary refusal).
    pub(crate) retried: AtomicUsize,
    /// Keys that were answered only by another node than the one first sent to.
    pub(crate) moved: AtomicUsize,
    /// Answers a write must never get.
    pub(crate) wrong: Mutex<Vec<String>>,
    /// Writes refused with "nothing was stored" that were stored all the same (found from
    /// the time their eventual answer is stamped with).
    pub(crate) false_refusals: Mutex<Vec<String>>,
}

impl Writes {
    pub(crate) fn count(&self) -> usize {
        self.answered.lock().expect("lock").len()
    }

    /// How many writes of `counter` were answered: its version, if each counted once.
    pub(crate) fn count_of(&self, counter: &str) -> u64 {
        self.answered.lock().expect("lock").values().filter(|(name, _, _)| name == counter).count()
            as u64
    }
}

/// The load the stop-something-under-it tests share: watchers of each counter on every node,
/// and keyed writers spread over the nodes and the counters.
pub(crate) struct Load {
    pub(crate) watchers: Vec<Watcher>,
    pub(crate) writes: Arc<Writes>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// Starts the watchers (each subscribed before any write), then `writers` writers.
    pub(crate) async fn start(nodes: &[SocketAddr], counters: &[&str], writers: usize) -> Self {
        let mut watchers = Vec::new();
        for home in 0..nodes.len() {
            for counter in counters {
                watchers.push(Watcher::start(counter, nodes.to_vec(), home).await);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(Writes::default());
        let writers = (0..writers)
            .map(|writer| {
                tokio::spawn(write_keyed(
                    nodes.to_vec(),
                    writer % nodes.len(),
                    counters[writer % counters.len()].to_owned(),
                    format!("writer{writer}"),
                    Arc::clone(&stop),
                    Arc::clone(&writes),
                ))
            })
            .collect();
        Self { watchers, writes, writers, stop }
    }

    /// Stops the writers, waits for them, and checks that no write was answered wrongly or
    /// refused as "nothing was stored" when it was stored; hands back the watchers to finish.
    pub(crate) async fn stop_writers(self) -> (Vec<Watcher>, Arc<Writes>) {
        self.stop.store(true, Ordering::Relaxed);
        for writer in self.writers {
            writer.await.expect("writer");
        }
        let writes = self.writes;
        let wrong = writes.wrong.lock().expect("lock").clone();
        assert!(wrong.is_empty(), "writes answered wrongly: {wrong:?}");
        let false_refusals = writes.false_refusals.lock().expect("lock").clone();
        assert!(
            false_refusals.is_empty(),
            "{} writes were answered \"nothing was stored\" yet stored: {false_refusals:?}",
            false_refusals.len()
        );
        (self.watchers, writes)
    }
}

/// Sends keyed increments of `counter` to `nodes[at]`, one after another, until `stop`; each
/// is sent again with its key until it is answered 200: to the same node after a temporary
/// refusal, to the next node when there was no answer.
pub(crate) async fn write_keyed(
    nodes: Vec<SocketAddr>,
    mut at: usize,
    counter: String,
    writer: String,
    stop: Arc<AtomicBool>,
    writes: Arc<Writes>,
) {
    let http = reqwest::Client::builder().timeout(PATIENCE).build().expect("http client");
    for n in 0_u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = format!("{writer}-{n}");
        let first_node = nodes[at];
        let deadline = Instant::now() + PATIENCE * 2;
        // Attempts refused with "nothing was stored": (sent, answered) in ms since the epoch,
        // and the answer.
        let mut refusals: Vec<(i64, i64, String)> = Vec::new();
        loop {
            let target = nodes[at];
            let sent_ms = now_ms();
            let sent = http
                .post(format!("http://{target}/rpc/counter.increment"))
                .header("content-type", "application/json")
                .header("idempotency-key", &key)
                .body(json!({"name": counter, "amount": 1}).to_string())
                .send()
                .await;
            let answer = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.text().await.map(|text| (status, text))
                }
                Err(error) => Err(error),
            };
            match answer {
                Ok((200, text)) => {
                    // A write's operation is stamped when its batch starts, between the
                    // request's arrival and its answer: an answer stamped within a refused
                    // attempt's time was stored by that attempt, whatever it said.
                    let stamped = stamped_ms(&text);
                    for (from, to, refusal) in &refusals {
                        if (*from..*to).contains(&stamped) {
                            writes.false_refusals.lock().expect("lock").push(format!(
                                "{key} at {target}: refused with {refusal}, yet stored then: {text}"
                            ));
                        }
                    }
                    if target != first_node {
                        writes.moved.fetch_add(1, Ordering::Relaxed);
                    }
                    writes
                        .answered
                        .lock()
                        .expect("lock")
                        .insert(key.clone(), (counter.clone(), target, text));
                    break;
                }
                Ok((503, text))
                    if serde_json::from_str::<Value>(&text)
                        .is_ok_and(|body| body["error"]["temporary"] == json!(true)) =>
                {
                    if text.contains("nothing was stored") {
                        refusals.push((sent_ms, now_ms(), text));
                    }
                }
                Ok((status, text)) => {
                    writes
                        .wrong
                        .lock()
                        .expect("lock")
                        .push(format!("{key} at {target}: {status} {text}"));
                    return;
                }
                // No answer: the node is gone (or going); the next one.
                Err(_) => at = (at + 1) % nodes.len(),
            }
            if Instant::now() >= deadline {
                writes.wrong.lock().expect("lock").push(format!("{key}: never answered"));
                return;
            }
            writes.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The time an update's operation was stamped with (its `timestamp`), in ms since the epoch.
fn stamped_ms(answer: &str) -> i64 {
    let answer: Value = serde_json::from_str(answer).expect("JSON answer");
    let timestamp = answer["timestamp"].as_str().expect("timestamp");
    chrono::DateTime::parse_from_rfc3339(timestamp).expect("RFC 3339 timestamp").timestamp_millis()
}

/// Waits until `writes` holds at least `count` answers (failing when the writers stall).
pub(crate) async fn wait_for_writes(writes: &Writes, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    while writes.count() < count {
        assert!(
            writes.wrong.lock().expect("lock").is_empty(),
            "{:?}",
            writes.wrong.lock().expect("lock")
        );
        assert!(
            Instant::now() < deadline,
            "writes stalled at {} answered (waiting for {count})",
            writes.count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The version and value an answer carries.
pub(crate) fn version_and_value(answer: &str) -> (u64, i64) {
    let answer: Value = serde_json::from_str(answer).expect("JSON answer");
    (answer["version"].as_u64().expect("version"), answer["value"].as_i64().expect("value"))
}

/// Checks `counter` on `node` after the writes: its history is versions 1..=N with no gap, each
/// an increment by 1 (so value = version), the answered writes are exactly those versions (each
/// answer its own version, and the stored value it was answered with), and getValue says N.
/// Returns N.
pub(crate) async fn check_counter(node: &Tally, counter: &str, writes: &Writes) -> u64 {
    let mut versions: Vec<u64> = writes
        .answered
        .lock()
        .expect("lock")
        .values()
        .filter(|(name, _, _)| name == counter)
        .map(|(_, _, text)| {
            let (version, value) = version_and_value(text);
            assert_eq!(value, version as i64, "{counter}: answer {text} is not value = version");
            version
        })
        .collect();
    versions.sort_unstable();
    let answered = versions.len();
    versions.dedup();
    assert_eq!(
        versions.len(),
        answered,
        "{counter}: {} answered writes share a version with another (a write answered twice as two, or a false acknowledgement)",
        answered - versions.len()
    );
    let history = node.history(counter).await;
    for (expected, entry) in (1_u64..).zip(&history) {
        assert_eq!(entry["version"].as_u64(), Some(expected), "{counter} on {}: gap", node.addr);
        assert_eq!(entry["value"].as_i64(), Some(expected as i64), "{counter}: {entry}");
    }
    let stored = history.len() as u64;
    assert!(
        versions.iter().copied().eq(1..=stored),
        "{counter} on {}: {answered} answered writes, {stored} stored versions: {}",
        node.addr,
        sequence_problem(&versions, stored).unwrap_or_default()
    );
    let value = node.ok("getValue", json!({"name": counter})).await;
    assert_eq!(
        (value["value"].as_i64(), value["version"].as_u64()),
        (Some(stored as i64), Some(stored)),
        "{counter} on {}: getValue after {answered} answered writes",
        node.addr
    );
    stored
}
