//! The client against a real server in the same process (one test binary, as STYLE §1 says).

mod auth;
mod client;
mod cluster;
mod connection;
mod support;
mod tls;
