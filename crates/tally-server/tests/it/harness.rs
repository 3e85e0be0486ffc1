//! A real server on an ephemeral loopback port, and real HTTP and WebSocket clients for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tally_proto::ServerMessage;
use tally_proto::socket::Frame;
use tally_server::{
    Config, PostgresBroker, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore,
};
use tempfile::TempDir;

use crate::postgres::TestDatabase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen at once before failing.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// Whether this build of the suite stores in PostgreSQL (the `it_postgres` target, which runs
/// every test of `it` again on a fresh PostgreSQL database per server) rather than SQLite.
pub(crate) const POSTGRES: bool = matches!(env!("CARGO_CRATE_NAME").as_bytes(), b"it_postgres");

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    dir: TempDir,
    /// The PostgreSQL database, shared by every node started on it.
    database: Option<Arc<TestDatabase>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    http: reqwest::Client,
}

/// A config with the defaults, except what tests need shorter.
pub(crate) fn test_config() -> Config {
    Config { shutdown_grace: Duration::from_secs(2), ..Config::default() }
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(test_config(), SqliteOptions::default()).await
    }

    pub(crate) async fn start_with(config: Config, options: SqliteOptions) -> Self {
        if POSTGRES {
            let database = Arc::new(TestDatabase::create().await);
            return Self::start_node(config, options, database).await;
        }
        Self::start_in(tempfile::tempdir().expect("temp dir"), config, options).await
    }

    /// A server on the SQLite database `tally.db` in `dir` (made if missing).
    async fn start_in(dir: TempDir, config: Config, options: SqliteOptions) -> Self {
        let store = SqliteStore::open(&dir.path().join("tally.db"), options).expect("open store");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tally_server::run(listener, Arc::new(store), config, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            dir,
            database: None,
            stop: Some(stop),
            task: Some(task),
            http: reqwest::Client::new(),
        }
    }

    /// A node on the PostgreSQL `database`, beside any other node started on it: the store and
    /// broker `tally serve --database postgres://…` runs with.
    pub(crate) async fn start_node(
        config: Config,
        options: SqliteOptions,
        database: Arc<TestDatabase>,
    ) -> Self {
        let options = PostgresOptions {
            history_limit: options.history_limit,
            idempotency_window: options.idempotency_window,
            pool_size: 4,
            quotas: options.quotas,
        };
        let store = PostgresStore::open(&database.url, options).await.expect("open store");
        let broker = PostgresBroker::new(&database.url).expect("broker");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tally_server::run_node(
            listener,
            Arc::new(store),
            Box::new(broker),
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            dir: tempfile::tempdir().expect("temp dir"),
            database: Some(database),
            stop: Some(stop),
            task: Some(task),
            http: reqwest::Client::new(),
        }
    }

    /// Stops this server (as SIGTERM would) and starts it again on the same database.
    #[allow(dead_code)] // Not every test target restarts.
    pub(crate) async fn restart(mut self) -> Self {
        let (dir, database) = self.take_database();
        self.stop().await;
        match database {
            Some(database) => {
                Self::start_node(test_config(), SqliteOptions::default(), database).await
            }
            None => Self::start_in(dir, test_config(), SqliteOptions::default()).await,
        }
    }

    /// Stops this server and starts it again on a new, empty database in place of its own: the
    /// SQLite file deleted and made again at the same path, or, on PostgreSQL, a fresh database.
    /// What an operator who replaced the database, or restored an old backup, does.
    #[allow(dead_code)] // Not every test target restarts.
    pub(crate) async fn restart_on_a_new_database(mut self) -> Self {
        let (dir, database) = self.take_database();
        self.stop().await;
        if database.is_some() {
            let fresh = Arc::new(TestDatabase::create().await);
            return Self::start_node(test_config(), SqliteOptions::default(), fresh).await;
        }
        for file in ["tally.db", "tally.db-wal", "tally.db-shm"] {
            match std::fs::remove_file(dir.path().join(file)) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => panic!("cannot delete {file}: {error}"),
            }
        }
        Self::start_in(dir, test_config(), SqliteOptions::default()).await
    }

    /// The database folder and PostgreSQL database, leaving an empty folder in their place.
    fn take_database(&mut self) -> (TempDir, Option<Arc<TestDatabase>>) {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        (dir, self.database.take())
    }

    /// How many rows the store's `table` holds, read beside the server as another program would.
    pub(crate) async fn stored_rows(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        match &self.database {
            Some(database) => database.count(&sql).await,
            None => {
                let db = rusqlite::Connection::open(self.db_path()).expect("open db");
                db.query_row(&sql, [], |row| row.get(0)).expect("count")
            }
        }
    }

    pub(crate) fn db_path(&self) -> PathBuf {
        self.dir.path().join("tally.db")
    }

    /// Shuts the server down as SIGTERM would and waits for `run` to return.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(PATIENCE, task).await.expect("server stops in time");
            result.expect("server task").expect("run returns Ok");
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as JSON to `/rpc/counter.<procedure>`; returns the status and the raw answer.
    async fn post(&self, procedure: &str, body: &Value) -> (u16, String) {
        let path = format!("/rpc/counter.{procedure}");
        self.raw(
            reqwest::Method::POST,
            &path,
            Some("application/json"),
            body.to_string().into_bytes(),
        )
        .await
    }

    /// POSTs `body` to `/rpc/counter.<procedure>`; returns the status and the parsed answer.
    pub(crate) async fn call(&self, procedure: &str, body: Value) -> (u16, Value) {
        let (status, text) = self.post(procedure, &body).await;
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is JSON: {text:?}")))
    }

    /// Like `call`, with `headers` too (a credential, say).
    #[allow(dead_code)] // Not every test target sends headers.
    pub(crate) async fn call_with(
        &self,
        procedure: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.url(&format!("/rpc/counter.{procedure}")))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.body(body.to_string()).send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is JSON: {text:?}")))
    }

    /// Like `call`, but the answer must be 200; returns its raw text.
    pub(crate) async fn call_text(&self, procedure: &str, body: Value) -> String {
        let (status, text) = self.post(procedure, &body).await;
        assert_eq!(status, 200, "{procedure} {body} answered {text}");
        text
    }

    /// Like `call`, but the answer must be 200.
    pub(crate) async fn ok(&self, procedure: &str, body: Value) -> Value {
        let (status, answer) = self.call(procedure, body.clone()).await;
        assert_eq!(status, 200, "{procedure} {body} answered {answer}");
        answer
    }

    pub(crate) async fn increment(&self, name: &str, amount: i64) -> Value {
        self.ok("increment", serde_json::json!({"name": name, "amount": amount})).await
    }

    pub(crate) async fn value(&self, name: &str) -> (i64, u64) {
        let answer = self.ok("getValue", serde_json::json!({"name": name})).await;
        (answer["value"].as_i64().expect("value"), answer["version"].as_u64().expect("version"))
    }

    /// An HTTP request with `headers` and no body.
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self.http.request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request")
    }

    /// Sends `GET path` byte for byte on a connection of its own; see [`raw_get`].
    pub(crate) async fn raw_get(&self, path: &str) -> (u16, String) {
        raw_get(TcpStream::connect(self.addr).await.expect("connect"), path).await
    }

    /// Raw HTTP request with any method, content type and body.
    pub(crate) async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, String) {
        let mut request = self.http.request(method, self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("request");
        (response.status().as_u16(), response.text().await.expect("body"))
    }

    /// The value of one sample in `/metrics`, e.g. `tally_counters_in_memory` or
    /// `tally_errors_total{code="invalid_name"}`; 0 when absent.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        self.metric_if_reachable(name).await.expect("metrics")
    }

    /// Like `metric`, but `None` when the server refuses the connection (a limit is reached).
    pub(crate) async fn metric_if_reachable(&self, name: &str) -> Option<f64> {
        let response = self.http.get(self.url("/metrics")).send().await.ok()?;
        let text = response.text().await.ok()?;
        Some(sample(&text, name).unwrap_or(0.0))
    }

    /// Waits until `sample` reads `expected` (metrics change a moment after the event).
    pub(crate) async fn wait_for_metric(&self, sample: &str, expected: f64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self.metric(sample).await;
            if value == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} stayed {value}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn watch(&self, name: &str) -> Watcher {
        Watcher::connect(&format!("ws://{}/ws/counter/{name}", self.addr)).await
    }

    pub(crate) async fn watch_since(&self, name: &str, since: u64) -> Watcher {
        Watcher::connect(&format!("ws://{}/ws/counter/{name}?since={since}", self.addr)).await
    }

    /// A version-2 socket (`/ws`): commands are sent with `send_text`, frames read with
    /// `next_frame`.
    #[allow(dead_code)] // Used by the cluster's tests (it_postgres) only.
    pub(crate) async fn socket(&self) -> Watcher {
        Watcher::connect(&format!("ws://{}/ws", self.addr)).await
    }
}

/// A node as [`TestServer::start_node`] starts it, but run by a tokio runtime of its own:
/// [`CrashableNode::crash`] drops that runtime, which ends every task of the node at once (its
/// sockets, its connections to PostgreSQL) and runs none of its shutdown, as if its process had
/// been killed. Used by the cluster's tests (it_postgres) only.
#[allow(dead_code)]
pub(crate) struct CrashableNode {
    pub(crate) server: TestServer,
    runtime: Option<tokio::runtime::Runtime>,
}

#[allow(dead_code)]
impl CrashableNode {
    pub(crate) async fn start(config: Config, database: Arc<TestDatabase>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the node's runtime");
        let server = runtime
            .spawn(TestServer::start_node(config, SqliteOptions::default(), database))
            .await
            .expect("the node starts");
        Self { server, runtime: Some(runtime) }
    }

    /// Kills the node: its tasks are dropped where they are.
    pub(crate) fn crash(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for CrashableNode {
    fn drop(&mut self) {
        // A runtime may not be dropped (which blocks) inside the test's own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of the sample `name` (with its labels, if any) in Prometheus text `text`; `None`
/// when absent.
pub(crate) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        Some(value.trim().parse().expect("metric value"))
    })
}

/// Sends `GET path` byte for byte on `stream` (HTTP clients tidy `..` and `%2e%2e` away before
/// sending, which is exactly what must not be relied on), asking the server to close it after
/// answering; returns the status and the body.
pub(crate) async fn raw_get(mut stream: TcpStream, path: &str) -> (u16, String) {
    let host = stream.peer_addr().expect("peer address");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    (status, body)
}

/// A WebSocket client watching one counter.
pub(crate) struct Watcher {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a watch ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// A close frame with this code.
    Closed(u16),
    /// The connection ended without a close frame.
    Dropped,
}

impl Watcher {
    pub(crate) async fn connect(url: &str) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|error| panic!("connect {url}: {error}"));
        Self { socket }
    }

    /// A WebSocket client at `url` over `stream`, already connected (from a chosen source
    /// address, say).
    pub(crate) async fn over(stream: TcpStream, url: &str) -> Self {
        let (socket, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .unwrap_or_else(|error| panic!("connect {url}: {error}"));
        Self { socket }
    }

    /// The next text message, as sent.
    pub(crate) async fn next_text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a message in time")
                .expect("socket open")
                .expect("message");
            match message {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// The next version-2 frame.
    #[allow(dead_code)] // Used by the cluster's tests (it_postgres) only.
    pub(crate) async fn next_frame(&mut self) -> Frame {
        let text = self.next_text().await;
        Frame::from_json(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
    }

    pub(crate) async fn next(&mut self) -> ServerMessage {
        let text = self.next_text().await;
        ServerMessage::from_json(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
    }

    /// The next message, which must be an update; returns its version and raw text.
    pub(crate) async fn next_update(&mut self) -> (u64, String) {
        let text = self.next_text().await;
        match ServerMessage::from_json(&text) {
            Ok(ServerMessage::Update(update)) => (update.version, text),
            other => panic!("expected an update, got {other:?}"),
        }
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.expect("send");
    }

    pub(crate) async fn send(&mut self, message: Message) {
        self.socket.send(message).await.expect("send");
    }

    /// Reads until the socket ends, skipping other messages; says how it ended.
    pub(crate) async fn ended(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("the socket ends in time")
            {
                Some(Ok(Message::Close(frame))) => {
                    return Ended::Closed(frame.map_or(1005, |frame| u16::from(frame.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = self
            .socket
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// A WebSocket peer that completes the handshake and then reads nothing unless asked, and
/// never answers pings: what a hung or stalled client looks like to the server. Its receive
/// buffer is small, so a server writing to it fills the connection quickly.
pub(crate) struct SilentPeer {
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl SilentPeer {
    pub(crate) async fn connect(addr: SocketAddr, path: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("small receive buffer");
        let mut stream = socket.connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("handshake");
        let mut buffered = Vec::new();
        let header_end = loop {
            let mut chunk = [0_u8; 1024];
            let read = stream.read(&mut chunk).await.expect("read handshake");
            assert!(read > 0, "server closed during the handshake");
            buffered.extend_from_slice(&chunk[..read]);
            if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
        };
        let head = String::from_utf8_lossy(&buffered[..header_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buffered.drain(..header_end);
        Self { stream, buffered }
    }

    /// Sends one text message, masked as a client's must be (a v2 command, say).
    pub(crate) async fn send_text(&mut self, text: &str) {
        const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            short @ 0..=125 => frame.push(0x80 | short as u8),
            medium @ 126..=65535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(medium as u16).to_be_bytes());
            }
            long => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(long as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(byte, mask)| byte ^ mask));
        self.stream.write_all(&frame).await.expect("send");
    }

    /// Sends `bytes` as they are: frames made by hand, broken on purpose.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads frames until the server's close frame, then on to the end of the connection:
    /// the close's code and reason, and whether the connection then ended cleanly (a FIN) rather
    /// than with a reset. `None` when no close frame came before the end.
    pub(crate) async fn close_then_end(&mut self) -> Option<(u16, String, bool)> {
        let mut close = None;
        loop {
            while let Some((opcode, payload, used)) = parse_frame(&self.buffered) {
                self.buffered.drain(..used);
                if opcode == 0x8 && close.is_none() {
                    let code = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
                    close = Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
                }
            }
            let mut chunk = vec![0_u8; 64 * 1024];
            let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the server ends the connection in time");
            match read {
                Ok(0) => return close.map(|(code, reason)| (code, reason, true)),
                Err(_) => return close.map(|(code, reason)| (code, reason, false)),
                Ok(read) => self.buffered.extend_from_slice(&chunk[..read]),
            }
        }
    }

    /// Reads frames until a close frame (its code) or the end of the connection (`None`).
    pub(crate) async fn wait_for_close_code(&mut self) -> Option<u16> {
        loop {
            while let Some((opcode, payload, used)) = parse_frame(&self.buffered) {
                self.buffered.drain(..used);
                if opcode == 0x8 {
                    return payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]]));
                }
            }
            let mut chunk = vec![0_u8; 64 * 1024];
            let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the server ends the connection in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(read) => self.buffered.extend_from_slice(&chunk[..read]),
            }
        }
    }
}

/// One unmasked server frame at the start of `bytes`: opcode, payload, bytes used.
fn parse_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let (length, start) = match second & 0x7f {
        126 => (u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize, 10),
        short => (short as usize, 2),
    };
    let payload = bytes.get(start..start + length)?.to_vec();
    Some((first & 0x0f, payload, start + length))
}
