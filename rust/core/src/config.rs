//! Scoring configuration: the hybrid weights, the interaction-type weights and their defaults.
//!
//! The pipeline (through the Python binding) and the API (directly) both read these, so the
//! defaults and the score formula live here and nowhere else.

use serde::{Deserialize, Serialize};

use crate::error::{check_count, check_non_negative, check_positive};
use crate::{Error, Result};

/// The four components of a recommendation, in the order used everywhere (arrays, columns, JSON).
pub const COMPONENTS: [&str; 4] = ["collaborative", "content", "recency", "engagement"];

/// Weights of the hybrid score. Default: the design's `0.4 / 0.3 / 0.2 / 0.1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HybridWeights {
    pub collaborative: f32,
    pub content: f32,
    pub recency: f32,
    pub engagement: f32,
}

impl Default for HybridWeights {
    fn default() -> Self {
        HybridWeights {
            collaborative: 0.4,
            content: 0.3,
            recency: 0.2,
            engagement: 0.1,
        }
    }
}

impl HybridWeights {
    pub fn as_array(&self) -> [f32; 4] {
        [
            self.collaborative,
            self.content,
            self.recency,
            self.engagement,
        ]
    }

    pub fn from_array(w: [f32; 4]) -> Self {
        HybridWeights {
            collaborative: w[0],
            content: w[1],
            recency: w[2],
            engagement: w[3],
        }
    }

    /// Finite, non-negative, not all zero.
    pub fn validate(&self) -> Result<()> {
        for (name, w) in COMPONENTS.iter().zip(self.as_array()) {
            if !w.is_finite() || w < 0.0 {
                return Err(Error::invalid(
                    "weights",
                    format!("{name} weight must be finite and >= 0, got {w}"),
                ));
            }
        }
        if self.as_array().iter().all(|&w| w == 0.0) {
            return Err(Error::invalid("weights", "at least one weight must be > 0"));
        }
        Ok(())
    }

    /// The hybrid score: the weighted sum of the (per-user normalized) components.
    /// This is the one implementation of the formula.
    #[inline]
    pub fn combine(&self, components: [f32; 4]) -> f32 {
        let w = self.as_array();
        w[0] * components[0] + w[1] * components[1] + w[2] * components[2] + w[3] * components[3]
    }
}

/// An enum whose variants each have one name, the same in JSON, Python and SQL: `NAMES` (and
/// `ALL`) list them in declaration order, `as_str` names one, `parse` reads a name back. The names
/// are written once, here; serde uses the same ones.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];
            /// The names of [`Self::ALL`], in that order.
            pub const NAMES: [&'static str; [$($text),+].len()] = [$($text),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.into_iter().find(|v| v.as_str() == s)
            }
        }
    };
}

named_enum! {
    /// Why a post was recommended: the component that contributed most to its score.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Reason {
        SimilarUsers = "similar_users",
        SimilarContent = "similar_content",
        Fresh = "fresh",
        Popular = "popular",
    }
}

impl Reason {
    /// The component with the largest weighted contribution; ties go to the earlier component.
    pub fn strongest(weights: &HybridWeights, components: [f32; 4]) -> Reason {
        let w = weights.as_array();
        let mut best = 0;
        for i in 1..4 {
            if w[i] * components[i] > w[best] * components[best] {
                best = i;
            }
        }
        Reason::ALL[best]
    }
}

named_enum! {
    /// A kind of interaction a client can track. The one list of them: the API's tracking body,
    /// the pipeline's snapshot, [`InteractionWeights`] and the Python lists all derive from it (and
    /// a test compares it with the migration's CHECK constraint).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum InteractionType {
        View = "view",
        Click = "click",
        Like = "like",
        Share = "share",
        /// "Not interested": never a positive signal; a hidden post is never recommended again.
        Hide = "hide",
    }
}

/// The names of [`InteractionType::ALL`], in the order of [`InteractionWeights::as_array`].
pub const INTERACTION_TYPES: [&str; 5] = InteractionType::NAMES;

/// How much each interaction type says about a user's interest.
///
/// Defaults: a view says little (1), a click more (2), a like much more (4), a share most (6).
/// `hide` ("not interested") is not a positive signal: weight 0 in the interaction matrix, and
/// hidden posts are excluded from the user's recommendations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InteractionWeights {
    pub view: f32,
    pub click: f32,
    pub like: f32,
    pub share: f32,
    pub hide: f32,
}

impl Default for InteractionWeights {
    fn default() -> Self {
        InteractionWeights {
            view: 1.0,
            click: 2.0,
            like: 4.0,
            share: 6.0,
            hide: 0.0,
        }
    }
}

impl InteractionWeights {
    pub fn as_array(&self) -> [f32; 5] {
        [self.view, self.click, self.like, self.share, self.hide]
    }

    /// The weight of an interaction type by name; `None` for an unknown type.
    pub fn weight_of(&self, interaction_type: &str) -> Option<f32> {
        INTERACTION_TYPES
            .iter()
            .position(|t| *t == interaction_type)
            .map(|i| self.as_array()[i])
    }

    pub fn validate(&self) -> Result<()> {
        for (name, w) in INTERACTION_TYPES.iter().zip(self.as_array()) {
            if !w.is_finite() || w < 0.0 {
                return Err(Error::invalid(
                    "interaction_weights",
                    format!("{name} weight must be finite and >= 0, got {w}"),
                ));
            }
        }
        Ok(())
    }
}

named_enum! {
    /// The model that fills the hybrid's collaborative slot (`collaborative.rs`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CollaborativeModel {
        /// The design's user-user filter: sum over the k nearest users of similarity x their
        /// weight.
        UserUser = "user_user",
        /// Item-item: sum over the user's items of their k nearest items' similarities.
        ItemItem = "item_item",
        /// Neighbourhood ridge item-item (`recommenders::ridge_item_neighbors`): each item
        /// regressed on its `neighbors` strongest co-occurring items with penalty `ridge_l2`;
        /// EASE made sparse.
        Ridge = "ridge",
    }
}

named_enum! {
    /// How the users x items interaction matrix is weighted before similarities are computed
    /// (as in `implicit`: plain, binary, TF-IDF or BM25 of the interaction values).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum InteractionWeighting {
        None = "none", Binary = "binary", Tfidf = "tfidf", Bm25 = "bm25",
    }
}

/// Everything that shapes a run's recommendations, with the design's defaults: the one
/// parameter object of the hybrid score (`score::HybridModel`), the binding, the
/// pipeline and the evaluation. The pipeline's run config and `feedrank tune`'s output file are
/// this struct as JSON. A new setting is a field here (with its default, its check in
/// [`ScoringConfig::validate`] and its doc comment) and reaches every caller from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringConfig {
    pub weights: HybridWeights,
    pub interaction_weights: InteractionWeights,
    pub collaborative: CollaborativeModel,
    pub weighting: InteractionWeighting,
    /// BM25 term-frequency saturation of the `bm25` weighting (>= 0).
    pub bm25_k1: f32,
    /// BM25 length normalization of the `bm25` weighting, in [0, 1].
    pub bm25_b: f32,
    /// Recency time constant: recency = exp(-age / tau).
    pub recency_tau_days: f32,
    /// Neighbours kept per user (user-user) or per item (item-item, ridge).
    pub neighbors: usize,
    /// Ridge penalty of the `ridge` collaborative model, in co-occurrence counts.
    pub ridge_l2: f32,
    /// Recency of the user's own interactions: the user's n-th most recent interaction weighs
    /// `0.5^(n / history_half_life)` in their history. 0 = every interaction weighs the same.
    pub history_half_life: f32,
    /// Recommendations kept per user.
    pub top_k: usize,
    /// Interactions older than this are not read.
    pub lookback_days: u32,
    /// TTL of a user's Redis entry, seconds.
    pub cache_ttl_seconds: u64,
    /// Rows of user_recommendations expire this long after they were generated, hours.
    pub expires_after_hours: u32,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig {
            weights: HybridWeights::default(),
            interaction_weights: InteractionWeights::default(),
            collaborative: CollaborativeModel::UserUser,
            weighting: InteractionWeighting::None,
            bm25_k1: 100.0,
            bm25_b: 0.8,
            recency_tau_days: 30.0,
            neighbors: 50,
            ridge_l2: 100.0,
            history_half_life: 0.0,
            top_k: 200,
            lookback_days: 30,
            cache_ttl_seconds: 3600,
            expires_after_hours: 48,
        }
    }
}

/// BM25's `k1` (term-frequency saturation): finite and >= 0. `arg` names it as the caller does
/// (`bm25_k1` in a config, `k1` as a kernel's argument).
pub fn check_bm25_k1(arg: &'static str, k1: f32) -> Result<()> {
    check_non_negative(arg, k1)
}

/// BM25's `b` (length normalization): in [0, 1].
pub fn check_bm25_b(arg: &'static str, b: f32) -> Result<()> {
    if !(b.is_finite() && (0.0..=1.0).contains(&b)) {
        return Err(Error::invalid(arg, format!("must be in [0, 1], got {b}")));
    }
    Ok(())
}

impl ScoringConfig {
    /// The one validation of the settings; each error starts with the field's name.
    pub fn validate(&self) -> Result<()> {
        self.weights.validate()?;
        self.interaction_weights.validate()?;
        check_bm25_k1("bm25_k1", self.bm25_k1)?;
        check_bm25_b("bm25_b", self.bm25_b)?;
        check_positive("recency_tau_days", self.recency_tau_days)?;
        check_count("neighbors", self.neighbors)?;
        check_positive("ridge_l2", self.ridge_l2)?;
        check_non_negative("history_half_life", self.history_half_life)?;
        check_count("top_k", self.top_k)?;
        check_count("lookback_days", self.lookback_days as usize)?;
        check_count("cache_ttl_seconds", self.cache_ttl_seconds as usize)?;
        check_count("expires_after_hours", self.expires_after_hours as usize)?;
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ScoringConfig always serializes")
    }

    /// Reads and validates a configuration from any serde source (JSON text; a Python dict,
    /// through the binding). Missing fields take their defaults; an unknown field, a value of the
    /// wrong type or a bad value is an error that starts with the field's path (`top_k: ...`,
    /// `weights.content: ...`, `top_kk: unknown field ...`; `config: ...` when the whole is
    /// not an object).
    pub fn deserialize_validated<'de, D: serde::Deserializer<'de>>(source: D) -> Result<Self> {
        let cfg: ScoringConfig = serde_path_to_error::deserialize(source).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "config".to_string()
            } else {
                path
            };
            Error::invalid(field, e.into_inner().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses and validates JSON text (see [`ScoringConfig::deserialize_validated`]).
    pub fn from_json(s: &str) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_str(s);
        let cfg = Self::deserialize_validated(&mut de)?;
        de.end()
            .map_err(|e| Error::invalid("config", e.to_string()))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_designs() {
        let c = ScoringConfig::default();
        assert_eq!(c.weights.as_array(), [0.4, 0.3, 0.2, 0.1]);
        assert_eq!(c.lookback_days, 30);
        c.validate().unwrap();
    }

    #[test]
    fn combine_is_the_weighted_sum() {
        let w = HybridWeights::default();
        let s = w.combine([1.0, 0.5, 0.0, 1.0]);
        assert!((s - (0.4 + 0.15 + 0.1)).abs() < 1e-6);
    }

    #[test]
    fn weights_reject_negative_nan_and_all_zero() {
        assert!(HybridWeights::from_array([-0.1, 0.3, 0.2, 0.1])
            .validate()
            .is_err());
        assert!(HybridWeights::from_array([f32::NAN, 0.3, 0.2, 0.1])
            .validate()
            .is_err());
        assert!(HybridWeights::from_array([0.0; 4]).validate().is_err());
    }

    #[test]
    fn reason_is_the_strongest_weighted_component() {
        let w = HybridWeights::default();
        assert_eq!(
            Reason::strongest(&w, [1.0, 0.0, 0.0, 0.0]),
            Reason::SimilarUsers
        );
        assert_eq!(Reason::strongest(&w, [0.1, 0.2, 1.0, 0.0]), Reason::Fresh);
        assert_eq!(Reason::strongest(&w, [0.0, 0.0, 0.0, 1.0]), Reason::Popular);
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn config_json_round_trips_and_rejects_unknown_fields() {
        let c = ScoringConfig::default();
        assert_eq!(ScoringConfig::from_json(&c.to_json()).unwrap(), c);
        assert_eq!(ScoringConfig::from_json("{}").unwrap(), c);
        assert!(ScoringConfig::from_json(r#"{"top_kk": 3}"#).is_err());
        assert!(ScoringConfig::from_json(r#"{"weights": {"collaborative": -1}}"#).is_err());
        let tuned = ScoringConfig::from_json(
            r#"{"collaborative": "ridge", "ridge_l2": 30, "history_half_life": 7.5}"#,
        )
        .unwrap();
        assert_eq!(tuned.collaborative, CollaborativeModel::Ridge);
        assert_eq!((tuned.ridge_l2, tuned.history_half_life), (30.0, 7.5));
        assert!(ScoringConfig::from_json(r#"{"ridge_l2": 0}"#)
            .unwrap_err()
            .to_string()
            .starts_with("ridge_l2:"));
        assert!(ScoringConfig::from_json(r#"{"history_half_life": -1}"#)
            .unwrap_err()
            .to_string()
            .starts_with("history_half_life:"));
    }

    #[test]
    fn named_enums_parse_their_names_and_serialize_as_them() {
        fn check<T: Copy + PartialEq + std::fmt::Debug + Serialize>(
            all: &[T],
            names: &[&str],
            as_str: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            assert_eq!(all.len(), names.len());
            for (&v, &name) in all.iter().zip(names) {
                assert_eq!(as_str(v), name);
                assert_eq!(parse(name), Some(v));
                assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{name}\""));
            }
            assert_eq!(parse("unlike"), None);
        }
        check(&Reason::ALL, &Reason::NAMES, Reason::as_str, Reason::parse);
        check(
            &InteractionType::ALL,
            &InteractionType::NAMES,
            InteractionType::as_str,
            InteractionType::parse,
        );
        check(
            &CollaborativeModel::ALL,
            &CollaborativeModel::NAMES,
            CollaborativeModel::as_str,
            CollaborativeModel::parse,
        );
        check(
            &InteractionWeighting::ALL,
            &InteractionWeighting::NAMES,
            InteractionWeighting::as_str,
            InteractionWeighting::parse,
        );
        assert_eq!(
            INTERACTION_TYPES,
            ["view", "click", "like", "share", "hide"]
        );
        assert_eq!(
            CollaborativeModel::NAMES,
            ["user_user", "item_item", "ridge"]
        );
    }

    #[test]
    fn bm25_settings_are_validated_by_name() {
        let c = ScoringConfig::default();
        assert_eq!((c.bm25_k1, c.bm25_b), (100.0, 0.8));
        let err = |json: &str| ScoringConfig::from_json(json).unwrap_err().to_string();
        assert!(err(r#"{"bm25_k1": -1}"#).starts_with("bm25_k1: must be finite and >= 0"));
        assert!(err(r#"{"bm25_b": 1.5}"#).starts_with("bm25_b: must be in [0, 1]"));
        let tuned = ScoringConfig::from_json(r#"{"weighting": "bm25", "bm25_k1": 1.2}"#).unwrap();
        assert_eq!(
            (tuned.weighting, tuned.bm25_k1),
            (InteractionWeighting::Bm25, 1.2)
        );
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = |json: &str| ScoringConfig::from_json(json).unwrap_err().to_string();
        assert!(err(r#"{"top_k": "ten"}"#).starts_with("top_k: invalid type"));
        assert!(
            err(r#"{"weights": {"content": "x"}}"#).starts_with("weights.content: invalid type")
        );
        assert!(err(r#"{"collaborative": "nope"}"#).starts_with("collaborative: unknown variant"));
        let unknown = err(r#"{"top_kk": 3}"#);
        assert!(
            unknown.starts_with("top_kk: unknown field `top_kk`"),
            "{unknown}"
        );
        assert!(err(r#"{"weights": {"fresh": 1}}"#).starts_with("weights.fresh: unknown field"));
        assert!(err(r#"{} x"#).starts_with("config: trailing characters"));
    }

    #[test]
    fn interaction_weights_by_name() {
        let w = InteractionWeights::default();
        assert_eq!(w.weight_of("like"), Some(4.0));
        assert_eq!(w.weight_of("nope"), None);
    }
}
