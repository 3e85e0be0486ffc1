//! `tally-bench`: measures a Tally server the way its users load it, next to references taken
//! in the same run on the same machine, and prints a table (or JSON).
//!
//! It starts its own `tally serve` (the release binary next to it) on a free loopback port with
//! a fresh database, unless `--url` points at a running server.

mod calls;
mod cluster;
mod conflation;
mod crowd;
mod load;
mod machine;
mod memory;
mod presence;
mod reference;
mod report;
mod server;
mod soak;
mod socket;
mod stats;
mod watchers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tally_client::Client;

use crate::calls::Replies;
use crate::load::Request;
use crate::reference::{Design, ReferenceProcess};
use crate::report::{Goal, Report};
use crate::server::ServerProcess;
use crate::watchers::Writer;

/// Benchmarks a Tally server: hot counter (HTTP and socket calls), spread writes, fan-out, idle
/// watchers, memory per subscription, conflation, presence, cold paths.
#[derive(Debug, Parser)]
#[command(name = "tally-bench", version, about)]
struct Args {
    /// Benchmark this running server instead of starting one (memory figures need a local pid,
    /// so the idle scenario is skipped).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// The `tally` binary to start (default: the one next to this program).
    #[arg(long, value_name = "PATH")]
    tally: Option<PathBuf>,
    /// A seconds-long smoke run with small sizes (what CI runs).
    #[arg(long)]
    quick: bool,
    /// Seconds per load measurement (default 10, or 1 with --quick).
    #[arg(long, value_name = "S")]
    seconds: Option<u64>,
    /// Client counts for the hot scenario (default 1,8,32,128, or 8 with --quick) and the
    /// calls scenario (default 32, or 4 with --quick).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    clients: Vec<usize>,
    /// Calls each socket keeps in flight in the calls scenario.
    #[arg(long, default_value_t = 16, value_name = "N")]
    window: usize,
    /// Only these scenarios (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Minutes the soak scenario runs (only with --only soak).
    #[arg(long, default_value_t = 10, value_name = "MINUTES")]
    soak_minutes: u64,
    /// Seconds between the soak's reconnect storms (default: a quarter of the run, at most 60).
    #[arg(long, value_name = "SECONDS")]
    soak_storm_seconds: Option<u64>,
    /// Watchers in the soak scenario.
    #[arg(long, default_value_t = 2_000, value_name = "N")]
    soak_watchers: usize,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Compare N `tally serve` nodes on one PostgreSQL database with one node on PostgreSQL and
    /// the single SQLite node (each on a fresh database): the hot counter and the spread
    /// counters with the clients spread over the nodes, a write on one node to watchers on the
    /// others, CPU per 1 000 operations by each node and by PostgreSQL. Other scenarios then run
    /// only when named in --only. `--quick` runs this with 2 nodes, briefly.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    cluster: Option<u16>,
    /// With --cluster: instead of the comparison, W watchers of one counter spread over the N
    /// nodes, held by child processes of this program (the open-file limit caps each process),
    /// and one write at a time on the first node: the time until the last watcher has it, and
    /// each node's memory per watcher.
    #[arg(long, value_name = "W", requires = "cluster")]
    watchers: Option<usize>,
    /// Watcher sockets each child process of --watchers holds at most.
    #[arg(long, default_value_t = 17_000, value_name = "N")]
    watchers_per_process: usize,
    /// Writes the crowd of --watchers waits for, one at a time.
    #[arg(long, default_value_t = 5, value_name = "N")]
    watcher_updates: u64,
    /// The PostgreSQL server for --cluster, as the URL of a database to connect to while the
    /// benchmark creates (and afterwards drops) a fresh database for each run.
    #[arg(
        long,
        env = "TALLY_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1/postgres",
        value_name = "URL"
    )]
    postgres: String,
    /// Internal: run as one of the child processes holding --watchers (a JSON spec).
    #[arg(long, hide = true, value_name = "JSON")]
    crowd_child: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// One counter, C HTTP clients; with /healthz and redis-benchmark INCR as references.
    Hot,
    /// The same over 10 000 counters.
    Spread,
    /// N watchers of one counter, one write at a time.
    Fanout,
    /// N idle watchers: server memory per watcher, then one update each.
    Idle,
    /// Connect to snapshot; first write to a hibernated counter.
    Cold,
    /// One counter incremented over socket calls (v2) against the HTTP RPC, same clients.
    Calls,
    /// Server memory per subscription (one socket, many), and per watcher with all on one
    /// counter or each on its own, v1 and v2.
    Memory,
    /// A hot counter's watchers, plain against `maxRate`: server CPU and updates delivered.
    Conflation,
    /// Presence pushes at many watchers of one counter, and `getPresence`.
    Presence,
    /// Minutes of watchers, steady writes and reconnect storms (not part of the default run).
    Soak,
}

/// The sizes of one run.
struct Plan {
    seconds: Duration,
    hot_clients: Vec<usize>,
    spread_clients: usize,
    spread_counters: u32,
    fanout: Vec<(usize, u64)>,
    idle: Vec<usize>,
    connects: usize,
    hibernated: usize,
    call_clients: Vec<usize>,
    /// Subscriptions on one socket.
    subscriptions: usize,
    /// Watchers per layout.
    layout_watchers: usize,
    /// How long a server is left alone before its memory is read.
    settle: Duration,
    /// Watchers of the conflation scenario, and the writes a second to their counter.
    conflation: (usize, u32),
    /// The conflated subscriptions' `maxRate`.
    max_rate: f64,
    /// Presence subscribers, the quiet time measured, and the watchers that join then leave.
    presence: (usize, Duration, usize),
    /// Sequential `getPresence` (and `getValue`) calls.
    presence_calls: usize,
    /// The cluster comparison.
    cluster: cluster::Sizes,
}

impl Plan {
    fn new(args: &Args) -> Self {
        let mut plan = Self::sizes(args);
        if !args.clients.is_empty() {
            plan.hot_clients.clone_from(&args.clients);
            plan.call_clients.clone_from(&args.clients);
            plan.cluster.clients = args.clients[0];
        }
        plan
    }

    fn sizes(args: &Args) -> Self {
        if args.quick {
            Plan {
                seconds: Duration::from_secs(args.seconds.unwrap_or(1)),
                hot_clients: vec![8],
                spread_clients: 8,
                spread_counters: 100,
                fanout: vec![(10, 5)],
                idle: vec![200],
                connects: 20,
                hibernated: 5,
                call_clients: vec![4],
                subscriptions: 20,
                layout_watchers: 100,
                settle: Duration::from_millis(100),
                conflation: (20, 50),
                max_rate: 10.0,
                presence: (50, Duration::from_millis(300), 5),
                presence_calls: 20,
                cluster: cluster::Sizes {
                    seconds: Duration::from_secs(args.seconds.unwrap_or(1)),
                    clients: 4,
                    spread_counters: 100,
                    watchers: 4,
                    updates: 3,
                },
            }
        } else {
            Plan {
                seconds: Duration::from_secs(args.seconds.unwrap_or(10)),
                hot_clients: vec![1, 8, 32, 128],
                spread_clients: 32,
                spread_counters: 10_000,
                fanout: vec![(1, 50), (100, 50), (1_000, 50), (10_000, 10), (100_000, 5)],
                idle: vec![10_000, 100_000],
                connects: 500,
                hibernated: 50,
                call_clients: vec![32],
                subscriptions: 1_000,
                layout_watchers: 10_000,
                settle: Duration::from_secs(1),
                conflation: (1_000, 200),
                max_rate: 10.0,
                presence: (10_000, Duration::from_secs(3), 100),
                presence_calls: 500,
                cluster: cluster::Sizes {
                    seconds: Duration::from_secs(args.seconds.unwrap_or(10)),
                    clients: 32,
                    spread_counters: 10_000,
                    watchers: 100,
                    updates: 50,
                },
            }
        }
    }
}

/// How long an untouched counter stays in memory on the server the benchmark starts.
const BENCH_IDLE_TIMEOUT: &str = "2s";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(spec) = &args.crowd_child {
        return crowd::child(spec).await;
    }
    raise_file_limit();
    let plan = Plan::new(args);
    let binary = match (&args.url, &args.tally) {
        (Some(_), _) => None,
        (None, Some(path)) => Some(path.clone()),
        (None, None) => Some(server::sibling_tally()?),
    };
    let mut report = Report::default();
    // Other work on the machine at the start (its 1-minute load average), and then the steal.
    if let Some(load) = machine::load_average() {
        report.add("machine", "at the start", "load average (1 min)", load);
    }
    // What was measured before a failure is still printed.
    let cpu_before = machine::CpuTimes::now();
    // `--cluster` alone runs only the cluster; `--quick` runs everything, a 2-node cluster too.
    let cluster_only = args.cluster.is_some() && args.only.is_empty();
    let mut outcome = if cluster_only {
        Ok(())
    } else {
        single(args, &plan, binary.as_deref(), &mut report).await
    };
    if outcome.is_ok() {
        outcome = cluster(args, &plan, binary.as_deref(), &mut report).await;
    }
    if let (Some(before), Some(after)) = (cpu_before, machine::CpuTimes::now()) {
        // On a shared virtual machine the host may take CPU time away; a run with much steal
        // is not comparable with one without.
        report.add("machine", "whole run", "cpu steal %", after.steal_percent_since(&before));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.figures)?);
    } else {
        println!("{}", report.table());
    }
    outcome
}

/// The cluster scenarios, when asked for (`--cluster`, or briefly with `--quick`).
async fn cluster(
    args: &Args,
    plan: &Plan,
    binary: Option<&std::path::Path>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(nodes) = args.cluster.or(args.quick.then_some(2)) else { return Ok(()) };
    let nodes = usize::from(nodes);
    let Some(binary) = binary else {
        eprintln!("cluster: skipped (it starts its own nodes, so not with --url)");
        return Ok(());
    };
    if let Err(error) = cluster::reachable(&args.postgres).await {
        // CI's smoke run exercises the cluster where PostgreSQL is there, and says so where not.
        if args.cluster.is_none() {
            eprintln!("cluster: skipped: {error:#} (scripts/ensure-postgres.sh starts one)");
            report.add("cluster", &format!("nodes={nodes}"), "skipped: no PostgreSQL", 0.0);
            return Ok(());
        }
        return Err(error);
    }
    let crowd = |watchers: usize, per_process: usize, updates: u64| crowd::Sizes {
        watchers,
        per_process,
        updates,
    };
    match (args.watchers, args.quick) {
        (Some(watchers), _) => {
            let sizes = crowd(watchers, args.watchers_per_process, args.watcher_updates);
            crowd::run(binary, &args.postgres, nodes, &sizes, report).await
        }
        (None, quick) => {
            cluster::compare(binary, &args.postgres, nodes, &plan.cluster, report).await?;
            if quick {
                // The crowd's child processes, two of them, a few watchers each.
                let sizes = crowd(40, 20, 2);
                crowd::run(binary, &args.postgres, nodes, &sizes, report).await?;
            }
            Ok(())
        }
    }
}

/// The scenarios of one server (all but the cluster's).
async fn single(
    args: &Args,
    plan: &Plan,
    binary: Option<&std::path::Path>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let process = match binary {
        Some(binary) => {
            let mut flags = vec!["--idle-timeout", BENCH_IDLE_TIMEOUT];
            flags.extend(unlimited_socket_flags(binary));
            Some(ServerProcess::start(binary, &flags)?)
        }
        None => None,
    };
    let base = match (&args.url, &process) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(process)) => process.base.clone(),
        (None, None) => unreachable!("a process is started when no URL is given"),
    };
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("{base} must be http://IP:PORT"))?;
    let client = Client::new(&base)?;
    eprintln!("benchmarking {base}");
    if let Some(process) = &process {
        // Beside the database, before the load: what one fsync costs on this disk today.
        match machine::sync_latency(process.dir(), 200) {
            Ok(latency) => report.add(
                "machine",
                "disk",
                "4 KiB write + fsync p50 µs",
                latency.as_secs_f64() * 1e6,
            ),
            Err(error) => eprintln!("note: cannot time the disk's sync: {error}"),
        }
    }
    let cpu = || process.as_ref().and_then(|process| process.cpu_time().ok());
    let target = Target { base: &base, addr, client: &client, binary, cpu: &cpu };
    scenarios(args, plan, &target, report).await
}

/// The server under test.
struct Target<'a> {
    base: &'a str,
    addr: SocketAddr,
    client: &'a Client,
    /// The binary, when the benchmark started the server (fresh servers are started from it).
    binary: Option<&'a std::path::Path>,
    /// The server's CPU time so far, when its process is known.
    cpu: &'a dyn Fn() -> Option<Duration>,
}

/// Flags that lift the socket's per-client limits (commands a second, in flight) out of the
/// measurements' way, for a build that has them: the benchmark's few sockets each carry what
/// many users' would.
fn unlimited_socket_flags(binary: &std::path::Path) -> Vec<&'static str> {
    let mut flags = Vec::new();
    for (flag, value) in [("--max-commands-per-second", "1000000"), ("--max-in-flight", "4096")] {
        if server::supports_flag(binary, flag) {
            flags.extend([flag, value]);
        }
    }
    flags
}

/// A fresh server from `binary`, with its defaults except the socket limits above.
fn fresh_server(binary: &std::path::Path) -> anyhow::Result<ServerProcess> {
    ServerProcess::start(binary, &unlimited_socket_flags(binary))
}

async fn scenarios(
    args: &Args,
    plan: &Plan,
    target: &Target<'_>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Target { base, addr, client, binary, .. } = *target;
    let wanted = |scenario: Scenario| {
        // The soak runs for minutes: only when asked for by name.
        (args.only.is_empty() && scenario != Scenario::Soak) || args.only.contains(&scenario)
    };

    if wanted(Scenario::Hot) {
        for &clients in &plan.hot_clients {
            hot(base, client, clients, plan.seconds, report).await?;
        }
    }
    if wanted(Scenario::Spread) {
        spread(base, client, plan, report).await?;
    }
    if wanted(Scenario::Fanout) {
        for &(watchers, updates) in &plan.fanout {
            if !fits_open_files(watchers, "fanout", report) {
                continue;
            }
            fanout(target, watchers, updates, report).await?;
        }
    }
    if wanted(Scenario::Idle) {
        match binary {
            Some(binary) => {
                for &count in &plan.idle {
                    if !fits_open_files(count, "idle", report) {
                        continue;
                    }
                    // A fresh server: one that already held many sockets reuses their freed
                    // memory, and its RSS would not grow at all.
                    let fresh = ServerProcess::start(binary, &[])?;
                    let fresh_addr = fresh.base.trim_start_matches("http://").parse()?;
                    let fresh_client = Client::new(&fresh.base)?;
                    let progress = bar(count as u64, &format!("idle: opening {count} watchers"));
                    let result = watchers::idle(
                        Writer::Tally(&fresh_client),
                        fresh_addr,
                        || fresh.memory(),
                        count,
                        &progress,
                    )
                    .await?;
                    progress.finish_and_clear();
                    let case = format!("watchers={count}");
                    report.add_with(
                        "idle",
                        &case,
                        "watchers held, all got the update",
                        if result.all_received { result.held as f64 } else { 0.0 },
                        Some(Goal::at_least(count as f64)),
                    );
                    report.add_with(
                        "idle",
                        &case,
                        "server RSS bytes/watcher",
                        result.rss_per_watcher,
                        (count >= 100_000).then_some(Goal::at_most(4096.0)),
                    );
                    report.add("idle", &case, "server PSS bytes/watcher", result.pss_per_watcher);
                    if let Some(kernel) = result.kernel_per_socket {
                        report.add("idle", &case, "kernel slab bytes/TCP socket", kernel);
                    }
                    idle_reference(count, result.rss_per_watcher, report).await?;
                }
            }
            None => eprintln!(
                "idle: skipped (needs a server this benchmark started, to read its memory)"
            ),
        }
    }
    if wanted(Scenario::Cold) {
        let progress = bar(plan.connects as u64, "cold: connect to snapshot");
        let latency = watchers::connect_to_snapshot(client, addr, plan.connects, &progress).await?;
        progress.finish_and_clear();
        let (p50, p99, _) = stats::percentiles_ms(&latency);
        report.add_with(
            "cold",
            &format!("connects={}", plan.connects),
            "connect→snapshot p50 ms",
            p50,
            Some(Goal::at_most(1.0)),
        );
        report.add("cold", &format!("connects={}", plan.connects), "connect→snapshot p99 ms", p99);
        hibernated(base, client, plan.hibernated, report).await?;
    }

    if wanted(Scenario::Calls) {
        for &clients in &plan.call_clients {
            calls(target, clients, args.window, plan.seconds, report).await?;
        }
    }
    if wanted(Scenario::Memory) {
        memory(target, plan, report).await?;
    }
    if wanted(Scenario::Conflation) {
        conflation(target, plan, report).await?;
    }
    if wanted(Scenario::Presence) {
        presence(target, plan, report).await?;
    }

    if wanted(Scenario::Soak) {
        soak(args, binary, report).await?;
    }
    Ok(())
}

/// Fan-out to `watchers` watchers of one counter, `updates` writes one at a time: Tally, then
/// each design of the reference broadcaster, each on a fresh process; Tally's figures as ratios
/// to the faster design's.
async fn fanout(
    target: &Target<'_>,
    watchers: usize,
    updates: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let case = format!("watchers={watchers}");
    let progress = bar(watchers as u64, &format!("fan-out: opening {watchers} watchers"));
    let tally =
        watchers::fanout(Writer::Tally(target.client), target.addr, watchers, updates, &progress)
            .await?;
    progress.finish_and_clear();
    let tally = FanoutFigures::of(&tally);
    report.add("fanout", &case, "write→watcher p50 ms", tally.p50);
    let goal = (watchers == 1_000).then_some(Goal::at_most(5.0));
    report.add_with("fanout", &case, "write→watcher p99 ms", tally.p99, goal);
    report.add("fanout", &case, "write→watcher max ms", tally.max);
    let goal = (watchers == 10_000).then_some(Goal::at_most(50.0));
    report.add_with("fanout", &case, "write→last watcher p50 ms", tally.last, goal);
    let binary = reference::sibling_reference()?;
    let mut best: Option<FanoutFigures> = None;
    for design in Design::BOTH {
        let server = ReferenceProcess::start(&binary, design)?;
        let progress = bar(
            watchers as u64,
            &format!("fan-out reference ({}): opening {watchers} watchers", design.flag()),
        );
        let measured =
            watchers::fanout(Writer::Reference(&server), server.addr, watchers, updates, &progress)
                .await?;
        progress.finish_and_clear();
        let measured = FanoutFigures::of(&measured);
        let scenario = format!("reference {}", design.flag());
        report.add(&scenario, &case, "write→watcher p50 ms", measured.p50);
        report.add(&scenario, &case, "write→watcher p99 ms", measured.p99);
        report.add(&scenario, &case, "write→last watcher p50 ms", measured.last);
        best = Some(best.map_or(measured, |best| best.faster(&measured)));
    }
    let Some(best) = best else { return Ok(()) };
    // The targets are set at 1 000 and 10 000 watchers.
    let goal = (watchers >= 1_000).then_some(Goal::at_most(1.1));
    report.add_with("fanout", &case, "p50 ÷ reference", tally.p50 / best.p50, goal);
    report.add_with("fanout", &case, "p99 ÷ reference", tally.p99 / best.p99, goal);
    report.add("fanout", &case, "last watcher ÷ reference", tally.last / best.last);
    Ok(())
}

/// A fan-out's figures, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct FanoutFigures {
    p50: f64,
    p99: f64,
    max: f64,
    /// The last watcher's delay, median over the updates.
    last: f64,
}

impl FanoutFigures {
    fn of(fanout: &watchers::Fanout) -> Self {
        let (p50, p99, max) = stats::percentiles_ms(&fanout.latency);
        let (last, _, _) = stats::percentiles_ms(&fanout.last);
        Self { p50, p99, max, last }
    }

    /// Each figure the lower of the two: the reference is the faster design, figure by figure.
    fn faster(&self, other: &Self) -> Self {
        Self {
            p50: self.p50.min(other.p50),
            p99: self.p99.min(other.p99),
            max: self.max.min(other.max),
            last: self.last.min(other.last),
        }
    }
}

/// The reference broadcaster's memory per idle watcher, each design on a fresh process, beside
/// Tally's `tally_per_watcher` (RSS growth per watcher, bytes).
async fn idle_reference(
    count: usize,
    tally_per_watcher: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let binary = reference::sibling_reference()?;
    let case = format!("watchers={count}");
    let mut least = f64::INFINITY;
    for design in Design::BOTH {
        let server = ReferenceProcess::start(&binary, design)?;
        let progress = bar(
            count as u64,
            &format!("idle reference ({}): opening {count} watchers", design.flag()),
        );
        let result = watchers::idle(
            Writer::Reference(&server),
            server.addr,
            || server.memory(),
            count,
            &progress,
        )
        .await?;
        progress.finish_and_clear();
        anyhow::ensure!(result.all_received, "a watcher of the reference missed its update");
        let scenario = format!("reference {}", design.flag());
        report.add(&scenario, &case, "server RSS bytes/watcher", result.rss_per_watcher);
        least = least.min(result.rss_per_watcher);
    }
    report.add_with(
        "idle",
        &case,
        "RSS ÷ reference",
        tally_per_watcher / least,
        Some(Goal::at_most(1.2)),
    );
    Ok(())
}

/// Says so and returns false when the server has no `/ws` (a build from before version 2).
async fn speaks_v2(addr: SocketAddr, scenario: &str) -> bool {
    let supported = socket::supported(addr).await;
    if !supported {
        eprintln!("{scenario}: the v2 part skipped: this server has no GET /ws");
    }
    supported
}

/// One counter incremented by the same `clients` over the HTTP RPC and over socket calls
/// (`window` in flight per socket), then both again with an idempotency key on every write.
async fn calls(
    target: &Target<'_>,
    clients: usize,
    window: usize,
    seconds: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let case = format!("clients={clients} window={window}");
    let v2 = speaks_v2(target.addr, "calls").await;
    for keyed in [false, true] {
        let with = if keyed { " + key" } else { "" };
        let name: Arc<str> = Arc::from(format!("calls{}", fastrand::u32(..)));
        let request = if keyed {
            Request::IncrementKeyed(Arc::clone(&name))
        } else {
            Request::Increment(Arc::clone(&name))
        };
        let progress = timed_bar(seconds, &format!("calls: {clients} HTTP clients{with}"));
        let http = load::run(target.base, &request, clients, seconds, &progress).await?;
        progress.finish_and_clear();
        checked(target.client, &name, http.ok).await?;
        let label = format!("HTTP RPC{with}");
        calls_rows(report, &case, &label, &http);
        if !v2 {
            continue;
        }
        let name = format!("calls{}", fastrand::u32(..));
        let progress = timed_bar(seconds, &format!("calls: {clients} sockets{with}"));
        let over_socket = calls::run(
            (target.addr, Replies::Tally),
            &name,
            clients,
            window,
            keyed,
            seconds,
            &progress,
        )
        .await?;
        progress.finish_and_clear();
        checked(target.client, &name, over_socket.ok).await?;
        calls_rows(report, &case, &format!("socket call{with}"), &over_socket);
        let ratio = over_socket.per_second() / http.per_second();
        let goal = (!keyed).then_some(Goal::at_least(2.0));
        report.add_with("calls", &case, &format!("socket ÷ HTTP{with}"), ratio, goal);
        if !keyed {
            // The floor: the same calls, sent back as they are by the reference echo.
            let echo = ReferenceProcess::start(&reference::sibling_reference()?, Design::Loop)?;
            let progress = timed_bar(seconds, &format!("reference: {clients} sockets on an echo"));
            let echoed = calls::run(
                (echo.addr, Replies::Echo),
                &name,
                clients,
                window,
                false,
                seconds,
                &progress,
            )
            .await?;
            progress.finish_and_clear();
            report.add("reference", &case, "WebSocket echo messages/s", echoed.per_second());
            let ratio = over_socket.per_second() / echoed.per_second();
            report.add_with("calls", &case, "socket call ÷ echo", ratio, Some(Goal::at_least(0.5)));
        }
    }
    let honoured = keys_honoured(target.base, target.client).await?;
    report.add("calls", &case, "keys honoured (a repeated key counts once)", f64::from(honoured));
    Ok(())
}

fn calls_rows(report: &mut Report, case: &str, label: &str, result: &load::LoadResult) {
    let (p50, p99, _) = stats::percentiles_ms(&result.latency);
    report.add("calls", case, &format!("{label} increments/s"), result.per_second());
    report.add("calls", case, &format!("{label} p50 ms"), p50);
    report.add("calls", case, &format!("{label} p99 ms"), p99);
    if result.failed > 0 {
        report.add("calls", case, &format!("{label} failed"), result.failed as f64);
    }
}

/// Checks that counter `name` holds exactly the `acknowledged` increments.
async fn checked(client: &Client, name: &str, acknowledged: u64) -> anyhow::Result<()> {
    let stored = client.get_value(name).await.context("reading a counter back")?.value;
    anyhow::ensure!(
        stored == acknowledged as i64,
        "counter {name} holds {stored} but {acknowledged} increments were acknowledged"
    );
    Ok(())
}

/// Whether the server acts on idempotency keys: the same increment sent twice with one key
/// must count once.
async fn keys_honoured(base: &str, client: &Client) -> anyhow::Result<bool> {
    let name = format!("keyprobe{}", fastrand::u32(..));
    let http = reqwest::Client::new();
    for _ in 0..2 {
        http.post(format!("{base}/rpc/counter.increment"))
            .header("idempotency-key", "bench-probe")
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .context("probing idempotency keys")?
            .error_for_status()
            .context("probing idempotency keys")?;
    }
    Ok(client.get_value(&name).await.context("reading the probe back")?.value == 1)
}

/// Memory per subscription on one socket, and per watcher in both layouts over v1 and v2, each
/// on a fresh server.
async fn memory(target: &Target<'_>, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let Some(binary) = target.binary else {
        eprintln!("memory: skipped (needs a server this benchmark started, to read its memory)");
        return Ok(());
    };
    let v2 = speaks_v2(target.addr, "memory").await;
    if v2 {
        let count = plan.subscriptions;
        let fresh = fresh_server(binary)?;
        let result = memory::per_subscription(&fresh, count, plan.settle).await?;
        let case = format!("one socket, subscriptions={count}");
        report.add(
            "memory",
            &case,
            "server RSS bytes/subscription, new counter each",
            result.new_counters,
        );
        report.add(
            "memory",
            &case,
            "server RSS bytes/subscription, counter already watched",
            result.watched_counters,
        );
    }
    let count = plan.layout_watchers;
    // The reference for the layouts: what a counter in memory costs with nobody watching.
    let fresh = fresh_server(binary)?;
    let per_counter = memory::per_counter(&fresh, count, plan.settle).await?;
    drop(fresh);
    let case = format!("counters={count} written once, nobody watching");
    report.add("memory", &case, "server RSS bytes/counter", per_counter);
    if !fits_open_files(count, "memory", report) {
        return Ok(());
    }
    for protocol in [memory::Protocol::V1, memory::Protocol::V2] {
        if protocol == memory::Protocol::V2 && !v2 {
            continue;
        }
        for layout in [memory::Layout::OneCounter, memory::Layout::OwnCounter] {
            let fresh = fresh_server(binary)?;
            let label = format!("{} watchers={count} {}", protocol.label(), layout.label());
            let progress = bar(count as u64, &format!("memory: {label}"));
            let result =
                memory::layout(&fresh, protocol, layout, count, plan.settle, &progress).await?;
            progress.finish_and_clear();
            report.add_with(
                "memory",
                &label,
                "server RSS bytes/watcher",
                result.rss_per_watcher,
                // Issue 12's goal is set at 10 000 watchers; smaller runs carry the fixed costs.
                (count >= 10_000).then_some(Goal::at_most(2048.0)),
            );
            report.add("memory", &label, "server PSS bytes/watcher", result.pss_per_watcher);
            report.add_with(
                "memory",
                &label,
                "watchers that got the next update",
                if result.all_received { count as f64 } else { 0.0 },
                Some(Goal::at_least(count as f64)),
            );
        }
    }
    Ok(())
}

/// A hot counter's watchers, plain and then conflated, side by side.
async fn conflation(target: &Target<'_>, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    if !speaks_v2(target.addr, "conflation").await {
        return Ok(());
    }
    let (watchers, rate) = plan.conflation;
    if !fits_open_files(watchers, "conflation", report) {
        return Ok(());
    }
    // The same writes with nobody watching, the reference: what the watchers add is the rest.
    let runs = [
        (0, None, "no watchers (reference)".to_owned()),
        (watchers, None, "plain".to_owned()),
        (watchers, Some(plan.max_rate), format!("maxRate={}", plan.max_rate)),
    ];
    let mut cpu_per_second = Vec::new();
    let mut delivered_per_second = Vec::new();
    for (watchers, max_rate, kind) in runs {
        let case = format!("watchers={watchers} writes/s={rate} {kind}");
        let progress =
            bar(watchers as u64, &format!("conflation: opening {watchers} watchers, {kind}"));
        let result = conflation::run(
            target.addr,
            target.cpu,
            watchers,
            max_rate,
            rate,
            plan.seconds,
            &progress,
        )
        .await?;
        report.add("conflation", &case, "writes/s", result.writes as f64 / result.write_seconds);
        if result.failed_writes > 0 {
            report.add("conflation", &case, "failed writes", result.failed_writes as f64);
        }
        let delivered = result.delivered as f64 / result.seconds;
        delivered_per_second.push(delivered);
        if watchers > 0 {
            report.add("conflation", &case, "updates delivered/s", delivered);
            report.add(
                "conflation",
                &case,
                "last write → all on the final version ms",
                (result.seconds - result.write_seconds) * 1000.0,
            );
        }
        if let Some(cpu) = result.server_cpu {
            let share = cpu.as_secs_f64() / result.seconds;
            report.add("conflation", &case, "server CPU % of one core", share * 100.0);
            report.add(
                "conflation",
                &case,
                "server CPU µs per write",
                cpu.as_secs_f64() * 1e6 / result.writes.max(1) as f64,
            );
            cpu_per_second.push(share);
        }
        if watchers == 0 {
            continue;
        }
        report.add_with(
            "conflation",
            &case,
            "updates out of order",
            result.out_of_order as f64,
            Some(Goal::at_most(0.0)),
        );
        report.add_with(
            "conflation",
            &case,
            "watchers on the final version",
            result.ended_on_final as f64,
            Some(Goal::at_least(watchers as f64)),
        );
        if max_rate.is_some() {
            report.add(
                "conflation",
                &case,
                "most updates to one watcher in a second",
                result.most_in_a_second as f64,
            );
        }
    }
    let case = format!("watchers={watchers} writes/s={rate}");
    let kind = format!("plain ÷ maxRate={}", plan.max_rate);
    if let [_, plain, conflated] = delivered_per_second[..] {
        report.add("conflation", &case, &format!("updates delivered, {kind}"), plain / conflated);
    }
    if let [reference, plain, conflated] = cpu_per_second[..] {
        report.add("conflation", &case, &format!("server CPU, {kind}"), plain / conflated);
        // What the watchers themselves cost, the writes' own cost taken out.
        report.add(
            "conflation",
            &case,
            &format!("server CPU above the reference, {kind}"),
            (plain - reference) / (conflated - reference),
        );
    }
    Ok(())
}

/// Presence pushes at many watchers of one counter, and `getPresence` beside `getValue`.
async fn presence(target: &Target<'_>, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    if !speaks_v2(target.addr, "presence").await {
        return Ok(());
    }
    let (watchers, quiet, churn) = plan.presence;
    if !fits_open_files(watchers + churn, "presence", report) {
        return Ok(());
    }
    let progress = bar(watchers as u64, &format!("presence: opening {watchers} subscribers"));
    let result = presence::run(
        target.addr,
        target.cpu,
        watchers,
        quiet,
        churn,
        plan.presence_calls,
        &progress,
    )
    .await?;
    let case = format!("watchers={watchers} churn={churn}");
    if let Some(cpu) = result.quiet_cpu {
        let share = cpu.as_secs_f64() / result.quiet_seconds * 100.0;
        report.add("presence", &case, "server CPU % of one core, nothing changing", share);
    }
    for (step, wave) in [("join", &result.join), ("leave", &result.leave)] {
        let (p50, p99, _) = stats::percentiles_ms(&wave.latency);
        report.add("presence", &case, &format!("{step}: push p50 ms"), p50);
        report.add("presence", &case, &format!("{step}: push p99 ms"), p99);
        report.add(
            "presence",
            &case,
            &format!("{step}: last push ms"),
            wave.last.as_secs_f64() * 1000.0,
        );
        // The fan-out itself, without the wait for the tick.
        let spread = wave.last.saturating_sub(wave.first).as_secs_f64() * 1000.0;
        report.add("presence", &case, &format!("{step}: first → last push ms"), spread);
        if let Some(cpu) = wave.server_cpu {
            report.add(
                "presence",
                &case,
                &format!("{step}: server CPU ms"),
                cpu.as_secs_f64() * 1000.0,
            );
            report.add(
                "presence",
                &case,
                &format!("{step}: server CPU µs per push"),
                cpu.as_secs_f64() * 1e6 / watchers as f64,
            );
        }
    }
    let (presence_p50, presence_p99, _) = stats::percentiles_ms(&result.get_presence);
    let (value_p50, value_p99, _) = stats::percentiles_ms(&result.get_value);
    report.add("presence", &case, "getPresence p50 ms", presence_p50);
    report.add("presence", &case, "getPresence p99 ms", presence_p99);
    report.add("presence", &case, "getValue p50 ms (reference)", value_p50);
    report.add("presence", &case, "getValue p99 ms (reference)", value_p99);
    report.add("presence", &case, "getPresence ÷ getValue p50", presence_p50 / value_p50);
    Ok(())
}

/// The soak scenario on a fresh server, whose memory it samples.
async fn soak(
    args: &Args,
    binary: Option<&std::path::Path>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(binary) = binary else {
        eprintln!("soak: skipped (needs a server this benchmark started, to read its memory)");
        return Ok(());
    };
    let server = ServerProcess::start(binary, &[])?;
    let client = Client::new(&server.base)?;
    let minutes = args.soak_minutes.max(1);
    let progress = bar(
        minutes * 60,
        &format!("soak: {} watchers, writes and reconnect storms", args.soak_watchers),
    );
    let result = soak::run(
        &client,
        &server.base,
        || server.memory(),
        Duration::from_secs(minutes * 60),
        args.soak_watchers,
        // By default at least three storms, at most one a minute.
        args.soak_storm_seconds.map_or_else(
            || Duration::from_secs(minutes * 60 / 4).min(Duration::from_secs(60)),
            |seconds| Duration::from_secs(seconds.max(1)),
        ),
        &progress,
    )
    .await?;
    progress.finish_and_clear();
    let before: Vec<String> = result
        .rss_before_storms
        .iter()
        .map(|rss| format!("{:.1}", *rss as f64 / 1_048_576.0))
        .collect();
    eprintln!("soak: server RSS before each storm (MiB): {}", before.join(" "));
    let case = format!("minutes={minutes} watchers={}", args.soak_watchers);
    report.add("soak", &case, "acknowledged writes", result.writes as f64);
    let none = Some(Goal::at_most(0.0));
    report.add_with("soak", &case, "failed writes", result.failed_writes as f64, none);
    report.add("soak", &case, "reconnect storms", result.rss_before_storms.len() as f64);
    report.add_with(
        "soak",
        &case,
        "updates out of order (gap or repeat)",
        result.out_of_order as f64,
        none,
    );
    report.add("soak", &case, "watcher disconnects outside storms", result.disconnects as f64);
    let watchers = args.soak_watchers as f64;
    let caught_up = result.caught_up as f64;
    report.add_with(
        "soak",
        &case,
        "watchers caught up at the end",
        caught_up,
        Some(Goal::at_least(watchers)),
    );
    // More than the live watchers would be sockets leaked by the storms.
    let open = result.websockets_open;
    report.add_with(
        "soak",
        &case,
        "server websockets open at the end",
        open,
        Some(Goal::at_most(watchers)),
    );
    report.add("soak", &case, "server RSS first MiB", result.rss_first as f64 / 1_048_576.0);
    report.add(
        "soak",
        &case,
        "server RSS at the first storm MiB",
        result.rss_before_storms.first().map_or(0.0, |rss| *rss as f64 / 1_048_576.0),
    );
    report.add("soak", &case, "server RSS max MiB", result.rss_max as f64 / 1_048_576.0);
    report.add("soak", &case, "server RSS last MiB", result.rss_last as f64 / 1_048_576.0);
    Ok(())
}

async fn hot(
    base: &str,
    client: &Client,
    clients: usize,
    seconds: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let case = format!("clients={clients}");
    let name: Arc<str> = Arc::from(format!("hot{}", fastrand::u32(..)));
    let progress = timed_bar(seconds, &format!("hot: {clients} clients incrementing one counter"));
    let result =
        load::run(base, &Request::Increment(Arc::clone(&name)), clients, seconds, &progress)
            .await?;
    progress.finish_and_clear();
    let stored = client.get_value(&name).await.context("reading the hot counter back")?.value;
    anyhow::ensure!(
        stored == result.ok as i64,
        "hot counter holds {stored} but {} increments were acknowledged",
        result.ok
    );
    let progress = timed_bar(seconds, &format!("reference: {clients} clients on /healthz"));
    let health = load::run(base, &Request::Health, clients, seconds, &progress).await?;
    progress.finish_and_clear();
    let (p50, p99, _) = stats::percentiles_ms(&result.latency);
    // The goals are set for 32 clients.
    let goal = |value| (clients == 32).then_some(Goal::at_least(value));
    report.add_with("hot", &case, "durable increments/s", result.per_second(), goal(50_000.0));
    report.add("hot", &case, "latency p50 ms", p50);
    report.add("hot", &case, "latency p99 ms", p99);
    report.add("hot", &case, "failed requests", result.failed as f64);
    report.add("hot", &case, "value checked = acknowledged", stored as f64);
    report.add("reference", &case, "/healthz requests/s", health.per_second());
    let ratio = result.per_second() / health.per_second();
    report.add_with("hot", &case, "ratio to /healthz", ratio, goal(0.5));
    let requests = ((result.ok as f64).max(10_000.0) as u64).min(1_000_000);
    match load::redis_incr(clients, requests) {
        Ok(redis) => {
            report.add("reference", &case, "redis-benchmark INCR requests/s", redis);
            let ratio = result.per_second() / redis;
            report.add_with("hot", &case, "ratio to redis INCR", ratio, goal(0.3));
        }
        Err(error) => eprintln!("reference: redis-benchmark skipped: {error:#}"),
    }
    Ok(())
}

async fn spread(
    base: &str,
    client: &Client,
    plan: &Plan,
    report: &mut Report,
) -> anyhow::Result<()> {
    let prefix: Arc<str> = Arc::from(format!("spread{}", fastrand::u32(..)));
    let (clients, count) = (plan.spread_clients, plan.spread_counters);
    let progress =
        timed_bar(plan.seconds, &format!("spread: {clients} clients over {count} counters"));
    let request = Request::Spread { prefix: Arc::clone(&prefix), count };
    let result = load::run(base, &request, clients, plan.seconds, &progress).await?;
    progress.finish_and_clear();
    let names = (0..count).map(|index| format!("{prefix}-{index}")).collect();
    let total = load::total_of(client, names).await?;
    anyhow::ensure!(
        total == result.ok as i64,
        "spread counters hold {total} but {} increments were acknowledged",
        result.ok
    );
    let case = format!("clients={clients} counters={count}");
    let (p50, p99, _) = stats::percentiles_ms(&result.latency);
    report.add("spread", &case, "durable increments/s", result.per_second());
    report.add("spread", &case, "latency p50 ms", p50);
    report.add("spread", &case, "latency p99 ms", p99);
    report.add("spread", &case, "values checked = acknowledged", total as f64);
    // Against the hot counter with as many clients, when this run measured it.
    let hot = report.value("hot", &format!("clients={clients}"), "durable increments/s");
    if let Some(hot) = hot {
        let ratio = result.per_second() / hot;
        report.add_with(
            "spread",
            &case,
            "ratio to the hot counter",
            ratio,
            Some(Goal::at_least(0.9)),
        );
    }
    Ok(())
}

/// Writes to `count` counters, waits until the server has hibernated them all, then times the
/// first write to each (it loads the counter from storage) and a second, warm one.
async fn hibernated(
    base: &str,
    client: &Client,
    count: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let prefix = format!("sleepy{}", fastrand::u32(..));
    for index in 0..count {
        client.increment(&format!("{prefix}-{index}"), 1).await?;
    }
    let progress = ProgressBar::new_spinner().with_message(format!(
        "cold: waiting for counters to hibernate ({BENCH_IDLE_TIMEOUT} idle)"
    ));
    progress.enable_steady_tick(Duration::from_millis(200));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if server::metric(&http, base, "tally_counters_in_memory").await? == Some(0.0) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "counters did not hibernate (is the server's --idle-timeout long?)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress.finish_and_clear();
    let (mut cold, mut warm) = (stats::histogram(), stats::histogram());
    for index in 0..count {
        let name = format!("{prefix}-{index}");
        let started = Instant::now();
        client.increment(&name, 1).await?;
        stats::record(&mut cold, started.elapsed());
        let started = Instant::now();
        client.increment(&name, 1).await?;
        stats::record(&mut warm, started.elapsed());
    }
    let case = format!("counters={count}");
    report.add(
        "cold",
        &case,
        "first write after hibernation p50 ms",
        stats::percentiles_ms(&cold).0,
    );
    report.add("cold", &case, "next write (warm) p50 ms", stats::percentiles_ms(&warm).0);
    Ok(())
}

fn bar(length: u64, message: &str) -> ProgressBar {
    let progress = ProgressBar::new(length).with_message(message.to_owned());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}") {
        progress.set_style(style.progress_chars("=> "));
    }
    progress
}

fn timed_bar(duration: Duration, message: &str) -> ProgressBar {
    let progress = ProgressBar::new(duration.as_millis() as u64).with_message(message.to_owned());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {elapsed}") {
        progress.set_style(style.progress_chars("=> "));
    }
    progress
}

/// Whether this process (and the server, which has the same limit) can open `sockets` more
/// sockets; if not, says so in the report instead of failing half-way.
fn fits_open_files(sockets: usize, scenario: &str, report: &mut Report) -> bool {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
    // Room for the HTTP clients, the database and the runtime.
    if (sockets as u64) + 200 <= limit {
        return true;
    }
    eprintln!(
        "{scenario}: {sockets} watchers skipped: the open-file limit here is {limit} per process"
    );
    report.add(
        scenario,
        &format!("watchers={sockets}"),
        "skipped: open-file limit per process",
        limit as f64,
    );
    false
}

/// Lets this process and the server it starts hold 100 000+ sockets: the soft and hard limits go
/// up to the kernel's ceiling (`fs.nr_open`), which needs root or CAP_SYS_RESOURCE to pass the
/// current hard limit. Without it the 100 000-watcher runs fail with "too many open files".
fn raise_file_limit() {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(1_048_576);
    let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else { return };
    if soft >= ceiling {
        return;
    }
    if rlimit::setrlimit(rlimit::Resource::NOFILE, ceiling, ceiling.max(hard)).is_err() {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
        eprintln!("note: open files limited to {hard}; runs above that many watchers will fail");
    }
}
