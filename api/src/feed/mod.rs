//! How a feed page is assembled from the candidate sources (issue 13):
//!
//! 1. `personalized`: the pipeline's list for the user, from the first of [`PERSONALIZED`] that
//!    has it (the Redis entry, else the database's current recommendations, written back);
//! 2. the request-time sources: `fresh` (posts newer than the user's run, scored per user over
//!    the in-process pool of `fresh_pool`), `because_you_liked` (the stored neighbours of the
//!    posts the user liked or shared since the list was built) and `trending` (the decayed
//!    counters of `trending`);
//! 3. [`feedrank_core::blend::blend`] of those four lists by the run's `sources.blend` shares;
//! 4. the random fallback (a seeded shuffle of the most recent posts) after all of them, so that
//!    scrolling ends only when the catalogue does;
//! 5. the author cap (`diversify`) over the result, and the page cut at `offset`.
//!
//! Every source leaves out the posts the user hid or already saw (see [`Exclusions`]); the
//! request-time sources also leave out the user's own posts. The order is deterministic for a
//! page sequence: the request-time lists of a sequence are computed at its first page and kept
//! (in process) for the next ones, the personalized list and the filters depend only on the
//! sequence's start, and the fallback on its seed. So pages never repeat or skip a post.
//!
//! "Already saw" means an interaction after the recommendations were built and before the page
//! sequence began (the request at offset 0): posts viewed while paging do not shift later pages.
//!
//! [`Feeds`] owns the caches this needs (post bodies, decoded entries, the fallback's pool and
//! orders, the fresh pool, the trending list, the serving models, the users known to have no
//! recommendations); `invalidation` tells it what changed.
//!
//! One file per source (`personalized`, `fresh`, `because_you_liked`, `trending`, `fallback`,
//! each a set of `Feeds` methods); `page` writes the JSON; this file merges them.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use feedrank_core::config::{BlendShares, Reason, Source};
use feedrank_core::diversify::diversify_prefix;
use uuid::Uuid;

use crate::clock::now_ms;
use crate::config::Config;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::experiments::{ConfigArm, RunExperiments};
use crate::fresh_pool::FreshSnapshot;
use crate::memo::{ChangeLog, IdHasher, IdMap, InFlight, Refreshed, TtlCache};
use crate::metrics::Metrics;
use crate::models::{Models, ServingModel};
use crate::redis_store::{FeedRead, RedisStore, SEEN_RETENTION_MS};
use crate::response::{ExperimentArm, FeedMetadata, SkippedSource};
use crate::served_log::ServedPost;

mod because_you_liked;
mod fallback;
mod fresh;
mod page;
mod personalized;
mod trending;

pub use fallback::{default_seed, MAX_SEED};
pub use page::CachedPost;
pub use personalized::{write_back_ttl, Lookup, Personalized, PAGE_ORIGINS, PERSONALIZED};

use because_you_liked::Neighbors;
use fallback::PoolSnapshot;
use fresh::FreshRanking;
use personalized::{personal_list, DecodedFeed, HydratedList};
use trending::TrendingList;

/// Decoded recommendation entries kept (about 5 KB each for 200 items).
const DECODED_FEED_CAPACITY: usize = 10_000;
const DECODED_FEED_TTL: Duration = Duration::from_secs(300);
/// Post changes remembered (a memo older than the oldest of them is made again).
const POST_CHANGES_KEPT: usize = 4096;
/// Users remembered to have no recommendations in PostgreSQL.
const NO_RECOMMENDATIONS_CAPACITY: usize = 200_000;
const NO_RECOMMENDATIONS_TTL: Duration = Duration::from_secs(600);
/// Memoized orders kept (40 KB each for a fallback pool of 10,000: positions in the pool).
const ORDERS_CAPACITY: usize = 2048;
/// Page sequences whose request-time lists are kept for their next pages (about 15 KB each).
const SESSIONS_CAPACITY: usize = 2048;
const SESSIONS_TTL: Duration = Duration::from_secs(crate::redis_store::FEED_SESSION_TTL_SECS);
/// The fresh pool is reloaded (new posts, changed posts, engagement) this often.
const FRESH_RELOAD: Duration = Duration::from_secs(1);
/// The trending list is the same for every user: computed at most this often (a union of the
/// trending window in Redis, which stalls Redis's other clients while it runs; the list ranks
/// hours of counts).
const TRENDING_RELOAD: Duration = Duration::from_secs(10);
/// Users' fresh rankings kept (see `fresh::FreshRanking`); a ranking is redone in full at least
/// every `FRESH_RANKED_TTL`: the engagement and recency parts it uses are at most that old.
const FRESH_RANKED_CAPACITY: usize = 10_000;
const FRESH_RANKED_TTL: Duration = Duration::from_secs(10);
/// Posts remembered as served once (for the first-served age metric).
const SERVED_CAPACITY: usize = 100_000;
const SERVED_TTL: Duration = Duration::from_secs(86_400);
/// Neighbour lists kept, by (model, post), and how long while the change listener is connected.
const NEIGHBORS_CAPACITY: usize = 50_000;
const NEIGHBORS_TTL: Duration = Duration::from_secs(600);
/// A validated feed request.
#[derive(Debug, Clone)]
pub struct FeedRequest {
    pub limit: usize,
    pub offset: usize,
    pub refresh: bool,
    pub seed: Option<u64>,
    /// Skip the recommendations and answer with the random fallback (the demo page compares; a
    /// `random` experiment arm).
    pub fallback_only: bool,
    /// The blend's shares instead of the run's (a `sources` experiment arm).
    pub blend: Option<BlendShares>,
    /// The user's experiment arms, for `metadata.arms`.
    pub arms: Vec<ExperimentArm>,
    /// The `config` arm the rule applies to the user, if it is one: `applied` in `arms` when the
    /// page's run computed the user's list with it.
    pub config_arm: Option<ConfigArm>,
}

/// A built feed page.
pub struct FeedPage {
    /// The JSON body.
    pub body: Vec<u8>,
    /// Its posts, in order.
    pub served: Vec<ServedPost>,
    /// The recommendation run whose list the page blended, and its serving model; none for a
    /// page without the user's list (`metadata.source` = `fallback`).
    pub run_id: Option<i64>,
    pub model_id: Option<i64>,
}

/// A post a source proposes, with what the page says about it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub post: Uuid,
    pub author: Uuid,
    /// The source that proposed it.
    pub source: Source,
    pub score: Option<f32>,
    pub reason: Option<Reason>,
    /// `because_you_liked`: the liked post it neighbours.
    pub because_of: Option<Uuid>,
    /// The parts of `score` (the hybrid's for `personalized`, `fresh.rs`'s for `fresh`): shown
    /// by the operators' explain endpoint only.
    pub components: Option<[f32; 4]>,
}

/// Posts to leave out of a page.
#[derive(Default)]
pub struct Exclusions {
    posts: HashSet<Uuid, BuildHasherDefault<IdHasher>>,
}

impl Exclusions {
    /// The hidden posts, and those seen in `[seen_from_ms, as_of_ms]` (both ends included: a view
    /// stored in the same millisecond as the request began was before it).
    fn from_redis(
        hidden: &[String],
        seen: &[(String, i64)],
        seen_from_ms: i64,
        as_of_ms: i64,
    ) -> Exclusions {
        let seen = seen
            .iter()
            .filter(|(_, at)| *at >= seen_from_ms && *at <= as_of_ms)
            .map(|(p, _)| p);
        let posts = hidden
            .iter()
            .chain(seen)
            .filter_map(|p| Uuid::parse_str(p).ok())
            .collect();
        Exclusions { posts }
    }

    fn from_marks(marks: &[db::InteractionMark], seen_from_ms: i64, as_of_ms: i64) -> Exclusions {
        let posts = marks
            .iter()
            .filter(|m| m.hide || (m.at_ms >= seen_from_ms && m.at_ms <= as_of_ms))
            .map(|m| m.post_id)
            .collect();
        Exclusions { posts }
    }

    fn contains(&self, post: &Uuid) -> bool {
        self.posts.contains(post)
    }

    /// Independent of the set's iteration order (part of a memoized order's key).
    fn digest(&self, h: &mut impl Hasher) {
        let mut ex: Vec<&Uuid> = self.posts.iter().collect();
        ex.sort();
        ex.hash(h);
    }
}

/// The stores a page is read from.
pub struct Stores<'a> {
    pub pg: &'a Pool,
    pub redis: &'a RedisStore,
    pub metrics: &'a Metrics,
}

/// What every source of one request may use.
pub struct SourceInput<'a> {
    feeds: &'a Feeds,
    stores: &'a Stores<'a>,
    user: Uuid,
    user_key: String,
    req: &'a FeedRequest,
    now: i64,
    /// When the page sequence began (ms): this request at offset 0, else the first page's.
    as_of: i64,
    /// What Redis holds for the user (`None`: Redis did not answer).
    read: Option<FeedRead>,
    /// The seen entries of `read` start here (ms); `None`: all of them were read.
    seen_since: Option<i64>,
}

/// The request-time sources' lists of one page sequence (kept for its next pages).
#[derive(Default)]
pub struct RequestLists {
    pub fresh: Vec<Candidate>,
    pub because_you_liked: Vec<Candidate>,
    pub trending: Vec<Candidate>,
    pub skipped: Vec<SkippedSource>,
}

impl RequestLists {
    fn skip(&mut self, source: Source, reason: impl Into<String>) {
        self.skipped.push(SkippedSource {
            source: source.as_str().to_string(),
            reason: reason.into(),
        });
    }
}

/// [`feedrank_core::blend::blend`] of the four lists (in [`BlendShares::SOURCES`] order) by
/// `shares`: every candidate of every list, each post once (borrowed, not copied).
fn blend_of<'a>(
    personal: &[&'a Candidate],
    lists: &'a RequestLists,
    shares: &BlendShares,
) -> ApiResult<Vec<&'a Candidate>> {
    debug_assert_eq!(
        BlendShares::SOURCES,
        [
            Source::Personalized,
            Source::Fresh,
            Source::BecauseYouLiked,
            Source::Trending
        ]
    );
    let others: [&'a [Candidate]; 3] = [&lists.fresh, &lists.because_you_liked, &lists.trending];
    let ids: Vec<Vec<Uuid>> = std::iter::once(personal.iter().map(|c| c.post).collect())
        .chain(others.iter().map(|l| l.iter().map(|c| c.post).collect()))
        .collect();
    let id_lists: Vec<&[Uuid]> = ids.iter().map(|l| l.as_slice()).collect();
    let slots = feedrank_core::blend::blend(&id_lists, &shares.as_array(), usize::MAX)
        .map_err(|e| ApiError::Internal(format!("blend: {e}")))?;
    Ok(slots
        .iter()
        .map(|s| match s.source {
            0 => personal[s.index],
            o => &others[o - 1][s.index],
        })
        .collect())
}

fn refs(list: &[Candidate]) -> Vec<&Candidate> {
    list.iter().collect()
}

/// The feed's in-process caches and the settings of its steps.
pub struct Feeds {
    author_diversity_cap: usize,
    fallback_pool_size: usize,
    /// How long a post body is kept (what is made from bodies is kept no longer).
    post_cache_ttl: Duration,
    /// Post bodies with their authors, by post id.
    posts: TtlCache<Uuid, Arc<CachedPost>>,
    /// Decoded Redis recommendation entries, by user.
    decoded: TtlCache<Uuid, Arc<DecodedFeed>>,
    /// Each user's personalized list with its bodies, made from the decoded entry; kept no
    /// longer than a post body (`post_cache_ttl`: a missed notification is outlived alike).
    hydrated: TtlCache<Uuid, Arc<HydratedList>>,
    /// The posts changed since start (what `hydrated` and `neighbors` check their posts by).
    post_changes: ChangeLog<Uuid>,
    /// The random fallback's current candidate pool.
    pool: Refreshed<PoolSnapshot>,
    pool_generation: AtomicU64,
    /// Filtered, re-ranked orders (positions in a page sequence's merged list) by a digest of
    /// what they depend on.
    orders: TtlCache<u64, Arc<Vec<u32>>>,
    /// The request-time lists of each page sequence, by (user, start).
    sessions: TtlCache<(Uuid, i64), Arc<RequestLists>>,
    /// The serving models.
    pub models: Models,
    /// What each recommendation run applied of the experiments.
    pub run_experiments: RunExperiments,
    /// The fresh pool (`None` inside: no model yet), and the posts changed since its last load.
    fresh: Refreshed<Option<FreshSnapshot>>,
    fresh_changed: Mutex<Vec<Uuid>>,
    trending: Refreshed<TrendingList>,
    /// Stored neighbours, by (model, post).
    neighbors: TtlCache<(i64, Uuid), Arc<Neighbors>>,
    /// The neighbour lists being loaded (see `neighbors_of`).
    neighbor_loads: InFlight<(i64, Uuid)>,
    /// Each user's fresh ranking, by (user, list build time).
    fresh_ranked: TtlCache<(Uuid, i64), Arc<FreshRanking>>,
    /// Posts served once already (first-served age metric).
    served: TtlCache<Uuid, ()>,
    /// Users PostgreSQL had no current recommendations for, with the value of
    /// `recommendations_generation` when it was asked: an entry holds only while that is still
    /// the current generation (migration V5's notifications bump it).
    without_recommendations: TtlCache<Uuid, u64>,
    recommendations_generation: AtomicU64,
    /// True while the change listener is connected: otherwise a change could go unnoticed, so
    /// nothing is remembered about recommendations.
    listening: AtomicBool,
}

impl Feeds {
    pub fn new(cfg: &Config) -> Feeds {
        Feeds {
            author_diversity_cap: cfg.author_diversity_cap,
            fallback_pool_size: cfg.fallback_pool_size,
            post_cache_ttl: cfg.post_cache_ttl,
            posts: TtlCache::new(cfg.post_cache_capacity, cfg.post_cache_ttl),
            decoded: TtlCache::new(DECODED_FEED_CAPACITY, DECODED_FEED_TTL),
            hydrated: TtlCache::new(DECODED_FEED_CAPACITY, cfg.post_cache_ttl),
            post_changes: ChangeLog::new(POST_CHANGES_KEPT),
            pool: Refreshed::new(cfg.fallback_pool_refresh),
            pool_generation: AtomicU64::new(0),
            orders: TtlCache::new(ORDERS_CAPACITY, cfg.fallback_pool_refresh),
            sessions: TtlCache::new(SESSIONS_CAPACITY, SESSIONS_TTL),
            models: Models::default(),
            run_experiments: RunExperiments::default(),
            fresh: Refreshed::new(FRESH_RELOAD),
            fresh_changed: Mutex::new(Vec::new()),
            trending: Refreshed::new(TRENDING_RELOAD),
            neighbors: TtlCache::new(NEIGHBORS_CAPACITY, NEIGHBORS_TTL),
            neighbor_loads: InFlight::new(),
            served: TtlCache::new(SERVED_CAPACITY, SERVED_TTL),
            fresh_ranked: TtlCache::new(FRESH_RANKED_CAPACITY, FRESH_RANKED_TTL),
            without_recommendations: TtlCache::new(
                NO_RECOMMENDATIONS_CAPACITY,
                NO_RECOMMENDATIONS_TTL,
            ),
            recommendations_generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        }
    }

    // --- what invalidation tells it -------------------------------------------------------

    /// A post (or its author) changed or was deleted.
    pub fn post_changed(&self, id: Uuid) {
        self.posts.remove(&id);
        self.post_changes.record(Some(id));
        self.fresh_changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        self.fresh.mark_stale();
    }

    /// Any post may have changed.
    pub fn all_posts_changed(&self) {
        self.posts.clear();
        self.post_changes.record(None);
        self.fresh.forget();
    }

    /// A run or recommendation rows landed: every remembered "no recommendations" is void.
    pub fn recommendations_changed(&self) {
        self.recommendations_generation
            .fetch_add(1, Ordering::SeqCst);
        self.without_recommendations.clear();
        self.models.changed();
        // the newest model may have changed: the pools built on it are reloaded
        self.fresh.mark_stale();
    }

    /// The change listener connected (`true`) or dropped (`false`). Either way what is cached may
    /// have missed a change, so it is forgotten; while it is down, nothing is remembered about
    /// recommendations.
    pub fn listening(&self, connected: bool) {
        if !connected {
            self.listening.store(false, Ordering::SeqCst);
        }
        self.all_posts_changed();
        self.recommendations_changed();
        if connected {
            self.listening.store(true, Ordering::SeqCst);
        }
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// Bumped by every change of recommendations and every (re)connection of the listener.
    pub fn recommendations_generation(&self) -> u64 {
        self.recommendations_generation.load(Ordering::SeqCst)
    }

    /// Whether PostgreSQL had no recommendations for `user` when last asked, with no change since.
    pub fn known_without_recommendations(&self, user: Uuid) -> bool {
        let generation = self.recommendations_generation.load(Ordering::SeqCst);
        self.is_listening() && self.without_recommendations.get(&user) == Some(generation)
    }

    // --- the page -------------------------------------------------------------------------

    /// One feed page for `user`: the JSON body of a [`crate::response::FeedResponse`] (its
    /// `metadata.requestId` is `request_id`), and what it served.
    pub async fn build(
        &self,
        stores: &Stores<'_>,
        user: Uuid,
        req: &FeedRequest,
        request_id: Uuid,
    ) -> ApiResult<FeedPage> {
        let input = self.input(stores, user, req, req.offset == 0).await;
        let personalized = self.personalized(&input).await?;
        let (lists, shares) = self.session_lists(&input, personalized.as_ref()).await?;
        let personal = personal_list(personalized.as_ref());
        let merged = blend_of(&personal, &lists, &shares)?;
        // `metadata.source` as before the blend: where the personalized list came from, or
        // `fallback` when the user has none left after the filters.
        let origin = match &personalized {
            Some(p) if merged.iter().any(|c| c.source == Source::Personalized) => p.origin,
            _ => "fallback",
        };
        let no_exclusions = Exclusions::default();
        let personal_excluded = personalized
            .as_ref()
            .map_or(&no_exclusions, |p| &p.excluded);
        let no_bodies = IdMap::default();
        let bodies = personalized.as_ref().map_or(&no_bodies, |p| &p.list.bodies);
        let need = req.offset + req.limit;
        let cap = self.author_diversity_cap;
        let blended_order = diversify_prefix(
            (0..merged.len() as u32).collect(),
            |&i| merged[i as usize].author,
            req.limit,
            cap,
            need,
        );
        // The first `need` posts of the blend re-ranked alone are those of the blend with the
        // fallback after it (the cap only ever passes a post over to a later place), so the
        // fallback is read only when the page reaches past the blend.
        let (order, total, seed, pool) = if blended_order.len() >= need {
            // (the fallback's size only counts in `total`: a page served from the blend does not
            // fail when PostgreSQL cannot give the pool)
            let pool = self.fallback_pool(stores.pg).await.ok();
            let rest = pool.as_ref().map_or(0, |pool| {
                let in_pool = merged
                    .iter()
                    .filter(|c| pool.index.contains_key(&c.post))
                    .count();
                pool.candidates.len() - in_pool
            });
            (Arc::new(blended_order), merged.len() + rest, None, pool)
        } else {
            let pool = self.fallback_pool(stores.pg).await?;
            let (order, seed) = self
                .with_fallback(&input, &merged, &pool, personal_excluded)
                .await?;
            let total = order.len();
            (order, total, Some(seed), Some(pool))
        };
        stores.metrics.feed_served(origin);
        let blended_len = merged.len();
        let item = |i: u32| -> &Candidate {
            let i = i as usize;
            if i < blended_len {
                merged[i]
            } else {
                &pool
                    .as_ref()
                    .expect("positions past the blend come with the pool")
                    .candidates[i - blended_len]
            }
        };
        let start = req.offset.min(order.len());
        let page = &order[start..need.min(order.len())];
        // The run the page blended: the one whose list `metadata.source` names.
        let run = personalized.as_ref().filter(|_| origin != "fallback");
        let run_id = run.and_then(|p| p.run_id);
        let arms = self.arms_of(stores.pg, user, req, run_id).await;
        let metadata = FeedMetadata {
            request_id,
            total,
            offset: req.offset,
            limit: req.limit,
            source: origin.to_string(),
            sources: Vec::new(),
            skipped: lists.skipped.clone(),
            seed,
            arms,
        };
        let mut served = Vec::with_capacity(page.len());
        let body = self
            .page(
                stores,
                page.iter().map(|&i| item(i)),
                bodies,
                metadata,
                &mut served,
            )
            .await?;
        Ok(FeedPage {
            body,
            served,
            run_id,
            model_id: run.and_then(|p| p.model_id),
        })
    }

    /// `req.arms` as `metadata.arms` says them: the rule's `config` arm applied when `run_id`
    /// (the run the page is served from) computed the user's list with it.
    async fn arms_of(
        &self,
        pg: &Pool,
        user: Uuid,
        req: &FeedRequest,
        run_id: Option<i64>,
    ) -> Vec<ExperimentArm> {
        let mut arms = req.arms.clone();
        if let (Some(c), Some(run_id)) = (&req.config_arm, run_id) {
            let computed = self
                .run_experiments
                .computed_with(pg, run_id, user, c)
                .await;
            if let Some(a) = arms.get_mut(c.index) {
                a.applied = computed;
            }
        }
        arms
    }

    /// For operators: each source's candidates for `user` with their scores and components,
    /// what was skipped, and the first `limit` posts of the blend (before the author cap), as
    /// the user is served them: `req` carries the user's experiment arms (a `sources` arm's
    /// shares, a `random` arm's fallback). Reads what a first page reads, but starts no page
    /// sequence and keeps nothing.
    pub async fn explain(
        &self,
        stores: &Stores<'_>,
        user: Uuid,
        req: &FeedRequest,
    ) -> ApiResult<serde_json::Value> {
        use serde_json::json;
        let limit = req.limit;
        let input = self.input(stores, user, req, false).await;
        let personalized = self.personalized(&input).await?;
        let user_model = match personalized.as_ref().and_then(|p| p.model_id) {
            Some(id) => self.models.get(stores.pg, id).await.ok().flatten(),
            None => None,
        };
        let lists = self
            .request_lists(&input, personalized.as_ref(), user_model.as_deref())
            .await;
        let config = user_model
            .as_ref()
            .map_or(self.models.default_config(), |m| &m.config);
        let named = |names: &[&str], c: &Option<[f32; 4]>| {
            c.map(|c| {
                names
                    .iter()
                    .zip(c)
                    .map(|(n, v)| (n.to_string(), json!(v)))
                    .collect::<serde_json::Map<_, _>>()
            })
        };
        let show = |list: &[&Candidate], names: &[&str]| -> Vec<serde_json::Value> {
            list.iter()
                .map(|c| {
                    json!({
                        "postId": c.post,
                        "authorId": c.author,
                        "score": c.score,
                        "reason": c.reason.map(Reason::as_str),
                        "becauseOf": c.because_of,
                        "components": named(names, &c.components),
                    })
                })
                .collect()
        };
        let hybrid = feedrank_core::config::COMPONENTS;
        let fresh = feedrank_core::fresh::FRESH_COMPONENTS;
        let personal = personal_list(personalized.as_ref());
        // what the page blends by: a `sources` arm's shares, else the run's
        let shares = req.blend.unwrap_or(config.sources.blend);
        // a `random` arm's user is served the fallback alone
        let merged = if req.fallback_only {
            Vec::new()
        } else {
            blend_of(&personal, &lists, &shares)?
        };
        let run_id = personalized.as_ref().and_then(|p| p.run_id);
        let arms = self.arms_of(stores.pg, user, req, run_id).await;
        Ok(json!({
            "userId": user,
            "modelId": personalized.as_ref().and_then(|p| p.model_id),
            "runId": run_id,
            "personalizedFrom": personalized.as_ref().map(|p| p.origin),
            "randomFeed": req.fallback_only,
            "arms": arms,
            "shares": shares,
            "sources": {
                "personalized": show(&personal, &hybrid),
                "fresh": show(&refs(&lists.fresh), &fresh),
                "because_you_liked": show(&refs(&lists.because_you_liked), &[]),
                "trending": show(&refs(&lists.trending), &[]),
            },
            "skipped": lists.skipped,
            "blend": merged
                .iter()
                .take(limit)
                .map(|c| json!({"postId": c.post, "source": c.source.as_str()}))
                .collect::<Vec<_>>(),
        }))
    }

    /// The request's common input: the Redis read and the page sequence's start.
    async fn input<'a>(
        &'a self,
        stores: &'a Stores<'a>,
        user: Uuid,
        req: &'a FeedRequest,
        start_session: bool,
    ) -> SourceInput<'a> {
        let now = now_ms();
        let user_key = user.to_string();
        // The seen entries the cached path needs start when its entry was built: the entry read
        // last time tells when that was (a newer entry needs fewer; an older one reads again).
        let seen_since = self.decoded.get(&user).map(|f| f.generated_at * 1000);
        let read = stores
            .redis
            .read_feed(
                &user_key,
                start_session.then_some(now),
                seen_since,
                stores.metrics,
            )
            .await;
        let as_of = match (&read, req.offset) {
            (Some(r), o) if o > 0 => r.session_start_ms.unwrap_or(now),
            _ => now,
        };
        SourceInput {
            feeds: self,
            stores,
            user,
            user_key,
            req,
            now,
            as_of,
            read,
            seen_since,
        }
    }

    /// The request-time sources' lists of the page sequence (made at its first page, kept for
    /// the next), with what was skipped, and the blend's shares.
    async fn session_lists(
        &self,
        input: &SourceInput<'_>,
        personalized: Option<&Personalized>,
    ) -> ApiResult<(Arc<RequestLists>, BlendShares)> {
        if input.req.fallback_only {
            return Ok((Arc::new(RequestLists::default()), BlendShares::default()));
        }
        let user_model = match personalized.and_then(|p| p.model_id) {
            Some(id) => self.models.get(input.stores.pg, id).await.ok().flatten(),
            None => None,
        };
        let key = (input.user, input.as_of);
        let lists = match self.sessions.get(&key) {
            Some(l) if input.req.offset > 0 => l,
            _ => {
                let l = Arc::new(
                    self.request_lists(input, personalized, user_model.as_deref())
                        .await,
                );
                self.sessions.insert(key, l.clone());
                l
            }
        };
        // a `sources` experiment arm's shares, else the run's
        let shares = input.req.blend.unwrap_or(
            user_model
                .as_ref()
                .map_or(self.models.default_config(), |m| &m.config)
                .sources
                .blend,
        );
        Ok((lists, shares))
    }

    /// The request-time sources' lists for this user. A source that cannot answer (no model,
    /// a profile of an older model, Redis or PostgreSQL failing) is skipped and said so.
    async fn request_lists(
        &self,
        input: &SourceInput<'_>,
        personalized: Option<&Personalized>,
        user_model: Option<&ServingModel>,
    ) -> RequestLists {
        let mut out = RequestLists::default();
        let blocked = self.blocked(input, personalized).await;
        let user = input.user;
        let allowed = |c: &Candidate| c.author != user && !blocked.contains(&c.post);
        // fresh
        match self.fresh_candidates(input, personalized, &allowed).await {
            Ok(list) => out.fresh = list,
            Err(why) => out.skip(Source::Fresh, why),
        }
        // because_you_liked
        match self
            .liked_candidates(input, personalized, user_model, &allowed)
            .await
        {
            Ok(list) => out.because_you_liked = list,
            Err(why) => out.skip(Source::BecauseYouLiked, why),
        }
        // trending
        let n = user_model
            .map_or(self.models.default_config(), |m| &m.config)
            .sources
            .trending
            .candidates;
        match self.trending_list(input.stores).await {
            Ok(t) => match &t.candidates {
                Some(all) => {
                    out.trending = all.iter().filter(|c| allowed(c)).take(n).cloned().collect()
                }
                None => out.skip(Source::Trending, "redis unavailable"),
            },
            Err(e) => out.skip(Source::Trending, format!("unavailable: {e}")),
        }
        out
    }

    /// The posts the request-time sources leave out: hidden, or seen by the page sequence's
    /// start (the Redis mirror; PostgreSQL when Redis did not answer).
    async fn blocked(
        &self,
        input: &SourceInput<'_>,
        personalized: Option<&Personalized>,
    ) -> Exclusions {
        if let Some(read) = &input.read {
            return Exclusions::from_redis(&read.hidden, &read.seen, i64::MIN, input.as_of);
        }
        let since = personalized.map_or(input.as_of - SEEN_RETENTION_MS, |p| p.built_ms);
        match db::interaction_marks(input.stores.pg, input.user, since).await {
            Ok(marks) => Exclusions::from_marks(&marks, since, input.as_of),
            Err(_) => Exclusions::default(),
        }
    }
}
