//! Every SQL statement of the API, parameterised and prepared once per connection.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use feedrank_core::cache::{CachedProfile, CachedRecommendation};
use feedrank_core::config::{HybridWeights, InteractionType, Reason};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::memo::IdMap;
use crate::response::{FeedPost, FeedUser};

/// A pool that never waits longer than `timeout` for a connection (or to open one), so that a
/// database outage answers 503 quickly; broken connections are dropped when they come back to
/// the pool, so the pool heals by itself when the database returns.
pub fn pool(database_url: &str, size: usize, timeout: Duration) -> Result<Pool, String> {
    let mut pg: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e| format!("DATABASE_URL: {e}"))?;
    pg.connect_timeout(timeout);
    pg.application_name("feedrank-api");
    let manager = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("database pool: {e}"))
}

pub async fn user_exists(pool: &Pool, id: Uuid) -> ApiResult<bool> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT 1 FROM users WHERE id = $1")
        .await?;
    Ok(client.query_opt(&stmt, &[&id]).await?.is_some())
}

/// Post bodies with their authors, for the given ids (deleted posts are simply absent).
pub async fn posts_by_ids(pool: &Pool, ids: &[Uuid]) -> ApiResult<Vec<FeedPost>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT p.id, p.user_id, p.content, p.media_urls, p.created_at, p.updated_at,
                    u.username, u.display_name, u.avatar_url
             FROM posts p JOIN users u ON u.id = p.user_id
             WHERE p.id = ANY($1)",
        )
        .await?;
    let rows = client.query(&stmt, &[&ids]).await?;
    Ok(rows
        .iter()
        .map(|r| FeedPost {
            id: r.get(0),
            user_id: r.get(1),
            content: r.get(2),
            media_urls: r.get(3),
            created_at: r.get(4),
            updated_at: r.get(5),
            user: FeedUser {
                id: r.get(1),
                username: r.get(6),
                display_name: r.get(7),
                avatar_url: r.get(8),
            },
            score: None,
            reason: None,
            source: None,
            because_of: None,
        })
        .collect())
}

/// A user's current recommendations: the newest complete run's unexpired rows.
pub struct CurrentRecommendations {
    pub run_id: i64,
    /// When the rows were generated (the latest of them), unix seconds.
    pub generated_at: i64,
    /// When the first of the rows expires.
    pub expires_at: DateTime<Utc>,
    /// The run's `cache_ttl_seconds` (in `recommendation_runs.config`, as the pipeline resolved
    /// it), when it has a usable one.
    pub cache_ttl_seconds: Option<u64>,
    /// The run's serving model (`recommendation_runs.model_id`), if it has one.
    pub model_id: Option<i64>,
    /// By descending score.
    pub items: Vec<CachedRecommendation>,
}

/// The user's current recommendations, or `None` when there are none.
pub async fn current_recommendations(
    pool: &Pool,
    user: Uuid,
) -> ApiResult<Option<CurrentRecommendations>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT r.post_id, r.score, r.collaborative_score, r.content_score, r.recency_score,
                    r.engagement_score, r.reason, r.run_id, r.generated_at, r.expires_at,
                    rr.config->>'cache_ttl_seconds', rr.model_id
             FROM user_recommendations r JOIN recommendation_runs rr ON rr.id = r.run_id
             WHERE r.user_id = $1 AND r.run_id = current_recommendation_run($1)
               AND r.expires_at > now()
             ORDER BY r.score DESC, r.post_id",
        )
        .await?;
    let rows = client.query(&stmt, &[&user]).await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let run_id: i64 = first.get(7);
    let cache_ttl_seconds = first
        .get::<_, Option<String>>(10)
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&t| t > 0);
    let weights = HybridWeights::default();
    let mut generated_at = i64::MIN;
    let mut expires_at: Option<DateTime<Utc>> = None;
    let items = rows
        .iter()
        .map(|r| {
            let components = [
                r.get::<_, f64>(2) as f32,
                r.get::<_, f64>(3) as f32,
                r.get::<_, f64>(4) as f32,
                r.get::<_, f64>(5) as f32,
            ];
            let reason_text: String = r.get(6);
            let g: DateTime<Utc> = r.get(8);
            let e: DateTime<Utc> = r.get(9);
            generated_at = generated_at.max(g.timestamp());
            expires_at = Some(expires_at.map_or(e, |x| x.min(e)));
            CachedRecommendation {
                post_id: r.get::<_, Uuid>(0).to_string(),
                score: r.get::<_, f64>(1) as f32,
                // The row's own reason; a value this build does not know is recomputed from the
                // components with the one implementation of "strongest component".
                reason: Reason::parse(&reason_text)
                    .unwrap_or_else(|| Reason::strongest(&weights, components)),
                components,
            }
        })
        .collect();
    Ok(Some(CurrentRecommendations {
        run_id,
        generated_at,
        expires_at: expires_at.expect("rows is not empty"),
        cache_ttl_seconds,
        model_id: first.get(11),
        items,
    }))
}

/// One of the user's interactions, as the serve-time filters need it.
pub struct InteractionMark {
    pub post_id: Uuid,
    pub hide: bool,
    /// A like or a share (the because_you_liked source's signal).
    pub like: bool,
    pub at_ms: i64,
}

/// The stored definitions (the core's JSON) of the experiments that have a start and are neither
/// stopped nor past their end (migration V9), earliest start first: those running and those
/// scheduled (the caller checks each one's window at every request).
pub async fn scheduled_experiments(pool: &Pool) -> ApiResult<Vec<String>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT definition::text FROM experiments
             WHERE starts_at IS NOT NULL AND stopped_at IS NULL
               AND (ends_at IS NULL OR ends_at > now())
             ORDER BY starts_at, name",
        )
        .await?;
    Ok(client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// What run `run_id` recorded of the experiments it applied (`config.experiments`, the pipeline's
/// record: see `experiments::RunExperiments`); `None` for a run without one.
pub async fn run_experiments(pool: &Pool, run_id: i64) -> ApiResult<Option<String>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT (config->'experiments')::text FROM recommendation_runs WHERE id = $1",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&run_id])
        .await?
        .and_then(|r| r.get::<_, Option<String>>(0)))
}

/// The user's hides (any time) and other interactions since `since_ms`, newest first, bounded.
pub async fn interaction_marks(
    pool: &Pool,
    user: Uuid,
    since_ms: i64,
) -> ApiResult<Vec<InteractionMark>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT post_id, interaction_type = 'hide',
                    floor(extract(epoch FROM created_at) * 1000)::bigint,
                    interaction_type IN ('like', 'share')
             FROM user_interactions
             WHERE user_id = $1
               AND (interaction_type = 'hide' OR created_at >= to_timestamp($2::bigint / 1000.0))
             ORDER BY created_at DESC
             LIMIT 20000",
        )
        .await?;
    let rows = client.query(&stmt, &[&user, &since_ms]).await?;
    Ok(rows
        .iter()
        .map(|r| InteractionMark {
            post_id: r.get(0),
            hide: r.get(1),
            at_ms: r.get(2),
            like: r.get(3),
        })
        .collect())
}

/// The `n` most recent posts, `(post id, author id)`: the random fallback's candidate pool.
pub async fn recent_posts(pool: &Pool, n: usize) -> ApiResult<Vec<(Uuid, Uuid)>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT id, user_id FROM posts ORDER BY created_at DESC, id DESC LIMIT $1")
        .await?;
    let rows = client.query(&stmt, &[&(n as i64)]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A serving model as stored (migration V7): its snapshot time, `ScoringConfig` JSON and fitted
/// TF-IDF JSON.
pub struct StoredModel {
    pub id: i64,
    pub snapshot_ms: i64,
    pub config: String,
    pub tfidf: String,
}

/// The newest model that a complete run names (the one the request-time pools are built on).
pub async fn latest_model_id(pool: &Pool) -> ApiResult<Option<i64>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT max(model_id) FROM recommendation_runs
             WHERE status = 'complete' AND model_id IS NOT NULL",
        )
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

pub async fn model(pool: &Pool, id: i64) -> ApiResult<Option<StoredModel>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT floor(extract(epoch FROM snapshot_at) * 1000)::bigint, config::text, tfidf
             FROM recommendation_models WHERE id = $1",
        )
        .await?;
    Ok(client.query_opt(&stmt, &[&id]).await?.map(|r| StoredModel {
        id,
        snapshot_ms: r.get(0),
        config: r.get(1),
        tfidf: r.get(2),
    }))
}

/// A user's stored profile in a model (`user_profiles`), as the cache entry carries it.
pub async fn user_profile(
    pool: &Pool,
    model_id: i64,
    user: Uuid,
) -> ApiResult<Option<CachedProfile>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT terms, weights, authors, author_weights FROM user_profiles
             WHERE model_id = $1 AND user_id = $2",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&model_id, &user])
        .await?
        .map(|r| CachedProfile {
            terms: r
                .get::<_, Vec<i32>>(0)
                .into_iter()
                .map(|t| t as u32)
                .collect(),
            weights: r.get(1),
            authors: r
                .get::<_, Vec<Uuid>>(2)
                .iter()
                .map(Uuid::to_string)
                .collect(),
            author_weights: r.get(3),
        }))
}

/// A post created recently, as the fresh pool needs it.
pub struct NewPost {
    pub id: Uuid,
    pub author: Uuid,
    pub content: String,
    pub created_ms: i64,
}

/// Posts created after `after_ms` (or the listed `ids`), oldest first, at most `limit`.
pub async fn new_posts(
    pool: &Pool,
    after_ms: i64,
    ids: &[Uuid],
    limit: usize,
) -> ApiResult<Vec<NewPost>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "(SELECT id, user_id, content, floor(extract(epoch FROM created_at) * 1000)::bigint AS ms
              FROM posts WHERE created_at > to_timestamp($1::bigint / 1000.0)
              ORDER BY created_at DESC, id DESC LIMIT $2)
             UNION
             SELECT id, user_id, content, floor(extract(epoch FROM created_at) * 1000)::bigint
             FROM posts WHERE id = ANY($3)",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&after_ms, &(limit as i64), &ids])
        .await?;
    Ok(rows
        .iter()
        .map(|r| NewPost {
            id: r.get(0),
            author: r.get(1),
            content: r.get(2),
            created_ms: r.get(3),
        })
        .collect())
}

/// The posts `user` liked or shared since `since_ms`, most recent first, each once, at most
/// `limit`.
pub async fn recent_likes(
    pool: &Pool,
    user: Uuid,
    since_ms: i64,
    limit: usize,
) -> ApiResult<Vec<Uuid>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT post_id FROM user_interactions
             WHERE user_id = $1 AND interaction_type IN ('like', 'share')
               AND created_at >= to_timestamp($2::bigint / 1000.0)
             GROUP BY post_id ORDER BY max(created_at) DESC, post_id LIMIT $3",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&user, &since_ms, &(limit as i64)])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The stored neighbours of `posts` in a model, each post's best first.
pub async fn post_neighbors(
    pool: &Pool,
    model_id: i64,
    posts: &[Uuid],
) -> ApiResult<IdMap<Uuid, Vec<(Uuid, f32)>>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT post_id, neighbors, scores FROM post_neighbors
             WHERE model_id = $1 AND post_id = ANY($2)",
        )
        .await?;
    let rows = client.query(&stmt, &[&model_id, &posts]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let ids: Vec<Uuid> = r.get(1);
            let scores: Vec<f32> = r.get(2);
            (r.get(0), ids.into_iter().zip(scores).collect())
        })
        .collect())
}

/// A stored (or already stored) interaction.
pub struct Stored {
    pub id: Uuid,
    pub post_id: Uuid,
    pub at_ms: i64,
    /// False when the event id was seen before and nothing new was stored.
    pub created: bool,
}

/// An interaction to store.
pub struct NewInteraction<'a> {
    pub user: Uuid,
    pub post: Uuid,
    pub kind: InteractionType,
    pub metadata: Option<&'a serde_json::Value>,
    pub event_id: Option<&'a str>,
    /// The feed response (`metadata.requestId`) and position the event is attributed to.
    pub request_id: Option<Uuid>,
    pub position: Option<i32>,
}

/// Stores one interaction, idempotently per `(user, event_id)`. Committed (autocommit) before it
/// returns, so a 2xx is only sent for a durable row.
pub async fn insert_interaction(
    client: &deadpool_postgres::Client,
    ev: &NewInteraction<'_>,
) -> ApiResult<Stored> {
    let (user, post, event_id) = (ev.user, ev.post, ev.event_id);
    let insert = client
        .prepare_cached(
            "INSERT INTO user_interactions
                (user_id, post_id, interaction_type, metadata, event_id, request_id, position)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (user_id, event_id) DO NOTHING
             RETURNING id, floor(extract(epoch FROM created_at) * 1000)::bigint",
        )
        .await?;
    let row = client
        .query_opt(
            &insert,
            &[
                &user,
                &post,
                &ev.kind.as_str(),
                &ev.metadata,
                &event_id,
                &ev.request_id,
                &ev.position,
            ],
        )
        .await
        .map_err(|e| match e.as_db_error().map(|d| d.code().clone()) {
            Some(tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => ApiError::NotFound {
                what: "post",
                id: post.to_string(),
            },
            Some(tokio_postgres::error::SqlState::CHECK_VIOLATION) => {
                ApiError::bad("body", format!("rejected by the database: {e}"))
            }
            _ => ApiError::from(e),
        })?;
    if let Some(r) = row {
        return Ok(Stored {
            id: r.get(0),
            post_id: post,
            at_ms: r.get(1),
            created: true,
        });
    }
    // The event id is already stored: answer with the original interaction.
    let select = client
        .prepare_cached(
            "SELECT id, post_id, floor(extract(epoch FROM created_at) * 1000)::bigint
             FROM user_interactions WHERE user_id = $1 AND event_id = $2",
        )
        .await?;
    let r = client
        .query_one(&select, &[&user, &event_id])
        .await
        .map_err(|e| ApiError::Internal(format!("event id conflict without a row: {e}")))?;
    Ok(Stored {
        id: r.get(0),
        post_id: r.get(1),
        at_ms: r.get(2),
        created: false,
    })
}

pub async fn ping(pool: &Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .simple_query("SELECT 1")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
