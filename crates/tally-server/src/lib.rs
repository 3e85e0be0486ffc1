//! The Tally server: durable live counters over HTTP RPC and WebSocket.
//!
//! [`run`] serves an [`AppState`] on a bound listener until a shutdown future completes; the
//! `tally` binary is a thin command line over it.
//!
//! # Layout
//! - `accept`: the accept loop over hyper: connection limits, header deadline, HTTP shutdown.
//! - [`tls`]: the `--tls-cert`/`--tls-key` PEM files loaded into a rustls acceptor.
//! - [`state`]: the shared parts every handler gets ([`AppState`]).
//! - [`access`]: every request check (Host, origin, credentials, grants, write rate), called
//!   by HTTP and WebSocket alike.
//! - [`http`]: the router, RPC handlers, `/metrics`, `/healthz` and `/readyz`.
//! - `static_files`: the web page at `/` and its files, from a table the binary embeds.
//! - `ws`: the version-1 socket (`/ws/counter/{name}`): one counter, snapshot or resume,
//!   then live updates.
//! - `session`: the version-2 socket (`/ws`): many subscriptions and calls over one socket,
//!   generic over its transport so that it is unit-tested over channels.
//! - `connection`: what both sockets share: the transport, buffers, credentials at the
//!   upgrade, keep-alive, rate window, bounded sends, closes and the advised reconnect delay.
//! - `replay`: updates rebuilt from history for a resume or a catch-up, and the bounds on replays.
//! - `sampler`: the server's own figures, sampled from the metrics once a second for the
//!   sockets that `watchServer` (the admin page).
//! - `calls`: the counter procedures, answered alike for an RPC and a socket `call`.
//! - [`registry`]: name → counter actor, started on first use; keeps each counter's topic.
//! - [`topic`]: a counter's fan-out: a ring grown with use, wake-ups, presence counts.
//! - [`presence`]: what presence is announced: the node's own counts, or summed over the
//!   nodes sharing a PostgreSQL database.
//! - [`counter`]: the actor that alone changes a counter: batches, commits, broadcasts, answers.
//! - [`framing`]: an update's JSON, serialized once for every watcher and replay.
//! - [`store`]: the storage interface, its SQLite and PostgreSQL implementations, write
//!   health for `/readyz`, `tally backup`, `tally export`/`import` (the only SQL).
//! - [`metrics`]: what is counted for `/metrics`.
//! - `log_limit`: storage-failure log lines, at most one per kind per second.
//! - [`config`], [`shutdown`], `clock`: settings, the stop signal, timestamps.

mod accept;
pub mod access;
pub mod broker;
mod calls;
mod clock;
pub mod config;
mod connection;
pub mod counter;
pub mod framing;
pub mod http;
mod log_limit;
pub mod metrics;
pub mod openapi;
pub mod presence;
pub mod registry;
mod replay;
mod sampler;
mod session;
pub mod shutdown;
pub mod state;
mod static_files;
pub mod store;
pub mod tls;
pub mod topic;
mod ws;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use broker::{Broker, Change, LocalBroker, PostgresBroker};
pub use config::Config;
pub use http::router;
pub use shutdown::shutdown_signal;
pub use state::AppState;
pub use static_files::{CONTENT_SECURITY_POLICY, StaticFile, WebPage, WebPageError};
pub use store::{
    PostgresOptions, PostgresStore, Quotas, SqliteOptions, SqliteStore, Store, StoreError,
};

/// Serves Tally on `listener` until `shutdown` completes, then stops in order: stop accepting
/// and finish in-flight requests; close every WebSocket with 1012; let every counter finish its
/// pending commits; close the store.
///
/// # Errors
/// When the TLS files of `config.tls` cannot be used (an `InvalidInput` error naming the file
/// and what is wrong, before anything is served), when the API keys cannot be read from the
/// store, or when the listener fails.
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_node(listener, store, Box::new(LocalBroker), config, shutdown).await
}

/// [`run`] as one node of several sharing `store`: `broker` brings word of the other nodes'
/// commits, so this node's watchers get them and its counters are read again.
///
/// # Errors
/// As for [`run`].
pub async fn run_node(
    listener: TcpListener,
    store: Arc<dyn Store>,
    broker: Box<dyn Broker>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Loaded before anything is served, so that bad files stop the server at once.
    let tls = config
        .tls
        .as_ref()
        .map(tls::acceptor)
        .transpose()
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let accept_config = accept::AcceptConfig {
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
        header_timeout: config.header_timeout,
        grace: config.shutdown_grace,
        tls,
    };
    let keys = store.keys().await.map_err(|error| {
        std::io::Error::other(format!("cannot read the API keys from storage: {error}"))
    })?;
    let state = AppState::new(Arc::clone(&store), config, &keys);
    state.registry.spawn_presence_ticker();
    let token = state.shutdown.clone();
    let sockets = state.sockets.clone();
    let registry = state.registry.clone();
    let metrics = Arc::clone(&state.metrics);

    // Rate buckets of principals that stopped writing are dropped every few seconds, so the
    // limiter holds only recent writers.
    let sweeper_state = state.clone();
    let sweeper_token = token.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let held = sweeper_state.access.forget_idle_buckets();
                    sweeper_state.metrics.rate_buckets.set(i64::try_from(held).unwrap_or(i64::MAX));
                }
                () = sweeper_token.cancelled() => break,
            }
        }
    });
    spawn_broker(broker, &state, token.clone());
    sampler::spawn(&state, token.clone());
    let signal_token = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal_token.cancel();
    });
    accept::serve(listener, router(state), &accept_config, metrics, token.clone()).await;
    token.cancel();

    // Upgraded connections are not HTTP requests any more: the sockets saw the token and are
    // closing with 1012; wait for them.
    sockets.close();
    if tokio::time::timeout(accept_config.grace, sockets.wait()).await.is_err() {
        tracing::warn!("some WebSockets did not close within the grace period");
    }
    registry.shutdown().await;
    store.close().await;
    Ok(())
}

/// Runs `broker` and acts on what it says until `stop`: other nodes' commits reach the
/// counters' actors, missed notifications make every counter in use be read again, and key
/// changes are read from storage.
fn spawn_broker(
    broker: Box<dyn Broker>,
    state: &AppState,
    stop: tokio_util::sync::CancellationToken,
) {
    let (changes, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(broker.run(changes, stop));
    let state = state.clone();
    tokio::spawn(async move {
        while let Some(change) = received.recv().await {
            match change {
                broker::Change::Counter { name, version } => state.registry.changed(&name, version),
                broker::Change::Deleted { name, epoch } => {
                    state.registry.deleted_elsewhere(&name, epoch)
                }
                broker::Change::Everything => state.registry.changed_all(),
                broker::Change::Keys => match state.store.keys().await {
                    Ok(records) => state.access.sync_keys(&records),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the API keys another node changed")
                    }
                },
            }
        }
    });
}
