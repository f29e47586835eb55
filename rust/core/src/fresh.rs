//! Request-time scoring of posts published after a user's list was built (the feed's `fresh`
//! source), and the pool index that keeps it cheap.
//!
//! A fresh post has no interactions in the pipeline's snapshot, so the hybrid's collaborative
//! part cannot score it; the other parts can, plus the user's affinity to the post's author:
//!
//! `score = w_content · cos(profile, post) + w_recency · exp(-age / tau)
//!        + w_engagement · ln(1 + e) / ln(1 + e_max) + w_author · affinity(author)`
//!
//! Each component is on [0, 1] by construction (the posts' TF-IDF rows are unit vectors, the
//! profile is the strongest terms of one (`profile.rs`), affinities are divided by the user's
//! largest), so unlike the nightly hybrid no
//! per-user min-max is needed, and a user's score of a post does not depend on which other
//! posts happen to be in the pool. `e` is the post's live engagement (the API's trending
//! counters), `e_max` the largest in the pool.
//!
//! [`FreshPool`] is one immutable snapshot of the pool: the posts of the last
//! `sources.fresh.window_hours`, at most `sources.fresh.pool_size` of them (the newest), so a
//! flood of new posts cannot grow it; posts newest first, an inverted index
//! term -> posts and an author index, and each post's *base* (`w_recency` and `w_engagement`
//! parts, computed at the snapshot's `now`), with the posts ordered by base. The parts that
//! depend on the user (content, author) touch only the posts that share a term or an author
//! with the user, so the exact top-n is the top-n of those touched posts together with the
//! best-based untouched ones: [`FreshPool::topk`] costs the profile's posting lists plus n, not
//! the pool size.
//!
//! The API runs [`FreshPool::topk`] per request; the offline replay runs the same through
//! [`batch_topk`], one pool for many users.

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::cancel::Cancel;
use crate::config::{strongest_component, Reason, ScoringConfig};
use crate::error::{check_all_non_negative, check_count, check_index_or_none, check_len};
use crate::sparse::CsrRef;
use crate::topk::{Scored, TopK};
use crate::{Error, Result};

/// A sparse vector, terms ascending: a post's TF-IDF row (unit length) or a user's stored
/// profile (`profile.rs`: a unit vector's strongest terms, so of length <= 1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseVec {
    pub terms: Vec<u32>,
    pub weights: Vec<f32>,
}

impl SparseVec {
    /// Sorts by term (duplicates summed), drops zeros and scales to unit length.
    pub fn normalized(mut pairs: Vec<(u32, f32)>) -> Result<SparseVec> {
        if let Some((t, w)) = pairs.iter().find(|(_, w)| !w.is_finite()) {
            return Err(Error::invalid(
                "weights",
                format!("term {t} has weight {w}"),
            ));
        }
        pairs.sort_unstable_by_key(|p| p.0);
        let mut summed: Vec<(u32, f32)> = Vec::with_capacity(pairs.len());
        for (t, w) in pairs {
            match summed.last_mut() {
                Some(last) if last.0 == t => last.1 += w,
                _ => summed.push((t, w)),
            }
        }
        summed.retain(|p| p.1 != 0.0);
        let norm = summed
            .iter()
            .map(|p| (p.1 as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        Ok(SparseVec {
            terms: summed.iter().map(|p| p.0).collect(),
            weights: summed.iter().map(|p| (p.1 as f64 / norm) as f32).collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// One post of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPost {
    pub id: u128,
    /// None: an author no affinity can name (the binding's -1).
    pub author: Option<u128>,
    pub created_ms: i64,
    /// The post's TF-IDF row in the model's vocabulary (unit length; empty: no known term).
    pub tfidf: SparseVec,
}

/// The weights of the fresh score, read from a [`ScoringConfig`] (which validates them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreshWeights {
    pub content: f32,
    pub recency: f32,
    pub engagement: f32,
    pub author: f32,
    /// Recency time constant, hours.
    pub recency_tau_hours: f32,
}

impl FreshWeights {
    /// Content, recency and engagement weigh as in the hybrid (`weights`); the author part and
    /// the time constant are the fresh source's own (`sources.fresh`).
    pub fn from_config(config: &ScoringConfig) -> FreshWeights {
        FreshWeights {
            content: config.weights.content,
            recency: config.weights.recency,
            engagement: config.weights.engagement,
            author: config.sources.fresh.author_weight,
            recency_tau_hours: config.sources.fresh.recency_tau_hours,
        }
    }

    /// The weights in [`FRESH_COMPONENTS`] order.
    pub fn as_array(&self) -> [f32; 4] {
        [self.content, self.recency, self.engagement, self.author]
    }
}

/// The components of a fresh score, in this order.
pub const FRESH_COMPONENTS: [&str; 4] = ["content", "recency", "engagement", "author"];

/// The reason a fresh post gives for each component, in [`FRESH_COMPONENTS`] order.
pub const FRESH_REASONS: [Reason; 4] = [
    Reason::SimilarContent,
    Reason::Fresh,
    Reason::Popular,
    Reason::LikedAuthor,
];

/// A scored fresh post: its position in the pool, the score and the four components.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreshScored {
    pub post: u32,
    pub score: f32,
    pub components: [f32; 4],
}

impl FreshScored {
    /// The reason of the component with the largest weighted contribution (ties: the earlier).
    pub fn reason(&self, w: &FreshWeights) -> Reason {
        FRESH_REASONS[strongest_component(w.as_array(), self.components)]
    }
}

/// What one user brings to [`FreshPool::topk`].
pub struct FreshQuery<'a> {
    /// The user's content profile in the pool's vocabulary (length <= 1; empty: no content part).
    pub profile: &'a SparseVec,
    /// `(author, affinity in [0, 1])`, any order (larger values count as 1).
    pub authors: &'a [(u128, f32)],
    /// Only posts created in `(after_ms, before_ms]`.
    pub after_ms: i64,
    pub before_ms: i64,
    /// Posts never to return (seen, hidden, the user's own, already in the feed).
    pub exclude: &'a dyn Fn(&PoolPost) -> bool,
    pub n: usize,
}

/// One snapshot of the fresh pool. See the module documentation.
pub struct FreshPool {
    posts: Vec<PoolPost>,
    postings: FxHashMap<u32, Vec<(u32, f32)>>,
    by_author: FxHashMap<u128, Vec<u32>>,
    /// Each post's recency and engagement parts, weighted, at `now_ms`.
    base: Vec<f32>,
    /// Each post's recency and engagement components, unweighted.
    parts: Vec<[f32; 2]>,
    /// Posts by descending base (ties: newer first, then lower position).
    by_base: Vec<u32>,
    weights: FreshWeights,
}

impl FreshPool {
    /// A snapshot of `posts` scored at `now_ms` under `config` (validated here): of `posts`,
    /// those created after `now_ms - sources.fresh.window_hours`, at most
    /// `sources.fresh.pool_size` of them, the newest. `engagement` gives each post's live
    /// engagement (>= 0; anything else counts as 0). Positions in the pool follow the kept posts
    /// sorted newest first (ties: lower id).
    pub fn new(
        mut posts: Vec<PoolPost>,
        now_ms: i64,
        engagement: impl Fn(u128) -> f32,
        config: &ScoringConfig,
    ) -> Result<FreshPool> {
        config.validate()?;
        let weights = FreshWeights::from_config(config);
        let oldest = now_ms.saturating_sub(config.sources.fresh.window_ms());
        posts.retain(|p| p.created_ms > oldest);
        posts.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        posts.truncate(config.sources.fresh.pool_size);
        let mut postings: FxHashMap<u32, Vec<(u32, f32)>> = FxHashMap::default();
        let mut by_author: FxHashMap<u128, Vec<u32>> = FxHashMap::default();
        let eng: Vec<f32> = posts
            .iter()
            .map(|p| {
                let e = engagement(p.id);
                if e.is_finite() && e > 0.0 {
                    e
                } else {
                    0.0
                }
            })
            .collect();
        let e_max = eng.iter().cloned().fold(0f32, f32::max);
        let denom = (e_max as f64).ln_1p();
        let tau_ms = weights.recency_tau_hours as f64 * 3_600_000.0;
        let mut parts = Vec::with_capacity(posts.len());
        let mut base = Vec::with_capacity(posts.len());
        for (i, p) in posts.iter().enumerate() {
            for (&t, &w) in p.tfidf.terms.iter().zip(&p.tfidf.weights) {
                postings.entry(t).or_default().push((i as u32, w));
            }
            if let Some(a) = p.author {
                by_author.entry(a).or_default().push(i as u32);
            }
            let age = now_ms.saturating_sub(p.created_ms).max(0) as f64;
            let recency = (-age / tau_ms).exp() as f32;
            let engagement = if denom > 0.0 {
                ((eng[i] as f64).ln_1p() / denom) as f32
            } else {
                0.0
            };
            parts.push([recency, engagement]);
            base.push(weights.recency * recency + weights.engagement * engagement);
        }
        let mut by_base: Vec<u32> = (0..posts.len() as u32).collect();
        by_base.sort_by(|&a, &b| {
            base[b as usize]
                .total_cmp(&base[a as usize])
                .then(a.cmp(&b))
        });
        Ok(FreshPool {
            posts,
            postings,
            by_author,
            base,
            parts,
            by_base,
            weights,
        })
    }

    pub fn len(&self) -> usize {
        self.posts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.posts.is_empty()
    }

    pub fn post(&self, i: u32) -> &PoolPost {
        &self.posts[i as usize]
    }

    pub fn weights(&self) -> &FreshWeights {
        &self.weights
    }

    /// The best `q.n` posts for one user, best first (ties: lower position, i.e. newer).
    pub fn topk(&self, q: &FreshQuery) -> Vec<FreshScored> {
        if q.n == 0 {
            return Vec::new();
        }
        let eligible = |i: u32| {
            let p = &self.posts[i as usize];
            p.created_ms > q.after_ms && p.created_ms <= q.before_ms && !(q.exclude)(p)
        };
        // Positions are newest first and postings ascend by position: only the first `newer`
        // positions are created after `after_ms`, so a list is read only that far (a query for
        // the posts that came since a memoized ranking reads a few entries per term).
        let newer = self.posts.partition_point(|p| p.created_ms > q.after_ms) as u32;
        // The user-dependent parts of every post that shares a term or an author with the user,
        // by position (dense: a query reads only the first `newer` positions, and a full ranking
        // touches a good share of them, where a hash map spent most of the query's time).
        let mut user_parts: Vec<[f32; 2]> = vec![[0.0; 2]; newer as usize];
        let mut is_touched: Vec<bool> = vec![false; newer as usize];
        let mut touched: Vec<u32> = Vec::new();
        let mut touch = |i: u32, touched: &mut Vec<u32>| {
            if !is_touched[i as usize] {
                is_touched[i as usize] = true;
                touched.push(i);
            }
        };
        for (&t, &w) in q.profile.terms.iter().zip(&q.profile.weights) {
            if let Some(list) = self.postings.get(&t) {
                for &(i, x) in list.iter().take_while(|e| e.0 < newer) {
                    touch(i, &mut touched);
                    user_parts[i as usize][0] += w * x;
                }
            }
        }
        for &(a, affinity) in q.authors {
            if !(affinity.is_finite() && affinity > 0.0) {
                continue;
            }
            if let Some(list) = self.by_author.get(&a) {
                for &i in list.iter().take_while(|&&i| i < newer) {
                    touch(i, &mut touched);
                    let e = &mut user_parts[i as usize];
                    e[1] = e[1].max(affinity.min(1.0));
                }
            }
        }
        let was_touched = |i: u32| (i as usize) < is_touched.len() && is_touched[i as usize];
        let w = &self.weights;
        let score_of = |i: u32| {
            let user = user_parts.get(i as usize).copied().unwrap_or([0.0; 2]);
            let content = user[0].clamp(0.0, 1.0);
            let [recency, engagement] = self.parts[i as usize];
            FreshScored {
                post: i,
                score: self.base[i as usize] + w.content * content + w.author * user[1],
                components: [content, recency, engagement, user[1]],
            }
        };
        let mut top = TopK::new(q.n);
        for &i in &touched {
            if eligible(i) {
                top.push(i, score_of(i).score);
            }
        }
        // Untouched posts score their base: the best n of them are the only ones that can enter.
        // When few posts are new enough (a memoized ranking brought up to date), they are read
        // directly: `by_base` would be read through to its end for want of n eligible posts. The
        // same result either way: `TopK` orders by (score, position), whatever the push order.
        if (newer as usize) < self.by_base.len() / 4 {
            for i in 0..newer {
                if !was_touched(i) && eligible(i) {
                    top.push(i, self.base[i as usize]);
                }
            }
        } else {
            let mut taken = 0;
            for &i in &self.by_base {
                if taken == q.n {
                    break;
                }
                if was_touched(i) || !eligible(i) {
                    continue;
                }
                top.push(i, self.base[i as usize]);
                taken += 1;
            }
        }
        let mut order: Vec<Scored> = Vec::new();
        top.drain_sorted(&mut order);
        order.iter().map(|e| score_of(e.index)).collect()
    }
}

/// The posts of [`batch_topk`], as arrays: a post's id is its position.
pub struct PostArrays<'a> {
    /// posts x terms, TF-IDF rows (each scaled to unit length here).
    pub tfidf: CsrRef<'a, f32>,
    pub created_ms: &'a [i64],
    /// The author's column in [`UserRows::author_affinity`], or -1.
    pub author: &'a [i64],
    /// Live engagement, >= 0.
    pub engagement: &'a [f32],
}

/// The users of [`batch_topk`], one row each (the matrices `profile::user_profiles` gives).
pub struct UserRows<'a> {
    /// users x terms: each user's stored profile.
    pub profiles: CsrRef<'a, f32>,
    /// users x authors: each user's author affinity.
    pub author_affinity: CsrRef<'a, f32>,
    /// Each user's posts must be created after this (their list's build time).
    pub after_ms: &'a [i64],
    /// users x posts: posts never to return (seen, hidden, the user's own).
    pub exclude: Option<CsrRef<'a, f32>>,
}

/// [`batch_topk`]'s answer: per user `n` posts (`-1` padded), scores, components (`users x n x
/// 4`, [`FRESH_COMPONENTS`] order) and the reasons of the posts found.
#[derive(Debug, Clone, PartialEq)]
pub struct FreshRows {
    pub n: usize,
    pub indices: Vec<i64>,
    pub scores: Vec<f32>,
    pub components: Vec<f32>,
    pub reasons: Vec<Vec<Reason>>,
}

/// The fresh top-`n` of many users over one pool: the pool of `posts` at `now_ms` (as
/// [`FreshPool::new`]) and, per user, [`FreshPool::topk`] over the posts created in
/// `(after_ms[u], before_ms]`. What the API serves one request at a time, for the offline
/// replay. Users in parallel; `cancel` is checked between users.
pub fn batch_topk(
    posts: &PostArrays,
    users: &UserRows,
    now_ms: i64,
    before_ms: i64,
    n: usize,
    config: &ScoringConfig,
    cancel: &Cancel,
) -> Result<FreshRows> {
    let n_posts = posts.tfidf.nrows;
    posts.tfidf.check_finite("post_tfidf")?;
    check_len("post_created_ms", posts.created_ms.len(), n_posts, "post")?;
    check_len("post_author", posts.author.len(), n_posts, "post")?;
    check_len("post_engagement", posts.engagement.len(), n_posts, "post")?;
    check_all_non_negative("post_engagement", posts.engagement)?;
    let m = users.profiles.nrows;
    users.profiles.check_finite("profiles")?;
    if users.profiles.ncols != posts.tfidf.ncols {
        return Err(Error::invalid(
            "profiles",
            format!(
                "has {} columns, expected one per term of post_tfidf ({})",
                users.profiles.ncols, posts.tfidf.ncols
            ),
        ));
    }
    users.author_affinity.check_finite("author_affinity")?;
    if users.author_affinity.nrows != m {
        return Err(Error::invalid(
            "author_affinity",
            format!(
                "has {} rows, expected one per row of profiles ({m})",
                users.author_affinity.nrows
            ),
        ));
    }
    check_len("after_ms", users.after_ms.len(), m, "row of profiles")?;
    check_index_or_none(
        "post_author",
        posts.author,
        users.author_affinity.ncols,
        "a column of author_affinity",
    )?;
    if let Some(e) = users.exclude {
        if e.nrows != m || e.ncols != n_posts {
            return Err(Error::invalid(
                "exclude",
                format!(
                    "must be users x posts ({m} x {n_posts}), got {} x {}",
                    e.nrows, e.ncols
                ),
            ));
        }
    }
    check_count("n", n)?;
    let pool_posts = (0..n_posts)
        .map(|p| {
            let (terms, weights) = posts.tfidf.row(p);
            Ok(PoolPost {
                id: p as u128,
                author: u128::try_from(posts.author[p]).ok(),
                created_ms: posts.created_ms[p],
                tfidf: SparseVec::normalized(
                    terms.iter().copied().zip(weights.iter().copied()).collect(),
                )?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let pool = FreshPool::new(
        pool_posts,
        now_ms,
        |id| posts.engagement[id as usize],
        config,
    )?;
    let per_user: Vec<Vec<FreshScored>> = (0..m)
        .into_par_iter()
        .map(|u| {
            if cancel.is_cancelled() {
                return Vec::new(); // the users still to come are skipped
            }
            let (terms, weights) = users.profiles.row(u);
            let profile = SparseVec {
                terms: terms.to_vec(),
                weights: weights.to_vec(),
            };
            let (cols, affinity) = users.author_affinity.row(u);
            let authors: Vec<(u128, f32)> = cols
                .iter()
                .zip(affinity)
                .map(|(&a, &v)| (a as u128, v))
                .collect();
            let excluded: &[u32] = users.exclude.map_or(&[], |e| e.row(u).0);
            let exclude = |p: &PoolPost| excluded.binary_search(&(p.id as u32)).is_ok();
            pool.topk(&FreshQuery {
                profile: &profile,
                authors: &authors,
                after_ms: users.after_ms[u],
                before_ms,
                exclude: &exclude,
                n,
            })
        })
        .collect();
    cancel.check()?;
    let mut out = FreshRows {
        n,
        indices: vec![-1; m * n],
        scores: vec![0.0; m * n],
        components: vec![0.0; m * n * 4],
        reasons: Vec::with_capacity(m),
    };
    for (u, found) in per_user.iter().enumerate() {
        for (slot, s) in found.iter().enumerate() {
            let at = u * n + slot;
            out.indices[at] = pool.post(s.post).id as i64;
            out.scores[at] = s.score;
            out.components[at * 4..at * 4 + 4].copy_from_slice(&s.components);
        }
        out.reasons
            .push(found.iter().map(|s| s.reason(pool.weights())).collect());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HybridWeights;
    use crate::sparse::Csr;
    use proptest::prelude::*;

    /// Weights where every part can win: content 0.5, recency 0.3, engagement 0.1, author 0.2.
    fn config() -> ScoringConfig {
        let mut c = ScoringConfig {
            weights: HybridWeights::from_array([0.4, 0.5, 0.3, 0.1]),
            ..ScoringConfig::default()
        };
        c.sources.fresh.author_weight = 0.2;
        c.sources.fresh.recency_tau_hours = 24.0;
        c
    }

    fn post(id: u128, author: u128, created_ms: i64, terms: &[(u32, f32)]) -> PoolPost {
        PoolPost {
            id,
            author: Some(author),
            created_ms,
            tfidf: SparseVec::normalized(terms.to_vec()).unwrap(),
        }
    }

    fn no_exclusion(_: &PoolPost) -> bool {
        false
    }

    fn ids(pool: &FreshPool, found: &[FreshScored]) -> Vec<u128> {
        found.iter().map(|s| pool.post(s.post).id).collect()
    }

    /// Every eligible post of the pool scored by the formula, sorted: what `topk` must equal.
    fn brute_force(
        pool: &FreshPool,
        q: &FreshQuery,
        engagement: &dyn Fn(u128) -> f32,
        now: i64,
    ) -> Vec<(u128, f32)> {
        let w = FreshWeights::from_config(&config());
        let e_max = (0..pool.len() as u32)
            .map(|i| engagement(pool.post(i).id))
            .fold(0f32, f32::max);
        let mut all: Vec<(u32, f32)> = (0..pool.len() as u32)
            .filter(|&i| {
                let p = pool.post(i);
                p.created_ms > q.after_ms && p.created_ms <= q.before_ms && !(q.exclude)(p)
            })
            .map(|i| {
                let p = pool.post(i);
                let mut content = 0f32;
                for (t, x) in p.tfidf.terms.iter().zip(&p.tfidf.weights) {
                    if let Ok(k) = q.profile.terms.binary_search(t) {
                        content += x * q.profile.weights[k];
                    }
                }
                let affinity = q
                    .authors
                    .iter()
                    .filter(|a| Some(a.0) == p.author)
                    .map(|a| a.1.min(1.0))
                    .fold(0f32, f32::max);
                let recency = (-((now - p.created_ms).max(0) as f64)
                    / (w.recency_tau_hours as f64 * 3.6e6))
                    .exp() as f32;
                let e = if e_max > 0.0 {
                    ((engagement(p.id) as f64).ln_1p() / (e_max as f64).ln_1p()) as f32
                } else {
                    0.0
                };
                (
                    i,
                    w.recency * recency
                        + w.engagement * e
                        + w.content * content.clamp(0.0, 1.0)
                        + w.author * affinity,
                )
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(q.n);
        all.into_iter().map(|(i, s)| (pool.post(i).id, s)).collect()
    }

    #[test]
    fn weights_are_the_hybrids_plus_the_fresh_sources_own() {
        let mut c = ScoringConfig::default();
        c.sources.fresh.author_weight = 0.7;
        c.sources.fresh.recency_tau_hours = 3.0;
        let w = FreshWeights::from_config(&c);
        assert_eq!(
            (w.content, w.recency, w.engagement),
            (c.weights.content, c.weights.recency, c.weights.engagement)
        );
        assert_eq!((w.author, w.recency_tau_hours), (0.7, 3.0));
        assert_eq!(w.as_array(), [0.3, 0.2, 0.1, 0.7]);
    }

    #[test]
    fn content_and_author_lift_a_post_above_newer_ones() {
        let now = 1_000_000_000;
        let posts = vec![
            post(1, 10, now - 1000, &[(1, 1.0)]), // newest, other topic
            post(2, 11, now - 2000, &[(2, 1.0), (3, 0.2)]), // the user's topic
            post(3, 12, now - 3000, &[(4, 1.0)]), // by an author the user likes
        ];
        let pool = FreshPool::new(posts, now, |_| 0.0, &config()).unwrap();
        let profile = SparseVec::normalized(vec![(2, 1.0)]).unwrap();
        let authors = [(12u128, 1.0f32)];
        let q = FreshQuery {
            profile: &profile,
            authors: &authors,
            after_ms: 0,
            before_ms: now,
            exclude: &no_exclusion,
            n: 3,
        };
        let found = pool.topk(&q);
        assert_eq!(ids(&pool, &found), [2, 3, 1]);
        assert_eq!(found[0].reason(pool.weights()), Reason::SimilarContent);
    }

    #[test]
    fn each_component_gives_its_reason() {
        let w = FreshWeights::from_config(&config());
        for (c, want) in FRESH_REASONS.iter().enumerate() {
            let mut components = [0.0; 4];
            components[c] = 1.0;
            let s = FreshScored {
                post: 0,
                score: 0.0,
                components,
            };
            assert_eq!(s.reason(&w), *want);
        }
        assert_eq!(
            FRESH_REASONS.map(Reason::as_str),
            ["similar_content", "fresh", "popular", "liked_author"]
        );
        // a 40-hour-old post: live engagement alone is popular, a liked author liked_author
        let now = 1_000_000_000;
        let posts = vec![post(1, 1, now - 40 * 3_600_000, &[(1, 1.0)])];
        let pool = FreshPool::new(posts, now, |_| 50.0, &config()).unwrap();
        let q = FreshQuery {
            profile: &SparseVec::default(),
            authors: &[],
            after_ms: 0,
            before_ms: now,
            exclude: &no_exclusion,
            n: 1,
        };
        assert_eq!(pool.topk(&q)[0].reason(pool.weights()), Reason::Popular);
        let liked = [(1u128, 1.0f32)];
        let q = FreshQuery {
            authors: &liked,
            ..q
        };
        assert_eq!(pool.topk(&q)[0].reason(pool.weights()), Reason::LikedAuthor);
    }

    #[test]
    fn window_and_exclusions_are_respected() {
        let now = 10_000;
        let posts = (0..10)
            .map(|i| post(i, 0, i as i64 * 1000, &[(1, 1.0)]))
            .collect();
        let pool = FreshPool::new(posts, now, |_| 0.0, &config()).unwrap();
        let profile = SparseVec::default();
        let ex = |p: &PoolPost| p.id == 7;
        let q = FreshQuery {
            profile: &profile,
            authors: &[],
            after_ms: 3000,
            before_ms: 8000,
            exclude: &ex,
            n: 10,
        };
        assert_eq!(ids(&pool, &pool.topk(&q)), [8, 6, 5, 4]);
    }

    #[test]
    fn the_pool_keeps_the_newest_posts_of_the_window_only() {
        let hour = 3_600_000;
        let now = 100 * hour;
        let mut c = config();
        c.sources.fresh.window_hours = 10;
        c.sources.fresh.pool_size = 3;
        // ages 0, 2, ..., 18 hours; the window holds ages < 10 hours (5 posts), the pool 3
        let posts = (0..10)
            .map(|i| post(i, 0, now - 2 * i as i64 * hour, &[(1, 1.0)]))
            .collect();
        let pool = FreshPool::new(posts, now, |_| 0.0, &c).unwrap();
        let kept: Vec<u128> = (0..pool.len() as u32).map(|i| pool.post(i).id).collect();
        assert_eq!(kept, [0, 1, 2]);
        // exactly window_hours old is out
        c.sources.fresh.pool_size = 100;
        let edge = vec![
            post(1, 0, now - 10 * hour, &[]),
            post(2, 0, now - 10 * hour + 1, &[]),
        ];
        let pool = FreshPool::new(edge, now, |_| 0.0, &c).unwrap();
        assert_eq!((pool.len(), pool.post(0).id), (1, 2));
    }

    #[test]
    fn posts_without_an_author_never_get_an_affinity() {
        let now = 1_000_000;
        let mut anonymous = post(1, 0, now - 10, &[(1, 1.0)]);
        anonymous.author = None;
        let pool = FreshPool::new(vec![anonymous], now, |_| 0.0, &config()).unwrap();
        let q = FreshQuery {
            profile: &SparseVec::default(),
            authors: &[(0, 1.0), (u128::MAX, 1.0)],
            after_ms: 0,
            before_ms: now,
            exclude: &no_exclusion,
            n: 1,
        };
        assert_eq!(pool.topk(&q)[0].components[3], 0.0);
    }

    #[test]
    fn empty_pool_n_zero_and_a_bad_config() {
        let pool = FreshPool::new(Vec::new(), 0, |_| 0.0, &config()).unwrap();
        let profile = SparseVec::default();
        let q = FreshQuery {
            profile: &profile,
            authors: &[],
            after_ms: i64::MIN,
            before_ms: i64::MAX,
            exclude: &no_exclusion,
            n: 5,
        };
        assert!(pool.topk(&q).is_empty());
        let pool = FreshPool::new(vec![post(1, 0, 0, &[(1, 1.0)])], 0, |_| 0.0, &config()).unwrap();
        assert!(pool.topk(&FreshQuery { n: 0, ..q }).is_empty());
        let mut bad = config();
        bad.sources.fresh.author_weight = f32::NAN;
        assert!(FreshPool::new(Vec::new(), 0, |_| 0.0, &bad)
            .err()
            .expect("a NaN weight is refused")
            .to_string()
            .starts_with("sources.fresh.author_weight: must be finite"));
    }

    /// A CSR matrix of the rows (duplicate columns summed, as `SparseVec::normalized` does).
    fn csr_rows(ncols: usize, rows: &[Vec<(u32, f32)>]) -> Csr<f32> {
        let mut indptr = vec![0];
        for r in rows {
            indptr.push(indptr.last().unwrap() + r.len());
        }
        let (indices, data) = rows.iter().flatten().copied().unzip();
        Csr::from_parts("rows", rows.len(), ncols, indptr, indices, data).unwrap()
    }

    #[test]
    fn batch_arguments_are_checked_by_name() {
        let tfidf = csr_rows(3, &[vec![(0, 1.0)], vec![(1, 1.0)]]);
        let profiles = csr_rows(3, &[vec![(0, 1.0)]]);
        let affinity = csr_rows(2, &[vec![(1, 1.0)]]);
        let good = PostArrays {
            tfidf: tfidf.view(),
            created_ms: &[1, 2],
            author: &[0, -1],
            engagement: &[0.0, 3.0],
        };
        let users = UserRows {
            profiles: profiles.view(),
            author_affinity: affinity.view(),
            after_ms: &[0],
            exclude: None,
        };
        let run = |p: &PostArrays, u: &UserRows, n: usize| {
            batch_topk(p, u, 10, 10, n, &config(), &Cancel::new()).map_err(|e| e.to_string())
        };
        // post 0 has the user's term; post 1 (newer, engaged with) comes second
        assert_eq!(run(&good, &users, 2).unwrap().indices, [0, 1]);
        let err = |p: &PostArrays, u: &UserRows, n: usize| run(p, u, n).unwrap_err();
        assert!(err(
            &PostArrays {
                created_ms: &[1],
                ..good
            },
            &users,
            2
        )
        .starts_with("post_created_ms: has length 1, expected one value per post (2)"));
        assert!(err(
            &PostArrays {
                author: &[0, 2],
                ..good
            },
            &users,
            2
        )
        .starts_with("post_author: must be -1 or a column of author_affinity in 0..2"));
        assert!(err(
            &PostArrays {
                engagement: &[0.0, -1.0],
                ..good
            },
            &users,
            2
        )
        .starts_with("post_engagement: must be finite and >= 0"));
        assert!(err(
            &good,
            &UserRows {
                after_ms: &[],
                ..users
            },
            2
        )
        .starts_with("after_ms:"));
        let wide = csr_rows(4, &[vec![(0, 1.0)]]);
        assert!(err(
            &good,
            &UserRows {
                profiles: wide.view(),
                ..users
            },
            2
        )
        .starts_with("profiles: has 4 columns"));
        let two = csr_rows(2, &[vec![], vec![]]);
        assert!(err(
            &good,
            &UserRows {
                author_affinity: two.view(),
                ..users
            },
            2
        )
        .starts_with("author_affinity: has 2 rows"));
        assert!(err(
            &good,
            &UserRows {
                exclude: Some(two.view()),
                ..users
            },
            2
        )
        .starts_with("exclude: must be users x posts (1 x 2)"));
        assert!(err(&good, &users, 0).starts_with("n: must be >= 1"));
    }

    proptest! {
        #[test]
        fn topk_equals_the_brute_force(
            raw in proptest::collection::vec((0u128..6, 0i64..100_000, proptest::collection::vec((0u32..12, 0.01f32..1.0), 0..5), 0u32..20), 0..60),
            profile_terms in proptest::collection::vec((0u32..12, 0.01f32..1.0), 0..6),
            authors in proptest::collection::vec((0u128..6, 0.0f32..1.5), 0..4),
            after in 0i64..100_000, // up to 100,000: queries reaching only the newest posts too
            n in 0usize..15,
        ) {
            let now = 100_000;
            let eng: Vec<f32> = raw.iter().map(|r| r.3 as f32).collect();
            let posts: Vec<PoolPost> = raw.iter().enumerate()
                .map(|(i, (a, t, terms, _))| post(i as u128, *a, *t, terms)).collect();
            let engagement = |id: u128| eng[id as usize];
            let pool = FreshPool::new(posts, now, engagement, &config()).unwrap();
            let profile = SparseVec::normalized(profile_terms).unwrap();
            let ex = |p: &PoolPost| p.id % 7 == 3;
            let q = FreshQuery { profile: &profile, authors: &authors, after_ms: after, before_ms: now, exclude: &ex, n };
            let got: Vec<(u128, f32)> = pool.topk(&q).iter().map(|s| (pool.post(s.post).id, s.score)).collect();
            let want = brute_force(&pool, &q, &engagement, now);
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert!((g.1 - w.1).abs() < 1e-5, "{:?} vs {:?}", got, want);
            }
        }

        #[test]
        fn the_pool_is_the_newest_pool_size_posts_of_the_window(
            created in proptest::collection::vec(0i64..40, 0..40),
            window_hours in 1u32..40,
            pool_size in 1usize..40,
        ) {
            let hour = 3_600_000;
            let now = 40 * hour;
            let mut c = config();
            c.sources.fresh.window_hours = window_hours;
            c.sources.fresh.pool_size = pool_size;
            let posts = created.iter().enumerate()
                .map(|(i, &h)| post(i as u128, 0, h * hour, &[])).collect();
            let pool = FreshPool::new(posts, now, |_| 0.0, &c).unwrap();
            let mut want: Vec<(i64, u128)> = created.iter().enumerate()
                .filter(|(_, &h)| h * hour > now - window_hours as i64 * hour)
                .map(|(i, &h)| (-h, i as u128)).collect();
            want.sort_unstable();
            want.truncate(pool_size);
            let kept: Vec<u128> = (0..pool.len() as u32).map(|i| pool.post(i).id).collect();
            prop_assert_eq!(kept, want.iter().map(|w| w.1).collect::<Vec<_>>());
        }

        #[test]
        fn batch_rows_are_each_users_own_topk(
            raw in proptest::collection::vec((-1i64..4, 0i64..100_000, proptest::collection::vec((0u32..8, 0.01f32..1.0), 0..4), 0u32..20), 1..30),
            user_terms in proptest::collection::vec(proptest::collection::vec((0u32..8, 0.01f32..1.0), 0..4), 1..6),
            user_authors in proptest::collection::vec(proptest::collection::vec((0u32..4, 0.1f32..1.0), 0..3), 6),
            after in proptest::collection::vec(0i64..60_000, 6),
            excluded in proptest::collection::vec(proptest::collection::vec(0u32..30, 0..5), 6),
            n in 1usize..12,
        ) {
            let now = 100_000;
            let m = user_terms.len();
            let n_posts = raw.len();
            let tfidf = csr_rows(8, &raw.iter().map(|r| r.2.clone()).collect::<Vec<_>>());
            let created: Vec<i64> = raw.iter().map(|r| r.1).collect();
            let author: Vec<i64> = raw.iter().map(|r| r.0).collect();
            let eng: Vec<f32> = raw.iter().map(|r| r.3 as f32).collect();
            let profiles = csr_rows(8, &user_terms);
            let affinity = csr_rows(4, &user_authors[..m]);
            let exclude = csr_rows(n_posts, &excluded[..m].iter()
                .map(|r| r.iter().filter(|&&p| (p as usize) < n_posts).map(|&p| (p, 1.0)).collect())
                .collect::<Vec<_>>());
            let posts = PostArrays { tfidf: tfidf.view(), created_ms: &created, author: &author, engagement: &eng };
            let users = UserRows { profiles: profiles.view(), author_affinity: affinity.view(), after_ms: &after[..m], exclude: Some(exclude.view()) };
            let rows = batch_topk(&posts, &users, now, now, n, &config(), &Cancel::new()).unwrap();
            // the pool the API would build from the same posts, queried once per user
            let pool_posts = (0..n_posts).map(|p| PoolPost {
                id: p as u128,
                author: (author[p] >= 0).then_some(author[p] as u128),
                created_ms: created[p],
                tfidf: SparseVec::normalized(raw[p].2.clone()).unwrap(),
            }).collect();
            let pool = FreshPool::new(pool_posts, now, |id| eng[id as usize], &config()).unwrap();
            for (u, &after_u) in after[..m].iter().enumerate() {
                let (terms, weights) = profiles.view().row(u);
                let profile = SparseVec { terms: terms.to_vec(), weights: weights.to_vec() };
                let (cols, vals) = affinity.view().row(u);
                let authors: Vec<(u128, f32)> = cols.iter().zip(vals).map(|(&a, &v)| (a as u128, v)).collect();
                let ex_row = exclude.view().row(u).0;
                let ex = |p: &PoolPost| ex_row.contains(&(p.id as u32));
                let q = FreshQuery { profile: &profile, authors: &authors, after_ms: after_u, before_ms: now, exclude: &ex, n };
                let want = pool.topk(&q);
                let brute = brute_force(&pool, &q, &|id| eng[id as usize], now);
                let row = &rows.indices[u * n..(u + 1) * n];
                prop_assert_eq!(&row[..want.len()], &ids(&pool, &want).iter().map(|&i| i as i64).collect::<Vec<_>>()[..]);
                prop_assert!(row[want.len()..].iter().all(|&i| i == -1));
                prop_assert_eq!(want.len(), brute.len());
                for (slot, s) in want.iter().enumerate() {
                    prop_assert!(!ex_row.contains(&(row[slot] as u32)));
                    prop_assert!(created[row[slot] as usize] > after_u);
                    prop_assert_eq!(rows.scores[u * n + slot], s.score);
                    prop_assert_eq!(&rows.components[(u * n + slot) * 4..(u * n + slot + 1) * 4], &s.components[..]);
                    prop_assert_eq!(rows.reasons[u][slot], s.reason(pool.weights()));
                }
            }
        }
    }
}
