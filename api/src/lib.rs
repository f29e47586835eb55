//! feedrank-api: the feed and tracking API, and the one migration runner of the project.
//!
//! `main.rs` reads the configuration, builds an [`AppState`] and serves [`router`]; tests build
//! the same router and drive it with `tower::ServiceExt::oneshot`.

pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod experiments;
pub mod feed;
pub mod fresh_pool;
pub mod http;
pub mod invalidation;
pub mod memo;
pub mod metrics;
pub mod migrate;
pub mod models;
pub mod redis_store;
pub mod response;
pub mod served_log;
pub mod server;
pub mod state;
pub mod trending;

pub use http::router;
pub use state::AppState;
