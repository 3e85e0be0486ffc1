//! Request load: C clients, each with its own keep-alive connection, sending one request at a
//! time for a fixed duration.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use indicatif::ProgressBar;
use tally_client::Client;
use tally_proto::Procedure;
use tally_proto::rpc::AmountBody;

use crate::stats;

/// What a load run achieved.
pub(crate) struct LoadResult {
    /// Answered with 200.
    pub(crate) ok: u64,
    /// Answered otherwise, or failed.
    pub(crate) failed: u64,
    pub(crate) seconds: f64,
    pub(crate) latency: Histogram<u64>,
}

impl LoadResult {
    pub(crate) fn per_second(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

/// Which request each client sends.
#[derive(Clone)]
pub(crate) enum Request {
    /// `GET /healthz`: what HTTP itself costs here.
    Health,
    /// `increment` of one counter.
    Increment(Arc<str>),
    /// `increment` of one counter, each with an `Idempotency-Key` of its own.
    IncrementKeyed(Arc<str>),
    /// `increment` of a random one of `count` counters named `prefix-N`.
    Spread { prefix: Arc<str>, count: u32 },
}

/// Runs `clients` clients for `duration`; the progress bar ticks once per second.
pub(crate) async fn run(
    base: &str,
    request: &Request,
    clients: usize,
    duration: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<LoadResult> {
    run_over(&[base], request, clients, duration, progress).await
}

/// [`run`] against several servers (the nodes of a cluster): client `i` talks to
/// `bases[i % bases.len()]`, so the clients are spread round-robin.
pub(crate) async fn run_over(
    bases: &[&str],
    request: &Request,
    clients: usize,
    duration: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!bases.is_empty(), "a load needs at least one server");
    let addrs: Vec<&str> = bases.iter().map(|base| base.trim_start_matches("http://")).collect();
    let started = Instant::now();
    let deadline = started + duration;
    // Every request body is built before the clock starts, so the clients' loop (which shares
    // the two cores with the server) does no formatting: the one body of a hot counter, or one
    // per counter of a spread.
    let bodies: Arc<[Bytes]> = match request {
        Request::Health => Arc::new([]),
        Request::Increment(name) | Request::IncrementKeyed(name) => {
            Arc::new([increment_body(name)])
        }
        Request::Spread { prefix, count } => {
            (0..*count).map(|index| increment_body(&format!("{prefix}-{index}"))).collect()
        }
    };
    let keyed = matches!(request, Request::IncrementKeyed(_));
    let mut tasks = Vec::new();
    for client in 0..clients {
        // One HTTP/1.1 connection per client, kept alive, one request at a time, as separate
        // users would. hyper's client connection directly: a full-featured client (pooling,
        // redirects, …) costs the shared CPUs more than the server's own work.
        let connection = Connection::open(addrs[client % addrs.len()]).await?;
        let bodies = Arc::clone(&bodies);
        tasks.push(tokio::spawn(async move {
            let mut connection = connection;
            let mut latency = stats::histogram();
            let (mut ok, mut failed) = (0_u64, 0_u64);
            for sequence in 0_u64.. {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                let answered = match bodies.len() {
                    0 => connection.get("/healthz").await,
                    // A key no other request of this run has (the counter is new for the run).
                    _ if keyed => {
                        let key = format!("h{client}-{sequence}");
                        connection.post_increment_keyed(bodies[0].clone(), &key).await
                    }
                    // Covered by the next arm, but spares the hot loop a fastrand call each request.
                    1 => connection.post_increment(bodies[0].clone()).await,
                    n => connection.post_increment(bodies[fastrand::usize(..n)].clone()).await,
                };
                match answered {
                    Ok(true) => {
                        ok += 1;
                        stats::record(&mut latency, sent.elapsed());
                    }
                    Ok(false) => failed += 1,
                    // The connection broke: nothing more can be sent on it.
                    Err(_) => {
                        failed += 1;
                        break;
                    }
                }
            }
            (ok, failed, latency)
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
    for task in tasks {
        let (ok, failed, latency) = task.await.context("load task")?;
        result.ok += ok;
        result.failed += failed;
        result.latency.add(&latency).context("merging latencies")?;
    }
    result.seconds = started.elapsed().as_secs_f64();
    ticker.abort();
    Ok(result)
}

/// The JSON body of an increment of `name` by 1, as tally-proto writes it.
fn increment_body(name: &str) -> Bytes {
    let body = AmountBody { name: name.to_owned(), amount: None, expected_version: None };
    // A struct of a string and an absent number always serializes.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// `/rpc/counter.increment`, parsed once.
static INCREMENT_URI: LazyLock<hyper::Uri> = LazyLock::new(|| {
    let path = format!("/rpc/{}", Procedure::Increment.path_name());
    // A procedure's path segment is plain ASCII, always a valid path.
    hyper::Uri::try_from(path).expect("a valid request path")
});

/// One keep-alive HTTP/1.1 connection to the server.
pub(crate) struct Connection {
    host: HeaderValue,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    pub(crate) async fn open(addr: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("nodelay")?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .context("HTTP handshake")?;
        // Drives the connection; ends when the sender is dropped.
        tokio::spawn(connection);
        let host = HeaderValue::from_str(addr).context("the server address as a Host header")?;
        Ok(Self { host, sender })
    }

    /// Sends `request` and reads the whole answer; `Ok(true)` for a 2xx.
    async fn send(&mut self, request: hyper::Request<Full<Bytes>>) -> anyhow::Result<bool> {
        self.sender.ready().await.context("connection")?;
        let response = self.sender.send_request(request).await.context("request")?;
        let success = response.status().is_success();
        // The request is done when its answer is.
        response.into_body().collect().await.context("answer")?;
        Ok(success)
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<bool> {
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, &self.host)
            .body(Full::new(Bytes::new()))
            .context("building a request")?;
        self.send(request).await
    }

    pub(crate) async fn increment(&mut self, name: &str) -> anyhow::Result<bool> {
        self.post_increment(increment_body(name)).await
    }

    /// Posts an increment whose JSON body is already built.
    async fn post_increment(&mut self, body: Bytes) -> anyhow::Result<bool> {
        let request = hyper::Request::post(INCREMENT_URI.clone())
            .header(hyper::header::HOST, self.host.clone())
            .header(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .context("building a request")?;
        self.send(request).await
    }

    /// Posts an increment with an `Idempotency-Key` header.
    async fn post_increment_keyed(&mut self, body: Bytes, key: &str) -> anyhow::Result<bool> {
        let request = hyper::Request::post(INCREMENT_URI.clone())
            .header(hyper::header::HOST, self.host.clone())
            .header(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("idempotency-key", HeaderValue::from_str(key).context("a key as a header")?)
            .body(Full::new(body))
            .context("building a request")?;
        self.send(request).await
    }

    /// Calls `procedure` on counter `name` over the RPC; `Ok(true)` for a 2xx.
    pub(crate) async fn call(&mut self, procedure: Procedure, name: &str) -> anyhow::Result<bool> {
        let body = serde_json::json!({ "name": name }).to_string();
        let request = hyper::Request::post(format!("/rpc/{}", procedure.path_name()))
            .header(hyper::header::HOST, self.host.clone())
            .header(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(body)))
            .context("building a request")?;
        self.send(request).await
    }
}

/// The sum of the values of `names`: checks that every acknowledged increment is counted.
pub(crate) async fn total_of(client: &Client, names: Vec<String>) -> anyhow::Result<i64> {
    let mut total = 0;
    for chunk in names.chunks(64) {
        let reads = chunk.iter().map(|name| client.get_value(name));
        for value in futures_util::future::join_all(reads).await {
            total += value.context("reading a counter back")?.value;
        }
    }
    Ok(total)
}

/// `redis-benchmark -t incr` with `clients` clients against the local Redis: requests/s.
pub(crate) fn redis_incr(clients: usize, requests: u64) -> anyhow::Result<f64> {
    let output = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", "6379", "-t", "incr", "-q", "-c"])
        .arg(clients.to_string())
        .arg("-n")
        .arg(requests.to_string())
        .output()
        .context(
            "running redis-benchmark (is it installed, and Redis running on 127.0.0.1:6379?)",
        )?;
    let text = String::from_utf8_lossy(&output.stdout);
    // The last progress line ends with the summary: "INCR: 123456.79 requests per second, ...".
    let summary =
        text.rsplit('\r').flat_map(str::lines).find(|line| line.contains("requests per second"));
    summary
        .and_then(|line| line.split("INCR:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .with_context(|| format!("unexpected redis-benchmark output: {text:?}"))
}
