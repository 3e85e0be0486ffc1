//! The soak run: many watchers, steady writes and periodic reconnect storms for minutes, with
//! the server's memory sampled; at the end every watcher must have every version once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use tally_client::{Backoff, Client, WatchEvent, WatchOptions};
use tokio::task::JoinHandle;

use crate::load::Connection;
use crate::server::Memory;

/// What a soak run saw.
pub(crate) struct Soak {
    pub(crate) writes: u64,
    pub(crate) failed_writes: u64,
    pub(crate) rss_first: u64,
    pub(crate) rss_max: u64,
    pub(crate) rss_last: u64,
    /// RSS just before each reconnect storm, one per storm; the first is once every watcher is
    /// connected and busy. Flat once warm means no leak, a steady climb means one.
    pub(crate) rss_before_storms: Vec<u64>,
    /// The server's open WebSockets once every watcher has caught up: the live watchers, if
    /// no socket of the storms was leaked.
    pub(crate) websockets_open: f64,
    /// Updates the client library passed on out of order (gap or repeat): must be 0. This
    /// checks the client's promise to the app; the server's own slips show as `disconnects`.
    pub(crate) out_of_order: u64,
    /// Connections that ended other than by a storm (a close by the server, such as a slow
    /// consumer's 4000 or a gap, or a failed connect), each resumed by the client.
    pub(crate) disconnects: u64,
    /// Watchers that ended on their counter's final version.
    pub(crate) caught_up: usize,
}

/// One watcher's progress, shared with the task that follows the counter.
struct Follower {
    counter: usize,
    last: Arc<AtomicU64>,
}

/// The counters the watchers are spread over.
const COUNTERS: usize = 20;
/// Writes per second, spread over the counters.
const RATE: u64 = 200;

/// Runs for `duration`: `watchers` watchers over `COUNTERS` counters, `RATE` writes per second,
/// and every `storm_every` all watchers dropped and reconnected with `since` at once.
pub(crate) async fn run(
    client: &Client,
    base: &str,
    memory: impl Fn() -> anyhow::Result<Memory>,
    duration: Duration,
    watchers: usize,
    storm_every: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<Soak> {
    let prefix = format!("soak{}", fastrand::u32(..));
    let out_of_order = Arc::new(AtomicU64::new(0));
    let disconnects = Arc::new(AtomicU64::new(0));
    let followers: Vec<Follower> = (0..watchers)
        .map(|index| Follower { counter: index % COUNTERS, last: Arc::new(AtomicU64::new(0)) })
        .collect();
    let start_all = |followers: &[Follower]| -> Vec<JoinHandle<()>> {
        followers
            .iter()
            .map(|follower| {
                let name = format!("{prefix}-{}", follower.counter);
                let since = follower.last.load(Ordering::Relaxed);
                tokio::spawn(follow(
                    client.clone(),
                    name,
                    since,
                    Arc::clone(&follower.last),
                    Arc::clone(&out_of_order),
                    Arc::clone(&disconnects),
                ))
            })
            .collect()
    };
    let mut tasks = start_all(&followers);

    let writes = Arc::new(AtomicU64::new(0));
    let failed_writes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let writer = {
        let (writes, failed_writes, prefix) =
            (Arc::clone(&writes), Arc::clone(&failed_writes), prefix.clone());
        let addr = base.trim_start_matches("http://").to_owned();
        tokio::spawn(async move {
            let mut connection = Connection::open(&addr).await?;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE as f64));
            let mut next = 0;
            while Instant::now() < deadline {
                tick.tick().await;
                match connection.increment(&format!("{prefix}-{}", next % COUNTERS)).await {
                    Ok(true) => writes.fetch_add(1, Ordering::Relaxed),
                    _ => failed_writes.fetch_add(1, Ordering::Relaxed),
                };
                next += 1;
            }
            anyhow::Ok(())
        })
    };

    let first = memory()?;
    let (mut rss_max, mut rss_last) = (first.rss, first.rss);
    let mut rss_before_storms = Vec::new();
    let mut next_storm = started + storm_every;
    while Instant::now() < deadline {
        tokio::time::sleep(
            Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
        rss_last = memory()?.rss;
        rss_max = rss_max.max(rss_last);
        progress.set_position(started.elapsed().as_secs());
        if Instant::now() >= next_storm && Instant::now() < deadline {
            rss_before_storms.push(rss_last);
            // Every watcher drops its socket at once and comes back resuming where it was.
            for task in tasks.drain(..) {
                task.abort();
                let _ = task.await;
            }
            tasks = start_all(&followers);
            next_storm += storm_every;
        }
    }
    writer.await.context("writer task")??;

    // Let every watcher catch up with its counter's final version.
    let mut finals = Vec::with_capacity(COUNTERS);
    for counter in 0..COUNTERS {
        finals.push(client.get_value(&format!("{prefix}-{counter}")).await?.version);
    }
    let catch_up_deadline = Instant::now() + Duration::from_secs(60);
    let caught_up = |followers: &[Follower]| {
        followers
            .iter()
            .filter(|follower| follower.last.load(Ordering::Relaxed) == finals[follower.counter])
            .count()
    };
    while caught_up(&followers) < watchers && Instant::now() < catch_up_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each storm closes every socket; give the server a moment to finish closing the last one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let websockets_open =
        crate::server::metric(&reqwest::Client::new(), base, "tally_websockets_open")
            .await?
            .unwrap_or(f64::NAN);
    let result = Soak {
        writes: writes.load(Ordering::Relaxed),
        failed_writes: failed_writes.load(Ordering::Relaxed),
        rss_first: first.rss,
        rss_max,
        rss_last,
        rss_before_storms,
        websockets_open,
        out_of_order: out_of_order.load(Ordering::Relaxed),
        disconnects: disconnects.load(Ordering::Relaxed),
        caught_up: caught_up(&followers),
    };
    for task in tasks {
        task.abort();
    }
    Ok(result)
}

/// Follows `name` from `since`, recording the last version and any out-of-order update.
async fn follow(
    client: Client,
    name: String,
    since: u64,
    last: Arc<AtomicU64>,
    out_of_order: Arc<AtomicU64>,
    disconnects: Arc<AtomicU64>,
) {
    let backoff =
        Backoff { min: Duration::from_millis(50), max: Duration::from_secs(2), factor: 2.0 };
    let since = (since > 0).then_some(since);
    let mut watch =
        client.watch_with(&name, WatchOptions { since, backoff, ..WatchOptions::default() });
    while let Some(event) = watch.next().await {
        match event {
            WatchEvent::Snapshot(snapshot) => last.store(snapshot.version, Ordering::Relaxed),
            WatchEvent::Update(update) => {
                if update.version != last.load(Ordering::Relaxed) + 1 {
                    out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last.store(update.version, Ordering::Relaxed);
            }
            // The client resumes by itself after any drop, including the one it makes on a
            // version gap, so the app never sees one out of order; what the server did shows
            // up here instead (storms abort the watch, which ends it without this event).
            WatchEvent::Disconnected { .. } => {
                disconnects.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}
