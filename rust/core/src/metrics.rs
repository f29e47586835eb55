//! Offline ranking metrics, exactly as `shared/EVAL.md` defines them.
//!
//! For each evaluated user (a non-empty test row), with `hits` = test items among the first `k`
//! recommended and `t = min(k, |test|)`:
//! precision = hits / k, recall = hits / t, NDCG = DCG / IDCG with binary gains, DCG = sum over
//! hit ranks r (from 1) of 1 / log2(r + 1), IDCG = sum_{r=1..t} 1 / log2(r + 1).
//! All three are averaged over evaluated users. Coverage = distinct items in the evaluated users'
//! top-k lists / `n_items` (not averaged).

use crate::sparse::CsrRef;
use crate::{Error, Result};

/// Metrics at one cutoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankingMetrics {
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub coverage: f64,
    /// Users evaluated (non-empty test rows).
    pub users: usize,
}

/// Top-k lists as a row-major `n_users x width` array of item indices, `-1` padded.
#[derive(Debug, Clone, Copy)]
pub struct TopKLists<'a> {
    pub items: &'a [i64],
    pub n_users: usize,
    pub width: usize,
}

impl TopKLists<'_> {
    fn validate(&self, n_items: usize) -> Result<()> {
        if self.items.len() != self.n_users * self.width {
            return Err(Error::invalid(
                "topk",
                format!(
                    "has {} elements, expected {} x {}",
                    self.items.len(),
                    self.n_users,
                    self.width
                ),
            ));
        }
        if let Some(&bad) = self.items.iter().find(|&&x| x < -1 || x >= n_items as i64) {
            return Err(Error::invalid(
                "topk",
                format!("item index {bad} out of range (-1 pads, items are 0..{n_items})"),
            ));
        }
        Ok(())
    }

    fn row(&self, u: usize) -> &[i64] {
        &self.items[u * self.width..(u + 1) * self.width]
    }
}

fn check(topk: &TopKLists, test: &CsrRef<f32>, k: usize, n_items: usize) -> Result<()> {
    if k == 0 {
        return Err(Error::invalid("k", "must be >= 1"));
    }
    if k > topk.width {
        return Err(Error::invalid(
            "k",
            format!("must be <= the width of topk ({})", topk.width),
        ));
    }
    if test.nrows != topk.n_users {
        return Err(Error::invalid(
            "test",
            format!(
                "has {} rows but topk has {} (rows must be aligned)",
                test.nrows, topk.n_users
            ),
        ));
    }
    if n_items == 0 {
        return Err(Error::invalid("n_items", "must be >= 1"));
    }
    topk.validate(n_items.max(test.ncols))
}

#[inline]
fn contains(sorted: &[u32], item: i64) -> bool {
    item >= 0 && item <= u32::MAX as i64 && sorted.binary_search(&(item as u32)).is_ok()
}

/// precision@k, recall@k, NDCG@k and coverage@k. `n_items` is the catalog size (coverage's
/// denominator); items in `topk` must be below `max(n_items, test.ncols)`.
pub fn ranking_metrics(
    topk: TopKLists,
    test: CsrRef<f32>,
    k: usize,
    n_items: usize,
) -> Result<RankingMetrics> {
    check(&topk, &test, k, n_items)?;
    let mut seen = vec![false; n_items.max(test.ncols)];
    let (mut p, mut r, mut n, mut users) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for u in 0..topk.n_users {
        let (truth, _) = test.row(u);
        if truth.is_empty() {
            continue;
        }
        users += 1;
        let t = k.min(truth.len());
        let mut hits = 0usize;
        let mut dcg = 0.0f64;
        for (rank0, &item) in topk.row(u)[..k].iter().enumerate() {
            if item < 0 {
                continue;
            }
            seen[item as usize] = true;
            if contains(truth, item) {
                hits += 1;
                dcg += 1.0 / ((rank0 + 2) as f64).log2();
            }
        }
        let idcg: f64 = (0..t).map(|r0| 1.0 / ((r0 + 2) as f64).log2()).sum();
        p += hits as f64 / k as f64;
        r += hits as f64 / t as f64;
        n += dcg / idcg;
    }
    let covered = seen.iter().filter(|&&s| s).count();
    let denom = users.max(1) as f64;
    Ok(RankingMetrics {
        precision: p / denom,
        recall: r / denom,
        ndcg: n / denom,
        coverage: covered as f64 / n_items as f64,
        users,
    })
}

/// [`ranking_metrics`] at each cutoff of `ks` (for precision/recall curves).
pub fn metrics_at_k(
    topk: TopKLists,
    test: CsrRef<f32>,
    ks: &[usize],
    n_items: usize,
) -> Result<Vec<RankingMetrics>> {
    if ks.is_empty() {
        return Err(Error::invalid("ks", "must not be empty"));
    }
    ks.iter()
        .map(|&k| ranking_metrics(topk, test, k, n_items))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::Csr;

    fn test_matrix(rows: &[&[u32]], ncols: usize) -> Csr<f32> {
        let mut indptr = vec![0];
        let mut indices = vec![];
        for r in rows {
            indices.extend_from_slice(r);
            indptr.push(indices.len());
        }
        let data = vec![1.0; indices.len()];
        Csr::from_parts("test", rows.len(), ncols, indptr, indices, data).unwrap()
    }

    #[test]
    fn hand_computed_example() {
        // user 0: hits at ranks 1 and 3 of k=3, |test| = 4 -> t = 3.
        // user 1: no test items -> skipped. user 2: one test item, hit at rank 2.
        let test = test_matrix(&[&[0, 2, 5, 7], &[], &[4]], 10);
        let items = [0, 1, 2, 3, 1, 2, 9, 4, -1];
        let lists = TopKLists {
            items: &items,
            n_users: 3,
            width: 3,
        };
        let m = ranking_metrics(lists, test.view(), 3, 10).unwrap();
        assert_eq!(m.users, 2);
        let l = |r: f64| 1.0 / (r + 1.0).log2();
        let ndcg0 = (l(1.0) + l(3.0)) / (l(1.0) + l(2.0) + l(3.0));
        let ndcg2 = l(2.0) / l(1.0);
        assert!((m.precision - (2.0 / 3.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((m.recall - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert!((m.ndcg - (ndcg0 + ndcg2) / 2.0).abs() < 1e-12);
        // lists of evaluated users: {0, 1, 2} and {9, 4}
        assert!((m.coverage - 5.0 / 10.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_arguments() {
        let test = test_matrix(&[&[0]], 3);
        let items = [0i64, 5];
        let lists = TopKLists {
            items: &items,
            n_users: 1,
            width: 2,
        };
        assert!(ranking_metrics(lists, test.view(), 0, 3)
            .unwrap_err()
            .to_string()
            .starts_with("k:"));
        assert!(ranking_metrics(lists, test.view(), 3, 3)
            .unwrap_err()
            .to_string()
            .starts_with("k:"));
        assert!(ranking_metrics(lists, test.view(), 1, 3)
            .unwrap_err()
            .to_string()
            .starts_with("topk:"));
    }
}
