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
//! posts outside `candidates`. Users are scored in blocks of [`LANES`] users, blocks in
//! parallel: two passes over the posts per block, each reading a post's TF-IDF row once for all
//! the block's users (SIMD across users; AVX2 when the CPU has it). Each thread's scratch is
//! `O(n_posts + n_terms x LANES)` (+ `n_users` for user-user); no users x users or
//! posts x posts matrix is formed. [`HybridModel`] prepares everything that does not depend on
//! the users once, for callers that score users in batches.
//!
//! Adding a collaborative model: implement [`CollaborativeScorer`] (e.g. in `recommenders.rs`)
//! and add its name to [`build_scorer`]; model-specific numbers arrive in
//! [`CollaborativeInput::params`] (from Python: extra keyword arguments of `hybrid_topk`).

use std::collections::BTreeMap;
use std::sync::Arc;

use rayon::prelude::*;

use crate::config::{HybridWeights, InteractionWeighting};
use crate::similarity::{item_neighbors, Accumulator};
use crate::sparse::{Csr, CsrRef};
use crate::topk::{write_row, FlatTopK, Scored};
use crate::weighting::weight_interactions;
use crate::{Error, Result};

/// Users scored together: the lanes of the block kernel. Each post's TF-IDF row is read once
/// per block and its content score computed for every lane at once (the per-user loops over all
/// posts were most of the time); a `u32` per post marks the lanes that exclude it.
pub const LANES: usize = 32;

/// Where a collaborative model writes one user's scores: a dense accumulator over posts that
/// remembers which posts it touched (the block kernel keeps only those).
pub struct Lane<'a> {
    acc: &'a mut Accumulator,
}

impl Lane<'_> {
    #[inline(always)]
    pub fn add(&mut self, post: usize, value: f32) {
        self.acc.add(post as u32, value);
    }
}

/// A collaborative model: adds a user's score for every post into `out` (zeroed on entry).
pub trait CollaborativeScorer: Send + Sync {
    /// Per-thread scratch for [`CollaborativeScorer::score_into`].
    fn scratch(&self) -> Accumulator;
    fn score_into(&self, user: usize, scratch: &mut Accumulator, out: &mut Lane);
}

/// What a collaborative model is built from.
pub struct CollaborativeInput<'a> {
    /// users x posts interaction values (the history).
    pub interactions: Arc<Csr<f32>>,
    /// The same matrix weighted for similarity (`weighting`).
    pub weighted: Arc<Csr<f32>>,
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
pub struct UserUser {
    x: Arc<Csr<f32>>,
    w: Arc<Csr<f32>>,
    wt: Csr<f32>,
    inv_norm: Vec<f32>,
    k: usize,
    /// All weighted values > 0: the branchless accumulator applies.
    positive: bool,
}

impl UserUser {
    pub fn new(input: &CollaborativeInput) -> Self {
        let inv_norm = input
            .weighted
            .view()
            .row_norms()
            .into_iter()
            .map(|n| if n > 0.0 { 1.0 / n } else { 0.0 })
            .collect();
        UserUser {
            x: input.interactions.clone(),
            w: input.weighted.clone(),
            wt: input.weighted.view().transpose(),
            inv_norm,
            k: input.neighbors,
            positive: input.weighted.data.iter().all(|&v| v > 0.0),
        }
    }
}

impl CollaborativeScorer for UserUser {
    fn scratch(&self) -> Accumulator {
        Accumulator::new(self.w.nrows, self.k)
    }

    fn score_into(&self, user: usize, a: &mut Accumulator, out: &mut Lane) {
        let (wt, x) = (self.wt.view(), self.x.view());
        let (posts, vals) = self.w.view().row(user);
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
            let (posts, vals) = x.row(e.index as usize);
            for (&p, &v) in posts.iter().zip(vals) {
                out.add(p as usize, e.score * v);
            }
        }
        a.sorted = nb;
    }
}

/// Item-based scoring `x_u · S` over any items x items neighbour matrix `S` (item-item cosine
/// here; other models that produce such an `S` can reuse it).
pub struct ItemNeighbors {
    x: Arc<Csr<f32>>,
    s: Csr<f32>,
}

impl ItemNeighbors {
    pub fn new(interactions: Arc<Csr<f32>>, s: Csr<f32>) -> Result<Self> {
        if s.nrows != interactions.ncols || s.ncols != interactions.ncols {
            return Err(Error::invalid(
                "collaborative",
                "the item neighbour matrix must be items x items",
            ));
        }
        Ok(ItemNeighbors { x: interactions, s })
    }

    /// Item-item cosine neighbours of the weighted matrix.
    pub fn cosine(input: &CollaborativeInput) -> Result<Self> {
        let s = item_neighbors(
            input.weighted.view(),
            input.neighbors,
            InteractionWeighting::None,
            0.0,
            0.0,
            true,
        )?;
        Self::new(input.interactions.clone(), s)
    }
}

impl CollaborativeScorer for ItemNeighbors {
    fn scratch(&self) -> Accumulator {
        Accumulator::new(0, 1)
    }

    fn score_into(&self, user: usize, _: &mut Accumulator, out: &mut Lane) {
        let s = self.s.view();
        let (items, vals) = self.x.view().row(user);
        for (&i, &v) in items.iter().zip(vals) {
            let (nb, sims) = s.row(i as usize);
            for (&j, &sv) in nb.iter().zip(sims) {
                out.add(j as usize, v * sv);
            }
        }
    }
}

/// The collaborative models by name.
pub const COLLABORATIVE_MODELS: [&str; 3] = ["user_user", "item_item", "ridge"];

/// Builds the collaborative model `name`.
pub fn build_scorer(
    name: &str,
    input: &CollaborativeInput,
) -> Result<Box<dyn CollaborativeScorer>> {
    match name {
        "user_user" => Ok(Box::new(UserUser::new(input))),
        "item_item" => match input.item_neighbors {
            Some(s) => Ok(Box::new(ItemNeighbors::new(
                input.interactions.clone(),
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

/// Settings of [`hybrid_topk`] and [`HybridModel`].
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

/// Per-thread scratch of [`hybrid_topk`]: each lane's collaborative scores as a list sorted by
/// post, the lanes' profiles (`n_terms x LANES`, term-major), a lane mask per post.
struct Scratch {
    collab_acc: Accumulator,
    /// Lane `j`'s `(post, score)` entries are `collab[collab_start[j]..collab_start[j + 1]]`.
    collab: Vec<(u32, f32)>,
    collab_start: [usize; LANES + 1],
    profiles: Vec<f32>,
    profile_terms: Vec<u32>,
    excluded: Vec<u32>,
    profile: Accumulator,
    model: Accumulator,
    tops: FlatTopK,
    sorted: Vec<Scored>,
}

/// What every block reads: the per-post inputs, computed once per call.
struct Shared {
    interactions: Arc<Csr<f32>>,
    exclude: Option<Csr<f32>>,
    tfidf: Csr<f32>,
    /// 1 / the post's TF-IDF norm (0 for a post without terms).
    inv_norm: Vec<f32>,
    recency: Vec<f32>,
    engagement: Vec<f32>,
    allowed: Vec<u32>,
    /// Bit `p` set: post `p` is allowed (None: all are).
    allowed_bits: Option<Vec<u64>>,
    /// The allowed posts by ascending recency and by ascending engagement: a lane's minimum and
    /// maximum of those components are the first and last posts it does not exclude.
    by_recency: Vec<u32>,
    by_engagement: Vec<u32>,
    by_author: BTreeMap<usize, Vec<u32>>,
    weights: HybridWeights,
}

impl Shared {
    /// The posts never shown to `user`: their history, `exclude` row and own posts.
    fn excluded_posts(&self, user: usize, mut f: impl FnMut(u32)) {
        self.interactions
            .view()
            .row(user)
            .0
            .iter()
            .for_each(|&p| f(p));
        if let Some(e) = self.exclude.as_ref() {
            e.view().row(user).0.iter().for_each(|&p| f(p));
        }
        if let Some(mine) = self.by_author.get(&user) {
            mine.iter().for_each(|&p| f(p));
        }
    }

    /// Cosine between each lane's profile and post `p` (the profiles are pre-divided by their
    /// norms). The same arithmetic for every lane, so [`Shared::content_lane`] agrees bit for bit.
    #[inline(always)]
    fn content_lanes(&self, profiles: &[f32], p: usize) -> [f32; LANES] {
        let (terms, vals) = self.tfidf.view().row(p);
        let mut c = [0f32; LANES];
        for (&t, &x) in terms.iter().zip(vals) {
            let row = &profiles[t as usize * LANES..(t as usize + 1) * LANES];
            for j in 0..LANES {
                c[j] += x * row[j];
            }
        }
        let n = self.inv_norm[p];
        for v in &mut c {
            *v *= n;
        }
        c
    }

    fn content_lane(&self, profiles: &[f32], p: usize, lane: usize) -> f32 {
        let (terms, vals) = self.tfidf.view().row(p);
        let mut c = 0f32;
        for (&t, &x) in terms.iter().zip(vals) {
            c += x * profiles[t as usize * LANES + lane];
        }
        c * self.inv_norm[p]
    }
}

/// The hybrid top-k of each of `users`. See the module documentation. (A caller scoring users
/// in batches builds a [`HybridModel`] once instead.)
pub fn hybrid_topk(
    interactions: CsrRef<f32>,
    posts: &Posts,
    users: &[usize],
    params: &HybridParams,
    exclude: Option<CsrRef<f32>>,
    candidates: Option<&[usize]>,
) -> Result<HybridResult> {
    // HybridModel::new validates the rest; bad users are refused before building it
    check_users(users, interactions.nrows)?;
    HybridModel::new(
        Arc::new(interactions.to_owned()),
        posts,
        params,
        exclude.map(|e| e.to_owned()),
        candidates,
    )?
    .topk(users)
}

fn check_users(users: &[usize], n_users: usize) -> Result<()> {
    match users.iter().find(|&&u| u >= n_users) {
        Some(u) => Err(Error::invalid(
            "users",
            format!("index {u} out of range 0..{n_users}"),
        )),
        None => Ok(()),
    }
}

/// The hybrid score prepared once: the weighted matrix, the collaborative model (e.g. the
/// transposed matrix user-user walks), the per-post values. [`HybridModel::topk`] then scores
/// any users, so that a caller scoring users in batches pays for the preparation once.
pub struct HybridModel {
    shared: Shared,
    scorer: Box<dyn CollaborativeScorer>,
    k: usize,
}

impl HybridModel {
    pub fn new(
        interactions: Arc<Csr<f32>>,
        posts: &Posts,
        params: &HybridParams,
        exclude: Option<Csr<f32>>,
        candidates: Option<&[usize]>,
    ) -> Result<HybridModel> {
        validate(
            &interactions.view(),
            posts,
            params,
            exclude.as_ref().map(|e| e.view()).as_ref(),
            candidates,
        )?;
        let n_posts = interactions.ncols;
        let weighted = weight_interactions(
            interactions.view(),
            params.weighting,
            params.bm25_k1,
            params.bm25_b,
        )?;
        let input = CollaborativeInput {
            interactions: interactions.clone(),
            weighted: Arc::new(weighted),
            neighbors: params.neighbors,
            params: params.model_params,
            item_neighbors: params.item_neighbors,
        };
        let scorer = build_scorer(params.collaborative, &input)?;
        let mut by_author: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for (p, &a) in posts.author.iter().enumerate() {
            if a >= 0 {
                by_author.entry(a as usize).or_default().push(p as u32);
            }
        }
        let allowed: Vec<u32> = match candidates {
            Some(c) => {
                let mut v: Vec<u32> = c.iter().map(|&p| p as u32).collect();
                v.sort_unstable();
                v.dedup();
                v
            }
            None => (0..n_posts as u32).collect(),
        };
        let allowed_bits = (allowed.len() < n_posts).then(|| {
            let mut bits = vec![0u64; n_posts.div_ceil(64)];
            for &p in &allowed {
                bits[p as usize / 64] |= 1 << (p % 64);
            }
            bits
        });
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
        let ascending = |v: &[f32]| {
            let mut order = allowed.clone();
            order.par_sort_unstable_by(|&a, &b| v[a as usize].total_cmp(&v[b as usize]));
            order
        };
        let shared = Shared {
            interactions,
            exclude,
            tfidf: posts.tfidf.to_owned(),
            inv_norm: posts
                .tfidf
                .row_norms()
                .into_iter()
                .map(|n| if n > 0.0 { 1.0 / n } else { 0.0 })
                .collect(),
            by_recency: ascending(&recency),
            by_engagement: ascending(&engagement),
            recency,
            engagement,
            allowed,
            allowed_bits,
            by_author,
            weights: params.weights,
        };
        Ok(HybridModel {
            shared,
            scorer,
            k: params.k,
        })
    }

    pub fn n_users(&self) -> usize {
        self.shared.interactions.nrows
    }

    /// The top-k of each of `users` (rows of the interactions), in that order.
    pub fn topk(&self, users: &[usize]) -> Result<HybridResult> {
        check_users(users, self.n_users())?;
        let (shared, scorer, k) = (&self.shared, self.scorer.as_ref(), self.k);
        let n_posts = shared.interactions.ncols;
        let n_terms = shared.tfidf.ncols;
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        let mut out = HybridResult {
            k,
            indices: vec![-1; users.len() * k],
            scores: vec![0.0; users.len() * k],
            components: vec![0.0; users.len() * k * 4],
        };
        out.indices
            .par_chunks_mut(LANES * k)
            .zip(out.scores.par_chunks_mut(LANES * k))
            .zip(out.components.par_chunks_mut(LANES * k * 4))
            .zip(users.par_chunks(LANES))
            .for_each_init(
                || Scratch {
                    collab_acc: Accumulator::new(n_posts, 1),
                    collab: Vec::new(),
                    collab_start: [0; LANES + 1],
                    profiles: vec![0.0; LANES * n_terms],
                    profile_terms: Vec::new(),
                    excluded: vec![0; n_posts],
                    profile: Accumulator::new(n_terms, 1),
                    model: scorer.scratch(),
                    tops: FlatTopK::new(LANES, k),
                    sorted: Vec::with_capacity(k),
                },
                |s, (((idx_out, sc_out), comp_out), block)| {
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: the CPU has AVX2 (checked just above).
                        unsafe {
                            score_block_avx2(shared, scorer, block, s, idx_out, sc_out, comp_out)
                        };
                        return;
                    }
                    score_block(shared, scorer, block, s, idx_out, sc_out, comp_out)
                },
            );
        Ok(out)
    }
}

/// The minimum and maximum of `values` over the posts `lane` does not exclude, `order` being
/// the allowed posts by ascending value.
fn lane_range(order: &[u32], values: &[f32], excluded: &[u32], lane: usize) -> (f32, f32) {
    let keep = |p: &&u32| excluded[**p as usize] & (1 << lane) == 0;
    match (order.iter().find(keep), order.iter().rev().find(keep)) {
        (Some(&a), Some(&b)) => (values[a as usize], values[b as usize]),
        _ => (f32::INFINITY, f32::NEG_INFINITY),
    }
}

/// [`score_block`] compiled for AVX2 (8 lanes per instruction instead of SSE2's 4). No fused
/// multiply-add is enabled, so both versions compute exactly the same numbers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn score_block_avx2(
    sh: &Shared,
    scorer: &dyn CollaborativeScorer,
    block: &[usize],
    s: &mut Scratch,
    idx_out: &mut [i64],
    sc_out: &mut [f32],
    comp_out: &mut [f32],
) {
    score_block(sh, scorer, block, s, idx_out, sc_out, comp_out)
}

/// Scores up to [`LANES`] users: two passes over the allowed posts, the first for each lane's
/// minimum and maximum of the collaborative and content components (over the posts that lane
/// may be shown), the second for the normalized, combined score and the top-k.
// Lane-indexed loops over fixed-size arrays are what the compiler vectorizes; iterators over
// several arrays at once would hide that.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn score_block(
    sh: &Shared,
    scorer: &dyn CollaborativeScorer,
    block: &[usize],
    s: &mut Scratch,
    idx_out: &mut [i64],
    sc_out: &mut [f32],
    comp_out: &mut [f32],
) {
    let k = s.tops.k();
    let active = block.len();
    s.tops.clear();
    for j in active..LANES {
        s.tops.thresholds[j] = f32::INFINITY; // unused lanes take nothing
    }
    s.collab.clear();
    for (lane, &u) in block.iter().enumerate() {
        let bit = 1u32 << lane;
        let excluded = &mut s.excluded;
        sh.excluded_posts(u, |p| excluded[p as usize] |= bit);
        s.collab_start[lane] = s.collab.len();
        scorer.score_into(
            u,
            &mut s.model,
            &mut Lane {
                acc: &mut s.collab_acc,
            },
        );
        let acc = &mut s.collab_acc;
        acc.touched.sort_unstable();
        for t in 0..acc.touched.len() {
            let p = acc.touched[t];
            let value = acc.take(p);
            let allowed = match &sh.allowed_bits {
                Some(bits) => bits[p as usize / 64] & (1 << (p % 64)) != 0,
                None => true,
            };
            if allowed {
                s.collab.push((p, value));
            }
        }
        acc.touched.clear();
        // content profile: the mean TF-IDF vector of the engaged posts, divided by its norm
        let (hist, hist_vals) = sh.interactions.view().row(u);
        let mut engaged = 0usize;
        for (&p, &v) in hist.iter().zip(hist_vals) {
            if v > 0.0 {
                engaged += 1;
                let (terms, tv) = sh.tfidf.view().row(p as usize);
                for (&t, &x) in terms.iter().zip(tv) {
                    s.profile.add(t, x);
                }
            }
        }
        let acc = &mut s.profile;
        let inv = if engaged > 0 {
            1.0 / engaged as f32
        } else {
            0.0
        };
        let norm2: f64 = acc
            .touched
            .iter()
            .map(|&t| ((acc.acc[t as usize] * inv) as f64).powi(2))
            .sum();
        let pnorm = norm2.sqrt() as f32;
        for ti in 0..acc.touched.len() {
            let t = acc.touched[ti];
            let m = acc.take(t) * inv;
            if pnorm > 0.0 {
                s.profiles[t as usize * LANES + lane] = m / pnorm;
                s.profile_terms.push(t);
            }
        }
        acc.touched.clear();
    }
    for lane in block.len()..=LANES {
        s.collab_start[lane] = s.collab.len();
    }

    // pass 1: each lane's min and max of content over the posts it may be shown, and how many
    // of the allowed posts it excludes
    let mut lo = [[f32::INFINITY; LANES]; 2];
    let mut hi = [[f32::NEG_INFINITY; LANES]; 2];
    let mut n_excluded = [0usize; LANES];
    for &p in &sh.allowed {
        let p = p as usize;
        let mask = s.excluded[p];
        let content = sh.content_lanes(&s.profiles, p);
        // (min/max on values, never a conditional store: those stall the next load)
        if mask == 0 {
            for j in 0..LANES {
                lo[1][j] = lo[1][j].min(content[j]);
                hi[1][j] = hi[1][j].max(content[j]);
            }
        } else {
            for j in 0..LANES {
                let keep = mask & (1 << j) == 0;
                lo[1][j] = lo[1][j].min(if keep { content[j] } else { f32::INFINITY });
                hi[1][j] = hi[1][j].max(if keep { content[j] } else { f32::NEG_INFINITY });
                n_excluded[j] += !keep as usize;
            }
        }
    }
    // collaborative: over the lane's entries, and zero when some post it may see has none
    for j in 0..block.len() {
        let entries = &s.collab[s.collab_start[j]..s.collab_start[j + 1]];
        let mut seen = 0usize;
        for &(p, v) in entries {
            if s.excluded[p as usize] & (1 << j) == 0 {
                seen += 1;
                lo[0][j] = lo[0][j].min(v);
                hi[0][j] = hi[0][j].max(v);
            }
        }
        if seen < sh.allowed.len() - n_excluded[j] {
            lo[0][j] = lo[0][j].min(0.0);
            hi[0][j] = hi[0][j].max(0.0);
        }
    }
    let mut lo4 = [[f32::INFINITY; LANES]; 4];
    let mut scale = [[0f32; LANES]; 4];
    for j in 0..active {
        let rec = lane_range(&sh.by_recency, &sh.recency, &s.excluded, j);
        let eng = lane_range(&sh.by_engagement, &sh.engagement, &s.excluded, j);
        let ranges = [(lo[0][j], hi[0][j]), (lo[1][j], hi[1][j]), rec, eng];
        for (c, (l, h)) in ranges.into_iter().enumerate() {
            lo4[c][j] = l;
            if h > l {
                scale[c][j] = 1.0 / (h - l);
            }
        }
    }
    let w = sh.weights;
    // component `c` of lane `j`, normalized (the one place this is computed)
    let norm = |c: usize, j: usize, v: f32| (v - lo4[c][j]) * scale[c][j];

    // pass 2: the combined score, offered to each lane's top-k; each lane's collaborative list
    // is walked alongside (a cursor per lane: both go by ascending post)
    let mut cursor: [usize; LANES] = std::array::from_fn(|j| s.collab_start[j]);
    let next_post = |cursor: &[usize; LANES], j: usize| -> u32 {
        if cursor[j] < s.collab_start[j + 1] {
            s.collab[cursor[j]].0
        } else {
            u32::MAX
        }
    };
    let mut next: [u32; LANES] = std::array::from_fn(|j| next_post(&cursor, j));
    for &p in &sh.allowed {
        let pu = p as usize;
        let mut collab = [0f32; LANES];
        let mut here = false;
        for j in 0..LANES {
            here |= next[j] == p;
        }
        if here {
            for j in 0..LANES {
                if next[j] == p {
                    collab[j] = s.collab[cursor[j]].1;
                    cursor[j] += 1;
                    next[j] = next_post(&cursor, j);
                }
            }
        }
        let content = sh.content_lanes(&s.profiles, pu);
        let (rec, eng) = (sh.recency[pu], sh.engagement[pu]);
        let mut score = [0f32; LANES];
        for j in 0..LANES {
            score[j] = w.combine([
                norm(0, j, collab[j]),
                norm(1, j, content[j]),
                norm(2, j, rec),
                norm(3, j, eng),
            ]);
        }
        let mut any = false;
        for j in 0..LANES {
            any |= score[j] >= s.tops.thresholds[j];
        }
        if any {
            let mask = s.excluded[pu];
            for (j, &sc) in score.iter().enumerate().take(active) {
                if mask & (1 << j) == 0 && sc >= s.tops.thresholds[j] {
                    s.tops.push(j, p, sc);
                }
            }
        }
    }

    // results, then the scratch back to zero for the next block
    for lane in 0..active {
        s.sorted.clear();
        s.sorted.extend_from_slice(s.tops.row(lane));
        s.sorted.sort_unstable();
        let base = lane * k;
        write_row(
            &s.sorted,
            &mut idx_out[base..base + k],
            &mut sc_out[base..base + k],
        );
        for (slot, e) in s.sorted.iter().enumerate() {
            let p = e.index as usize;
            let entries = &s.collab[s.collab_start[lane]..s.collab_start[lane + 1]];
            let collab = match entries.binary_search_by_key(&(p as u32), |e| e.0) {
                Ok(i) => entries[i].1,
                Err(_) => 0.0,
            };
            let raw = [
                collab,
                sh.content_lane(&s.profiles, p, lane),
                sh.recency[p],
                sh.engagement[p],
            ];
            let co = &mut comp_out[(base + slot) * 4..(base + slot + 1) * 4];
            for c in 0..4 {
                co[c] = norm(c, lane, raw[c]);
            }
        }
    }
    for &u in block {
        let excluded = &mut s.excluded;
        sh.excluded_posts(u, |p| excluded[p as usize] = 0);
    }

    for &t in &s.profile_terms {
        s.profiles[t as usize * LANES..(t as usize + 1) * LANES].fill(0.0);
    }
    s.profile_terms.clear();
}
