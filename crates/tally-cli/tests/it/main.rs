//! End-to-end tests of the real `tally` binary: started as a process, stopped with signals or
//! killed with SIGKILL, restarted on the same SQLite file; and several of them as a cluster on
//! one PostgreSQL database (`cluster`).

mod auth;
mod backup;
mod cli;
mod cluster;
mod crash;
mod durability;
mod export;
mod faults;
mod fleet;
mod page;
mod postgres;
mod power_loss;
mod process;
mod serve;
mod server_urls;
mod tidy;
mod tls;
