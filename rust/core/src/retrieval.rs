//! Candidate retrieval, then the exact hybrid score on the candidates only: the `candidates`
//! mode of [`crate::score::HybridModel::topk`] (`config.retrieval`, [`RetrievalSettings`]).
//! Cost per user ~ the settings' sizes instead of the number of posts.
//!
//! A user's pool is the union of three sources, each cut to the posts best by the part of the
//! score it can tell before content is known exactly ("the prior" below is the non-personal
//! part, `weights.recency x recency + weights.engagement x engagement`, both min-max normalized
//! over all allowed posts: the fresh and the popular):
//! - collaborative (`collaborative`): the posts the collaborative model scores > 0 (neighbours
//!   of the history for item-item and ridge, the neighbours' histories for user-user), best by
//!   their weighted, normalized collaborative score plus the prior;
//! - content (`content`): an inverted index over the posts' TF-IDF rows (weights pre-divided by
//!   the post's norm, so a dot product with the profile is the cosine), each term's postings cut
//!   to the `posting_limit` posts that would score best for a profile of that term alone
//!   (`weights.content x weight + prior`), queried with the user's `content_terms` strongest
//!   profile terms ([`content_profile`], the one definition); the best by `weights.content x
//!   the partial dot product + prior` are kept and their exact cosines computed;
//! - prior (`prior`): the posts best by the prior. Their exact cosines come from an inverted
//!   index of their own (every term, nothing cut; a few tens of thousands of posts, summed into
//!   one array that stays in the caches), and the `budget` best by `weights.content x cosine +
//!   prior` join the pool. A feed's best posts are mostly fresh ones: on the benchmark's data
//!   this source finds most of the top-200 that the other two miss.
//!
//! (Cutting and choosing by content alone kept the posts that use a term most and missed the
//! fresh posts that match the user well: 37% of the exhaustive top-200 at 300,000 users on the
//! benchmark's data with the cosine normalization; docs/scaling.md has the figures.)
//!
//! Posts the user may not be shown never enter. When the pool is larger than `budget`, the
//! exact cosine of every post in the pool is computed and the `budget` posts best by the score
//! with content's scale estimated are kept (the exact score with `content_normalization =
//! "cosine"`). The kept posts are then scored exactly as the exhaustive path scores them, each
//! component normalized per user:
//! - recency, engagement: over every post the user may be shown (exact: the allowed posts
//!   sorted by each, as the exhaustive path reads them);
//! - collaborative: over every post the model scores, plus 0 when some post the user may be
//!   shown has no score (exact: the model's list is complete);
//! - content with `content_normalization = "cosine"`: the cosine itself (exact: each post's
//!   score then depends on that post alone, whatever else was retrieved);
//! - content with `min_max`, maximum: over the posts in the pool. Exact when the best match
//!   is among them, which a complete query guarantees (every profile term queried with
//!   untruncated postings and `content` at least the posts they reach); otherwise a lower
//!   bound, which stretches every content value of the user (APPROXIMATE);
//! - content with `min_max`, minimum: 0 when some post the user may be shown shares no term
//!   with the profile (exact: its cosine is 0, TF-IDF weights being >= 0). When every such post
//!   shares a term, a complete query computes the minimum exactly; an incomplete one takes 0
//!   (APPROXIMATE: on text where common words reach every post, the exhaustive minimum is a
//!   small positive cosine).
//!
//! With `budget`, `collaborative`, `content` and `prior` at least the number of posts and
//! complete queries, the result is the exhaustive one bit for bit (`tests/retrieval.rs`).
//! `scripts/bench_retrieval.py` measures how far smaller settings stray, and how fast they are.

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::collaborative::{CollaborativeScorer, Lane};
use crate::config::RetrievalSettings;
use crate::score::{content_profile, score_in_blocks, HybridResult, Shared};
use crate::shuffle::prefetch;
use crate::similarity::Accumulator;
use crate::topk::{write_row, Scored, TopK};
use crate::Result;

/// Users per parallel task (the cancel token is checked between them).
const USERS_PER_TASK: usize = 32;

/// Posts per [`Window`] (a power of two): two arrays of 16 KB and 1 KB of marks and flags,
/// which stay in the fastest caches whatever the number of posts.
const WINDOW: usize = 4096;

/// What retrieval prepares once per model: the inverted index and the prior order.
///
/// Per user, nothing is sized by the number of posts: the user's excluded posts, collaborative
/// scores, content matches and pool are short lists sorted by post, summed and joined one
/// [`Window`] of posts at a time. (Arrays of one slot per post, written at scattered posts,
/// fall out of the processor's caches as the catalogue grows: the time per user grew with the
/// posts although the work did not; docs/scaling.md, issue 17.)
pub(crate) struct Retriever {
    settings: RetrievalSettings,
    /// Term `t`'s postings are `post[start[t]..start[t + 1]]` with their weights (TF-IDF / the
    /// post's norm) in `impact`: allowed posts only, the `posting_limit` of highest weight
    /// (ties: lower post), stored by ascending post so that a query reads them in post order.
    start: Vec<usize>,
    post: Vec<u32>,
    impact: Vec<f32>,
    /// Every weight > 0 (TF-IDF always): only the profile's positive terms add anything.
    positive: bool,
    /// Allowed posts having term `t`, before the cut.
    df: Vec<u32>,
    /// The allowed posts by descending prior (ties: lower post).
    by_prior: Vec<u32>,
    /// `by_prior[..prior]`, by ascending post: the prior's candidates but for the excluded.
    prior_head: Vec<u32>,
    /// The recency and engagement of each of `prior_head`, read in order (most of a pool).
    prior_values: Vec<[f32; 2]>,
    /// An inverted index over `prior_head` (every term, nothing cut): term `t`'s postings are
    /// `head_post[head_start[t]..head_start[t + 1]]` (positions in `prior_head`) with their
    /// TF-IDF weights in `head_weight`. A user's profile terms read it into one sum per prior
    /// post: their exact cosines, at a fraction of the cost of reading each post's row at its
    /// scattered place.
    head_start: Vec<usize>,
    head_post: Vec<u32>,
    head_weight: Vec<f32>,
    /// 1 / the TF-IDF norm, and the prior, of each of `prior_head`.
    head_inv_norm: Vec<f32>,
    head_prior: Vec<f32>,
    /// Positions in `prior_head` of its `2 x budget` highest priors, ascending (empty when the
    /// head holds no more than `budget` posts): a sample of the posts likely to be picked.
    head_sample: Vec<u32>,
    /// Each post's prior (recency and engagement by their weights, normalized over the
    /// allowed posts).
    prior: Vec<f32>,
    /// Each post's position in `by_prior` (`u32::MAX`: not allowed).
    prior_rank: Vec<u32>,
    /// What scoring reads of a post, in one place: its TF-IDF row is `terms[posts[p].start..
    /// posts[p + 1].start]`, (term, value) pairs. A user's scoring reads a few thousand posts
    /// at scattered places; from these, each costs two or three cache lines instead of the
    /// five of the separate arrays (row bounds, terms, values, norm, recency, engagement).
    posts: Vec<PostData>,
    terms: Vec<(u32, f32)>,
}

/// One post's data for scoring (see [`Retriever::posts`]); 32 bytes, two to a cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct PostData {
    start: usize,
    inv_norm: f32,
    recency: f32,
    engagement: f32,
}

impl Retriever {
    pub(crate) fn new(sh: &Shared, settings: RetrievalSettings) -> Retriever {
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
        // each term keeps the posts that would score best for a profile of that term alone
        // (its content weight x the post's weight, plus the prior): the fresh and popular
        // posts about the term, not only the ones that use it most
        let w_content = sh.weights.content;
        let key = |e: &(u32, f32)| content_and_prior(w_content, e.1, prior[e.0 as usize]);
        lists.par_iter_mut().for_each(|l| {
            if l.len() > limit {
                l.select_nth_unstable_by(limit, |a, b| {
                    key(b).total_cmp(&key(a)).then(a.0.cmp(&b.0))
                });
                l.truncate(limit);
            }
            l.sort_unstable_by_key(|e| e.0);
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

        let mut by_prior = sh.allowed.clone();
        by_prior.par_sort_unstable_by(|&a, &b| {
            prior[b as usize]
                .total_cmp(&prior[a as usize])
                .then(a.cmp(&b))
        });
        let mut prior_head = by_prior[..settings.prior.min(by_prior.len())].to_vec();
        prior_head.sort_unstable();
        let prior_values = prior_head
            .iter()
            .map(|&p| [sh.recency[p as usize], sh.engagement[p as usize]])
            .collect();
        let mut head_lists: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n_terms];
        for (i, &p) in prior_head.iter().enumerate() {
            let (terms, vals) = tfidf.row(p as usize);
            for (&t, &x) in terms.iter().zip(vals) {
                head_lists[t as usize].push((i as u32, x));
            }
        }
        let mut head_start = Vec::with_capacity(n_terms + 1);
        head_start.push(0);
        let (mut head_post, mut head_weight) = (Vec::new(), Vec::new());
        for l in head_lists {
            head_post.extend(l.iter().map(|e| e.0));
            head_weight.extend(l.iter().map(|e| e.1));
            head_start.push(head_post.len());
        }
        let head_inv_norm = prior_head
            .iter()
            .map(|&p| sh.inv_norm[p as usize])
            .collect();
        let head_prior: Vec<f32> = prior_head.iter().map(|&p| prior[p as usize]).collect();
        let head_sample = if prior_head.len() > settings.budget {
            let n = (2 * settings.budget).min(prior_head.len());
            let mut sample: Vec<u32> = by_prior[..n]
                .iter()
                .map(|p| {
                    let i = prior_head.binary_search(p);
                    i.expect("the head holds the prior's first posts") as u32
                })
                .collect();
            sample.sort_unstable();
            sample
        } else {
            Vec::new()
        };
        let mut prior_rank = vec![u32::MAX; sh.recency.len()];
        for (r, &p) in by_prior.iter().enumerate() {
            prior_rank[p as usize] = r as u32;
        }
        let n_posts = sh.recency.len();
        let mut posts = Vec::with_capacity(n_posts + 1);
        let mut terms = Vec::with_capacity(tfidf.indices.len());
        for p in 0..n_posts {
            posts.push(PostData {
                start: terms.len(),
                inv_norm: sh.inv_norm[p],
                recency: sh.recency[p],
                engagement: sh.engagement[p],
            });
            let (t, x) = tfidf.row(p);
            terms.extend(t.iter().copied().zip(x.iter().copied()));
        }
        posts.push(PostData {
            start: terms.len(),
            ..PostData::default()
        });
        Retriever {
            settings,
            start,
            post,
            impact,
            positive,
            df,
            by_prior,
            prior_head,
            prior_values,
            head_start,
            head_post,
            head_weight,
            head_inv_norm,
            head_prior,
            head_sample,
            prior,
            prior_rank,
            posts,
            terms,
        }
    }

    /// Cosine between one user's profile (dense over terms, pre-divided by its norm) and post
    /// `p`: the arithmetic of the exhaustive path's `Shared::content_lanes` (the same products
    /// summed in the same order), so both paths agree bit for bit.
    #[inline]
    fn content_of(&self, profile: &[f32], p: usize) -> f32 {
        let row = &self.terms[self.posts[p].start..self.posts[p + 1].start];
        let mut c = 0f32;
        for &(t, x) in row {
            c += x * profile[t as usize];
        }
        c * self.posts[p].inv_norm
    }

    /// [`Retriever::content_of`] of each of `posts`, into `out` (cleared first). The posts lie
    /// at scattered places: each one's data is prefetched `AHEAD` posts before its turn and its
    /// row half as far, so that their cache misses overlap instead of following one another.
    fn cosines(&self, profile: &[f32], posts: &[u32], out: &mut Vec<f32>) {
        const AHEAD: usize = 32;
        out.clear();
        for (n, &p) in posts.iter().enumerate() {
            if let Some(&q) = posts.get(n + AHEAD) {
                prefetch(&self.posts[q as usize]);
            }
            if let Some(&q) = posts.get(n + AHEAD / 2) {
                let row = self.posts[q as usize].start;
                if let Some(first) = self.terms.get(row) {
                    prefetch(first);
                }
                // and 64 bytes further: a row often reaches into the next cache line
                if let Some(next) = self.terms.get(row + 8) {
                    prefetch(next);
                }
            }
            out.push(self.content_of(profile, p as usize));
        }
    }

    /// The exact cosines of the pool's posts at positions `s.todo_at`, into `s.pool_content`
    /// (flagged exact), raising `content_hi` to their maximum.
    fn pool_cosines(&self, s: &mut UserScratch, content_hi: &mut f32) {
        s.todo.clear();
        s.todo.extend(s.todo_at.iter().map(|&i| s.pool[i as usize]));
        self.cosines(&s.profile_dense, &s.todo, &mut s.cos);
        for (&i, &c) in s.todo_at.iter().zip(&s.cos) {
            *content_hi = content_hi.max(c);
            s.pool_content[i as usize] = c;
            s.pool_exact[i as usize] = true;
        }
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
        let n_terms = sh.tfidf.ncols;
        score_in_blocks(
            k,
            users,
            USERS_PER_TASK,
            cancel,
            || UserScratch::new(n_terms, k, scorer),
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

    /// Adds `weight x impact` of each queried term's postings into `out`, one entry per post
    /// reached and not excluded (`excl`, sorted), by ascending post; `query` holds each term's
    /// range of postings still to read and the profile's weight.
    ///
    /// The postings being sorted by post, they are read one window of posts at a time: each
    /// term's postings in the window are added into the window's sums, term by term in query
    /// order, so that each post's sum is the very sum an accumulator over all posts computed.
    fn query_content(
        &self,
        query: &mut [(usize, usize, f32)],
        mut excl: &[u32],
        win: &mut Window,
        out: &mut Vec<(u32, f32)>,
    ) {
        // the lowest post not yet read opens the next window (windows without postings are
        // skipped)
        while let Some(first) = query
            .iter()
            .filter(|q| q.0 < q.1)
            .map(|q| self.post[q.0])
            .min()
        {
            let base = first as usize & !(WINDOW - 1);
            let end = base + WINDOW;
            for q in query.iter_mut() {
                let (mut i, w) = (q.0, q.2);
                while i < q.1 && (self.post[i] as usize) < end {
                    win.add(self.post[i] as usize - base, w * self.impact[i]);
                    i += 1;
                }
                q.0 = i;
            }
            below(&mut excl, base, |&p| p);
            win.unmark(base, below(&mut excl, end, |&p| p));
            win.drain(|j, v| out.push(((base + j) as u32, v)));
        }
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

        // the posts never shown (sorted), and how many of the allowed posts they are
        s.excl.clear();
        sh.excluded_posts(user, |p| s.excl.push(p));
        s.excl.sort_unstable();
        s.excl.dedup();
        let n_excluded = s.excl.iter().filter(|&&p| sh.is_allowed(p)).count();
        let n_shown = sh.allowed.len() - n_excluded;

        // collaborative: the model's additions, grouped by window of posts (stably), summed per
        // post in the window's sums (each post's additions in the order they came, as the
        // exhaustive path's accumulator sums them); kept in `s.collab`, by post, for the posts
        // the user may be shown
        s.pairs.clear();
        scorer.score_into(user, &mut s.model, &mut Lane::pairs(&mut s.pairs));
        group_by_window(&s.pairs, &mut s.counts, &mut s.grouped);
        s.collab.clear();
        {
            let mut excl = &s.excl[..];
            for group in s
                .grouped
                .chunk_by(|a, b| a.0 as usize / WINDOW == b.0 as usize / WINDOW)
            {
                let base = group[0].0 as usize & !(WINDOW - 1);
                for &(p, v) in group {
                    s.win.add(p as usize - base, v);
                }
                below(&mut excl, base, |&p| p);
                s.win.unmark(base, below(&mut excl, base + WINDOW, |&p| p));
                let collab = &mut s.collab;
                s.win.drain(|j, v| {
                    let p = (base + j) as u32;
                    if sh.is_allowed(p) {
                        collab.push((p, v, false));
                    }
                });
            }
        }
        let (mut collab_lo, mut collab_hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &(_, v, _) in &s.collab {
            collab_lo = collab_lo.min(v);
            collab_hi = collab_hi.max(v);
        }
        if s.collab.len() < n_shown {
            collab_lo = collab_lo.min(0.0);
            collab_hi = collab_hi.max(0.0);
        }
        // the best by the part of the score known without content: collaborative (normalized)
        // and prior
        let collab_inv = if collab_hi > collab_lo {
            sh.weights.collaborative / (collab_hi - collab_lo)
        } else {
            0.0
        };
        s.collab_list.clear();
        for (i, &(p, v, _)) in s.collab.iter().enumerate() {
            if v > 0.0 {
                // by position in `s.collab`, which orders ties as the posts do
                let key = (v - collab_lo) * collab_inv + self.prior[p as usize];
                s.collab_list.push((i as u32, key));
            }
        }
        strongest(&mut s.collab_list, cfg.collaborative);
        for e in &s.collab_list {
            s.collab[e.0 as usize].2 = true;
        }

        // content: the profile (dense over terms, for the exact cosines) and the index's
        // candidates
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
        s.query.clear();
        for &(t, w) in &s.profile_terms[..queried] {
            let (from, to) = (self.start[t as usize], self.start[t as usize + 1]);
            complete &= to - from == self.df[t as usize] as usize;
            // positive impacts: a profile weight <= 0 adds nothing and is not read
            if !self.positive || w > 0.0 {
                s.query.push((from, to, w));
            }
        }
        s.content.clear();
        self.query_content(&mut s.query, &s.excl, &mut s.win, &mut s.content);
        let reached = s.content.len();
        s.content_list.clear();
        // the best by the part of the score the index estimates: content (partial) and prior
        let w_content = sh.weights.content;
        for (i, e) in s.content.iter().enumerate() {
            if let Some(ahead) = s.content.get(i + 64) {
                prefetch(&self.prior[ahead.0 as usize]);
            }
            let key = content_and_prior(w_content, e.1, self.prior[e.0 as usize]);
            s.content_list.push((i as u32, key));
        }
        strongest(&mut s.content_list, cfg.content);
        // the chosen ones' exact cosines, in post order (positions in `content` are by post):
        // the pool, the proxy and content's maximum read them; the others' partial sums are
        // never read again (every post of the pool without its exact cosine gets it below)
        positions_in_order(&s.content_list, &mut s.bits, &mut s.order);
        s.todo.clear();
        s.todo
            .extend(s.order.iter().map(|&i| s.content[i as usize].0));
        self.cosines(&s.profile_dense, &s.todo, &mut s.cos);
        let mut content_hi = f32::NEG_INFINITY;
        s.chosen.clear();
        for (&p, &c) in s.todo.iter().zip(&s.cos) {
            s.chosen.push((p, c));
            content_hi = content_hi.max(c);
        }

        // prior: the first `prior` posts of `by_prior` the user may be shown, that is
        // `prior_head` but for the excluded, plus one post from further down for each excluded
        // one in the window (found from the excluded posts' ranks, not by a walk)
        s.ranks.clear();
        s.ranks.extend(
            s.excl
                .iter()
                .map(|&p| self.prior_rank[p as usize])
                .filter(|&r| r != u32::MAX),
        );
        s.ranks.sort_unstable();
        let head = self.prior_head.len();
        let mut cut = head;
        for &r in &s.ranks {
            if (r as usize) >= cut {
                break;
            }
            cut = (cut + 1).min(self.by_prior.len());
        }
        s.extra.clear();
        s.extra.extend_from_slice(&self.by_prior[head..cut]);
        s.extra.sort_unstable();

        // the exact cosines of `prior_head`: each profile term's postings added into one sum
        // per prior post, terms in ascending order as a post's row adds them in `content_of`
        // (the terms not in the profile add only zeros there), so the sums are the same bit
        // for bit
        s.head_cos.clear();
        s.head_cos.resize(self.prior_head.len(), 0.0);
        s.terms_by_id.clear();
        s.terms_by_id.extend_from_slice(&s.profile_terms);
        s.terms_by_id.sort_unstable_by_key(|e| e.0);
        // (a slice of its own: through `s`, the sums' address would be read again at each step)
        let head_cos = &mut s.head_cos[..];
        for &(t, w) in &s.terms_by_id {
            let (from, to) = (self.head_start[t as usize], self.head_start[t as usize + 1]);
            for (&i, &x) in self.head_post[from..to]
                .iter()
                .zip(&self.head_weight[from..to])
            {
                head_cos[i as usize] += x * w;
            }
        }
        // of those, the `budget` best by content and prior join the pool (by position, that
        // is by post): the others could only enter the top-k through a collaborative score,
        // and the collaborative source holds those
        // (first a floor: the `budget`-th best of the sample; the sample alone has `budget`
        // posts that score that much, so a post below it cannot be picked and is never sorted)
        let cosine = |sums: &[f32], i: usize| sums[i] * self.head_inv_norm[i];
        s.sample_keys.clear();
        s.sample_keys.extend(self.head_sample.iter().map(|&i| {
            let i = i as usize;
            content_and_prior(w_content, cosine(&s.head_cos, i), self.head_prior[i])
        }));
        let floor = nth_highest(&mut s.sample_keys, cfg.budget);
        let picked = cosines_above(
            &mut s.head_cos,
            (&self.head_inv_norm, &self.head_prior),
            w_content,
            floor,
            &mut s.head_pick,
        );
        let kept = strongest_in(&mut s.head_pick[..picked], cfg.budget);
        positions_in_order(&s.head_pick[..kept], &mut s.bits, &mut s.head_order);

        // the pool, by post: the chosen collaborative and content posts and the prior's, with
        // each one's collaborative score and content (the exact cosine for the content
        // candidates and the prior's, 0 until computed below for the others), assembled
        // window by window as the content query is
        s.pool.clear();
        s.pool_collab.clear();
        s.pool_content.clear();
        s.pool_exact.clear();
        {
            let (mut content, mut collab) = (&s.chosen[..], &s.collab[..]);
            let (mut head, mut extra, mut excl) = (&s.head_order[..], &s.extra[..], &s.excl[..]);
            let win = &mut s.win;
            while let Some(first) = [
                content.first().map(|e| e.0),
                collab.first().map(|e| e.0),
                head.first().map(|&i| self.prior_head[i as usize]),
                extra.first().copied(),
            ]
            .into_iter()
            .flatten()
            .min()
            {
                let base = first as usize & !(WINDOW - 1);
                let end = base + WINDOW;
                let content = below(&mut content, end, |e| e.0);
                let collab = below(&mut collab, end, |e| e.0);
                for &(p, v) in content {
                    // marked, and flagged as holding its exact cosine
                    win.set_exact(p as usize - base, v);
                }
                for &(p, v, chosen) in collab {
                    let j = p as usize - base;
                    win.other[j] = v;
                    win.mark(j, chosen);
                }
                for &i in below(&mut head, end, |&i| self.prior_head[i as usize]) {
                    let p = self.prior_head[i as usize] as usize;
                    win.set_exact(p - base, s.head_cos[i as usize]);
                }
                for &p in below(&mut extra, end, |&p| p) {
                    win.mark(p as usize - base, true);
                }
                // `prior_head` holds the user's excluded posts too
                below(&mut excl, base, |&p| p);
                win.unmark(base, below(&mut excl, end, |&p| p));
                let (pool, pool_collab, pool_content, pool_exact) = (
                    &mut s.pool,
                    &mut s.pool_collab,
                    &mut s.pool_content,
                    &mut s.pool_exact,
                );
                win.drain_with_other(|j, v, o, exact| {
                    pool.push((base + j) as u32);
                    pool_content.push(v);
                    pool_collab.push(o);
                    pool_exact.push(exact);
                });
                // the slots set but not marked back to zero
                for &(p, ..) in collab {
                    win.other[p as usize - base] = 0.0;
                }
            }
        }

        for (&c, &exact) in s.pool_content.iter().zip(&s.pool_exact) {
            if exact {
                content_hi = content_hi.max(c);
            }
        }
        // each pool post's recency and engagement, read once for the cut and the scores: a
        // prior post's from `prior_values` (found by galloping through `prior_head`, not by a
        // walk over it), another's from `posts`, prefetched
        s.pool_values.clear();
        {
            let (mut head, mut at) = (&self.prior_head[..], 0);
            for (i, &p) in s.pool.iter().enumerate() {
                if let Some(&ahead) = s.pool.get(i + 16) {
                    prefetch(&self.posts[ahead as usize]);
                }
                at += below(&mut head, p as usize, |&q| q).len();
                s.pool_values.push(match head.first() {
                    Some(&q) if q == p => self.prior_values[at],
                    _ => [
                        self.posts[p as usize].recency,
                        self.posts[p as usize].engagement,
                    ],
                });
            }
        }

        // past the budget, the pool's best by the score with every exact cosine and content's
        // maximum over the pool (exact with the cosine normalization); `kept` holds positions
        // in the pool
        let rec = range_shown(&sh.by_recency, &sh.recency, &s.excl);
        let eng = range_shown(&sh.by_engagement, &sh.engagement, &s.excl);
        s.kept.clear();
        if s.pool.len() > cfg.budget {
            // every exact cosine: the posts from the other sources match the user's profile
            // as well as the index's candidates often (a partial sum or 0 dropped them)
            s.todo_at.clear();
            s.todo_at
                .extend((0..s.pool.len() as u32).filter(|&i| !s.pool_exact[i as usize]));
            self.pool_cosines(s, &mut content_hi);
            let inv = |(l, h): (f32, f32)| if h > l { 1.0 / (h - l) } else { 0.0 };
            let (c_inv, a_inv, r_inv, e_inv) = (
                inv((collab_lo, collab_hi)),
                inv(sh.content_range((0.0, content_hi))),
                inv(rec),
                inv(eng),
            );
            let w = sh.weights;
            s.proxy.clear();
            for (i, &[r, e]) in s.pool_values.iter().enumerate() {
                let score = w.combine([
                    (s.pool_collab[i] - collab_lo) * c_inv,
                    s.pool_content[i] * a_inv,
                    (r - rec.0) * r_inv,
                    (e - eng.0) * e_inv,
                ]);
                // positions in the pool order ties as the posts do
                s.proxy.push((i as u32, score));
            }
            strongest(&mut s.proxy, cfg.budget);
            s.kept.extend(s.proxy.iter().map(|e| e.0));
        } else {
            s.kept.extend(0..s.pool.len() as u32);
        }

        // the exact content of the kept posts (the content candidates' is known), and its range
        s.todo_at.clear();
        s.todo_at
            .extend(s.kept.iter().filter(|&&i| !s.pool_exact[i as usize]));
        self.pool_cosines(s, &mut content_hi);
        let content_lo = if reached == n_shown && complete && !s.profile_terms.is_empty() {
            // every post the user may be shown shares a term with the profile
            s.todo.clear();
            s.todo.extend(s.content.iter().map(|e| e.0));
            self.cosines(&s.profile_dense, &s.todo, &mut s.cos);
            let mut lo = f32::INFINITY;
            for &c in &s.cos {
                lo = lo.min(c);
                content_hi = content_hi.max(c);
            }
            lo
        } else {
            0.0f32.min(content_hi)
        };

        let ranges = [
            (collab_lo, collab_hi),
            sh.content_range((content_lo, content_hi)),
            rec,
            eng,
        ];
        let mut lo4 = [0f32; 4];
        let mut scale = [0f32; 4];
        for (c, (l, h)) in ranges.into_iter().enumerate() {
            lo4[c] = l;
            if h > l {
                scale[c] = 1.0 / (h - l);
            }
        }
        let norm = |c: usize, v: f32| (v - lo4[c]) * scale[c];
        let raw = |i: usize| {
            let [r, e] = s.pool_values[i];
            [s.pool_collab[i], s.pool_content[i], r, e]
        };
        let w = sh.weights;
        s.top.clear();
        for &i in &s.kept {
            let r = raw(i as usize);
            let score = w.combine([norm(0, r[0]), norm(1, r[1]), norm(2, r[2]), norm(3, r[3])]);
            // by position in the pool, which orders ties as the posts do
            s.top.push(i, score);
        }
        s.top.drain_sorted(&mut s.sorted);
        for (slot, e) in s.sorted.iter_mut().enumerate() {
            let r = raw(e.index as usize);
            for c in 0..4 {
                comp_out[slot * 4 + c] = norm(c, r[c]);
            }
            e.index = s.pool[e.index as usize];
        }
        write_row(&s.sorted, idx_out, sc_out);

        // the profile back to zero for the next user
        for &(t, _) in &s.profile_terms {
            s.profile_dense[t as usize] = 0.0;
        }
    }
}

/// The part of a post's score known without its collaborative score: `weights.content x
/// content + prior`, by which the postings are cut and the content and prior sources pick.
#[inline(always)]
fn content_and_prior(w_content: f32, content: f32, prior: f32) -> f32 {
    w_content * content + prior
}

/// Turns each of the prior head's sums into its cosine (x the post's inverse norm) and writes
/// the positions and keys (`w_content x cosine + prior`) of the posts whose key is at least
/// `floor` to the front of `out` (grown to the head's size, never shrunk), returning how many.
///
/// Without a branch per post: which posts pass is unpredictable (a quarter of the head at
/// 300,000 users on the benchmark's data), and the mispredicted branches cost more than the
/// rest of the pass (0.59 -> 0.52 ms per user at 300,000 users, docs/scaling.md).
fn cosines_above(
    sums: &mut [f32],
    (inv_norm, prior): (&[f32], &[f32]),
    w_content: f32,
    floor: Option<f32>,
    out: &mut Vec<(u32, f32)>,
) -> usize {
    // in `strongest`'s order, so that the floor drops only what it would drop
    let above = |v: f32| floor.is_none_or(|f| v.total_cmp(&f).is_ge());
    if out.len() < sums.len() {
        out.resize(sums.len(), (0, 0.0));
    }
    let mut n = 0;
    for (i, ((c, &inv), &prior)) in sums.iter_mut().zip(inv_norm).zip(prior).enumerate() {
        *c *= inv;
        let key = content_and_prior(w_content, *c, prior);
        out[n] = (i as u32, key);
        n += above(key) as usize;
    }
    n
}

/// Keeps the `cap` largest values of `list` (ties: the lower first field), in no particular
/// order.
fn strongest(list: &mut Vec<(u32, f32)>, cap: usize) {
    let kept = strongest_in(list, cap);
    list.truncate(kept);
}

/// [`strongest`] on a slice: moves the `cap` largest to the front and returns how many that
/// is (`cap`, or the whole slice when shorter).
fn strongest_in(list: &mut [(u32, f32)], cap: usize) -> usize {
    if list.len() > cap {
        list.select_nth_unstable_by(cap, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        cap
    } else {
        list.len()
    }
}

/// The first fields of `list`, distinct small positions (a few thousand of a few tens of
/// thousands), in ascending order into `out`: one bit each in `bits` (left zeroed), read in
/// order, instead of a sort.
fn positions_in_order(list: &[(u32, f32)], bits: &mut Vec<u64>, out: &mut Vec<u32>) {
    out.clear();
    let Some(max) = list.iter().map(|e| e.0 as usize).max() else {
        return;
    };
    if bits.len() <= max / 64 {
        bits.resize(max / 64 + 1, 0);
    }
    for e in list {
        bits[e.0 as usize / 64] |= 1 << (e.0 % 64);
    }
    for (w, word) in bits[..=max / 64].iter_mut().enumerate() {
        let mut b = std::mem::take(word);
        while b != 0 {
            out.push((w * 64 + b.trailing_zeros() as usize) as u32);
            b &= b - 1;
        }
    }
    debug_assert_eq!(out.len(), list.len(), "positions are distinct");
}

/// The `n`-th highest of `values` (reordered; `None` when there are fewer than `n`): when
/// `values` are the keys of some of a list's entries, a floor under the list's `n` best,
/// below which [`strongest`] can drop entries beforehand.
fn nth_highest(values: &mut [f32], n: usize) -> Option<f32> {
    if n == 0 || values.len() < n {
        return None;
    }
    values.select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a));
    Some(values[n - 1])
}

/// Splits off and returns the front of `list` (sorted by `post`) whose posts are below `end`.
/// The front is usually short and the list long: the search gallops from the front (steps of
/// 1, 2, 4, ...) and bisects the last step only, reading the memory it is about to use.
#[inline]
fn below<'a, T>(list: &mut &'a [T], end: usize, post: impl Fn(&T) -> u32) -> &'a [T] {
    let is_below = |e: &T| (post(e) as usize) < end;
    let (mut lo, mut step) = (0, 1);
    while lo + step < list.len() && is_below(&list[lo + step]) {
        lo += step;
        step *= 2;
    }
    // the split is in lo..=lo + step, and `list[lo + step]` (if any) is not below
    let hi = (lo + step).min(list.len());
    let n = lo + list[lo..hi].partition_point(is_below);
    let (front, rest) = list.split_at(n);
    *list = rest;
    front
}

/// `pairs` grouped by window of posts, each window's in their order (a counting sort by
/// window; `counts` has one slot per window).
fn group_by_window(pairs: &[(u32, f32)], counts: &mut Vec<usize>, out: &mut Vec<(u32, f32)>) {
    let windows = pairs.iter().map(|e| e.0 as usize / WINDOW + 1).max();
    counts.clear();
    counts.resize(windows.unwrap_or(0) + 1, 0);
    for e in pairs {
        counts[e.0 as usize / WINDOW + 1] += 1;
    }
    for w in 1..counts.len() {
        counts[w] += counts[w - 1];
    }
    out.clear();
    out.resize(pairs.len(), (0, 0.0));
    for &e in pairs {
        let w = e.0 as usize / WINDOW;
        out[counts[w]] = e;
        counts[w] += 1;
    }
}

/// The minimum and maximum of `values` over the posts not in `excluded` (sorted), `order`
/// being the allowed posts by ascending value ([`crate::score::lane_range`] with the excluded
/// posts as a list).
fn range_shown(order: &[u32], values: &[f32], excluded: &[u32]) -> (f32, f32) {
    let keep = |p: &&u32| excluded.binary_search(p).is_err();
    match (order.iter().find(keep), order.iter().rev().find(keep)) {
        (Some(&a), Some(&b)) => (values[a as usize], values[b as usize]),
        _ => (f32::INFINITY, f32::NEG_INFINITY),
    }
}

/// Dense arrays over one window of [`WINDOW`] posts (`base..base + WINDOW`, slot `p - base`):
/// a value or sum per post, a second value, and marks. The lists that feed it are sorted by
/// post and read one window at a time, so an array over every post (which leaves the caches
/// as posts grow) is never needed; each slot sums its additions in the order they come, as
/// such an array would.
struct Window {
    sums: Vec<f32>,
    other: Vec<f32>,
    marks: Vec<u64>,
    /// A second mark per slot, read back with the slot.
    flags: Vec<u64>,
    /// One bit per word of `marks` that may hold a mark: a drain visits those words only, so
    /// its cost follows the slots marked, not the window's size (windows are many and sparse
    /// when the posts are many).
    words: u64,
}

// one bit of `Window::words` per word of marks
const _: () = assert!(WINDOW / 64 <= 64);

impl Window {
    fn new() -> Self {
        Window {
            sums: vec![0.0; WINDOW],
            other: vec![0.0; WINDOW],
            marks: vec![0; WINDOW / 64],
            flags: vec![0; WINDOW / 64],
            words: 0,
        }
    }

    #[inline(always)]
    fn mark(&mut self, j: usize, on: bool) {
        self.marks[j / 64] |= (on as u64) << (j % 64);
        self.words |= (on as u64) << (j / 64);
    }

    #[inline(always)]
    fn add(&mut self, j: usize, v: f32) {
        self.mark(j, true);
        self.sums[j] += v;
    }

    /// Sets slot `j`'s value, marked and flagged (an exact value).
    #[inline(always)]
    fn set_exact(&mut self, j: usize, v: f32) {
        self.mark(j, true);
        self.flags[j / 64] |= 1 << (j % 64);
        self.sums[j] = v;
    }

    /// Drops the slots of `posts` (in this window at `base`): unmarked and unflagged, their
    /// sums zero.
    fn unmark(&mut self, base: usize, posts: &[u32]) {
        for &p in posts {
            let j = p as usize - base;
            self.marks[j / 64] &= !(1 << (j % 64));
            self.flags[j / 64] &= !(1 << (j % 64));
            self.sums[j] = 0.0;
        }
    }

    /// Calls `f(slot, sum)` for each marked slot in ascending order, and empties them.
    #[inline(always)]
    fn drain(&mut self, mut f: impl FnMut(usize, f32)) {
        self.drain_with_other(|j, v, _, _| f(j, v));
    }

    /// [`Window::drain`] with the slot's second value and flag too (emptied as well).
    #[inline(always)]
    fn drain_with_other(&mut self, mut f: impl FnMut(usize, f32, f32, bool)) {
        let mut words = std::mem::take(&mut self.words);
        while words != 0 {
            let m = words.trailing_zeros() as usize;
            words &= words - 1;
            let mut bits = std::mem::take(&mut self.marks[m]);
            let flags = std::mem::take(&mut self.flags[m]);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let j = m * 64 + b;
                f(
                    j,
                    std::mem::take(&mut self.sums[j]),
                    std::mem::take(&mut self.other[j]),
                    flags >> b & 1 == 1,
                );
            }
        }
    }
}

/// Per-thread scratch of the candidate path: short lists reused from user to user, and dense
/// arrays over terms and over one window of posts only.
struct UserScratch {
    model: Accumulator,
    /// The collaborative model's additions, grouped by window (`counts`: one slot a window).
    pairs: Vec<(u32, f32)>,
    grouped: Vec<(u32, f32)>,
    counts: Vec<usize>,
    /// The collaborative score of each post the user may be shown, by post; `true`: chosen.
    collab: Vec<(u32, f32, bool)>,
    /// Positions in `collab` (in `content` for `content_list`) with their values.
    collab_list: Vec<(u32, f32)>,
    profile_acc: Accumulator,
    profile_dense: Vec<f32>,
    profile_terms: Vec<(u32, f32)>,
    query: Vec<(usize, usize, f32)>,
    win: Window,
    /// The posts the index reached (not excluded), by post, with their partial dot product.
    content: Vec<(u32, f32)>,
    content_list: Vec<(u32, f32)>,
    /// The posts never shown to the current user, sorted.
    excl: Vec<u32>,
    ranks: Vec<u32>,
    extra: Vec<u32>,
    /// The pool by post, with each post's collaborative score and content.
    pool: Vec<u32>,
    pool_collab: Vec<f32>,
    pool_content: Vec<f32>,
    /// `pool_content` is already the exact cosine (a content candidate or a prior post).
    pool_exact: Vec<bool>,
    /// The recency and engagement of each pool post.
    pool_values: Vec<[f32; 2]>,
    proxy: Vec<(u32, f32)>,
    kept: Vec<u32>,
    /// The exact cosine of each of `prior_head`, and the profile's terms by term.
    head_cos: Vec<f32>,
    terms_by_id: Vec<(u32, f32)>,
    /// Positions in `prior_head` and keys of the posts above the floor, at the front of a buffer
    /// the head's size ([`cosines_above`]); its first `budget` are the prior posts that join
    /// the pool.
    head_pick: Vec<(u32, f32)>,
    /// Those positions in order.
    head_order: Vec<u32>,
    /// The positions of a pick in order (`content_list`'s), and the bits that order them
    /// ([`positions_in_order`]; left zeroed).
    order: Vec<u32>,
    bits: Vec<u64>,
    /// The keys of `Retriever::head_sample`.
    sample_keys: Vec<f32>,
    /// The chosen content candidates, by post, with their exact cosines.
    chosen: Vec<(u32, f32)>,
    /// Posts whose exact cosines are wanted, their positions in the pool, and the cosines.
    todo: Vec<u32>,
    todo_at: Vec<u32>,
    cos: Vec<f32>,
    top: TopK,
    sorted: Vec<Scored>,
}

impl UserScratch {
    fn new(n_terms: usize, k: usize, scorer: &dyn CollaborativeScorer) -> Self {
        UserScratch {
            model: scorer.scratch(),
            pairs: Vec::new(),
            grouped: Vec::new(),
            counts: Vec::new(),
            collab: Vec::new(),
            collab_list: Vec::new(),
            profile_acc: Accumulator::new(n_terms, 1),
            profile_dense: vec![0.0; n_terms],
            profile_terms: Vec::new(),
            query: Vec::new(),
            win: Window::new(),
            content: Vec::new(),
            content_list: Vec::new(),
            excl: Vec::new(),
            ranks: Vec::new(),
            extra: Vec::new(),
            pool: Vec::new(),
            pool_collab: Vec::new(),
            pool_content: Vec::new(),
            pool_exact: Vec::new(),
            pool_values: Vec::new(),
            proxy: Vec::new(),
            kept: Vec::new(),
            head_cos: Vec::new(),
            terms_by_id: Vec::new(),
            head_pick: Vec::new(),
            head_order: Vec::new(),
            order: Vec::new(),
            bits: Vec::new(),
            sample_keys: Vec::new(),
            chosen: Vec::new(),
            todo: Vec::new(),
            todo_at: Vec::new(),
            cos: Vec::new(),
            top: TopK::new(k),
            sorted: Vec::with_capacity(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Leaving out what lies under the `cap`-th best of a sample of at least `cap` entries
        /// changes nothing in the `cap` best (the prior head's pick), whatever the signs.
        #[test]
        fn a_floor_from_a_sample_drops_none_of_the_best(
            rows in prop::collection::vec((-20i8..20, any::<bool>()), 1..300),
            cap in 1usize..60,
        ) {
            // small integers: many ties, as posts of equal prior and content have
            let keyed: Vec<(u32, f32)> =
                rows.iter().enumerate().map(|(i, &(k, _))| (i as u32, k as f32 / 8.0)).collect();
            let mut sample: Vec<f32> =
                rows.iter().filter(|r| r.1).map(|&(k, _)| k as f32 / 8.0).collect();
            let floor = nth_highest(&mut sample, cap);
            prop_assert_eq!(floor.is_none(), sample.len() < cap);
            let floor = floor.unwrap_or(f32::NEG_INFINITY);
            let mut all = keyed.clone();
            strongest(&mut all, cap);
            // the posts above the floor, found by the head pick's own pass (inverse norms 1,
            // priors 0 and a content weight of 1 make each key the sum itself)
            let mut sums: Vec<f32> = keyed.iter().map(|e| e.1).collect();
            let (ones, zeros) = (vec![1.0; sums.len()], vec![0.0; sums.len()]);
            let mut above = vec![(0, 0.0); 3];
            let n = cosines_above(&mut sums, (&ones, &zeros), 1.0, Some(floor), &mut above);
            prop_assert!(above[..n].iter().all(|e| e.1 >= floor));
            prop_assert_eq!(n, keyed.iter().filter(|e| e.1 >= floor).count());
            above.truncate(n);
            strongest(&mut above, cap);
            all.sort_unstable_by_key(|e| e.0);
            above.sort_unstable_by_key(|e| e.0);
            prop_assert_eq!(all, above);
        }
    }

    #[test]
    fn positions_in_order_sorts_and_leaves_the_bits_zeroed() {
        let mut bits = Vec::new();
        let mut out = Vec::new();
        let list = [(700u32, 0.5f32), (3, 0.1), (64, 0.9), (63, 0.2), (0, 0.0)];
        positions_in_order(&list, &mut bits, &mut out);
        assert_eq!(out, [0, 3, 63, 64, 700]);
        assert!(bits.iter().all(|&w| w == 0));
        positions_in_order(&[(5, 1.0)], &mut bits, &mut out);
        assert_eq!(out, [5]);
        positions_in_order(&[], &mut bits, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_window_drains_its_marked_slots_in_order_and_is_left_empty() {
        let mut win = Window::new();
        win.add(4000, 1.0);
        win.add(3, 0.5);
        win.add(3, 0.25);
        win.set_exact(64, 2.0);
        win.set_exact(700, 3.0);
        win.unmark(0, &[700]); // dropped: neither drained nor left flagged
        let mut got = Vec::new();
        win.drain_with_other(|j, v, _, exact| got.push((j, v, exact)));
        assert_eq!(got, [(3, 0.75, false), (64, 2.0, true), (4000, 1.0, false)]);
        assert!(win.sums.iter().chain(&win.other).all(|&x| x == 0.0));
        assert!(win.marks.iter().chain(&win.flags).all(|&w| w == 0) && win.words == 0);
        win.mark(700, true);
        let mut again = Vec::new();
        win.drain_with_other(|j, _, _, exact| again.push((j, exact)));
        assert_eq!(again, [(700, false)]);
    }

    #[test]
    fn below_splits_off_exactly_the_posts_under_the_end() {
        let posts: Vec<u32> = (0..100).map(|i| i * 3).collect();
        for end in 0..310 {
            let mut rest = &posts[..];
            let front = below(&mut rest, end, |&p| p);
            assert!(front.iter().all(|&p| (p as usize) < end), "end {end}");
            assert!(rest.iter().all(|&p| (p as usize) >= end), "end {end}");
            assert_eq!(front.len() + rest.len(), posts.len());
        }
        let mut empty: &[u32] = &[];
        assert!(below(&mut empty, 10, |&p| p).is_empty());
    }
}
