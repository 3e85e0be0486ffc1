//! The RPC calls: `POST /rpc/counter.<procedure>` with a JSON body, to one server or to the
//! nodes of a cluster in turn.
//!
//! With several base URLs, a call goes to the URL that answered last; a failure of the
//! connection itself (refused, reset, no answer in time) moves every later call to the next URL,
//! round robin. An answer never does, not even an error: a refusal is the cluster's answer,
//! since every node reads the same storage. The one exception is a temporary server fault (`503
//! unavailable`, a node that shuts down or lost its storage), which a write already treats as a
//! fate unknown and sends again with its key: that retry goes to the next node.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};
use tally_proto::keys::{CreatedKey, EmptyBody, KeyCreateBody, KeyInfo, KeyList, KeyNameBody};
use tally_proto::limits::LIST_PAGE_MAX;
use tally_proto::rpc::{ConfigureBody, HistoryBody, ListBody, NameBody};
use tally_proto::{
    Bounds, CounterList, Deleted, ErrorBody, ErrorCode, ErrorDetail, Grant, HistoryPage,
    IdempotencyKey, ListedCounter, Metadata, Presence, Procedure, Update, ValueAnswer, WsError,
};

use crate::connection::{Connection, ConnectionOptions};
use crate::error::ClientError;
use crate::tls;
use crate::token::{Credentials, StaticToken, Token, TokenSource};
use crate::watch::{Watch, WatchOptions};
use crate::write::{Failure, Write, retrying};

/// How long to wait for a TCP connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write whose fate is unknown is sent again, and how long a socket call waits.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// The header that carries a write's idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The HTTP client: hyper's pooled client over TCP, with rustls for `https`.
type HttpClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A connection to one Tally server, or to the nodes of one cluster. Cheap to clone; clones
/// share a connection pool, the credentials (one token fetch serves them all) and which URL is
/// in use.
#[derive(Clone)]
pub struct Client {
    /// The base URLs without a trailing slash, e.g. `http://127.0.0.1:8094`, in the order given;
    /// never empty.
    bases: Arc<[String]>,
    /// The index in `bases` of the URL calls go to: the one that worked last. Shared by the
    /// clones, so that one call's refused connection spares the others the same wait.
    current: Arc<AtomicUsize>,
    http: HttpClient,
    /// How long one call may take in all.
    request_timeout: Duration,
    /// How long a write whose fate is unknown is sent again (see [`Client::write`]).
    retry_for: Duration,
    /// Where tokens come from; `None` sends no `Authorization` header.
    credentials: Option<Arc<Credentials>>,
    /// The TLS settings of `https`/`wss`, shared with the watches.
    tls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The credentials are never shown, only whether there are any.
        f.debug_struct("Client")
            .field("bases", &self.bases)
            .field("credentials", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Client`]: credentials and extra trusted certificates.
///
/// ```
/// let client = tally_client::Client::builder("https://tally.example.com")
///     .token("tally_0123456789ab...")
///     .build()
///     .unwrap();
/// assert_eq!(client.base_url(), "https://tally.example.com");
/// ```
pub struct ClientBuilder {
    /// The base URLs as given, checked at `build`.
    base_urls: Vec<String>,
    source: Option<Box<dyn TokenSource>>,
    /// PEM texts of extra CA certificates, read at `build`.
    roots_pem: Vec<Vec<u8>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry_for: Duration,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_urls", &self.base_urls)
            .field("credentials", &self.source.is_some())
            .field("extra_roots", &self.roots_pem.len())
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Sends `token` (a JWT or an API key `tally_…`) as `Authorization: Bearer …` with every
    /// request and socket. It is used as it is until the server refuses it; use
    /// [`token_source`](Self::token_source) for tokens that must be renewed.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.source = Some(Box::new(StaticToken(token.into().into())));
        self
    }

    /// Gets tokens from `source`: before the first request, again shortly before a JWT
    /// expires (a quarter of its life before its `exp`, at most 30 s), and after the server
    /// refused one as expired. A watch sends the fresh token over its open socket, so it goes
    /// on with no gap.
    #[must_use]
    pub fn token_source(mut self, source: impl TokenSource) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Also trusts the CA certificates in `pem` (for a server with a self-signed or private
    /// certificate), besides the web PKI's roots. Read at [`build`](Self::build).
    #[must_use]
    pub fn add_root_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots_pem.push(pem.into());
        self
    }

    /// How long to wait for a connection to the server (5 s by default).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one RPC may take in all (30 s by default).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a write whose fate is unknown (no answer, a lost connection, a restarting
    /// server) is sent again with its idempotency key before giving up, and how long a call
    /// over a [`Connection`](crate::Connection) waits for its answer (30 s by default).
    #[must_use]
    pub fn retry_for(mut self, duration: Duration) -> Self {
        self.retry_for = duration;
        self
    }

    /// The client.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when a URL is not `http://host[:port]` or
    /// `https://host[:port]`, or there is none; [`ClientError::InvalidCertificate`] when an
    /// extra root cannot be read or used.
    pub fn build(self) -> Result<Client, ClientError> {
        if self.base_urls.is_empty() {
            return Err(ClientError::InvalidUrl {
                url: String::new(),
                reason: "give at least one server URL, e.g. http://127.0.0.1:8094".into(),
            });
        }
        let bases = self.base_urls.iter().map(|url| checked_base(url)).collect::<Result<_, _>>()?;
        let mut roots = Vec::new();
        for pem in &self.roots_pem {
            roots.extend(tls::certificates_from_pem(pem)?);
        }
        let tls = tls::client_config(&roots)?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(self.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(rustls::ClientConfig::clone(&tls))
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        let credentials = self.source.map(|source| Arc::new(Credentials::new(source)));
        Ok(Client {
            bases,
            current: Arc::new(AtomicUsize::new(0)),
            http,
            request_timeout: self.request_timeout,
            retry_for: self.retry_for,
            credentials,
            tls,
        })
    }
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8094`), without
    /// credentials; see [`Client::builder`] for tokens and extra trusted certificates.
    ///
    /// ```
    /// let client = tally_client::Client::new("http://127.0.0.1:8094").unwrap();
    /// assert_eq!(client.base_url(), "http://127.0.0.1:8094");
    /// assert!(tally_client::Client::new("ftp://example.com").is_err());
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when the URL is not `http://host[:port]` or
    /// `https://host[:port]`.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::builder(base_url).build()
    }

    /// A client for the nodes of one cluster (several `tally serve` on one database), at
    /// `base_urls`, without credentials; see [`Client::builder_with_urls`] for the settings, and
    /// the crate docs ("Several servers") for the whole story with an example.
    ///
    /// Everything starts on the first URL and moves on to the next one, round robin, only when
    /// it could not reach the one in use, never because of an answer (a refusal would be the
    /// same on every node):
    ///
    /// - An RPC moves on when its connection is refused, reset or not answered, and calls after
    ///   it stay on the URL that worked. A read (which changes nothing) is tried once on each
    ///   URL at most, and on the next one after a temporary `503` too. A write that reached no
    ///   server yet is tried on each URL at once before it fails; a write whose fate is unknown
    ///   (no answer, or a temporary `503`) is sent to the next URL after the backoff with the
    ///   same idempotency key, so it counts once on whichever node applies it (see
    ///   [`Client::write`]).
    /// - A [`Connection`] (and a [`Watch`]) moves on at every reconnect, after the wait one
    ///   server would get (the advised delay, else the backoff), and resumes its subscriptions
    ///   there with `since`; [`Connection::server_url`] tells which node it is on. A connection
    ///   that stops (an upgrade refused for good, a close such as 4501 or 4503) stops: it does
    ///   not try the other nodes.
    ///
    /// ```
    /// let client =
    ///     tally_client::Client::with_urls(["http://10.0.0.1:8094", "http://10.0.0.2:8094"]).unwrap();
    /// assert_eq!(client.base_urls(), ["http://10.0.0.1:8094", "http://10.0.0.2:8094"]);
    /// assert!(tally_client::Client::with_urls(Vec::<String>::new()).is_err());
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when a URL is not `http://host[:port]` or
    /// `https://host[:port]`, or the list is empty.
    pub fn with_urls<I>(base_urls: I) -> Result<Self, ClientError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self::builder_with_urls(base_urls).build()
    }

    /// Settings for a client of the server at `base_url`.
    pub fn builder(base_url: &str) -> ClientBuilder {
        Self::builder_with_urls([base_url])
    }

    /// Settings for a client of the nodes of one cluster at `base_urls` (see
    /// [`Client::with_urls`]).
    pub fn builder_with_urls<I>(base_urls: I) -> ClientBuilder
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        ClientBuilder {
            base_urls: base_urls.into_iter().map(|url| url.as_ref().to_owned()).collect(),
            source: None,
            roots_pem: Vec::new(),
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            retry_for: RETRY_FOR,
        }
    }

    /// The base URL, as given (without a trailing slash); the first one when there are several.
    pub fn base_url(&self) -> &str {
        // `build` refuses an empty list.
        self.bases.first().map_or("", String::as_str)
    }

    /// Every base URL, in the order given (without trailing slashes).
    pub fn base_urls(&self) -> &[String] {
        &self.bases
    }

    /// The index of the URL calls go to now, and that URL.
    fn current(&self) -> (usize, &str) {
        let index = self.current.load(Ordering::Relaxed) % self.bases.len().max(1);
        (index, self.bases.get(index).map_or("", String::as_str))
    }

    /// Moves calls on from URL `index`, which could not be reached, to the next one. Only from
    /// `index`: calls that failed on the same URL at once move them on once, not once each.
    fn move_on_from(&self, index: usize) {
        let next = (index + 1) % self.bases.len().max(1);
        let _ = self.current.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Adds `amount` (>= 1) to counter `name`; answers the committed update. Like every write,
    /// it carries a fresh idempotency key and is sent again while its fate is unknown (see
    /// [`Client::write`]), so it counts once.
    ///
    /// # Errors
    /// [`ClientError::Rejected`] for a bad name or amount or a result out of range;
    /// [`ClientError::Connect`] when the server cannot be reached.
    pub async fn increment(&self, name: &str, amount: i64) -> Result<Update, ClientError> {
        self.write(&Write::increment(name, amount)).await
    }

    /// Subtracts `amount` (>= 1) from counter `name`.
    ///
    /// # Errors
    /// As [`Client::increment`].
    pub async fn decrement(&self, name: &str, amount: i64) -> Result<Update, ClientError> {
        self.write(&Write::decrement(name, amount)).await
    }

    /// Sets counter `name` to `value` (within ±(2^53 − 1)).
    ///
    /// # Errors
    /// As [`Client::increment`].
    pub async fn set_value(&self, name: &str, value: i64) -> Result<Update, ClientError> {
        self.write(&Write::set_value(name, value)).await
    }

    /// Sets counter `name` to 0.
    ///
    /// # Errors
    /// As [`Client::increment`].
    pub async fn reset(&self, name: &str) -> Result<Update, ClientError> {
        self.write(&Write::reset(name)).await
    }

    /// The value and version of counter `name` (0 and 0 if it was never written).
    ///
    /// # Errors
    /// As [`Client::increment`].
    pub async fn get_value(&self, name: &str) -> Result<ValueAnswer, ClientError> {
        self.call(Procedure::GetValue, &NameBody { name: name.to_owned() }).await
    }

    /// The metadata of counter `name`.
    ///
    /// # Errors
    /// As [`Client::increment`].
    pub async fn get_metadata(&self, name: &str) -> Result<Metadata, ClientError> {
        self.call(Procedure::GetMetadata, &NameBody { name: name.to_owned() }).await
    }

    /// One page of counter `name`'s history, newest first: up to `limit` (1..=1000, default
    /// 50) entries with versions below `before`. Pass the page's `next` as `before` for the next.
    ///
    /// # Errors
    /// As [`Client::increment`]; `invalid_limit` for a limit outside 1..=1000.
    pub async fn get_history(
        &self,
        name: &str,
        limit: Option<u32>,
        before: Option<u64>,
    ) -> Result<HistoryPage, ClientError> {
        let body = HistoryBody {
            name: name.to_owned(),
            limit: limit.map(Number::from),
            before: before.map(Number::from),
        };
        self.call(Procedure::GetHistory, &body).await
    }

    /// How many watch counter `name` right now: `watchers` (subscriptions) and `users`
    /// (distinct principals).
    ///
    /// # Errors
    /// As [`Client::increment`].
    pub async fn get_presence(&self, name: &str) -> Result<Presence, ClientError> {
        self.call(Procedure::GetPresence, &NameBody { name: name.to_owned() }).await
    }

    /// Deletes counter `name` (needs `admin` on it): its value, history and idempotency keys
    /// go, its watchers are unsubscribed (`counter_deleted`), and a later write starts it at
    /// version 1 under a new epoch. Deleting a counter that is not stored answers
    /// `deleted: false`, so a delete whose answer was lost is sent again like a read.
    ///
    /// # Errors
    /// As [`Client::increment`]; `forbidden` without `admin` on the counter.
    pub async fn delete(&self, name: &str) -> Result<Deleted, ClientError> {
        self.call(Procedure::Delete, &NameBody { name: name.to_owned() }).await
    }

    /// One page of the counters this client may read whose names start with `prefix` (every
    /// counter for `""`), in name order: up to `limit` (1..=1000, default 100) counters named
    /// after `after`. Pass the page's `next` as `after` for the next page; a page may hold
    /// fewer than `limit` counters and still have a `next`. `watchers` counts the answering
    /// node's watchers only.
    ///
    /// ```no_run
    /// # async fn example(client: tally_client::Client) -> Result<(), tally_client::ClientError> {
    /// let page = client.list("likes:", None, Some(50)).await?;
    /// for counter in &page.counters {
    ///     println!("{} = {}", counter.name, counter.value);
    /// }
    /// if let Some(next) = &page.next {
    ///     let _more = client.list("likes:", Some(next), Some(50)).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Client::increment`]; `invalid_limit` for a limit outside 1..=1000, `invalid_field`
    /// for a prefix with a character no counter name may hold, `invalid_name` for an `after`
    /// that is not a counter name.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<CounterList, ClientError> {
        let body = ListBody {
            prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
            after: after.map(str::to_owned),
            limit: limit.map(Number::from),
        };
        self.call(Procedure::List, &body).await
    }

    /// Replaces the bounds of counter `name` (needs `admin` on it): writes that would take it
    /// below `bounds.min` or above `bounds.max` are then refused with
    /// [`ClientError::OutOfBounds`], or, with `bounds.clamp`, increments and decrements stop at
    /// the bound and their update says `clamped`. [`Bounds::NONE`] clears them. Configuring a
    /// counter never written creates it at 0. Answers the counter's metadata with its bounds.
    ///
    /// ```no_run
    /// # async fn example(client: tally_client::Client) -> Result<(), tally_client::ClientError> {
    /// use tally_client::Bounds;
    /// client.configure("seats", Bounds { min: Some(0), max: Some(120), clamp: false }).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Client::increment`]; [`ClientError::OutOfBounds`] when the counter's value lies
    /// outside `bounds`, `invalid_field` when `min` is above `max`.
    pub async fn configure(&self, name: &str, bounds: Bounds) -> Result<Metadata, ClientError> {
        let body = ConfigureBody {
            name: name.to_owned(),
            min: bounds.min.map(Number::from),
            max: bounds.max.map(Number::from),
            clamp: Some(bounds.clamp),
        };
        self.call(Procedure::Configure, &body).await
    }

    /// Every counter this client may read whose name starts with `prefix`, in name order,
    /// following [`Client::list`]'s pages of the largest size to the end. Counters written or
    /// deleted meanwhile may or may not be in it; none is in it twice.
    ///
    /// # Errors
    /// As [`Client::list`].
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<ListedCounter>, ClientError> {
        let mut counters = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(prefix, after.as_deref(), Some(LIST_PAGE_MAX)).await?;
            counters.extend(page.counters);
            match page.next {
                // The server's cursor only moves forward, so this ends.
                Some(next) => after = Some(next),
                None => return Ok(counters),
            }
        }
    }

    /// One socket (`/ws`, protocol version 2) for many subscriptions and calls, with the
    /// default options; see [`Connection`].
    pub fn connect(&self) -> Connection {
        self.connect_with(ConnectionOptions::default())
    }

    /// One socket for many subscriptions and calls; see [`Connection`].
    pub fn connect_with(&self, options: ConnectionOptions) -> Connection {
        Connection::start(
            &self.bases,
            self.credentials.clone(),
            Arc::clone(&self.tls),
            options,
            self.retry_for,
        )
    }

    /// Follows counter `name` live with the default options (see [`WatchOptions`]).
    pub fn watch(&self, name: &str) -> Watch {
        self.watch_with(name, WatchOptions::default())
    }

    /// Follows counter `name` live.
    ///
    /// ```no_run
    /// # async fn example(client: tally_client::Client) {
    /// use std::time::Duration;
    /// use futures_util::StreamExt;
    /// use tally_client::{Backoff, WatchEvent, WatchOptions};
    ///
    /// // Resume after version 41, retrying every 0.5 s to 10 s when the server is away.
    /// let options = WatchOptions {
    ///     since: Some(41),
    ///     backoff: Backoff { min: Duration::from_millis(500), max: Duration::from_secs(10), factor: 2.0 },
    ///     ..WatchOptions::default()
    /// };
    /// let mut watch = client.watch_with("seats", options);
    /// while let Some(event) = watch.next().await {
    ///     match event {
    ///         WatchEvent::Update(update) => println!("v{}: {}", update.version, update.value),
    ///         WatchEvent::Disconnected { reason, retry_in } => eprintln!("{reason}; retry in {retry_in:?}"),
    ///         WatchEvent::Failed(error) => eprintln!("gave up: {error}"),
    ///         _ => {}
    ///     }
    /// }
    /// # }
    /// ```
    pub fn watch_with(&self, name: &str, options: WatchOptions) -> Watch {
        Watch::start(self, name, options)
    }

    /// Creates an API key called `name` with `grants` (`PATTERN=ACTION[<=CAP],...`); the
    /// answer holds the key itself, which the server shows this once. Needs `*=admin`.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad name or grant (found before sending);
    /// [`ClientError::Rejected`] with `key_exists` when the name was ever used;
    /// [`ClientError::Unauthenticated`] / [`ClientError::Forbidden`] without admin rights.
    pub async fn create_key(
        &self,
        name: &str,
        grants: &[impl AsRef<str>],
    ) -> Result<CreatedKey, ClientError> {
        tally_proto::keys::check_key_name(name).map_err(ClientError::Invalid)?;
        let grants: Vec<String> =
            grants.iter().map(|grant| grant.as_ref().trim().to_owned()).collect();
        for grant in &grants {
            Grant::parse(grant).map_err(ClientError::Invalid)?;
        }
        self.call(Procedure::KeyCreate, &KeyCreateBody { name: name.to_owned(), grants }).await
    }

    /// Every API key, revoked ones too, oldest first (never their secrets). Needs `*=admin`.
    ///
    /// # Errors
    /// As [`Client::create_key`].
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, ClientError> {
        let list: KeyList = self.call(Procedure::KeyList, &EmptyBody {}).await?;
        Ok(list.keys)
    }

    /// Revokes the API key called `name`: it stops working at once. Answers the key as
    /// listed, with `revoked_at`. Needs `*=admin`.
    ///
    /// # Errors
    /// [`ClientError::Rejected`] with `unknown_key` when there is no such key; otherwise as
    /// [`Client::create_key`].
    pub async fn revoke_key(&self, name: &str) -> Result<KeyInfo, ClientError> {
        tally_proto::keys::check_key_name(name).map_err(ClientError::Invalid)?;
        self.call(Procedure::KeyRevoke, &KeyNameBody { name: name.to_owned() }).await
    }

    /// Calls `procedure` with `body` (reads and the key procedures; writes go through
    /// [`Client::write`]): once on each URL at most, moving on only when the call reached no
    /// server, or (for a read, which changes nothing) when its fate is unknown.
    async fn call<T: DeserializeOwned>(
        &self,
        procedure: Procedure,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let path = format!("/rpc/{}", procedure.path_name());
        let body = Bytes::from(serde_json::to_vec(body).map_err(|error| {
            ClientError::Protocol { url: path.clone(), reason: error.to_string() }
        })?);
        // A key created or revoked without an answer may have been applied: sending it to
        // another node would answer `key_exists` or `unknown_key` for a call that worked.
        let read = matches!(
            procedure,
            Procedure::GetValue
                | Procedure::GetMetadata
                | Procedure::GetHistory
                | Procedure::GetPresence
                | Procedure::List
                | Procedure::KeyList
                // Sent again, it finds the counter gone and answers `deleted: false`.
                | Procedure::Delete
                // It replaces the bounds whole, so sending it again asks for the same thing.
                | Procedure::Configure
        );
        let mut tried = 0;
        loop {
            let (index, base) = self.current();
            let error = match self.attempt(base, &path, body.clone(), None).await {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes).map_err(|error| ClientError::Protocol {
                        url: format!("{base}{path}"),
                        reason: error.to_string(),
                    });
                }
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::NotSent(error)) => error,
                Err(Failure::Unknown(error)) if read => error,
                Err(Failure::Unknown(error)) => {
                    self.move_on_from(index);
                    return Err(error);
                }
            };
            self.move_on_from(index);
            tried += 1;
            if tried >= self.bases.len() {
                return Err(error);
            }
        }
    }

    /// Applies `write` over HTTP with its idempotency key (the `Idempotency-Key` header),
    /// sending it again with the same key while its fate is unknown: no answer (a timeout, a
    /// connection lost mid-request, the server restarting) or `503 unavailable`. So a write
    /// through a dropping network counts exactly once. A write whose first attempt reaches no
    /// server fails at once; the retries stop after [`ClientBuilder::retry_for`].
    ///
    /// With several URLs ([`Client::with_urls`]), each failed attempt moves on to the next URL:
    /// a write that reached no server yet is tried on each URL at once before it fails; a write
    /// whose fate is unknown (a `503` included) is sent to the next one after the backoff, with
    /// the same key, so it counts once on whichever node applies it.
    ///
    /// ```no_run
    /// # async fn example(client: tally_client::Client) -> Result<(), tally_client::ClientError> {
    /// use tally_client::Write;
    /// let write = Write::increment("likes", 1);
    /// let update = client.write(&write).await?;
    /// // The same write again (same key): the original answer, counted once.
    /// assert_eq!(client.write(&write).await?.version, update.version);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Client::increment`]; [`ClientError::Rejected`] with `idempotency_key_reused` when
    /// the key was used for another write on this counter. When it gives up on a write whose
    /// fate is unknown, the error says so and names the key to send it again with.
    pub async fn write(&self, write: &Write) -> Result<Update, ClientError> {
        let path = format!("/rpc/{}", write.procedure.path_name());
        let body = Bytes::from(Value::Object(write.body.clone()).to_string());
        let (bytes, base) = retrying(&write.key, self.retry_for, self.bases.len(), || {
            let (index, base) = self.current();
            let (path, body) = (&path, body.clone());
            async move {
                match self.attempt(base, path, body, Some(&write.key)).await {
                    Ok(bytes) => Ok((bytes, base)),
                    Err(failure @ Failure::Final(_)) => Err(failure),
                    Err(failure) => {
                        self.move_on_from(index);
                        Err(failure)
                    }
                }
            }
        })
        .await?;
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Protocol {
            url: format!("{base}{path}"),
            reason: error.to_string(),
        })
    }

    /// One request with the current token; after a `401 token_expired` answer, once more with
    /// a fresh one (a refused request changed nothing, so sending it again cannot apply it
    /// twice).
    async fn attempt(
        &self,
        base: &str,
        path: &str,
        body: Bytes,
        key: Option<&IdempotencyKey>,
    ) -> Result<Bytes, Failure> {
        let mut token = match &self.credentials {
            Some(credentials) => Some(credentials.get().await.map_err(Failure::Final)?),
            None => None,
        };
        let mut renewed = false;
        loop {
            let error = match self.send(base, path, body.clone(), token.as_ref(), key).await {
                Err(Failure::Final(error)) => error,
                other => return other,
            };
            let expired = matches!(&error, ClientError::Unauthenticated { code, .. } if code == "token_expired");
            if let (true, false, Some(credentials), Some(stale)) =
                (expired, renewed, &self.credentials, &token)
            {
                let fresh = credentials.renew(stale).await.map_err(Failure::Final)?;
                if !fresh.same_as(stale) {
                    token = Some(fresh);
                    renewed = true;
                    continue;
                }
            }
            return Err(Failure::Final(error));
        }
    }

    /// One POST of `path` to the server at `base`: the body of a success, or how it failed: not
    /// sent (no connection could be made), unknown (no answer, or `503`/another temporary server
    /// fault), or refused.
    async fn send(
        &self,
        base: &str,
        path: &str,
        body: Bytes,
        token: Option<&Token>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Bytes, Failure> {
        let url = format!("{base}{path}");
        let url = url.as_str();
        let mut request = hyper::Request::post(url).header(CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&token.header_value()).map_err(|_| {
                Failure::Final(ClientError::TokenSource(
                    "the token is not a valid HTTP header value".into(),
                ))
            })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_KEY, key.as_str());
        }
        let request = request.body(Full::new(body)).map_err(|error| {
            Failure::Final(ClientError::InvalidUrl {
                url: url.to_owned(),
                reason: error.to_string(),
            })
        })?;
        let connect_error = |reason: String| ClientError::Connect { url: base.to_owned(), reason };
        let exchange = async {
            let response = self.http.request(request).await.map_err(|error| {
                // A connection that could not be made carried nothing; any other failure may
                // have come after the server read the request.
                let reason = describe(&error);
                if error.is_connect() {
                    Failure::NotSent(connect_error(reason))
                } else {
                    Failure::Unknown(connect_error(reason))
                }
            })?;
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|error| Failure::Unknown(connect_error(describe(&error))))?
                .to_bytes();
            Ok::<_, Failure>((parts, bytes))
        };
        let (parts, bytes) = match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(answer) => answer?,
            Err(_) => {
                let reason = format!("timed out after {:?}", self.request_timeout);
                return Err(Failure::Unknown(connect_error(reason)));
            }
        };
        if parts.status.is_success() {
            return Ok(bytes);
        }
        let retry_after = parts
            .headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let error = rejected(url, parts.status.as_u16(), &bytes, retry_after);
        // A temporary server fault (503 unavailable while storage is down or the server shuts
        // down) says nothing of whether a write that raced it was applied.
        let server_fault = parts.status.is_server_error()
            && matches!(&error, ClientError::Rejected { temporary: true, .. });
        Err(if server_fault { Failure::Unknown(error) } else { Failure::Final(error) })
    }
}

/// `base_url` without its trailing slashes, if it is `http://host[:port]` or
/// `https://host[:port]`.
fn checked_base(base_url: &str) -> Result<String, ClientError> {
    let base = base_url.trim_end_matches('/').to_owned();
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: base_url.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(rest) = base.strip_prefix("http://").or_else(|| base.strip_prefix("https://")) else {
        return Err(invalid("it must start with http:// or https://, e.g. http://127.0.0.1:8094"));
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', '@']) {
        return Err(invalid(
            "it must be http://host[:port] or https://host[:port] with no path, e.g. http://127.0.0.1:8094",
        ));
    }
    Ok(base)
}

/// The error the server answered, or a protocol error if the body is not an error body.
/// `retry_after` is the `Retry-After` header, used when the body does not say it in ms.
pub(crate) fn rejected(
    url: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => refusal(status, error, retry_after),
        Err(_) => ClientError::Protocol {
            url: url.to_owned(),
            reason: format!(
                "status {status} with body {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    }
}

/// A refusal as a typed error. `retry_after` is used when the refusal does not say it in ms.
fn refusal(status: u16, error: ErrorDetail, retry_after: Option<Duration>) -> ClientError {
    if let ("version_conflict", Some(current_version)) =
        (error.code.as_str(), error.current_version)
    {
        return ClientError::VersionConflict { current_version, message: error.message };
    }
    match error.code.as_str() {
        "out_of_bounds" => {
            ClientError::OutOfBounds { min: error.min, max: error.max, message: error.message }
        }
        "unauthenticated" | "token_expired" => {
            ClientError::Unauthenticated { code: error.code, message: error.message }
        }
        "forbidden" => ClientError::Forbidden { message: error.message },
        "rate_limited" => ClientError::RateLimited {
            message: error.message,
            retry_after: error.retry_after_ms.map(Duration::from_millis).or(retry_after),
        },
        _ => ClientError::Rejected {
            status,
            code: error.code,
            message: error.message,
            temporary: error.temporary,
        },
    }
}

/// A command refused over the socket, as the same typed error the RPC would give (with the
/// HTTP status the RPC answers the code with; 0 for a code newer than this client).
pub(crate) fn socket_refusal(error: WsError) -> ClientError {
    let status = ErrorCode::ALL
        .iter()
        .find(|code| code.as_str() == error.code)
        .map_or(0, |code| code.http_status());
    let detail = ErrorDetail {
        code: error.code,
        message: error.message,
        temporary: error.temporary,
        retry_after_ms: error.retry_after_ms,
        current_version: error.current_version,
        min: error.min,
        max: error.max,
    };
    refusal(status, detail, None)
}

/// An error with its causes, which hold the useful part ("Connection refused").
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        innermost = cause.to_string();
        source = cause.source();
    }
    innermost
}
