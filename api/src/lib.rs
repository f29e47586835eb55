//! feedrank-api: the feed and tracking API, and the one migration runner of the project.

pub mod migrate;
