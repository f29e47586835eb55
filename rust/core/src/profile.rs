//! A user's stored profile: what the pipeline writes per user so that the request-time sources
//! (`fresh.rs`) can score posts the pipeline never saw.
//!
//! - terms: the hybrid's own content profile ([`crate::score`]'s definition, one implementation:
//!   the mean TF-IDF row of the posts the user engaged with, divided by its L2 norm), of which
//!   the `profile_terms` largest weights are kept (ties: the lower term) and NOT renormalized,
//!   so that its dot product with a post's unit TF-IDF row is the hybrid's cosine less the
//!   dropped terms' share;
//! - authors: the user's affinity to the authors of the posts they engaged with (value > 0):
//!   the sum of the interaction values per author divided by the user's largest, the
//!   `profile_authors` largest kept (ties: the lower author). Posts without an author (-1) and
//!   the user's own posts do not count.

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::config::ScoringConfig;
use crate::fresh::SparseVec;
use crate::score::{check_users, content_profile, validate_posts};
use crate::similarity::Accumulator;
use crate::sparse::CsrRef;
use crate::Result;

/// One user's stored profile. See the module documentation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserProfile {
    /// The strongest terms of the content profile, terms ascending.
    pub terms: SparseVec,
    /// `(author's user index, affinity in (0, 1])`, authors ascending.
    pub authors: Vec<(u32, f32)>,
}

/// Keeps the `k` largest by value (ties: the lower key), then sorts them by key.
fn strongest<K: Ord + Copy>(mut entries: Vec<(K, f32)>, k: usize) -> Vec<(K, f32)> {
    let better = |a: &(K, f32), b: &(K, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if entries.len() > k {
        entries.select_nth_unstable_by(k - 1, better);
        entries.truncate(k);
    }
    entries.sort_unstable_by_key(|e| e.0);
    entries
}

/// The author affinity of `user` from their row of the interactions (see the module docs).
fn author_affinity(
    user: usize,
    (posts, values): (&[u32], &[f32]),
    post_author: &[i64],
    keep: usize,
) -> Vec<(u32, f32)> {
    let mut per_author: Vec<(u32, f32)> = posts
        .iter()
        .zip(values)
        .filter(|&(_, &v)| v > 0.0)
        .filter_map(|(&p, &v)| {
            let a = post_author[p as usize];
            (a >= 0 && a as usize != user).then_some((a as u32, v))
        })
        .collect();
    // stable: each author's values are summed in the order of the user's row
    per_author.sort_by_key(|e| e.0);
    per_author.dedup_by(|next, kept| {
        let same = next.0 == kept.0;
        if same {
            kept.1 += next.1;
        }
        same
    });
    let largest = per_author.iter().map(|e| e.1).fold(0f32, f32::max);
    if largest > 0.0 {
        for e in &mut per_author {
            e.1 /= largest;
        }
    }
    strongest(per_author, keep)
}

/// The stored profile of each of `users` (rows of the users x posts `interactions`), from the
/// posts' TF-IDF rows (`post_tfidf`, posts x terms) and authors (`post_author`: a user index or
/// -1), keeping `config.profile_terms` terms and `config.profile_authors` authors. Users in
/// parallel; `cancel` is checked between users.
pub fn user_profiles(
    interactions: CsrRef<f32>,
    post_tfidf: CsrRef<f32>,
    post_author: &[i64],
    users: &[usize],
    config: &ScoringConfig,
    cancel: &Cancel,
) -> Result<Vec<UserProfile>> {
    config.validate()?;
    validate_posts(&interactions, &post_tfidf, post_author)?;
    check_users(users, interactions.nrows)?;
    let profiles: Vec<UserProfile> = users
        .par_iter()
        .map_init(
            || Accumulator::new(post_tfidf.ncols, 1),
            |acc, &u| {
                if cancel.is_cancelled() {
                    return UserProfile::default(); // the users still to come are skipped
                }
                let history = interactions.row(u);
                let mut terms = Vec::new();
                content_profile(history, post_tfidf, acc, |t, w| terms.push((t, w)));
                let terms = strongest(terms, config.profile_terms);
                UserProfile {
                    terms: SparseVec {
                        terms: terms.iter().map(|e| e.0).collect(),
                        weights: terms.iter().map(|e| e.1).collect(),
                    },
                    authors: author_affinity(u, history, post_author, config.profile_authors),
                }
            },
        )
        .collect();
    cancel.check()?;
    Ok(profiles)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::score::{HybridModel, Posts};
    use crate::sparse::Csr;

    /// A `nrows x ncols` CSR of the cells (the last value of a repeated cell wins; a 0 is a
    /// stored entry, like a hidden post).
    fn csr(nrows: usize, ncols: usize, cells: &[(usize, usize, u8)]) -> Csr<f32> {
        let mut rows = vec![std::collections::BTreeMap::new(); nrows];
        for &(r, c, v) in cells {
            rows[r % nrows].insert((c % ncols) as u32, v as f32);
        }
        let mut indptr = vec![0];
        let (mut indices, mut data) = (vec![], vec![]);
        for row in rows {
            for (c, v) in row {
                indices.push(c);
                data.push(v);
            }
            indptr.push(indices.len());
        }
        Csr::from_parts("m", nrows, ncols, indptr, indices, data).unwrap()
    }

    fn config(profile_terms: usize, profile_authors: usize) -> ScoringConfig {
        ScoringConfig {
            profile_terms,
            profile_authors,
            ..ScoringConfig::default()
        }
    }

    fn profiles(
        x: &Csr<f32>,
        tfidf: &Csr<f32>,
        authors: &[i64],
        config: &ScoringConfig,
    ) -> Vec<UserProfile> {
        let users: Vec<usize> = (0..x.nrows).collect();
        user_profiles(
            x.view(),
            tfidf.view(),
            authors,
            &users,
            config,
            &Cancel::new(),
        )
        .unwrap()
    }

    #[test]
    fn the_profile_is_the_mean_engaged_row_scaled_to_unit_length() {
        // user 0 engaged with posts 0 and 1 (value > 0); post 2 is hidden (value 0)
        let x = csr(1, 3, &[(0, 0, 2), (0, 1, 1), (0, 2, 0)]);
        let tfidf = csr(3, 3, &[(0, 0, 3), (1, 0, 1), (1, 1, 4), (2, 2, 9)]);
        let p = &profiles(&x, &tfidf, &[-1, -1, -1], &config(10, 10))[0];
        // mean (2, 2, 0) / |(2, 2, 0)|: the values weigh nothing, the hidden post nothing
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert_eq!(p.terms.terms, [0, 1]);
        for (got, want) in p.terms.weights.iter().zip([h, h]) {
            assert!((got - want).abs() < 1e-6);
        }
        // nothing engaged: empty
        let none = csr(1, 3, &[(0, 2, 0)]);
        assert_eq!(
            profiles(&none, &tfidf, &[-1, -1, -1], &config(10, 10))[0],
            UserProfile::default()
        );
    }

    #[test]
    fn only_the_strongest_terms_are_kept_and_not_renormalized() {
        let x = csr(1, 1, &[(0, 0, 1)]);
        // weights 1, 3, 2, 3 on terms 0..4: the two strongest are 1 and 3 (a tie: both kept)
        let tfidf = csr(1, 4, &[(0, 0, 1), (0, 1, 3), (0, 2, 2), (0, 3, 3)]);
        let full = &profiles(&x, &tfidf, &[-1], &config(10, 1))[0].terms;
        let two = &profiles(&x, &tfidf, &[-1], &config(2, 1))[0].terms;
        assert_eq!(two.terms, [1, 3]);
        assert_eq!(two.weights, [full.weights[1], full.weights[3]]);
        // a tie at the cut keeps the lower term
        let three_way = csr(1, 4, &[(0, 0, 1), (0, 1, 3), (0, 2, 3), (0, 3, 3)]);
        assert_eq!(
            profiles(&x, &three_way, &[-1], &config(2, 1))[0]
                .terms
                .terms,
            [1, 2]
        );
    }

    #[test]
    fn author_affinity_sums_values_per_author_relative_to_the_largest() {
        // user 0: posts 0, 1 by author 2 (values 1 + 2), post 2 by author 1 (value 6), post 3
        // their own, post 4 anonymous, post 5 by author 3 hidden (value 0)
        let x = csr(
            4,
            6,
            &[
                (0, 0, 1),
                (0, 1, 2),
                (0, 2, 6),
                (0, 3, 5),
                (0, 4, 4),
                (0, 5, 0),
            ],
        );
        let tfidf = csr(6, 1, &[]);
        let authors = [2, 2, 1, 0, -1, 3];
        let p = &profiles(&x, &tfidf, &authors, &config(1, 10))[0];
        assert_eq!(p.authors, [(1, 1.0), (2, 0.5)]);
        // the strongest kept; a tie keeps the lower author
        assert_eq!(
            profiles(&x, &tfidf, &authors, &config(1, 1))[0].authors,
            [(1, 1.0)]
        );
        let tie = csr(4, 6, &[(0, 0, 3), (0, 2, 3)]);
        assert_eq!(
            profiles(&tie, &tfidf, &authors, &config(1, 1))[0].authors,
            [(1, 1.0)]
        );
    }

    #[test]
    fn bad_arguments_are_named() {
        let x = csr(2, 3, &[(0, 0, 1)]);
        let tfidf = csr(3, 2, &[]);
        let run = |tfidf: &Csr<f32>, authors: &[i64], users: &[usize], c: &ScoringConfig| {
            user_profiles(x.view(), tfidf.view(), authors, users, c, &Cancel::new())
                .unwrap_err()
                .to_string()
        };
        let c = config(4, 4);
        assert!(run(&csr(2, 2, &[]), &[-1; 3], &[0], &c).starts_with("post_tfidf: has 2 rows"));
        assert!(run(&tfidf, &[-1; 2], &[0], &c).starts_with("post_author: has length 2"));
        assert!(run(&tfidf, &[-1, 2, 0], &[0], &c)
            .starts_with("post_author: must be -1 or a user index in 0..2, found 2"));
        assert!(run(&tfidf, &[-1; 3], &[2], &c).starts_with("users: index 2 out of range"));
        assert!(run(&tfidf, &[-1; 3], &[0], &config(0, 4)).starts_with("profile_terms:"));
        let cancelled = Cancel::new();
        cancelled.cancel();
        assert_eq!(
            user_profiles(x.view(), tfidf.view(), &[-1; 3], &[0, 1], &c, &cancelled),
            Err(crate::Error::Cancelled)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// With every term kept, the stored profile's cosine with a post is the hybrid's content
        /// component, to the bit: compared through the per-user min-max normalization the
        /// kernel reports.
        #[test]
        fn the_full_profile_gives_the_hybrids_content_component(
            cells in proptest::collection::vec((0usize..8, 0usize..20, 0u8..5), 0..60),
            terms in proptest::collection::vec((0usize..20, 0usize..10, 1u8..6), 0..60),
            authors in proptest::collection::vec(-1i64..8, 20),
        ) {
            let (n_users, n_posts, n_terms) = (8, 20, 10);
            let x = csr(n_users, n_posts, &cells);
            let tfidf = csr(n_posts, n_terms, &terms);
            let stored = profiles(&x, &tfidf, &authors, &config(n_terms, 1));
            let zeros = vec![0f32; n_posts];
            let posts = Posts { tfidf: Arc::new(tfidf.clone()), age_days: &zeros, engagement: &zeros, author: &authors };
            let cfg = ScoringConfig { top_k: n_posts, ..ScoringConfig::default() };
            let model = HybridModel::new(Arc::new(x.clone()), &posts, &cfg, None, None, None, &Cancel::new()).unwrap();
            let users: Vec<usize> = (0..n_users).collect();
            let res = model.topk(&users, &Cancel::new()).unwrap();
            let norms = tfidf.view().row_norms();
            for (u, stored) in stored.iter().enumerate() {
                let profile = &stored.terms;
                // min-max cannot see a scale: pin it (a full profile is a unit vector or empty)
                let norm = profile.weights.iter().map(|w| w * w).sum::<f32>().sqrt();
                prop_assert!(profile.is_empty() || (norm - 1.0).abs() < 1e-5, "norm {}", norm);
                let cosine = |p: usize| {
                    let (ts, vs) = tfidf.view().row(p);
                    let mut dot = 0f32;
                    for (t, v) in ts.iter().zip(vs) {
                        if let Ok(i) = profile.terms.binary_search(t) {
                            dot += v * profile.weights[i];
                        }
                    }
                    // the kernel's arithmetic: the dot product in term order times 1 / norm
                    dot * if norms[p] > 0.0 { 1.0 / norms[p] } else { 0.0 }
                };
                // the posts the kernel may show the user: not in their row, not their own
                let history = x.view().row(u).0;
                let shown: Vec<usize> = (0..n_posts)
                    .filter(|&p| !history.contains(&(p as u32)) && authors[p] != u as i64)
                    .collect();
                let lo = shown.iter().map(|&p| cosine(p)).fold(f32::INFINITY, f32::min);
                let hi = shown.iter().map(|&p| cosine(p)).fold(f32::NEG_INFINITY, f32::max);
                let k = res.k;
                for slot in 0..k {
                    let p = res.indices[u * k + slot];
                    if p < 0 { break; }
                    let want = (cosine(p as usize) - lo) * if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
                    prop_assert_eq!(res.components[(u * k + slot) * 4 + 1], want, "user {} post {}", u, p);
                }
                // every post the user may see is in the list (top_k = n_posts)
                prop_assert_eq!(res.indices[u * k..(u + 1) * k].iter().filter(|&&p| p >= 0).count(), shown.len());
            }
        }
    }
}
