//! The ridge maths of the `ridge` collaborative model (`collaborative.rs` scores with it): an
//! `items x items` CSR `S` in the layout of item neighbours, a user's scores being `x_u · S`.
//!
//! [`ridge_item_neighbors`]: a neighbourhood-restricted ridge regression of each item on its
//! nearest items. EASE (Steck 2019) solves this regression against *all* items with one dense
//! `items x items` inverse, which is cubic in the number of items; restricting item `j`'s
//! regressors to its `k` strongest co-occurring items makes it `k x k` per item, linear in the
//! number of items, and keeps the result sparse (`k` entries per item).
//!
//! For item `j` with neighbours `N` (top-`k` by co-occurrence `G = Xᵀ X`, `j` excluded, which is
//! EASE's zero-diagonal constraint), the weights are `b = (G_NN + λ I)⁻¹ G_Nj` and `S[a, j] = b_a`.
//! `G_NN` is exact, without any `items x items` matrix: entries between two of the
//! [`CACHED_ITEMS`] most popular items (the usual neighbours) come from a dense table filled
//! during the co-occurrence pass; any other entry is the sparse dot product of the two items'
//! user lists (the shorter one searched in the longer). (Reading `G_NN` from truncated
//! co-occurrence lists instead breaks positive definiteness and, with it, the model.)
//! Cost: one co-occurrence pass (as item-item cosine), then per item `k²/2` lookups or short
//! intersections and one `k x k` solve.

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::error::{check_count, check_positive};
use crate::sparse::{from_sorted_rows, Csr, CsrRef};
use crate::topk::{Scored, TopK};
use crate::Result;

/// Parameters of [`ridge_item_neighbors`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RidgeParams {
    /// Regressors per item (the `k` nearest items by co-occurrence).
    pub neighbors: usize,
    /// The ridge penalty λ (> 0), in units of co-occurrence counts.
    pub l2: f32,
}

impl RidgeParams {
    pub fn validate(&self) -> Result<()> {
        check_count("neighbors", self.neighbors)?;
        check_positive("l2", self.l2)
    }
}

/// Items whose mutual co-occurrences are kept in a dense table (4096² f32 = 64 MB at most).
pub const CACHED_ITEMS: usize = 4096;

/// One item's pass: its `keep` largest co-occurrences with other items (descending, ties by
/// lower index), its own squared norm `G_jj`, and, for a cached item, its row of the cache.
type ItemPass = (Vec<Scored>, f64, Vec<f32>);

fn cooccurrence_top(
    x: CsrRef<f32>,
    xt: CsrRef<f32>,
    keep: usize,
    cached: &[u32],
    n_cached: usize,
    cancel: &Cancel,
) -> Vec<ItemPass> {
    let n_items = x.ncols;
    (0..n_items)
        .into_par_iter()
        .map_init(
            || (vec![0f32; n_items], Vec::<u32>::new(), TopK::new(keep)),
            |(acc, touched, top), j| {
                if cancel.is_cancelled() {
                    return (Vec::new(), 0.0, Vec::new());
                }
                let (users, xv) = xt.row(j);
                let mut diag = 0f64;
                for (&u, &w) in users.iter().zip(xv) {
                    diag += (w as f64) * (w as f64);
                    let (items, vals) = x.row(u as usize);
                    for (&b, &v) in items.iter().zip(vals) {
                        let slot = &mut acc[b as usize];
                        if *slot == 0.0 {
                            touched.push(b);
                        }
                        *slot += w * v;
                    }
                }
                let mut row = Vec::new();
                if cached[j] != u32::MAX {
                    row.resize(n_cached, 0f32);
                }
                top.clear();
                for &b in touched.iter() {
                    let v = acc[b as usize];
                    if !row.is_empty() && cached[b as usize] != u32::MAX {
                        row[cached[b as usize] as usize] = v;
                    }
                    if b as usize != j && v > 0.0 {
                        top.push(b, v);
                    }
                    acc[b as usize] = 0.0;
                }
                touched.clear();
                let mut out = Vec::new();
                top.drain_sorted(&mut out);
                (out, diag, row)
            },
        )
        .collect()
}

/// `Σ_u a_u b_u` over two sorted sparse rows, in ascending `u` (the order of the cache, so the
/// two give identical values): the shorter row is searched in the longer one.
fn sparse_dot(a: (&[u32], &[f32]), b: (&[u32], &[f32])) -> f32 {
    let (short, long) = if a.0.len() <= b.0.len() {
        (a, b)
    } else {
        (b, a)
    };
    let mut acc = 0f32;
    let mut lo = 0;
    for (&u, &v) in short.0.iter().zip(short.1) {
        if lo >= long.0.len() {
            break;
        }
        match long.0[lo..].binary_search(&u) {
            Ok(p) => {
                let w = long.1[lo + p];
                acc += v * w; // IEEE products commute: same value as the table's
                lo += p + 1;
            }
            Err(p) => lo += p,
        }
    }
    acc
}

/// Solves `a · x = b` in place for a symmetric positive definite `a` (`n x n`, row-major) by
/// Cholesky (`k³/3` flops, half of elimination); falls back to [`solve_dense`] if a pivot is not
/// positive (round-off on a nearly singular Gram matrix). `a` is overwritten.
fn solve_spd(a: &mut [f64], b: &mut [f64], n: usize) -> Option<()> {
    let backup: Vec<f64> = a.to_vec();
    for j in 0..n {
        let row_j = &mut a[j * n..j * n + n];
        let d = row_j[j] - row_j[..j].iter().map(|x| x * x).sum::<f64>();
        if !(d > 0.0 && d.is_finite()) {
            a.copy_from_slice(&backup);
            return solve_dense(a, b, n);
        }
        row_j[j] = d.sqrt();
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let row_j = &head[j * n..j * n + n];
        let pivot = row_j[j];
        for i in 0..n - j - 1 {
            let row_i = &mut tail[i * n..i * n + n];
            let dot: f64 = row_i[..j].iter().zip(&row_j[..j]).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - dot) / pivot;
        }
    }
    // L y = b, then Lᵀ x = y.
    for i in 0..n {
        let row = &a[i * n..i * n + n];
        let dot: f64 = row[..i].iter().zip(&b[..i]).map(|(x, y)| x * y).sum();
        b[i] = (b[i] - dot) / row[i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for r in i + 1..n {
            s -= a[r * n + i] * b[r];
        }
        b[i] = s / a[i * n + i];
    }
    Some(())
}

/// Solves `a · x = b` in place (`a` is `n x n`, row-major) by Gaussian elimination with partial
/// pivoting; `None` when `a` is numerically singular.
fn solve_dense(a: &mut [f64], b: &mut [f64], n: usize) -> Option<()> {
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&p, &q| a[p * n + col].abs().total_cmp(&a[q * n + col].abs()))?;
        if a[pivot * n + col].abs() < 1e-12 {
            return None;
        }
        if pivot != col {
            for c in 0..n {
                a.swap(pivot * n + c, col * n + c);
            }
            b.swap(pivot, col);
        }
        let d = a[col * n + col];
        for r in col + 1..n {
            let f = a[r * n + col] / d;
            if f != 0.0 {
                for c in col..n {
                    a[r * n + c] -= f * a[col * n + c];
                }
                b[r] -= f * b[col];
            }
        }
    }
    for r in (0..n).rev() {
        let mut s = b[r];
        for c in r + 1..n {
            s -= a[r * n + c] * b[c];
        }
        b[r] = s / a[r * n + r];
    }
    Some(())
}

/// The neighbourhood ridge item-item model of the module docs, from a users x items matrix of
/// non-negative interaction values (binary or weighted). Returns `S` (`items x items`, at most
/// `neighbors` entries per column); score a user with `x_u · S`.
pub fn ridge_item_neighbors(
    x: CsrRef<f32>,
    params: RidgeParams,
    cancel: &Cancel,
) -> Result<Csr<f32>> {
    ridge_with_cache(x, params, CACHED_ITEMS, cancel)
}

fn ridge_with_cache(
    x: CsrRef<f32>,
    params: RidgeParams,
    max_cached: usize,
    cancel: &Cancel,
) -> Result<Csr<f32>> {
    params.validate()?;
    x.check_finite("interactions")?;
    x.check_non_negative("interactions")?;
    let n_items = x.ncols;
    let xt = x.transpose();
    let xt = xt.view();
    // The most popular items (by users, ties by lower index) get a dense co-occurrence table.
    let n_cached = n_items.min(max_cached);
    let mut by_degree: Vec<u32> = (0..n_items as u32).collect();
    by_degree.sort_unstable_by_key(|&i| {
        let i = i as usize;
        (std::cmp::Reverse(xt.indptr[i + 1] - xt.indptr[i]), i)
    });
    let mut cached = vec![u32::MAX; n_items];
    for (slot, &i) in by_degree[..n_cached].iter().enumerate() {
        cached[i as usize] = slot as u32;
    }
    let pass = cooccurrence_top(x, xt, params.neighbors, &cached, n_cached, cancel);
    cancel.check()?;
    let mut cache = vec![0f32; n_cached * n_cached];
    for (j, (_, _, row)) in pass.iter().enumerate() {
        if cached[j] != u32::MAX {
            let c = cached[j] as usize;
            cache[c * n_cached..(c + 1) * n_cached].copy_from_slice(row);
        }
    }
    let gram_entry = |a: u32, b: u32| -> f64 {
        let (ca, cb) = (cached[a as usize], cached[b as usize]);
        if ca != u32::MAX && cb != u32::MAX {
            cache[ca as usize * n_cached + cb as usize] as f64
        } else {
            sparse_dot(xt.row(a as usize), xt.row(b as usize)) as f64
        }
    };
    let l2 = params.l2 as f64;
    // Column j of S, as (row index, weight) sorted by row index.
    let columns: Vec<Vec<(u32, f32)>> = (0..n_items)
        .into_par_iter()
        .map_init(Vec::<f64>::new, |gram, j| {
            let nb = &pass[j].0;
            let n = nb.len();
            if n == 0 || cancel.is_cancelled() {
                return Vec::new();
            }
            gram.clear();
            gram.resize(n * n, 0.0);
            for p in 0..n {
                gram[p * n + p] = pass[nb[p].index as usize].1 + l2;
                for q in p + 1..n {
                    let g = gram_entry(nb[p].index, nb[q].index);
                    gram[p * n + q] = g;
                    gram[q * n + p] = g;
                }
            }
            let mut rhs: Vec<f64> = nb.iter().map(|e| e.score as f64).collect();
            if solve_spd(gram, &mut rhs, n).is_none() {
                return Vec::new();
            }
            let mut col: Vec<(u32, f32)> = nb
                .iter()
                .zip(&rhs)
                .filter(|(_, &w)| w != 0.0)
                .map(|(e, &w)| (e.index, w as f32))
                .collect();
            col.sort_unstable_by_key(|e| e.0);
            col
        })
        .collect();
    cancel.check()?;
    // Rows of Sᵀ are the columns of S.
    let st = from_sorted_rows(n_items, columns);
    Ok(st.view().transpose())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(nrows: usize, ncols: usize, entries: &[(usize, usize)]) -> Csr<f32> {
        let mut rows = vec![Vec::new(); nrows];
        for &(r, c) in entries {
            rows[r].push((c as u32, 1.0f32));
        }
        for r in rows.iter_mut() {
            r.sort_unstable_by_key(|e| e.0);
        }
        from_sorted_rows(ncols, rows)
    }

    /// Dense reference: EASE restricted to each item's neighbour set, solved by the normal equations.
    fn dense_gram(x: &Csr<f32>) -> Vec<Vec<f64>> {
        let n = x.ncols;
        let mut g = vec![vec![0f64; n]; n];
        for u in 0..x.nrows {
            let (idx, val) = x.view().row(u);
            for (&a, &va) in idx.iter().zip(val) {
                for (&b, &vb) in idx.iter().zip(val) {
                    g[a as usize][b as usize] += (va * vb) as f64;
                }
            }
        }
        g
    }

    #[test]
    fn with_all_items_as_neighbours_it_is_ease() {
        // 6 users x 4 items, every item co-occurs with every other, so k = 3 is "all other items"
        // and the model must equal EASE: B = I - P diag(1/diag P), P = (G + λI)^-1, diag(B) = 0.
        let x = csr(
            6,
            4,
            &[
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 1),
                (1, 2),
                (2, 1),
                (2, 2),
                (2, 3),
                (3, 0),
                (3, 3),
                (4, 0),
                (4, 1),
                (4, 2),
                (4, 3),
                (5, 2),
                (5, 0),
            ],
        );
        let lam = 0.5;
        let s = ridge_item_neighbors(
            x.view(),
            RidgeParams {
                neighbors: 3,
                l2: lam,
            },
            &Cancel::new(),
        )
        .unwrap();
        let g = dense_gram(&x);
        // Column j of EASE solves (G_{-j,-j} + λI) b = G_{-j,j}.
        for j in 0..4 {
            let others: Vec<usize> = (0..4).filter(|&a| a != j).collect();
            let n = others.len();
            let mut a = vec![0f64; n * n];
            let mut b: Vec<f64> = others.iter().map(|&o| g[o][j]).collect();
            for p in 0..n {
                for q in 0..n {
                    a[p * n + q] = g[others[p]][others[q]] + if p == q { lam as f64 } else { 0.0 };
                }
            }
            solve_dense(&mut a, &mut b, n).unwrap();
            for (p, &o) in others.iter().enumerate() {
                let (idx, val) = s.view().row(o);
                let got = idx
                    .iter()
                    .position(|&c| c as usize == j)
                    .map(|q| val[q])
                    .unwrap_or(0.0);
                assert!(
                    (got as f64 - b[p]).abs() < 1e-5,
                    "S[{o},{j}] = {got}, want {}",
                    b[p]
                );
            }
            // The diagonal stays empty: an item never explains itself.
            let (idx, _) = s.view().row(j);
            assert!(!idx.contains(&(j as u32)));
        }
    }

    #[test]
    fn keeps_at_most_k_regressors_per_item_and_none_for_isolated_items() {
        // Item 4 is only ever seen alone: nothing co-occurs with it.
        let x = csr(
            5,
            5,
            &[
                (0, 0),
                (0, 1),
                (0, 2),
                (0, 3),
                (1, 0),
                (1, 1),
                (2, 2),
                (2, 3),
                (3, 4),
                (4, 1),
                (4, 2),
            ],
        );
        let s = ridge_item_neighbors(
            x.view(),
            RidgeParams {
                neighbors: 2,
                l2: 1.0,
            },
            &Cancel::new(),
        )
        .unwrap();
        let st = s.view().transpose();
        for j in 0..5 {
            assert!(st.view().row(j).0.len() <= 2);
        }
        assert!(st.view().row(4).0.is_empty());
        assert!(s.view().row(4).0.is_empty());
    }

    #[test]
    fn rejects_bad_parameters_and_values() {
        let x = csr(2, 2, &[(0, 0), (0, 1), (1, 1)]);
        let err = |p: RidgeParams| {
            ridge_item_neighbors(x.view(), p, &Cancel::new())
                .unwrap_err()
                .to_string()
        };
        assert!(err(RidgeParams {
            neighbors: 0,
            l2: 1.0
        })
        .starts_with("neighbors:"));
        assert!(err(RidgeParams {
            neighbors: 1,
            l2: 0.0
        })
        .starts_with("l2:"));
        let mut bad = x.clone();
        bad.data[0] = -1.0;
        let e = ridge_item_neighbors(
            bad.view(),
            RidgeParams {
                neighbors: 1,
                l2: 1.0,
            },
            &Cancel::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("interactions:"), "{e}");
    }

    #[test]
    fn cholesky_solves_spd_systems_and_falls_back_on_indefinite_ones() {
        // SPD: [[4, 2, 0], [2, 5, 1], [0, 1, 3]] x = [2, 1, 3]
        let m = [4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let (mut a, mut b) = (m.to_vec(), vec![2.0, 1.0, 3.0]);
        solve_spd(&mut a, &mut b, 3).unwrap();
        for r in 0..3 {
            let got: f64 = (0..3).map(|c| m[r * 3 + c] * b[c]).sum();
            assert!((got - [2.0, 1.0, 3.0][r]).abs() < 1e-12);
        }
        // Indefinite but regular: [[0, 1], [1, 0]] x = [2, 3] -> x = [3, 2]
        let (mut a, mut b) = (vec![0.0, 1.0, 1.0, 0.0], vec![2.0, 3.0]);
        solve_spd(&mut a, &mut b, 2).unwrap();
        assert_eq!(b, vec![3.0, 2.0]);
    }

    #[test]
    fn cached_and_computed_gram_entries_agree_exactly() {
        // Weighted values, so the products' order matters: the table and the sparse dot product
        // must sum in the same order to give bit-identical models.
        let mut rows = Vec::new();
        for u in 0..50u32 {
            let mut r: Vec<(u32, f32)> = (0..15u32)
                .filter(|i| (u * 7 + i * 5) % 4 != 0)
                .map(|i| (i, 0.1 + ((u * 13 + i * 3) % 7) as f32 * 0.37))
                .collect();
            r.sort_unstable_by_key(|e| e.0);
            rows.push(r);
        }
        let x = from_sorted_rows(15, rows);
        let p = RidgeParams {
            neighbors: 6,
            l2: 1.5,
        };
        let c = Cancel::new();
        let all = ridge_with_cache(x.view(), p, 15, &c).unwrap();
        assert_eq!(ridge_with_cache(x.view(), p, 0, &c).unwrap(), all);
        assert_eq!(ridge_with_cache(x.view(), p, 4, &c).unwrap(), all);
    }

    #[test]
    fn deterministic_whatever_the_thread_count() {
        let entries: Vec<(usize, usize)> = (0..40)
            .flat_map(|u| {
                (0..12)
                    .filter(move |i| (u * 7 + i * 3) % 5 < 2)
                    .map(move |i| (u, i))
            })
            .collect();
        let x = csr(40, 12, &entries);
        let p = RidgeParams {
            neighbors: 4,
            l2: 2.0,
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let c = Cancel::new();
        let a = one.install(|| ridge_item_neighbors(x.view(), p, &c).unwrap());
        let b = ridge_item_neighbors(x.view(), p, &c).unwrap();
        assert_eq!(a, b);
        // a cancelled fit stops and says so
        c.cancel();
        let stopped = ridge_item_neighbors(x.view(), p, &c);
        assert_eq!(stopped, Err(crate::Error::Cancelled));
    }
}
