//! How a feed page is assembled: an ordered list of sources ([`SOURCES`]: the Redis entry, the
//! database's current recommendations, the random fallback), each a function that returns its
//! candidates, and one page builder that applies the same steps to whichever list answers.
//!
//! The steps: drop the posts the user hid or already saw (each source says which: see
//! [`Candidates::excluded`]), re-rank so that no author has more than `cap` posts in any `limit`
//! consecutive posts, and cut the page at `offset`. They are deterministic, so pages of one list
//! (same limit, same seed, same page sequence) never repeat or skip a post. A source whose list
//! is empty after them gives way to the next; the last one always answers.
//!
//! "Already saw" means an interaction after the recommendations were built and before the page
//! sequence began (the request at offset 0): posts viewed while paging do not shift later pages.
//!
//! [`Feeds`] owns the caches this needs (post bodies, decoded entries, the fallback's pool and
//! orders, the users known to have no recommendations); `invalidation` tells it what changed.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use feedrank_core::cache::{CachedFeed, CachedRecommendation};
use feedrank_core::config::{Reason, ScoringConfig};
use uuid::Uuid;

use crate::clock::now_ms;
use crate::config::Config;
use crate::db;
use crate::diversify::diversify;
use crate::error::{ApiError, ApiResult};
use crate::memo::{IdHasher, IdMap, TtlCache};
use crate::metrics::Metrics;
use crate::redis_store::{FeedRead, Mirrored, RedisStore, SEEN_RETENTION_MS};
use crate::response::{FeedMetadata, FeedPost};

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

/// A post a source proposes, with what the page says about it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub post: Uuid,
    pub author: Uuid,
    /// The name of the source that proposed it (an entry of [`SOURCES`]).
    pub source: &'static str,
    pub score: Option<f32>,
    pub reason: Option<Reason>,
}

/// What one source answers: its candidates, best first, and what the page builder needs to
/// serve them.
pub struct Candidates {
    /// The source's name: `metadata.source` of the page, and the metrics label.
    pub source: &'static str,
    pub items: Arc<[Candidate]>,
    /// Posts to leave out (hidden, or seen in the window this source's list is sensitive to).
    pub excluded: Exclusions,
    /// Served in the seeded random order of this seed (echoed back as `metadata.seed`).
    pub shuffle_seed: Option<u64>,
    /// The same key means the same `items`: the filtered, re-ranked order is then memoized.
    pub memo_key: Option<u64>,
    /// Bodies the source loaded already (the page builder loads the page's other posts).
    pub bodies: IdMap<Uuid, Arc<CachedPost>>,
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

type SourceFuture<'a> = Pin<Box<dyn Future<Output = ApiResult<Option<Candidates>>> + Send + 'a>>;

/// A source: its name (in pages and metrics) and the function that finds its candidates, or
/// `None` when it has nothing for this request.
pub struct Source {
    pub name: &'static str,
    find: for<'a> fn(&'a SourceInput<'a>, &'static str) -> SourceFuture<'a>,
}

/// The sources, in the order they are asked.
pub const SOURCES: [Source; 3] = [
    Source {
        name: "cache",
        find: |input, name| Box::pin(from_cache(input, name)),
    },
    Source {
        name: "db",
        find: |input, name| Box::pin(from_database(input, name)),
    },
    Source {
        name: "fallback",
        find: |input, name| Box::pin(from_fallback(input, name)),
    },
];

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
/// that a page is assembled by concatenation (with `score` and `reason` appended for recommended
/// posts) instead of serializing every post of every page again.
pub struct CachedPost {
    pub author: Uuid,
    json_open: Box<str>,
}

impl CachedPost {
    pub fn new(p: &FeedPost) -> CachedPost {
        debug_assert!(p.score.is_none() && p.reason.is_none());
        let mut json = serde_json::to_string(p).expect("a post always serializes");
        let closing = json.pop();
        debug_assert_eq!(closing, Some('}'));
        CachedPost {
            author: p.user_id,
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
}

/// A decoded recommendations entry, remembered with a digest of its bytes: the same bytes read
/// again from Redis are not decoded again (decoding is most of the cached path's CPU).
pub struct DecodedFeed {
    digest: (u64, usize),
    pub generated_at: i64,
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
            })
        })
        .collect()
}

/// The most recent posts at one moment, newest first, as the fallback's candidates.
struct PoolSnapshot {
    loaded_at: Instant,
    /// Distinguishes snapshots (the key of their memoized orders).
    generation: u64,
    candidates: Arc<[Candidate]>,
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
    fallback_pool_refresh: Duration,
    /// Post bodies with their authors, by post id.
    posts: TtlCache<Uuid, Arc<CachedPost>>,
    /// Decoded Redis recommendation entries, by user.
    decoded: TtlCache<Uuid, Arc<DecodedFeed>>,
    /// The random fallback's current candidate pool, and the lock of its reload.
    pool: RwLock<Option<Arc<PoolSnapshot>>>,
    pool_reload: tokio::sync::Mutex<()>,
    pool_generation: AtomicU64,
    /// Filtered, re-ranked orders (positions in a source's items) of the sources that give a
    /// memo key, by a digest of what they depend on.
    orders: TtlCache<u64, Arc<Vec<u32>>>,
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
            fallback_pool_refresh: cfg.fallback_pool_refresh,
            posts: TtlCache::new(cfg.post_cache_capacity, cfg.post_cache_ttl),
            decoded: TtlCache::new(DECODED_FEED_CAPACITY, DECODED_FEED_TTL),
            pool: RwLock::new(None),
            pool_reload: tokio::sync::Mutex::new(()),
            pool_generation: AtomicU64::new(0),
            orders: TtlCache::new(ORDERS_CAPACITY, cfg.fallback_pool_refresh),
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
    }

    /// Any post may have changed.
    pub fn all_posts_changed(&self) {
        self.posts.clear();
    }

    /// A run or recommendation rows landed: every remembered "no recommendations" is void.
    pub fn recommendations_changed(&self) {
        self.recommendations_generation
            .fetch_add(1, Ordering::SeqCst);
        self.without_recommendations.clear();
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

    /// One feed page for `user`: the JSON body of a [`crate::response::FeedResponse`].
    pub async fn build(
        &self,
        stores: &Stores<'_>,
        user: Uuid,
        req: &FeedRequest,
    ) -> ApiResult<Vec<u8>> {
        let now = now_ms();
        let user_key = user.to_string();
        // The seen entries the cached path needs start when its entry was built: the entry read
        // last time tells when that was (a newer entry needs fewer; an older one reads again).
        let seen_since = self.decoded.get(&user).map(|f| f.generated_at * 1000);
        let read = stores
            .redis
            .read_feed(
                &user_key,
                (req.offset == 0).then_some(now),
                seen_since,
                stores.metrics,
            )
            .await;
        let as_of = match (&read, req.offset) {
            (Some(r), o) if o > 0 => r.session_start_ms.unwrap_or(now),
            _ => now,
        };
        let input = SourceInput {
            feeds: self,
            stores,
            user,
            user_key,
            req,
            now,
            as_of,
            read,
            seen_since,
        };
        let last = SOURCES.len() - 1;
        for (i, source) in SOURCES.iter().enumerate() {
            let Some(candidates) = (source.find)(&input, source.name).await? else {
                continue;
            };
            let order = self.order(&candidates, req.limit);
            if order.is_empty() && i < last {
                continue;
            }
            stores.metrics.feed_served(candidates.source);
            return self.page(stores.pg, &candidates, &order, req).await;
        }
        Err(ApiError::Internal("no feed source answered".into()))
    }

    /// The candidates' positions as the page serves them: shuffled (when seeded), without the
    /// excluded posts, re-ranked for author diversity; memoized when the source gives a key.
    fn order(&self, c: &Candidates, limit: usize) -> Arc<Vec<u32>> {
        let cap = self.author_diversity_cap;
        let key = c.memo_key.map(|memo_key| {
            let mut h = std::hash::DefaultHasher::new();
            (memo_key, c.shuffle_seed, limit, cap).hash(&mut h);
            c.excluded.digest(&mut h);
            h.finish()
        });
        if let Some(hit) = key.and_then(|k| self.orders.get(&k)) {
            return hit;
        }
        let items = &c.items;
        let mut positions: Vec<u32> = (0..items.len() as u32).collect();
        if let Some(seed) = c.shuffle_seed {
            feedrank_core::shuffle::shuffle(&mut positions, seed);
        }
        if !c.excluded.posts.is_empty() {
            positions.retain(|&i| !c.excluded.contains(&items[i as usize].post));
        }
        let order = Arc::new(diversify(
            positions,
            |&i| items[i as usize].author,
            limit,
            cap,
        ));
        if let Some(k) = key {
            self.orders.insert(k, order.clone());
        }
        order
    }

    /// The page at `req.offset` of `order`, as JSON.
    async fn page(
        &self,
        pg: &Pool,
        c: &Candidates,
        order: &[u32],
        req: &FeedRequest,
    ) -> ApiResult<Vec<u8>> {
        let start = req.offset.min(order.len());
        let page = &order[start..(start + req.limit).min(order.len())];
        let mut missing = Vec::with_capacity(page.len());
        for &i in page {
            let post = c.items[i as usize].post;
            // (a look-up hashes the id even in an empty map)
            if c.bodies.is_empty() || !c.bodies.contains_key(&post) {
                missing.push(post);
            }
        }
        let loaded = self.hydrate(pg, &missing).await?;
        let mut out = Vec::with_capacity(512 + req.limit * 600);
        out.extend_from_slice(b"{\"posts\":[");
        let mut first = true;
        for &i in page {
            let item = &c.items[i as usize];
            // A post deleted since the list was made has no body: left out.
            let Some(body) = c.bodies.get(&item.post).or_else(|| loaded.get(&item.post)) else {
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
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"metadata\":");
        let metadata = FeedMetadata {
            total: order.len(),
            offset: req.offset,
            limit: req.limit,
            source: c.source.to_string(),
            seed: c.shuffle_seed,
        };
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
                    generated_at: feed.generated_at,
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
        source: &'static str,
        excluded: Exclusions,
    ) -> ApiResult<Candidates> {
        let ids: Vec<Uuid> = items.iter().map(|i| i.post).collect();
        let bodies = self.hydrate(pg, &ids).await?;
        let items = items
            .iter()
            .filter_map(|i| {
                Some(Candidate {
                    post: i.post,
                    author: bodies.get(&i.post)?.author,
                    source,
                    score: Some(i.score),
                    reason: Some(i.reason),
                })
            })
            .collect();
        Ok(Candidates {
            source,
            items,
            excluded,
            shuffle_seed: None,
            memo_key: None,
            bodies,
        })
    }

    /// The current snapshot of the recent-posts pool, reloaded when older than the refresh
    /// interval (one reload at a time; the others keep using the old snapshot meanwhile, if
    /// there is one).
    async fn fallback_pool(&self, pg: &Pool, source: &'static str) -> ApiResult<Arc<PoolSnapshot>> {
        let fresh = |s: &Option<Arc<PoolSnapshot>>| {
            s.as_ref()
                .filter(|s| s.loaded_at.elapsed() < self.fallback_pool_refresh)
                .cloned()
        };
        let current = self.pool.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(s) = fresh(&current) {
            return Ok(s);
        }
        let guard = match (&current, self.pool_reload.try_lock()) {
            (_, Ok(g)) => g,
            (Some(old), Err(_)) => return Ok(old.clone()),
            (None, Err(_)) => self.pool_reload.lock().await,
        };
        let again = self.pool.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(s) = fresh(&again) {
            return Ok(s);
        }
        let posts = db::recent_posts(pg, self.fallback_pool_size).await?;
        let snap = Arc::new(PoolSnapshot {
            loaded_at: Instant::now(),
            generation: self.pool_generation.fetch_add(1, Ordering::Relaxed),
            candidates: posts
                .into_iter()
                .map(|(post, author)| Candidate {
                    post,
                    author,
                    source,
                    score: None,
                    reason: None,
                })
                .collect(),
        });
        *self.pool.write().unwrap_or_else(|p| p.into_inner()) = Some(snap.clone());
        drop(guard);
        Ok(snap)
    }
}

// --- the sources, in the order of SOURCES ---------------------------------------------------

/// The pipeline's Redis entry for the user.
async fn from_cache(input: &SourceInput<'_>, name: &'static str) -> ApiResult<Option<Candidates>> {
    let (feeds, stores) = (input.feeds, input.stores);
    if input.req.refresh || input.req.fallback_only {
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
    Ok(Some(
        feeds
            .recommended(stores.pg, &entry.items, name, excluded)
            .await?,
    ))
}

/// The user's current recommendations in PostgreSQL, written back to Redis (not asked again for
/// a user it had none for, until recommendations change).
async fn from_database(
    input: &SourceInput<'_>,
    name: &'static str,
) -> ApiResult<Option<Candidates>> {
    let (feeds, stores, user) = (input.feeds, input.stores, input.user);
    if input.req.fallback_only {
        return Ok(None);
    }
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
        })
        .collect();
    let entry = CachedFeed::new(current.run_id, current.generated_at, current.items);
    stores
        .redis
        .write_feed(&input.user_key, &entry, ttl, &mirrored, stores.metrics)
        .await;
    let excluded = Exclusions::from_marks(&marks, built_ms, input.as_of);
    let items = decoded_items(&entry.items);
    Ok(Some(
        feeds.recommended(stores.pg, &items, name, excluded).await?,
    ))
}

/// The random fallback: a seeded shuffle of the most recent posts (their order is memoized by
/// snapshot, seed, page size and exclusions, so paging and reloads do not shuffle and re-rank
/// the whole pool again).
async fn from_fallback(
    input: &SourceInput<'_>,
    name: &'static str,
) -> ApiResult<Option<Candidates>> {
    let (feeds, stores) = (input.feeds, input.stores);
    let seed = input
        .req
        .seed
        .unwrap_or_else(|| default_seed(input.user, input.now));
    let pool = feeds.fallback_pool(stores.pg, name).await?;
    let since = input.as_of - SEEN_RETENTION_MS;
    let marks = db::interaction_marks(stores.pg, input.user, since).await?;
    Ok(Some(Candidates {
        source: name,
        items: pool.candidates.clone(),
        excluded: Exclusions::from_marks(&marks, since, input.as_of),
        shuffle_seed: Some(seed),
        memo_key: Some(pool.generation),
        bodies: IdMap::default(),
    }))
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
    fn the_sources_are_asked_in_the_documented_order() {
        let names: Vec<&str> = SOURCES.iter().map(|s| s.name).collect();
        assert_eq!(names, ["cache", "db", "fallback"]);
    }
}
