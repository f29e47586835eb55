//! The API's Redis: the recommendations entry (format owned by `feedrank_core::cache`), and three
//! small per-user keys the API keeps itself:
//!
//! - `{prefix}feed_session:{<user>}`: when the user's current page sequence began (unix ms), set
//!   by a request at offset 0 and read by the next pages, so that posts seen while paging do not
//!   shift later pages;
//! - `{prefix}seen:{<user>}`: sorted set, post id -> unix ms of the user's latest interaction with
//!   it, the last few days (the cached path's "seen after the recommendations were built");
//! - `{prefix}hidden:{<user>}`: set of post ids the user hid;
//! - `{prefix}liked:{<user>}`: sorted set, post id -> unix ms of the user's latest like or share,
//!   the last few days (the because_you_liked source's input);
//! - `{prefix}trending:{feedrank_trending}:{bucket_minutes}:{bucket}`: sorted set, post id ->
//!   weighted interactions counted in one time bucket (`trending.rs`), expiring after the
//!   trending window. They share one hash tag, so that their union (and its scratch key) is
//!   computed on one node of a cluster.
//!
//! The braces around the user id are a Redis Cluster hash tag (`feedrank_core::cache::user_key`):
//! a user's keys share a slot, so each pipeline below, which names one user's keys only, goes to
//! one node. `REDIS_URL` naming several nodes, comma-separated, means a cluster.
//!
//! Redis is an accelerator, never a dependency: every call has a timeout, a failure opens a short
//! circuit (no calls for a second, one warning), and callers treat failures as cache misses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use feedrank_core::cache::{self, CachedFeed};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::clock::now_ms;
use crate::metrics::Metrics;

/// How long the per-user seen set keeps interactions.
pub const SEEN_RETENTION_MS: i64 = 3 * 24 * 3600 * 1000;
/// Most entries kept in one user's seen set.
pub const SEEN_MAX_ENTRIES: isize = 5000;
/// TTL of the hidden set (refreshed at each hide and each write-back).
pub const HIDDEN_TTL_SECS: u64 = 30 * 24 * 3600;
/// TTL of a page-sequence marker.
pub const FEED_SESSION_TTL_SECS: u64 = 3600;
/// How long Redis is skipped after a failure.
const CIRCUIT_OPEN_MS: u64 = 1000;

/// One Redis server, or a Redis Cluster.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipe, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipe, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Up to this many members, [`RedisStore::scores_in_union`] reads each key for them instead of
/// the union of the keys (the fresh pool's newcomers: one ZMSCORE of a few members per key costs
/// Redis less than a union of every member).
pub const FEW_MEMBERS: usize = 64;

pub struct RedisStore {
    manager: Connection,
    prefix: String,
    down_until_ms: AtomicU64,
    /// Set by the first failure of an outage, cleared by the first success after it (one log
    /// line each way, however long the outage).
    outage: AtomicBool,
}

/// Adds `entries` (post id -> ms, a later time wins) to the sorted set `key`, dropping what is
/// older than `cutoff` and, with `keep`, all but the newest `keep` entries.
fn add_timed(
    pipe: &mut redis::Pipeline,
    key: &str,
    entries: &[&Mirrored],
    cutoff: i64,
    keep: Option<isize>,
) {
    if entries.is_empty() {
        return;
    }
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(key).arg("GT");
    for m in entries {
        zadd.arg(m.at_ms).arg(&m.post_id);
    }
    pipe.add_command(zadd).ignore();
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(key)
        .arg("-inf")
        .arg(cutoff)
        .ignore();
    if let Some(keep) = keep {
        pipe.cmd("ZREMRANGEBYRANK")
            .arg(key)
            .arg(0)
            .arg(-(keep + 1))
            .ignore();
    }
    pipe.cmd("PEXPIRE").arg(key).arg(SEEN_RETENTION_MS).ignore();
}

/// What one feed request reads from Redis, in one round trip.
pub struct FeedRead {
    /// The user's recommendations entry, still encoded (decoding is memoized by the caller).
    pub recommendations: Option<Vec<u8>>,
    /// When the user's page sequence began (ms), if this request continues one.
    pub session_start_ms: Option<i64>,
    /// Post id -> ms of the latest interaction, the last few days.
    pub seen: Vec<(String, i64)>,
    pub hidden: Vec<String>,
    /// Post id -> ms of the latest like or share, from the same start as `seen`.
    pub liked: Vec<(String, i64)>,
}

/// An interaction to mirror into the seen/hidden keys after it is stored in PostgreSQL.
pub struct Mirrored {
    pub post_id: String,
    pub at_ms: i64,
    pub hide: bool,
    /// A like or a share.
    pub like: bool,
}

impl RedisStore {
    /// Builds the client without connecting: the first command connects, so the API starts (and
    /// serves from PostgreSQL) while Redis is down. `url`: one `redis://` URL, or several
    /// separated by commas (nodes of a Redis Cluster, from which it learns the others).
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> redis::RedisResult<RedisStore> {
        let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
        let manager = if nodes.len() > 1 {
            let client = ClusterClient::builder(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()?;
            Connection::Cluster(client.get_pending_async_connection_with_config(Default::default()))
        } else {
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(100));
            Connection::Single(ConnectionManager::new_lazy_with_config(client, config)?)
        };
        Ok(RedisStore {
            manager,
            prefix: prefix.to_string(),
            down_until_ms: AtomicU64::new(0),
            outage: AtomicBool::new(false),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn recommendations_key(&self, user: &str) -> String {
        cache::recommendations_key(&self.prefix, user)
    }
    fn session_key(&self, user: &str) -> String {
        cache::user_key(&self.prefix, "feed_session", user)
    }
    fn seen_key(&self, user: &str) -> String {
        cache::user_key(&self.prefix, "seen", user)
    }
    fn hidden_key(&self, user: &str) -> String {
        cache::user_key(&self.prefix, "hidden", user)
    }
    fn liked_key(&self, user: &str) -> String {
        cache::user_key(&self.prefix, "liked", user)
    }

    /// False while the circuit is open after a failure.
    pub fn available(&self) -> bool {
        (now_ms() as u64) >= self.down_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, what: &str, e: &redis::RedisError, metrics: &Metrics) {
        metrics.redis_error();
        self.down_until_ms
            .store(now_ms() as u64 + CIRCUIT_OPEN_MS, Ordering::Relaxed);
        if !self.outage.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "redis {what} failed; serving from PostgreSQL for now");
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        pipe: &redis::Pipeline,
        metrics: &Metrics,
    ) -> Option<T> {
        if !self.available() {
            return None;
        }
        let mut conn = self.manager.clone();
        match pipe.query_async::<T>(&mut conn).await {
            Ok(v) => {
                if self.outage.load(Ordering::Relaxed) && self.outage.swap(false, Ordering::Relaxed)
                {
                    tracing::info!("redis is reachable again");
                }
                Some(v)
            }
            Err(e) => {
                self.failed(what, &e, metrics);
                None
            }
        }
    }

    /// Reads everything a feed request needs; at offset 0 it also starts a new page sequence.
    /// `seen_since_ms`: only the seen entries at or after this time are read (the cached path
    /// filters only interactions after its entry was built; reading the whole set, up to
    /// `SEEN_MAX_ENTRIES`, made very active users' pages expensive); `None` reads them all.
    pub async fn read_feed(
        &self,
        user: &str,
        new_session_at_ms: Option<i64>,
        seen_since_ms: Option<i64>,
        metrics: &Metrics,
    ) -> Option<FeedRead> {
        let mut pipe = redis::pipe();
        pipe.get(self.recommendations_key(user));
        match new_session_at_ms {
            Some(ms) => {
                pipe.cmd("SET")
                    .arg(self.session_key(user))
                    .arg(ms)
                    .arg("EX")
                    .arg(FEED_SESSION_TTL_SECS)
                    .ignore();
                // Keep the reply shape the same: a GET of the value just set.
                pipe.get(self.session_key(user));
            }
            None => {
                pipe.get(self.session_key(user));
            }
        }
        self.add_seen_read(&mut pipe, self.seen_key(user), seen_since_ms);
        pipe.smembers(self.hidden_key(user));
        self.add_seen_read(&mut pipe, self.liked_key(user), seen_since_ms);
        type Reply = (
            Option<Vec<u8>>,
            Option<i64>,
            Vec<(String, f64)>,
            Vec<String>,
            Vec<(String, f64)>,
        );
        let (recs, session, seen, hidden, liked): Reply = self.run("read", &pipe, metrics).await?;
        Some(FeedRead {
            recommendations: recs,
            session_start_ms: session,
            seen: seen.into_iter().map(|(p, s)| (p, s as i64)).collect(),
            hidden,
            liked: liked.into_iter().map(|(p, s)| (p, s as i64)).collect(),
        })
    }

    /// Reads a per-user sorted set of post id -> ms (`seen`, `liked`) from `since_ms`.
    fn add_seen_read(&self, pipe: &mut redis::Pipeline, key: String, since_ms: Option<i64>) {
        match since_ms {
            Some(ms) => pipe
                .cmd("ZRANGE")
                .arg(&key)
                .arg(ms)
                .arg("+inf")
                .arg("BYSCORE")
                .arg("WITHSCORES"),
            None => pipe
                .cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        };
    }

    /// The user's seen entries at or after `since_ms` (post id, ms), on their own.
    pub async fn read_seen(
        &self,
        user: &str,
        since_ms: i64,
        metrics: &Metrics,
    ) -> Option<Vec<(String, i64)>> {
        let mut pipe = redis::pipe();
        self.add_seen_read(&mut pipe, self.seen_key(user), Some(since_ms));
        let (seen,): (Vec<(String, f64)>,) = self.run("read", &pipe, metrics).await?;
        Some(seen.into_iter().map(|(p, s)| (p, s as i64)).collect())
    }

    /// Writes a user's recommendations back (after a database read), with the interactions that
    /// the cached path will need to filter them.
    pub async fn write_feed(
        &self,
        user: &str,
        feed: &CachedFeed,
        ttl: Duration,
        interactions: &[Mirrored],
        metrics: &Metrics,
    ) {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.recommendations_key(user))
            .arg(cache::encode(feed))
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .ignore();
        self.add_mirrored(&mut pipe, user, interactions);
        let _: Option<()> = self.run("write", &pipe, metrics).await;
    }

    /// Mirrors stored interactions; a hide also drops the user's cached recommendations, so the
    /// next feed is rebuilt from the database without the hidden post.
    pub async fn record_interactions(
        &self,
        user: &str,
        interactions: &[Mirrored],
        metrics: &Metrics,
    ) {
        if interactions.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        self.add_mirrored(&mut pipe, user, interactions);
        if interactions.iter().any(|m| m.hide) {
            pipe.del(self.recommendations_key(user)).ignore();
        }
        let _: Option<()> = self.run("record", &pipe, metrics).await;
    }

    fn add_mirrored(&self, pipe: &mut redis::Pipeline, user: &str, interactions: &[Mirrored]) {
        let cutoff = now_ms() - SEEN_RETENTION_MS;
        let recent: Vec<&Mirrored> = interactions.iter().filter(|m| m.at_ms > cutoff).collect();
        add_timed(
            pipe,
            &self.seen_key(user),
            &recent,
            cutoff,
            Some(SEEN_MAX_ENTRIES),
        );
        let likes: Vec<&Mirrored> = recent.iter().copied().filter(|m| m.like).collect();
        add_timed(pipe, &self.liked_key(user), &likes, cutoff, None);
        let hides: Vec<&str> = interactions
            .iter()
            .filter(|m| m.hide)
            .map(|m| m.post_id.as_str())
            .collect();
        if !hides.is_empty() {
            let hidden = self.hidden_key(user);
            pipe.sadd(&hidden, hides).ignore();
            pipe.expire(&hidden, HIDDEN_TTL_SECS as i64).ignore();
        }
    }

    /// Adds weighted interactions to one trending bucket (`key`), which expires `ttl_secs`
    /// after its last write.
    pub async fn count_engagement(
        &self,
        key: &str,
        ttl_secs: u64,
        posts: &[(String, f64)],
        metrics: &Metrics,
    ) {
        if posts.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (post, weight) in posts {
            pipe.zincr(key, post, *weight).ignore();
        }
        pipe.expire(key, ttl_secs as i64).ignore();
        let _: Option<()> = self.run("count", &pipe, metrics).await;
    }

    /// The union of sorted sets `keys`, each weighted, computed in Redis into a scratch key that
    /// is dropped after the read. `read` adds the command(s) that read the scratch key.
    async fn read_union<T: redis::FromRedisValue>(
        &self,
        keys: &[(String, f64)],
        read: impl FnOnce(&mut redis::Pipeline, &str),
        metrics: &Metrics,
    ) -> Option<T> {
        // (the trending keys' hash tag: a cluster computes the union on their node)
        let scratch = format!(
            "{}trending:{{feedrank_trending}}:scratch:{}",
            self.prefix,
            uuid::Uuid::new_v4().simple()
        );
        let mut pipe = redis::pipe();
        let mut union = redis::cmd("ZUNIONSTORE");
        union.arg(&scratch).arg(keys.len());
        for (k, _) in keys {
            union.arg(k);
        }
        union.arg("WEIGHTS");
        for (_, w) in keys {
            union.arg(*w);
        }
        pipe.add_command(union).ignore();
        read(&mut pipe, &scratch);
        pipe.del(&scratch).ignore();
        self.run("union", &pipe, metrics).await
    }

    /// The `n` members with the largest weighted sum over `keys`, largest first.
    pub async fn top_of_union(
        &self,
        keys: &[(String, f64)],
        n: usize,
        metrics: &Metrics,
    ) -> Option<Vec<(String, f64)>> {
        if keys.is_empty() || n == 0 {
            return Some(Vec::new());
        }
        let (top,): (Vec<(String, f64)>,) = self
            .read_union(
                keys,
                |pipe, scratch| {
                    pipe.cmd("ZRANGE")
                        .arg(scratch)
                        .arg(0)
                        .arg(n - 1)
                        .arg("REV")
                        .arg("WITHSCORES");
                },
                metrics,
            )
            .await?;
        Some(top)
    }

    /// The weighted sum over `keys` of each of `members` (0 when absent). Up to
    /// [`FEW_MEMBERS`] members, each key is read for them (a ZMSCORE each, summed here);
    /// beyond, Redis computes the union of the keys first. A union holds Redis for every member
    /// of every key (16 ms for a trending window of 10,000 posts on the benchmark machine), during
    /// which every other client's command waits.
    pub async fn scores_in_union(
        &self,
        keys: &[(String, f64)],
        members: &[String],
        metrics: &Metrics,
    ) -> Option<Vec<f64>> {
        if keys.is_empty() || members.is_empty() {
            return Some(vec![0.0; members.len()]);
        }
        if members.len() <= FEW_MEMBERS {
            let mut pipe = redis::pipe();
            for (k, _) in keys {
                pipe.cmd("ZMSCORE").arg(k).arg(members);
            }
            let per_key: Vec<Vec<Option<f64>>> = self.run("scores", &pipe, metrics).await?;
            let mut sums = vec![0.0; members.len()];
            for ((_, w), scores) in keys.iter().zip(per_key) {
                for (sum, s) in sums.iter_mut().zip(scores) {
                    *sum += w * s.unwrap_or(0.0);
                }
            }
            return Some(sums);
        }
        let (scores,): (Vec<Option<f64>>,) = self
            .read_union(
                keys,
                |pipe, scratch| {
                    pipe.cmd("ZMSCORE").arg(scratch).arg(members);
                },
                metrics,
            )
            .await?;
        Some(scores.into_iter().map(|s| s.unwrap_or(0.0)).collect())
    }

    /// PING, bypassing the circuit (readiness must say what is true now).
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.manager.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
