//! Several `tally serve` nodes on one PostgreSQL database (issue 14), beside one node on
//! PostgreSQL and the single SQLite node, in the same run: the hot counter and the spread
//! counters with the clients spread round-robin over the nodes, the time from a write on one
//! node to watchers on the others, and the CPU time each node and PostgreSQL spend per 1 000
//! operations. On two cores throughput cannot show a cluster scaling; CPU per operation can.
//!
//! Each PostgreSQL run gets a database of its own, created here and dropped after.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tally_client::Client;

use crate::load::{self, Request};
use crate::report::{Goal, Report};
use crate::server::{self, ServerProcess};
use crate::stats;
use crate::watchers::{self, Writer};

/// The sizes of the cluster comparison.
pub(crate) struct Sizes {
    pub(crate) seconds: Duration,
    /// HTTP clients of the hot and the spread load, spread round-robin over the nodes.
    pub(crate) clients: usize,
    pub(crate) spread_counters: u32,
    /// Watchers of the write → other nodes measurement, and its writes.
    pub(crate) watchers: usize,
    pub(crate) updates: u64,
}

/// A PostgreSQL database made for one run, dropped by [`remove`](Self::remove).
pub(crate) struct Database {
    admin: tokio_postgres::Client,
    name: String,
    /// The URL the nodes are given.
    pub(crate) url: String,
}

impl Database {
    /// Creates a fresh database on the server of `admin_url` (a URL of a database to connect
    /// to for that, such as `postgres`).
    pub(crate) async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let admin = connect(admin_url).await?;
        let name = format!("tally_bench_{}_{}", std::process::id(), fastrand::u32(..));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let url = with_database(admin_url, &name);
        Ok(Self { admin, name, url })
    }

    /// Drops the database, and with it any connection a node left behind.
    pub(crate) async fn remove(self) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .await
            .with_context(|| format!("dropping database {}", self.name))
    }
}

/// Connects to PostgreSQL at `url`; the connection is driven by a task of its own.
pub(crate) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("note: PostgreSQL connection ended: {error}");
        }
    });
    Ok(client)
}

/// `url` with its database (the path) replaced by `name`, its query kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |at| at + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// The CPU time (utime + stime, in ticks) of PostgreSQL's processes, by pid: every process
/// whose command name is `postgres` (the postmaster and its WAL writer, checkpointer, …, and
/// the backends), except backends connected to a database other than `database`, so that
/// other users of the same server count as little as can be told apart.
pub(crate) struct PostgresCpu(HashMap<u32, u64>);

impl PostgresCpu {
    pub(crate) fn now(database: &str) -> Self {
        let mut ticks = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Self(ticks) };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(("postgres", cpu)) = server::comm_and_ticks(&stat) else { continue };
            let title = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
                .unwrap_or_default();
            if backend_database(&title).is_some_and(|other| other != database) {
                continue;
            }
            ticks.insert(pid, cpu);
        }
        Self(ticks)
    }

    /// The CPU time spent since `earlier`: by the processes alive now, less what each had then
    /// (a process started since counts whole; one that ended since is not counted).
    pub(crate) fn since(&self, earlier: &PostgresCpu) -> Duration {
        let ticks = self
            .0
            .iter()
            .map(|(pid, now)| now.saturating_sub(earlier.0.get(pid).copied().unwrap_or(0)))
            .sum();
        server::ticks_to_duration(ticks)
    }
}

/// The database a PostgreSQL backend serves, from its process title
/// (`postgres: [CLUSTER: ]USER DATABASE HOST(PORT) STATE`); `None` for the postmaster and the
/// auxiliary processes (`postgres: 15/main: walwriter`, …).
fn backend_database(title: &str) -> Option<&str> {
    let rest = title.strip_prefix("postgres: ")?;
    let mut words: Vec<&str> = rest.split_whitespace().collect();
    if words.first().is_some_and(|word| word.ends_with(':')) {
        words.remove(0);
    }
    match words[..] {
        [_user, database, host, ..] if host.contains('(') || host == "[local]" => Some(database),
        _ => None,
    }
}

/// The store under a run.
#[derive(Clone, Copy)]
enum Setup {
    Sqlite,
    Postgres(usize),
}

impl Setup {
    fn nodes(self) -> usize {
        match self {
            Setup::Sqlite => 1,
            Setup::Postgres(nodes) => nodes,
        }
    }

    fn label(self) -> String {
        match self {
            Setup::Sqlite => "sqlite nodes=1".to_owned(),
            Setup::Postgres(nodes) => format!("postgres nodes={nodes}"),
        }
    }
}

/// Whether PostgreSQL answers at `admin_url`.
pub(crate) async fn reachable(admin_url: &str) -> anyhow::Result<()> {
    let client = connect(admin_url).await?;
    client.simple_query("SELECT 1").await.context("asking PostgreSQL")?;
    Ok(())
}

/// The single SQLite node, one node on PostgreSQL and `nodes` nodes on PostgreSQL, one after
/// the other, each on a fresh database.
pub(crate) async fn compare(
    binary: &Path,
    admin_url: &str,
    nodes: usize,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut setups = vec![Setup::Sqlite, Setup::Postgres(1)];
    if nodes > 1 {
        setups.push(Setup::Postgres(nodes));
    }
    for setup in setups {
        let database = match setup {
            Setup::Sqlite => None,
            Setup::Postgres(_) => Some(Database::create(admin_url).await?),
        };
        let measured = measure(binary, setup, database.as_ref(), sizes, report).await;
        // The nodes are gone by now (they end with `measure`), so nothing holds the database.
        if let Some(database) = database {
            database.remove().await?;
        }
        measured?;
    }
    // What a cluster changes per operation, against one node on the same database.
    if nodes > 1 {
        let case = |setup: Setup| format!("{} clients={}", setup.label(), sizes.clients);
        let (one_node, many_nodes) = (case(Setup::Postgres(1)), case(Setup::Postgres(nodes)));
        for scenario in ["cluster hot", "cluster spread"] {
            for metric in ["nodes CPU s/1000 ops", "postgres CPU s/1000 ops", "ops/s"] {
                let one = report.value(scenario, &one_node, metric);
                let many = report.value(scenario, &many_nodes, metric);
                if let (Some(one), Some(many)) = (one, many) {
                    let ratio = many / one;
                    report.add(scenario, &many_nodes, &format!("{metric} ÷ 1 node"), ratio);
                }
            }
        }
    }
    Ok(())
}

/// Runs `request` from `clients` clients spread over `nodes` for the measurement's seconds,
/// and what the nodes and PostgreSQL spent meanwhile.
async fn run_load(
    nodes: &[ServerProcess],
    postgres: Option<&str>,
    request: &Request,
    clients: usize,
    sizes: &Sizes,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(load::LoadResult, Spent)> {
    let bases: Vec<&str> = nodes.iter().map(|node| node.base.as_str()).collect();
    let before = Sample::now(nodes, postgres).await;
    let result = load::run_over(&bases, request, clients, sizes.seconds, progress).await?;
    let after = Sample::now(nodes, postgres).await;
    progress.finish_and_clear();
    Ok((result, after.since(&before)))
}

/// Starts `setup`'s nodes (on `database` for PostgreSQL) and measures them.
async fn measure(
    binary: &Path,
    setup: Setup,
    database: Option<&Database>,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let url = database.map(|database| database.url.as_str());
    let mut nodes = Vec::with_capacity(setup.nodes());
    for _ in 0..setup.nodes() {
        nodes.push(ServerProcess::start_on(binary, url, &[])?);
    }
    let bases: Vec<&str> = nodes.iter().map(|node| node.base.as_str()).collect();
    let first = Client::new(bases[0])?;
    let postgres = database.map(|database| database.name.as_str());
    let label = setup.label();
    let clients = sizes.clients;

    let name: Arc<str> = Arc::from(format!("clusterhot{}", fastrand::u32(..)));
    let progress = crate::timed_bar(
        sizes.seconds,
        &format!("cluster: {label}, {clients} clients incrementing one counter"),
    );
    let request = Request::Increment(Arc::clone(&name));
    let (result, spent) = run_load(&nodes, postgres, &request, clients, sizes, &progress).await?;
    let stored = first.get_value(&name).await.context("reading the hot counter back")?.value;
    anyhow::ensure!(
        stored == result.ok as i64,
        "{label}: the hot counter holds {stored} but {} increments were acknowledged",
        result.ok
    );
    let case = format!("{label} clients={clients}");
    rows(report, "cluster hot", &case, &result, &spent);

    let prefix: Arc<str> = Arc::from(format!("clusterspread{}", fastrand::u32(..)));
    let count = sizes.spread_counters;
    let progress = crate::timed_bar(
        sizes.seconds,
        &format!("cluster: {label}, {clients} clients over {count} counters"),
    );
    let request = Request::Spread { prefix: Arc::clone(&prefix), count };
    let (result, spent) = run_load(&nodes, postgres, &request, clients, sizes, &progress).await?;
    let names = (0..count).map(|index| format!("{prefix}-{index}")).collect();
    let total = load::total_of(&first, names).await?;
    anyhow::ensure!(
        total == result.ok as i64,
        "{label}: the spread counters hold {total} but {} increments were acknowledged",
        result.ok
    );
    let case = format!("{label} clients={clients}");
    rows(report, "cluster spread", &case, &result, &spent);
    report.add("cluster spread", &case, "counters", f64::from(count));

    // Writes on the first node; watchers on the others (on the only one, for one node).
    let addrs: Vec<SocketAddr> = bases
        .iter()
        .map(|base| base.trim_start_matches("http://").parse())
        .collect::<Result<_, _>>()
        .context("a node's address")?;
    let (watched, whose) = if addrs.len() > 1 {
        (&addrs[1..], "on the other nodes")
    } else {
        (&addrs[..], "on the writer's node")
    };
    let watchers = sizes.watchers;
    let progress =
        crate::bar(watchers as u64, &format!("cluster: {label}, opening {watchers} watchers"));
    let fanout =
        watchers::fanout_over(Writer::Tally(&first), watched, watchers, sizes.updates, &progress)
            .await?;
    progress.finish_and_clear();
    let (p50, p99, max) = stats::percentiles_ms(&fanout.latency);
    let (last, _, _) = stats::percentiles_ms(&fanout.last);
    let case = format!("{label} watchers={watchers} {whose} updates={}", sizes.updates);
    report.add("cluster watch", &case, "write→watcher p50 ms", p50);
    report.add("cluster watch", &case, "write→watcher p99 ms", p99);
    report.add("cluster watch", &case, "write→watcher max ms", max);
    report.add("cluster watch", &case, "write→last watcher p50 ms", last);
    Ok(())
}

/// The figures of one load over the nodes.
fn rows(report: &mut Report, scenario: &str, case: &str, result: &load::LoadResult, cpu: &Spent) {
    let ops = result.ok.max(1) as f64;
    let per_thousand = |spent: Duration| spent.as_secs_f64() * 1000.0 / ops;
    let (p50, p99, _) = stats::percentiles_ms(&result.latency);
    report.add(scenario, case, "ops/s", result.per_second());
    report.add(scenario, case, "latency p50 ms", p50);
    report.add(scenario, case, "latency p99 ms", p99);
    report.add_with(
        scenario,
        case,
        "failed requests",
        result.failed as f64,
        Some(Goal::at_most(0.0)),
    );
    report.add(scenario, case, "value checked = acknowledged", result.ok as f64);
    for (index, spent) in cpu.nodes.iter().enumerate() {
        report.add(
            scenario,
            case,
            &format!("node {} CPU s/1000 ops", index + 1),
            per_thousand(*spent),
        );
    }
    let nodes: Duration = cpu.nodes.iter().sum();
    report.add(scenario, case, "nodes CPU s/1000 ops", per_thousand(nodes));
    if let Some(postgres) = cpu.postgres {
        report.add(scenario, case, "postgres CPU s/1000 ops", per_thousand(postgres));
    }
    if let Some(bench) = cpu.bench {
        report.add(scenario, case, "load generator CPU s/1000 ops", per_thousand(bench));
    }
    let all = nodes + cpu.postgres.unwrap_or_default() + cpu.bench.unwrap_or_default();
    report.add(scenario, case, "all CPU s/1000 ops", per_thousand(all));
    report.add(scenario, case, "CPU cores busy (all)", all.as_secs_f64() / result.seconds);
    if let Some(transactions) = cpu.transactions {
        report.add(scenario, case, "ops per transaction", ops / transactions.max(1.0));
    }
    if let Some(conflicts) = cpu.conflicts {
        report.add(scenario, case, "batch conflicts/1000 ops", conflicts * 1000.0 / ops);
    }
}

/// CPU times and counters at one moment of a run.
struct Sample {
    nodes: Vec<Option<Duration>>,
    postgres: Option<PostgresCpu>,
    bench: Option<Duration>,
    /// Batches that other nodes' commits got ahead of, and transactions, summed over the nodes.
    conflicts: Option<f64>,
    transactions: Option<f64>,
}

/// What a run spent between two samples.
struct Spent {
    nodes: Vec<Duration>,
    postgres: Option<Duration>,
    bench: Option<Duration>,
    conflicts: Option<f64>,
    transactions: Option<f64>,
}

impl Sample {
    async fn now(nodes: &[ServerProcess], postgres: Option<&str>) -> Self {
        let http = reqwest::Client::new();
        // A counter summed over the nodes, `None` when one does not have it.
        let summed = async |name: &str| {
            let mut sum = 0.0;
            for node in nodes {
                sum += server::metric(&http, &node.base, name).await.ok().flatten()?;
            }
            Some(sum)
        };
        let conflicts = summed("tally_batch_conflicts_total").await;
        let transactions = summed("tally_store_transactions_total").await;
        Self {
            nodes: nodes.iter().map(|node| node.cpu_time().ok()).collect(),
            postgres: postgres.map(PostgresCpu::now),
            bench: server::cpu_time_of(std::process::id()).ok(),
            conflicts,
            transactions,
        }
    }

    fn since(&self, earlier: &Sample) -> Spent {
        let nodes = self
            .nodes
            .iter()
            .zip(&earlier.nodes)
            .map(|(now, then)| match (now, then) {
                (Some(now), Some(then)) => now.saturating_sub(*then),
                _ => Duration::ZERO,
            })
            .collect();
        let postgres = match (&self.postgres, &earlier.postgres) {
            (Some(now), Some(then)) => Some(now.since(then)),
            _ => None,
        };
        let bench = self.bench.zip(earlier.bench).map(|(now, then)| now.saturating_sub(then));
        let delta =
            |now: Option<f64>, then: Option<f64>| now.zip(then).map(|(now, then)| now - then);
        let conflicts = delta(self.conflicts, earlier.conflicts);
        let transactions = delta(self.transactions, earlier.transactions);
        Spent { nodes, postgres, bench, conflicts, transactions }
    }
}

#[cfg(test)]
mod tests {
    use super::{backend_database, with_database};

    #[test]
    fn a_url_gets_another_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1/postgres", "b"),
            "postgres://postgres@127.0.0.1/b"
        );
        assert_eq!(with_database("postgres://u@h:5433", "b"), "postgres://u@h:5433/b");
        assert_eq!(
            with_database("postgresql://u:p@h/x?sslmode=disable", "b"),
            "postgresql://u:p@h/b?sslmode=disable"
        );
    }

    #[test]
    fn backends_are_told_from_auxiliary_processes() {
        let backend = "postgres: 15/main: postgres tally_bench_1 127.0.0.1(40312) idle ";
        assert_eq!(backend_database(backend), Some("tally_bench_1"));
        assert_eq!(backend_database("postgres: alice shop [local] SELECT"), Some("shop"));
        assert_eq!(backend_database("postgres: 15/main: walwriter "), None);
        assert_eq!(backend_database("postgres: 15/main: logical replication launcher"), None);
        assert_eq!(backend_database("/usr/lib/postgresql/15/bin/postgres -D /var/lib"), None);
    }
}
