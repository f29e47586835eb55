//! The fresh source's in-process pool: the posts created after the newest model's snapshot, in
//! its `sources.fresh` window and at most `pool_size` of them (the newest), each with its TF-IDF
//! row computed by `feedrank-core`'s TF-IDF under the model's vocabulary and idf (the numbers the
//! pipeline would give). Reloaded incrementally: a reload reads the posts created since the last
//! one (less a margin, for transactions that commit late) and the posts PostgreSQL said changed,
//! and rebuilds the `FreshPool` index with the live engagement of the trending counters (read
//! for every post every [`ENGAGEMENT_RELOAD`], for the newcomers alone in between).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use feedrank_core::fresh::{FreshPool, PoolPost, SparseVec};
use uuid::Uuid;

use crate::db;
use crate::error::ApiResult;
use crate::memo::IdMap;
use crate::metrics::Metrics;
use crate::models::ServingModel;
use crate::redis_store::RedisStore;

/// Posts created this long before the newest one read are read again (a transaction that
/// commits late can store an earlier `created_at`).
const LATE_COMMIT_MARGIN_MS: i64 = 10_000;

/// Every pool post's live engagement is read again this often (a union of the trending window:
/// reading it at every reload, once a second, stalled Redis for every other request's read and
/// was a visible share of the every-source feed's p99). A user's fresh ranking uses engagement up
/// to `FRESH_RANKED_TTL` (10 s) old already.
pub const ENGAGEMENT_RELOAD: Duration = Duration::from_secs(10);

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// One snapshot of the pool.
pub struct FreshSnapshot {
    /// Distinguishes the snapshots' sets of posts (users' memoized rankings are up to date with
    /// one): a reload that added or dropped no post keeps it.
    pub generation: u64,
    /// How many reloads on this model took in an edited or deleted post: a memoized ranking
    /// made at the same count can be brought up to date by ranking the newer posts alone.
    pub edits: u64,
    pub model: Arc<ServingModel>,
    /// Its posts (the next reload starts from them).
    pub pool: FreshPool,
    /// The newest `created_at` read (ms): the next reload reads from it, and a memoized ranking
    /// made on this snapshot ranks only posts newer than it when brought up to date.
    pub newest_ms: i64,
    /// Each post's live engagement as the pool was built with it, and when every post's was read
    /// (the posts that came since were read as they came).
    engagement: IdMap<u128, f32>,
    engagement_ms: i64,
}

/// A post's TF-IDF row under `model` (unit length; empty when no term is known).
pub fn tfidf_row(model: &ServingModel, content: &str) -> SparseVec {
    let m = model.tfidf.transform(&[content]);
    let (terms, weights) = m.view().row(0);
    let pairs = terms
        .iter()
        .zip(weights)
        .map(|(&t, &w)| (t, w as f32))
        .collect();
    SparseVec::normalized(pairs).unwrap_or_default()
}

/// The pool at `now_ms` under `model`, starting from `previous` (when it was built on the same
/// model) and re-reading the posts in `changed`.
pub async fn reload(
    pg: &Pool,
    redis: &RedisStore,
    metrics: &Metrics,
    model: Arc<ServingModel>,
    previous: Option<&FreshSnapshot>,
    changed: &[Uuid],
    now_ms: i64,
) -> ApiResult<FreshSnapshot> {
    let settings = model.config.sources.fresh;
    let oldest = model.snapshot_ms.max(now_ms - settings.window_ms());
    let same_model = previous.filter(|p| p.model.id == model.id);
    // (the previous pool's posts, copied once: they move into the new pool)
    let (mut posts, newest_ms): (IdMap<Uuid, PoolPost>, i64) = match same_model {
        Some(p) => (
            (0..p.pool.len() as u32)
                .map(|i| {
                    let post = p.pool.post(i);
                    (Uuid::from_u128(post.id), post.clone())
                })
                .collect(),
            p.newest_ms,
        ),
        None => (IdMap::default(), oldest),
    };
    let mut set_changed = same_model.is_none();
    let mut edited = false;
    for id in changed {
        edited |= posts.remove(id).is_some();
    }
    set_changed |= edited;
    let read_after = oldest.max(newest_ms - LATE_COMMIT_MARGIN_MS);
    let rows = db::new_posts(pg, read_after, changed, settings.pool_size).await?;
    let mut newest = newest_ms;
    for row in rows {
        newest = newest.max(row.created_ms);
        if row.created_ms <= oldest || posts.contains_key(&row.id) {
            continue;
        }
        metrics.fresh_eligible(now_ms - row.created_ms);
        set_changed = true;
        posts.insert(
            row.id,
            PoolPost {
                id: row.id.as_u128(),
                author: Some(row.author.as_u128()),
                created_ms: row.created_ms,
                tfidf: tfidf_row(&model, &row.content),
            },
        );
    }
    // Bounded: the window, then the newest `pool_size`.
    let before = posts.len();
    posts.retain(|_, p| p.created_ms > oldest);
    set_changed |= posts.len() != before;
    if posts.len() > settings.pool_size {
        set_changed = true;
        let mut by_age: Vec<(i64, Uuid)> =
            posts.iter().map(|(id, p)| (p.created_ms, *id)).collect();
        by_age.sort_unstable_by(|a, b| b.cmp(a));
        for (_, id) in &by_age[settings.pool_size..] {
            posts.remove(id);
        }
    }
    // Live engagement: every post's counts at most ENGAGEMENT_RELOAD old (a union of the
    // trending window in Redis); in between, only the posts new to the pool are read.
    let trending = &model.config.sources.trending;
    let (engagement, engagement_ms) = match same_model
        .filter(|p| now_ms.saturating_sub(p.engagement_ms) < ENGAGEMENT_RELOAD.as_millis() as i64)
    {
        Some(p) => {
            let newcomers: Vec<Uuid> = posts
                .keys()
                .filter(|id| !p.engagement.contains_key(&id.as_u128()))
                .copied()
                .collect();
            let live =
                crate::trending::engagement(redis, metrics, trending, now_ms, &newcomers).await;
            let mut e: IdMap<u128, f32> = posts
                .keys()
                .filter_map(|id| Some((id.as_u128(), *p.engagement.get(&id.as_u128())?)))
                .collect();
            e.extend(newcomers.iter().map(|i| i.as_u128()).zip(live));
            (e, p.engagement_ms)
        }
        None => {
            let ids: Vec<Uuid> = posts.keys().copied().collect();
            let live = crate::trending::engagement(redis, metrics, trending, now_ms, &ids).await;
            (ids.iter().map(|i| i.as_u128()).zip(live).collect(), now_ms)
        }
    };
    let pool = FreshPool::new(
        posts.into_values().collect(),
        now_ms,
        |id| engagement.get(&id).copied().unwrap_or(0.0),
        &model.config,
    )
    .map_err(|e| crate::error::ApiError::Internal(format!("fresh pool: {e}")))?;
    Ok(FreshSnapshot {
        engagement,
        engagement_ms,
        edits: same_model.map_or(0, |p| p.edits + u64::from(edited)),
        generation: match same_model {
            Some(p) if !set_changed => p.generation,
            _ => GENERATION.fetch_add(1, Ordering::Relaxed),
        },
        model,
        pool,
        newest_ms: newest,
    })
}
