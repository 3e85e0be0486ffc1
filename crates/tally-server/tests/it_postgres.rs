//! The integration tests of `it` again, each server storing in a fresh PostgreSQL database of
//! this machine's PostgreSQL (started by the setup if it is down), and the cluster's own tests:
//! several nodes on one database. `harness::POSTGRES` is true in this target.

#[path = "it/access.rs"]
mod access;
#[path = "it/bad_input.rs"]
mod bad_input;
#[path = "it/cluster.rs"]
mod cluster;
#[path = "it/compare_and_set.rs"]
mod compare_and_set;
#[path = "it/delete.rs"]
mod delete;
#[path = "it/epoch.rs"]
mod epoch;
#[path = "it/harness.rs"]
mod harness;
#[path = "it/hibernation.rs"]
mod hibernation;
#[path = "it/idempotency.rs"]
mod idempotency;
#[path = "it/limits.rs"]
mod limits;
#[path = "it/list.rs"]
mod list;
#[path = "it/origins.rs"]
mod origins;
#[path = "it/page.rs"]
mod page;
#[path = "it/postgres.rs"]
mod postgres;
#[path = "it/postgres_store.rs"]
mod postgres_store;
#[path = "it/presence.rs"]
mod presence;
#[path = "it/rpc.rs"]
mod rpc;
#[path = "it/socket.rs"]
mod socket;
#[path = "it/store.rs"]
mod store;
#[path = "it/watch.rs"]
mod watch;
