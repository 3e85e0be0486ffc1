//! Conflation on a hot counter: W v2 watchers of one counter written R times a second, each
//! subscription plain or with `maxRate`; what the server spends (CPU from /proc) and what the
//! watchers receive.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use indicatif::ProgressBar;
use serde_json::{Map, Value};
use tally_proto::Procedure;
use tokio_tungstenite::tungstenite::Message;

use crate::socket::{self, CallTemplate, Glance};

/// How long to wait, after the last write, for every watcher to reach the final version.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run measured.
pub(crate) struct Conflation {
    /// Writes acknowledged.
    pub(crate) writes: u64,
    /// Writes refused (for instance `rate_limited`).
    pub(crate) failed_writes: u64,
    /// How long the writer wrote.
    pub(crate) write_seconds: f64,
    /// From the first write until every watcher had the final version.
    pub(crate) seconds: f64,
    /// Updates the watchers received, all together.
    pub(crate) delivered: u64,
    /// The server's CPU time over `seconds`, when its process is known.
    pub(crate) server_cpu: Option<Duration>,
    /// Updates that did not follow the one before: plain subscriptions must see every version
    /// once, in order; conflated ones a rising version.
    pub(crate) out_of_order: u64,
    /// Watchers that ended on the counter's final version.
    pub(crate) ended_on_final: usize,
    /// The most updates one watcher received within any second.
    pub(crate) most_in_a_second: usize,
}

/// `watchers` subscriptions (with `max_rate`, when given) to a fresh counter, then `write_rate`
/// increments a second for `duration` through socket calls, until every watcher has the last
/// version. `cpu` reads the server's CPU time.
pub(crate) async fn run(
    server: SocketAddr,
    cpu: &dyn Fn() -> Option<Duration>,
    watchers: usize,
    max_rate: Option<f64>,
    write_rate: u32,
    duration: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<Conflation> {
    let prefix = format!("conflation{}", fastrand::u32(..));
    let name = format!("{prefix}-0");
    let mut writer = socket::connect(server).await.context("opening the writer's socket")?;
    let mut body = Map::new();
    body.insert("name".into(), Value::from(name.as_str()));
    let template = CallTemplate::new(Procedure::Increment, body, false);
    // The counter exists, at version 1, before anyone watches it.
    socket::send(&mut writer, template.render(0, "")).await?;
    socket::reply(&mut writer, 0).await?;

    let options = socket::Options { max_rate, presence: false };
    let sockets = socket::open_many(server, &prefix, 1, watchers, options, progress).await?;
    progress.finish_and_clear();
    let delivered = Arc::new(AtomicU64::new(0));
    let out_of_order = Arc::new(AtomicU64::new(0));
    let most_in_a_second = Arc::new(AtomicUsize::new(0));
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..watchers).map(|_| AtomicU64::new(0)).collect());
    let mut readers = Vec::with_capacity(watchers);
    for (index, (_, version, mut socket)) in sockets.into_iter().enumerate() {
        let (delivered, out_of_order) = (Arc::clone(&delivered), Arc::clone(&out_of_order));
        let (most_in_a_second, last) = (Arc::clone(&most_in_a_second), Arc::clone(&last));
        last[index].store(version, Ordering::Relaxed);
        readers.push(tokio::spawn(async move {
            let mut previous = version;
            // Arrivals within the last second (conflated subscriptions only).
            let mut recent = VecDeque::new();
            while let Some(version) = socket::next_update(&mut socket).await {
                let in_order =
                    if max_rate.is_some() { version > previous } else { version == previous + 1 };
                if !in_order {
                    out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                previous = version;
                delivered.fetch_add(1, Ordering::Relaxed);
                last[index].store(version, Ordering::Relaxed);
                if max_rate.is_some() {
                    let now = Instant::now();
                    recent.push_back(now);
                    while recent
                        .front()
                        .is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(1))
                    {
                        recent.pop_front();
                    }
                    most_in_a_second.fetch_max(recent.len(), Ordering::Relaxed);
                }
            }
        }));
    }

    let started = Instant::now();
    let cpu_before = cpu();
    let (writes, failed_writes) = write_paced(writer, &template, write_rate, duration).await?;
    let write_seconds = started.elapsed().as_secs_f64();
    let final_version = 1 + writes;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let behind = || last.iter().filter(|at| at.load(Ordering::Relaxed) < final_version).count();
    while behind() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu = cpu_before.zip(cpu()).map(|(before, after)| after.saturating_sub(before));
    for reader in readers {
        reader.abort();
    }
    let ended_on_final = watchers - behind();
    if failed_writes > 0 && writes == 0 {
        bail!("every write of the conflation run was refused");
    }
    Ok(Conflation {
        writes,
        failed_writes,
        write_seconds,
        seconds,
        delivered: delivered.load(Ordering::Relaxed),
        server_cpu,
        out_of_order: out_of_order.load(Ordering::Relaxed),
        ended_on_final,
        most_in_a_second: most_in_a_second.load(Ordering::Relaxed),
    })
}

/// Sends `rate` calls a second on `writer` for `duration`, topped up every 10 ms to what the
/// elapsed time allows, then waits for their answers; returns (acknowledged, refused).
async fn write_paced(
    writer: crate::watchers::Socket,
    template: &CallTemplate,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<(u64, u64)> {
    let (mut sink, mut stream) = writer.split();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (mut sent, mut ok, mut failed) = (0_u64, 0_u64, 0_u64);
    loop {
        let writing = Instant::now() < deadline;
        if !writing && ok + failed == sent {
            return Ok((ok, failed));
        }
        tokio::select! {
            _ = tick.tick(), if writing => {
                let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                while sent < due {
                    sent += 1;
                    sink.feed(Message::text(template.render(sent, ""))).await.context("sending a write")?;
                }
                sink.flush().await.context("sending writes")?;
            }
            message = stream.next() => {
                let Some(message) = message else { bail!("the writer's socket closed") };
                if let Message::Text(text) = message.context("reading a write's answer")?
                    && let Glance::Reply { ok: answered, .. } = socket::glance(&text)
                {
                    if answered { ok += 1 } else { failed += 1 }
                }
            }
        }
    }
}
