//! The RPC calls: `POST /rpc/counter.<procedure>` with a JSON body.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Number;
use tally_proto::rpc::{AmountBody, HistoryBody, NameBody, SetValueBody};
use tally_proto::{ErrorBody, HistoryPage, Metadata, Procedure, Update, ValueAnswer};

use crate::error::ClientError;
use crate::watch::{Watch, WatchOptions};

/// How long to wait for a TCP connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one Tally server. Cheap to clone; clones share a connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    /// The base URL without a trailing slash, e.g. `http://127.0.0.1:8094`.
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8094`).
    ///
    /// ```
    /// let client = tally_client::Client::new("http://127.0.0.1:8094").unwrap();
    /// assert_eq!(client.base_url(), "http://127.0.0.1:8094");
    /// assert!(tally_client::Client::new("ftp://example.com").is_err());
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when the URL is not `http://host[:port]`.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(rest) = base.strip_prefix("http://") else {
            return Err(invalid(if base.starts_with("https://") {
                "https is not supported by this build; use http:// (or a local TLS-terminating proxy)"
            } else {
                "it must start with http://, e.g. http://127.0.0.1:8094"
            }));
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
            return Err(invalid(
                "it must be http://host[:port] with no path, e.g. http://127.0.0.1:8094",
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|error| invalid(&error.to_string()))?;
        Ok(Self { base, http })
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
        Watch::start(&self.base, name, options)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        procedure: Procedure,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let url = format!("{}/rpc/{}", self.base, procedure.path_name());
        let body = serde_json::to_vec(body).map_err(|error| ClientError::Protocol {
            url: url.clone(),
            reason: error.to_string(),
        })?;
        let response = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| ClientError::Connect {
                url: self.base.clone(),
                reason: describe(&error),
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|error| ClientError::Connect {
            url: self.base.clone(),
            reason: describe(&error),
        })?;
        if !status.is_success() {
            return Err(rejected(&url, status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|error| ClientError::Protocol { url, reason: error.to_string() })
    }
}

/// The error the server answered, or a protocol error if the body is not an error body.
pub(crate) fn rejected(url: &str, status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => ClientError::Rejected {
            status,
            code: error.code,
            message: error.message,
            temporary: error.temporary,
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

/// A reqwest error with its causes, which hold the useful part ("Connection refused").
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() { "timed out".to_owned() } else { String::new() };
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    let mut innermost = error.to_string();
    while let Some(cause) = source {
        innermost = cause.to_string();
        source = cause.source();
    }
    if text.is_empty() {
        text = innermost;
    }
    text
}
