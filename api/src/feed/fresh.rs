//! The `fresh` source: posts newer than the user's list, ranked for the user over the
//! in-process pool of `crate::fresh_pool` (memoized per user; posts that arrive later are ranked
//! and merged in, see [`FreshRanking`]).

use std::sync::Arc;
use std::time::Instant;

use feedrank_core::cache::CachedProfile;
use feedrank_core::config::Source;
use feedrank_core::fresh::{FreshQuery, PoolPost, SparseVec};
use uuid::Uuid;

use super::{Candidate, Feeds, Personalized, SourceInput, Stores, FRESH_RANKED_TTL};
use crate::clock::now_ms;
use crate::error::ApiResult;
use crate::fresh_pool::FreshSnapshot;
use crate::memo::spread;

/// A profile as [`FreshQuery`] reads it; `None` when it is malformed.
pub(super) fn query_profile(p: &CachedProfile) -> Option<(SparseVec, Vec<(u128, f32)>)> {
    p.validate().ok()?;
    let authors = p
        .authors
        .iter()
        .zip(&p.author_weights)
        .filter_map(|(a, &w)| Some((Uuid::parse_str(a).ok()?.as_u128(), w)))
        .collect();
    Some((
        SparseVec {
            terms: p.terms.clone(),
            weights: p.weights.clone(),
        },
        authors,
    ))
}

impl Feeds {
    /// The fresh source: the pool's best posts for the user's profile.
    pub(super) async fn fresh_candidates(
        &self,
        input: &SourceInput<'_>,
        personalized: Option<&Personalized>,
        allowed: &(dyn Fn(&Candidate) -> bool + Sync),
    ) -> Result<Vec<Candidate>, String> {
        let snapshot = self
            .fresh_snapshot(input.stores)
            .await
            .map_err(|e| format!("unavailable: {e}"))?;
        let Some(snap) = snapshot.as_ref() else {
            return Err("no serving model".into());
        };
        let (profile, authors) = match personalized {
            // Without a list (a new user): recency and engagement only.
            None => (SparseVec::default(), Vec::new()),
            Some(p) => {
                match p.model_id {
                    None => return Err("no model for the user's run".into()),
                    Some(id) if id != snap.model.id => {
                        return Err("profile from an older model".into())
                    }
                    Some(_) => {}
                }
                match p.profile.as_deref().and_then(query_profile) {
                    Some(q) => q,
                    None => return Err("no profile for the user".into()),
                }
            }
        };
        let after_ms = personalized.map_or(snap.model.snapshot_ms, |p| {
            p.built_ms.min(snap.model.snapshot_ms)
        });
        let n = snap.model.config.sources.fresh.candidates;
        // A user's ranking is memoized for at most FRESH_RANKED_TTL (a lifetime drawn in
        // [TTL / 2, TTL], so that rankings made together are not all redone together): reused
        // while the pool's posts are the same; when posts were only added since (no edit or
        // deletion), only the newcomers are ranked and merged in (the others keep the engagement
        // and recency parts they were ranked with). The best 2n apart from the user's own posts,
        // of which the request drops what it must (seen, hidden).
        let key = (input.user, after_ms);
        let memo = self
            .fresh_ranked
            .get(&key)
            .filter(|r| r.model_id == snap.model.id && Instant::now() < r.expires);
        let ranked = match memo {
            Some(r) if r.generation == snap.generation => r,
            memo => {
                let since = match &memo {
                    Some(r) if r.edits == snap.edits => r.newest_ms.max(after_ms),
                    _ => after_ms,
                };
                let newcomers = rank(snap, &profile, &authors, input.user, since, 2 * n);
                let (list, expires) = match memo.filter(|_| since > after_ms) {
                    Some(r) => (merge_newcomers(&r.list, newcomers, 2 * n), r.expires),
                    None => (newcomers, Instant::now() + spread(FRESH_RANKED_TTL)),
                };
                let r = Arc::new(FreshRanking {
                    model_id: snap.model.id,
                    generation: snap.generation,
                    edits: snap.edits,
                    newest_ms: snap.newest_ms,
                    expires,
                    list,
                });
                self.fresh_ranked.insert(key, r.clone());
                r
            }
        };
        Ok(ranked
            .list
            .iter()
            .filter(|c| allowed(c))
            .take(n)
            .cloned()
            .collect())
    }

    /// The fresh pool, reloaded incrementally when older than [`FRESH_RELOAD`].
    pub(super) async fn fresh_snapshot(
        &self,
        stores: &Stores<'_>,
    ) -> ApiResult<Arc<Option<FreshSnapshot>>> {
        self.fresh
            .get(|previous| async move {
                let Some(model) = self.models.latest(stores.pg).await? else {
                    return Ok(None);
                };
                let changed: Vec<Uuid> = std::mem::take(
                    &mut *self.fresh_changed.lock().unwrap_or_else(|p| p.into_inner()),
                );
                let previous = previous.as_deref().and_then(|p| p.as_ref());
                let reloaded = crate::fresh_pool::reload(
                    stores.pg,
                    stores.redis,
                    stores.metrics,
                    model,
                    previous,
                    &changed,
                    now_ms(),
                )
                .await;
                if reloaded.is_err() {
                    // not lost: read again by the next reload
                    self.fresh_changed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(changed);
                }
                reloaded.map(Some)
            })
            .await
    }
}

/// A user's fresh ranking, memoized (see `fresh_candidates`).
pub(super) struct FreshRanking {
    model_id: i64,
    /// The pool snapshot's post set and edit count it is up to date with.
    generation: u64,
    edits: u64,
    /// The newest post of the pool it has seen (ms).
    newest_ms: i64,
    /// When it is ranked in full again: `memo::spread(FRESH_RANKED_TTL)` after it was, and the
    /// merges of newcomers keep it, so a ranking's older parts are at most FRESH_RANKED_TTL old.
    expires: Instant,
    list: Vec<Candidate>,
}

/// A memoized ranking with the posts that came since: the best `keep` of both by score (a stable
/// sort: on a tie the memoized post stays first).
fn merge_newcomers(list: &[Candidate], newcomers: Vec<Candidate>, keep: usize) -> Vec<Candidate> {
    let mut merged: Vec<Candidate> = list.iter().cloned().chain(newcomers).collect();
    merged.sort_by(|a, b| b.score.unwrap_or(0.0).total_cmp(&a.score.unwrap_or(0.0)));
    merged.truncate(keep);
    merged
}

/// The pool's best `n` posts created after `after_ms` for a user's profile, as candidates.
fn rank(
    snap: &FreshSnapshot,
    profile: &SparseVec,
    authors: &[(u128, f32)],
    user: Uuid,
    after_ms: i64,
    n: usize,
) -> Vec<Candidate> {
    let weights = *snap.pool.weights();
    let own = user.as_u128();
    let exclude = |post: &PoolPost| post.author == Some(own);
    let top = snap.pool.topk(&FreshQuery {
        profile,
        authors,
        after_ms,
        before_ms: i64::MAX,
        exclude: &exclude,
        n,
    });
    top.iter()
        .map(|s| {
            let p = snap.pool.post(s.post);
            Candidate {
                post: Uuid::from_u128(p.id),
                author: Uuid::from_u128(p.author.unwrap_or(0)),
                source: Source::Fresh,
                score: Some(s.score),
                reason: Some(s.reason(&weights)),
                because_of: None,
                components: Some(s.components),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(id: u128, score: f32) -> Candidate {
        Candidate {
            post: Uuid::from_u128(id),
            author: Uuid::from_u128(0),
            source: Source::Fresh,
            score: Some(score),
            reason: None,
            because_of: None,
            components: None,
        }
    }

    #[test]
    fn newcomers_are_merged_into_a_memoized_ranking_by_score_and_the_list_stays_bounded() {
        let memo = [scored(1, 0.9), scored(2, 0.5), scored(3, 0.2)];
        let merged = merge_newcomers(&memo, vec![scored(4, 0.7), scored(5, 0.5)], 4);
        let ids: Vec<u128> = merged.iter().map(|c| c.post.as_u128()).collect();
        assert_eq!(
            ids,
            [1, 4, 2, 5],
            "by score, a tie keeps the memoized post first, cut at 4"
        );
        assert_eq!(merge_newcomers(&memo, Vec::new(), 10).len(), 3);
    }
}
