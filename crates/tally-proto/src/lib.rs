//! Tally's wire protocol: every JSON shape that crosses the network, the validation rules for
//! requests, and the error and close codes, shared by the server and every client.
//!
//! This crate is the only place that defines JSON shapes (see ARCHITECTURE.md); it has no
//! dependency on an async runtime so that any client can use it.
//!
//! # Layout
//! - [`limits`]: the numbers the protocol promises (name length, safe integer range, sizes).
//! - [`name`]: counter names and their validation.
//! - [`error`]: error codes, the HTTP error body and WebSocket close codes.
//! - [`rpc`]: the RPC procedures (ten counter, three key), their raw requests and validated forms.
//! - [`message`]: what the server sends (updates, snapshots, metadata) and what clients send.
//! - [`watch`]: the query string of a watch (`?since=V&epoch=E`).
//! - [`epoch`]: a database's epoch, which tells one history from another on a resume.
//! - [`grant`]: grants (`PATTERN=ACTION[<=CAP],...`): their syntax and what they allow.
//! - [`keys`]: the API-key RPCs' bodies and answers.
//! - [`idempotency`]: idempotency keys, which make a retried write count once.
//! - [`export`]: the JSON Lines file of `tally export` and `tally import`.
//! - [`socket`]: the socket protocol, version 2 (`GET /ws`): commands, replies and pushes.

pub mod epoch;
pub mod error;
pub mod export;
pub mod grant;
pub mod idempotency;
pub mod keys;
pub mod limits;
pub mod message;
pub mod name;
pub mod rpc;
pub mod socket;
#[cfg(test)]
mod typescript;
pub mod watch;

pub use epoch::Epoch;
pub use error::{ErrorBody, ErrorCode, ErrorDetail, ProtocolError, close};
pub use grant::{Action, Grant, NamePattern, Permissions};
pub use idempotency::IdempotencyKey;
pub use message::{
    Authenticated, ClientMessage, CounterList, Deleted, Entry, HistoryPage, ListedCounter,
    Metadata, OpKind, Pong, Presence, Readiness, Resumed, ServerMessage, Snapshot, Update,
    ValueAnswer, WsError,
};
pub use name::CounterName;
pub use rpc::{Op, Procedure, Request};
pub use watch::WatchQuery;
