//! Bounded top-k selection: descending score, ties broken by the lower index, so every result
//! is deterministic whatever the thread count.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One candidate. `Ord` puts the *better* entry first: higher score, then lower index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: f32,
    pub index: u32,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        // Better = smaller in this order, so a max-heap keeps the worst kept entry on top.
        other
            .score
            .total_cmp(&self.score)
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Keeps the best `k` of the entries pushed into it. Reusable: [`TopK::clear`] keeps the buffer.
#[derive(Debug)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Scored>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    #[inline]
    pub fn push(&mut self, index: u32, score: f32) {
        let e = Scored { score, index };
        if self.heap.len() < self.k {
            self.heap.push(e);
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if e < *worst {
                *worst = e;
            }
        }
    }

    /// The score an entry must beat to enter (None until k entries are kept).
    #[inline]
    pub fn threshold(&self) -> Option<f32> {
        if self.heap.len() < self.k {
            None
        } else {
            self.heap.peek().map(|e| e.score)
        }
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }

    /// The kept entries, best first; leaves the selector empty.
    pub fn drain_sorted(&mut self, out: &mut Vec<Scored>) {
        out.clear();
        out.extend(self.heap.drain());
        out.sort_unstable();
    }
}

/// A top-k for each of `n` rows in one flat buffer (`n x k` entries): pushing into a random
/// row touches that row's few cache lines only, and `thresholds` (contiguous) lets callers skip
/// most candidates without touching the entries at all.
#[derive(Debug)]
pub struct FlatTopK {
    k: usize,
    entries: Vec<Scored>,
    len: Vec<u32>,
    /// The score a candidate of row `r` must reach (`-inf` until the row holds `k` entries).
    pub thresholds: Vec<f32>,
}

impl FlatTopK {
    pub fn new(n: usize, k: usize) -> Self {
        FlatTopK {
            k,
            entries: vec![
                Scored {
                    score: 0.0,
                    index: 0
                };
                n * k
            ],
            len: vec![0; n],
            thresholds: vec![f32::NEG_INFINITY; n],
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Empties every row (the buffers are kept).
    pub fn clear(&mut self) {
        self.len.fill(0);
        self.thresholds.fill(f32::NEG_INFINITY);
    }

    /// Offers `(index, score)` to row `row` (a max-heap by [`Scored`]'s order: worst on top).
    #[inline]
    pub fn push(&mut self, row: usize, index: u32, score: f32) {
        let k = self.k;
        let e = Scored { score, index };
        let h = &mut self.entries[row * k..(row + 1) * k];
        let len = self.len[row] as usize;
        if len < k {
            // sift up
            let mut c = len;
            h[c] = e;
            while c > 0 {
                let p = (c - 1) / 2;
                if h[p] < h[c] {
                    h.swap(p, c);
                    c = p;
                } else {
                    break;
                }
            }
            self.len[row] = (len + 1) as u32;
            if len + 1 == k {
                self.thresholds[row] = h[0].score;
            }
        } else if e < h[0] {
            // replace the worst and sift down
            h[0] = e;
            let mut p = 0;
            loop {
                let l = 2 * p + 1;
                if l >= k {
                    break;
                }
                let r = l + 1;
                let big = if r < k && h[l] < h[r] { r } else { l };
                if h[p] < h[big] {
                    h.swap(p, big);
                    p = big;
                } else {
                    break;
                }
            }
            self.thresholds[row] = h[0].score;
        }
    }

    /// The kept entries of `row`, unordered.
    pub fn row(&self, row: usize) -> &[Scored] {
        &self.entries[row * self.k..row * self.k + self.len[row] as usize]
    }
}

/// Writes the sorted entries into a `-1`/`0.0` padded row of width `out_idx.len()`.
pub fn write_row(entries: &[Scored], out_idx: &mut [i64], out_score: &mut [f32]) {
    for (slot, (oi, os)) in out_idx.iter_mut().zip(out_score.iter_mut()).enumerate() {
        match entries.get(slot) {
            Some(e) => {
                *oi = e.index as i64;
                *os = e.score;
            }
            None => {
                *oi = -1;
                *os = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn equals_a_full_sort(scores in proptest::collection::vec(-3i8..3, 0..60), k in 1usize..20) {
            let mut t = TopK::new(k);
            for (i, &s) in scores.iter().enumerate() {
                t.push(i as u32, s as f32);
            }
            let mut got = Vec::new();
            t.drain_sorted(&mut got);
            let mut all: Vec<(u32, f32)> = scores.iter().enumerate().map(|(i, &s)| (i as u32, s as f32)).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(k);
            let got: Vec<(u32, f32)> = got.iter().map(|e| (e.index, e.score)).collect();
            prop_assert_eq!(got.clone(), all.clone());
            let mut flat = FlatTopK::new(3, k);
            for (i, &sc) in scores.iter().enumerate() {
                if sc as f32 >= flat.thresholds[1] {
                    flat.push(1, i as u32, sc as f32);
                }
            }
            let mut kept: Vec<Scored> = flat.row(1).to_vec();
            kept.sort_unstable();
            let kept: Vec<(u32, f32)> = kept.iter().map(|e| (e.index, e.score)).collect();
            prop_assert_eq!(kept, all);
            prop_assert!(flat.row(0).is_empty());
        }
    }
}
