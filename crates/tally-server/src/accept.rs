//! The accept loop: connection limits, a deadline for request headers, and the HTTP side of
//! graceful shutdown.
//!
//! Written over hyper directly rather than `axum::serve`, which offers neither a header timeout
//! nor a hook to refuse connections. Every connection's socket carries a guard that releases
//! its place in the limits when the socket is finally dropped, so a WebSocket (which outlives
//! its HTTP connection after the upgrade) keeps counting until it closes.
//!
//! With TLS, each connection's handshake runs in its own task, bounded by the header timeout,
//! inside the same limits; plain HTTP takes the same path as without TLS support, with no
//! boxing or extra task.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use dashmap::DashMap;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// The most bytes the kernel holds not yet sent on one connection (`TCP_NOTSENT_LOWAT`, set
/// on Linux).
#[cfg(any(target_os = "linux", target_os = "android"))]
const UNSENT_LIMIT_BYTES: u32 = 128 * 1024;

/// The client's address, in every request's extensions (anonymous principals are keyed by it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

/// The client's address of a request, as the accept loop saw it (`None` for a router served
/// some other way, as in tests that call it directly).
pub(crate) fn client_ip(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions.get::<ClientAddr>().map(|ClientAddr(address)| address.ip())
}

/// How the accept loop treats connections.
pub(crate) struct AcceptConfig {
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) grace: Duration,
    /// Serve TLS with this, or plain HTTP without.
    pub(crate) tls: Option<TlsAcceptor>,
}

/// Open connections, in total and per client address.
struct Limits {
    total: Arc<Semaphore>,
    per_ip: DashMap<IpAddr, usize>,
    max_per_ip: usize,
    metrics: Arc<Metrics>,
}

/// One connection's place in the limits, given back on drop.
struct Admitted {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    limits: Arc<Limits>,
}

impl Limits {
    /// A place for a connection from `ip`, or the name of the limit it hit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, &'static str> {
        let permit = Arc::clone(&self.total).try_acquire_owned().map_err(|_| "total")?;
        let mut count = self.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err("per_ip");
        }
        *count += 1;
        drop(count);
        self.metrics.connections_open.inc();
        Ok(Admitted { _permit: permit, ip, limits: Arc::clone(self) })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.per_ip.remove_if_mut(&self.ip, |_, count| {
            *count -= 1;
            *count == 0
        });
        self.limits.metrics.connections_open.dec();
    }
}

/// The longest a closed connection lingers, draining what its client still sends.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// The most bytes a lingering connection reads and drops before it closes anyway.
const LINGER_BYTES: usize = 1024 * 1024;

/// A socket that holds its connection's place in the limits for as long as it lives, and that
/// closes by lingering (see [`Lingering::linger`]).
struct Counted(
    /// `None` only once dropped, when the lingering close took it.
    Option<Lingering>,
);

/// What a connection's close needs: its socket, and its place in the limits, held until the
/// socket is closed.
struct Lingering {
    stream: TcpStream,
    _admitted: Admitted,
}

impl Counted {
    fn new(stream: TcpStream, admitted: Admitted) -> Self {
        Self(Some(Lingering { stream, _admitted: admitted }))
    }

    fn stream(self: Pin<&mut Self>) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.get_mut().0 {
            Some(lingering) => Ok(Pin::new(&mut lingering.stream)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(lingering) = self.0.take() else { return };
        // The usual end of a connection: the client closed first and everything it sent was
        // read. Closed at once, with no task.
        if let Ok(0) = lingering.stream.try_read(&mut [0_u8; 1]) {
            return;
        }
        // Outside a runtime (it is going away) the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(lingering.linger());
        }
    }
}

impl Lingering {
    /// Closes the connection without a reset: sends FIN after what was written (a close
    /// frame, say), then reads and drops what the client still sends until it closes too, for
    /// at most `LINGER_TIME` and `LINGER_BYTES` (Apache's and nginx's "lingering close").
    ///
    /// A socket closed with unread data, or that receives data once closed, is reset by the
    /// kernel, and a reset can destroy what the client had not read yet: a client sending an
    /// oversized message (whose rest the WebSocket layer never reads) or random frames saw a
    /// reset (1006, "reconnect") instead of the 1009 or 1002 it was sent ("do not"). The
    /// connection keeps its place in the limits while it lingers, so lingering is bounded by
    /// `--max-connections` and `--max-connections-per-ip` like any connection.
    async fn linger(mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = self.stream.shutdown().await;
        let deadline = tokio::time::Instant::now() + LINGER_TIME;
        // Small: many connections may linger at once (a restart closes every socket), and
        // what is read is thrown away.
        let mut buffer = [0_u8; 1024];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await {
                Ok(Ok(read)) if read > 0 => drained += read,
                // The client closed (or reset) its side, or took too long.
                _ => break,
            }
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream()?.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|lingering| lingering.stream.is_write_vectored())
    }
}

/// Serves `app` on `listener` until `token` is cancelled, then stops accepting and lets
/// in-flight requests finish for up to `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    config: &AcceptConfig,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) {
    let limits = Arc::new(Limits {
        total: Arc::new(Semaphore::new(config.max_connections.max(1))),
        per_ip: DashMap::new(),
        max_per_ip: config.max_connections_per_ip.max(1),
        metrics: Arc::clone(&metrics),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(config.header_timeout);
    // Every HTTP connection's task, so shutdown can wait for in-flight requests.
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, usually: wait a moment rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = token.cancelled() => break,
        };
        let admitted = match limits.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(limit) => {
                metrics.connection_refused(limit);
                tracing::debug!(%peer, limit, "connection refused: limit reached");
                continue;
            }
        };
        // Updates are small and latency matters more than packet count: no Nagle delay.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        // A client that stops reading must stall the server's sends, not fill the kernel's
        // send buffer (autotuned up to `tcp_wmem`'s maximum, 4 MB by default): without this, a
        // replay of 2.5 MB to a client that never reads was taken whole by the kernel, and
        // 1 000 of them held 2.1 GiB of its memory. Past `UNSENT_LIMIT_BYTES` not yet sent,
        // a write waits, so the send stalls, and `--send-timeout` drops the connection. Only
        // bytes not yet sent count: what is in flight (the congestion window) is not limited,
        // so a reading client is as fast as before.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(error) =
            socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_LIMIT_BYTES)
        {
            tracing::debug!(%error, "cannot set TCP_NOTSENT_LOWAT");
        }
        let io = Counted::new(stream, admitted);
        let service = tower::ServiceBuilder::new()
            .map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ClientAddr(peer));
                request
            })
            .service(app.clone());
        let service = TowerToHyperService::new(service);
        let token = token.clone();
        match &config.tls {
            None => {
                let connection = http.serve_connection(TokioIo::new(io), service).with_upgrades();
                connections.spawn(drive(connection, token, peer));
            }
            Some(acceptor) => {
                let handshake = tokio::time::timeout(config.header_timeout, acceptor.accept(io));
                let http = http.clone();
                connections.spawn(async move {
                    let stream = tokio::select! {
                        handshake = handshake => match handshake {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                        () = token.cancelled() => return,
                    };
                    let connection =
                        http.serve_connection(TokioIo::new(stream), service).with_upgrades();
                    drive(connection, token, peer).await;
                });
            }
        }
    }
    drop(listener);
    // In-flight requests finish; a client that never finishes its request must not hold the
    // server up past the grace period.
    connections.close();
    if tokio::time::timeout(config.grace, connections.wait()).await.is_err() {
        tracing::warn!("some HTTP requests did not finish within the grace period");
    }
}

/// Runs one HTTP connection (over TCP, or TLS over TCP) to its end; on `token`, finishes the
/// request in progress, answers it, then closes.
async fn drive<I, S, B>(
    connection: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    token: CancellationToken,
    peer: std::net::SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = token.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
