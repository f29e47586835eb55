//! Exact cosine top-k between the rows of sparse matrices, and item-item neighbours.
//!
//! One query row at a time against all item rows, sparse-accumulator style (SpGEMM): the items'
//! transpose lists, per feature, the items that have it; a per-thread dense scratch of
//! `n_items` accumulates the dot products of the query with every item that shares a feature.
//! Queries run in parallel blocks (rayon); memory is `O(nnz + threads x n_items + rows x k)`,
//! never a dense `n x n` matrix. Results are ordered by descending score, ties by the lower
//! index; zero similarities (|cos| <= 1e-6) are not returned (rows are padded with `-1`/`0.0`).

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::config::InteractionWeighting;
use crate::error::check_count;
use crate::sparse::{Csr, CsrRef};
use crate::topk::{write_row, FlatTopK, Scored, TopK};
use crate::weighting::weight_interactions;
use crate::{Error, Result};

/// Rows of top-k results: `rows x k`, row-major, `-1`/`0.0` padded.
#[derive(Debug, Clone, PartialEq)]
pub struct TopKRows {
    pub rows: usize,
    pub k: usize,
    pub indices: Vec<i64>,
    pub scores: Vec<f32>,
}

impl TopKRows {
    pub fn row(&self, r: usize) -> (&[i64], &[f32]) {
        (
            &self.indices[r * self.k..(r + 1) * self.k],
            &self.scores[r * self.k..(r + 1) * self.k],
        )
    }

    /// As a CSR matrix with `ncols` columns (padding dropped, indices sorted within rows).
    pub fn to_csr(&self, ncols: usize) -> Csr<f32> {
        let mut indptr = Vec::with_capacity(self.rows + 1);
        let mut indices = Vec::new();
        let mut data = Vec::new();
        indptr.push(0);
        let mut row: Vec<(u32, f32)> = Vec::with_capacity(self.k);
        for r in 0..self.rows {
            let (idx, sc) = self.row(r);
            row.clear();
            row.extend(
                idx.iter()
                    .zip(sc)
                    .filter(|(&i, _)| i >= 0)
                    .map(|(&i, &s)| (i as u32, s)),
            );
            row.sort_unstable_by_key(|e| e.0);
            for &(i, s) in &row {
                indices.push(i);
                data.push(s);
            }
            indptr.push(indices.len());
        }
        Csr {
            nrows: self.rows,
            ncols,
            indptr,
            indices,
            data,
        }
    }
}

/// Per-thread scratch of the sparse accumulator: one slot per index, and the list of the slots
/// touched so that emptying it costs the touches, not the slots.
///
/// Two ways in, one way out: [`Accumulator::add`] (any values; a flag per slot marks first
/// touches), [`Accumulator::add_row`] (rows whose products the caller knows are all > 0 take
/// the branchless path, where a zero slot means "untouched" and no flag is read or written),
/// then [`Accumulator::drain`], which hands out each touched slot's sum once and resets only
/// what the way in set. Between two drains a slot takes one way in only (each caller picks one
/// per matrix): a slot touched by the branchless path and then by `add` would be drained twice.
pub struct Accumulator {
    acc: Vec<f32>,
    seen: Vec<bool>,
    /// Slots first touched by [`Accumulator::add`] (their `seen` flags set).
    pub touched: Vec<u32>,
    /// Slots first touched by the branchless path: `buf[..count]` (no flags set).
    buf: Vec<u32>,
    count: usize,
    pub topk: TopK,
    pub sorted: Vec<Scored>,
}

impl Accumulator {
    pub fn new(n: usize, k: usize) -> Self {
        Accumulator {
            acc: vec![0.0; n],
            seen: vec![false; n],
            touched: Vec::new(),
            buf: vec![0; n + 1],
            count: 0,
            topk: TopK::new(k),
            sorted: Vec::with_capacity(k),
        }
    }

    /// `acc[idx[j]] += v * ws[j]`. `positive`: every product is > 0 (the caller checked the
    /// values once), so first touches are recorded without a branch or a flag.
    #[inline]
    pub fn add_row(&mut self, idx: &[u32], ws: &[f32], v: f32, positive: bool) {
        if !positive {
            for (&j, &w) in idx.iter().zip(ws) {
                self.add(j, v * w);
            }
            return;
        }
        let acc = &mut self.acc[..];
        let buf = &mut self.buf[..];
        let mut count = self.count;
        for (&j, &w) in idx.iter().zip(ws) {
            let ju = j as usize;
            let old = acc[ju];
            buf[count] = j;
            count += (old == 0.0) as usize;
            acc[ju] = old + v * w;
        }
        self.count = count;
    }

    #[inline]
    pub fn add(&mut self, i: u32, v: f32) {
        let iu = i as usize;
        if !self.seen[iu] {
            self.seen[iu] = true;
            self.touched.push(i);
        }
        self.acc[iu] += v;
    }

    /// The sum at slot `i` (0 when untouched).
    #[inline]
    pub fn get(&self, i: u32) -> f32 {
        self.acc[i as usize]
    }

    /// Overwrites the sum at slot `i` (e.g. NaN, to mark it for the caller's `visit`). An
    /// untouched slot is not drained: the caller sets it back to 0 before adding again.
    #[inline]
    pub fn set(&mut self, i: u32, v: f32) {
        self.acc[i as usize] = v;
    }

    /// Calls `visit(topk, slot, sum)` once per touched slot, in the order of `touched` (which
    /// the caller may sort first), then the branchless path's in their order of first touch;
    /// leaves every slot zero and nothing touched.
    #[inline]
    pub fn drain(&mut self, mut visit: impl FnMut(&mut TopK, u32, f32)) {
        for t in 0..self.touched.len() {
            let i = self.touched[t];
            self.seen[i as usize] = false;
            visit(&mut self.topk, i, std::mem::take(&mut self.acc[i as usize]));
        }
        self.touched.clear();
        for t in 0..self.count {
            let i = self.buf[t];
            visit(&mut self.topk, i, std::mem::take(&mut self.acc[i as usize]));
        }
        self.count = 0;
    }
}

/// Rows per parallel task.
const BLOCK: usize = 64;

/// Cosines within this of zero are zero: with mixed-sign real values, dot products can cancel
/// to float residue rather than to exact zeros.
const ZERO: f32 = 1e-6;

fn inverse(norms: &[f64]) -> Vec<f64> {
    norms
        .iter()
        .map(|&n| if n > 0.0 { 1.0 / n } else { 0.0 })
        .collect()
}

/// Cosine top-k of each row of `queries` against the rows of `items` (or of `queries` itself
/// when `items` is None; `exclude_self` then drops the pair `(i, i)`).
pub fn cosine_topk(
    queries: CsrRef<f32>,
    items: Option<CsrRef<f32>>,
    k: usize,
    exclude_self: bool,
    cancel: &Cancel,
) -> Result<TopKRows> {
    check_count("k", k)?;
    queries.check_finite("queries")?;
    let same = items.is_none();
    if same {
        let out = cosine_topk_self(queries, k, exclude_self, cancel);
        cancel.check()?;
        return Ok(out);
    }
    let items = items.unwrap_or(queries);
    items.check_finite("items")?;
    if items.ncols != queries.ncols {
        return Err(Error::invalid(
            "items",
            format!(
                "has {} columns but queries has {}",
                items.ncols, queries.ncols
            ),
        ));
    }
    // Dot products are accumulated unscaled (exact for counts and binary data, which f32 holds
    // exactly up to 2^24) and turned into cosines once per pair.
    let q_inv = inverse(&queries.row_norms_f64());
    let i_inv = if same {
        q_inv.clone()
    } else {
        inverse(&items.row_norms_f64())
    };
    let items_t = items.transpose();
    // With strictly positive values every product is > 0, so a zero accumulator means "not
    // touched yet" and the separate `seen` flags can be skipped in the hot loop.
    let positive = queries.all_positive() && items_t.view().all_positive();
    let n_items = items.nrows;
    let mut out = TopKRows {
        rows: queries.nrows,
        k,
        indices: vec![-1; queries.nrows * k],
        scores: vec![0.0; queries.nrows * k],
    };
    let it = items_t.view();
    out.indices
        .par_chunks_mut(BLOCK * k)
        .zip(out.scores.par_chunks_mut(BLOCK * k))
        .enumerate()
        .for_each_init(
            || Accumulator::new(n_items, k),
            |a, (block, (idx_out, sc_out))| {
                if cancel.is_cancelled() {
                    return;
                }
                let first = block * BLOCK;
                for (r, (io, so)) in idx_out.chunks_mut(k).zip(sc_out.chunks_mut(k)).enumerate() {
                    let q = first + r;
                    let (feats, vals) = queries.row(q);
                    for (&f, &v) in feats.iter().zip(vals) {
                        let (items, ws) = it.row(f as usize);
                        a.add_row(items, ws, v, positive);
                    }
                    a.drain(|topk, i, dot| {
                        let iu = i as usize;
                        let s = (dot as f64 * q_inv[q] * i_inv[iu]) as f32;
                        if s.abs() > ZERO && !(same && exclude_self && iu == q) {
                            topk.push(i, s);
                        }
                    });
                    let mut sorted = std::mem::take(&mut a.sorted);
                    a.topk.drain_sorted(&mut sorted);
                    write_row(&sorted, io, so);
                    a.sorted = sorted;
                }
            },
        );
    cancel.check()?;
    Ok(out)
}

/// Per-thread state of [`cosine_topk_self`]: the accumulator and a top-k of every row.
struct SelfState {
    acc: Accumulator,
    tops: FlatTopK,
}

/// Cosine top-k of the rows of `m` among themselves. Each pair is computed once (`j > i`, the
/// upper triangle) and offered to both rows' top-k, halving the work of the two-sided loop;
/// every thread keeps a top-k per row (`threads x n x k` entries), merged at the end. Once
/// `cancel` is set the remaining blocks are skipped (the caller returns the error).
fn cosine_topk_self(m: CsrRef<f32>, k: usize, exclude_self: bool, cancel: &Cancel) -> TopKRows {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let n = m.nrows;
    let inv = inverse(&m.row_norms_f64());
    let (mt, positions) = m.transpose_with_positions(true);
    let mtv = mt.view();
    let positions = &positions;
    let positive = m.all_positive();
    let next = AtomicUsize::new(0);
    let threads = rayon::current_num_threads().max(1);
    let states: Vec<SelfState> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut st = SelfState {
                        acc: Accumulator::new(n, 1),
                        tops: FlatTopK::new(n, k),
                    };
                    loop {
                        let first = next.fetch_add(BLOCK, Ordering::Relaxed);
                        if first >= n || cancel.is_cancelled() {
                            break;
                        }
                        for i in first..(first + BLOCK).min(n) {
                            self_row(&mut st, m, mtv, positions, &inv, i, positive, exclude_self);
                        }
                    }
                    st
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a similarity worker panicked"))
            .collect()
    });
    let mut out = TopKRows {
        rows: n,
        k,
        indices: vec![-1; n * k],
        scores: vec![0.0; n * k],
    };
    // merge the threads' top-k of each row
    let tops: Vec<FlatTopK> = states.into_iter().map(|s| s.tops).collect();
    out.indices
        .par_chunks_mut(k)
        .zip(out.scores.par_chunks_mut(k))
        .enumerate()
        .for_each_init(
            || Vec::with_capacity(k * threads),
            |all: &mut Vec<Scored>, (row, (io, so))| {
                all.clear();
                for t in &tops {
                    all.extend_from_slice(t.row(row));
                }
                all.sort_unstable();
                all.truncate(k);
                write_row(all, io, so);
            },
        );
    out
}

/// Row `i` of [`cosine_topk_self`]: the dot products with rows `j > i`, offered to both tops.
#[allow(clippy::too_many_arguments)]
#[inline]
fn self_row(
    st: &mut SelfState,
    m: CsrRef<f32>,
    mt: CsrRef<f32>,
    positions: &[usize],
    inv: &[f64],
    i: usize,
    positive: bool,
    exclude_self: bool,
) {
    let (feats, vals) = m.row(i);
    let a = &mut st.acc;
    let base = m.indptr[i];
    for (o, (&f, &v)) in feats.iter().zip(vals).enumerate() {
        let (rows, ws) = mt.row(f as usize);
        // entry (i, f) sits at positions[base + o] of the transpose: rows j > i follow it
        let start = positions[base + o] + 1 - mt.indptr[f as usize];
        a.add_row(&rows[start..], &ws[start..], v, positive);
    }
    let ii = inv[i];
    let tops = &mut st.tops;
    if !exclude_self && ii > 0.0 {
        let norm2: f64 = vals.iter().map(|&x| x as f64 * x as f64).sum();
        tops.push(i, i as u32, (norm2 * ii * ii) as f32);
    }
    a.drain(|_, j, dot| {
        let ju = j as usize;
        let s = (dot as f64 * ii * inv[ju]) as f32;
        if s.abs() <= ZERO {
            return;
        }
        if s >= tops.thresholds[i] {
            tops.push(i, j, s);
        }
        if s >= tops.thresholds[ju] {
            tops.push(ju, i as u32, s);
        }
    });
}

/// The top-k cosine neighbours of every item (columns of the users x items `interactions`,
/// weighted first), as an items x items CSR matrix: what `implicit`'s `CosineRecommender.fit`
/// computes (it keeps the item itself among the K; `exclude_self = false` does the same).
pub fn item_neighbors(
    interactions: CsrRef<f32>,
    k: usize,
    weighting: InteractionWeighting,
    k1: f32,
    b: f32,
    exclude_self: bool,
    cancel: &Cancel,
) -> Result<Csr<f32>> {
    interactions.check_finite("interactions")?;
    // items x users; the weighted copy (if any) is dropped before the similarity pass
    let wt = match weighting {
        InteractionWeighting::None => interactions.transpose(),
        _ => weight_interactions(interactions, weighting, k1, b)?
            .view()
            .transpose(),
    };
    let top = cosine_topk(wt.view(), None, k, exclude_self, cancel)?;
    Ok(top.to_csr(interactions.ncols))
}

/// Top-k items for each of `users`: `score = x_u · S` (S = item neighbours), excluding the
/// items the user interacted with when asked. As `implicit`'s `ItemItemRecommender.recommend`.
pub fn recommend_items(
    interactions: CsrRef<f32>,
    neighbors: CsrRef<f32>,
    users: &[usize],
    k: usize,
    exclude_interacted: bool,
    cancel: &Cancel,
) -> Result<TopKRows> {
    check_count("k", k)?;
    if neighbors.nrows != interactions.ncols || neighbors.ncols != interactions.ncols {
        return Err(Error::invalid(
            "item_neighbors",
            format!(
                "must be items x items ({0} x {0}), got {1} x {2}",
                interactions.ncols, neighbors.nrows, neighbors.ncols
            ),
        ));
    }
    if let Some(&u) = users.iter().find(|&&u| u >= interactions.nrows) {
        return Err(Error::invalid(
            "users",
            format!("index {u} out of range 0..{}", interactions.nrows),
        ));
    }
    let n_items = interactions.ncols;
    let positive = interactions.all_positive() && neighbors.all_positive();
    let mut out = TopKRows {
        rows: users.len(),
        k,
        indices: vec![-1; users.len() * k],
        scores: vec![0.0; users.len() * k],
    };
    out.indices
        .par_chunks_mut(BLOCK * k)
        .zip(out.scores.par_chunks_mut(BLOCK * k))
        .zip(users.par_chunks(BLOCK))
        .for_each_init(
            || Accumulator::new(n_items, k),
            |a, ((idx_out, sc_out), us)| {
                if cancel.is_cancelled() {
                    return;
                }
                for ((io, so), &u) in idx_out.chunks_mut(k).zip(sc_out.chunks_mut(k)).zip(us) {
                    let (items, vals) = interactions.row(u);
                    for (&i, &x) in items.iter().zip(vals) {
                        let (nb, sims) = neighbors.row(i as usize);
                        a.add_row(nb, sims, x, positive);
                    }
                    if exclude_interacted {
                        for &i in items {
                            // drained (if touched) but never pushed
                            a.set(i, f32::NAN);
                        }
                    }
                    a.drain(|topk, j, s| {
                        if s != 0.0 && !s.is_nan() {
                            topk.push(j, s);
                        }
                    });
                    if exclude_interacted {
                        for &i in items {
                            a.set(i, 0.0); // the untouched ones
                        }
                    }
                    let mut sorted = std::mem::take(&mut a.sorted);
                    a.topk.drain_sorted(&mut sorted);
                    write_row(&sorted, io, so);
                    a.sorted = sorted;
                }
            },
        );
    cancel.check()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn random_csr(nrows: usize, ncols: usize, cells: &[(usize, usize, i8)]) -> Csr<f32> {
        let mut dense = vec![0f32; nrows * ncols];
        for &(r, c, v) in cells {
            dense[(r % nrows) * ncols + c % ncols] = v as f32;
        }
        let mut indptr = vec![0];
        let mut indices = vec![];
        let mut data = vec![];
        for r in 0..nrows {
            for c in 0..ncols {
                let v = dense[r * ncols + c];
                if v != 0.0 {
                    indices.push(c as u32);
                    data.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Csr::from_parts("m", nrows, ncols, indptr, indices, data).unwrap()
    }

    fn dense_cos(m: &Csr<f32>, a: usize, b: usize) -> f64 {
        let row = |r: usize| {
            let mut v = vec![0f64; m.ncols];
            let (i, d) = m.view().row(r);
            for (&c, &x) in i.iter().zip(d) {
                v[c as usize] = x as f64;
            }
            v
        };
        let (x, y) = (row(a), row(b));
        let dot: f64 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
        let nx = x.iter().map(|p| p * p).sum::<f64>().sqrt();
        let ny = y.iter().map(|p| p * p).sum::<f64>().sqrt();
        if nx == 0.0 || ny == 0.0 {
            0.0
        } else {
            dot / (nx * ny)
        }
    }

    proptest! {
        #[test]
        fn topk_equals_brute_force_and_is_symmetric(
            cells in proptest::collection::vec((0usize..30, 0usize..12, -3i8..4), 0..120),
            k in 1usize..8,
        ) {
            let m = random_csr(17, 9, &cells);
            let all = cosine_topk(m.view(), None, m.nrows, true, &Cancel::new()).unwrap();
            let top = cosine_topk(m.view(), None, k, true, &Cancel::new()).unwrap();
            for q in 0..m.nrows {
                // brute force, same order: descending score, ties by lower index; zeros dropped
                let mut want: Vec<(usize, f64)> = (0..m.nrows)
                    .filter(|&i| i != q)
                    .map(|i| (i, dense_cos(&m, q, i)))
                    .filter(|&(_, s)| s.abs() > 1e-6)
                    .collect();
                let (ai, asc) = all.row(q);
                let got: Vec<(usize, f32)> = ai.iter().zip(asc).filter(|(&i, _)| i >= 0).map(|(&i, &s)| (i as usize, s)).collect();
                prop_assert_eq!(got.len(), want.len());
                for &(i, s) in &got {
                    prop_assert!((-1.0001..=1.0001).contains(&s));
                    let w = want.iter().find(|e| e.0 == i).unwrap().1;
                    prop_assert!((s as f64 - w).abs() < 1e-5);
                    // symmetric
                    let (bi, bs) = all.row(i);
                    let back = bi.iter().position(|&j| j == q as i64).map(|p| bs[p]);
                    prop_assert!(back.is_some_and(|b| (b - s).abs() < 1e-6));
                }
                // the top-k is the best k of the full ranking (scores non-increasing, then the
                // exact top-k prefix up to float ties)
                want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let (ti, ts) = top.row(q);
                for (slot, (&i, &s)) in ti.iter().zip(ts).enumerate() {
                    if slot < want.len() {
                        prop_assert!((s as f64 - want[slot].1).abs() < 1e-5, "slot {} got {} want {:?}", slot, i, want[slot]);
                    } else {
                        prop_assert_eq!(i, -1);
                    }
                }
                prop_assert!(ts.windows(2).all(|w| w[0] >= w[1] || w[1] == 0.0));
            }
        }

        #[test]
        fn recommendations_exclude_interacted_and_match_brute_force(
            cells in proptest::collection::vec((0usize..20, 0usize..15, 1i8..4), 1..100),
            k in 1usize..6,
        ) {
            let x = random_csr(8, 11, &cells);
            let s = item_neighbors(x.view(), 4, InteractionWeighting::None, 0.0, 0.0, true, &Cancel::new()).unwrap();
            let users: Vec<usize> = (0..x.nrows).collect();
            let recs = recommend_items(x.view(), s.view(), &users, k, true, &Cancel::new()).unwrap();
            for &u in &users {
                let (items, vals) = x.view().row(u);
                let mut score = vec![0f64; x.ncols];
                for (&i, &v) in items.iter().zip(vals) {
                    let (nb, sims) = s.view().row(i as usize);
                    for (&j, &sv) in nb.iter().zip(sims) {
                        score[j as usize] += v as f64 * sv as f64;
                    }
                }
                let (ri, rs) = recs.row(u);
                for (&j, &sc) in ri.iter().zip(rs) {
                    if j < 0 { continue; }
                    prop_assert!(!items.contains(&(j as u32)), "recommended an interacted item");
                    prop_assert!((sc as f64 - score[j as usize]).abs() < 1e-4);
                }
                let mut best: Vec<f64> = (0..x.ncols).filter(|j| !items.contains(&(*j as u32))).map(|j| score[j]).filter(|&v| v != 0.0).collect();
                best.sort_by(|a, b| b.total_cmp(a));
                let got = ri.iter().filter(|&&j| j >= 0).count();
                prop_assert_eq!(got, best.len().min(k));
                if let Some(&top) = best.first() { prop_assert!((rs[0] as f64 - top).abs() < 1e-4); }
            }
        }
    }

    #[test]
    fn an_accumulator_drains_each_touched_slot_once_and_is_left_empty() {
        let mut a = Accumulator::new(6, 1);
        let drained = |a: &mut Accumulator| {
            let mut out = Vec::new();
            a.drain(|_, i, v| out.push((i, v)));
            out
        };
        // both ways in, one slot touched twice: sums in order of first touch, flagged first
        a.add_row(&[4, 1], &[1.0, 2.0], 0.5, true);
        a.add_row(&[1], &[1.0], 1.0, true);
        a.add_row(&[3, 0], &[-1.0, 2.0], 2.0, false);
        assert_eq!(
            drained(&mut a),
            vec![(3, -2.0), (0, 4.0), (4, 0.5), (1, 2.0)]
        );
        // empty after: nothing drained again, and a slot touched before counts as new
        assert_eq!(drained(&mut a), vec![]);
        a.add(0, 1.0);
        a.add_row(&[4], &[3.0], 1.0, true);
        assert_eq!(drained(&mut a), vec![(0, 1.0), (4, 3.0)]);
        // a slot set to NaN is drained as NaN and zero afterwards
        a.add(2, 1.0);
        a.set(2, f32::NAN);
        assert!(drained(&mut a)[0].1.is_nan());
        assert_eq!(a.get(2), 0.0);
    }

    #[test]
    fn item_neighbors_are_column_cosines() {
        // 3 users x 3 items: items 0 and 1 always together, item 2 alone
        let x = Csr::from_parts(
            "x",
            3,
            3,
            vec![0, 2, 4, 5],
            vec![0, 1, 0, 1, 2],
            vec![1.0f32; 5],
        )
        .unwrap();
        let c = Cancel::new();
        let s =
            item_neighbors(x.view(), 2, InteractionWeighting::None, 0.0, 0.0, true, &c).unwrap();
        assert_eq!(s.indptr, vec![0, 1, 2, 2]);
        assert_eq!(s.indices, vec![1, 0]);
        assert!((s.data[0] - 1.0).abs() < 1e-6);
        let with_self =
            item_neighbors(x.view(), 2, InteractionWeighting::None, 0.0, 0.0, false, &c).unwrap();
        assert_eq!(with_self.indices, vec![0, 1, 0, 1, 2]);
        assert!(cosine_topk(x.view(), None, 0, true, &c).is_err());
    }

    #[test]
    fn cancelled_kernels_stop_and_say_so() {
        let x = random_csr(
            40,
            9,
            &[(1, 2, 1), (3, 2, 2), (5, 4, 1), (7, 4, 3), (9, 8, 1)],
        );
        let c = Cancel::new();
        c.cancel();
        let other = random_csr(5, 9, &[(0, 2, 1)]);
        for with_items in [false, true] {
            let items = with_items.then(|| other.view());
            assert_eq!(
                cosine_topk(x.view(), items, 3, true, &c),
                Err(Error::Cancelled)
            );
        }
        let s = item_neighbors(
            x.view(),
            3,
            InteractionWeighting::None,
            0.0,
            0.0,
            true,
            &Cancel::new(),
        )
        .unwrap();
        assert_eq!(
            recommend_items(x.view(), s.view(), &[0, 1], 2, true, &c),
            Err(Error::Cancelled)
        );
    }
}
