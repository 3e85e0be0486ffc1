//! The Tally server: durable live counters over HTTP RPC and WebSocket.
//!
//! [`run`] serves an [`AppState`] on a bound listener until a shutdown future completes; the
//! `tally` binary is a thin command line over it.
//!
//! # Layout
//! - [`http`]: the router, RPC handlers, `/metrics` and `/healthz`.
//! - `ws`: one task per WebSocket: snapshot or resume, then live updates.
//! - [`registry`]: name → counter actor, started on first use; keeps broadcast channels.
//! - [`counter`]: the actor that alone changes a counter: batches, commits, broadcasts, answers.
//! - [`store`]: the storage interface and its SQLite implementation (the only SQL).
//! - [`metrics`]: what is counted for `/metrics`.
//! - [`config`], [`shutdown`], `clock`: settings, the stop signal, timestamps.

mod clock;
pub mod config;
pub mod counter;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod shutdown;
pub mod store;
mod ws;

use std::future::Future;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

pub use config::Config;
pub use http::{AppState, router};
pub use shutdown::shutdown_signal;
pub use store::{SqliteOptions, SqliteStore, Store, StoreError};

/// Serves Tally on `listener` until `shutdown` completes, then stops in order: stop accepting
/// and finish in-flight requests; close every WebSocket with 1012; let every counter finish its
/// pending commits; close the store.
///
/// # Errors
/// When the listener fails.
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = config.shutdown_grace;
    let state = AppState::new(Arc::clone(&store), config);
    let token = state.shutdown.clone();
    let sockets = state.sockets.clone();
    let registry = state.registry.clone();

    let signal_token = token.clone();
    // Updates are small and latency matters more than packet count: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let serve = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        signal_token.cancel();
    });
    // Graceful shutdown waits for in-flight requests; a client that never finishes its request
    // must not hold the server up past the grace period.
    let result = tokio::select! {
        result = serve.into_future() => result,
        () = async { token.cancelled().await; tokio::time::sleep(grace).await } => Ok(()),
    };
    token.cancel();

    // axum does not wait for upgraded connections: the sockets saw the token and are closing.
    sockets.close();
    if tokio::time::timeout(grace, sockets.wait()).await.is_err() {
        tracing::warn!("some WebSockets did not close within the grace period");
    }
    registry.shutdown().await;
    store.close().await;
    result
}
