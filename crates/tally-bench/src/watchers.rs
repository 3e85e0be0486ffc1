//! WebSocket scenarios: fan-out latency, idle watchers and their memory, connect-to-snapshot.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tally_client::Client;
use tally_proto::ServerMessage;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::reference::ReferenceProcess;
use crate::stats;

/// Connections per loopback source address: under the server's default
/// `--max-connections-per-ip` (10 000), and each address has about 28 000 ephemeral ports.
const PER_SOURCE_ADDRESS: usize = 5_000;
/// How long to wait for every watcher to get something before calling it lost.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) type Socket = WebSocketStream<TcpStream>;

/// How many watcher connections this run has opened: each takes the next port of the next source
/// address, so ports of earlier scenarios (still in TIME_WAIT) are never needed again.
static OPENED: AtomicUsize = AtomicUsize::new(0);

/// Makes the watcher connections of this process start at source address
/// 127.0.0.(2 + `first_address`): the bench's child processes (a cluster's crowd of watchers)
/// each take addresses of their own, so that none runs short of ephemeral ports.
pub(crate) fn first_source_address(first_address: usize) {
    OPENED.store(first_address * PER_SOURCE_ADDRESS, Ordering::Relaxed);
}

/// Source addresses needed for `connections` watcher connections.
pub(crate) fn source_addresses_for(connections: usize) -> usize {
    connections.div_ceil(PER_SOURCE_ADDRESS)
}

/// Opens a v1 watcher of counter `name` (see [`connect_to`]).
pub(crate) async fn connect(server: SocketAddr, name: &str) -> anyhow::Result<Socket> {
    connect_to(server, &format!("/ws/counter/{name}")).await
}

/// Opens a WebSocket to `path` from source address 127.0.0.(2 + n / 5 000), where n counts the
/// connections opened so far (127.0.0.1 is left to the HTTP clients).
pub(crate) async fn connect_to(server: SocketAddr, path: &str) -> anyhow::Result<Socket> {
    let index = OPENED.fetch_add(1, Ordering::Relaxed);
    let source = Ipv4Addr::new(
        127,
        0,
        0,
        u8::try_from(2 + index / PER_SOURCE_ADDRESS).context("too many watchers in one run")?,
    );
    let socket = TcpSocket::new_v4().context("socket")?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .with_context(|| format!("binding {source}"))?;
    let stream = socket.connect(server).await.context("connecting")?;
    stream.set_nodelay(true).context("nodelay")?;
    // Small buffers: the benchmark holds up to 100 000 of these itself.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let url = format!("ws://{server}{path}");
    let (socket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    Ok(socket)
}

/// Reads until the next update; returns its version (`None` when the socket ends).
pub(crate) async fn next_update(socket: &mut Socket) -> Option<u64> {
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message
            && let Some(version) = update_version(&text)
        {
            return Some(version);
        }
    }
    None
}

/// The version of an update, read without parsing the whole message: with 100 000 watchers in
/// this process, full parsing would measure the benchmark more than the server. An update's
/// first `"version":` field is its own (the metadata has `operationCount` instead).
fn update_version(text: &str) -> Option<u64> {
    if text.starts_with(r#"{"type":"snapshot""#) || !text.starts_with(r#"{"type":""#) {
        return None;
    }
    let rest = &text[text.find(r#""version":"#)? + r#""version":"#.len()..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

/// Reads the first message (the snapshot); returns its version.
pub(crate) async fn snapshot(socket: &mut Socket) -> anyhow::Result<u64> {
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message.context("reading the snapshot")? {
            if let Ok(ServerMessage::Snapshot(snapshot)) = ServerMessage::from_json(&text) {
                return Ok(snapshot.version);
            }
            bail!("expected a snapshot, got {text}");
        }
    }
    bail!("socket closed before its snapshot")
}

/// Opens `count` watchers spread over `counters` counters named `prefix-N`, each read to its
/// snapshot, `parallel` handshakes at a time.
pub(crate) async fn open_many(
    server: SocketAddr,
    prefix: &str,
    counters: usize,
    count: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<(usize, Socket)>> {
    open_many_over(&[server], prefix, counters, count, progress).await
}

/// [`open_many`] over several servers (the nodes of a cluster): watcher `i` goes to
/// `servers[i % servers.len()]`.
pub(crate) async fn open_many_over(
    servers: &[SocketAddr],
    prefix: &str,
    counters: usize,
    count: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<(usize, Socket)>> {
    anyhow::ensure!(!servers.is_empty(), "watchers need at least one server");
    let parallel = 64;
    let mut sockets = Vec::with_capacity(count);
    let mut pending = futures_util::stream::iter(0..count)
        .map(|index| {
            let counter = index % counters;
            let name = format!("{prefix}-{counter}");
            let server = servers[index % servers.len()];
            async move {
                let mut socket = connect(server, &name).await?;
                snapshot(&mut socket).await?;
                anyhow::Ok((counter, socket))
            }
        })
        .buffer_unordered(parallel);
    while let Some(opened) = pending.next().await {
        sockets.push(opened?);
        progress.inc(1);
    }
    Ok(sockets)
}

/// What one fan-out run measured.
pub(crate) struct Fanout {
    /// Write sent → each watcher has it.
    pub(crate) latency: Histogram<u64>,
    /// Write sent → the last watcher has it, per update.
    pub(crate) last: Histogram<u64>,
}

/// Who makes the updates that the watchers of a scenario wait for.
#[derive(Clone, Copy)]
pub(crate) enum Writer<'a> {
    /// Tally: durable increments over HTTP, as its users write.
    Tally(&'a Client),
    /// The reference broadcaster: an update pushed at every socket, nothing stored.
    Reference(&'a ReferenceProcess),
}

impl Writer<'_> {
    /// Makes version `version` of counter `name` (whose version is one less now) and returns
    /// once the server has answered.
    async fn write(&self, name: &str, version: u64) -> anyhow::Result<()> {
        match self {
            Writer::Tally(client) => {
                client.increment(name, 1).await.context("fan-out write")?;
            }
            Writer::Reference(reference) => reference.broadcast(version).await?,
        }
        Ok(())
    }
}

/// `watchers` watchers of one counter; `updates` writes, one at a time, each waited for by all.
pub(crate) async fn fanout(
    writer: Writer<'_>,
    server: SocketAddr,
    watchers: usize,
    updates: u64,
    progress: &ProgressBar,
) -> anyhow::Result<Fanout> {
    fanout_over(writer, &[server], watchers, updates, progress).await
}

/// [`fanout`] with the watchers spread over `servers`, which need not include the writer's: in
/// a cluster, the time from a write on one node to the watchers on the others.
pub(crate) async fn fanout_over(
    writer: Writer<'_>,
    servers: &[SocketAddr],
    watchers: usize,
    updates: u64,
    progress: &ProgressBar,
) -> anyhow::Result<Fanout> {
    let prefix = format!("fanout{}", fastrand::u32(..));
    let name = format!("{prefix}-0");
    // The counter starts at version 1, as the reference's snapshot says.
    writer.write(&name, 1).await.context("creating the counter")?;
    let sockets = open_many_over(servers, &prefix, 1, watchers, progress).await?;
    let received: Arc<Vec<AtomicUsize>> =
        Arc::new((0..=updates).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::with_capacity(watchers);
    for (_, mut socket) in sockets {
        let received = Arc::clone(&received);
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(updates as usize);
            for _ in 0..updates {
                let Some(version) = next_update(&mut socket).await else { break };
                times.push((version, Instant::now()));
                if let Some(count) =
                    usize::try_from(version - 1).ok().and_then(|index| received.get(index))
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            times
        }));
    }
    // The counter is at version 1; update k makes version k + 1.
    let mut sent_at = Vec::with_capacity(updates as usize);
    for k in 1..=updates {
        sent_at.push(Instant::now());
        writer.write(&name, k + 1).await?;
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while received[k as usize].load(Ordering::Relaxed) < watchers {
            if Instant::now() > deadline {
                bail!(
                    "update {k} reached {} of {watchers} watchers",
                    received[k as usize].load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let mut latency = stats::histogram();
    let mut last_per_update = vec![Duration::ZERO; updates as usize];
    for task in tasks {
        for (version, at) in task.await.context("watcher task")? {
            let Some(index) = usize::try_from(version.saturating_sub(2))
                .ok()
                .filter(|index| *index < sent_at.len())
            else {
                continue;
            };
            let delay = at.saturating_duration_since(sent_at[index]);
            stats::record(&mut latency, delay);
            last_per_update[index] = last_per_update[index].max(delay);
        }
    }
    let mut last = stats::histogram();
    for delay in last_per_update {
        stats::record(&mut last, delay);
    }
    Ok(Fanout { latency, last })
}

/// What the idle-watcher run measured.
pub(crate) struct Idle {
    pub(crate) held: usize,
    pub(crate) rss_per_watcher: f64,
    pub(crate) pss_per_watcher: f64,
    /// The kernel's slab growth per TCP socket (both ends of each watcher's connection are on
    /// this machine, so the growth is shared by two sockets per watcher); `None` when unreadable.
    pub(crate) kernel_per_socket: Option<f64>,
    pub(crate) all_received: bool,
}

/// Opens `count` idle watchers over `count / 100` counters, measures the server's memory growth,
/// then writes once to every counter (the reference: broadcasts once) and checks that every
/// watcher gets it.
pub(crate) async fn idle(
    writer: Writer<'_>,
    server: SocketAddr,
    memory: impl Fn() -> anyhow::Result<crate::server::Memory>,
    count: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Idle> {
    let counters = count.div_ceil(100);
    let prefix = format!("idle{}", fastrand::u32(..));
    let before = memory()?;
    let slab_before = crate::machine::kernel_slab_bytes();
    let sockets = open_many(server, &prefix, counters, count, progress).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = memory()?;
    let slab_after = crate::machine::kernel_slab_bytes();
    let got = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(count);
    for (_, mut socket) in sockets {
        let got = Arc::clone(&got);
        tasks.push(tokio::spawn(async move {
            if next_update(&mut socket).await.is_some() {
                got.fetch_add(1, Ordering::Relaxed);
            }
            // Keep the socket open until every watcher is counted.
            socket
        }));
    }
    let received = match writer {
        Writer::Tally(client) => {
            write_each_and_wait(client, &prefix, counters, &got, count).await?
        }
        Writer::Reference(reference) => {
            // Its watchers all see one counter, at version 1.
            reference.broadcast(2).await?;
            wait_for(&got, count).await
        }
    };
    for task in tasks {
        task.abort();
    }
    let grown = |before: u64, after: u64| after.saturating_sub(before) as f64 / count as f64;
    Ok(Idle {
        held: count,
        rss_per_watcher: grown(before.rss, after.rss),
        pss_per_watcher: grown(before.pss, after.pss),
        kernel_per_socket: slab_before
            .zip(slab_after)
            .map(|(before, after)| grown(before, after) / 2.0),
        all_received: received == count,
    })
}

/// Time from starting a connection to having the snapshot, `count` times in a row.
pub(crate) async fn connect_to_snapshot(
    client: &Client,
    server: SocketAddr,
    count: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Histogram<u64>> {
    let name = format!("cold{}", fastrand::u32(..));
    client.increment(&name, 1).await.context("creating the counter")?;
    let mut latency = stats::histogram();
    for _ in 0..count {
        let started = Instant::now();
        let mut socket = connect(server, &name).await?;
        snapshot(&mut socket).await?;
        stats::record(&mut latency, started.elapsed());
        drop(socket);
        progress.inc(1);
    }
    Ok(latency)
}

/// Writes once to each of counters `{prefix}-0..counters`, then waits (up to 60 s) until
/// `got` counts `count` watchers that received their update; answers how many did.
pub(crate) async fn write_each_and_wait(
    client: &Client,
    prefix: &str,
    counters: usize,
    got: &AtomicUsize,
    count: usize,
) -> anyhow::Result<usize> {
    let writes = futures_util::stream::iter(0..counters)
        .map(|counter| {
            let name = format!("{prefix}-{counter}");
            async move { client.increment(&name, 1).await }
        })
        .buffer_unordered(32);
    let results: Vec<_> = writes.collect().await;
    for result in results {
        result.context("writing to a watched counter")?;
    }
    Ok(wait_for(got, count).await)
}

/// Waits (up to 60 s) until `got` reaches `count`; answers where it got to.
async fn wait_for(got: &AtomicUsize, count: usize) -> usize {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while got.load(Ordering::Relaxed) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::update_version;

    #[test]
    fn reads_the_version_of_updates_only() {
        let update = r#"{"type":"increment","value":3,"previousValue":2,"version":17,"metadata":{"id":1,"name":"a","value":3,"createdAt":null,"updatedAt":null,"operationCount":17},"timestamp":"t"}"#;
        assert_eq!(update_version(update), Some(17));
        assert_eq!(update_version(r#"{"type":"snapshot","value":0,"version":4}"#), None);
        assert_eq!(update_version(r#"{"type":"pong","timestamp":"t"}"#), None);
    }
}
