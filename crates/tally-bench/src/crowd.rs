//! A crowd of watchers of one counter spread over the nodes of a cluster, more than one process
//! here may hold (the open-file limit is 20 000 per process, hard): the benchmark runs itself
//! again as child processes, each holding its share of the sockets, and they report on their
//! standard output.
//!
//! The conversation with a child, one line each:
//! - child: `ready TOTAL N0 N1 …`: its watchers are open, each read to its snapshot, `Ni` of
//!   them on node `i`;
//! - parent: `sent VERSION MICROS`: version `VERSION` was written at `MICROS` (µs since the Unix
//!   epoch; parent and children read the same clock);
//! - child: `node I VERSION D,D,…`, the delays in µs from the write to each of its watchers on
//!   node `I` that got the version, for every node, then `done VERSION RECEIVED`;
//! - the parent closes the child's standard input: it ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tally_client::Client;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::cluster::Database;
use crate::report::{Goal, Report};
use crate::server::{self, ServerProcess};
use crate::stats;
use crate::watchers;

/// What a child is asked to do, passed as JSON in `--crowd-child`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChildSpec {
    /// The nodes, in order; watcher `i` goes to node `(i + offset) % len`.
    servers: Vec<SocketAddr>,
    offset: usize,
    /// The watched counter is `{prefix}-0`.
    prefix: String,
    watchers: usize,
    /// Its first source address is 127.0.0.(2 + this).
    first_address: usize,
}

/// How long a child may take to open its watchers, and a watcher to get an update.
const OPEN_TIMEOUT: Duration = Duration::from_secs(600);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Microseconds since the Unix epoch: a clock the parent and its children share.
fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_micros() as u64)
}

/// The sizes of a crowd run.
pub(crate) struct Sizes {
    pub(crate) watchers: usize,
    pub(crate) per_process: usize,
    pub(crate) updates: u64,
}

/// `sizes.watchers` watchers of one counter over `nodes` nodes on a fresh database, held by
/// child processes of at most `sizes.per_process` sockets each; one write at a time on the
/// first node: the time until the last watcher has it, and each node's memory per watcher.
pub(crate) async fn run(
    binary: &Path,
    admin_url: &str,
    nodes: usize,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft) as usize;
    let per_node = sizes.watchers.div_ceil(nodes);
    // Room for the node's database connections, HTTP clients and runtime.
    anyhow::ensure!(
        per_node + 200 <= limit,
        "{} watchers over {nodes} nodes are {per_node} a node, more than the open-file limit \
         ({limit}) lets a process hold: add nodes",
        sizes.watchers
    );
    anyhow::ensure!(
        sizes.per_process + 200 <= limit,
        "--watchers-per-process {} is more than the open-file limit ({limit}) allows",
        sizes.per_process
    );
    let database = Database::create(admin_url).await?;
    let measured = crowd(binary, &database, nodes, sizes, report).await;
    database.remove().await?;
    measured
}

async fn crowd(
    binary: &Path,
    database: &Database,
    nodes: usize,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut servers = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        // A small pool: six nodes' connections must fit PostgreSQL's max_connections (100).
        servers.push(ServerProcess::start_on(
            binary,
            Some(&database.url),
            &["--database-pool", "2"],
        )?);
    }
    let addrs: Vec<SocketAddr> = servers
        .iter()
        .map(|node| node.base.trim_start_matches("http://").parse())
        .collect::<Result<_, _>>()
        .context("a node's address")?;
    let writer = Client::new(&servers[0].base)?;
    let prefix = format!("crowd{}", fastrand::u32(..));
    let name = format!("{prefix}-0");
    writer.increment(&name, 1).await.context("creating the watched counter")?;
    let memory_before =
        servers.iter().map(ServerProcess::memory).collect::<anyhow::Result<Vec<_>>>()?;

    let processes = sizes.watchers.div_ceil(sizes.per_process.max(1)).max(1);
    let addresses = watchers::source_addresses_for(sizes.per_process);
    anyhow::ensure!(
        2 + processes * addresses <= 254,
        "{processes} processes of {} watchers need more than 252 loopback source addresses",
        sizes.per_process
    );
    let me = std::env::current_exe().context("locating tally-bench")?;
    let progress = crate::bar(
        processes as u64,
        &format!("crowd: {} watchers over {nodes} nodes in {processes} processes", sizes.watchers),
    );
    let mut children = Vec::with_capacity(processes);
    for index in 0..processes {
        let share = sizes.watchers / processes + usize::from(index < sizes.watchers % processes);
        let spec = ChildSpec {
            servers: addrs.clone(),
            offset: index,
            prefix: prefix.clone(),
            watchers: share,
            first_address: index * addresses,
        };
        children.push(Watchers::spawn(&me, &spec)?);
    }
    let mut per_node = vec![0_usize; nodes];
    for child in &mut children {
        let line = tokio::time::timeout(OPEN_TIMEOUT, child.line())
            .await
            .context("a watcher process took too long to open its watchers")??;
        let counts = line.strip_prefix("ready ").with_context(|| format!("unexpected {line:?}"))?;
        for (node, count) in counts.split_whitespace().skip(1).enumerate() {
            if let Some(held) = per_node.get_mut(node) {
                *held += count.parse::<usize>().context("a watcher count")?;
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let held: usize = per_node.iter().sum();
    // Let the nodes settle before reading their memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let memory_after =
        servers.iter().map(ServerProcess::memory).collect::<anyhow::Result<Vec<_>>>()?;

    let mut latency = stats::histogram();
    let (mut last, mut last_writer, mut last_others) =
        (stats::histogram(), stats::histogram(), stats::histogram());
    let mut all_received = true;
    let cpu = |children: &[Watchers]| {
        let nodes: Duration = servers.iter().filter_map(|node| node.cpu_time().ok()).sum();
        let watchers: Duration = children
            .iter()
            .filter_map(|child| child.child.id())
            .filter_map(|pid| server::cpu_time_of(pid).ok())
            .sum();
        (nodes, watchers)
    };
    let (nodes_before, watchers_before) = cpu(&children);
    for update in 1..=sizes.updates {
        let version = update + 1;
        let sent = now_micros();
        writer.increment(&name, 1).await.context("the crowd's write")?;
        for child in &mut children {
            child.send(&format!("sent {version} {sent}")).await?;
        }
        let mut slowest = vec![0_u64; nodes];
        let mut received = 0;
        for child in &mut children {
            let got = child.delays(version, |node, delay| {
                stats::record(&mut latency, Duration::from_micros(delay));
                if let Some(slowest) = slowest.get_mut(node) {
                    *slowest = (*slowest).max(delay);
                }
            });
            received += got.await?;
        }
        all_received &= received == held;
        let max = |delays: &[u64]| Duration::from_micros(delays.iter().copied().max().unwrap_or(0));
        stats::record(&mut last, max(&slowest));
        stats::record(&mut last_writer, max(&slowest[..1]));
        if nodes > 1 {
            stats::record(&mut last_others, max(&slowest[1..]));
        }
    }
    let (nodes_after, watchers_after) = cpu(&children);
    for child in children {
        child.finish().await?;
    }

    let case = format!("postgres nodes={nodes} watchers={} processes={processes}", sizes.watchers);
    report.add_with(
        "cluster crowd",
        &case,
        "watchers held, all got every update",
        if all_received { held as f64 } else { 0.0 },
        Some(Goal::at_least(sizes.watchers as f64)),
    );
    report.add("cluster crowd", &case, "updates", sizes.updates as f64);
    let (p50, p99, _) = stats::percentiles_ms(&latency);
    report.add("cluster crowd", &case, "write→watcher p50 ms", p50);
    report.add("cluster crowd", &case, "write→watcher p99 ms", p99);
    let (last_p50, _, last_max) = stats::percentiles_ms(&last);
    report.add("cluster crowd", &case, "write→last watcher p50 ms", last_p50);
    report.add("cluster crowd", &case, "write→last watcher max ms", last_max);
    report.add(
        "cluster crowd",
        &case,
        "write→last watcher on the writer's node p50 ms",
        stats::percentiles_ms(&last_writer).0,
    );
    if nodes > 1 {
        report.add(
            "cluster crowd",
            &case,
            "write→last watcher on the other nodes p50 ms",
            stats::percentiles_ms(&last_others).0,
        );
    }
    // Over the updates alone: what one delivery costs the nodes, and the watchers' processes.
    let deliveries = (held as f64 * sizes.updates as f64).max(1.0);
    let per_delivery = |spent: Duration| spent.as_secs_f64() * 1e6 / deliveries;
    report.add(
        "cluster crowd",
        &case,
        "nodes CPU µs/delivery",
        per_delivery(nodes_after.saturating_sub(nodes_before)),
    );
    report.add(
        "cluster crowd",
        &case,
        "watcher processes CPU µs/delivery",
        per_delivery(watchers_after.saturating_sub(watchers_before)),
    );
    let mut total_growth = 0;
    for (index, ((before, after), watchers)) in
        memory_before.iter().zip(&memory_after).zip(&per_node).enumerate()
    {
        let growth = after.rss.saturating_sub(before.rss);
        total_growth += growth;
        let node = index + 1;
        report.add("cluster crowd", &case, &format!("node {node} watchers"), *watchers as f64);
        report.add(
            "cluster crowd",
            &case,
            &format!("node {node} RSS bytes/watcher"),
            growth as f64 / (*watchers).max(1) as f64,
        );
    }
    report.add(
        "cluster crowd",
        &case,
        "all nodes RSS bytes/watcher",
        total_growth as f64 / held.max(1) as f64,
    );
    Ok(())
}

/// One child process holding watchers.
struct Watchers {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Watchers {
    fn spawn(me: &Path, spec: &ChildSpec) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(me)
            .arg("--crowd-child")
            .arg(serde_json::to_string(spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // If the benchmark fails half-way, no watcher process is left behind.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", me.display()))?;
        let stdin = child.stdin.take().context("the child's stdin")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        Ok(Self { child, stdin, lines: BufReader::new(stdout).lines() })
    }

    async fn line(&mut self) -> anyhow::Result<String> {
        match self.lines.next_line().await.context("reading a watcher process")? {
            Some(line) => Ok(line),
            None => bail!("a watcher process ended early (its errors are above)"),
        }
    }

    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await.context("writing to a watcher process")
    }

    /// Reads the child's report of `version`, handing each delay to `each` with its node;
    /// answers how many watchers got the version.
    async fn delays(
        &mut self,
        version: u64,
        mut each: impl FnMut(usize, u64),
    ) -> anyhow::Result<usize> {
        loop {
            let line = tokio::time::timeout(DELIVERY_TIMEOUT * 2, self.line())
                .await
                .context("a watcher process did not report")??;
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("node"), Some(node), Some(reported)) => {
                    anyhow::ensure!(reported.parse::<u64>()? == version, "unexpected {line:?}");
                    let node: usize = node.parse()?;
                    for delay in words.next().unwrap_or_default().split(',') {
                        if !delay.is_empty() {
                            each(node, delay.parse()?);
                        }
                    }
                }
                (Some("done"), Some(reported), Some(received)) => {
                    anyhow::ensure!(reported.parse::<u64>()? == version, "unexpected {line:?}");
                    return Ok(received.parse()?);
                }
                _ => bail!("unexpected line from a watcher process: {line:?}"),
            }
        }
    }

    /// Closes the child's input and waits for it to end.
    async fn finish(self) -> anyhow::Result<()> {
        let Self { mut child, stdin, lines } = self;
        drop(stdin);
        drop(lines);
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("a watcher process did not end")??;
        anyhow::ensure!(status.success(), "a watcher process failed: {status}");
        Ok(())
    }
}

/// The child's side: opens its watchers, says so, then reports each version the parent names.
pub(crate) async fn child(spec: &str) -> anyhow::Result<()> {
    let spec: ChildSpec = serde_json::from_str(spec).context("the --crowd-child spec")?;
    let nodes = spec.servers.len();
    anyhow::ensure!(nodes > 0, "no servers to watch");
    watchers::first_source_address(spec.first_address);
    let mut servers = spec.servers.clone();
    servers.rotate_left(spec.offset % nodes);
    let sockets =
        watchers::open_many_over(&servers, &spec.prefix, 1, spec.watchers, &ProgressBar::hidden())
            .await?;
    let (arrivals_tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let mut counts = vec![0_usize; nodes];
    let mut tasks = Vec::with_capacity(sockets.len());
    for (_, mut socket) in sockets {
        let peer = socket.get_ref().peer_addr().context("a watcher's server")?;
        let node = spec.servers.iter().position(|server| *server == peer).unwrap_or(0);
        counts[node] += 1;
        let arrivals = arrivals_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(version) = watchers::next_update(&mut socket).await {
                if arrivals.send((node, version, now_micros())).is_err() {
                    break;
                }
            }
        }));
    }
    drop(arrivals_tx);
    let counts_text: Vec<String> = counts.iter().map(ToString::to_string).collect();
    let mut out = tokio::io::stdout();
    out.write_all(format!("ready {} {}\n", spec.watchers, counts_text.join(" ")).as_bytes())
        .await?;
    out.flush().await?;

    // Arrivals by version, kept until the parent says when that version was written.
    let mut by_version: HashMap<u64, Vec<(usize, u64)>> = HashMap::new();
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        let mut words = command.split_whitespace();
        let (Some("sent"), Some(version), Some(sent)) = (words.next(), words.next(), words.next())
        else {
            bail!("unexpected command {command:?}");
        };
        let (version, sent): (u64, u64) = (version.parse()?, sent.parse()?);
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        while by_version.get(&version).map_or(0, Vec::len) < spec.watchers {
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some((node, got, at))) => by_version.entry(got).or_default().push((node, at)),
                // Every watcher's socket ended, or time is up: report what came.
                Ok(None) | Err(_) => break,
            }
        }
        let got = by_version.remove(&version).unwrap_or_default();
        let mut report = String::new();
        for node in 0..nodes {
            let delays: Vec<String> = got
                .iter()
                .filter(|(at_node, _)| *at_node == node)
                .map(|(_, at)| at.saturating_sub(sent).to_string())
                .collect();
            report.push_str(&format!("node {node} {version} {}\n", delays.join(",")));
        }
        report.push_str(&format!("done {version} {}\n", got.len()));
        out.write_all(report.as_bytes()).await?;
        out.flush().await?;
    }
    for task in tasks {
        task.abort();
    }
    Ok(())
}
