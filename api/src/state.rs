//! The state every handler shares: configuration, the database pool, Redis, the authenticator,
//! the in-process caches and the metrics registry.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::memo::TtlCache;
use crate::metrics::{Metrics, PoolGauge};
use crate::redis_store::RedisStore;

/// How long a user id, once found in `users`, is trusted without asking the database again.
const KNOWN_USER_TTL: Duration = Duration::from_secs(300);
const KNOWN_USER_CAPACITY: usize = 100_000;
/// Decoded recommendation entries kept (about 5 KB each for 200 items).
const DECODED_FEED_CAPACITY: usize = 10_000;
const DECODED_FEED_TTL: Duration = Duration::from_secs(300);
/// Users remembered to have no recommendations in PostgreSQL (see `feed::known_without_recommendations`).
const NO_RECOMMENDATIONS_CAPACITY: usize = 200_000;
const NO_RECOMMENDATIONS_TTL: Duration = Duration::from_secs(600);
/// Memoized fallback orders kept (40 KB each at the default pool size of 10,000: positions in
/// the pool).
const FALLBACK_ORDERS_CAPACITY: usize = 2048;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub cfg: Config,
    pub pg: deadpool_postgres::Pool,
    pub redis: RedisStore,
    pub auth: Authenticator,
    /// Post bodies with their authors, by post id.
    pub posts: TtlCache<Uuid, Arc<crate::feed::CachedPost>>,
    /// Decoded Redis recommendation entries, by user (see `feed::decode_entry`).
    pub decoded_feeds: TtlCache<Uuid, Arc<crate::feed::DecodedFeed>>,
    /// User ids known to exist.
    pub users: TtlCache<Uuid, ()>,
    /// The random fallback's current candidate pool.
    pub fallback_pool: std::sync::RwLock<Option<Arc<PoolSnapshot>>>,
    pub fallback_refresh: tokio::sync::Mutex<()>,
    /// Fallback orders (shuffled, filtered, re-ranked positions in the pool snapshot), by a
    /// digest of what they depend on; each at most `FALLBACK_POOL_SIZE` entries.
    pub fallback_orders: TtlCache<u64, Arc<Vec<u32>>>,
    /// Users PostgreSQL had no current recommendations for, with the value of
    /// `recommendations_generation` when it was asked: an entry holds only while that is still
    /// the current generation (migration V5's notifications bump it; `invalidation` listens).
    pub no_recommendations: TtlCache<Uuid, u64>,
    pub recommendations_generation: AtomicU64,
    /// True while the listener is connected: otherwise a change could go unnoticed, so nothing
    /// is remembered.
    pub recommendations_listening: AtomicBool,
    pub metrics: Metrics,
}

/// The most recent posts at one moment, `(post id, author id)`, newest first, with what the
/// fallback needs to order them cheaply: each post's author as a small dense number, and each
/// post's position (to turn a user's excluded post ids into positions).
pub struct PoolSnapshot {
    pub loaded_at: Instant,
    /// Distinguishes snapshots (part of the key of a memoized fallback order).
    pub generation: u64,
    pub posts: Vec<(Uuid, Uuid)>,
    pub author_index: Vec<u32>,
    pub position: crate::memo::IdMap<Uuid, u32>,
}

impl PoolSnapshot {
    pub fn new(generation: u64, posts: Vec<(Uuid, Uuid)>) -> PoolSnapshot {
        let mut authors: crate::memo::IdMap<Uuid, u32> = Default::default();
        let author_index = posts
            .iter()
            .map(|(_, a)| {
                let next = authors.len() as u32;
                *authors.entry(*a).or_insert(next)
            })
            .collect();
        let position = posts
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (*p, i as u32))
            .collect();
        PoolSnapshot {
            loaded_at: Instant::now(),
            generation,
            posts,
            author_index,
            position,
        }
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state without connecting to anything: the API starts while PostgreSQL or Redis
    /// is down, answers 503 (or serves without Redis) and recovers when they come back.
    pub fn new(cfg: Config) -> Result<AppState, String> {
        let pg = crate::db::pool(&cfg.database_url, cfg.pg_pool_size, cfg.pg_pool_timeout)?;
        let redis = RedisStore::new(&cfg.redis_url, &cfg.redis_key_prefix, cfg.redis_timeout)
            .map_err(|e| format!("REDIS_URL: {e}"))?;
        let auth = Authenticator::new(&cfg.auth_secret, cfg.nextauth_secret.as_deref());
        Ok(AppState(Arc::new(Inner {
            posts: TtlCache::new(cfg.post_cache_capacity, cfg.post_cache_ttl),
            users: TtlCache::new(KNOWN_USER_CAPACITY, KNOWN_USER_TTL),
            decoded_feeds: TtlCache::new(DECODED_FEED_CAPACITY, DECODED_FEED_TTL),
            fallback_pool: std::sync::RwLock::new(None),
            fallback_refresh: tokio::sync::Mutex::new(()),
            fallback_orders: TtlCache::new(FALLBACK_ORDERS_CAPACITY, cfg.fallback_pool_refresh),
            no_recommendations: TtlCache::new(NO_RECOMMENDATIONS_CAPACITY, NO_RECOMMENDATIONS_TTL),
            recommendations_generation: AtomicU64::new(0),
            recommendations_listening: AtomicBool::new(false),
            metrics: Metrics::default(),
            cfg,
            pg,
            redis,
            auth,
        })))
    }

    pub fn pool_gauge(&self) -> PoolGauge {
        let s = self.pg.status();
        PoolGauge {
            max_size: s.max_size,
            size: s.size,
            available: s.available,
            waiting: s.waiting,
        }
    }
}
