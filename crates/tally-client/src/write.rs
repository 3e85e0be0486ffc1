//! Writes with idempotency keys, and the rule for sending a write again: a write whose fate is
//! unknown (no answer: a timeout, a connection lost mid-request, a server restart; or `503
//! unavailable`) is sent again with the same key, with backoff, so that it is applied at most
//! once. Both the RPC ([`Client::write`](crate::Client::write)) and the socket
//! ([`Connection::write`](crate::Connection::write)) follow it.

use std::future::Future;
use std::time::Duration;

use serde_json::{Map, Number, Value};
use tally_proto::{IdempotencyKey, Procedure};

use crate::backoff::Backoff;
use crate::error::ClientError;

/// The delays between sending a write again: short, since the usual cause is a restart that
/// takes a second or two.
pub(crate) const WRITE_BACKOFF: Backoff =
    Backoff { min: Duration::from_millis(250), max: Duration::from_secs(5), factor: 2.0 };

/// One write and its idempotency key, for [`Client::write`](crate::Client::write) or
/// [`Connection::write`](crate::Connection::write). Each new `Write` gets a fresh random key;
/// sending the same `Write` twice (or one with the same key, after a crash of the writer)
/// applies it once, within the server's idempotency window.
///
/// ```
/// use tally_client::{IdempotencyKey, Write};
///
/// let write = Write::increment("likes", 1);
/// assert_eq!(write.key().as_str().len(), 32);
/// let key = IdempotencyKey::parse("order-1234-like").unwrap();
/// assert_eq!(Write::increment("likes", 1).with_key(key.clone()).key(), &key);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub(crate) procedure: Procedure,
    /// The RPC body (`name` and `amount` or `value`).
    pub(crate) body: Map<String, Value>,
    pub(crate) key: IdempotencyKey,
}

impl Write {
    fn new(procedure: Procedure, name: &str, field: Option<(&str, i64)>) -> Self {
        let mut body = Map::new();
        body.insert("name".into(), name.into());
        if let Some((field, number)) = field {
            body.insert(field.into(), Number::from(number).into());
        }
        Self { procedure, body, key: new_key() }
    }

    /// Adds `amount` (>= 1) to counter `name`.
    pub fn increment(name: &str, amount: i64) -> Self {
        Self::new(Procedure::Increment, name, Some(("amount", amount)))
    }

    /// Subtracts `amount` (>= 1) from counter `name`.
    pub fn decrement(name: &str, amount: i64) -> Self {
        Self::new(Procedure::Decrement, name, Some(("amount", amount)))
    }

    /// Sets counter `name` to `value`.
    pub fn set_value(name: &str, value: i64) -> Self {
        Self::new(Procedure::SetValue, name, Some(("value", value)))
    }

    /// Sets counter `name` to 0.
    pub fn reset(name: &str) -> Self {
        Self::new(Procedure::Reset, name, None)
    }

    /// The same write, applied only if the counter is at `version` when it arrives (0: a
    /// counter never written), else refused with [`ClientError::VersionConflict`] carrying the
    /// counter's version, and nothing is changed: compare-and-set, for a value decided from
    /// what was read (stock left, seats taken). Not for `reset`, which ignores it.
    ///
    /// ```
    /// use tally_client::Write;
    ///
    /// // Take one seat only if nobody else has written since version 41 was read.
    /// let write = Write::decrement("seats", 1).expecting_version(41);
    /// assert_eq!(write.procedure().path_name(), "counter.decrement");
    /// ```
    #[must_use]
    pub fn expecting_version(mut self, version: u64) -> Self {
        if self.procedure != Procedure::Reset {
            self.body.insert("expectedVersion".into(), Number::from(version).into());
        }
        self
    }

    /// The same write under `key` instead of its random one: for a write that must count once
    /// even if the program making it is run again (a retried script, a job queue).
    #[must_use]
    pub fn with_key(mut self, key: IdempotencyKey) -> Self {
        self.key = key;
        self
    }

    /// The write's idempotency key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The procedure it calls.
    pub fn procedure(&self) -> Procedure {
        self.procedure
    }
}

/// A fresh idempotency key: 128 random bits as 32 hex digits, from the operating system's
/// random source (two clients of one principal must never pick the same key for different
/// writes).
pub fn new_key() -> IdempotencyKey {
    let mut bytes = [0_u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness (very rare): a seeded generator still makes collisions unlikely.
        bytes = fastrand::u128(..).to_le_bytes();
    }
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    // 32 hex digits always follow the key rule.
    IdempotencyKey::parse(&hex).expect("hex digits are a valid key")
}

/// How one attempt of a write failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The answer settles it (a refusal, or a success of another kind): return it.
    Final(ClientError),
    /// The request did not reach the server (no connection could be made): it was not applied.
    NotSent(ClientError),
    /// No answer, or an answer saying to try again: it may or may not have been applied.
    Unknown(ClientError),
}

/// Makes `attempt` until it succeeds or fails for good. A write that reached no server on its
/// first attempt is tried at once on each of the `servers` (the attempt picks which; one that
/// fails moves the next attempt on), and fails once none could be reached: nothing was applied
/// and nothing is there to answer. Once one may have been applied, it is sent again with
/// backoff, under the same key, for up to `retry_for`. The error it then gives up with names
/// the key.
pub(crate) async fn retrying<T, F, Fut>(
    key: &IdempotencyKey,
    retry_for: Duration,
    servers: usize,
    mut attempt: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let deadline = tokio::time::Instant::now() + retry_for;
    let mut sent = false;
    // Attempts that reached no server, before any did.
    let mut unreached = 0;
    let mut step = 0;
    loop {
        let error = match attempt().await {
            Ok(answer) => return Ok(answer),
            Err(Failure::Final(error)) => return Err(error),
            Err(Failure::NotSent(error)) if !sent => {
                unreached += 1;
                if unreached >= servers {
                    return Err(error);
                }
                // Nothing was applied anywhere: the next server at once, with no backoff.
                continue;
            }
            Err(Failure::NotSent(error)) => error,
            Err(Failure::Unknown(error)) => {
                sent = true;
                error
            }
        };
        let delay = WRITE_BACKOFF.delay(step);
        step += 1;
        if tokio::time::Instant::now() + delay >= deadline {
            return Err(undecided(error, key));
        }
        tokio::time::sleep(delay).await;
    }
}

/// `error`, saying that the write may have been applied and how to make sure it counts once.
pub(crate) fn undecided(error: ClientError, key: &IdempotencyKey) -> ClientError {
    let note = format!(
        "the write may or may not have been applied; send it again with idempotency key {key} to apply it at most once"
    );
    match error {
        ClientError::Connect { url, reason } => {
            ClientError::Connect { url, reason: format!("{reason}; {note}") }
        }
        ClientError::Rejected { status, code, message, temporary } => {
            ClientError::Rejected { status, code, message: format!("{message}; {note}"), temporary }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_32_hex_digits_and_differ() {
        let first = new_key();
        assert_eq!(first.as_str().len(), 32);
        assert!(first.as_str().bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(first, new_key());
        assert_ne!(Write::increment("a", 1).key(), Write::increment("a", 1).key());
    }

    fn connect_error() -> ClientError {
        ClientError::Connect { url: "http://x".into(), reason: "reset".into() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_attempt_that_reached_no_server_is_not_retried() {
        let key = new_key();
        let mut attempts = 0;
        let result: Result<(), _> = retrying(&key, Duration::from_secs(30), 1, || {
            attempts += 1;
            async { Err(Failure::NotSent(connect_error())) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_fate_is_retried_through_refused_connections_until_it_succeeds() {
        let key = new_key();
        let mut attempts = 0;
        let result = retrying(&key, Duration::from_secs(30), 1, || {
            attempts += 1;
            let outcome = match attempts {
                1 => Err(Failure::Unknown(connect_error())),
                2 | 3 => Err(Failure::NotSent(connect_error())),
                _ => Ok(attempts),
            };
            async move { outcome }
        })
        .await;
        assert_eq!(result.expect("succeeds"), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_no_server_received_is_tried_once_on_each_server_at_once() {
        let key = new_key();
        let started = tokio::time::Instant::now();
        let mut attempts = 0;
        let result: Result<(), _> = retrying(&key, Duration::from_secs(30), 3, || {
            attempts += 1;
            async { Err(Failure::NotSent(connect_error())) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(attempts, 3);
        assert_eq!(started.elapsed(), Duration::ZERO, "no backoff between servers");

        let mut attempts = 0;
        let result = retrying(&key, Duration::from_secs(30), 3, || {
            attempts += 1;
            let outcome =
                if attempts < 3 { Err(Failure::NotSent(connect_error())) } else { Ok(attempts) };
            async move { outcome }
        })
        .await;
        assert_eq!(result.expect("the third server answers"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_names_the_key() {
        let key = new_key();
        let started = tokio::time::Instant::now();
        let result: Result<(), _> = retrying(&key, Duration::from_secs(10), 1, || async {
            Err(Failure::Unknown(connect_error()))
        })
        .await;
        let error = result.expect_err("gives up");
        assert!(error.to_string().contains(key.as_str()), "{error}");
        assert!(started.elapsed() <= Duration::from_secs(10));
        let refused: Result<(), _> = retrying(&key, Duration::from_secs(10), 1, || async {
            Err(Failure::Final(ClientError::Forbidden { message: "no".into() }))
        })
        .await;
        assert!(matches!(refused, Err(ClientError::Forbidden { .. })));
    }
}
