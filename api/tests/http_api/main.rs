//! HTTP tests of the whole router against real PostgreSQL and Redis (tower `oneshot`, no socket).
//! Each test gets its own database and Redis key prefix (see common.rs).

mod common;

mod auth;
mod demo;
mod errors;
mod experiments;
mod feeds;
mod ops;
mod served_log;
mod sources;
mod track;
