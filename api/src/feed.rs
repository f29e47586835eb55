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

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use feedrank_core::cache::{CachedFeed, CachedProfile, CachedRecommendation};
use feedrank_core::config::{BlendShares, Reason, ScoringConfig, Source};
use feedrank_core::fresh::{FreshQuery, SparseVec};
use uuid::Uuid;

use crate::clock::now_ms;
use crate::config::Config;
use crate::db;
use crate::diversify::{diversify, diversify_prefix};
use crate::error::{ApiError, ApiResult};
use crate::fresh_pool::FreshSnapshot;
use crate::memo::{IdHasher, IdMap, Refreshed, TtlCache};
use crate::metrics::Metrics;
use crate::models::{Models, ServingModel};
use crate::redis_store::{FeedRead, Mirrored, RedisStore, SEEN_RETENTION_MS};
use crate::response::{FeedMetadata, FeedPost, SkippedSource};
use crate::served_log::ServedPost;

/// Seeds are kept within JavaScript's safe integers, so a browser can pass one back unchanged.
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// Decoded recommendation entries kept (about 5 KB each for 200 items).
const DECODED_FEED_CAPACITY: usize = 10_000;
const DECODED_FEED_TTL: Duration = Duration::from_secs(300);
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
/// The trending list is the same for every user: computed at most this often.
const TRENDING_RELOAD: Duration = Duration::from_secs(1);
/// Users' fresh rankings kept (each for one pool snapshot, so about a second).
const FRESH_RANKED_CAPACITY: usize = 10_000;
const FRESH_RANKED_TTL: Duration = Duration::from_secs(10);
/// Posts remembered as served once (for the first-served age metric).
const SERVED_CAPACITY: usize = 100_000;
const SERVED_TTL: Duration = Duration::from_secs(86_400);
/// The trending list keeps this many more than a user is offered, for the user's exclusions.
const TRENDING_SLACK: usize = 200;
/// Neighbour lists kept, by (model, post).
const NEIGHBORS_CAPACITY: usize = 50_000;
const NEIGHBORS_TTL: Duration = Duration::from_secs(600);
/// A validated feed request.
#[derive(Debug, Clone)]
pub struct FeedRequest {
    pub limit: usize,
    pub offset: usize,
    pub refresh: bool,
    pub seed: Option<u64>,
    /// Skip the recommendations and answer with the random fallback (the demo page compares).
    pub fallback_only: bool,
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

/// The user's personalized list, as one of [`PERSONALIZED`] answers it.
pub struct Personalized {
    /// Where it came from (`metadata.source`, and the metrics label): `cache` or `db`.
    pub origin: &'static str,
    pub items: Vec<Candidate>,
    /// Posts to leave out (hidden, or seen after the list was built).
    pub excluded: Exclusions,
    /// Bodies loaded already (the page builder loads the page's other posts).
    pub bodies: IdMap<Uuid, Arc<CachedPost>>,
    /// When the list was built (ms).
    pub built_ms: i64,
    /// The recommendation run the list is from (the served log records it).
    pub run_id: Option<i64>,
    /// The run's serving model, and the user's profile in it.
    pub model_id: Option<i64>,
    pub profile: Option<Arc<CachedProfile>>,
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

type LookupFuture<'a> = Pin<Box<dyn Future<Output = ApiResult<Option<Personalized>>> + Send + 'a>>;

/// A place the personalized list is looked for: its name (`metadata.source`, metrics) and the
/// function that reads it, or `None` when it has nothing for this request.
pub struct Lookup {
    pub name: &'static str,
    find: for<'a> fn(&'a SourceInput<'a>, &'static str) -> LookupFuture<'a>,
}

/// Where the personalized list is looked for, in this order.
pub const PERSONALIZED: [Lookup; 2] = [
    Lookup {
        name: "cache",
        find: |input, name| Box::pin(from_cache(input, name)),
    },
    Lookup {
        name: "db",
        find: |input, name| Box::pin(from_database(input, name)),
    },
];

/// The values of `metadata.source` (and of the `source` label of the feed page counter).
pub const PAGE_ORIGINS: [&str; 3] = ["cache", "db", "fallback"];

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

/// The default fallback seed: the user and the UTC day, so a user's random feed is stable for a
/// day and different from other users'. FNV-1a, written out so it never changes with a library.
pub fn default_seed(user: Uuid, unix_ms: i64) -> u64 {
    let day = unix_ms.div_euclid(86_400_000);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.as_bytes().iter().chain(day.to_le_bytes().iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & MAX_SEED
}

/// A post as the feed shows it, serialized once: the JSON object without its closing brace, so
/// that a page is assembled by concatenation (with `score`, `reason` and `source` appended)
/// instead of serializing every post of every page again.
pub struct CachedPost {
    pub author: Uuid,
    pub created_ms: i64,
    json_open: Box<str>,
}

impl CachedPost {
    pub fn new(p: &FeedPost) -> CachedPost {
        debug_assert!(p.score.is_none() && p.reason.is_none() && p.source.is_none());
        let mut json = serde_json::to_string(p).expect("a post always serializes");
        let closing = json.pop();
        debug_assert_eq!(closing, Some('}'));
        CachedPost {
            author: p.user_id,
            created_ms: p.created_at.timestamp_millis(),
            json_open: json.into_boxed_str(),
        }
    }
}

/// One recommended post of an entry, decoded.
#[derive(Debug, Clone, Copy)]
pub struct Recommended {
    pub post: Uuid,
    pub score: f32,
    pub reason: Reason,
    pub components: [f32; 4],
}

/// A decoded recommendations entry, remembered with a digest of its bytes: the same bytes read
/// again from Redis are not decoded again (decoding is most of the cached path's CPU).
pub struct DecodedFeed {
    digest: (u64, usize),
    pub run_id: i64,
    pub generated_at: i64,
    pub model_id: Option<i64>,
    pub profile: Option<Arc<CachedProfile>>,
    pub items: Vec<Recommended>,
}

/// A fast digest (8 bytes a step) with the length: the entry is written by the pipeline, not
/// by clients, so a non-cryptographic hash is enough to recognize the same bytes again.
fn digest(raw: &[u8]) -> (u64, usize) {
    let mut h = IdHasher::default();
    h.write(raw);
    (h.finish(), raw.len())
}

fn decoded_items(items: &[CachedRecommendation]) -> Vec<Recommended> {
    items
        .iter()
        .filter_map(|i| {
            Some(Recommended {
                post: Uuid::parse_str(&i.post_id).ok()?,
                score: i.score,
                reason: i.reason,
                components: i.components,
            })
        })
        .collect()
}

/// The personalized list without its excluded posts.
fn personal_list(personalized: Option<&Personalized>) -> Vec<Candidate> {
    personalized
        .map(|p| {
            p.items
                .iter()
                .filter(|c| !p.excluded.contains(&c.post))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// [`feedrank_core::blend::blend`] of the four lists (in [`BlendShares::SOURCES`] order) by
/// the configuration's shares: every candidate of every list, each post once.
fn blend_of(
    personal: &[Candidate],
    lists: &RequestLists,
    config: &ScoringConfig,
) -> ApiResult<Vec<Candidate>> {
    let by_source: [&[Candidate]; 4] = [
        personal,
        &lists.fresh,
        &lists.because_you_liked,
        &lists.trending,
    ];
    debug_assert_eq!(
        BlendShares::SOURCES,
        [
            Source::Personalized,
            Source::Fresh,
            Source::BecauseYouLiked,
            Source::Trending
        ]
    );
    let ids: Vec<Vec<Uuid>> = by_source
        .iter()
        .map(|l| l.iter().map(|c| c.post).collect())
        .collect();
    let id_lists: Vec<&[Uuid]> = ids.iter().map(|l| l.as_slice()).collect();
    let slots =
        feedrank_core::blend::blend(&id_lists, &config.sources.blend.as_array(), usize::MAX)
            .map_err(|e| ApiError::Internal(format!("blend: {e}")))?;
    Ok(slots
        .iter()
        .map(|s| by_source[s.source][s.index].clone())
        .collect())
}

/// A profile as [`FreshQuery`] reads it; `None` when it is malformed.
fn query_profile(p: &CachedProfile) -> Option<(SparseVec, Vec<(u128, f32)>)> {
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

/// The most recent posts at one moment, newest first, as the fallback's candidates.
struct PoolSnapshot {
    /// Distinguishes snapshots (the key of their memoized orders).
    generation: u64,
    candidates: Arc<[Candidate]>,
    /// Post -> position in `candidates`.
    index: IdMap<Uuid, u32>,
}

/// A post's stored neighbours, best first, with their similarity.
type Neighbors = Vec<(Uuid, f32)>;

/// The trending list at one moment (the same for every user).
pub struct TrendingList {
    /// `None`: Redis did not answer.
    candidates: Option<Vec<Candidate>>,
}

/// The TTL of an entry written back from the database: the run's `cache_ttl_seconds` (the
/// pipeline's setting, stored with the run; the default configuration's when the run has none),
/// never past the rows' expiry (at least a second).
pub fn write_back_ttl(run_ttl_seconds: Option<u64>, expires_at_ms: i64, now_ms: i64) -> Duration {
    let configured = run_ttl_seconds.unwrap_or_else(|| ScoringConfig::default().cache_ttl_seconds);
    let until_expiry = Duration::from_millis((expires_at_ms - now_ms).max(1000) as u64);
    Duration::from_secs(configured).min(until_expiry)
}

/// The feed's in-process caches and the settings of its steps.
pub struct Feeds {
    author_diversity_cap: usize,
    fallback_pool_size: usize,
    /// Post bodies with their authors, by post id.
    posts: TtlCache<Uuid, Arc<CachedPost>>,
    /// Decoded Redis recommendation entries, by user.
    decoded: TtlCache<Uuid, Arc<DecodedFeed>>,
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
    /// The fresh pool (`None` inside: no model yet), and the posts changed since its last load.
    fresh: Refreshed<Option<FreshSnapshot>>,
    fresh_changed: Mutex<Vec<Uuid>>,
    trending: Refreshed<TrendingList>,
    /// Stored neighbours, by (model, post).
    neighbors: TtlCache<(i64, Uuid), Arc<Neighbors>>,
    /// Each user's fresh ranking of one pool snapshot, by (user, snapshot, list build time).
    fresh_ranked: TtlCache<(Uuid, u64, i64), Arc<Vec<Candidate>>>,
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
            posts: TtlCache::new(cfg.post_cache_capacity, cfg.post_cache_ttl),
            decoded: TtlCache::new(DECODED_FEED_CAPACITY, DECODED_FEED_TTL),
            pool: Refreshed::new(cfg.fallback_pool_refresh),
            pool_generation: AtomicU64::new(0),
            orders: TtlCache::new(ORDERS_CAPACITY, cfg.fallback_pool_refresh),
            sessions: TtlCache::new(SESSIONS_CAPACITY, SESSIONS_TTL),
            models: Models::default(),
            fresh: Refreshed::new(FRESH_RELOAD),
            fresh_changed: Mutex::new(Vec::new()),
            trending: Refreshed::new(TRENDING_RELOAD),
            neighbors: TtlCache::new(NEIGHBORS_CAPACITY, NEIGHBORS_TTL),
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
        self.fresh_changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        self.fresh.mark_stale();
    }

    /// Any post may have changed.
    pub fn all_posts_changed(&self) {
        self.posts.clear();
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
        let (merged, lists) = self.blended(&input, personalized.as_ref()).await?;
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
        let bodies = personalized.as_ref().map_or(&no_bodies, |p| &p.bodies);
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
                &merged[i]
            } else {
                &pool
                    .as_ref()
                    .expect("positions past the blend come with the pool")
                    .candidates[i - blended_len]
            }
        };
        let start = req.offset.min(order.len());
        let page = &order[start..need.min(order.len())];
        let metadata = FeedMetadata {
            request_id,
            total,
            offset: req.offset,
            limit: req.limit,
            source: origin.to_string(),
            sources: Vec::new(),
            skipped: lists.skipped.clone(),
            seed,
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
        // The run the page blended: the one whose list `metadata.source` names.
        let run = personalized.as_ref().filter(|_| origin != "fallback");
        Ok(FeedPage {
            body,
            served,
            run_id: run.and_then(|p| p.run_id),
            model_id: run.and_then(|p| p.model_id),
        })
    }

    /// For operators: each source's candidates for `user` with their scores and components,
    /// what was skipped, and the first `limit` posts of the blend (before the author cap). Reads
    /// what a first page reads, but starts no page sequence and keeps nothing.
    pub async fn explain(
        &self,
        stores: &Stores<'_>,
        user: Uuid,
        limit: usize,
    ) -> ApiResult<serde_json::Value> {
        use serde_json::json;
        let req = FeedRequest {
            limit,
            offset: 0,
            refresh: false,
            seed: None,
            fallback_only: false,
        };
        let input = self.input(stores, user, &req, false).await;
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
        let show = |list: &[Candidate], names: &[&str]| -> Vec<serde_json::Value> {
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
        let merged = blend_of(&personal, &lists, config)?;
        Ok(json!({
            "userId": user,
            "modelId": personalized.as_ref().and_then(|p| p.model_id),
            "personalizedFrom": personalized.as_ref().map(|p| p.origin),
            "shares": config.sources.blend,
            "sources": {
                "personalized": show(&personal, &hybrid),
                "fresh": show(&lists.fresh, &fresh),
                "because_you_liked": show(&lists.because_you_liked, &[]),
                "trending": show(&lists.trending, &[]),
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

    /// The user's personalized list from the first place that has it.
    async fn personalized(&self, input: &SourceInput<'_>) -> ApiResult<Option<Personalized>> {
        if input.req.fallback_only {
            return Ok(None);
        }
        for lookup in &PERSONALIZED {
            if let Some(p) = (lookup.find)(input, lookup.name).await? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// The blend of the personalized list and the request-time sources, with those sources'
    /// lists (and what was skipped).
    async fn blended(
        &self,
        input: &SourceInput<'_>,
        personalized: Option<&Personalized>,
    ) -> ApiResult<(Vec<Candidate>, Arc<RequestLists>)> {
        if input.req.fallback_only {
            return Ok((Vec::new(), Arc::new(RequestLists::default())));
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
        let config = user_model
            .as_ref()
            .map_or(self.models.default_config(), |m| &m.config);
        let merged = blend_of(&personal_list(personalized), &lists, config)?;
        Ok((merged, lists))
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

    /// The fresh source: the pool's best posts for the user's profile.
    async fn fresh_candidates(
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
        // The ranking of one pool snapshot for one user is memoized (a snapshot lives about a
        // second; a user's requests within it rank once): the best 2n of the user's own
        // exclusions (their own posts), of which the request drops what it must (seen, hidden).
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

    /// The because_you_liked source: the stored neighbours of the posts the user liked or
    /// shared since the list was built, most recent like first, `per_like` each.
    async fn liked_candidates(
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
    async fn neighbors_of(
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

    /// The fresh pool, reloaded incrementally when older than [`FRESH_RELOAD`].
    async fn fresh_snapshot(&self, stores: &Stores<'_>) -> ApiResult<Arc<Option<FreshSnapshot>>> {
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

    /// The trending list (with authors; deleted posts left out), at most [`TRENDING_RELOAD`] old.
    async fn trending_list(&self, stores: &Stores<'_>) -> ApiResult<Arc<TrendingList>> {
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

    /// The merged list's order with the fallback after the blend: positions below
    /// `merged.len()` are the blend's, the others the pool's (offset by it). Memoized.
    async fn with_fallback(
        &self,
        input: &SourceInput<'_>,
        merged: &[Candidate],
        pool: &PoolSnapshot,
        personal_excluded: &Exclusions,
    ) -> ApiResult<(Arc<Vec<u32>>, u64)> {
        let seed = input
            .req
            .seed
            .unwrap_or_else(|| default_seed(input.user, input.now));
        let since = input.as_of - SEEN_RETENTION_MS;
        let marks = db::interaction_marks(input.stores.pg, input.user, since).await?;
        let excluded = Exclusions::from_marks(&marks, since, input.as_of);
        let (limit, cap) = (input.req.limit, self.author_diversity_cap);
        let key = {
            let mut h = std::hash::DefaultHasher::new();
            (pool.generation, seed, limit, cap).hash(&mut h);
            for c in merged {
                c.post.hash(&mut h);
            }
            excluded.digest(&mut h);
            personal_excluded.digest(&mut h);
            h.finish()
        };
        if let Some(hit) = self.orders.get(&key) {
            return Ok((hit, seed));
        }
        let in_blend: HashSet<Uuid, BuildHasherDefault<IdHasher>> =
            merged.iter().map(|c| c.post).collect();
        let mut tail: Vec<u32> = (0..pool.candidates.len() as u32).collect();
        feedrank_core::shuffle::shuffle(&mut tail, seed);
        tail.retain(|&i| {
            let p = &pool.candidates[i as usize].post;
            !excluded.contains(p) && !personal_excluded.contains(p) && !in_blend.contains(p)
        });
        let b = merged.len() as u32;
        let positions: Vec<u32> = (0..b).chain(tail.into_iter().map(|i| i + b)).collect();
        let author = |&i: &u32| {
            if i < b {
                merged[i as usize].author
            } else {
                pool.candidates[(i - b) as usize].author
            }
        };
        let order = Arc::new(diversify(positions, author, limit, cap));
        self.orders.insert(key, order.clone());
        Ok((order, seed))
    }

    /// The page of `items`, as JSON (`metadata.sources` is filled here); the posts it holds are
    /// appended to `served`, in order.
    async fn page<'c>(
        &self,
        stores: &Stores<'_>,
        items: impl Iterator<Item = &'c Candidate> + Clone,
        bodies: &IdMap<Uuid, Arc<CachedPost>>,
        mut metadata: FeedMetadata,
        served: &mut Vec<ServedPost>,
    ) -> ApiResult<Vec<u8>> {
        let mut missing = Vec::with_capacity(metadata.limit);
        for c in items.clone() {
            // (a look-up hashes the id even in an empty map)
            if bodies.is_empty() || !bodies.contains_key(&c.post) {
                missing.push(c.post);
            }
        }
        let loaded = self.hydrate(stores.pg, &missing).await?;
        let mut out = Vec::with_capacity(512 + metadata.limit * 600);
        out.extend_from_slice(b"{\"posts\":[");
        let mut first = true;
        let mut counts = [0u64; Source::ALL.len()];
        let now = now_ms();
        for item in items {
            // A post deleted since the list was made has no body: left out.
            let Some(body) = bodies.get(&item.post).or_else(|| loaded.get(&item.post)) else {
                continue;
            };
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(body.json_open.as_bytes());
            if let Some(score) = item.score {
                out.extend_from_slice(b",\"score\":");
                serde_json::to_writer(&mut out, &score).expect("writing to a Vec");
            }
            if let Some(reason) = item.reason {
                out.extend_from_slice(b",\"reason\":\"");
                out.extend_from_slice(reason.as_str().as_bytes());
                out.push(b'"');
            }
            out.extend_from_slice(b",\"source\":\"");
            out.extend_from_slice(item.source.as_str().as_bytes());
            out.push(b'"');
            if let Some(liked) = item.because_of {
                out.extend_from_slice(b",\"becauseOf\":\"");
                out.extend_from_slice(
                    liked
                        .hyphenated()
                        .encode_lower(&mut Uuid::encode_buffer())
                        .as_bytes(),
                );
                out.push(b'"');
            }
            out.push(b'}');
            served.push(ServedPost {
                post: item.post,
                source: item.source,
                reason: item.reason,
            });
            let s = Source::ALL
                .iter()
                .position(|&s| s == item.source)
                .expect("a source of ALL");
            if counts[s] == 0 {
                metadata.sources.push(item.source.as_str().to_string());
            }
            counts[s] += 1;
            if self.served.get(&item.post).is_none() {
                self.served.insert(item.post, ());
                stores
                    .metrics
                    .first_served(item.source.as_str(), now - body.created_ms);
            }
        }
        for (s, n) in Source::ALL.iter().zip(counts) {
            if n > 0 {
                stores.metrics.posts_served(s.as_str(), n);
            }
        }
        out.extend_from_slice(b"],\"metadata\":");
        serde_json::to_writer(&mut out, &metadata).expect("writing to a Vec");
        out.push(b'}');
        Ok(out)
    }

    /// Post bodies for `ids`, from the in-process cache, the misses from PostgreSQL in one query.
    /// Deleted posts are absent from the result.
    async fn hydrate(&self, pg: &Pool, ids: &[Uuid]) -> ApiResult<IdMap<Uuid, Arc<CachedPost>>> {
        let mut found = IdMap::with_capacity_and_hasher(ids.len(), Default::default());
        let mut missing = Vec::new();
        for id in ids {
            match self.posts.get(id) {
                Some(p) => {
                    found.insert(*id, p);
                }
                None => missing.push(*id),
            }
        }
        if !missing.is_empty() {
            for p in db::posts_by_ids(pg, &missing).await? {
                let cached = Arc::new(CachedPost::new(&p));
                self.posts.insert(p.id, cached.clone());
                found.insert(p.id, cached);
            }
        }
        Ok(found)
    }

    /// The user's Redis entry decoded (memoized); `None` for an entry this build cannot read,
    /// which is then a cache miss.
    fn decode_entry(&self, user: Uuid, raw: &[u8]) -> Option<Arc<DecodedFeed>> {
        let d = digest(raw);
        if let Some(hit) = self.decoded.get(&user) {
            if hit.digest == d {
                return Some(hit);
            }
        }
        match feedrank_core::cache::decode(raw) {
            Ok(feed) => {
                let decoded = Arc::new(DecodedFeed {
                    digest: d,
                    run_id: feed.run_id,
                    generated_at: feed.generated_at,
                    model_id: feed.model_id,
                    profile: feed.profile.map(Arc::new),
                    items: decoded_items(&feed.items),
                });
                self.decoded.insert(user, decoded.clone());
                Some(decoded)
            }
            Err(e) => {
                tracing::warn!(%user, error = %e, "unreadable recommendations entry, treated as a miss");
                None
            }
        }
    }

    /// Recommended posts as candidates, with their bodies (which give their authors); deleted
    /// posts are left out.
    async fn recommended(
        &self,
        pg: &Pool,
        items: &[Recommended],
        origin: &'static str,
        excluded: Exclusions,
    ) -> ApiResult<Personalized> {
        let ids: Vec<Uuid> = items.iter().map(|i| i.post).collect();
        let bodies = self.hydrate(pg, &ids).await?;
        let items = items
            .iter()
            .filter_map(|i| {
                Some(Candidate {
                    post: i.post,
                    author: bodies.get(&i.post)?.author,
                    source: Source::Personalized,
                    score: Some(i.score),
                    reason: Some(i.reason),
                    because_of: None,
                    components: Some(i.components),
                })
            })
            .collect();
        Ok(Personalized {
            origin,
            items,
            excluded,
            bodies,
            built_ms: 0,
            run_id: None,
            model_id: None,
            profile: None,
        })
    }

    /// The current snapshot of the recent-posts pool, reloaded when older than the refresh
    /// interval.
    async fn fallback_pool(&self, pg: &Pool) -> ApiResult<Arc<PoolSnapshot>> {
        self.pool
            .get(|_| async move {
                let posts = db::recent_posts(pg, self.fallback_pool_size).await?;
                let candidates: Arc<[Candidate]> = posts
                    .into_iter()
                    .map(|(post, author)| Candidate {
                        post,
                        author,
                        source: Source::Fallback,
                        score: None,
                        reason: None,
                        because_of: None,
                        components: None,
                    })
                    .collect();
                let index = candidates
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.post, i as u32))
                    .collect();
                Ok(PoolSnapshot {
                    generation: self.pool_generation.fetch_add(1, Ordering::Relaxed),
                    candidates,
                    index,
                })
            })
            .await
    }
}

// --- where the personalized list is looked for, in the order of PERSONALIZED -----------------

/// The pipeline's Redis entry for the user.
async fn from_cache(
    input: &SourceInput<'_>,
    name: &'static str,
) -> ApiResult<Option<Personalized>> {
    let (feeds, stores) = (input.feeds, input.stores);
    if input.req.refresh {
        return Ok(None);
    }
    let Some(read) = &input.read else {
        return Ok(None);
    };
    let entry = read
        .recommendations
        .as_deref()
        .and_then(|raw| feeds.decode_entry(input.user, raw));
    stores.metrics.cache_lookup(entry.is_some());
    let Some(entry) = entry else {
        return Ok(None);
    };
    let built_ms = entry.generated_at * 1000;
    let reread;
    let seen = match input.seen_since {
        // An entry older than the one remembered: its seen entries are read again.
        Some(read_from) if built_ms < read_from => {
            match stores
                .redis
                .read_seen(&input.user_key, built_ms, stores.metrics)
                .await
            {
                Some(seen) => {
                    reread = seen;
                    &reread
                }
                None => return Ok(None),
            }
        }
        _ => &read.seen,
    };
    let excluded = Exclusions::from_redis(&read.hidden, seen, built_ms, input.as_of);
    let mut p = feeds
        .recommended(stores.pg, &entry.items, name, excluded)
        .await?;
    p.built_ms = built_ms;
    p.run_id = Some(entry.run_id);
    p.model_id = entry.model_id;
    p.profile = entry.profile.clone();
    Ok(Some(p))
}

/// The user's current recommendations in PostgreSQL (with the run's model and the user's
/// profile in it), written back to Redis (not asked again for a user it had none for, until
/// recommendations change).
async fn from_database(
    input: &SourceInput<'_>,
    name: &'static str,
) -> ApiResult<Option<Personalized>> {
    let (feeds, stores, user) = (input.feeds, input.stores, input.user);
    let generation = feeds.recommendations_generation.load(Ordering::SeqCst);
    if !input.req.refresh && feeds.known_without_recommendations(user) {
        return Ok(None);
    }
    let Some(current) = db::current_recommendations(stores.pg, user).await? else {
        if feeds.is_listening() {
            // Remembered with the generation read before the query: a change that arrived
            // during it voids this answer.
            feeds.without_recommendations.insert(user, generation);
        }
        return Ok(None);
    };
    let built_ms = current.generated_at * 1000;
    let marks = db::interaction_marks(stores.pg, user, built_ms).await?;
    let profile = match current.model_id {
        Some(m) => db::user_profile(stores.pg, m, user).await?,
        None => None,
    };
    let ttl = write_back_ttl(
        current.cache_ttl_seconds,
        current.expires_at.timestamp_millis(),
        input.now,
    );
    let mirrored: Vec<Mirrored> = marks
        .iter()
        .map(|m| Mirrored {
            post_id: m.post_id.to_string(),
            at_ms: m.at_ms,
            hide: m.hide,
            like: m.like,
        })
        .collect();
    let entry = CachedFeed::new(current.run_id, current.generated_at, current.items)
        .with_model(current.model_id, profile);
    stores
        .redis
        .write_feed(&input.user_key, &entry, ttl, &mirrored, stores.metrics)
        .await;
    let excluded = Exclusions::from_marks(&marks, built_ms, input.as_of);
    let items = decoded_items(&entry.items);
    let mut p = feeds.recommended(stores.pg, &items, name, excluded).await?;
    p.built_ms = built_ms;
    p.run_id = Some(entry.run_id);
    p.model_id = entry.model_id;
    p.profile = entry.profile.map(Arc::new);
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_seed_is_stable_per_user_and_day() {
        let u = Uuid::from_u128(42);
        let day = 1_764_201_600_000;
        assert_eq!(default_seed(u, day), default_seed(u, day + 3_600_000));
        assert_ne!(default_seed(u, day), default_seed(u, day + 86_400_000));
        assert_ne!(default_seed(u, day), default_seed(Uuid::from_u128(43), day));
        assert!(default_seed(u, day) <= MAX_SEED);
    }

    #[test]
    fn the_write_back_ttl_is_the_runs_setting_capped_by_the_rows_expiry() {
        let now = 1_764_201_600_000;
        let day = 86_400_000;
        let default = ScoringConfig::default().cache_ttl_seconds;
        assert_eq!(
            write_back_ttl(Some(120), now + day, now),
            Duration::from_secs(120)
        );
        assert_eq!(
            write_back_ttl(None, now + day, now),
            Duration::from_secs(default)
        );
        assert_eq!(
            write_back_ttl(Some(7200), now + 90_000, now),
            Duration::from_secs(90)
        );
        assert_eq!(
            write_back_ttl(Some(7200), now - 5_000, now),
            Duration::from_secs(1),
            "rows about to expire: one second"
        );
    }

    #[test]
    fn the_personalized_list_is_looked_for_in_the_documented_order() {
        let names: Vec<&str> = PERSONALIZED.iter().map(|s| s.name).collect();
        assert_eq!(names, ["cache", "db"]);
        assert_eq!(PAGE_ORIGINS, ["cache", "db", "fallback"]);
    }
}
