//! Candidate retrieval, then the exact hybrid score on the candidates only: the `candidates`
//! mode of [`crate::score::HybridModel::topk`] (`config.retrieval`, [`RetrievalSettings`]).
//! Cost per user ~ the settings' sizes instead of the number of posts.
//!
//! A user's pool is the union of three sources, each cut to its strongest posts:
//! - collaborative (`collaborative`): the posts the collaborative model scores > 0 (neighbours
//!   of the history for item-item and ridge, the neighbours' histories for user-user);
//! - content (`content`): an inverted index over the posts' TF-IDF rows (weights pre-divided by
//!   the post's norm, so a dot product with the profile is the cosine), each term's postings
//!   ordered by weight and cut to `posting_limit`, queried with the user's `content_terms`
//!   strongest profile terms ([`content_profile`], the one definition); the best partial dot
//!   products are kept and their exact cosines computed;
//! - prior (`prior`): the posts best by `weights.recency x recency + weights.engagement x
//!   engagement`, both min-max normalized over all allowed posts (the fresh and the popular).
//!
//! Posts the user may not be shown never enter. When the pool is larger than `budget`, the
//! `budget` posts best by a proxy of the score are kept: the exact score but for content, which
//! is the exact cosine for the content candidates and the index's partial dot product (or 0) for
//! the others. The kept posts are then scored exactly as the exhaustive path scores them, each
//! component normalized per user:
//! - recency, engagement: over every post the user may be shown (exact: the allowed posts
//!   sorted by each, as the exhaustive path reads them);
//! - collaborative: over every post the model scores, plus 0 when some post the user may be
//!   shown has no score (exact: the model's list is complete);
//! - content, maximum: over the content candidates and the scored posts. Exact when the best
//!   match is among them, which a complete query guarantees (every profile term queried with
//!   untruncated postings and `content` at least the posts they reach); otherwise a lower
//!   bound, which stretches every content value of the user (APPROXIMATE);
//! - content, minimum: 0 when some post the user may be shown shares no term with the profile
//!   (exact: its cosine is 0, TF-IDF weights being >= 0). When every such post shares a term, a
//!   complete query computes the minimum exactly; an incomplete one takes 0 (APPROXIMATE: on
//!   text where common words reach every post, the exhaustive minimum is a small positive
//!   cosine).
//!
//! With `budget`, `collaborative`, `content` and `prior` at least the number of posts and
//! complete queries, the result is the exhaustive one bit for bit (`tests/retrieval.rs`).
//! `scripts/bench_retrieval.py` measures how far smaller settings stray, and how fast they are.

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::collaborative::{CollaborativeScorer, Lane};
use crate::config::RetrievalSettings;
use crate::score::{content_profile, lane_range, score_in_blocks, HybridResult, Shared};
use crate::similarity::Accumulator;
use crate::topk::{write_row, Scored, TopK};
use crate::Result;

/// Users per parallel task (the cancel token is checked between them).
const USERS_PER_TASK: usize = 32;

/// What retrieval prepares once per model: the inverted index and the prior order.
pub(crate) struct Retriever {
    settings: RetrievalSettings,
    /// Term `t`'s postings are `post[start[t]..start[t + 1]]` with their weights (TF-IDF / the
    /// post's norm) in `impact`: allowed posts only, by descending weight (ties: lower post), at
    /// most `posting_limit`.
    start: Vec<usize>,
    post: Vec<u32>,
    impact: Vec<f32>,
    /// Every weight > 0 (TF-IDF always): the branchless accumulation applies.
    positive: bool,
    /// Allowed posts having term `t`, before the cut.
    df: Vec<u32>,
    /// The allowed posts by descending prior (ties: lower post).
    by_prior: Vec<u32>,
}

impl Retriever {
    pub(crate) fn new(sh: &Shared, settings: RetrievalSettings) -> Retriever {
        let tfidf = sh.tfidf.view();
        let n_terms = tfidf.ncols;
        let mut lists: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n_terms];
        for &p in &sh.allowed {
            let (terms, vals) = tfidf.row(p as usize);
            let inv = sh.inv_norm[p as usize];
            for (&t, &x) in terms.iter().zip(vals) {
                lists[t as usize].push((p, x * inv));
            }
        }
        let df: Vec<u32> = lists.iter().map(|l| l.len() as u32).collect();
        let limit = settings.posting_limit;
        lists.par_iter_mut().for_each(|l| {
            let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            if l.len() > limit {
                l.select_nth_unstable_by(limit, order);
                l.truncate(limit);
            }
            l.sort_unstable_by(order);
        });
        let mut start = Vec::with_capacity(n_terms + 1);
        start.push(0);
        let nnz = lists.iter().map(Vec::len).sum();
        let (mut post, mut impact) = (Vec::with_capacity(nnz), Vec::with_capacity(nnz));
        for l in lists {
            post.extend(l.iter().map(|e| e.0));
            impact.extend(l.iter().map(|e| e.1));
            start.push(post.len());
        }
        let positive = impact.iter().all(|&x| x > 0.0);

        // the prior: recency and engagement by their weights, normalized over the allowed posts
        let range = |v: &[f32]| {
            sh.allowed
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &p| {
                    (l.min(v[p as usize]), h.max(v[p as usize]))
                })
        };
        let scaled = |v: &[f32], w: f32| -> Vec<f32> {
            let (l, h) = range(v);
            let s = if h > l { 1.0 / (h - l) } else { 0.0 };
            v.iter().map(|&x| w * (x - l) * s).collect()
        };
        let rec = scaled(&sh.recency, sh.weights.recency);
        let eng = scaled(&sh.engagement, sh.weights.engagement);
        let prior: Vec<f32> = rec.iter().zip(&eng).map(|(r, e)| r + e).collect();
        let mut by_prior = sh.allowed.clone();
        by_prior.par_sort_unstable_by(|&a, &b| {
            prior[b as usize]
                .total_cmp(&prior[a as usize])
                .then(a.cmp(&b))
        });
        Retriever {
            settings,
            start,
            post,
            impact,
            positive,
            df,
            by_prior,
        }
    }

    fn postings(&self, t: u32) -> (&[u32], &[f32]) {
        let range = self.start[t as usize]..self.start[t as usize + 1];
        (&self.post[range.clone()], &self.impact[range])
    }

    /// The top-k of each of `users` from their candidates (the same shape as the exhaustive
    /// path's result).
    pub(crate) fn topk(
        &self,
        sh: &Shared,
        scorer: &dyn CollaborativeScorer,
        k: usize,
        users: &[usize],
        cancel: &Cancel,
    ) -> Result<HybridResult> {
        let n_posts = sh.recency.len();
        let n_terms = sh.tfidf.ncols;
        score_in_blocks(
            k,
            users,
            USERS_PER_TASK,
            cancel,
            || UserScratch::new(n_posts, n_terms, k, scorer),
            |s, block, idx, sc, comp| {
                for (i, &u) in block.iter().enumerate() {
                    self.score_user(
                        sh,
                        scorer,
                        u,
                        s,
                        &mut idx[i * k..(i + 1) * k],
                        &mut sc[i * k..(i + 1) * k],
                        &mut comp[i * k * 4..(i + 1) * k * 4],
                    );
                }
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn score_user(
        &self,
        sh: &Shared,
        scorer: &dyn CollaborativeScorer,
        user: usize,
        s: &mut UserScratch,
        idx_out: &mut [i64],
        sc_out: &mut [f32],
        comp_out: &mut [f32],
    ) {
        let cfg = &self.settings;

        // the posts never shown, and how many of the allowed posts they are
        let mut n_excluded = 0usize;
        {
            let excluded = &mut s.excluded;
            sh.excluded_posts(user, |p| {
                if excluded[p as usize] == 0 {
                    excluded[p as usize] = 1;
                    n_excluded += sh.is_allowed(p) as usize;
                }
            });
        }
        let n_shown = sh.allowed.len() - n_excluded;

        // collaborative: the model's scores stay in `s.collab.acc` until the end
        scorer.score_into(user, &mut s.model, &mut Lane::new(&mut s.collab));
        let (mut collab_lo, mut collab_hi) = (f32::INFINITY, f32::NEG_INFINITY);
        let mut seen = 0usize;
        s.collab_list.clear();
        for &p in &s.collab.touched {
            if s.excluded[p as usize] != 0 || !sh.is_allowed(p) {
                continue;
            }
            let v = s.collab.acc[p as usize];
            seen += 1;
            collab_lo = collab_lo.min(v);
            collab_hi = collab_hi.max(v);
            if v > 0.0 {
                s.collab_list.push((p, v));
            }
        }
        if seen < n_shown {
            collab_lo = collab_lo.min(0.0);
            collab_hi = collab_hi.max(0.0);
        }
        strongest(&mut s.collab_list, cfg.collaborative);

        // content: the profile (dense, for the exact cosines) and the index's candidates
        s.profile_terms.clear();
        {
            let (dense, terms) = (&mut s.profile_dense, &mut s.profile_terms);
            content_profile(
                sh.interactions.view().row(user),
                sh.tfidf.view(),
                &mut s.profile_acc,
                |t, w| {
                    dense[t as usize] = w;
                    terms.push((t, w));
                },
            );
        }
        s.profile_terms
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let queried = s.profile_terms.len().min(cfg.content_terms);
        let mut complete = queried == s.profile_terms.len();
        for &(t, w) in &s.profile_terms[..queried] {
            let (posts, impacts) = self.postings(t);
            complete &= posts.len() == self.df[t as usize] as usize;
            if self.positive {
                // the profile of positive TF-IDF rows is positive: every product is > 0 (a zero
                // weight adds nothing; the two ways of recording touches must not mix)
                if w > 0.0 {
                    s.content.add_positive(posts, impacts, w);
                }
            } else {
                for (&p, &x) in posts.iter().zip(impacts) {
                    s.content.add(p, w * x);
                }
            }
        }
        let n = s.content.count;
        s.content.touched.extend_from_slice(&s.content.buf[..n]);
        s.content.count = 0;
        s.content_list.clear();
        for &p in &s.content.touched {
            if s.excluded[p as usize] == 0 {
                s.content_list.push((p, s.content.acc[p as usize]));
            }
        }
        let reached = s.content_list.len();
        strongest(&mut s.content_list, cfg.content);
        // the content candidates' exact cosines replace the index's partial sums: the proxy
        // below and content's maximum read them
        let mut content_hi = f32::NEG_INFINITY;
        for e in s.content_list.iter_mut() {
            e.1 = sh.content_of(&s.profile_dense, e.0 as usize);
            s.content.acc[e.0 as usize] = e.1;
            content_hi = content_hi.max(e.1);
        }

        // the pool: every source's posts; past the budget, the best by a proxy of the score
        // that is exact but for content (the index's partial dot product in its place)
        s.union.clear();
        let sources = s.collab_list.iter().chain(&s.content_list).map(|e| e.0);
        let prior = self
            .by_prior
            .iter()
            .copied()
            .filter(|&p| s.excluded[p as usize] == 0)
            .take(cfg.prior);
        for p in sources.chain(prior) {
            if !s.in_union[p as usize] {
                s.in_union[p as usize] = true;
                s.union.push(p);
            }
        }
        let rec = lane_range(&sh.by_recency, &sh.recency, &s.excluded, 0);
        let eng = lane_range(&sh.by_engagement, &sh.engagement, &s.excluded, 0);
        if s.union.len() > cfg.budget {
            let approx_hi = s.content_list.iter().fold(0f32, |h, e| h.max(e.1));
            let inv = |(l, h): (f32, f32)| if h > l { 1.0 / (h - l) } else { 0.0 };
            let (c_inv, a_inv, r_inv, e_inv) = (
                inv((collab_lo, collab_hi)),
                inv((0.0, approx_hi)),
                inv(rec),
                inv(eng),
            );
            let w = sh.weights;
            s.proxy.clear();
            for &p in &s.union {
                let pu = p as usize;
                let score = w.combine([
                    (s.collab.acc[pu] - collab_lo) * c_inv,
                    s.content.acc[pu] * a_inv,
                    (sh.recency[pu] - rec.0) * r_inv,
                    (sh.engagement[pu] - eng.0) * e_inv,
                ]);
                s.proxy.push((p, score));
            }
            strongest(&mut s.proxy, cfg.budget);
            for &p in &s.union {
                s.in_union[p as usize] = false;
            }
            s.union.clear();
            for &(p, _) in &s.proxy {
                s.in_union[p as usize] = true;
                s.union.push(p);
            }
        }

        // the exact content of the candidates, and its range
        s.union_content.clear();
        for &p in &s.union {
            let c = sh.content_of(&s.profile_dense, p as usize);
            content_hi = content_hi.max(c);
            s.union_content.push(c);
        }
        let content_lo = if reached == n_shown && complete && !s.profile_terms.is_empty() {
            // every post the user may be shown shares a term with the profile
            let mut lo = f32::INFINITY;
            for &p in &s.content.touched {
                if s.excluded[p as usize] != 0 {
                    continue;
                }
                let c = sh.content_of(&s.profile_dense, p as usize);
                lo = lo.min(c);
                content_hi = content_hi.max(c);
            }
            lo
        } else {
            0.0f32.min(content_hi)
        };

        let ranges = [(collab_lo, collab_hi), (content_lo, content_hi), rec, eng];
        let mut lo4 = [0f32; 4];
        let mut scale = [0f32; 4];
        for (c, (l, h)) in ranges.into_iter().enumerate() {
            lo4[c] = l;
            if h > l {
                scale[c] = 1.0 / (h - l);
            }
        }
        let norm = |c: usize, v: f32| (v - lo4[c]) * scale[c];
        let w = sh.weights;
        s.top.clear();
        for (&p, &content) in s.union.iter().zip(&s.union_content) {
            let pu = p as usize;
            let score = w.combine([
                norm(0, s.collab.acc[pu]),
                norm(1, content),
                norm(2, sh.recency[pu]),
                norm(3, sh.engagement[pu]),
            ]);
            s.top.push(p, score);
        }
        s.top.drain_sorted(&mut s.sorted);
        write_row(&s.sorted, idx_out, sc_out);
        for (slot, e) in s.sorted.iter().enumerate() {
            let p = e.index as usize;
            let raw = [
                s.collab.acc[p],
                sh.content_of(&s.profile_dense, p),
                sh.recency[p],
                sh.engagement[p],
            ];
            for c in 0..4 {
                comp_out[slot * 4 + c] = norm(c, raw[c]);
            }
        }

        // the scratch back to zero for the next user
        sh.excluded_posts(user, |p| s.excluded[p as usize] = 0);
        for acc in [&mut s.collab, &mut s.content] {
            for i in 0..acc.touched.len() {
                let p = acc.touched[i];
                acc.take(p);
            }
            acc.touched.clear();
        }
        for &(t, _) in &s.profile_terms {
            s.profile_dense[t as usize] = 0.0;
        }
        for &p in &s.union {
            s.in_union[p as usize] = false;
        }
    }
}

/// Keeps the `cap` largest values of `list` (ties: the lower post), in no particular order.
fn strongest(list: &mut Vec<(u32, f32)>, cap: usize) {
    if list.len() > cap {
        list.select_nth_unstable_by(cap, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        list.truncate(cap);
    }
}

/// Per-thread scratch of the candidate path: dense arrays over posts and terms, reset after
/// each user by walking only what that user touched.
struct UserScratch {
    collab: Accumulator,
    model: Accumulator,
    collab_list: Vec<(u32, f32)>,
    profile_acc: Accumulator,
    profile_dense: Vec<f32>,
    profile_terms: Vec<(u32, f32)>,
    content: Accumulator,
    content_list: Vec<(u32, f32)>,
    /// 1: the post is never shown to the current user (bit 0, as [`lane_range`] reads it).
    excluded: Vec<u32>,
    in_union: Vec<bool>,
    union: Vec<u32>,
    proxy: Vec<(u32, f32)>,
    union_content: Vec<f32>,
    top: TopK,
    sorted: Vec<Scored>,
}

impl UserScratch {
    fn new(n_posts: usize, n_terms: usize, k: usize, scorer: &dyn CollaborativeScorer) -> Self {
        UserScratch {
            collab: Accumulator::new(n_posts, 1),
            model: scorer.scratch(),
            collab_list: Vec::new(),
            profile_acc: Accumulator::new(n_terms, 1),
            profile_dense: vec![0.0; n_terms],
            profile_terms: Vec::new(),
            content: Accumulator::new(n_posts, 1),
            content_list: Vec::new(),
            excluded: vec![0; n_posts],
            in_union: vec![false; n_posts],
            union: Vec::new(),
            proxy: Vec::new(),
            union_content: Vec::new(),
            top: TopK::new(k),
            sorted: Vec::with_capacity(k),
        }
    }
}
