//! feedrank-core: the scoring kernels and the contracts shared by the pipeline and the API.
//!
//! Pure Rust, no Python: `rust/python` wraps it for `import feedrank`, `api/` links it directly.
//!
//! Kernels: [`shuffle`], [`tfidf`], [`similarity`], [`score`], [`metrics`].
//! Contracts (one implementation each, used by the writer and the reader alike):
//! [`config`] (hybrid weights, interaction weights, defaults) and [`cache`] (the Redis entry of a
//! user's recommendations).

pub mod blend;
pub mod cache;
pub mod config;
pub mod error;
pub mod fresh;
pub mod metrics;
pub mod recommenders;
pub mod score;
pub mod shuffle;
pub mod similarity;
pub mod sparse;
pub mod tfidf;
pub mod topk;
pub mod weighting;

pub use error::{Error, Result};
