//! Settings of a running server that are not storage settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::access::AuthConfig;
use crate::static_files::WebPage;

/// How the server treats counters and sockets. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// A counter nobody touched for this long leaves memory (hibernates); its watchers stay.
    pub idle_timeout: Duration,
    /// Each interval, a socket that sent nothing during it is pinged; one still silent at the
    /// next tick is closed with 4001.
    pub ping_interval: Duration,
    /// How many updates a watcher may fall behind before it is closed with 4000 (slow consumer).
    pub watch_buffer: usize,
    /// How long one send to a watcher may stall before the connection is dropped (a close frame
    /// could not get through a stalled connection either; counted as a 4000 close).
    pub send_timeout: Duration,
    /// How long shutdown waits for sockets to close after telling them to.
    pub shutdown_grace: Duration,
    /// Web origins (e.g. `http://localhost:5173`) whose pages may call the RPCs and open
    /// WebSockets, besides the server's own; `*` allows every origin. Requests without an
    /// `Origin` header (programs, the CLI) are never refused for it.
    pub allowed_origins: Vec<String>,
    /// Connections (HTTP and WebSocket) the server holds at most; more are closed at once.
    pub max_connections: usize,
    /// Connections one client address may hold at most (behind a proxy, all clients share one).
    pub max_connections_per_ip: usize,
    /// How long a connection may take to send a request's headers, including the first request
    /// after it opened; a slower one (or a silent one) is dropped.
    pub header_timeout: Duration,
    /// How long a client may take to send an RPC's body; answered 408 `request_timeout` past it.
    pub request_timeout: Duration,
    /// Watchers one counter may have at most; more are answered 503 `too_many_watchers`.
    pub max_watchers_per_counter: usize,
    /// Replays from history (resumes with `since`, version-2 catch-ups) running at once at
    /// most; a resume past it gets a `resync` snapshot instead.
    pub max_replays: usize,
    /// Replays running at once for one client address at most (IPv6 by /64); a resume past it
    /// gets a `resync` snapshot instead.
    pub max_replays_per_address: usize,
    /// Bytes of updates all replays together send per second at most (0: no bound).
    pub replay_bytes_per_second: u32,
    /// Messages a WebSocket client may send per second; past it the socket is closed with 1008.
    pub max_messages_per_second: u32,
    /// The web page served at `/` with its files, or `None` for an API-only server (unknown
    /// paths, `/` included, answer a plain 404). The `tally` binary gives the page it embeds.
    pub web_page: Option<WebPage>,
    /// Serve HTTPS and WSS with this certificate chain and key instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Who may do what (tokens, keys, anonymous grants, hosts, write rate).
    pub auth: AuthConfig,
    /// How long an idempotency key is remembered after its write committed; a retry after it
    /// is applied again (`--idempotency-window`; the store's `SqliteOptions` has the same
    /// setting, for deleting old records).
    pub idempotency_window: Duration,
    /// Idempotency keys remembered per counter at most, the newest (`--idempotency-keys`).
    pub idempotency_keys: usize,

    // The version-2 socket (`GET /ws`, many counters over one socket).
    /// Subscriptions one socket may hold at most; more are refused `too_many_subscriptions`.
    pub max_subscriptions: usize,
    /// Commands one socket may have waiting for their replies (calls in flight) at most; more
    /// are refused `too_many_in_flight`.
    pub max_in_flight: usize,
    /// Commands one socket may send per second; past it each is refused `rate_limited` (with
    /// `retryAfterMs`) and the socket stays.
    pub max_commands_per_second: u32,
    /// On shutdown and load refusals, each socket is told to reconnect after a delay chosen at
    /// random in `0..=reconnect_spread`, so that clients come back spread out.
    pub reconnect_spread: Duration,
}

/// The PEM files of a TLS server certificate.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`--tls-cert`).
    pub cert_path: PathBuf,
    /// The private key, PKCS#8, PKCS#1 or SEC1 (`--tls-key`).
    pub key_path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            watch_buffer: 1024,
            send_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_watchers_per_counter: 100_000,
            max_replays: 64,
            max_replays_per_address: 4,
            replay_bytes_per_second: 32 * 1024 * 1024,
            max_messages_per_second: 50,
            web_page: None,
            tls: None,
            auth: AuthConfig::default(),
            idempotency_window: Duration::from_secs(24 * 3600),
            idempotency_keys: 10_000,
            max_subscriptions: 1000,
            max_in_flight: 256,
            max_commands_per_second: 1000,
            reconnect_spread: Duration::from_secs(5),
        }
    }
}
