//! Presence at many watchers of one counter: W v2 subscriptions with presence pushes; C more
//! watchers join and then leave, and the time until every subscriber has the new count is
//! measured with the server's CPU over it; then `counter.getPresence` latency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tally_proto::Procedure;
use tokio::sync::mpsc;

use crate::load::Connection;
use crate::socket::{self, Glance};
use crate::stats;

/// How long a wave of presence pushes may take to reach everybody (pushes leave once a second;
/// the first wave, the subscribers' own arrival, also waits for the last of them to open).
const WAVE_TIMEOUT: Duration = Duration::from_secs(15);

/// One change of the count and the pushes that told every subscriber.
pub(crate) struct Wave {
    /// From the change (the last joiner's snapshot, or the leavers' close) to each
    /// subscriber's push with the new count.
    pub(crate) latency: Histogram<u64>,
    /// From the change to the first subscriber's push: mostly the wait for the once-a-second
    /// presence tick.
    pub(crate) first: Duration,
    /// From the change to the last subscriber's push.
    pub(crate) last: Duration,
    /// The server's CPU time over that, when its process is known.
    pub(crate) server_cpu: Option<Duration>,
}

/// What the presence run measured.
pub(crate) struct PresenceRun {
    pub(crate) join: Wave,
    pub(crate) leave: Wave,
    /// The server's CPU time during `quiet_seconds` with nothing changing: what the presence
    /// ticker costs when there is nothing to push.
    pub(crate) quiet_cpu: Option<Duration>,
    pub(crate) quiet_seconds: f64,
    /// `counter.getPresence` over the RPC, one at a time.
    pub(crate) get_presence: Histogram<u64>,
    /// `counter.getValue` the same way, the reference.
    pub(crate) get_value: Histogram<u64>,
}

/// `watchers` subscribers with presence, a `quiet` time with nothing changing, `churn` joiners
/// and leavers, then `calls` sequential RPCs of each procedure.
pub(crate) async fn run(
    server: SocketAddr,
    cpu: &dyn Fn() -> Option<Duration>,
    watchers: usize,
    quiet: Duration,
    churn: usize,
    calls: usize,
    progress: &ProgressBar,
) -> anyhow::Result<PresenceRun> {
    let prefix = format!("presence{}", fastrand::u32(..));
    let name = format!("{prefix}-0");
    let options = socket::Options { max_rate: None, presence: true };
    let sockets = socket::open_many(server, &prefix, 1, watchers, options, progress).await?;
    progress.finish_and_clear();
    // Every presence push any subscriber gets: (its count, when).
    let (pushes_tx, mut pushes) = mpsc::unbounded_channel();
    let mut readers = Vec::with_capacity(watchers);
    for (_, _, mut socket) in sockets {
        let pushes_tx = pushes_tx.clone();
        readers.push(tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(Ok(message)) = socket.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message
                    && let Glance::Presence { watchers } = socket::glance(&text)
                    && pushes_tx.send((watchers, Instant::now())).is_err()
                {
                    break;
                }
            }
        }));
    }
    drop(pushes_tx);

    // Every subscriber is told of all of them (after the last one's arrival) before the run.
    wave(&mut pushes, watchers as u64, watchers, cpu).await?;
    let quiet_started = Instant::now();
    let cpu_before = cpu();
    tokio::time::sleep(quiet).await;
    let quiet_cpu = cpu_before.zip(cpu()).map(|(before, after)| after.saturating_sub(before));
    let quiet_seconds = quiet_started.elapsed().as_secs_f64();

    // Joiners watch without presence, so only the first `watchers` are told.
    let mut joiners = Vec::with_capacity(churn);
    for _ in 0..churn {
        let mut joiner = socket::connect(server).await?;
        socket::subscribe(&mut joiner, 1, &name, None, false).await?;
        joiners.push(joiner);
    }
    let join = wave(&mut pushes, (watchers + churn) as u64, watchers, cpu).await?;
    for mut joiner in joiners {
        let _ = joiner.close(None).await;
    }
    let leave = wave(&mut pushes, watchers as u64, watchers, cpu).await?;

    let base = format!("{server}");
    let mut connection = Connection::open(&base).await?;
    let get_presence = timed_calls(&mut connection, Procedure::GetPresence, &name, calls).await?;
    let get_value = timed_calls(&mut connection, Procedure::GetValue, &name, calls).await?;
    for reader in readers {
        reader.abort();
    }
    Ok(PresenceRun { join, leave, quiet_cpu, quiet_seconds, get_presence, get_value })
}

/// Waits until `subscribers` pushes saying `target` watchers have come (one per subscriber),
/// timing each from now.
async fn wave(
    pushes: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    target: u64,
    subscribers: usize,
    cpu: &dyn Fn() -> Option<Duration>,
) -> anyhow::Result<Wave> {
    let changed = Instant::now();
    let cpu_before = cpu();
    let deadline = changed + WAVE_TIMEOUT;
    let mut latency = stats::histogram();
    let mut told = 0;
    let mut last = Duration::ZERO;
    let mut first = Duration::MAX;
    while told < subscribers {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, pushes.recv()).await {
            Ok(Some((watchers, at))) if watchers == target => {
                told += 1;
                let delay = at.saturating_duration_since(changed);
                stats::record(&mut latency, delay);
                last = last.max(delay);
                first = first.min(delay);
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("every presence subscriber's socket ended"),
            Err(_) => bail!(
                "{told} of {subscribers} subscribers were told of {target} watchers within {} s",
                WAVE_TIMEOUT.as_secs()
            ),
        }
    }
    let server_cpu = cpu_before.zip(cpu()).map(|(before, after)| after.saturating_sub(before));
    Ok(Wave { latency, first, last, server_cpu })
}

/// `count` calls of `procedure` on `name`, one at a time.
async fn timed_calls(
    connection: &mut Connection,
    procedure: Procedure,
    name: &str,
    count: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = stats::histogram();
    for _ in 0..count {
        let started = Instant::now();
        let ok = connection.call(procedure, name).await?;
        anyhow::ensure!(ok, "{} was refused", procedure.path_name());
        stats::record(&mut latency, started.elapsed());
    }
    Ok(latency)
}
