//! Request-time scoring of posts published after a user's list was built (the feed's `fresh`
//! source), and the pool index that keeps it cheap.
//!
//! A fresh post has no interactions in the pipeline's snapshot, so the hybrid's collaborative
//! part cannot score it; the other parts can, plus the user's affinity to the post's author:
//!
//! `score = w_content · cos(profile, post) + w_recency · exp(-age / tau)
//!        + w_engagement · ln(1 + e) / ln(1 + e_max) + w_author · affinity(author)`
//!
//! Each component is on [0, 1] by construction (the profile and the posts' TF-IDF rows are unit
//! vectors, affinities are divided by the user's largest), so unlike the nightly hybrid no
//! per-user min-max is needed, and a user's score of a post does not depend on which other
//! posts happen to be in the pool. `e` is the post's live engagement (the API's trending
//! counters), `e_max` the largest in the pool.
//!
//! [`FreshPool`] is one immutable snapshot of the pool: posts newest first, an inverted index
//! term -> posts and an author index, and each post's *base* (`w_recency` and `w_engagement`
//! parts, computed at the snapshot's `now`), with the posts ordered by base. The parts that
//! depend on the user (content, author) touch only the posts that share a term or an author
//! with the user, so the exact top-n is the top-n of those touched posts together with the
//! best-based untouched ones: [`FreshPool::topk`] costs the profile's posting lists plus n, not
//! the pool size.

use rustc_hash::FxHashMap;

use crate::topk::{Scored, TopK};
use crate::{Error, Result};

/// A sparse vector, terms ascending, unit length (a TF-IDF row, a user profile).
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
    pub author: u128,
    pub created_ms: i64,
    /// The post's TF-IDF row in the model's vocabulary (unit length; empty: no known term).
    pub tfidf: SparseVec,
}

/// The weights and settings of the fresh score (a section of the scoring configuration).
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
    pub fn validate(&self) -> Result<()> {
        for (name, w) in [
            ("content", self.content),
            ("recency", self.recency),
            ("engagement", self.engagement),
            ("author", self.author),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(Error::invalid(
                    "fresh",
                    format!("{name} weight must be finite and >= 0, got {w}"),
                ));
            }
        }
        if !(self.recency_tau_hours.is_finite() && self.recency_tau_hours > 0.0) {
            return Err(Error::invalid(
                "fresh",
                format!(
                    "recency_tau_hours must be finite and > 0, got {}",
                    self.recency_tau_hours
                ),
            ));
        }
        Ok(())
    }
}

/// The components of a fresh score, in this order.
pub const FRESH_COMPONENTS: [&str; 4] = ["content", "recency", "engagement", "author"];

/// A scored fresh post: its position in the pool, the score and the four components.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreshScored {
    pub post: u32,
    pub score: f32,
    pub components: [f32; 4],
}

impl FreshScored {
    /// The component with the largest weighted contribution (ties: the earlier one).
    pub fn strongest(&self, w: &FreshWeights) -> usize {
        let wv = [w.content, w.recency, w.engagement, w.author];
        let mut best = 0;
        for i in 1..4 {
            if wv[i] * self.components[i] > wv[best] * self.components[best] {
                best = i;
            }
        }
        best
    }
}

/// What one user brings to [`FreshPool::topk`].
pub struct FreshQuery<'a> {
    /// The user's content profile in the pool's vocabulary (unit length; empty: no content part).
    pub profile: &'a SparseVec,
    /// `(author, affinity in [0, 1])`, any order.
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
    /// A snapshot of `posts` scored at `now_ms`; `engagement` gives each post's live
    /// engagement (>= 0). Positions in the pool follow `posts` sorted newest first.
    pub fn new(
        mut posts: Vec<PoolPost>,
        now_ms: i64,
        engagement: impl Fn(u128) -> f32,
        weights: FreshWeights,
    ) -> Result<FreshPool> {
        weights.validate()?;
        posts.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
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
            by_author.entry(p.author).or_default().push(i as u32);
            let age = (now_ms - p.created_ms).max(0) as f64;
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
        let eligible = |i: u32| {
            let p = &self.posts[i as usize];
            p.created_ms > q.after_ms && p.created_ms <= q.before_ms && !(q.exclude)(p)
        };
        // The user-dependent parts of every post that shares a term or an author with the user.
        let mut touched: FxHashMap<u32, [f32; 2]> = FxHashMap::default();
        for (&t, &w) in q.profile.terms.iter().zip(&q.profile.weights) {
            if let Some(list) = self.postings.get(&t) {
                for &(i, x) in list {
                    touched.entry(i).or_insert([0.0; 2])[0] += w * x;
                }
            }
        }
        for &(a, affinity) in q.authors {
            if !(affinity.is_finite() && affinity > 0.0) {
                continue;
            }
            if let Some(list) = self.by_author.get(&a) {
                for &i in list {
                    let e = touched.entry(i).or_insert([0.0; 2]);
                    e[1] = e[1].max(affinity.min(1.0));
                }
            }
        }
        let w = &self.weights;
        let score_of = |i: u32, user: [f32; 2]| {
            let content = user[0].clamp(0.0, 1.0);
            let [recency, engagement] = self.parts[i as usize];
            FreshScored {
                post: i,
                score: self.base[i as usize] + w.content * content + w.author * user[1],
                components: [content, recency, engagement, user[1]],
            }
        };
        let mut top = TopK::new(q.n.max(1));
        let mut scored: FxHashMap<u32, FreshScored> = FxHashMap::default();
        for (&i, &user) in &touched {
            if eligible(i) {
                let s = score_of(i, user);
                top.push(i, s.score);
                scored.insert(i, s);
            }
        }
        // Untouched posts score their base: the best n of them are the only ones that can enter.
        let mut taken = 0;
        for &i in &self.by_base {
            if taken == q.n {
                break;
            }
            if touched.contains_key(&i) || !eligible(i) {
                continue;
            }
            let s = score_of(i, [0.0; 2]);
            top.push(i, s.score);
            scored.insert(i, s);
            taken += 1;
        }
        if q.n == 0 {
            return Vec::new();
        }
        let mut order: Vec<Scored> = Vec::new();
        top.drain_sorted(&mut order);
        order.iter().map(|e| scored[&e.index]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: FreshWeights = FreshWeights {
        content: 0.5,
        recency: 0.3,
        engagement: 0.1,
        author: 0.2,
        recency_tau_hours: 24.0,
    };

    fn post(id: u128, author: u128, created_ms: i64, terms: &[(u32, f32)]) -> PoolPost {
        PoolPost {
            id,
            author,
            created_ms,
            tfidf: SparseVec::normalized(terms.to_vec()).unwrap(),
        }
    }

    fn no_exclusion(_: &PoolPost) -> bool {
        false
    }

    /// Every eligible post scored by the formula, sorted: what `topk` must equal.
    fn brute_force(
        pool: &FreshPool,
        q: &FreshQuery,
        engagement: &dyn Fn(u128) -> f32,
        now: i64,
    ) -> Vec<(u128, f32)> {
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
                for (t, w) in p.tfidf.terms.iter().zip(&p.tfidf.weights) {
                    if let Ok(k) = q.profile.terms.binary_search(t) {
                        content += w * q.profile.weights[k];
                    }
                }
                let affinity = q
                    .authors
                    .iter()
                    .filter(|a| a.0 == p.author)
                    .map(|a| a.1.min(1.0))
                    .fold(0f32, f32::max);
                let recency = (-((now - p.created_ms).max(0) as f64)
                    / (W.recency_tau_hours as f64 * 3.6e6))
                    .exp() as f32;
                let e = if e_max > 0.0 {
                    ((engagement(p.id) as f64).ln_1p() / (e_max as f64).ln_1p()) as f32
                } else {
                    0.0
                };
                (
                    i,
                    W.recency * recency
                        + W.engagement * e
                        + W.content * content.clamp(0.0, 1.0)
                        + W.author * affinity,
                )
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(q.n);
        all.into_iter().map(|(i, s)| (pool.post(i).id, s)).collect()
    }

    #[test]
    fn content_and_author_lift_a_post_above_newer_ones() {
        let now = 1_000_000_000;
        let posts = vec![
            post(1, 10, now - 1000, &[(1, 1.0)]), // newest, other topic
            post(2, 11, now - 2000, &[(2, 1.0), (3, 0.2)]), // the user's topic
            post(3, 12, now - 3000, &[(4, 1.0)]), // by an author the user likes
        ];
        let pool = FreshPool::new(posts, now, |_| 0.0, W).unwrap();
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
        let got: Vec<u128> = pool.topk(&q).iter().map(|s| pool.post(s.post).id).collect();
        assert_eq!(got, [2, 3, 1]);
        let best = pool.topk(&q)[0];
        assert_eq!(FRESH_COMPONENTS[best.strongest(&W)], "content");
    }

    #[test]
    fn window_and_exclusions_are_respected() {
        let now = 10_000;
        let posts = (0..10)
            .map(|i| post(i, 0, i as i64 * 1000, &[(1, 1.0)]))
            .collect();
        let pool = FreshPool::new(posts, now, |_| 0.0, W).unwrap();
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
        let got: Vec<u128> = pool.topk(&q).iter().map(|s| pool.post(s.post).id).collect();
        assert_eq!(got, [8, 6, 5, 4]);
    }

    #[test]
    fn empty_pool_profile_and_n_zero_answer_empty_or_by_base() {
        let pool = FreshPool::new(Vec::new(), 0, |_| 0.0, W).unwrap();
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
        let bad = FreshWeights {
            author: f32::NAN,
            ..W
        };
        assert!(FreshPool::new(Vec::new(), 0, |_| 0.0, bad)
            .err()
            .expect("a NaN weight is refused")
            .to_string()
            .starts_with("fresh:"));
    }

    proptest! {
        #[test]
        fn topk_equals_the_brute_force(
            raw in proptest::collection::vec((0u128..6, 0i64..100_000, proptest::collection::vec((0u32..12, 0.01f32..1.0), 0..5), 0u32..20), 0..60),
            profile_terms in proptest::collection::vec((0u32..12, 0.01f32..1.0), 0..6),
            authors in proptest::collection::vec((0u128..6, 0.0f32..1.5), 0..4),
            after in 0i64..50_000,
            n in 0usize..15,
        ) {
            let now = 100_000;
            let eng: Vec<f32> = raw.iter().map(|r| r.3 as f32).collect();
            let posts: Vec<PoolPost> = raw.iter().enumerate()
                .map(|(i, (a, t, terms, _))| post(i as u128, *a, *t, terms)).collect();
            let engagement = |id: u128| eng[id as usize];
            let pool = FreshPool::new(posts, now, engagement, W).unwrap();
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
    }
}
