//! The `fresh` source: posts newer than the user's list, ranked for the user over the
//! in-process pool of `crate::fresh_pool` (memoized per pool snapshot).

use std::sync::Arc;

use feedrank_core::cache::CachedProfile;
use feedrank_core::config::Source;
use feedrank_core::fresh::{FreshQuery, SparseVec};
use uuid::Uuid;

use super::{Candidate, Feeds, Personalized, SourceInput, Stores};
use crate::clock::now_ms;
use crate::error::ApiResult;
use crate::fresh_pool::FreshSnapshot;

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
        // The ranking of one set of pool posts for one user is memoized (until a post comes or
        // goes, at most FRESH_RANKED_TTL): the best 2n of the user's own exclusions (their own
        // posts), of which the request drops what it must (seen, hidden).
        let key = (input.user, snap.generation, after_ms);
        let ranked = match self.fresh_ranked.get(&key) {
            Some(r) => r,
            None => {
                let weights = *snap.pool.weights();
                let own = input.user.as_u128();
                let exclude = |post: &feedrank_core::fresh::PoolPost| post.author == Some(own);
                let top = snap.pool.topk(&FreshQuery {
                    profile: &profile,
                    authors: &authors,
                    after_ms,
                    before_ms: i64::MAX,
                    exclude: &exclude,
                    n: 2 * n,
                });
                let r: Arc<Vec<Candidate>> = Arc::new(
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
                        .collect(),
                );
                self.fresh_ranked.insert(key, r.clone());
                r
            }
        };
        Ok(ranked
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
