//! Credentials: where a client gets its token, when it asks for a fresh one, and how the
//! token is kept out of every error message and `Debug` output.
//!
//! A [`TokenSource`] is asked before the first request, again shortly before the token
//! expires (read from the JWT's `exp` claim, without verifying the signature: the server
//! verifies, the client only needs to know when to ask again), and again after the server
//! said the token expired. API keys (`tally_…`) never expire.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use tally_proto::keys::KEY_PREFIX;

use crate::error::{ClientError, TokenSourceError};

/// The future a [`TokenSource`] answers with.
pub type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<String, TokenSourceError>> + Send + 'a>>;

/// Where a client gets its credential: a JWT or an API key (`tally_…`), sent as
/// `Authorization: Bearer …` on every RPC and on every watch socket.
///
/// Any `Fn() -> impl Future<Output = Result<String, E>>` is a token source, so a closure that
/// asks your backend will do:
///
/// ```no_run
/// # async fn fetch_token_from_my_backend() -> Result<String, std::io::Error> { Ok(String::new()) }
/// let client = tally_client::Client::builder("https://tally.example.com")
///     .token_source(|| async { fetch_token_from_my_backend().await })
///     .build()?;
/// # Ok::<(), tally_client::ClientError>(())
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// A credential, as fresh as the source can make it. Called again only when the last one
    /// is about to expire or the server refused it as expired.
    fn token(&self) -> TokenFuture<'_>;
}

impl<F, Fut, E> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: Into<TokenSourceError>,
{
    fn token(&self) -> TokenFuture<'_> {
        let future = self();
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

/// A token given once, e.g. from the command line.
pub(crate) struct StaticToken(pub(crate) Arc<str>);

impl TokenSource for StaticToken {
    fn token(&self) -> TokenFuture<'_> {
        let token = self.0.to_string();
        Box::pin(async move { Ok(token) })
    }
}

/// How long before expiry a token is replaced: a quarter of its life, at most this much.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// A credential with what the client knows of its expiry. `Debug` never shows the value.
#[derive(Clone)]
pub(crate) struct Token {
    value: Arc<str>,
    /// The JWT's `exp`; `None` for API keys and for credentials that are not a readable JWT.
    expires_at: Option<SystemTime>,
    /// When to ask the source for the next one (shortly before `expires_at`).
    refresh_at: Option<SystemTime>,
}

impl Token {
    fn new(value: String, now: SystemTime) -> Self {
        let expires_at = expiry_of(&value);
        let refresh_at = expires_at.map(|expires_at| {
            let life = expires_at.duration_since(now).unwrap_or_default();
            expires_at - (life / 4).min(MAX_REFRESH_MARGIN)
        });
        Self { value: value.into(), expires_at, refresh_at }
    }

    /// The credential, for the `Authorization` header or an `auth` message only.
    pub(crate) fn secret(&self) -> &str {
        &self.value
    }

    /// `Bearer …`, the value of the `Authorization` header.
    pub(crate) fn header_value(&self) -> String {
        format!("Bearer {}", self.value)
    }

    /// When a fresh token should be fetched, if ever.
    pub(crate) fn refresh_at(&self) -> Option<SystemTime> {
        self.refresh_at
    }

    /// Whether it is time to fetch a fresh one.
    fn is_due(&self, now: SystemTime) -> bool {
        self.refresh_at.is_some_and(|refresh_at| now >= refresh_at)
    }

    /// Whether two tokens are the same credential.
    pub(crate) fn same_as(&self, other: &Token) -> bool {
        self.value == other.value
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The `exp` claim of a JWT, read without verifying it; `None` for an API key or anything
/// that is not a JWT with a numeric `exp`.
fn expiry_of(credential: &str) -> Option<SystemTime> {
    if credential.starts_with(KEY_PREFIX) {
        return None;
    }
    let mut parts = credential.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(payload).ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<f64>,
    }
    let exp = serde_json::from_slice::<Claims>(&bytes).ok()?.exp?;
    if !exp.is_finite() || exp < 0.0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(exp).ok()?)
}

/// A client's credentials: the source and the token last fetched from it, shared by the
/// client's clones and its watches so that one fetch serves them all.
pub(crate) struct Credentials {
    source: Box<dyn TokenSource>,
    /// The last token. An async mutex, held while fetching, so that many requests due for a
    /// fresh token at once make one call to the source.
    cached: tokio::sync::Mutex<Option<Token>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    pub(crate) fn new(source: Box<dyn TokenSource>) -> Self {
        Self { source, cached: tokio::sync::Mutex::new(None) }
    }

    /// The current token, fetched first if there is none yet or it is about to expire.
    ///
    /// # Errors
    /// [`ClientError::TokenSource`] when the source fails.
    pub(crate) async fn get(&self) -> Result<Token, ClientError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref().filter(|token| !token.is_due(SystemTime::now())) {
            return Ok(token.clone());
        }
        let token = self.fetch().await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// A token to replace `stale`, which the server refused as expired: fetched from the
    /// source unless another caller already replaced it.
    ///
    /// # Errors
    /// [`ClientError::TokenSource`] when the source fails.
    pub(crate) async fn renew(&self, stale: &Token) -> Result<Token, ClientError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached
            .as_ref()
            .filter(|token| !token.same_as(stale) && !token.is_due(SystemTime::now()))
        {
            return Ok(token.clone());
        }
        let token = self.fetch().await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    async fn fetch(&self) -> Result<Token, ClientError> {
        let value = self.source.token().await.map_err(ClientError::TokenSource)?;
        let value = value.trim();
        if value.is_empty() || value.contains(|c: char| c.is_ascii_control() || c == ' ') {
            return Err(ClientError::TokenSource(
                "the token source gave an empty token or one with spaces or control characters"
                    .into(),
            ));
        }
        Ok(Token::new(value.to_owned(), SystemTime::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", engine.encode(r#"{"alg":"HS256"}"#), engine.encode(payload))
    }

    #[test]
    fn expiry_is_read_from_a_jwt_and_keys_never_expire() {
        let token = jwt(r#"{"sub":"alice","exp":2000000000}"#);
        assert_eq!(expiry_of(&token), Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)));
        assert_eq!(expiry_of("tally_abc.def.ghi"), None);
        assert_eq!(expiry_of("not-a-jwt"), None);
        assert_eq!(expiry_of(&jwt(r#"{"sub":"alice"}"#)), None);
        assert_eq!(expiry_of(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(expiry_of("a.!!!.c"), None);
    }

    #[test]
    fn a_token_is_refreshed_a_quarter_of_its_life_before_expiry_at_most_30_s() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let short = Token::new(jwt(r#"{"exp":1004}"#), now);
        assert_eq!(short.refresh_at, Some(UNIX_EPOCH + Duration::from_secs(1_003)));
        let long = Token::new(jwt(r#"{"exp":4600}"#), now);
        assert_eq!(long.refresh_at, Some(UNIX_EPOCH + Duration::from_secs(4_570)));
        assert!(long.is_due(UNIX_EPOCH + Duration::from_secs(4_570)));
        assert!(!long.is_due(now));
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let token = Token::new("tally_secretsecret".into(), SystemTime::now());
        assert!(!format!("{token:?}").contains("secret"));
    }
}
