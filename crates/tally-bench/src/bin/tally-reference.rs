//! `tally-reference`: the least a WebSocket server must do, for tally-bench to measure Tally
//! against in the same run on the same machine (see docs/BENCHMARKS.md, "Targets").
//!
//! - **Fan-out**: it accepts WebSockets at any path but `/echo`, sends each the same snapshot
//!   message Tally's v1 watch sends first, and on `POST /broadcast/VERSION` (on its control
//!   port) writes one update, framed once, to every socket. The update is a real v1 update of
//!   Tally's shape and size, so the benchmark's watchers read both servers alike.
//! - **Echo**: a WebSocket at `/echo` sends every message back, a burst of messages in one
//!   write, as a pipelining server would: the floor under Tally's socket calls.
//!
//! It never reads a watcher's socket after the handshake, stores nothing and checks nothing:
//! it is a floor, not a server. It runs on a tokio runtime with one worker per core, as
//! `tally serve` does, so the two use the same threads.
//!
//! Two fan-out designs, because the issue that asked for this reference found the second
//! faster than the first and asked for the faster one:
//! - `tasks`: a task per watcher, woken by a `tokio::sync::broadcast` channel, writes the frame
//!   (Tally's own shape);
//! - `loop`: no task per watcher: one loop per worker thread writes the frame to each of its
//!   sockets with a non-blocking `try_write`, and only a socket whose kernel buffer is full gets
//!   a task, which finishes that write and the frames queued behind it, in order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::{FutureExt, SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tally_proto::{Action, Metadata, OpKind, ServerMessage, Snapshot, Update};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as HandshakeRequest, Response as HandshakeResponse,
};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// The reference servers of tally-bench: a minimal WebSocket broadcaster and echo.
#[derive(Debug, Parser)]
#[command(name = "tally-reference", version, about)]
struct Args {
    /// Where the WebSockets connect.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    listen: SocketAddr,
    /// Where `POST /broadcast/VERSION` is sent.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    control: SocketAddr,
    /// How the update reaches the sockets.
    #[arg(long, value_enum, default_value_t = Design::Loop)]
    design: Design,
}

/// A fan-out design (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Design {
    /// A task per watcher, woken by a broadcast channel.
    Tasks,
    /// One loop per worker thread writes to its share of the sockets.
    Loop,
}

/// The counter name the reference's messages carry (the length of the benchmark's names).
const NAME: &str = "fanout1234567890-0";

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
    let sockets =
        TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let control = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("binding {}", args.control))?;
    let hub = Hub::new(args.design);
    // tally-bench waits for this line, as it waits for `tally serve`'s.
    eprintln!(
        "listening on {}, control on {}, design {:?}",
        sockets.local_addr()?,
        control.local_addr()?,
        args.design
    );
    let control_hub = Arc::clone(&hub);
    tokio::spawn(async move { serve_control(control, control_hub).await });
    loop {
        let (stream, _) = sockets.accept().await.context("accepting")?;
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            // A failed handshake or a socket gone is the client's business here.
            let _ = accept(stream, &hub).await;
        });
    }
}

/// Upgrades one connection and hands it to the hub (or echoes, at `/echo`).
async fn accept(stream: TcpStream, hub: &Hub) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut path = String::new();
    // The error type is tungstenite's, fixed by its `Callback` trait.
    #[allow(clippy::result_large_err)]
    let record_path = |request: &HandshakeRequest, response: HandshakeResponse| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let socket = tokio_tungstenite::accept_hdr_async(stream, record_path).await?;
    if path == "/echo" {
        return echo(socket).await;
    }
    let mut stream = socket.into_inner();
    stream.write_all(&hub.snapshot).await?;
    hub.add(stream);
    Ok(())
}

/// Sends every message back; the replies to messages that arrived together leave in one write.
async fn echo(socket: tokio_tungstenite::WebSocketStream<TcpStream>) -> anyhow::Result<()> {
    let (mut sink, mut stream) = socket.split();
    while let Some(message) = stream.next().await {
        let mut message = message?;
        loop {
            if message.is_text() || message.is_binary() {
                sink.feed(message).await?;
            }
            match stream.next().now_or_never() {
                Some(Some(next)) => message = next?,
                Some(None) => return Ok(()),
                None => break,
            }
        }
        sink.flush().await?;
    }
    Ok(())
}

/// The control port: `POST /broadcast/VERSION` frames that update once and fans it out; the
/// answer leaves at once, as Tally's answer to a write leaves while its watchers are written.
async fn serve_control(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let hub = Arc::clone(&hub);
                    async move { Ok::<_, std::convert::Infallible>(control(&hub, &request)) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn control(hub: &Hub, request: &Request<hyper::body::Incoming>) -> Response<Empty<Bytes>> {
    let version = request
        .uri()
        .path()
        .strip_prefix("/broadcast/")
        .and_then(|version| version.parse::<u64>().ok());
    let status = match version {
        Some(version) if request.method() == hyper::Method::POST => {
            hub.broadcast(framed(&update_message(version)));
            StatusCode::NO_CONTENT
        }
        _ => StatusCode::NOT_FOUND,
    };
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

/// Where the watchers are, in either design.
struct Hub {
    /// The snapshot every watcher is sent first, framed.
    snapshot: Bytes,
    design: HubDesign,
}

/// One worker's share of the sockets.
type Shard = Arc<Mutex<Vec<Arc<Watcher>>>>;

/// A socket of the `loop` design.
struct Watcher {
    stream: TcpStream,
    /// `Some` while a task finishes a write the socket's buffer could not take: later frames
    /// queue here, in order, for that task.
    backlog: Mutex<Option<VecDeque<Bytes>>>,
}

enum HubDesign {
    Tasks(broadcast::Sender<Bytes>),
    /// Each worker's share of the sockets, and the channel of frames to its loop.
    Loop {
        shards: Vec<(Shard, mpsc::UnboundedSender<Bytes>)>,
    },
}

impl Hub {
    fn new(design: Design) -> Arc<Self> {
        let snapshot = framed(&snapshot_message());
        let design = match design {
            // The benchmark sends one update at a time; a few slots are plenty.
            Design::Tasks => HubDesign::Tasks(broadcast::channel(16).0),
            Design::Loop => {
                // One share of the sockets per worker thread.
                let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
                let shards = (0..workers)
                    .map(|_| {
                        let shard = Shard::default();
                        let (frames, receiver) = mpsc::unbounded_channel();
                        tokio::spawn(write_loop(Arc::clone(&shard), receiver));
                        (shard, frames)
                    })
                    .collect();
                HubDesign::Loop { shards }
            }
        };
        Arc::new(Self { snapshot, design })
    }

    fn add(&self, stream: TcpStream) {
        match &self.design {
            HubDesign::Tasks(sender) => {
                let mut updates = sender.subscribe();
                tokio::spawn(async move {
                    let mut stream = stream;
                    loop {
                        match updates.recv().await {
                            Ok(frame) => {
                                if stream.write_all(&frame).await.is_err() {
                                    return;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                });
            }
            HubDesign::Loop { shards } => {
                let (shard, _) = &shards[fastrand::usize(..shards.len())];
                let watcher = Arc::new(Watcher { stream, backlog: Mutex::new(None) });
                lock(shard).push(watcher);
            }
        }
    }

    fn broadcast(&self, frame: Bytes) {
        match &self.design {
            HubDesign::Tasks(sender) => drop(sender.send(frame)),
            HubDesign::Loop { shards } => {
                for (_, frames) in shards {
                    let _ = frames.send(frame.clone());
                }
            }
        }
    }
}

/// One worker's share of the sockets: each frame, in order, is written to every one of them.
async fn write_loop(shard: Shard, mut frames: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(frame) = frames.recv().await {
        // Sockets that fail are dropped; the rest keep their order.
        lock(&shard).retain(|watcher| {
            let mut backlog = lock(&watcher.backlog);
            if let Some(queue) = backlog.as_mut() {
                queue.push_back(frame.clone());
                return true;
            }
            let rest = match watcher.stream.try_write(&frame) {
                Ok(written) if written == frame.len() => return true,
                Ok(written) => frame.slice(written..),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => frame.clone(),
                Err(_) => return false,
            };
            *backlog = Some(VecDeque::new());
            tokio::spawn(finish(Arc::clone(watcher), rest));
            true
        });
    }
}

/// Writes what a full socket buffer did not take, then the frames queued behind it, when the
/// socket can take them; the loop writes to the socket itself again once the queue is empty.
async fn finish(watcher: Arc<Watcher>, mut rest: Bytes) {
    loop {
        while !rest.is_empty() {
            if watcher.stream.writable().await.is_err() {
                return;
            }
            match watcher.stream.try_write(&rest) {
                Ok(written) => drop(rest.split_to(written)),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
        let mut backlog = lock(&watcher.backlog);
        match backlog.as_mut().and_then(VecDeque::pop_front) {
            Some(next) => rest = next,
            None => {
                *backlog = None;
                return;
            }
        }
    }
}

/// A lock that a panic elsewhere does not poison for good: the data is a list of sockets.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// One unmasked text frame, as a server sends it.
fn framed(text: &str) -> Bytes {
    let mut bytes = Vec::with_capacity(text.len() + 10);
    Frame::message(text.as_bytes().to_vec(), OpCode::Data(Data::Text), true)
        .format(&mut bytes)
        .expect("writing to a Vec cannot fail");
    Bytes::from(bytes)
}

fn metadata(version: u64) -> Metadata {
    let at = "2026-12-02T12:00:00.000Z".to_owned();
    Metadata {
        id: Some(1),
        name: NAME.to_owned(),
        value: i64::try_from(version).unwrap_or(i64::MAX),
        created_at: Some(at.clone()),
        updated_at: Some(at),
        operation_count: version,
        ops_last_minute: None,
        bounds: None,
    }
}

/// The v1 update of an increment to `version`, as Tally sends it.
fn update_message(version: u64) -> String {
    let value = i64::try_from(version).unwrap_or(i64::MAX);
    ServerMessage::Update(Update {
        kind: OpKind::Increment,
        value,
        previous_value: value - 1,
        version,
        metadata: metadata(version),
        timestamp: "2026-12-02T12:00:00.000Z".to_owned(),
        clamped: false,
        by: None,
    })
    .to_json()
}

/// The snapshot of the counter at version 1, as Tally's v1 watch sends it first.
fn snapshot_message() -> String {
    ServerMessage::Snapshot(Snapshot {
        value: 1,
        version: 1,
        metadata: metadata(1),
        timestamp: "2026-12-02T12:00:00.000Z".to_owned(),
        resync: false,
        can: vec![Action::Read],
        epoch: tally_proto::Epoch::parse("0123456789abcdef").ok(),
    })
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_messages_are_tallys() {
        let Ok(ServerMessage::Snapshot(snapshot)) = ServerMessage::from_json(&snapshot_message())
        else {
            panic!("not a snapshot: {}", snapshot_message());
        };
        assert_eq!(snapshot.version, 1);
        let Ok(ServerMessage::Update(update)) = ServerMessage::from_json(&update_message(7)) else {
            panic!("not an update: {}", update_message(7));
        };
        assert_eq!((update.version, update.value, update.previous_value), (7, 7, 6));
    }

    #[test]
    fn a_frame_is_an_unmasked_text_frame() {
        let frame = framed("hello");
        assert_eq!(&frame[..], b"\x81\x05hello");
        let long = framed(&"x".repeat(300));
        assert_eq!(&long[..4], b"\x81\x7e\x01\x2c");
    }
}
