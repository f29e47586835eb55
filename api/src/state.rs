//! The state every handler shares: configuration, the database pool, Redis, the authenticator,
//! the known users, the feed (with its caches), the running experiments, the metrics and the
//! served log's queue.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::experiments::Experiments;
use crate::feed::{Feeds, Stores, PAGE_ORIGINS};
use crate::memo::TtlCache;
use crate::metrics::{Metrics, PoolGauge};
use crate::redis_store::RedisStore;
use crate::served_log::ServedLog;

/// How long a user id, once found in `users`, is trusted without asking the database again.
const KNOWN_USER_TTL: Duration = Duration::from_secs(300);
const KNOWN_USER_CAPACITY: usize = 100_000;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub cfg: Config,
    pub pg: deadpool_postgres::Pool,
    pub redis: RedisStore,
    pub auth: Authenticator,
    /// User ids known to exist.
    pub users: TtlCache<Uuid, ()>,
    pub feeds: Feeds,
    /// The running experiments, and each user's arms in them.
    pub experiments: Experiments,
    pub metrics: Metrics,
    /// The served log's queue (its writer is started by `ServedLog::start_writer`).
    pub served_log: ServedLog,
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
        let metrics = Metrics::new(PAGE_ORIGINS);
        Ok(AppState(Arc::new(Inner {
            users: TtlCache::new(KNOWN_USER_CAPACITY, KNOWN_USER_TTL),
            feeds: Feeds::new(&cfg),
            experiments: Experiments::default(),
            served_log: ServedLog::new(&cfg.served_log, metrics.served_log.clone()),
            metrics,
            cfg,
            pg,
            redis,
            auth,
        })))
    }

    /// The stores a feed page is read from.
    pub fn stores(&self) -> Stores<'_> {
        Stores {
            pg: &self.pg,
            redis: &self.redis,
            metrics: &self.metrics,
        }
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
