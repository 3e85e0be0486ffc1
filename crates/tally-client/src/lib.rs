//! A Rust client for Tally.
//!
//! [`Client`] makes the seven RPC calls; [`Client::watch`] follows one counter live as a
//! [`Stream`](futures_util::Stream) of [`WatchEvent`]s that reconnects by itself and resumes
//! with `since`, so it has no gap and no duplicate across reconnects.
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
//! - [`Client`] (`client.rs`): the RPC calls.
//! - [`Watch`], [`WatchEvent`], [`WatchOptions`] (`watch.rs`): the live stream.
//! - [`Backoff`] (`backoff.rs`): reconnect delays with full jitter.
//! - [`ClientError`] (`error.rs`): what can go wrong, telling a connection failure from a refusal.

mod backoff;
mod client;
mod error;
mod watch;

pub use backoff::Backoff;
pub use client::Client;
pub use error::ClientError;
pub use tally_proto::{Entry, HistoryPage, Metadata, OpKind, Snapshot, Update, ValueAnswer};
pub use watch::{Watch, WatchEvent, WatchOptions};
