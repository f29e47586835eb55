//! The hybrid score: collaborative, content, recency and engagement components, each min-max
//! normalized per user over the posts that user may be shown, combined by
//! [`HybridWeights::combine`], top-k per user with every component kept beside the score.
//!
//! - collaborative: a [`CollaborativeScorer`] (user-user: the sum over the user's `neighbors`
//!   most similar users of similarity x their interaction weight; item-item: `x_u · S` with `S`
//!   the items' top-`neighbors` cosine neighbours);
//! - content: cosine between the user's profile (the mean TF-IDF vector of the posts they
//!   engaged with, i.e. interaction value > 0) and each post's TF-IDF vector;
//! - recency: `exp(-age_days / tau)`; engagement: `ln(1 + weighted interaction count)`.
//!
//! Never recommended: posts the user has any interaction with (stored entries of their row,
//! whatever the value, so a hidden post stays hidden), posts in `exclude`, the user's own posts,
//! posts outside `candidates`. Users are scored in parallel blocks, each thread with dense
//! scratch of `n_posts` (+ `n_users` for user-user, `n_terms` for the profile); no users x users
//! or posts x posts matrix is formed.
//!
//! Adding a collaborative model: implement [`CollaborativeScorer`] (e.g. in `recommenders.rs`)
//! and add its name to [`build_scorer`]; model-specific numbers arrive in
//! [`CollaborativeInput::params`] (from Python: extra keyword arguments of `hybrid_topk`).

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::config::{HybridWeights, InteractionWeighting};
use crate::similarity::{item_neighbors, Accumulator};
use crate::sparse::{Csr, CsrRef};
use crate::topk::TopK;
use crate::weighting::weight_interactions;
use crate::{Error, Result};

/// A collaborative model: adds a user's score for every post into `out` (zeroed on entry).
pub trait CollaborativeScorer: Sync {
    /// Per-thread scratch for [`CollaborativeScorer::score_into`].
    fn scratch(&self) -> Accumulator;
    fn score_into(&self, user: usize, scratch: &mut Accumulator, out: &mut [f32]);
}

/// What a collaborative model is built from.
pub struct CollaborativeInput<'a> {
    /// users x posts interaction values (the history).
    pub interactions: CsrRef<'a, f32>,
    /// The same matrix weighted for similarity (`weighting`).
    pub weighted: CsrRef<'a, f32>,
    /// Neighbours per user or per item.
    pub neighbors: usize,
    /// Model-specific settings by name (e.g. a ridge penalty).
    pub params: &'a BTreeMap<String, f64>,
    /// Precomputed item neighbours (items x items) for `item_item`, so that a caller scoring
    /// users in batches fits them once.
    pub item_neighbors: Option<CsrRef<'a, f32>>,
}

/// The user-user model: cosine neighbours on the weighted matrix, found per user by a sparse
/// accumulator over the users who share a post (exact).
pub struct UserUser<'a> {
    x: CsrRef<'a, f32>,
    w: CsrRef<'a, f32>,
    wt: Csr<f32>,
    inv_norm: Vec<f32>,
    k: usize,
    /// All weighted values > 0: the branchless accumulator applies.
    positive: bool,
}

impl<'a> UserUser<'a> {
    pub fn new(input: &CollaborativeInput<'a>) -> Self {
        let inv_norm = input
            .weighted
            .row_norms()
            .into_iter()
            .map(|n| if n > 0.0 { 1.0 / n } else { 0.0 })
            .collect();
        UserUser {
            x: input.interactions,
            w: input.weighted,
            wt: input.weighted.transpose(),
            inv_norm,
            k: input.neighbors,
            positive: input.weighted.data.iter().all(|&v| v > 0.0),
        }
    }
}

impl CollaborativeScorer for UserUser<'_> {
    fn scratch(&self) -> Accumulator {
        Accumulator::new(self.w.nrows, self.k)
    }

    fn score_into(&self, user: usize, a: &mut Accumulator, out: &mut [f32]) {
        let wt = self.wt.view();
        let (posts, vals) = self.w.row(user);
        for (&p, &v) in posts.iter().zip(vals) {
            let (users, ws) = wt.row(p as usize);
            if self.positive {
                a.add_positive(users, ws, v);
            } else {
                for (&o, &w) in users.iter().zip(ws) {
                    a.add(o, v * w);
                }
            }
        }
        if self.positive {
            a.touched.extend_from_slice(&a.buf[..a.count]);
            a.count = 0;
        }
        let ui = self.inv_norm[user];
        for t in 0..a.touched.len() {
            let o = a.touched[t] as usize;
            let s = a.acc[o] * ui * self.inv_norm[o];
            a.acc[o] = 0.0;
            a.seen[o] = false;
            if o != user && s > 0.0 {
                a.topk.push(o as u32, s);
            }
        }
        a.touched.clear();
        let mut nb = std::mem::take(&mut a.sorted);
        a.topk.drain_sorted(&mut nb);
        for e in &nb {
            let (posts, vals) = self.x.row(e.index as usize);
            for (&p, &v) in posts.iter().zip(vals) {
                out[p as usize] += e.score * v;
            }
        }
        a.sorted = nb;
    }
}

/// Item-based scoring `x_u · S` over any items x items neighbour matrix `S` (item-item cosine
/// here; other models that produce such an `S` can reuse it).
pub struct ItemNeighbors<'a> {
    x: CsrRef<'a, f32>,
    s: Csr<f32>,
}

impl<'a> ItemNeighbors<'a> {
    pub fn new(interactions: CsrRef<'a, f32>, s: Csr<f32>) -> Result<Self> {
        if s.nrows != interactions.ncols || s.ncols != interactions.ncols {
            return Err(Error::invalid(
                "collaborative",
                "the item neighbour matrix must be items x items",
            ));
        }
        Ok(ItemNeighbors { x: interactions, s })
    }

    /// Item-item cosine neighbours of the weighted matrix.
    pub fn cosine(input: &CollaborativeInput<'a>) -> Result<Self> {
        let s = item_neighbors(
            input.weighted,
            input.neighbors,
            InteractionWeighting::None,
            0.0,
            0.0,
            true,
        )?;
        Self::new(input.interactions, s)
    }
}

impl CollaborativeScorer for ItemNeighbors<'_> {
    fn scratch(&self) -> Accumulator {
        Accumulator::new(0, 1)
    }

    fn score_into(&self, user: usize, _: &mut Accumulator, out: &mut [f32]) {
        let s = self.s.view();
        let (items, vals) = self.x.row(user);
        for (&i, &v) in items.iter().zip(vals) {
            let (nb, sims) = s.row(i as usize);
            for (&j, &sv) in nb.iter().zip(sims) {
                out[j as usize] += v * sv;
            }
        }
    }
}

/// The collaborative models by name.
pub const COLLABORATIVE_MODELS: [&str; 3] = ["user_user", "item_item", "ridge"];

/// Builds the collaborative model `name`.
pub fn build_scorer<'a>(
    name: &str,
    input: &CollaborativeInput<'a>,
) -> Result<Box<dyn CollaborativeScorer + 'a>> {
    match name {
        "user_user" => Ok(Box::new(UserUser::new(input))),
        "item_item" => match input.item_neighbors {
            Some(s) => Ok(Box::new(ItemNeighbors::new(
                input.interactions,
                s.to_owned(),
            )?)),
            None => Ok(Box::new(ItemNeighbors::cosine(input)?)),
        },
        "ridge" => Ok(Box::new(crate::recommenders::ridge_scorer(input)?)),
        other => Err(Error::invalid(
            "collaborative",
            format!("unknown model {other:?} (known: {COLLABORATIVE_MODELS:?})"),
        )),
    }
}

/// Per-post inputs of the hybrid score.
pub struct Posts<'a> {
    /// posts x terms, TF-IDF rows.
    pub tfidf: CsrRef<'a, f32>,
    pub age_days: &'a [f32],
    pub engagement: &'a [f32],
    /// The author's user index, or -1.
    pub author: &'a [i64],
}

/// Settings of [`hybrid_topk`].
pub struct HybridParams<'a> {
    pub k: usize,
    pub weights: HybridWeights,
    pub neighbors: usize,
    pub recency_tau_days: f32,
    pub collaborative: &'a str,
    pub weighting: InteractionWeighting,
    /// BM25 settings when `weighting` is BM25.
    pub bm25_k1: f32,
    pub bm25_b: f32,
    pub model_params: &'a BTreeMap<String, f64>,
    /// See [`CollaborativeInput::item_neighbors`].
    pub item_neighbors: Option<CsrRef<'a, f32>>,
}

/// Top-k per user: indices (`-1` padded), scores and the four normalized components.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridResult {
    pub k: usize,
    pub indices: Vec<i64>,
    pub scores: Vec<f32>,
    /// `users x k x 4`.
    pub components: Vec<f32>,
}

fn check_len(arg: &'static str, len: usize, n: usize) -> Result<()> {
    if len != n {
        return Err(Error::invalid(
            arg,
            format!("has length {len}, expected one value per post ({n})"),
        ));
    }
    Ok(())
}

fn validate(
    x: &CsrRef<f32>,
    posts: &Posts,
    users: &[usize],
    p: &HybridParams,
    exclude: Option<&CsrRef<f32>>,
    candidates: Option<&[usize]>,
) -> Result<()> {
    let n_posts = x.ncols;
    x.check_finite("interactions")?;
    if posts.tfidf.nrows != n_posts {
        return Err(Error::invalid(
            "post_tfidf",
            format!(
                "has {} rows, expected one per post ({n_posts})",
                posts.tfidf.nrows
            ),
        ));
    }
    posts.tfidf.check_finite("post_tfidf")?;
    check_len("post_age_days", posts.age_days.len(), n_posts)?;
    check_len("post_engagement", posts.engagement.len(), n_posts)?;
    check_len("post_author", posts.author.len(), n_posts)?;
    if let Some(a) = posts
        .age_days
        .iter()
        .find(|a| !(a.is_finite() && **a >= 0.0))
    {
        return Err(Error::invalid(
            "post_age_days",
            format!("must be finite and >= 0, found {a}"),
        ));
    }
    if let Some(e) = posts
        .engagement
        .iter()
        .find(|e| !(e.is_finite() && **e >= 0.0))
    {
        return Err(Error::invalid(
            "post_engagement",
            format!("must be finite and >= 0, found {e}"),
        ));
    }
    if let Some(a) = posts
        .author
        .iter()
        .find(|&&a| a < -1 || a >= x.nrows as i64)
    {
        return Err(Error::invalid(
            "post_author",
            format!("must be -1 or a user index in 0..{}, found {a}", x.nrows),
        ));
    }
    if let Some(u) = users.iter().find(|&&u| u >= x.nrows) {
        return Err(Error::invalid(
            "users",
            format!("index {u} out of range 0..{}", x.nrows),
        ));
    }
    if p.k == 0 {
        return Err(Error::invalid("k", "must be >= 1"));
    }
    if p.neighbors == 0 {
        return Err(Error::invalid("neighbors", "must be >= 1"));
    }
    if !(p.recency_tau_days.is_finite() && p.recency_tau_days > 0.0) {
        return Err(Error::invalid(
            "recency_tau_days",
            format!("must be finite and > 0, got {}", p.recency_tau_days),
        ));
    }
    p.weights.validate()?;
    if let Some(e) = exclude {
        if e.nrows != x.nrows || e.ncols != x.ncols {
            return Err(Error::invalid(
                "exclude",
                format!(
                    "must have the shape of interactions ({} x {}), got {} x {}",
                    x.nrows, x.ncols, e.nrows, e.ncols
                ),
            ));
        }
    }
    if let Some(c) = candidates {
        if let Some(bad) = c.iter().find(|&&c| c >= n_posts) {
            return Err(Error::invalid(
                "candidates",
                format!("post index {bad} out of range 0..{n_posts}"),
            ));
        }
    }
    Ok(())
}

/// Per-thread scratch of [`hybrid_topk`].
struct Scratch {
    collab: Vec<f32>,
    content: Vec<f32>,
    /// `stamp[p] == user + 1` marks p as excluded for the current user.
    stamp: Vec<u32>,
    profile: Accumulator,
    model: Accumulator,
    top: TopK,
    sorted: Vec<crate::topk::Scored>,
}

/// Users per parallel task.
const BLOCK: usize = 16;

/// The hybrid top-k of each of `users`. See the module documentation.
pub fn hybrid_topk(
    interactions: CsrRef<f32>,
    posts: &Posts,
    users: &[usize],
    params: &HybridParams,
    exclude: Option<CsrRef<f32>>,
    candidates: Option<&[usize]>,
) -> Result<HybridResult> {
    validate(
        &interactions,
        posts,
        users,
        params,
        exclude.as_ref(),
        candidates,
    )?;
    let n_posts = interactions.ncols;
    let k = params.k;
    let weighted = weight_interactions(
        interactions,
        params.weighting,
        params.bm25_k1,
        params.bm25_b,
    )?;
    let input = CollaborativeInput {
        interactions,
        weighted: weighted.view(),
        neighbors: params.neighbors,
        params: params.model_params,
        item_neighbors: params.item_neighbors,
    };
    let scorer = build_scorer(params.collaborative, &input)?;
    let recency: Vec<f32> = posts
        .age_days
        .iter()
        .map(|&a| (-(a as f64) / params.recency_tau_days as f64).exp() as f32)
        .collect();
    let engagement: Vec<f32> = posts
        .engagement
        .iter()
        .map(|&e| (e as f64).ln_1p() as f32)
        .collect();
    let tfidf_t = posts.tfidf.transpose();
    let post_norm = posts.tfidf.row_norms();
    let allowed: Vec<u32> = match candidates {
        Some(c) => {
            let mut v: Vec<u32> = c.iter().map(|&p| p as u32).collect();
            v.sort_unstable();
            v.dedup();
            v
        }
        None => (0..n_posts as u32).collect(),
    };
    // authored posts per user, to exclude them
    let has_authors = posts.author.iter().any(|&a| a >= 0);
    let mut by_author: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    if has_authors {
        for (p, &a) in posts.author.iter().enumerate() {
            if a >= 0 {
                by_author.entry(a as usize).or_default().push(p as u32);
            }
        }
    }
    let n_terms = posts.tfidf.ncols;
    let w = params.weights;

    let mut out = HybridResult {
        k,
        indices: vec![-1; users.len() * k],
        scores: vec![0.0; users.len() * k],
        components: vec![0.0; users.len() * k * 4],
    };
    let tt = tfidf_t.view();
    out.indices
        .par_chunks_mut(BLOCK * k)
        .zip(out.scores.par_chunks_mut(BLOCK * k))
        .zip(out.components.par_chunks_mut(BLOCK * k * 4))
        .zip(users.par_chunks(BLOCK))
        .for_each_init(
            || Scratch {
                collab: vec![0.0; n_posts],
                content: vec![0.0; n_posts],
                stamp: vec![0; n_posts],
                profile: Accumulator::new(n_terms, 1),
                model: scorer.scratch(),
                top: TopK::new(k),
                sorted: Vec::with_capacity(k),
            },
            |s, (((idx_out, sc_out), comp_out), us)| {
                for (r, &u) in us.iter().enumerate() {
                    let stamp = u as u32 + 1;
                    // exclusions
                    let (hist, hist_vals) = interactions.row(u);
                    for &p in hist {
                        s.stamp[p as usize] = stamp;
                    }
                    if let Some(e) = exclude.as_ref() {
                        for &p in e.row(u).0 {
                            s.stamp[p as usize] = stamp;
                        }
                    }
                    if let Some(mine) = by_author.get(&u) {
                        for &p in mine {
                            s.stamp[p as usize] = stamp;
                        }
                    }
                    // collaborative
                    s.collab.fill(0.0);
                    scorer.score_into(u, &mut s.model, &mut s.collab);
                    // content: the mean TF-IDF vector of engaged posts against every post
                    s.content.fill(0.0);
                    let mut engaged = 0usize;
                    for (&p, &v) in hist.iter().zip(hist_vals) {
                        if v > 0.0 {
                            engaged += 1;
                            let (terms, tv) = posts.tfidf.row(p as usize);
                            for (&t, &x) in terms.iter().zip(tv) {
                                s.profile.add(t, x);
                            }
                        }
                    }
                    if engaged > 0 {
                        let inv = 1.0 / engaged as f32;
                        let mut norm2 = 0f64;
                        for &t in &s.profile.touched {
                            let m = s.profile.acc[t as usize] * inv;
                            norm2 += (m as f64) * (m as f64);
                        }
                        let pnorm = norm2.sqrt() as f32;
                        for ti in 0..s.profile.touched.len() {
                            let t = s.profile.touched[ti] as usize;
                            let m = s.profile.acc[t] * inv;
                            s.profile.acc[t] = 0.0;
                            s.profile.seen[t] = false;
                            let (ps, pv) = tt.row(t);
                            for (&p, &x) in ps.iter().zip(pv) {
                                s.content[p as usize] += m * x;
                            }
                        }
                        s.profile.touched.clear();
                        if pnorm > 0.0 {
                            for (c, &n) in s.content.iter_mut().zip(&post_norm) {
                                *c = if n > 0.0 { *c / (pnorm * n) } else { 0.0 };
                            }
                        }
                    }
                    // min-max per component over the posts this user may see
                    let mut lo = [f32::INFINITY; 4];
                    let mut hi = [f32::NEG_INFINITY; 4];
                    let comp = |p: usize, s: &Scratch| {
                        [s.collab[p], s.content[p], recency[p], engagement[p]]
                    };
                    for &p in &allowed {
                        let p = p as usize;
                        if s.stamp[p] == stamp {
                            continue;
                        }
                        let c = comp(p, s);
                        for j in 0..4 {
                            lo[j] = lo[j].min(c[j]);
                            hi[j] = hi[j].max(c[j]);
                        }
                    }
                    let scale: [f32; 4] = std::array::from_fn(|j| {
                        if hi[j] > lo[j] {
                            1.0 / (hi[j] - lo[j])
                        } else {
                            0.0
                        }
                    });
                    for &p in &allowed {
                        let pu = p as usize;
                        if s.stamp[pu] == stamp {
                            continue;
                        }
                        let c = comp(pu, s);
                        let n: [f32; 4] = std::array::from_fn(|j| (c[j] - lo[j]) * scale[j]);
                        s.top.push(p, w.combine(n));
                    }
                    s.top.drain_sorted(&mut s.sorted);
                    let base = r * k;
                    for slot in 0..k {
                        let (i, sc) = match s.sorted.get(slot) {
                            Some(e) => (e.index as i64, e.score),
                            None => (-1, 0.0),
                        };
                        idx_out[base + slot] = i;
                        sc_out[base + slot] = sc;
                        let co = &mut comp_out[(base + slot) * 4..(base + slot + 1) * 4];
                        if i >= 0 {
                            let c = comp(i as usize, s);
                            for j in 0..4 {
                                co[j] = (c[j] - lo[j]) * scale[j];
                            }
                        }
                    }
                    // reset the stamp for users that come back in another call
                    for &p in hist {
                        s.stamp[p as usize] = 0;
                    }
                    if let Some(e) = exclude.as_ref() {
                        for &p in e.row(u).0 {
                            s.stamp[p as usize] = 0;
                        }
                    }
                    if let Some(mine) = by_author.get(&u) {
                        for &p in mine {
                            s.stamp[p as usize] = 0;
                        }
                    }
                }
            },
        );
    Ok(out)
}
