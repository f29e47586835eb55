//! Scoring configuration: the hybrid weights, the interaction-type weights and their defaults.
//!
//! The pipeline (through the Python binding) and the API (directly) both read these, so the
//! defaults and the score formula live here and nowhere else.

use serde::{Deserialize, Serialize};

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

/// Why a post was recommended: the component that contributed most to its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    SimilarUsers,
    SimilarContent,
    Fresh,
    Popular,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::SimilarUsers,
        Reason::SimilarContent,
        Reason::Fresh,
        Reason::Popular,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::SimilarUsers => "similar_users",
            Reason::SimilarContent => "similar_content",
            Reason::Fresh => "fresh",
            Reason::Popular => "popular",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

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

/// A kind of interaction a client can track. The one list of them: the API's tracking body, the
/// pipeline's snapshot, [`InteractionWeights`] and the Python lists all derive from it (and a test
/// compares it with the migration's CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InteractionType {
    View,
    Click,
    Like,
    Share,
    /// "Not interested": never a positive signal; a hidden post is never recommended again.
    Hide,
}

impl InteractionType {
    /// Every type, in the order of [`InteractionWeights::as_array`].
    pub const ALL: [InteractionType; 5] = [
        InteractionType::View,
        InteractionType::Click,
        InteractionType::Like,
        InteractionType::Share,
        InteractionType::Hide,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            InteractionType::View => "view",
            InteractionType::Click => "click",
            InteractionType::Like => "like",
            InteractionType::Share => "share",
            InteractionType::Hide => "hide",
        }
    }

    pub fn parse(s: &str) -> Option<InteractionType> {
        InteractionType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The names of [`InteractionType::ALL`], in that order.
pub const INTERACTION_TYPES: [&str; 5] = [
    InteractionType::ALL[0].as_str(),
    InteractionType::ALL[1].as_str(),
    InteractionType::ALL[2].as_str(),
    InteractionType::ALL[3].as_str(),
    InteractionType::ALL[4].as_str(),
];

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

/// The model that fills the hybrid's collaborative slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollaborativeModel {
    /// The design's user-user filter: sum over the k nearest users of similarity x their weight.
    UserUser,
    /// Item-item: sum over the user's items of their k nearest items' similarities.
    ItemItem,
    /// Neighbourhood ridge item-item (`recommenders::ridge_item_neighbors`): each item regressed
    /// on its `neighbors` strongest co-occurring items with penalty `ridge_l2`; EASE made sparse.
    Ridge,
}

/// How the users x items interaction matrix is weighted before similarities are computed
/// (as in `implicit`: plain, TF-IDF or BM25 of the interaction values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InteractionWeighting {
    None,
    Binary,
    Tfidf,
    Bm25,
}

/// Everything that shapes a run's recommendations, with the design's defaults.
/// The pipeline's run config and `feedrank tune`'s output file are this struct as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringConfig {
    pub weights: HybridWeights,
    pub interaction_weights: InteractionWeights,
    pub collaborative: CollaborativeModel,
    pub weighting: InteractionWeighting,
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

impl ScoringConfig {
    pub fn validate(&self) -> Result<()> {
        self.weights.validate()?;
        self.interaction_weights.validate()?;
        if !(self.recency_tau_days.is_finite() && self.recency_tau_days > 0.0) {
            return Err(Error::invalid(
                "recency_tau_days",
                format!("must be finite and > 0, got {}", self.recency_tau_days),
            ));
        }
        if self.neighbors == 0 {
            return Err(Error::invalid("neighbors", "must be >= 1"));
        }
        if !(self.ridge_l2.is_finite() && self.ridge_l2 > 0.0) {
            return Err(Error::invalid(
                "ridge_l2",
                format!("must be finite and > 0, got {}", self.ridge_l2),
            ));
        }
        if !(self.history_half_life.is_finite() && self.history_half_life >= 0.0) {
            return Err(Error::invalid(
                "history_half_life",
                format!("must be finite and >= 0, got {}", self.history_half_life),
            ));
        }
        if self.top_k == 0 {
            return Err(Error::invalid("top_k", "must be >= 1"));
        }
        if self.lookback_days == 0 {
            return Err(Error::invalid("lookback_days", "must be >= 1"));
        }
        if self.cache_ttl_seconds == 0 {
            return Err(Error::invalid("cache_ttl_seconds", "must be >= 1"));
        }
        if self.expires_after_hours == 0 {
            return Err(Error::invalid("expires_after_hours", "must be >= 1"));
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ScoringConfig always serializes")
    }

    /// Parses and validates; missing fields take their defaults, unknown fields are an error.
    pub fn from_json(s: &str) -> Result<Self> {
        let cfg: ScoringConfig =
            serde_json::from_str(s).map_err(|e| Error::invalid("config", e.to_string()))?;
        cfg.validate()?;
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
    fn interaction_types_parse_their_names() {
        for t in InteractionType::ALL {
            assert_eq!(InteractionType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.as_str())
            );
        }
        assert_eq!(InteractionType::parse("unlike"), None);
    }

    #[test]
    fn interaction_weights_by_name() {
        let w = InteractionWeights::default();
        assert_eq!(w.weight_of("like"), Some(4.0));
        assert_eq!(w.weight_of("nope"), None);
    }
}
