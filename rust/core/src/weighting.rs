//! Weighting of a users x items interaction matrix before item similarities are computed, as
//! `implicit`'s item-item recommenders do it: they weight the *items x users* matrix, so the
//! "documents" are items and the "terms" are users.
//!
//! With `N` = number of items, `n_u` = entries of user `u`, `idf_u = ln N - ln(1 + n_u)`:
//! - `Tfidf`: `sqrt(x) * idf_u` (= `implicit.nearest_neighbours.tfidf_weight(X.T).T`);
//! - `Bm25`: `x (k1 + 1) / (k1 L_i + x) * idf_u` with `L_i = 1 - b + b s_i / mean(s)`, `s_i` the
//!   column sum of item `i` (= `bm25_weight(X.T, k1, b).T`);
//! - `Binary`: 1 for every non-zero entry; `None`: the values as they are.
//!
//! [`history_weights`]: the recency of each interaction within its user's own history, the
//! factor the pipeline and the evaluation multiply interaction values by.

use rayon::prelude::*;

use crate::config::{check_bm25_b, check_bm25_k1, InteractionWeighting};
use crate::error::{check_len, check_non_negative};
use crate::sparse::{Csr, CsrRef};
use crate::{Error, Result};

pub fn weight_interactions(
    x: CsrRef<f32>,
    weighting: InteractionWeighting,
    k1: f32,
    b: f32,
) -> Result<Csr<f32>> {
    let mut out = x.to_owned();
    match weighting {
        InteractionWeighting::None => {}
        InteractionWeighting::Binary => {
            for v in out.data.iter_mut() {
                *v = if *v != 0.0 { 1.0 } else { 0.0 };
            }
        }
        InteractionWeighting::Tfidf => {
            let n = x.ncols as f64;
            for u in 0..x.nrows {
                let (a, e) = (x.indptr[u], x.indptr[u + 1]);
                let idf = n.ln() - ((e - a) as f64).ln_1p();
                for v in &mut out.data[a..e] {
                    *v = ((*v as f64).sqrt() * idf) as f32;
                }
            }
        }
        InteractionWeighting::Bm25 => {
            check_bm25_k1("k1", k1)?;
            check_bm25_b("b", b)?;
            let (k1, b) = (k1 as f64, b as f64);
            let n = x.ncols as f64;
            let mut col_sums = vec![0f64; x.ncols];
            for (&j, &v) in x.indices.iter().zip(x.data) {
                col_sums[j as usize] += v as f64;
            }
            let mean = col_sums.iter().sum::<f64>() / (x.ncols.max(1) as f64);
            // an all-zero matrix has no lengths to normalize by (implicit would divide by 0)
            let mean = if mean > 0.0 { mean } else { 1.0 };
            for u in 0..x.nrows {
                let (a, e) = (x.indptr[u], x.indptr[u + 1]);
                let idf = n.ln() - ((e - a) as f64).ln_1p();
                for p in a..e {
                    let j = x.indices[p] as usize;
                    let len_norm = (1.0 - b) + b * col_sums[j] / mean;
                    let v = x.data[p] as f64;
                    out.data[p] = (v * (k1 + 1.0) / (k1 * len_norm + v) * idf) as f32;
                }
            }
        }
    }
    Ok(out)
}

/// The lightest an interaction weighs in [`history_weights`]: the oldest interactions stay in
/// the history (they still exclude their items) and no weight underflows f32, which similarity
/// norms would turn into infinities.
pub const MIN_HISTORY_WEIGHT: f64 = 1e-6;

/// A column that orders interactions (their times, their raw item ids): integers or floats.
#[derive(Debug, Clone, Copy)]
pub enum OrderKeys<'a> {
    Ints(&'a [i64]),
    Floats(&'a [f64]),
}

/// The weight of each interaction within its user's history: the user's n-th most recent
/// interaction (n = 0 for the latest; ordered by time, then raw item id, then position in the
/// input) weighs `max(0.5^(n / half_life), 1e-6)`, computed in f64 and rounded to f32.
/// `half_life` 0 gives every interaction weight 1. The three columns are aligned, one entry per
/// interaction; NaN has no place in an order and is refused.
pub fn history_weights(
    users: &[i64],
    timestamps: OrderKeys,
    raw_items: OrderKeys,
    half_life: f64,
) -> Result<Vec<f32>> {
    use OrderKeys::{Floats, Ints};
    match (timestamps, raw_items) {
        (Ints(t), Ints(r)) => weights_in_order(users, t, r, half_life),
        (Ints(t), Floats(r)) => weights_in_order(users, t, r, half_life),
        (Floats(t), Ints(r)) => weights_in_order(users, t, r, half_life),
        (Floats(t), Floats(r)) => weights_in_order(users, t, r, half_life),
    }
}

fn weights_in_order<T, R>(
    users: &[i64],
    timestamps: &[T],
    raw_items: &[R],
    half_life: f64,
) -> Result<Vec<f32>>
where
    T: PartialOrd + Copy + Sync,
    R: PartialOrd + Copy + Sync,
{
    let n = users.len();
    check_len("timestamps", timestamps.len(), n, "interaction")?;
    check_len("raw_items", raw_items.len(), n, "interaction")?;
    check_non_negative("half_life", half_life)?;
    // a value that is not equal to itself is a NaN, which has no place in an order
    #[allow(clippy::eq_op)]
    if timestamps.iter().any(|t| t.partial_cmp(t).is_none()) {
        return Err(Error::invalid("timestamps", "must not be NaN"));
    }
    #[allow(clippy::eq_op)]
    if raw_items.iter().any(|r| r.partial_cmp(r).is_none()) {
        return Err(Error::invalid("raw_items", "must not be NaN"));
    }
    let mut w = vec![1f32; n];
    if half_life == 0.0 || n == 0 {
        return Ok(w);
    }
    let key = |i: usize| (users[i], timestamps[i], raw_items[i]);
    let mut order: Vec<usize> = (0..n).collect();
    // stable, as numpy's lexsort: equal keys keep their input order
    order.par_sort_by(|&a, &b| {
        let ((ua, ta, ra), (ub, tb, rb)) = (key(a), key(b));
        ua.cmp(&ub).then_with(|| {
            let by_time = ta.partial_cmp(&tb).expect("no NaN (checked)");
            by_time.then_with(|| ra.partial_cmp(&rb).expect("no NaN (checked)"))
        })
    });
    let mut start = 0;
    while start < n {
        let user = users[order[start]];
        let end = start + order[start..].partition_point(|&i| users[i] == user);
        for (pos, &i) in order[start..end].iter().enumerate() {
            let from_end = (end - start - 1 - pos) as f64;
            w[i] = 0.5f64.powf(from_end / half_life).max(MIN_HISTORY_WEIGHT) as f32;
        }
        start = end;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::OrderKeys::{Floats, Ints};
    use super::*;

    #[test]
    fn tfidf_by_hand() {
        // 2 users x 3 items; user 0 has 2 entries, user 1 has 1.
        let x = Csr::from_parts(
            "x",
            2,
            3,
            vec![0, 2, 3],
            vec![0, 2, 1],
            vec![4.0f32, 1.0, 9.0],
        )
        .unwrap();
        let w = weight_interactions(x.view(), InteractionWeighting::Tfidf, 0.0, 0.0).unwrap();
        let idf0 = 3f64.ln() - 3f64.ln();
        let idf1 = 3f64.ln() - 2f64.ln();
        assert!((w.data[0] as f64 - 2.0 * idf0).abs() < 1e-6);
        assert!((w.data[2] as f64 - 3.0 * idf1).abs() < 1e-6);
        let bin = weight_interactions(x.view(), InteractionWeighting::Binary, 0.0, 0.0).unwrap();
        assert_eq!(bin.data, vec![1.0, 1.0, 1.0]);
        assert!(weight_interactions(x.view(), InteractionWeighting::Bm25, -1.0, 0.5).is_err());
    }

    #[test]
    fn history_weights_halve_every_half_life() {
        // user 0 by time: t=10 (n = 2), t=20 (n = 1), t=30 (the latest, n = 0); user 1 alone
        let w = history_weights(
            &[0, 0, 0, 1],
            Ints(&[30, 10, 20, 5]),
            Ints(&[1, 2, 3, 4]),
            1.0,
        );
        assert_eq!(w.unwrap(), vec![1.0, 0.25, 0.5, 1.0]);
        // equal times: the raw item id orders them, then the input position
        let w = history_weights(&[7, 7, 7], Floats(&[1.0; 3]), Ints(&[9, 3, 9]), 1.0).unwrap();
        assert_eq!(w, vec![0.5, 0.25, 1.0]);
        let w = history_weights(&[0, 0], Ints(&[1, 2]), Floats(&[0.0, 0.0]), 0.0).unwrap();
        assert_eq!(w, vec![1.0; 2]);
        // far in the past, never below the floor
        let old = history_weights(&[0, 0], Ints(&[0, 1]), Ints(&[0, 0]), 1e-3).unwrap();
        assert_eq!(old[0], MIN_HISTORY_WEIGHT as f32);
    }

    #[test]
    fn history_weights_reject_bad_arguments_by_name() {
        let err = |t: &[f64], r: &[i64], half_life: f64| {
            let users = vec![0; t.len()];
            let e = history_weights(&users, Floats(t), Ints(r), half_life);
            e.unwrap_err().to_string()
        };
        assert!(err(&[1.0], &[0], -1.0).starts_with("half_life:"));
        assert!(err(&[1.0], &[0], f64::NAN).starts_with("half_life:"));
        assert!(err(&[1.0], &[0], f64::INFINITY).starts_with("half_life:"));
        assert!(err(&[1.0], &[0, 0], 1.0).starts_with("raw_items: has length 2"));
        assert!(err(&[f64::NAN], &[0], 1.0).starts_with("timestamps: must not be NaN"));
        let short = history_weights(&[0, 1], Ints(&[1]), Ints(&[0, 0]), 1.0).unwrap_err();
        assert!(short.to_string().starts_with("timestamps: has length 1"));
    }

    proptest::proptest! {
        /// Against the definition, one user at a time: an interaction's weight is
        /// 0.5^(n / half_life) floored, n = how many of the user's interactions come after it
        /// by (time, raw item, position).
        #[test]
        fn history_weights_follow_the_definition(
            rows in proptest::collection::vec((0i64..5, 0i64..20, 0i64..6), 0..60),
            half_life in 0.1f64..10.0,
            float_times in proptest::bool::ANY,
        ) {
            let users: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let times: Vec<i64> = rows.iter().map(|r| r.1).collect();
            let halves: Vec<f64> = times.iter().map(|&t| t as f64 * 0.5).collect();
            let raw: Vec<i64> = rows.iter().map(|r| r.2).collect();
            let t = if float_times { Floats(&halves) } else { Ints(&times) };
            let w = history_weights(&users, t, Ints(&raw), half_life).unwrap();
            for i in 0..rows.len() {
                let key = |j: usize| (rows[j].0, rows[j].1, rows[j].2, j);
                let after = (0..rows.len())
                    .filter(|&j| rows[j].0 == rows[i].0 && key(j) > key(i))
                    .count();
                let want = 0.5f64.powf(after as f64 / half_life).max(1e-6) as f32;
                proptest::prop_assert_eq!(w[i].to_bits(), want.to_bits());
            }
        }
    }
}
