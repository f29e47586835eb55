//! The Redis entry of a user's recommendations: written by the pipeline, read by the API.
//!
//! Key: `{prefix}recommendations:{user_id}` (the prefix is empty in production; tests set one so
//! that they never touch real keys). Value: compact JSON,
//!
//! ```json
//! {"v":1,"run_id":42,"generated_at":1764201600,
//!  "items":[{"post_id":"6f1c…","score":0.83,"reason":"similar_users","components":[0.9,0.4,0.7,0.2]}]}
//! ```
//!
//! `items` are ordered by descending score; `components` are collaborative, content, recency and
//! engagement, each normalized per user to [0, 1]. Both sides call [`encode`] and [`decode`], so a
//! format change cannot drift between writer and reader; `v` lets a reader reject an entry written
//! in a format it does not know (it then treats the entry as a cache miss).

use serde::{Deserialize, Serialize};

use crate::config::Reason;
use crate::{Error, Result};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The Redis key of a user's recommendations.
pub fn recommendations_key(prefix: &str, user_id: &str) -> String {
    format!("{prefix}recommendations:{user_id}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedRecommendation {
    pub post_id: String,
    pub score: f32,
    pub reason: Reason,
    pub components: [f32; 4],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedFeed {
    pub v: u32,
    pub run_id: i64,
    /// Unix seconds.
    pub generated_at: i64,
    pub items: Vec<CachedRecommendation>,
}

impl CachedFeed {
    pub fn new(run_id: i64, generated_at: i64, items: Vec<CachedRecommendation>) -> Self {
        CachedFeed {
            v: FORMAT_VERSION,
            run_id,
            generated_at,
            items,
        }
    }
}

pub fn encode(feed: &CachedFeed) -> Vec<u8> {
    serde_json::to_vec(feed).expect("CachedFeed always serializes")
}

pub fn decode(bytes: &[u8]) -> Result<CachedFeed> {
    let feed: CachedFeed = serde_json::from_slice(bytes).map_err(|e| Error::Decode {
        what: "cached recommendations",
        message: e.to_string(),
    })?;
    if feed.v != FORMAT_VERSION {
        return Err(Error::Decode {
            what: "cached recommendations",
            message: format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                feed.v
            ),
        });
    }
    Ok(feed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CachedFeed {
        CachedFeed::new(
            7,
            1_764_201_600,
            vec![CachedRecommendation {
                post_id: "6f1c2d3e-0000-4000-8000-000000000001".into(),
                score: 0.83,
                reason: Reason::SimilarUsers,
                components: [0.9, 0.4, 0.7, 0.2],
            }],
        )
    }

    #[test]
    fn round_trip() {
        let f = sample();
        assert_eq!(decode(&encode(&f)).unwrap(), f);
    }

    #[test]
    fn the_documented_shape() {
        let s = String::from_utf8(encode(&sample())).unwrap();
        assert!(
            s.starts_with(r#"{"v":1,"run_id":7,"generated_at":1764201600,"items":[{"post_id":"#)
        );
        assert!(s.contains(r#""reason":"similar_users""#));
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        let mut f = sample();
        f.v = 2;
        assert!(decode(&encode(&f)).is_err());
        assert!(decode(b"not json").is_err());
    }

    #[test]
    fn key_format() {
        assert_eq!(recommendations_key("", "abc"), "recommendations:abc");
        assert_eq!(recommendations_key("t1:", "abc"), "t1:recommendations:abc");
    }
}
