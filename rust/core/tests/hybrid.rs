//! Property tests of the hybrid score: exclusions always hold, components are normalized to
//! [0, 1], scores are `HybridWeights::combine` of the components, results are sorted, and each
//! user's list equals a sequential brute force (`brute_force`: every post the user may be shown
//! scored one at a time by the formula of `score.rs`'s documentation, in f64, then sorted;
//! content min-max normalized or the cosine itself, as `content_normalization` says):
//! the same scores slot by slot, the same posts up to ties, the same components.

use std::collections::BTreeMap;
use std::sync::Arc;

use feedrank_core::cancel::Cancel;
use feedrank_core::config::{
    CollaborativeModel, ContentNormalization, HybridWeights, InteractionWeighting, ScoringConfig,
};
use feedrank_core::score::{hybrid_topk, Posts};
use feedrank_core::similarity::item_neighbors;
use feedrank_core::sparse::Csr;
use proptest::prelude::*;

/// Scores compared between the kernel (f32, blocked, SIMD) and the brute force (f64).
const TOLERANCE: f64 = 1e-4;

fn csr(nrows: usize, ncols: usize, cells: &[(usize, usize, u8)]) -> Csr<f32> {
    let mut dense = vec![0f32; nrows * ncols];
    let mut present = vec![false; nrows * ncols];
    for &(r, c, v) in cells {
        let i = (r % nrows) * ncols + c % ncols;
        dense[i] = v as f32; // 0 is a stored entry too (a hidden post)
        present[i] = true;
    }
    let (mut indptr, mut indices, mut data) = (vec![0], vec![], vec![]);
    for r in 0..nrows {
        for c in 0..ncols {
            if present[r * ncols + c] {
                indices.push(c as u32);
                data.push(dense[r * ncols + c]);
            }
        }
        indptr.push(indices.len());
    }
    Csr::from_parts("m", nrows, ncols, indptr, indices, data).unwrap()
}

/// What the brute force needs to know of the settings (a struct of the test's own, so that it
/// does not depend on how the kernel takes its settings).
struct Formula {
    weights: [f32; 4],
    neighbors: usize,
    recency_tau_days: f64,
    item_item: bool,
    /// `content_normalization = "cosine"`: content is the cosine, not min-max normalized.
    cosine: bool,
}

/// One post as the brute force scores it for one user.
#[derive(Debug, Clone, Copy)]
struct BruteForcePost {
    post: usize,
    score: f64,
    components: [f64; 4],
}

/// The hybrid score of every post `user` may be shown, best first (ties: lower post first).
/// Interactions are weighted `none`. User-user similarities use the kernel's f32 expression
/// (`dot / |u| / |v|`, norms accumulated in f64) so that neighbours tied in f32 are tied here
/// too and the cut at `neighbors` keeps the same users (lower index first, as `topk.rs`);
/// item-item neighbours come from `item_neighbors`, which similarity.rs's own brute force checks.
fn brute_force(
    x: &Csr<f32>,
    exclude: &Csr<f32>,
    posts: &Posts,
    candidates: Option<&[usize]>,
    formula: &Formula,
    user: usize,
) -> Vec<BruteForcePost> {
    let (n_users, n_posts) = (x.nrows, x.ncols);
    let dense = |m: &Csr<f32>, r: usize| {
        let mut row = vec![0f32; m.ncols];
        let (cols, vals) = m.view().row(r);
        for (&c, &v) in cols.iter().zip(vals) {
            row[c as usize] = v;
        }
        row
    };
    let rows: Vec<Vec<f32>> = (0..n_users).map(|u| dense(x, u)).collect();
    let (history, _) = x.view().row(user);
    let (hidden, _) = exclude.view().row(user);
    let allowed: Vec<usize> = (0..n_posts)
        .filter(|&p| !history.contains(&(p as u32)) && !hidden.contains(&(p as u32)))
        .filter(|&p| posts.author[p] != user as i64)
        .filter(|p| candidates.is_none_or(|c| c.contains(p)))
        .collect();

    let mut collaborative = vec![0f64; n_posts];
    if formula.item_item {
        let s = item_neighbors(
            x.view(),
            formula.neighbors,
            InteractionWeighting::None,
            0.0,
            0.0,
            true,
            &Cancel::new(),
        )
        .unwrap();
        for (i, &value) in rows[user].iter().enumerate() {
            let (nb, sims) = s.view().row(i);
            for (&j, &sim) in nb.iter().zip(sims) {
                collaborative[j as usize] += value as f64 * sim as f64;
            }
        }
    } else {
        let inv_norm = |r: &[f32]| {
            let n = r
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt() as f32;
            if n > 0.0 {
                1.0 / n
            } else {
                0.0
            }
        };
        let mut similar: Vec<(f32, usize)> = (0..n_users)
            .filter(|&o| o != user)
            .map(|o| {
                let dot: f32 = rows[user].iter().zip(&rows[o]).map(|(a, b)| a * b).sum();
                (dot * inv_norm(&rows[user]) * inv_norm(&rows[o]), o)
            })
            .filter(|&(s, _)| s > 0.0)
            .collect();
        similar.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(s, o) in similar.iter().take(formula.neighbors) {
            for p in 0..n_posts {
                collaborative[p] += s as f64 * rows[o][p] as f64;
            }
        }
    }

    // content: cosine between each post and the mean TF-IDF row of the posts the user engaged with
    let tfidf: Vec<Vec<f64>> = (0..n_posts)
        .map(|p| {
            let mut row = vec![0f64; posts.tfidf.ncols];
            let (terms, vals) = posts.tfidf.view().row(p);
            for (&t, &v) in terms.iter().zip(vals) {
                row[t as usize] = v as f64;
            }
            row
        })
        .collect();
    let mut profile = vec![0f64; posts.tfidf.ncols];
    for p in (0..n_posts).filter(|&p| rows[user][p] > 0.0) {
        for (acc, v) in profile.iter_mut().zip(&tfidf[p]) {
            *acc += v;
        }
    }
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let content: Vec<f64> = tfidf
        .iter()
        .map(|row| {
            let d = norm(row) * norm(&profile);
            if d > 0.0 {
                row.iter().zip(&profile).map(|(a, b)| a * b).sum::<f64>() / d
            } else {
                0.0
            }
        })
        .collect();

    let raw = |p: usize| {
        [
            collaborative[p],
            content[p],
            (-(posts.age_days[p] as f64) / formula.recency_tau_days).exp(),
            (posts.engagement[p] as f64).ln_1p(),
        ]
    };
    // each component min-max normalized over the posts this user may be shown (0 if constant),
    // content but with the cosine normalization
    let mut lo = [f64::INFINITY; 4];
    let mut hi = [f64::NEG_INFINITY; 4];
    for &p in &allowed {
        for (c, v) in raw(p).into_iter().enumerate() {
            lo[c] = lo[c].min(v);
            hi[c] = hi[c].max(v);
        }
    }
    let mut scored: Vec<BruteForcePost> = allowed
        .iter()
        .map(|&p| {
            let mut components = raw(p);
            for c in 0..4 {
                if c == 1 && formula.cosine {
                    continue;
                }
                components[c] = if hi[c] > lo[c] {
                    (components[c] - lo[c]) / (hi[c] - lo[c])
                } else {
                    0.0
                };
            }
            let score = (0..4)
                .map(|c| formula.weights[c] as f64 * components[c])
                .sum();
            BruteForcePost {
                post: p,
                score,
                components,
            }
        })
        .collect();
    scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.post.cmp(&b.post)));
    scored
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn exclusions_normalization_and_order(
        cells in proptest::collection::vec((0usize..12, 0usize..25, 0u8..5), 0..80),
        hidden in proptest::collection::vec((0usize..12, 0usize..25, 1u8..2), 0..10),
        terms in proptest::collection::vec((0usize..25, 0usize..8, 1u8..4), 0..60),
        ages in proptest::collection::vec(0f32..100.0, 25),
        engagement in proptest::collection::vec(0f32..50.0, 25),
        authors in proptest::collection::vec(-1i64..12, 25),
        k in 1usize..30,
        item_item in any::<bool>(),
        candidates_even in any::<bool>(),
        order in proptest::collection::vec(0usize..12, 33..80),
        weights in (0f32..1.0, 0f32..1.0, 0f32..1.0, 0f32..1.0)
            .prop_filter("one weight > 0", |w| w.0 + w.1 + w.2 + w.3 > 0.01),
        neighbors in 1usize..14,
        cosine in any::<bool>(),
    ) {
        let (n_users, n_posts) = (12, 25);
        let x = csr(n_users, n_posts, &cells);
        let ex = csr(n_users, n_posts, &hidden);
        let tfidf = csr(n_posts, 8, &terms);
        let posts = Posts { tfidf: Arc::new(tfidf), age_days: &ages, engagement: &engagement, author: &authors };
        let users: Vec<usize> = (0..n_users).collect();
        let weights = HybridWeights::from_array([weights.0, weights.1, weights.2, weights.3]);
        let params = ScoringConfig {
            top_k: k, weights, neighbors, recency_tau_days: 30.0,
            collaborative: if item_item { CollaborativeModel::ItemItem } else { CollaborativeModel::UserUser },
            weighting: InteractionWeighting::None,
            content_normalization: if cosine { ContentNormalization::Cosine } else { ContentNormalization::MinMax },
            ..ScoringConfig::default()
        };
        let cands: Vec<usize> = (0..n_posts).filter(|p| p % 2 == 0).collect();
        let res = hybrid_topk(x.view(), &posts, &users, &params, Some(ex.view()),
                              if candidates_even { Some(&cands) } else { None }).unwrap();
        // users are scored in blocks of LANES: a user's result does not depend on its block,
        // its lane or the other users of the block (here: repeats, in any order, > 2 blocks)
        let many = hybrid_topk(x.view(), &posts, &order, &params, Some(ex.view()),
                               if candidates_even { Some(&cands) } else { None }).unwrap();
        for (r, &u) in order.iter().enumerate() {
            prop_assert_eq!(&many.indices[r * k..(r + 1) * k], &res.indices[u * k..(u + 1) * k]);
            prop_assert_eq!(&many.scores[r * k..(r + 1) * k], &res.scores[u * k..(u + 1) * k]);
            prop_assert_eq!(&many.components[r * k * 4..(r + 1) * k * 4],
                            &res.components[u * k * 4..(u + 1) * k * 4]);
        }
        for &u in &users {
            let row = &res.indices[u * k..(u + 1) * k];
            let scores = &res.scores[u * k..(u + 1) * k];
            let (hist, _) = x.view().row(u);
            let (hid, _) = ex.view().row(u);
            let allowed: Vec<usize> = (0..n_posts)
                .filter(|&p| !hist.contains(&(p as u32)) && !hid.contains(&(p as u32)) && authors[p] != u as i64)
                .filter(|p| !candidates_even || p % 2 == 0)
                .collect();
            let got: Vec<usize> = row.iter().filter(|&&p| p >= 0).map(|&p| p as usize).collect();
            // exactly the best min(k, allowed) posts are returned, all of them allowed
            prop_assert_eq!(got.len(), allowed.len().min(k));
            for &p in &got {
                prop_assert!(allowed.contains(&p), "post {} not allowed for user {}", p, u);
            }
            // -1 padding only at the end
            prop_assert!(row[got.len()..].iter().all(|&p| p == -1));
            for slot in 0..got.len() {
                let c = &res.components[(u * k + slot) * 4..(u * k + slot + 1) * 4];
                prop_assert!(c.iter().all(|&v| (0.0..=1.0 + 1e-6).contains(&v)));
                prop_assert!((weights.combine([c[0], c[1], c[2], c[3]]) - scores[slot]).abs() < 1e-5);
                if slot > 0 {
                    prop_assert!(scores[slot - 1] > scores[slot]
                        || (scores[slot - 1] == scores[slot] && row[slot - 1] < row[slot]));
                }
            }
            // the brute force: the same scores slot by slot, each returned post scored the same
            // (so the posts are the same up to ties at the cut), the same components
            let formula = Formula {
                weights: weights.as_array(), neighbors, recency_tau_days: 30.0, item_item, cosine,
            };
            let expected = brute_force(&x, &ex, &posts, candidates_even.then_some(&cands[..]), &formula, u);
            let by_post: BTreeMap<usize, BruteForcePost> = expected.iter().map(|e| (e.post, *e)).collect();
            for (slot, &p) in got.iter().enumerate() {
                let want = &expected[slot];
                prop_assert!((scores[slot] as f64 - want.score).abs() < TOLERANCE,
                    "user {} slot {}: score {} (post {}), brute force {} (post {})",
                    u, slot, scores[slot], p, want.score, want.post);
                let mine = by_post[&p];
                prop_assert!((mine.score - scores[slot] as f64).abs() < TOLERANCE,
                    "user {} post {}: score {}, brute force {}", u, p, scores[slot], mine.score);
                let c = &res.components[(u * k + slot) * 4..(u * k + slot + 1) * 4];
                for (ci, (&got_c, want_c)) in c.iter().zip(mine.components).enumerate() {
                    prop_assert!((got_c as f64 - want_c).abs() < TOLERANCE,
                        "user {} post {} component {}: {}, brute force {}", u, p, ci, got_c, want_c);
                }
            }
        }
    }
}
