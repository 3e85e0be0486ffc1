//! Integration tests: the real server on an ephemeral port, spoken to over real HTTP and
//! WebSocket connections, storing in a real SQLite file. `tests/it_postgres.rs` runs the same
//! modules (but the SQLite file's own) on PostgreSQL, with the cluster's tests.

mod access;
mod bad_input;
mod compare_and_set;
mod delete;
mod epoch;
mod harness;
mod hibernation;
mod idempotency;
mod limits;
mod list;
mod origins;
mod page;
mod postgres;
mod rpc;
mod socket;
mod sqlite_store;
mod store;
mod watch;
