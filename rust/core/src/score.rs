//! The hybrid score: collaborative, content, recency and engagement components, each min-max
//! normalized per user over the posts that user may be shown (content: or the cosine itself,
//! `content_normalization = "cosine"`), combined by [`HybridWeights::combine`], top-k per user
//! with every component kept beside the score.
//!
//! - collaborative: the [`CollaborativeScorer`] that `config.collaborative` names
//!   (`collaborative.rs`: user-user, item-item, ridge);
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
//! Every setting comes from one [`ScoringConfig`]; the kernels check a [`Cancel`] token between
//! blocks of users. With `retrieval.mode = "candidates"`, [`HybridModel::topk`] scores only each
//! user's retrieved candidates by the same formula (`retrieval.rs`; this module's exhaustive
//! path stays the reference).

use std::collections::BTreeMap;
use std::sync::Arc;

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::collaborative::{build_scorer, CollaborativeScorer, Lane};
use crate::config::{
    ContentNormalization, HybridWeights, InteractionWeighting, RetrievalMode, ScoringConfig,
};
use crate::error::{check_all_non_negative, check_index_or_none, check_len};
use crate::retrieval::Retriever;
use crate::similarity::Accumulator;
use crate::sparse::{Csr, CsrRef};
use crate::topk::{write_row, FlatTopK, Scored};
use crate::weighting::weight_interactions;
use crate::{Error, Result};

/// Users scored together: the lanes of the block kernel. Each post's TF-IDF row is read once
/// per block and its content score computed for every lane at once (the per-user loops over all
/// posts were most of the time); a `u32` per post marks the lanes that exclude it.
pub const LANES: usize = 32;

/// Per-post inputs of the hybrid score.
pub struct Posts<'a> {
    /// posts x terms, TF-IDF rows (shared: a [`HybridModel`] keeps it without a copy).
    pub tfidf: Arc<Csr<f32>>,
    pub age_days: &'a [f32],
    pub engagement: &'a [f32],
    /// The author's user index, or -1.
    pub author: &'a [i64],
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

/// The checks of the inputs the hybrid and the stored profiles (`profile.rs`) share: finite
/// users x posts `interactions`, one finite TF-IDF row and one author (-1 or a user) per post.
pub(crate) fn validate_posts(
    x: &CsrRef<f32>,
    post_tfidf: &CsrRef<f32>,
    post_author: &[i64],
) -> Result<()> {
    let n_posts = x.ncols;
    x.check_finite("interactions")?;
    if post_tfidf.nrows != n_posts {
        return Err(Error::invalid(
            "post_tfidf",
            format!(
                "has {} rows, expected one per post ({n_posts})",
                post_tfidf.nrows
            ),
        ));
    }
    post_tfidf.check_finite("post_tfidf")?;
    check_len("post_author", post_author.len(), n_posts, "post")?;
    check_index_or_none("post_author", post_author, x.nrows, "a user index")
}

/// The data's checks (the settings are [`ScoringConfig::validate`]'s).
fn validate_data(
    x: &CsrRef<f32>,
    posts: &Posts,
    exclude: Option<&CsrRef<f32>>,
    candidates: Option<&[usize]>,
) -> Result<()> {
    let n_posts = x.ncols;
    validate_posts(x, &posts.tfidf.view(), posts.author)?;
    check_len("post_age_days", posts.age_days.len(), n_posts, "post")?;
    check_len("post_engagement", posts.engagement.len(), n_posts, "post")?;
    check_all_non_negative("post_age_days", posts.age_days)?;
    check_all_non_negative("post_engagement", posts.engagement)?;
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

/// What every block reads: the per-post inputs, computed once per call (the candidate path of
/// `retrieval.rs` reads them too).
pub(crate) struct Shared {
    pub(crate) interactions: Arc<Csr<f32>>,
    exclude: Option<Csr<f32>>,
    pub(crate) tfidf: Arc<Csr<f32>>,
    /// 1 / the post's TF-IDF norm (0 for a post without terms).
    pub(crate) inv_norm: Vec<f32>,
    pub(crate) recency: Vec<f32>,
    pub(crate) engagement: Vec<f32>,
    pub(crate) allowed: Vec<u32>,
    /// Bit `p` set: post `p` is allowed (None: all are).
    pub(crate) allowed_bits: Option<Vec<u64>>,
    /// The allowed posts by ascending recency and by ascending engagement: a lane's minimum and
    /// maximum of those components are the first and last posts it does not exclude.
    pub(crate) by_recency: Vec<u32>,
    pub(crate) by_engagement: Vec<u32>,
    by_author: BTreeMap<usize, Vec<u32>>,
    pub(crate) weights: HybridWeights,
    /// Content is the cosine itself (`content_normalization = "cosine"`), not min-max scaled.
    pub(crate) content_is_cosine: bool,
}

impl Shared {
    /// The posts never shown to `user`: their history, `exclude` row and own posts (a post may
    /// come more than once).
    pub(crate) fn excluded_posts(&self, user: usize, mut f: impl FnMut(u32)) {
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

    /// The range content is scaled by, given the min and max of the user's cosines: those, or
    /// [0, 1] when content is the cosine itself.
    pub(crate) fn content_range(&self, min_max: (f32, f32)) -> (f32, f32) {
        if self.content_is_cosine {
            (0.0, 1.0)
        } else {
            min_max
        }
    }

    /// Post `p` is among the allowed posts (`candidates`).
    #[inline]
    pub(crate) fn is_allowed(&self, p: u32) -> bool {
        match &self.allowed_bits {
            Some(bits) => bits[p as usize / 64] & (1 << (p % 64)) != 0,
            None => true,
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

/// A user's content profile, the one definition (the hybrid's content component and the stored
/// profiles of `profile.rs`): the mean TF-IDF row of the posts in `history` (the user's row of
/// the interactions) with value > 0, divided by its L2 norm. Calls `emit(term, weight)` once per
/// term of the profile, in no particular order (never when the user engaged with nothing).
/// `acc` (one slot per term) is left zeroed.
#[inline(always)]
pub(crate) fn content_profile(
    (posts, values): (&[u32], &[f32]),
    tfidf: CsrRef<f32>,
    acc: &mut Accumulator,
    mut emit: impl FnMut(u32, f32),
) {
    let mut engaged = 0usize;
    for (&p, &v) in posts.iter().zip(values) {
        if v > 0.0 {
            engaged += 1;
            let (terms, tv) = tfidf.row(p as usize);
            for (&t, &x) in terms.iter().zip(tv) {
                acc.add(t, x);
            }
        }
    }
    let inv = if engaged > 0 {
        1.0 / engaged as f32
    } else {
        0.0
    };
    let norm2: f64 = acc
        .touched
        .iter()
        .map(|&t| ((acc.get(t) * inv) as f64).powi(2))
        .sum();
    let norm = norm2.sqrt() as f32;
    acc.drain(|_, t, sum| {
        if norm > 0.0 {
            emit(t, sum * inv / norm);
        }
    });
}

/// The hybrid top-k of each of `users`. See the module documentation. A convenience that copies
/// `interactions` and `exclude` into a [`HybridModel`] and cannot be cancelled: a caller that
/// scores users in batches, has the matrices owned already or needs precomputed item
/// neighbours builds the model itself.
pub fn hybrid_topk(
    interactions: CsrRef<f32>,
    posts: &Posts,
    users: &[usize],
    config: &ScoringConfig,
    exclude: Option<CsrRef<f32>>,
    candidates: Option<&[usize]>,
) -> Result<HybridResult> {
    // HybridModel::new validates the rest; bad users are refused before building it
    check_users(users, interactions.nrows)?;
    let cancel = Cancel::new();
    HybridModel::new(
        Arc::new(interactions.to_owned()),
        posts,
        config,
        exclude.map(|e| e.to_owned()),
        candidates,
        None,
        &cancel,
    )?
    .topk(users, &cancel)
}

pub(crate) fn check_users(users: &[usize], n_users: usize) -> Result<()> {
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
    /// The candidate path's index (`config.retrieval.mode` = `candidates`); None: exhaustive.
    retriever: Option<Retriever>,
}

impl HybridModel {
    /// Prepares the hybrid of `config` (k = `config.top_k`) over users x posts `interactions`
    /// (stored entries are the history, whatever their value) and `posts`. `exclude` (users x
    /// posts) and `candidates` (post indices) restrict what each user may be shown;
    /// `item_neighbors` (items x items) replaces the fit of the `item_item` model.
    pub fn new(
        interactions: Arc<Csr<f32>>,
        posts: &Posts,
        config: &ScoringConfig,
        exclude: Option<Csr<f32>>,
        candidates: Option<&[usize]>,
        item_neighbors: Option<Csr<f32>>,
        cancel: &Cancel,
    ) -> Result<HybridModel> {
        config.validate()?;
        validate_data(
            &interactions.view(),
            posts,
            exclude.as_ref().map(|e| e.view()).as_ref(),
            candidates,
        )?;
        let n_posts = interactions.ncols;
        let weighted = match config.weighting {
            InteractionWeighting::None => interactions.clone(),
            w => Arc::new(weight_interactions(
                interactions.view(),
                w,
                config.bm25_k1,
                config.bm25_b,
            )?),
        };
        let scorer = build_scorer(config, &interactions, &weighted, item_neighbors, cancel)?;
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
            .map(|&a| (-(a as f64) / config.recency_tau_days as f64).exp() as f32)
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
            tfidf: posts.tfidf.clone(),
            inv_norm: posts
                .tfidf
                .view()
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
            weights: config.weights,
            content_is_cosine: config.content_normalization == ContentNormalization::Cosine,
        };
        let retriever = (config.retrieval.mode == RetrievalMode::Candidates)
            .then(|| Retriever::new(&shared, config.retrieval));
        Ok(HybridModel {
            shared,
            scorer,
            k: config.top_k,
            retriever,
        })
    }

    pub fn n_users(&self) -> usize {
        self.shared.interactions.nrows
    }

    /// The top-k of each of `users` (rows of the interactions), in that order: every allowed
    /// post scored, or the retrieved candidates only (`config.retrieval.mode`).
    pub fn topk(&self, users: &[usize], cancel: &Cancel) -> Result<HybridResult> {
        check_users(users, self.n_users())?;
        let (shared, scorer, k) = (&self.shared, self.scorer.as_ref(), self.k);
        if let Some(r) = &self.retriever {
            return r.topk(shared, scorer, k, users, cancel);
        }
        let n_posts = shared.interactions.ncols;
        let n_terms = shared.tfidf.ncols;
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        score_in_blocks(
            k,
            users,
            LANES,
            cancel,
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
            |s, block, idx_out, sc_out, comp_out| {
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
        )
    }
}

/// Scores `users` into a [`HybridResult`] in blocks of `block` users, the blocks in parallel:
/// each thread makes its scratch with `init`, and `score` fills one block's rows (indices,
/// scores, components). Blocks not started when `cancel` fires are skipped, and the call errs.
/// The one driver of both paths of [`HybridModel::topk`].
pub(crate) fn score_in_blocks<S>(
    k: usize,
    users: &[usize],
    block: usize,
    cancel: &Cancel,
    init: impl Fn() -> S + Sync + Send,
    score: impl Fn(&mut S, &[usize], &mut [i64], &mut [f32], &mut [f32]) + Sync + Send,
) -> Result<HybridResult> {
    let mut out = HybridResult {
        k,
        indices: vec![-1; users.len() * k],
        scores: vec![0.0; users.len() * k],
        components: vec![0.0; users.len() * k * 4],
    };
    out.indices
        .par_chunks_mut(block * k)
        .zip(out.scores.par_chunks_mut(block * k))
        .zip(out.components.par_chunks_mut(block * k * 4))
        .zip(users.par_chunks(block))
        .for_each_init(init, |s, (((idx, sc), comp), users)| {
            if !cancel.is_cancelled() {
                score(s, users, idx, sc, comp)
            }
        });
    cancel.check()?;
    Ok(out)
}

/// The minimum and maximum of `values` over the posts `lane` does not exclude, `order` being
/// the allowed posts by ascending value.
pub(crate) fn lane_range(
    order: &[u32],
    values: &[f32],
    excluded: &[u32],
    lane: usize,
) -> (f32, f32) {
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
        scorer.score_into(u, &mut s.model, &mut Lane::new(&mut s.collab_acc));
        let acc = &mut s.collab_acc;
        acc.touched.sort_unstable();
        let collab = &mut s.collab;
        acc.drain(|_, p, value| {
            if sh.is_allowed(p) {
                collab.push((p, value));
            }
        });
        content_profile(
            sh.interactions.view().row(u),
            sh.tfidf.view(),
            &mut s.profile,
            |t, w| {
                s.profiles[t as usize * LANES + lane] = w;
                s.profile_terms.push(t);
            },
        );
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
        let content = sh.content_range((lo[1][j], hi[1][j]));
        let ranges = [(lo[0][j], hi[0][j]), content, rec, eng];
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
