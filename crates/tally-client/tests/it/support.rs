//! Starting an in-process server, reading a watch or a subscription with a deadline, and a
//! proxy that loses an answer on purpose.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tally_client::{Subscription, SubscriptionEvent, Watch, WatchEvent};
use tally_server::{Config, SqliteOptions, SqliteStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

pub(crate) struct Server {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Runs a server on `addr` (port 0 for any) over the database in `dir`.
pub(crate) async fn serve(dir: &Path, addr: SocketAddr) -> (Server, SocketAddr) {
    serve_with(dir, addr, Config::default()).await
}

/// Runs a server with `config` (its shutdown grace shortened) on `addr` over the database in
/// `dir`.
pub(crate) async fn serve_with(
    dir: &Path,
    addr: SocketAddr,
    config: Config,
) -> (Server, SocketAddr) {
    let store = SqliteStore::open(&dir.join("tally.db"), SqliteOptions::default()).expect("store");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let config = Config { shutdown_grace: Duration::from_secs(2), ..config };
    let task = tokio::spawn(tally_server::run(listener, Arc::new(store), config, async move {
        let _ = stopped.await;
    }));
    (Server { stop: Some(stop), task }, addr)
}

impl Server {
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("stops")
            .expect("task")
            .expect("run");
    }
}

/// The watch's next event, within [`PATIENCE`].
pub(crate) async fn next(watch: &mut Watch) -> WatchEvent {
    tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("an event in time")
        .expect("stream open")
}

/// The subscription's next event, within [`PATIENCE`].
pub(crate) async fn next_event(subscription: &mut Subscription) -> SubscriptionEvent {
    tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .unwrap_or_else(|_| panic!("an event of {} in time", subscription.name()))
        .expect("stream open")
}

/// Whether the watch's stream ends (within [`PATIENCE`]) with no further event.
pub(crate) trait EndsSoon {
    async fn next_is_end(&mut self) -> bool;
}

impl EndsSoon for Watch {
    async fn next_is_end(&mut self) -> bool {
        tokio::time::timeout(PATIENCE, self.next())
            .await
            .expect("the stream ends in time")
            .is_none()
    }
}

/// A TCP proxy in front of a server that can lose one answer on purpose: after
/// [`Proxy::hold_next`], the next bytes a client sends are passed on, but nothing the server
/// sends back on that connection is, until the test cuts the connection. So a request reaches
/// the server (and is applied) while its answer is lost, as on a network that drops.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    trigger: Arc<std::sync::Mutex<Option<Hold>>>,
    task: JoinHandle<()>,
}

/// What a held connection reports, and waits for.
struct Hold {
    /// Told once the client's bytes were passed on and the answer is being held.
    held: oneshot::Sender<()>,
    /// Cuts the connection when told.
    cut: oneshot::Receiver<()>,
}

/// The test's side of a hold.
pub(crate) struct Held {
    /// Resolves once the request went through and its answer is held.
    pub(crate) held: oneshot::Receiver<()>,
    /// Send to drop the connection, answer unsent.
    pub(crate) cut: oneshot::Sender<()>,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let trigger: Arc<std::sync::Mutex<Option<Hold>>> = Arc::default();
        let armed = Arc::clone(&trigger);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
                tokio::spawn(pipe(client, server, Arc::clone(&armed)));
            }
        });
        Self { addr, trigger, task }
    }

    /// Holds the answer to the next bytes any client sends (see [`Proxy`]).
    pub(crate) fn hold_next(&self) -> Held {
        let (held_tx, held) = oneshot::channel();
        let (cut, cut_rx) = oneshot::channel();
        *self.trigger.lock().expect("trigger lock") = Some(Hold { held: held_tx, cut: cut_rx });
        Held { held, cut }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Passes bytes both ways until either side closes, or until a hold is cut.
async fn pipe(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
    trigger: Arc<std::sync::Mutex<Option<Hold>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut from_client = vec![0_u8; 64 * 1024];
    let mut from_server = vec![0_u8; 64 * 1024];
    let mut cut: Option<oneshot::Receiver<()>> = None;
    loop {
        let holding = cut.is_some();
        tokio::select! {
            read = client.read(&mut from_client) => {
                let Ok(read @ 1..) = read else { return };
                if server.write_all(&from_client[..read]).await.is_err() {
                    return;
                }
                if !holding && let Some(hold) = trigger.lock().expect("trigger lock").take() {
                    let _ = hold.held.send(());
                    cut = Some(hold.cut);
                }
            }
            read = server.read(&mut from_server), if !holding => {
                let Ok(read @ 1..) = read else { return };
                if client.write_all(&from_server[..read]).await.is_err() {
                    return;
                }
            }
            _ = async { cut.as_mut().expect("holding").await }, if holding => return,
        }
    }
}
