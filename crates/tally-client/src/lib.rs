//! A Rust client for Tally.
//!
//! [`Client`] makes the RPC calls and the three API-key calls; [`Client::connect`] opens a
//! [`Connection`]: one socket (`/ws`, protocol version 2) for many counters, each followed as a
//! [`Subscription`] (a [`Stream`](futures_util::Stream) of [`SubscriptionEvent`]s), plus calls
//! over the same socket. A connection reconnects by itself, honours the server's advised delay,
//! and resumes every subscription with `since`, so it has no gap and no duplicate across
//! reconnects. [`Client::watch`] follows one counter the same way, as a [`Watch`].
//!
//! Every write carries an idempotency key ([`Write`]) and is sent again with the same key while
//! its fate is unknown (a timeout, a lost connection, a restarting server), over HTTP and over
//! the socket alike: a write through a dropping network counts exactly once.
//!
//! It speaks `http`/`ws` and `https`/`wss` (rustls, with the web PKI's roots and any CA
//! certificate you add).
//!
//! # Credentials
//! On a server with access control (docs/SECURITY.md), give the client a token, a JWT or an
//! API key, with [`ClientBuilder::token`], or a [`TokenSource`] that it asks before the first
//! request, again shortly before a JWT expires (it reads the `exp` claim) and after the server
//! said the token expired. RPCs send `Authorization: Bearer …` (and are sent once more after a
//! `401 token_expired`, with a fresh token); a connection sends the same header on its upgrade and
//! a fresh token over the open socket before the current one expires, so it goes on with no
//! gap. Refusals are typed: [`ClientError::Unauthenticated`], [`ClientError::Forbidden`],
//! [`ClientError::RateLimited`]. Tokens never appear in errors or `Debug` output.
//!
//! ```no_run
//! # async fn example() -> Result<(), tally_client::ClientError> {
//! # async fn token_from_my_backend() -> Result<String, std::io::Error> { Ok(String::new()) }
//! let pem = std::fs::read("ca.pem").expect("the CA certificate");
//! let client = tally_client::Client::builder("https://tally.internal:8094")
//!     .add_root_certificate_pem(pem)
//!     .token_source(|| async { token_from_my_backend().await })
//!     .build()?;
//! client.increment("likes:post-1", 1).await?;
//! # Ok(())
//! # }
//! ```
//!
//! ```no_run
//! # async fn example() -> Result<(), tally_client::ClientError> {
//! use futures_util::StreamExt;
//! use tally_client::{Client, WatchEvent};
//!
//! let client = Client::new("http://127.0.0.1:8094")?;
//! let update = client.increment("likes", 1).await?;
//! println!("likes is now {} (version {})", update.value, update.version);
//!
//! let mut watch = client.watch("likes");
//! while let Some(event) = watch.next().await {
//!     if let WatchEvent::Update(update) = event {
//!         println!("{} -> {}", update.previous_value, update.value);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Several servers
//! Give [`Client::with_urls`] (or [`Client::builder_with_urls`], for credentials and
//! certificates) the nodes of one cluster: several `tally serve` on one PostgreSQL database
//! (docs/CLUSTER.md), with no load balancer needed in front of them. They must share the
//! database: a subscription moves from one to the next with `since`, which means the same thing
//! only where the history is the same (a server with another database has another epoch, and a
//! resume there gets a resync snapshot). What the client does with them (docs/PROTOCOL.md §11,
//! rule 18, checked against `protocol/reconnect-scenarios.json` as the TypeScript client is):
//!
//! - A [`Connection`] (and so a [`Watch`]) makes its first attempt to the first URL. Every end
//!   of a connection or of an attempt that is followed by a reconnect (a lost socket, a close
//!   that advises reconnecting such as 1006 or 1012, a temporary refusal of the upgrade such as
//!   `503`, a connect timeout, a ping with no answer, a 4502 once a fresh token came) sends the
//!   next attempt to the next URL, round robin. The wait before it is what one server would get:
//!   the server's advised delay, else the backoff, which goes on growing across URLs until a
//!   connection stays up 10 s. Every subscription resumes there with `since`, with no gap and
//!   no duplicate, and writes on their way are sent again there with their idempotency keys.
//!   [`Connection::server_url`] says which node it is on.
//! - An ending that stops is not tried on the next node, since every node would answer the
//!   same: an upgrade refused for good (`unauthenticated`, `forbidden`, `not_found`, …) and the
//!   closes that stop (1000, 1002, 1007, 1008, 1009, 4501, 4503, …).
//! - RPCs go to the URL that worked last, and move on only when they could not reach it, never
//!   because of an answer (see [`Client::with_urls`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), tally_client::ClientError> {
//! use futures_util::StreamExt;
//! use tally_client::{Client, SubscriptionEvent};
//!
//! let client = Client::with_urls([
//!     "http://10.0.0.11:8094",
//!     "http://10.0.0.12:8094",
//!     "http://10.0.0.13:8094",
//! ])?;
//! // Goes to the first node, or to the next one when the first cannot be reached; counts once.
//! client.increment("likes", 1).await?;
//!
//! let connection = client.connect();
//! let mut likes = connection.subscribe("likes");
//! while let Some(event) = likes.next().await {
//!     match event {
//!         SubscriptionEvent::Snapshot(snapshot) => {
//!             println!("likes = {} (from {})", snapshot.value, connection.server_url());
//!         }
//!         SubscriptionEvent::Disconnected { reason, retry_in } => {
//!             eprintln!("{reason}; trying the next node in {retry_in:?}");
//!         }
//!         SubscriptionEvent::Resumed { since, .. } => {
//!             println!("resumed after version {since} on {}", connection.server_url());
//!         }
//!         SubscriptionEvent::Update(update) => println!("likes = {}", update.value),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`Client`], [`ClientBuilder`] (`client.rs`): the RPC calls and the client's settings.
//! - [`Write`] (`write.rs`): writes with idempotency keys, and when a write is sent again.
//! - [`Connection`], [`Subscription`] (`connection.rs`): one socket, many counters, and calls;
//!   `connection/driver.rs` is the task that owns the socket.
//! - `reconnect.rs`: the reconnect rules as a pure state machine, checked against
//!   `protocol/reconnect-scenarios.json` (shared with the TypeScript client).
//! - [`Watch`], [`WatchEvent`], [`WatchOptions`] (`watch.rs`): one counter over a connection.
//! - [`TokenSource`] (`token.rs`): where tokens come from, when they are renewed.
//! - `tls.rs`: the rustls settings shared by RPCs and sockets.
//! - [`Backoff`] (`backoff.rs`): reconnect delays with full jitter.
//! - [`ClientError`] (`error.rs`): what can go wrong, telling a connection failure from a refusal.

mod backoff;
mod client;
mod connection;
mod error;
mod reconnect;
mod tls;
mod token;
mod watch;
mod write;

pub use backoff::Backoff;
pub use client::{Client, ClientBuilder};
pub use connection::{
    Connection, ConnectionEvent, ConnectionEvents, ConnectionOptions, Ended, SubscribeOptions,
    Subscription, SubscriptionEvent,
};
pub use error::{ClientError, TokenSourceError};
pub use tally_proto::keys::{CreatedKey, KeyInfo};
pub use tally_proto::socket::SocketAuthenticated;
pub use tally_proto::{
    Action, CounterList, Deleted, Entry, HistoryPage, IdempotencyKey, ListedCounter, Metadata,
    OpKind, Presence, Procedure, Snapshot, Update, ValueAnswer,
};
pub use token::{TokenFuture, TokenSource};
pub use watch::{Watch, WatchEvent, WatchOptions};
pub use write::{Write, new_key};
