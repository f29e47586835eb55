//! The `trending` source: the posts of `crate::trending`'s decayed counters, the same list for
//! every user (reloaded at most every `TRENDING_RELOAD`, 10 s).

use std::sync::Arc;

use feedrank_core::config::{Reason, Source};
use uuid::Uuid;

use super::{Candidate, Feeds, Stores};
use crate::clock::now_ms;
use crate::error::ApiResult;

/// The trending list keeps this many more than a user is offered, for the user's exclusions.
pub(super) const TRENDING_SLACK: usize = 200;
/// The trending list at one moment (the same for every user).
pub struct TrendingList {
    /// `None`: Redis did not answer.
    pub(super) candidates: Option<Vec<Candidate>>,
}

impl Feeds {
    /// The trending list (with authors; deleted posts left out), at most [`TRENDING_RELOAD`] old.
    pub(super) async fn trending_list(&self, stores: &Stores<'_>) -> ApiResult<Arc<TrendingList>> {
        self.trending
            .get(|_| async move {
                let latest = self.models.latest(stores.pg).await?;
                let settings = latest
                    .as_ref()
                    .map_or(self.models.default_config(), |m| &m.config)
                    .sources
                    .trending;
                let Some(top) = crate::trending::top(
                    stores.redis,
                    stores.metrics,
                    &settings,
                    now_ms(),
                    settings.candidates + TRENDING_SLACK,
                )
                .await
                else {
                    return Ok(TrendingList { candidates: None });
                };
                let ids: Vec<Uuid> = top.iter().map(|t| t.0).collect();
                let bodies = self.hydrate(stores.pg, &ids).await?;
                let candidates = top
                    .iter()
                    .filter_map(|&(post, score)| {
                        Some(Candidate {
                            post,
                            author: bodies.get(&post)?.author,
                            source: Source::Trending,
                            score: Some(score),
                            reason: Some(Reason::Trending),
                            because_of: None,
                            components: None,
                        })
                    })
                    .collect();
                Ok(TrendingList {
                    candidates: Some(candidates),
                })
            })
            .await
    }
}
