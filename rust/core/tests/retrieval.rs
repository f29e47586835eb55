//! The candidate path of the hybrid (`retrieval.mode = "candidates"`) against the exhaustive
//! path, its reference: with budgets that cover every post and complete index queries the two
//! give the same lists bit for bit (indices, scores, components) for each collaborative model;
//! the edge cases (no history, posts without terms, no terms at all, everything excluded) give
//! the same answers; with small budgets the lists still only hold allowed posts, sorted, scored
//! by `combine` of their components, and with `content_normalization = "cosine"` every post
//! they hold has the very score the exhaustive path gives it.

use std::sync::Arc;

use feedrank_core::cancel::Cancel;
use feedrank_core::config::{
    CollaborativeModel, ContentNormalization, HybridWeights, InteractionWeighting, RetrievalMode,
    RetrievalSettings, ScoringConfig,
};
use feedrank_core::score::{HybridModel, HybridResult, Posts};
use feedrank_core::sparse::Csr;
use proptest::prelude::*;

fn csr(nrows: usize, ncols: usize, cells: &[(usize, usize, u8)]) -> Csr<f32> {
    let mut dense = vec![None; nrows * ncols];
    if ncols > 0 {
        for &(r, c, v) in cells {
            dense[(r % nrows) * ncols + c % ncols] = Some(v as f32);
        }
    }
    let (mut indptr, mut indices, mut data) = (vec![0], vec![], vec![]);
    for r in 0..nrows {
        for c in 0..ncols {
            if let Some(v) = dense[r * ncols + c] {
                indices.push(c as u32);
                data.push(v);
            }
        }
        indptr.push(indices.len());
    }
    Csr::from_parts("m", nrows, ncols, indptr, indices, data).unwrap()
}

/// Retrieval that reaches every post: the candidate path must then equal the exhaustive one.
fn unlimited() -> RetrievalSettings {
    RetrievalSettings {
        mode: RetrievalMode::Candidates,
        budget: usize::MAX,
        collaborative: usize::MAX,
        content: usize::MAX,
        content_terms: usize::MAX,
        posting_limit: usize::MAX,
        prior: usize::MAX,
    }
}

#[derive(Debug)]
struct Data {
    x: Csr<f32>,
    exclude: Csr<f32>,
    tfidf: Arc<Csr<f32>>,
    ages: Vec<f32>,
    engagement: Vec<f32>,
    authors: Vec<i64>,
}

impl Data {
    fn posts(&self) -> Posts<'_> {
        Posts {
            tfidf: self.tfidf.clone(),
            age_days: &self.ages,
            engagement: &self.engagement,
            author: &self.authors,
        }
    }

    fn topk(
        &self,
        config: &ScoringConfig,
        candidates: Option<&[usize]>,
        users: &[usize],
    ) -> HybridResult {
        let cancel = Cancel::new();
        HybridModel::new(
            Arc::new(self.x.clone()),
            &self.posts(),
            config,
            Some(self.exclude.clone()),
            candidates,
            None,
            &cancel,
        )
        .unwrap()
        .topk(users, &cancel)
        .unwrap()
    }

    /// Both paths on the same data and settings.
    fn both(
        &self,
        config: &ScoringConfig,
        retrieval: RetrievalSettings,
        candidates: Option<&[usize]>,
        users: &[usize],
    ) -> (HybridResult, HybridResult) {
        let exhaustive = self.topk(config, candidates, users);
        let retrieved = self.topk(
            &ScoringConfig {
                retrieval,
                ..config.clone()
            },
            candidates,
            users,
        );
        (exhaustive, retrieved)
    }
}

const MODELS: [CollaborativeModel; 3] = [
    CollaborativeModel::UserUser,
    CollaborativeModel::ItemItem,
    CollaborativeModel::Ridge,
];

fn config(model: CollaborativeModel, k: usize, weights: [f32; 4]) -> ScoringConfig {
    ScoringConfig {
        collaborative: model,
        weighting: if model == CollaborativeModel::Ridge {
            InteractionWeighting::Binary
        } else {
            InteractionWeighting::None
        },
        neighbors: 5,
        ridge_l2: 2.0,
        top_k: k,
        weights: HybridWeights::from_array(weights),
        ..ScoringConfig::default()
    }
}

/// Candidate settings of the property tests: `budget`, then the collaborative, content and
/// prior caps, the query terms and the posting limit.
fn small(budget: usize, caps: (usize, usize, usize, usize, usize)) -> RetrievalSettings {
    RetrievalSettings {
        mode: RetrievalMode::Candidates,
        budget,
        collaborative: caps.0,
        content: caps.1,
        prior: caps.2,
        content_terms: caps.3,
        posting_limit: caps.4,
    }
}

const N_USERS: usize = 40; // more than one block of the exhaustive kernel
const N_POSTS: usize = 60;
const N_TERMS: usize = 10;

prop_compose! {
    fn data()(
        cells in proptest::collection::vec((0..N_USERS, 0..N_POSTS, 0u8..5), 0..300),
        hidden in proptest::collection::vec((0..N_USERS, 0..N_POSTS, 1u8..2), 0..30),
        terms in proptest::collection::vec((0..N_POSTS, 0..N_TERMS, 1u8..6), 0..200),
        ages in proptest::collection::vec(0f32..100.0, N_POSTS),
        engagement in proptest::collection::vec(0f32..50.0, N_POSTS),
        authors in proptest::collection::vec(-1i64..N_USERS as i64, N_POSTS),
    ) -> Data {
        Data {
            x: csr(N_USERS, N_POSTS, &cells),
            exclude: csr(N_USERS, N_POSTS, &hidden),
            tfidf: Arc::new(csr(N_POSTS, N_TERMS, &terms)),
            ages, engagement, authors,
        }
    }
}

fn assert_valid(d: &Data, config: &ScoringConfig, res: &HybridResult, users: &[usize]) {
    let k = res.k;
    for (r, &u) in users.iter().enumerate() {
        let row = &res.indices[r * k..(r + 1) * k];
        let (hist, _) = d.x.view().row(u);
        let (hid, _) = d.exclude.view().row(u);
        let n = row.iter().take_while(|&&p| p >= 0).count();
        assert!(row[n..].iter().all(|&p| p == -1));
        for (slot, &p) in row[..n].iter().enumerate() {
            let p = p as u32;
            assert!(!hist.contains(&p) && !hid.contains(&p) && d.authors[p as usize] != u as i64);
            let c = &res.components[(r * k + slot) * 4..(r * k + slot + 1) * 4];
            assert!(c.iter().all(|&v| (0.0..=1.0 + 1e-6).contains(&v)), "{c:?}");
            let s = config.weights.combine([c[0], c[1], c[2], c[3]]);
            assert!((s - res.scores[r * k + slot]).abs() < 1e-5);
            if slot > 0 {
                assert!(res.scores[r * k + slot - 1] >= res.scores[r * k + slot]);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn candidates_covering_every_post_give_the_exhaustive_lists_exactly(
        d in data(),
        k in 1usize..70,
        model in 0usize..3,
        candidates_even in any::<bool>(),
        cosine in any::<bool>(),
        weights in (0f32..1.0, 0f32..1.0, 0f32..1.0, 0f32..1.0)
            .prop_filter("one weight > 0", |w| w.0 + w.1 + w.2 + w.3 > 0.01),
    ) {
        let mut cfg = config(MODELS[model], k, [weights.0, weights.1, weights.2, weights.3]);
        if cosine {
            cfg.content_normalization = ContentNormalization::Cosine;
        }
        let users: Vec<usize> = (0..N_USERS).collect();
        let even: Vec<usize> = (0..N_POSTS).step_by(2).collect();
        let cands = candidates_even.then_some(&even[..]);
        let (exhaustive, retrieved) = d.both(&cfg, unlimited(), cands, &users);
        prop_assert_eq!(&retrieved.indices, &exhaustive.indices);
        prop_assert_eq!(&retrieved.scores, &exhaustive.scores);
        prop_assert_eq!(&retrieved.components, &exhaustive.components);
    }

    /// Small settings still give allowed, sorted lists scored by `combine` of their
    /// components. With content as the cosine itself, no component's scale depends on which
    /// posts were retrieved either: each post a candidate list holds has the exhaustive path's
    /// score and components for that user, bit for bit.
    #[test]
    fn small_budgets_give_valid_lists_and_with_cosine_content_the_exhaustive_scores(
        d in data(),
        model in 0usize..3,
        budget in 5usize..30,
        caps in (1usize..20, 1usize..20, 1usize..20, 1usize..4, 1usize..10),
        cosine in any::<bool>(),
    ) {
        let mut every = config(MODELS[model], N_POSTS, [0.4, 0.3, 0.2, 0.1]);
        if cosine {
            every.content_normalization = ContentNormalization::Cosine;
        }
        let cut = ScoringConfig { top_k: 5, retrieval: small(budget, caps), ..every.clone() };
        let users: Vec<usize> = (0..N_USERS).collect();
        let all = d.topk(&every, None, &users);
        let res = d.topk(&cut, None, &users);
        assert_valid(&d, &cut, &res, &users);
        if !cosine {
            return Ok(());
        }
        for r in 0..users.len() {
            let row = &all.indices[r * N_POSTS..(r + 1) * N_POSTS];
            for slot in 0..5 {
                let p = res.indices[r * 5 + slot];
                if p < 0 {
                    break;
                }
                let at = row.iter().position(|&q| q == p).expect("an allowed post");
                prop_assert_eq!(res.scores[r * 5 + slot], all.scores[r * N_POSTS + at]);
                prop_assert_eq!(
                    &res.components[(r * 5 + slot) * 4..(r * 5 + slot + 1) * 4],
                    &all.components[(r * N_POSTS + at) * 4..(r * N_POSTS + at + 1) * 4]
                );
            }
        }
    }
}

/// A small fixed data set: 4 users x 6 posts x 3 terms.
fn fixed(terms: &[(usize, usize, u8)], n_terms: usize) -> Data {
    Data {
        x: csr(
            4,
            6,
            &[
                (0, 0, 3),
                (0, 1, 1),
                (1, 1, 2),
                (1, 2, 4),
                (2, 0, 1),
                (2, 5, 2),
            ],
        ),
        exclude: csr(4, 6, &[(2, 3, 1)]),
        tfidf: Arc::new(csr(6, n_terms, terms)),
        ages: vec![1.0, 5.0, 2.0, 40.0, 3.0, 9.0],
        engagement: vec![4.0, 0.0, 7.0, 1.0, 2.0, 30.0],
        authors: vec![-1, 2, -1, 0, -1, -1],
    }
}

#[test]
fn edge_cases_give_the_exhaustive_answers() {
    let terms = [
        (0, 0, 2),
        (1, 0, 1),
        (1, 1, 3),
        (2, 2, 1),
        (3, 1, 1),
        (4, 2, 2),
    ];
    // post 5 has no terms; user 3 has no history (the cold-start list)
    let with_terms = fixed(&terms, 3);
    // an empty index: no terms at all (content is 0 everywhere)
    let no_terms = fixed(&[], 0);
    // no term shared by anyone
    let empty_rows = fixed(&[], 3);
    // every post shares a term with every profile: content's minimum is no longer 0
    let shared_term: Vec<(usize, usize, u8)> = (0..6)
        .map(|p| (p, 0, p as u8 + 1))
        .chain([(1, 1, 3), (4, 1, 1), (2, 2, 5)])
        .collect();
    let shared = fixed(&shared_term, 3);
    let users = [0, 1, 2, 3, 3, 0];
    for d in [&with_terms, &no_terms, &empty_rows, &shared] {
        for (model, normalization) in MODELS
            .into_iter()
            .flat_map(|m| ContentNormalization::ALL.map(|n| (m, n)))
        {
            for k in [1, 3, 6] {
                let mut cfg = config(model, k, [0.4, 0.3, 0.2, 0.1]);
                cfg.content_normalization = normalization;
                let (exhaustive, retrieved) = d.both(&cfg, unlimited(), None, &users);
                assert_eq!(retrieved, exhaustive, "{model:?} {normalization:?} k {k}");
                // the default sizes are far above this data's: the same lists
                let defaults = RetrievalSettings {
                    mode: RetrievalMode::Candidates,
                    ..RetrievalSettings::default()
                };
                let (_, by_default) = d.both(&cfg, defaults, None, &users);
                assert_eq!(by_default, exhaustive, "{model:?} {normalization:?} k {k}");
            }
        }
    }
}

#[test]
fn everything_excluded_gives_empty_lists_as_the_exhaustive_path() {
    let d = fixed(&[(0, 0, 1), (1, 1, 1)], 2);
    let everything = Data {
        exclude: csr(4, 6, &(0..6).map(|p| (0, p, 1)).collect::<Vec<_>>()),
        ..d
    };
    let cfg = config(CollaborativeModel::ItemItem, 4, [0.4, 0.3, 0.2, 0.1]);
    let (exhaustive, retrieved) = everything.both(&cfg, unlimited(), None, &[0, 1]);
    assert_eq!(retrieved, exhaustive);
    assert!(retrieved.indices[..4].iter().all(|&p| p == -1));
    // no allowed post at all: every list is empty
    let (exhaustive, retrieved) = everything.both(&cfg, unlimited(), Some(&[]), &[0, 1, 2, 3]);
    assert_eq!(retrieved, exhaustive);
    assert!(retrieved.indices.iter().all(|&p| p == -1));
}

#[test]
fn a_one_post_budget_is_refused_below_top_k_and_scores_the_best_candidate() {
    let d = fixed(&[(0, 0, 1), (2, 0, 1)], 1);
    let mut cfg = config(CollaborativeModel::ItemItem, 2, [0.4, 0.3, 0.2, 0.1]);
    cfg.retrieval = RetrievalSettings {
        mode: RetrievalMode::Candidates,
        budget: 1,
        ..RetrievalSettings::default()
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .starts_with("retrieval.budget: must be >= top_k (2) in candidates mode, got 1"));
    cfg.top_k = 1;
    let res = d.topk(&cfg, None, &[0, 3]);
    assert_valid(&d, &cfg, &res, &[0, 3]);
    assert!(res.indices.iter().all(|&p| p >= 0));
}

/// More posts than one window of the candidate path's per-window arrays (4,096 posts): users'
/// histories, hidden posts, authored posts and terms spread over all the windows, scored with
/// covering settings, must still give the exhaustive lists bit for bit; with the default sizes
/// (which cut the postings, the pool and the prior here) the lists stay valid.
#[test]
fn many_windows_of_posts_give_the_exhaustive_lists_exactly() {
    const USERS: usize = 24;
    const POSTS: usize = 3 * 4096 + 123;
    const TERMS: usize = 30;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let cells: Vec<(usize, usize, u8)> = (0..USERS * 40)
        .map(|i| (i % USERS, next(POSTS), 1 + next(4) as u8))
        .collect();
    let hidden: Vec<(usize, usize, u8)> = (0..USERS * 5)
        .map(|i| (i % USERS, next(POSTS), 1))
        .collect();
    let terms: Vec<(usize, usize, u8)> = (0..POSTS * 3)
        .map(|i| (i / 3, next(TERMS), 1 + next(5) as u8))
        .collect();
    let d = Data {
        x: csr(USERS, POSTS, &cells),
        exclude: csr(USERS, POSTS, &hidden),
        tfidf: Arc::new(csr(POSTS, TERMS, &terms)),
        ages: (0..POSTS).map(|_| next(1000) as f32 / 10.0).collect(),
        engagement: (0..POSTS).map(|_| next(500) as f32 / 10.0).collect(),
        // a quarter of the posts by one of the users, the others by nobody known
        authors: (0..POSTS)
            .map(|_| match next(USERS * 4) {
                a if a < USERS => a as i64,
                _ => -1,
            })
            .collect(),
    };
    let users: Vec<usize> = (0..USERS).collect();
    let every_third: Vec<usize> = (0..POSTS).step_by(3).collect();
    for model in MODELS {
        let cfg = config(model, 50, [0.4, 0.3, 0.2, 0.1]);
        for cands in [None, Some(&every_third[..])] {
            let (exhaustive, retrieved) = d.both(&cfg, unlimited(), cands, &users);
            assert_eq!(retrieved, exhaustive, "{model:?}");
        }
        let small = RetrievalSettings {
            mode: RetrievalMode::Candidates,
            budget: 300,
            collaborative: 100,
            content: 100,
            content_terms: 3,
            posting_limit: 500,
            prior: 200,
        };
        let mut cut = cfg.clone();
        cut.retrieval = small;
        let res = d.topk(&cut, None, &users);
        assert_valid(&d, &cut, &res, &users);
    }
}
