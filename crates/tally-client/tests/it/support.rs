//! Starting an in-process server, and reading a watch with a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tally_client::{Watch, WatchEvent};
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
