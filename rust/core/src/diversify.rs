//! The author cap every feed page goes through: no author has more than `cap` posts in any
//! `window` consecutive posts, and every other post keeps its place as far as it can. The cap
//! spreads authors out, it never removes a post: when every post left is by an author at the cap
//! (a catalogue written by a few authors), the one that waited longest is placed anyway, so a
//! feed ends only when its list does (as X's author-diversity rescoring demotes, never drops). The API
//! applies it to each page (`window` = the page's `limit`); the offline replay of the served feed
//! (`feedrank.diversify`, `timecut.py`) calls the same code.

use std::collections::{BTreeSet, VecDeque};
use std::hash::Hash;

use rustc_hash::FxHashMap;

/// The default cap: at most this many posts of one author on a page (the API's
/// `AUTHOR_DIVERSITY_CAP`).
pub const AUTHOR_CAP: usize = 3;

/// Re-ranks `items` so that no author appears more than `cap` times in any `window` consecutive
/// items while another author's item is left to place, moving an item down as little as
/// possible. Every item is placed once: when only authors at the cap are left, their items follow
/// in their original order of waiting. Deterministic; O(n log n).
pub fn diversify<T, K: Hash + Eq>(
    items: Vec<T>,
    author: impl Fn(&T) -> K,
    window: usize,
    cap: usize,
) -> Vec<T> {
    let n = items.len();
    place(items, author, window, cap, n, true)
}

/// The first `max_out` items of [`diversify`]'s result, in O(max_out log n) plus the items it had
/// to pass over; fewer when only authors at the cap are left before `max_out`. There `diversify`
/// places their items, but the same items with more after them (the API's blend with the
/// fallback after it) would place a later author's first: so a prefix of `items` is also the
/// prefix of any longer list's result, wherever it stops.
pub fn diversify_prefix<T, K: Hash + Eq>(
    items: Vec<T>,
    author: impl Fn(&T) -> K,
    window: usize,
    cap: usize,
    max_out: usize,
) -> Vec<T> {
    place(items, author, window, cap, max_out, false)
}

/// `exhaust`: when only authors at the cap are left, place their items anyway (else stop).
fn place<T, K: Hash + Eq>(
    items: Vec<T>,
    author: impl Fn(&T) -> K,
    window: usize,
    cap: usize,
    max_out: usize,
    exhaust: bool,
) -> Vec<T> {
    let n = items.len();
    let mut dense: FxHashMap<K, usize> = FxHashMap::default();
    // Dense author ids, computed as the scan reaches each item.
    let mut authors: Vec<usize> = Vec::with_capacity(max_out.min(n) * 2);
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    // Per author: posts among the last `window - 1` placed (a post fits while this is < cap), and
    // the author's passed-over posts, in order.
    let mut counts: Vec<usize> = Vec::new();
    let mut deferred: Vec<VecDeque<usize>> = Vec::new();
    // The first passed-over post of every author that fits again, by original position; and of
    // every author with passed-over posts, fitting or not (placed when nothing fits).
    let mut ready: BTreeSet<usize> = BTreeSet::new();
    let mut waiting: BTreeSet<usize> = BTreeSet::new();
    let refresh =
        |a: usize, counts: &[usize], deferred: &[VecDeque<usize>], ready: &mut BTreeSet<usize>| {
            if let Some(&head) = deferred[a].front() {
                if counts[a] < cap {
                    ready.insert(head);
                } else {
                    ready.remove(&head);
                }
            }
        };
    let mut placed: Vec<usize> = Vec::with_capacity(max_out.min(n));
    let mut next = 0;
    while placed.len() < max_out {
        // Reach item `next`: give its author a dense id; pass it over while its author is full.
        while next < n {
            if authors.len() == next {
                let fresh = dense.len();
                let a = *dense
                    .entry(author(slots[next].as_ref().expect("not placed yet")))
                    .or_insert(fresh);
                if a == counts.len() {
                    counts.push(0);
                    deferred.push(VecDeque::new());
                }
                authors.push(a);
            }
            if counts[authors[next]] < cap {
                break;
            }
            let queue = &mut deferred[authors[next]];
            if queue.is_empty() {
                waiting.insert(next);
            }
            queue.push_back(next);
            next += 1;
        }
        let pick = match (ready.first().copied(), next < n) {
            (Some(w), true) => w.min(next),
            (Some(w), false) => w,
            (None, true) => next,
            // every item left is by an author at the cap: the one that waited longest
            (None, false) => match waiting.first() {
                Some(&w) if exhaust => w,
                _ => break,
            },
        };
        let a = authors[pick];
        if pick == next {
            next += 1;
        } else {
            ready.remove(&pick);
            waiting.remove(&pick);
            deferred[a].pop_front();
            if let Some(&head) = deferred[a].front() {
                waiting.insert(head);
            }
        }
        placed.push(pick);
        counts[a] += 1;
        refresh(a, &counts, &deferred, &mut ready);
        if placed.len() >= window {
            let b = authors[placed[placed.len() - window]];
            counts[b] -= 1;
            refresh(b, &counts, &deferred, &mut ready);
        }
    }
    placed
        .into_iter()
        .map(|i| slots[i].take().expect("each index is placed once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn authors(v: &[u8]) -> Vec<(usize, u64)> {
        v.iter().enumerate().map(|(i, a)| (i, *a as u64)).collect()
    }

    #[test]
    fn diversify_caps_every_window_and_keeps_order_otherwise() {
        // Author 1 owns the first six posts; cap 2 per window of 4.
        let items = authors(&[1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7]);
        let out = diversify(items, |x| x.1, 4, 2);
        for w in out.windows(4) {
            let ones = w.iter().filter(|x| x.1 == 1).count();
            assert!(ones <= 2, "{out:?}");
        }
        assert_eq!(out[0].0, 0);
        assert_eq!(out[1].0, 1);
        assert_eq!(out[2].0, 6, "the next other author moves up");
        // Nothing is duplicated.
        let mut idx: Vec<usize> = out.iter().map(|x| x.0).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), out.len());
    }

    #[test]
    fn diversify_invariants_on_skewed_random_lists() {
        // A power-law-ish author mix from a fixed LCG: some authors own many posts.
        let mut x: u64 = 12345;
        for (window, cap) in [(5, 1), (10, 2), (50, 3), (7, 3)] {
            let items: Vec<(usize, u64)> = (0..2000)
                .map(|i| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let r = (x >> 33) % 1000;
                    (i, if r < 300 { r % 3 } else { r })
                })
                .collect();
            let out = diversify(items.clone(), |x| x.1, window, cap);
            assert_cap_holds_while_another_author_waits(&items, &out, window, cap);
            // Each author's posts keep their relative order; nothing is duplicated.
            let mut last: HashMap<u64, usize> = HashMap::new();
            let mut seen = HashSet::new();
            for (i, a) in &out {
                assert!(seen.insert(*i));
                if let Some(prev) = last.insert(*a, *i) {
                    assert!(prev < *i);
                }
            }
            assert_eq!(out.len(), items.len(), "every post is placed");
        }
    }

    /// At every place of `out`, the author placed has fewer than `cap` posts among the `window - 1`
    /// before it, unless every item not yet placed is by an author who has `cap` there.
    fn assert_cap_holds_while_another_author_waits(
        items: &[(usize, u64)],
        out: &[(usize, u64)],
        window: usize,
        cap: usize,
    ) {
        let mut left: HashSet<usize> = items.iter().map(|x| x.0).collect();
        for j in 0..out.len() {
            let mut c: HashMap<u64, usize> = HashMap::new();
            for (_, a) in &out[j.saturating_sub(window - 1)..j] {
                *c.entry(*a).or_default() += 1;
            }
            let at_cap = |a: &u64| c.get(a).copied().unwrap_or(0) >= cap;
            if at_cap(&out[j].1) {
                assert!(
                    items
                        .iter()
                        .filter(|x| left.contains(&x.0))
                        .all(|x| at_cap(&x.1)),
                    "place {j}: an author at the cap was placed while another could be"
                );
            }
            left.remove(&out[j].0);
        }
    }

    #[test]
    fn a_diversified_prefix_is_the_prefix_of_the_full_result_and_of_any_longer_lists() {
        let items = authors(&[1, 1, 1, 1, 2, 1, 3, 1, 1, 4, 5, 1, 6, 1, 1, 7]);
        let full = diversify(items.clone(), |x| x.1, 4, 2);
        // where only author 1 is left the prefix stops: 7 was the last other author
        let reach = diversify_prefix(items.clone(), |x| x.1, 4, 2, items.len()).len();
        assert!(reach < items.len());
        for k in 0..=items.len() {
            let part = diversify_prefix(items.clone(), |x| x.1, 4, 2, k);
            assert_eq!(part[..], full[..k.min(reach)]);
            // with more posts after the list (the API's fallback), the prefix holds too
            let mut longer = items.clone();
            longer.extend(
                authors(&[8, 9, 8, 9])
                    .into_iter()
                    .map(|(i, a)| (i + 100, a)),
            );
            let more = diversify(longer, |x| x.1, 4, 2);
            assert_eq!(part[..], more[..part.len()]);
        }
    }

    #[test]
    fn diversify_without_conflicts_is_the_identity() {
        let items = authors(&[1, 2, 3, 4, 5]);
        let out = diversify(items.clone(), |x| x.1, 3, 1);
        assert_eq!(out, items);
    }

    #[test]
    fn when_only_authors_at_the_cap_are_left_their_posts_follow_in_order() {
        let items = authors(&[1, 1, 1, 1]);
        assert_eq!(diversify(items.clone(), |x| x.1, 10, 2), items);
        // author 2's post moves up past the first 1's waiting ones, which then follow in order
        let items = authors(&[1, 1, 1, 2, 1]);
        let out = diversify(items.clone(), |x| x.1, 3, 1);
        assert_eq!(out.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 3, 1, 2, 4]);
        assert_cap_holds_while_another_author_waits(&items, &out, 3, 1);
    }
}
