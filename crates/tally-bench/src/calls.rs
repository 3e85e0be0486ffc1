//! A hot counter written through socket calls: C clients, each with one version-2 socket that
//! keeps a window of `call counter.increment` commands in flight, for a fixed duration; the
//! twin of the HTTP load in `load.rs`, whose result it returns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{FutureExt, SinkExt, StreamExt};
use indicatif::ProgressBar;
use serde_json::{Map, Value};
use tally_proto::Procedure;
use tokio_tungstenite::tungstenite::Message;

use crate::load::LoadResult;
use crate::socket::{self, CallTemplate, Glance};
use crate::stats;

/// Who answers the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replies {
    /// Tally, at `/ws`: a `result` (or `error`) frame per call.
    Tally,
    /// The reference echo, at `/echo`: each call sent back as it is.
    Echo,
}

impl Replies {
    fn path(self) -> &'static str {
        match self {
            Replies::Tally => "/ws",
            Replies::Echo => "/echo",
        }
    }

    /// The call a frame answers, and whether it succeeded.
    fn read(self, text: &str) -> Option<(u64, bool)> {
        match self {
            Replies::Tally => match socket::glance(text) {
                Glance::Reply { id, ok } => Some((id, ok)),
                _ => None,
            },
            Replies::Echo => socket::command_id(text).map(|id| (id, true)),
        }
    }
}

/// Runs `clients` sockets to `server`, each with up to `window` increments of `name` in flight,
/// for `duration`; with `keyed`, every call carries an idempotency key of its own.
pub(crate) async fn run(
    (server, replies): (SocketAddr, Replies),
    name: &str,
    clients: usize,
    window: usize,
    keyed: bool,
    duration: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<LoadResult> {
    let mut body = Map::new();
    body.insert("name".into(), Value::from(name));
    let template = std::sync::Arc::new(CallTemplate::new(Procedure::Increment, body, keyed));
    // Every socket is open before the clock starts, as the HTTP clients' connections are.
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        let socket = crate::watchers::connect_to(server, replies.path()).await;
        sockets.push(socket.context("opening a socket for calls")?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(clients);
    for (client, socket) in sockets.into_iter().enumerate() {
        let template = std::sync::Arc::clone(&template);
        tasks.push(tokio::spawn(async move {
            pipeline(socket, replies, &template, client, window, deadline).await
        }));
    }
    let ticker = {
        let progress = progress.clone();
        tokio::spawn(async move {
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                progress.set_position(started.elapsed().as_millis() as u64);
            }
        })
    };
    let mut result = LoadResult { ok: 0, failed: 0, seconds: 0.0, latency: stats::histogram() };
    let mut first_error = None;
    for task in tasks {
        let one = task.await.context("socket call task")??;
        result.ok += one.ok;
        result.failed += one.failed;
        result.latency.add(&one.latency).context("merging latencies")?;
        first_error = first_error.or(one.first_error);
    }
    result.seconds = started.elapsed().as_secs_f64();
    ticker.abort();
    if let Some(error) = first_error {
        eprintln!(
            "calls: {} of the socket calls were refused, the first with {error}",
            result.failed
        );
    }
    Ok(result)
}

/// What one socket achieved.
struct Pipelined {
    ok: u64,
    failed: u64,
    latency: hdrhistogram::Histogram<u64>,
    first_error: Option<String>,
}

/// Keeps `window` calls in flight on `socket` until `deadline`, then waits for the last replies.
/// Replies that are ready together are read together, and the calls that refill the window
/// leave in one write, as any pipelining client would do.
async fn pipeline(
    socket: crate::watchers::Socket,
    replies: Replies,
    template: &CallTemplate,
    client: usize,
    window: usize,
    deadline: Instant,
) -> anyhow::Result<Pipelined> {
    let (mut sink, mut stream) = socket.split();
    let mut in_flight: HashMap<u64, Instant> = HashMap::with_capacity(window * 2);
    let mut done = Pipelined { ok: 0, failed: 0, latency: stats::histogram(), first_error: None };
    let mut next_id = 1_u64;
    loop {
        let now = Instant::now();
        if now < deadline {
            let mut sent = false;
            while in_flight.len() < window {
                // A key no other call of this run has (the counter is new for the run).
                let key =
                    if template.keyed() { format!("s{client}-{next_id}") } else { String::new() };
                sink.feed(Message::text(template.render(next_id, &key)))
                    .await
                    .context("sending a call")?;
                in_flight.insert(next_id, now);
                next_id += 1;
                sent = true;
            }
            if sent {
                sink.flush().await.context("sending calls")?;
            }
        }
        if in_flight.is_empty() {
            break;
        }
        // One reply awaited, then every one already here.
        let mut message = stream.next().await;
        loop {
            let Some(read) = message else {
                anyhow::bail!("the socket closed with {} calls unanswered", in_flight.len())
            };
            if let Message::Text(text) = read.context("reading a reply")?
                && let Some((id, ok)) = replies.read(&text)
                && let Some(sent) = in_flight.remove(&id)
            {
                if ok {
                    done.ok += 1;
                    stats::record(&mut done.latency, sent.elapsed());
                } else {
                    done.failed += 1;
                    if done.first_error.is_none() {
                        done.first_error = Some(text.to_string());
                    }
                }
            }
            match stream.next().now_or_never() {
                Some(next) => message = next,
                None => break,
            }
        }
    }
    let _ = sink.close().await;
    Ok(done)
}
