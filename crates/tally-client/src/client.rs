//! The RPC calls: `POST /rpc/counter.<procedure>` with a JSON body.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Number;
use tally_proto::keys::{CreatedKey, EmptyBody, KeyCreateBody, KeyInfo, KeyList, KeyNameBody};
use tally_proto::rpc::{AmountBody, HistoryBody, NameBody, SetValueBody};
use tally_proto::{ErrorBody, Grant, HistoryPage, Metadata, Procedure, Update, ValueAnswer};

use crate::error::ClientError;
use crate::tls;
use crate::token::{Credentials, StaticToken, Token, TokenSource};
use crate::watch::{Watch, WatchOptions};

/// How long to wait for a TCP connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client: hyper's pooled client over TCP, with rustls for `https`.
type HttpClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A connection to one Tally server. Cheap to clone; clones share a connection pool and the
/// credentials (one token fetch serves them all).
#[derive(Clone)]
pub struct Client {
    /// The base URL without a trailing slash, e.g. `http://127.0.0.1:8094`.
    base: String,
    http: HttpClient,
    /// How long one call may take in all.
    request_timeout: Duration,
    /// Where tokens come from; `None` sends no `Authorization` header.
    credentials: Option<Arc<Credentials>>,
    /// The TLS settings of `https`/`wss`, shared with the watches.
    tls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The credentials are never shown, only whether there are any.
        f.debug_struct("Client")
            .field("base", &self.base)
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
    base_url: String,
    source: Option<Box<dyn TokenSource>>,
    /// PEM texts of extra CA certificates, read at `build`.
    roots_pem: Vec<Vec<u8>>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
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

    /// The client.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when the URL is not `http://host[:port]` or
    /// `https://host[:port]`; [`ClientError::InvalidCertificate`] when an extra root cannot be
    /// read or used.
    pub fn build(self) -> Result<Client, ClientError> {
        let base_url = self.base_url.as_str();
        let base = base_url.trim_end_matches('/').to_owned();
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(rest) = base.strip_prefix("http://").or_else(|| base.strip_prefix("https://"))
        else {
            return Err(invalid(
                "it must start with http:// or https://, e.g. http://127.0.0.1:8094",
            ));
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', ' ', '@']) {
            return Err(invalid(
                "it must be http://host[:port] or https://host[:port] with no path, e.g. http://127.0.0.1:8094",
            ));
        }
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
        Ok(Client { base, http, request_timeout: self.request_timeout, credentials, tls })
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

    /// Settings for a client of the server at `base_url`.
    pub fn builder(base_url: &str) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.to_owned(),
            source: None,
            roots_pem: Vec::new(),
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    /// The base URL, as given (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Adds `amount` (>= 1) to counter `name`; answers the committed update.
    ///
    /// # Errors
    /// [`ClientError::Rejected`] for a bad name or amount or a result out of range;
    /// [`ClientError::Connect`] when the server cannot be reached.
    pub async fn increment(&self, name: &str, amount: i64) -> Result<Update, ClientError> {
        self.call(
            Procedure::Increment,
            &AmountBody { name: name.to_owned(), amount: Some(Number::from(amount)) },
        )
        .await
    }

    /// Subtracts `amount` (>= 1) from counter `name`.
    ///
    /// # Errors
    /// As [`Client::increment`].
    pub async fn decrement(&self, name: &str, amount: i64) -> Result<Update, ClientError> {
        self.call(
            Procedure::Decrement,
            &AmountBody { name: name.to_owned(), amount: Some(Number::from(amount)) },
        )
        .await
    }

    /// Sets counter `name` to `value` (within ±(2^53 − 1)).
    ///
    /// # Errors
    /// As [`Client::increment`].
    pub async fn set_value(&self, name: &str, value: i64) -> Result<Update, ClientError> {
        self.call(
            Procedure::SetValue,
            &SetValueBody { name: name.to_owned(), value: Number::from(value) },
        )
        .await
    }

    /// Sets counter `name` to 0.
    ///
    /// # Errors
    /// As [`Client::increment`].
    pub async fn reset(&self, name: &str) -> Result<Update, ClientError> {
        self.call(Procedure::Reset, &NameBody { name: name.to_owned() }).await
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
        Watch::start(&self.base, self.credentials.clone(), Arc::clone(&self.tls), name, options)
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

    /// Calls `procedure` with `body`, with the current token; after a `401 token_expired`
    /// answer, once more with a fresh one (a refused request changed nothing, so sending it
    /// again cannot apply it twice).
    async fn call<T: DeserializeOwned>(
        &self,
        procedure: Procedure,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let url = format!("{}/rpc/{}", self.base, procedure.path_name());
        let body = Bytes::from(serde_json::to_vec(body).map_err(|error| {
            ClientError::Protocol { url: url.clone(), reason: error.to_string() }
        })?);
        let mut token = match &self.credentials {
            Some(credentials) => Some(credentials.get().await?),
            None => None,
        };
        let mut renewed = false;
        loop {
            let error = match self.send(&url, body.clone(), token.as_ref()).await? {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes)
                        .map_err(|error| ClientError::Protocol { url, reason: error.to_string() });
                }
                Err(error) => error,
            };
            let expired = matches!(&error, ClientError::Unauthenticated { code, .. } if code == "token_expired");
            if let (true, false, Some(credentials), Some(stale)) =
                (expired, renewed, &self.credentials, &token)
            {
                let fresh = credentials.renew(stale).await?;
                if !fresh.same_as(stale) {
                    token = Some(fresh);
                    renewed = true;
                    continue;
                }
            }
            return Err(error);
        }
    }

    /// One POST: `Ok(Ok(body))` for a success, `Ok(Err(refusal))` for an error answer, `Err`
    /// when no answer came.
    async fn send(
        &self,
        url: &str,
        body: Bytes,
        token: Option<&Token>,
    ) -> Result<Result<Bytes, ClientError>, ClientError> {
        let mut request = hyper::Request::post(url).header(CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&token.header_value()).map_err(|_| {
                ClientError::TokenSource("the token is not a valid HTTP header value".into())
            })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let request = request.body(Full::new(body)).map_err(|error| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: error.to_string(),
        })?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|error| describe(&error))?;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|error| describe(&error))?.to_bytes();
            Ok::<_, String>((parts, bytes))
        };
        let (parts, bytes) = match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => return Err(ClientError::Connect { url: self.base.clone(), reason }),
            Err(_) => {
                return Err(ClientError::Connect {
                    url: self.base.clone(),
                    reason: format!("timed out after {:?}", self.request_timeout),
                });
            }
        };
        if parts.status.is_success() {
            return Ok(Ok(bytes));
        }
        let retry_after = parts
            .headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Ok(Err(rejected(url, parts.status.as_u16(), &bytes, retry_after)))
    }
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
        Ok(ErrorBody { error }) => match error.code.as_str() {
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
        },
        Err(_) => ClientError::Protocol {
            url: url.to_owned(),
            reason: format!(
                "status {status} with body {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    }
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
