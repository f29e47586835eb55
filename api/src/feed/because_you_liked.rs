//! The `because_you_liked` source: the stored neighbours of the posts the user liked or shared
//! since the list was built.

use std::collections::HashSet;
use std::sync::Arc;

use deadpool_postgres::Pool;
use feedrank_core::config::{Reason, Source};
use uuid::Uuid;

use super::{Candidate, Feeds, Personalized, SourceInput};
use crate::db;
use crate::error::ApiResult;
use crate::models::ServingModel;

/// A post's stored neighbours, best first, with their similarity.
pub(super) type Neighbors = Vec<(Uuid, f32)>;

impl Feeds {
    /// The because_you_liked source: the stored neighbours of the posts the user liked or
    /// shared since the list was built, most recent like first, `per_like` each.
    pub(super) async fn liked_candidates(
        &self,
        input: &SourceInput<'_>,
        personalized: Option<&Personalized>,
        user_model: Option<&ServingModel>,
        allowed: &(dyn Fn(&Candidate) -> bool + Sync),
    ) -> Result<Vec<Candidate>, String> {
        let Some(p) = personalized else {
            return Ok(Vec::new());
        };
        let Some(model) = user_model else {
            return Err("no model for the user's run".into());
        };
        let settings = model.config.sources.because_you_liked;
        let likes: Vec<Uuid> = match &input.read {
            Some(read) => {
                let mut l: Vec<(i64, Uuid)> = read
                    .liked
                    .iter()
                    .filter(|(_, at)| *at >= p.built_ms && *at <= input.as_of)
                    .filter_map(|(id, at)| Some((*at, Uuid::parse_str(id).ok()?)))
                    .collect();
                l.sort_unstable_by(|a, b| b.cmp(a));
                let mut seen = HashSet::new();
                l.into_iter()
                    .map(|(_, id)| id)
                    .filter(|id| seen.insert(*id))
                    .take(settings.likes)
                    .collect()
            }
            None => db::recent_likes(input.stores.pg, input.user, p.built_ms, settings.likes)
                .await
                .map_err(|e| format!("unavailable: {e}"))?,
        };
        if likes.is_empty() {
            return Ok(Vec::new());
        }
        let neighbors = self
            .neighbors_of(input.stores.pg, model.id, &likes)
            .await
            .map_err(|e| format!("unavailable: {e}"))?;
        if neighbors.iter().all(|n| n.is_empty()) {
            return Err("no neighbours stored for the liked posts".into());
        }
        let ids: Vec<Uuid> = neighbors
            .iter()
            .flat_map(|n| n.iter().map(|e| e.0))
            .collect();
        let bodies = self
            .hydrate(input.stores.pg, &ids)
            .await
            .map_err(|e| format!("unavailable: {e}"))?;
        let mut out: Vec<Candidate> = Vec::new();
        let mut placed = HashSet::new();
        for (liked, list) in likes.iter().zip(&neighbors) {
            let mut taken = 0;
            for &(post, score) in list.iter() {
                if taken == settings.per_like {
                    break;
                }
                let Some(body) = bodies.get(&post) else {
                    continue;
                };
                let c = Candidate {
                    post,
                    author: body.author,
                    source: Source::BecauseYouLiked,
                    score: Some(score),
                    reason: Some(Reason::BecauseYouLiked),
                    because_of: Some(*liked),
                    components: None,
                };
                if likes.contains(&post) || !allowed(&c) || !placed.insert(post) {
                    continue;
                }
                out.push(c);
                taken += 1;
            }
        }
        out.truncate(settings.candidates);
        Ok(out)
    }

    /// The stored neighbours of `posts` in `model` (memoized), in the order of `posts`.
    pub(super) async fn neighbors_of(
        &self,
        pg: &Pool,
        model: i64,
        posts: &[Uuid],
    ) -> ApiResult<Vec<Arc<Neighbors>>> {
        let missing: Vec<Uuid> = posts
            .iter()
            .filter(|p| self.neighbors.get(&(model, **p)).is_none())
            .copied()
            .collect();
        if !missing.is_empty() {
            let mut found = db::post_neighbors(pg, model, &missing).await?;
            for p in missing {
                let list = found.remove(&p).unwrap_or_default();
                self.neighbors.insert((model, p), Arc::new(list));
            }
        }
        Ok(posts
            .iter()
            .map(|p| self.neighbors.get(&(model, *p)).unwrap_or_default())
            .collect())
    }
}
