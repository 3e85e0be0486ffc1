//! A Rust client for Tally.
//!
//! [`Client`] makes the seven RPC calls and the three API-key calls; [`Client::watch`]
//! follows one counter live as a [`Stream`](futures_util::Stream) of [`WatchEvent`]s that
//! reconnects by itself and resumes with `since`, so it has no gap and no duplicate across
//! reconnects. It speaks `http`/`ws` and `https`/`wss` (rustls, with the web PKI's roots and
//! any CA certificate you add).
//!
//! # Credentials
//! On a server with access control (docs/SECURITY.md), give the client a token, a JWT or an
//! API key, with [`ClientBuilder::token`], or a [`TokenSource`] that it asks before the first
//! request, again shortly before a JWT expires (it reads the `exp` claim) and after the server
//! said the token expired. RPCs send `Authorization: Bearer …` (and are sent once more after a
//! `401 token_expired`, with a fresh token); a watch sends the same header on its upgrade and
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
//! # Layout
//! - [`Client`], [`ClientBuilder`] (`client.rs`): the RPC calls and the client's settings.
//! - [`TokenSource`] (`token.rs`): where tokens come from, when they are renewed.
//! - `tls.rs`: the rustls settings shared by RPCs and sockets.
//! - [`Watch`], [`WatchEvent`], [`WatchOptions`] (`watch.rs`): the live stream.
//! - [`Backoff`] (`backoff.rs`): reconnect delays with full jitter.
//! - [`ClientError`] (`error.rs`): what can go wrong, telling a connection failure from a refusal.

mod backoff;
mod client;
mod error;
mod reconnect;
mod tls;
mod token;
mod watch;

pub use backoff::Backoff;
pub use client::{Client, ClientBuilder};
pub use error::{ClientError, TokenSourceError};
pub use tally_proto::keys::{CreatedKey, KeyInfo};
pub use tally_proto::{
    Action, Authenticated, Entry, HistoryPage, Metadata, OpKind, Snapshot, Update, ValueAnswer,
};
pub use token::{TokenFuture, TokenSource};
pub use watch::{Watch, WatchEvent, WatchOptions};
