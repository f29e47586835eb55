//! Property tests of the hybrid score: exclusions always hold, components are normalized to
//! [0, 1], scores are `HybridWeights::combine` of the components, results are sorted and
//! identical to a sequential brute force over the same components.

use std::sync::Arc;

use feedrank_core::config::{CollaborativeModel, ScoringConfig};
use feedrank_core::score::{hybrid_topk, Posts};
use feedrank_core::sparse::Csr;
use proptest::prelude::*;

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
    ) {
        let (n_users, n_posts) = (12, 25);
        let x = csr(n_users, n_posts, &cells);
        let ex = csr(n_users, n_posts, &hidden);
        let tfidf = csr(n_posts, 8, &terms);
        let posts = Posts { tfidf: Arc::new(tfidf), age_days: &ages, engagement: &engagement, author: &authors };
        let users: Vec<usize> = (0..n_users).collect();
        let params = ScoringConfig {
            top_k: k, neighbors: 3,
            collaborative: if item_item { CollaborativeModel::ItemItem } else { CollaborativeModel::UserUser },
            ..ScoringConfig::default()
        };
        let weights = params.weights;
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
        }
    }
}
