//! End-to-end tests of the real `tally` binary: started as a process, stopped with signals or
//! killed with SIGKILL, restarted on the same SQLite file.

mod auth;
mod cli;
mod cluster;
mod crash;
mod durability;
mod faults;
mod page;
mod process;
mod serve;
mod tidy;
mod tls;
