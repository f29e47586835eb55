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
pub(crate) use named_enum;

named_enum! {
    /// Why a post was recommended. The first four are the hybrid's components (in
    /// [`COMPONENTS`] order, [`Reason::strongest`]); the others belong to the request-time
    /// sources. New reasons go at the end: the four are stored in the cache and the database.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Reason {
        SimilarUsers = "similar_users",
        SimilarContent = "similar_content",
        Fresh = "fresh",
        Popular = "popular",
        /// A fresh post whose strongest part is the user's affinity to its author.
        LikedAuthor = "liked_author",
        /// A neighbour of a post the user liked or shared since their list was built.
        BecauseYouLiked = "because_you_liked",
        /// A post gaining engagement fastest in the last hours.
        Trending = "trending",
    }
}

/// The index of the component with the largest weighted contribution; ties go to the earlier
/// component. The one argmax behind every reason ([`Reason::strongest`], the fresh source's).
pub fn strongest_component(weights: [f32; 4], components: [f32; 4]) -> usize {
    let mut best = 0;
    for i in 1..4 {
        if weights[i] * components[i] > weights[best] * components[best] {
            best = i;
        }
    }
    best
}

impl Reason {
    /// The reason of each hybrid component, in [`COMPONENTS`] order.
    pub const HYBRID: [Reason; 4] = [
        Reason::SimilarUsers,
        Reason::SimilarContent,
        Reason::Fresh,
        Reason::Popular,
    ];

    /// The hybrid component with the largest weighted contribution; ties go to the earlier
    /// component.
    pub fn strongest(weights: &HybridWeights, components: [f32; 4]) -> Reason {
        Reason::HYBRID[strongest_component(weights.as_array(), components)]
    }
}

named_enum! {
    /// A candidate source of the feed: each post of a response names the one it came from.
    /// `fallback` (the seeded random feed) fills what the others leave; the rest share the
    /// slots by [`BlendShares`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Source {
        /// The pipeline's list (cache, then database).
        Personalized = "personalized",
        /// Posts created since the user's list was built, scored at request time (`fresh.rs`).
        Fresh = "fresh",
        /// Neighbours of the posts the user liked or shared since their list was built.
        BecauseYouLiked = "because_you_liked",
        /// Posts gaining engagement fastest in the last hours.
        Trending = "trending",
        /// The seeded random feed, after all of them: scrolling ends with the catalogue.
        Fallback = "fallback",
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

/// How many slots of a feed each source gets, as shares (any scale: `0.6 / 0.2 / 0.1 / 0.1` and
/// `6 / 2 / 1 / 1` deal alike; `blend::blend` deals them). A share of 0 turns a source off;
/// `fallback` has none, it takes what the others leave.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlendShares {
    pub personalized: f32,
    pub fresh: f32,
    pub because_you_liked: f32,
    pub trending: f32,
}

impl Default for BlendShares {
    fn default() -> Self {
        BlendShares {
            personalized: 0.6,
            fresh: 0.2,
            because_you_liked: 0.1,
            trending: 0.1,
        }
    }
}

impl BlendShares {
    /// The sources that share the slots, in the order of [`BlendShares::as_array`].
    pub const SOURCES: [Source; 4] = [
        Source::Personalized,
        Source::Fresh,
        Source::BecauseYouLiked,
        Source::Trending,
    ];

    pub fn as_array(&self) -> [f32; 4] {
        [
            self.personalized,
            self.fresh,
            self.because_you_liked,
            self.trending,
        ]
    }

    /// The share of `source`; `None` for `fallback`, which takes the slots after all of them.
    pub fn share(&self, source: Source) -> Option<f32> {
        Self::SOURCES
            .iter()
            .position(|&s| s == source)
            .map(|i| self.as_array()[i])
    }

    /// Finite, >= 0, not all zero; errors name `sources.blend.<source>`.
    pub fn validate(&self) -> Result<()> {
        for (source, share) in Self::SOURCES.iter().zip(self.as_array()) {
            check_non_negative(format!("sources.blend.{}", source.as_str()), share)?;
        }
        if self.as_array().iter().all(|&s| s == 0.0) {
            return Err(Error::invalid(
                "sources.blend",
                "at least one share must be > 0",
            ));
        }
        Ok(())
    }
}

/// The `fresh` source: posts created since the user's list was built, scored at request time by
/// the hybrid's content, recency and engagement weights plus `author_weight` (`fresh.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreshSettings {
    /// Posts at most this old enter the pool, hours.
    pub window_hours: u32,
    /// The pool keeps at most this many posts (the newest).
    pub pool_size: usize,
    /// Posts the source offers per request.
    pub candidates: usize,
    /// Weight of the user's affinity to the post's author (the other weights are `weights`).
    pub author_weight: f32,
    /// Recency time constant of a fresh post: recency = exp(-age / tau), hours.
    pub recency_tau_hours: f32,
}

impl Default for FreshSettings {
    fn default() -> Self {
        FreshSettings {
            window_hours: 48,
            pool_size: 20_000,
            candidates: 100,
            author_weight: 0.3,
            recency_tau_hours: 24.0,
        }
    }
}

impl FreshSettings {
    /// `window_hours` in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.window_hours as i64 * 3_600_000
    }
}

/// The `because_you_liked` source: neighbours of the posts the user liked or shared since
/// their list was built.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BecauseYouLikedSettings {
    /// The most recent likes and shares used.
    pub likes: usize,
    /// Posts offered per liked post.
    pub per_like: usize,
    /// Item-item neighbours the pipeline keeps per post.
    pub neighbors: usize,
    /// Posts the source offers per request.
    pub candidates: usize,
}

impl Default for BecauseYouLikedSettings {
    fn default() -> Self {
        BecauseYouLikedSettings {
            likes: 10,
            per_like: 5,
            neighbors: 20,
            candidates: 50,
        }
    }
}

/// The `trending` source: posts gaining engagement fastest, counted in time buckets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrendingSettings {
    /// The buckets of the last this many hours are read.
    pub window_hours: u32,
    /// A bucket's counts weigh half as much this many hours later.
    pub half_life_hours: f32,
    /// Width of a counting bucket, minutes (at most the window).
    pub bucket_minutes: u32,
    /// Posts the source offers per request.
    pub candidates: usize,
}

impl Default for TrendingSettings {
    fn default() -> Self {
        TrendingSettings {
            window_hours: 6,
            half_life_hours: 2.0,
            bucket_minutes: 10,
            candidates: 50,
        }
    }
}

/// The feed's candidate sources: how they share the slots and each request-time source's
/// settings (`personalized` is the rest of [`ScoringConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sources {
    pub blend: BlendShares,
    pub fresh: FreshSettings,
    pub because_you_liked: BecauseYouLikedSettings,
    pub trending: TrendingSettings,
}

impl Sources {
    /// Each error starts with the field's path (`sources.fresh.window_hours: ...`).
    fn validate(&self) -> Result<()> {
        self.blend.validate()?;
        let f = &self.fresh;
        check_count("sources.fresh.window_hours", f.window_hours as usize)?;
        check_count("sources.fresh.pool_size", f.pool_size)?;
        check_count("sources.fresh.candidates", f.candidates)?;
        check_non_negative("sources.fresh.author_weight", f.author_weight)?;
        check_positive("sources.fresh.recency_tau_hours", f.recency_tau_hours)?;
        let b = &self.because_you_liked;
        check_count("sources.because_you_liked.likes", b.likes)?;
        check_count("sources.because_you_liked.per_like", b.per_like)?;
        check_count("sources.because_you_liked.neighbors", b.neighbors)?;
        check_count("sources.because_you_liked.candidates", b.candidates)?;
        let t = &self.trending;
        check_count("sources.trending.window_hours", t.window_hours as usize)?;
        check_positive("sources.trending.half_life_hours", t.half_life_hours)?;
        check_count("sources.trending.bucket_minutes", t.bucket_minutes as usize)?;
        // a bucket wider than the window could not tell the window's events from older ones
        if t.bucket_minutes as u64 > t.window_hours as u64 * 60 {
            return Err(Error::invalid(
                "sources.trending.bucket_minutes",
                format!(
                    "must be at most window_hours x 60 ({}), got {}",
                    t.window_hours as u64 * 60,
                    t.bucket_minutes
                ),
            ));
        }
        check_count("sources.trending.candidates", t.candidates)?;
        Ok(())
    }
}

named_enum! {
    /// How the hybrid's content component (the cosine between the user's profile and the post)
    /// is scaled before the weights combine it with the others (`score.rs`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ContentNormalization {
        /// Min-max over the posts the user may be shown, like the other components: the user's
        /// best match scores 1. Needs every post's cosine, so a candidate index can only
        /// approximate it (`retrieval.rs`).
        MinMax = "min_max",
        /// The cosine itself, in [0, 1] (TF-IDF weights are >= 0), as the API's `fresh` source
        /// scores it: a post's content score depends on that post alone, so a candidate's
        /// score is exact whichever other posts were retrieved.
        Cosine = "cosine",
    }
}

named_enum! {
    /// How [`crate::score::HybridModel::topk`] chooses the posts it scores for a user.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RetrievalMode {
        /// Every post the user may be shown (the reference; cost ~ users x posts).
        Exhaustive = "exhaustive",
        /// A bounded union of candidates per user (`retrieval.rs`), then the exact hybrid score
        /// on the union only (cost ~ users x budget).
        Candidates = "candidates",
    }
}

/// Candidate retrieval before exact scoring (`retrieval.rs`): which posts each user's hybrid
/// score is computed for when `mode` is `candidates`. The union of three sources, each cut to
/// its strongest posts; past `budget` posts, the best by the score with content estimated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrievalSettings {
    pub mode: RetrievalMode,
    /// At most this many posts per user are scored exactly (>= `top_k` in `candidates` mode).
    /// The default mode stays `exhaustive`: on the benchmark's synthetic data, with
    /// `content_normalization = "cosine"`, the default sizes keep 99.99% of the exhaustive
    /// top-200 on average at 300,000 users x 600,000 posts (99.5% at the 1st percentile; the
    /// first 50 posts of 99.99% of users) in 0.6x its time, but take longer than the exhaustive
    /// kernel at 100,000 users and below (scripts/bench_retrieval.py; docs/scaling.md).
    pub budget: usize,
    /// The collaborative model's strongest posts kept as candidates (the posts it scores:
    /// neighbours of the history, or the neighbours' histories for `user_user`).
    pub collaborative: usize,
    /// The best content matches kept as candidates (from the inverted index).
    pub content: usize,
    /// The user's this many strongest profile terms query the index (m).
    pub content_terms: usize,
    /// Each term's postings keep its this many highest-weight posts (L). (Small: the posts that
    /// longer postings add are mostly found by the prior, whose head is the better buy.)
    pub posting_limit: usize,
    /// The best posts by the non-personal part of the score (recency and engagement by their
    /// weights, normalized over all posts): the fresh and the popular. Their exact cosines come
    /// from an index of their own; the `budget` best by content and prior join the pool.
    pub prior: usize,
}

impl Default for RetrievalSettings {
    fn default() -> Self {
        RetrievalSettings {
            mode: RetrievalMode::Exhaustive,
            budget: 2000,
            collaborative: 1000,
            content: 1000,
            content_terms: 8,
            posting_limit: 500,
            prior: 60_000,
        }
    }
}

impl RetrievalSettings {
    /// Each error starts with the field's path (`retrieval.budget: ...`).
    fn validate(&self, top_k: usize) -> Result<()> {
        check_count("retrieval.budget", self.budget)?;
        check_count("retrieval.collaborative", self.collaborative)?;
        check_count("retrieval.content", self.content)?;
        check_count("retrieval.content_terms", self.content_terms)?;
        check_count("retrieval.posting_limit", self.posting_limit)?;
        check_count("retrieval.prior", self.prior)?;
        // fewer candidates than top_k would shorten every list
        if self.mode == RetrievalMode::Candidates && self.budget < top_k {
            return Err(Error::invalid(
                "retrieval.budget",
                format!(
                    "must be >= top_k ({top_k}) in candidates mode, got {}",
                    self.budget
                ),
            ));
        }
        Ok(())
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
    /// The feed's sources and how they share a page.
    pub sources: Sources,
    /// A user's stored profile keeps its this many strongest terms (not renormalized).
    pub profile_terms: usize,
    /// and its this many strongest authors (affinity = value / the user's largest).
    pub profile_authors: usize,
    /// Which posts are scored per user: all (`exhaustive`) or retrieved candidates.
    pub retrieval: RetrievalSettings,
    /// How the content component is scaled: `min_max` per user (the default) or the `cosine`.
    pub content_normalization: ContentNormalization,
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
            sources: Sources::default(),
            profile_terms: 256,
            profile_authors: 32,
            retrieval: RetrievalSettings::default(),
            content_normalization: ContentNormalization::MinMax,
        }
    }
}

/// A `T` from any serde source; an error names the field's path (`weights.content`,
/// `arms[1].share`), or `whole` when it is about the whole value (not an object, ...).
pub(crate) fn deserialize_named<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    whole: &str,
    source: D,
) -> Result<T> {
    serde_path_to_error::deserialize(source).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { whole.to_string() } else { path };
        Error::invalid(field, e.into_inner().to_string())
    })
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
        self.sources.validate()?;
        check_count("profile_terms", self.profile_terms)?;
        check_count("profile_authors", self.profile_authors)?;
        self.retrieval.validate(self.top_k)?;
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
        let cfg: ScoringConfig = deserialize_named("config", source)?;
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
    fn the_hybrid_reasons_come_first_and_strongest_picks_only_them() {
        // the cache and the database store these four by position in COMPONENTS order
        assert_eq!(Reason::HYBRID, Reason::ALL[..4]);
        assert_eq!(
            Reason::NAMES,
            [
                "similar_users",
                "similar_content",
                "fresh",
                "popular",
                "liked_author",
                "because_you_liked",
                "trending"
            ]
        );
        let w = HybridWeights::from_array([1.0; 4]);
        for (c, &want) in Reason::HYBRID.iter().enumerate() {
            let mut components = [0.0; 4];
            components[c] = 1.0;
            assert_eq!(Reason::strongest(&w, components), want);
        }
        // all zero: the first component, never a request-time source's reason
        assert_eq!(Reason::strongest(&w, [0.0; 4]), Reason::SimilarUsers);
        // the weights count: a weaker component under a larger weight wins
        let w = HybridWeights::from_array([0.1, 0.0, 0.0, 0.9]);
        assert_eq!(Reason::strongest(&w, [1.0, 1.0, 1.0, 0.5]), Reason::Popular);
        assert_eq!(strongest_component([1.0; 4], [0.5, 0.7, 0.7, 0.1]), 1);
    }

    #[test]
    fn source_names_and_the_blend_keys_are_one_list() {
        assert_eq!(
            Source::NAMES,
            [
                "personalized",
                "fresh",
                "because_you_liked",
                "trending",
                "fallback"
            ]
        );
        assert_eq!(BlendShares::SOURCES, Source::ALL[..4]);
        let blend = serde_json::to_value(BlendShares::default()).unwrap();
        let keys: Vec<&str> = blend
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut names = BlendShares::SOURCES.map(Source::as_str).to_vec();
        names.sort_unstable(); // serde_json's map is ordered by key
        assert_eq!(keys, names);
        let shares = BlendShares::default();
        for (source, share) in BlendShares::SOURCES.iter().zip(shares.as_array()) {
            assert_eq!(shares.share(*source), Some(share));
            assert_eq!(blend[source.as_str()].as_f64().unwrap() as f32, share);
        }
        assert_eq!(shares.share(Source::Fallback), None);
        for s in Source::ALL {
            assert_eq!(Source::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn sources_and_profile_defaults_are_the_contracts() {
        let c = ScoringConfig::default();
        let json = serde_json::to_value(&c).unwrap();
        let want: serde_json::Value = serde_json::from_str(
            r#"{
                "blend": {"personalized": 0.6, "fresh": 0.2, "because_you_liked": 0.1, "trending": 0.1},
                "fresh": {"window_hours": 48, "pool_size": 20000, "candidates": 100,
                          "author_weight": 0.3, "recency_tau_hours": 24.0},
                "because_you_liked": {"likes": 10, "per_like": 5, "neighbors": 20, "candidates": 50},
                "trending": {"window_hours": 6, "half_life_hours": 2.0, "bucket_minutes": 10, "candidates": 50}
            }"#,
        )
        .unwrap();
        // f32 values widen to f64 in a serde_json::Value: compare them as f32
        let as_f32 = |v: &serde_json::Value| -> Vec<(String, String)> {
            fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
                match v {
                    serde_json::Value::Object(m) => {
                        for (k, v) in m {
                            walk(&format!("{prefix}.{k}"), v, out);
                        }
                    }
                    serde_json::Value::Number(n) if n.is_f64() => {
                        out.push((prefix.to_string(), (n.as_f64().unwrap() as f32).to_string()))
                    }
                    other => out.push((prefix.to_string(), other.to_string())),
                }
            }
            let mut out = Vec::new();
            walk("sources", v, &mut out);
            out
        };
        assert_eq!(as_f32(&json["sources"]), as_f32(&want));
        assert_eq!((c.profile_terms, c.profile_authors), (256, 32));
        assert_eq!(c.sources.fresh.window_ms(), 48 * 3_600_000);
        c.validate().unwrap();
    }

    #[test]
    fn sources_round_trip_and_partial_sections_keep_their_defaults() {
        let mut c = ScoringConfig::default();
        c.sources.blend.trending = 0.0;
        c.sources.fresh.pool_size = 7;
        c.sources.fresh.recency_tau_hours = 1.5;
        c.sources.because_you_liked.per_like = 2;
        c.sources.trending.bucket_minutes = 360;
        c.profile_terms = 3;
        c.profile_authors = 1;
        assert_eq!(ScoringConfig::from_json(&c.to_json()).unwrap(), c);
        let partial =
            ScoringConfig::from_json(r#"{"sources": {"fresh": {"pool_size": 5}}}"#).unwrap();
        let mut want = ScoringConfig::default();
        want.sources.fresh.pool_size = 5;
        assert_eq!(partial, want);
    }

    #[test]
    fn unknown_nested_fields_are_named_by_their_path() {
        let err = |json: &str| ScoringConfig::from_json(json).unwrap_err().to_string();
        for (json, path) in [
            (r#"{"sources": {"fresch": {}}}"#, "sources.fresch"),
            (
                r#"{"sources": {"fresh": {"windw_hours": 1}}}"#,
                "sources.fresh.windw_hours",
            ),
            (
                r#"{"sources": {"blend": {"fallback": 1}}}"#,
                "sources.blend.fallback",
            ),
            (
                r#"{"sources": {"because_you_liked": {"like": 1}}}"#,
                "sources.because_you_liked.like",
            ),
            (
                r#"{"sources": {"trending": {"bucket": 1}}}"#,
                "sources.trending.bucket",
            ),
        ] {
            let e = err(json);
            assert!(e.starts_with(&format!("{path}: unknown field")), "{e}");
        }
        let e = err(r#"{"sources": {"fresh": {"window_hours": -1}}}"#);
        assert!(
            e.starts_with("sources.fresh.window_hours: invalid value"),
            "{e}"
        );
    }

    #[test]
    fn each_bad_source_or_profile_value_is_named() {
        let err = |json: &str| ScoringConfig::from_json(json).unwrap_err().to_string();
        for (json, message) in [
            (
                r#"{"sources": {"blend": {"fresh": -0.5}}}"#,
                "sources.blend.fresh: must be finite and >= 0, got -0.5",
            ),
            (
                r#"{"sources": {"blend": {"personalized": 0, "fresh": 0, "because_you_liked": 0, "trending": 0}}}"#,
                "sources.blend: at least one share must be > 0",
            ),
            (
                r#"{"sources": {"fresh": {"window_hours": 0}}}"#,
                "sources.fresh.window_hours: must be >= 1, got 0",
            ),
            (
                r#"{"sources": {"fresh": {"pool_size": 0}}}"#,
                "sources.fresh.pool_size: must be >= 1, got 0",
            ),
            (
                r#"{"sources": {"fresh": {"candidates": 0}}}"#,
                "sources.fresh.candidates: must be >= 1, got 0",
            ),
            (
                r#"{"sources": {"fresh": {"author_weight": -1}}}"#,
                "sources.fresh.author_weight: must be finite and >= 0, got -1",
            ),
            (
                r#"{"sources": {"fresh": {"recency_tau_hours": 0}}}"#,
                "sources.fresh.recency_tau_hours: must be finite and > 0, got 0",
            ),
            (
                r#"{"sources": {"because_you_liked": {"likes": 0}}}"#,
                "sources.because_you_liked.likes: must be >= 1, got 0",
            ),
            (
                r#"{"sources": {"because_you_liked": {"per_like": 0}}}"#,
                "sources.because_you_liked.per_like: must be >= 1, got 0",
            ),
            (
                r#"{"sources": {"because_you_liked": {"neighbors": 0}}}"#,
                "sources.because_you_liked.neighbors: must be >= 1, got 0",
            ),
            (
                r#"{"sources": {"because_you_liked": {"candidates": 0}}}"#,
                "sources.because_you_liked.candidates: must be >= 1, got 0",
            ),
            (
                r#"{"sources": {"trending": {"window_hours": 0}}}"#,
                "sources.trending.window_hours: must be >= 1, got 0",
            ),
            (
                r#"{"sources": {"trending": {"half_life_hours": -2}}}"#,
                "sources.trending.half_life_hours: must be finite and > 0, got -2",
            ),
            (
                r#"{"sources": {"trending": {"bucket_minutes": 0}}}"#,
                "sources.trending.bucket_minutes: must be >= 1, got 0",
            ),
            (
                r#"{"sources": {"trending": {"window_hours": 1, "bucket_minutes": 61}}}"#,
                "sources.trending.bucket_minutes: must be at most window_hours x 60 (60), got 61",
            ),
            (
                r#"{"sources": {"trending": {"candidates": 0}}}"#,
                "sources.trending.candidates: must be >= 1, got 0",
            ),
            (
                r#"{"profile_terms": 0}"#,
                "profile_terms: must be >= 1, got 0",
            ),
            (
                r#"{"profile_authors": 0}"#,
                "profile_authors: must be >= 1, got 0",
            ),
        ] {
            assert_eq!(err(json), message);
        }
        // a NaN cannot come from JSON; a config built in code is checked the same way
        let mut c = ScoringConfig::default();
        c.sources.blend.trending = f32::NAN;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "sources.blend.trending: must be finite and >= 0, got NaN"
        );
    }

    #[test]
    fn content_normalization_defaults_to_min_max_and_names_a_bad_value() {
        assert_eq!(
            ScoringConfig::default().content_normalization,
            ContentNormalization::MinMax
        );
        let c = ScoringConfig::from_json(r#"{"content_normalization": "cosine"}"#).unwrap();
        assert_eq!(c.content_normalization, ContentNormalization::Cosine);
        assert_eq!(ScoringConfig::from_json(&c.to_json()).unwrap(), c);
        assert_eq!(ContentNormalization::NAMES, ["min_max", "cosine"]);
        assert!(
            ScoringConfig::from_json(r#"{"content_normalization": "max"}"#)
                .unwrap_err()
                .to_string()
                .starts_with("content_normalization: unknown variant `max`")
        );
    }

    #[test]
    fn retrieval_defaults_round_trip_and_bad_values_are_named() {
        let c = ScoringConfig::default();
        assert_eq!(c.retrieval.mode, RetrievalMode::Exhaustive);
        assert_eq!(
            (
                c.retrieval.budget,
                c.retrieval.content_terms,
                c.retrieval.posting_limit
            ),
            (2000, 8, 500)
        );
        let tuned = ScoringConfig::from_json(
            r#"{"retrieval": {"mode": "candidates", "budget": 500, "posting_limit": 50}}"#,
        )
        .unwrap();
        assert_eq!(tuned.retrieval.mode, RetrievalMode::Candidates);
        assert_eq!(
            (tuned.retrieval.budget, tuned.retrieval.posting_limit),
            (500, 50)
        );
        assert_eq!(tuned.retrieval.prior, RetrievalSettings::default().prior);
        assert_eq!(ScoringConfig::from_json(&tuned.to_json()).unwrap(), tuned);
        assert_eq!(RetrievalMode::NAMES, ["exhaustive", "candidates"]);
        let err = |json: &str| ScoringConfig::from_json(json).unwrap_err().to_string();
        for field in [
            "budget",
            "collaborative",
            "content",
            "content_terms",
            "posting_limit",
            "prior",
        ] {
            assert_eq!(
                err(&format!(r#"{{"retrieval": {{"{field}": 0}}}}"#)),
                format!("retrieval.{field}: must be >= 1, got 0")
            );
        }
        assert!(err(r#"{"retrieval": {"mode": "all"}}"#)
            .starts_with("retrieval.mode: unknown variant `all`"));
        assert!(
            err(r#"{"retrieval": {"budgit": 3}}"#).starts_with("retrieval.budgit: unknown field")
        );
        assert_eq!(
            err(r#"{"top_k": 300, "retrieval": {"mode": "candidates", "budget": 200}}"#),
            "retrieval.budget: must be >= top_k (300) in candidates mode, got 200"
        );
        // the exhaustive path reads no budget
        ScoringConfig::from_json(r#"{"top_k": 300, "retrieval": {"budget": 200}}"#).unwrap();
    }

    #[test]
    fn interaction_weights_by_name() {
        let w = InteractionWeights::default();
        assert_eq!(w.weight_of("like"), Some(4.0));
        assert_eq!(w.weight_of("nope"), None);
    }
}
