//! The Redis entry of a user's recommendations: written by the pipeline, read by the API.
//!
//! Key: `{prefix}recommendations:{<user_id>}`, braces included (the prefix is empty in production;
//! tests set one so that they never touch real keys; see [`user_key`] for the braces). Value:
//! compact JSON,
//!
//! ```json
//! {"v":2,"run_id":42,"model_id":7,"generated_at":1764201600,
//!  "items":[{"post_id":"6f1c…","score":0.83,"reason":"similar_users","components":[0.9,0.4,0.7,0.2]}],
//!  "profile":{"terms":[3,17],"weights":[0.71,0.42],"authors":["0b9e…"],"author_weights":[1.0]}}
//! ```
//!
//! `items` are ordered by descending score; `components` are collaborative, content, recency and
//! engagement, each normalized per user to [0, 1]. `model_id` (the run's
//! `recommendation_models` row) and `profile` (the user's stored profile in that model's
//! vocabulary, `user_profiles` of migration V7: terms ascending with their weights, authors with
//! their affinities) carry what the request-time sources need, so the cached path reads no
//! PostgreSQL; either may be absent (a run without a model, a user without history). Both sides
//! call [`encode`] and [`decode`], so a format change cannot drift between writer and reader; `v`
//! lets a reader reject an entry written in a format it does not know (it then treats the entry
//! as a cache miss).
//!
//! Versions: 2 added `model_id` and `profile`. A version-1 reader refuses unknown fields, so it
//! could not have read them under `v: 1`; this build still reads version 1 entries (what a
//! pipeline of the previous version left in Redis), as entries without a model or profile.

use serde::{Deserialize, Serialize};

use crate::config::Reason;
use crate::{Error, Result};

/// The format version this build writes.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads (every version up to [`FORMAT_VERSION`]).
pub const OLDEST_READABLE_VERSION: u32 = 1;

/// The Redis key of a user's recommendations.
pub fn recommendations_key(prefix: &str, user_id: &str) -> String {
    user_key(prefix, "recommendations", user_id)
}

/// The Redis key of one of a user's entries (`kind`: `recommendations`, or the API's own
/// `seen`, `hidden`, ...): `{prefix}{kind}:{<user_id>}`. The braces are a Redis Cluster hash tag:
/// only the user id is hashed, so all of a user's keys are in one slot and the API reads them in
/// one pipeline from one node. (So the prefix must not contain `{`.) Keys of the previous format,
/// without braces, are no longer read: a pipeline run rewrites every user's entry, and until then
/// a miss is served from PostgreSQL and written back.
pub fn user_key(prefix: &str, kind: &str, user_id: &str) -> String {
    format!("{prefix}{kind}:{{{user_id}}}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedRecommendation {
    pub post_id: String,
    pub score: f32,
    pub reason: Reason,
    pub components: [f32; 4],
}

/// A user's stored profile as the entry carries it: the same values as their `user_profiles`
/// row (`feedrank_core::profile::UserProfile`, with authors as user ids).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedProfile {
    /// Term indices of the model's vocabulary, ascending.
    pub terms: Vec<u32>,
    /// One weight per term.
    pub weights: Vec<f32>,
    /// Author user ids.
    pub authors: Vec<String>,
    /// One affinity in (0, 1] per author.
    pub author_weights: Vec<f32>,
}

impl CachedProfile {
    /// One weight per term and per author, every weight finite; errors name the field
    /// (`profile.weights: ...`).
    pub fn validate(&self) -> Result<()> {
        let pairs = [
            (
                "profile.weights",
                self.weights.len(),
                self.terms.len(),
                "term",
            ),
            (
                "profile.author_weights",
                self.author_weights.len(),
                self.authors.len(),
                "author",
            ),
        ];
        for (field, got, want, what) in pairs {
            if got != want {
                return Err(Error::invalid(
                    field,
                    format!("has {got} values for {want} {what}s"),
                ));
            }
        }
        for (field, values) in [
            ("profile.weights", &self.weights),
            ("profile.author_weights", &self.author_weights),
        ] {
            if let Some(w) = values.iter().find(|w| !w.is_finite()) {
                return Err(Error::invalid(field, format!("must be finite, found {w}")));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedFeed {
    pub v: u32,
    pub run_id: i64,
    /// The run's serving model (`recommendation_models.id`); none for a run without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<i64>,
    /// Unix seconds.
    pub generated_at: i64,
    pub items: Vec<CachedRecommendation>,
    /// The user's profile in the model's vocabulary; none without a model or history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<CachedProfile>,
}

impl CachedFeed {
    /// An entry without a model or profile ([`CachedFeed::with_model`] adds them).
    pub fn new(run_id: i64, generated_at: i64, items: Vec<CachedRecommendation>) -> Self {
        CachedFeed {
            v: FORMAT_VERSION,
            run_id,
            model_id: None,
            generated_at,
            items,
            profile: None,
        }
    }

    /// The entry with the run's model and the user's profile in it.
    pub fn with_model(self, model_id: Option<i64>, profile: Option<CachedProfile>) -> Self {
        CachedFeed {
            model_id,
            profile,
            ..self
        }
    }
}

pub fn encode(feed: &CachedFeed) -> Vec<u8> {
    serde_json::to_vec(feed).expect("CachedFeed always serializes")
}

pub fn decode(bytes: &[u8]) -> Result<CachedFeed> {
    let decode_error = |message: String| Error::Decode {
        what: "cached recommendations",
        message,
    };
    let feed: CachedFeed =
        serde_json::from_slice(bytes).map_err(|e| decode_error(e.to_string()))?;
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&feed.v) {
        return Err(decode_error(format!(
            "format version {} (this build reads {OLDEST_READABLE_VERSION} to {FORMAT_VERSION})",
            feed.v
        )));
    }
    if let Some(profile) = &feed.profile {
        profile
            .validate()
            .map_err(|e| decode_error(e.to_string()))?;
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

    fn profile() -> CachedProfile {
        CachedProfile {
            terms: vec![3, 17, 4_000_000_000],
            weights: vec![0.71, 0.42, 1e-7],
            authors: vec!["0b9e0000-0000-4000-8000-000000000002".into()],
            author_weights: vec![1.0],
        }
    }

    #[test]
    fn round_trip() {
        let f = sample();
        assert_eq!(decode(&encode(&f)).unwrap(), f);
    }

    #[test]
    fn round_trip_with_model_and_profile_keeps_every_bit() {
        let f = sample().with_model(Some(3), Some(profile()));
        let back = decode(&encode(&f)).unwrap();
        assert_eq!(back, f);
        let p = back.profile.unwrap();
        // f32 through JSON and back: the same bits, not just close
        for (a, b) in p.weights.iter().zip(&profile().weights) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        // a profile with nothing in it is still a profile (a user whose posts had no terms)
        let empty = sample().with_model(Some(3), Some(CachedProfile::default()));
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn the_documented_shape() {
        let s = String::from_utf8(encode(&sample())).unwrap();
        assert!(
            s.starts_with(r#"{"v":2,"run_id":7,"generated_at":1764201600,"items":[{"post_id":"#)
        );
        assert!(s.contains(r#""reason":"similar_users""#));
        // without a model or profile, neither key is written
        assert!(!s.contains("model_id") && !s.contains("profile"));
        let s = String::from_utf8(encode(&sample().with_model(Some(3), Some(profile())))).unwrap();
        assert!(s.starts_with(r#"{"v":2,"run_id":7,"model_id":3,"generated_at":1764201600,"#));
        assert!(s.ends_with(
            r#""profile":{"terms":[3,17,4000000000],"weights":[0.71,0.42,1e-7],"authors":["0b9e0000-0000-4000-8000-000000000002"],"author_weights":[1.0]}}"#
        ));
    }

    #[test]
    fn version_1_entries_still_decode_without_model_or_profile() {
        // as the pipeline before version 2 wrote them
        let v1 = br#"{"v":1,"run_id":7,"generated_at":1764201600,"items":[{"post_id":"p","score":0.5,"reason":"fresh","components":[0,0,1,0]}]}"#;
        let f = decode(v1).unwrap();
        assert_eq!((f.v, f.run_id, f.model_id, f.profile), (1, 7, None, None));
        assert_eq!(f.items[0].reason, Reason::Fresh);
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        for v in [0, FORMAT_VERSION + 1] {
            let mut f = sample();
            f.v = v;
            let err = decode(&encode(&f)).unwrap_err().to_string();
            assert!(err.contains(&format!("format version {v}")), "{err}");
        }
        assert!(decode(b"not json").is_err());
        // a field this version does not know
        assert!(decode(br#"{"v":2,"run_id":1,"generated_at":1,"items":[],"extra":1}"#).is_err());
    }

    #[test]
    fn a_profile_whose_lengths_disagree_does_not_decode_and_names_the_field() {
        let mut p = profile();
        p.weights.pop();
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "profile.weights: has 2 values for 3 terms"
        );
        let raw = encode(&sample().with_model(Some(3), Some(p)));
        let err = decode(&raw).unwrap_err().to_string();
        assert!(
            err.contains("profile.weights: has 2 values for 3 terms"),
            "{err}"
        );
        let mut p = profile();
        p.authors.push("another".into());
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("profile.author_weights: has 1 values for 2 authors"));
        let mut p = profile();
        p.weights[0] = f32::NAN;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("profile.weights: must be finite"));
    }

    #[test]
    fn key_format() {
        assert_eq!(recommendations_key("", "abc"), "recommendations:{abc}");
        assert_eq!(
            recommendations_key("t1:", "abc"),
            "t1:recommendations:{abc}"
        );
        assert_eq!(user_key("t1:", "seen", "abc"), "t1:seen:{abc}");
    }
}
