//! Server memory per subscription and per watcher: one v2 socket with many subscriptions, and
//! many sockets with one watch each, all of one counter or each of its own, over v1 and v2.
//! Each measurement runs on a fresh server: one that already held many sockets reuses their
//! freed memory, and its RSS would not grow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use tally_client::Client;

use crate::server::{Memory, ServerProcess};
use crate::{socket, watchers};

/// Which socket endpoint the watchers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `/ws/counter/{name}`: one counter per socket.
    V1,
    /// `/ws` with one `subscribe`.
    V2,
}

impl Protocol {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::V1 => "v1",
            Protocol::V2 => "v2",
        }
    }
}

/// What the watchers watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// All the same counter.
    OneCounter,
    /// Each its own counter (a page where each user watches their own).
    OwnCounter,
}

impl Layout {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Layout::OneCounter => "one counter",
            Layout::OwnCounter => "own counter each",
        }
    }
}

fn address(server: &ServerProcess) -> anyhow::Result<SocketAddr> {
    let base = server.base.trim_start_matches("http://");
    base.parse().with_context(|| format!("{base} is not IP:PORT"))
}

fn grown(before: Memory, after: Memory, count: usize) -> (f64, f64) {
    let per = |before: u64, after: u64| after.saturating_sub(before) as f64 / count.max(1) as f64;
    (per(before.rss, after.rss), per(before.pss, after.pss))
}

/// Server RSS per subscription on one socket, in bytes.
pub(crate) struct PerSubscription {
    /// `count` subscriptions to counters nobody watched before: each also brings its
    /// counter's topic (and actor).
    pub(crate) new_counters: f64,
    /// A second socket's `count` subscriptions to the same counters: the subscription alone.
    pub(crate) watched_counters: f64,
}

/// Two sockets on a fresh server; the first subscribes to `count` counters, then the second
/// to the same ones; the server's RSS growth after each, per subscription.
/// `settle` is how long the server is left alone before each reading.
pub(crate) async fn per_subscription(
    server: &ServerProcess,
    count: usize,
    settle: Duration,
) -> anyhow::Result<PerSubscription> {
    let addr = address(server)?;
    let prefix = format!("subs{}", fastrand::u32(..));
    let names: Vec<String> = (0..count).map(|index| format!("{prefix}-{index}")).collect();
    // Both sockets are open before the first reading, so only subscriptions are counted.
    let mut first = socket::connect(addr).await?;
    let mut second = socket::connect(addr).await?;
    tokio::time::sleep(settle).await;
    let before = server.memory()?;
    socket::subscribe_all(&mut first, &names, 64).await?;
    tokio::time::sleep(settle).await;
    let middle = server.memory()?;
    socket::subscribe_all(&mut second, &names, 64).await?;
    tokio::time::sleep(settle).await;
    let after = server.memory()?;
    Ok(PerSubscription {
        new_counters: grown(before, middle, count).0,
        watched_counters: grown(middle, after, count).0,
    })
}

/// Server RSS growth per counter when `count` counters are written once each and nobody
/// watches them (their actors are in memory, with no topic): the part of a watcher of its own
/// counter that is the counter's, not the socket's.
pub(crate) async fn per_counter(
    server: &ServerProcess,
    count: usize,
    settle: Duration,
) -> anyhow::Result<f64> {
    let client = Client::new(&server.base)?;
    let prefix = format!("counters{}", fastrand::u32(..));
    // The HTTP connections are made, and the first counter loaded, before the first reading.
    client.increment(&format!("{prefix}-warm"), 1).await?;
    tokio::time::sleep(settle).await;
    let before = server.memory()?;
    let writes = futures_util::stream::iter(0..count)
        .map(|counter| {
            let name = format!("{prefix}-{counter}");
            let client = &client;
            async move { client.increment(&name, 1).await }
        })
        .buffer_unordered(32);
    let results: Vec<_> = writes.collect().await;
    for result in results {
        result.context("writing a counter")?;
    }
    tokio::time::sleep(settle).await;
    let after = server.memory()?;
    Ok(grown(before, after, count).0)
}

/// What one layout cost.
pub(crate) struct LayoutMemory {
    pub(crate) rss_per_watcher: f64,
    pub(crate) pss_per_watcher: f64,
    /// Every watcher got the one update written to its counter afterwards.
    pub(crate) all_received: bool,
}

/// `count` watchers on a fresh server, in `layout` over `protocol`: the server's memory growth
/// per watcher (read `settle` after the last has opened); then one write to every watched
/// counter, which every watcher must get.
pub(crate) async fn layout(
    server: &ServerProcess,
    protocol: Protocol,
    layout: Layout,
    count: usize,
    settle: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<LayoutMemory> {
    let addr = address(server)?;
    let client = Client::new(&server.base)?;
    let prefix = format!("layout{}", fastrand::u32(..));
    let counters = match layout {
        Layout::OneCounter => 1,
        Layout::OwnCounter => count,
    };
    let before = server.memory()?;
    let got = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(count);
    match protocol {
        Protocol::V1 => {
            let sockets = watchers::open_many(addr, &prefix, counters, count, progress).await?;
            tokio::time::sleep(settle).await;
            for (_, mut socket) in sockets {
                let got = Arc::clone(&got);
                tasks.push(tokio::spawn(async move {
                    if watchers::next_update(&mut socket).await.is_some() {
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                    socket
                }));
            }
        }
        Protocol::V2 => {
            let options = socket::Options::default();
            let sockets =
                socket::open_many(addr, &prefix, counters, count, options, progress).await?;
            tokio::time::sleep(settle).await;
            for (_, _, mut socket) in sockets {
                let got = Arc::clone(&got);
                tasks.push(tokio::spawn(async move {
                    if socket::next_update(&mut socket).await.is_some() {
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                    socket
                }));
            }
        }
    }
    // Read before the reading tasks run, which changes nothing on the server.
    let after = server.memory()?;
    let received = watchers::write_each_and_wait(&client, &prefix, counters, &got, count).await?;
    for task in tasks {
        task.abort();
    }
    let (rss_per_watcher, pss_per_watcher) = grown(before, after, count);
    Ok(LayoutMemory { rss_per_watcher, pss_per_watcher, all_received: received == count })
}
