//! Weighting of a users x items interaction matrix before item similarities are computed, as
//! `implicit`'s item-item recommenders do it: they weight the *items x users* matrix, so the
//! "documents" are items and the "terms" are users.
//!
//! With `N` = number of items, `n_u` = entries of user `u`, `idf_u = ln N - ln(1 + n_u)`:
//! - `Tfidf`: `sqrt(x) * idf_u` (= `implicit.nearest_neighbours.tfidf_weight(X.T).T`);
//! - `Bm25`: `x (k1 + 1) / (k1 L_i + x) * idf_u` with `L_i = 1 - b + b s_i / mean(s)`, `s_i` the
//!   column sum of item `i` (= `bm25_weight(X.T, k1, b).T`);
//! - `Binary`: 1 for every non-zero entry; `None`: the values as they are.

use crate::config::InteractionWeighting;
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
            if !(k1.is_finite() && k1 >= 0.0) {
                return Err(Error::invalid(
                    "k1",
                    format!("must be finite and >= 0, got {k1}"),
                ));
            }
            if !(b.is_finite() && (0.0..=1.0).contains(&b)) {
                return Err(Error::invalid("b", format!("must be in [0, 1], got {b}")));
            }
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

#[cfg(test)]
mod tests {
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
}
