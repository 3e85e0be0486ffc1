//! Integration tests: the real server on an ephemeral port, spoken to over real HTTP and
//! WebSocket connections, storing in a real SQLite file.

mod access;
mod bad_input;
mod harness;
mod hibernation;
mod idempotency;
mod limits;
mod origins;
mod page;
mod rpc;
mod socket;
mod store;
mod watch;
