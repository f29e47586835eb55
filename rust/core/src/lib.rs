//! feedrank-core: the scoring kernels and the contracts shared by the pipeline and the API.
//!
//! Pure Rust, no Python: `rust/python` wraps it for `import feedrank`, `api/` links it directly.
//!
//! Kernels: [`shuffle`], [`tfidf`], [`similarity`], [`weighting`], [`score`] (the hybrid) with
//! its [`collaborative`] models, its candidate path [`retrieval`] and the ridge maths of
//! [`recommenders`], [`metrics`]; for the feed's request-time sources, [`profile`] (a user's
//! stored profile, written by the pipeline), [`fresh`] (scoring posts newer than the user's list),
//! [`blend`] (how the sources share a feed) and [`diversify`] (the author cap on a page). Long
//! kernels take a [`cancel::Cancel`] token.
//! Contracts (one implementation each, used by the writer and the reader alike):
//! [`config`] (the scoring configuration, its defaults and checks, the named enums) and
//! [`cache`] (the Redis entry of a user's recommendations), [`experiment`] (an A/B experiment's
//! definition and the assignment of users to its arms).

pub mod blend;
pub mod cache;
pub mod cancel;
pub mod collaborative;
pub mod config;
pub mod diversify;
pub mod error;
pub mod experiment;
pub mod fresh;
pub mod metrics;
pub mod profile;
pub mod recommenders;
pub mod retrieval;
pub mod score;
pub mod shuffle;
pub mod similarity;
pub mod sparse;
pub mod tfidf;
pub mod topk;
pub mod weighting;

pub use error::{Error, Result};
