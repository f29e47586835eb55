//! Seeded Fisher-Yates shuffling, for random feeds that can be paged without repeats.
//!
//! The generator is ChaCha8 (`rand_chacha`, value-stable across platforms and releases) seeded
//! from a `u64`; bounded integers use Lemire's unbiased multiply-and-reject method. Both are
//! written out here rather than taken from `rand::seq::SliceRandom`, whose output the `rand`
//! project does not promise to keep between versions: the same seed must give the same feed
//! order after an upgrade.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A uniformly distributed integer in `0..bound` (`1 <= bound <= 2^32`), without modulo bias
/// (Lemire's method on 32-bit draws, as numpy does for bounds that fit).
#[inline]
fn bounded32(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    let mut m = (rng.next_u32() as u64) * bound;
    if (m as u32 as u64) < bound {
        let threshold = (1u64 << 32) % bound;
        while (m as u32 as u64) < threshold {
            m = (rng.next_u32() as u64) * bound;
        }
    }
    m >> 32
}

/// A uniformly distributed integer in `0..bound` (`bound >= 1`), without modulo bias.
#[inline]
fn bounded(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    if bound <= 1 << 32 {
        return bounded32(rng, bound);
    }
    let mut m = (rng.next_u64() as u128) * (bound as u128);
    if (m as u64) < bound {
        let threshold = bound.wrapping_neg() % bound;
        while (m as u64) < threshold {
            m = (rng.next_u64() as u128) * (bound as u128);
        }
    }
    (m >> 64) as u64
}

/// Asks the processor to start loading the cache line at `p` (a hint: it changes no result;
/// also used by [`crate::retrieval`] for posts read at scattered places).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Shuffles `xs` in place; every permutation is equally likely and the same `seed` always gives
/// the same permutation of the same length.
///
/// The swap partners are drawn a block ahead (the draws depend only on the generator, not on
/// the data, so the permutation is the plain Fisher-Yates one) and their cache lines prefetched:
/// on arrays larger than the cache, the random swaps are memory-bound otherwise.
pub fn shuffle<T>(xs: &mut [T], seed: u64) {
    const BLOCK: usize = 1024;
    const AHEAD: usize = 24;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut js = [0usize; BLOCK];
    let mut i = xs.len();
    while i > 1 {
        // positions i-1, i-2, ..., down to 1 (at most BLOCK of them)
        let count = (i - 1).min(BLOCK);
        for (t, j) in js[..count].iter_mut().enumerate() {
            *j = bounded(&mut rng, (i - t) as u64) as usize;
        }
        let ptr = xs.as_ptr();
        for &j in &js[..count.min(AHEAD)] {
            prefetch(ptr.wrapping_add(j));
        }
        for t in 0..count {
            if t + AHEAD < count {
                prefetch(ptr.wrapping_add(js[t + AHEAD]));
            }
            xs.swap(i - 1 - t, js[t]);
        }
        i -= count;
    }
}

/// A permutation of `0..n`, as [`shuffle`] applied to `0, 1, ..., n - 1`.
pub fn permutation(n: usize, seed: u64) -> Vec<i64> {
    let mut v: Vec<i64> = (0..n as i64).collect();
    shuffle(&mut v, seed);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn is_a_permutation_and_deterministic(n in 0usize..500, seed in any::<u64>()) {
            let p = permutation(n, seed);
            let mut sorted = p.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..n as i64).collect::<Vec<_>>());
            prop_assert_eq!(permutation(n, seed), p);
        }

        #[test]
        fn bounded_stays_in_range(seed in any::<u64>(), bound in 1u64..u64::MAX) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..8 {
                prop_assert!(bounded(&mut rng, bound) < bound);
            }
        }
    }

    #[test]
    fn different_seeds_give_different_orders() {
        assert_ne!(permutation(50, 1), permutation(50, 2));
    }

    #[test]
    fn shuffle_keeps_the_elements() {
        let mut v = vec!["a", "b", "c", "d"];
        shuffle(&mut v, 9);
        v.sort();
        assert_eq!(v, vec!["a", "b", "c", "d"]);
    }

    /// All 4! = 24 permutations of 4 elements over 48,000 seeds: a chi-square test of
    /// uniformity (23 degrees of freedom; 49.7 is the 0.999 quantile, so a correct shuffle fails
    /// this with probability 1e-3 for a given set of seeds, and the seeds are fixed).
    #[test]
    fn chi_square_uniform_over_all_permutations_of_four() {
        let trials = 48_000u64;
        let mut counts = std::collections::HashMap::new();
        for seed in 0..trials {
            *counts.entry(permutation(4, seed)).or_insert(0u64) += 1;
        }
        assert_eq!(counts.len(), 24);
        let expected = trials as f64 / 24.0;
        let chi2: f64 = counts
            .values()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 49.7, "chi-square {chi2} over 23 degrees of freedom");
    }

    /// Each position of a 10-element shuffle holds each value equally often.
    #[test]
    fn chi_square_uniform_positions() {
        let n = 10;
        let trials = 20_000u64;
        let mut counts = vec![vec![0u64; n]; n];
        let mut v: Vec<usize> = Vec::with_capacity(n);
        for seed in 0..trials {
            v.clear();
            v.extend(0..n);
            shuffle(&mut v, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for (pos, &x) in v.iter().enumerate() {
                counts[pos][x] += 1;
            }
        }
        let expected = trials as f64 / n as f64;
        for row in &counts {
            let chi2: f64 = row
                .iter()
                .map(|&c| (c as f64 - expected).powi(2) / expected)
                .sum();
            // 9 degrees of freedom; 27.9 is the 0.999 quantile.
            assert!(chi2 < 27.9, "chi-square {chi2} for {row:?}");
        }
    }
}
