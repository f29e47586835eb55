//! The API's configuration: one struct, read from the environment once at start-up.
//!
//! Every variable has a documented default except the signing secret; a variable that is set but
//! does not parse is an error naming it (never silently replaced by the default).

use std::net::SocketAddr;
use std::time::Duration;

/// Development default of `DATABASE_URL` (the project's local PostgreSQL).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/feedrank";
/// Development default of `REDIS_URL`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `REDIS_URL`: one `redis://` URL, or the nodes of a Redis Cluster separated by commas.
    pub redis_url: String,
    /// `REDIS_KEY_PREFIX` (default empty): prepended to every Redis key (tests set one).
    pub redis_key_prefix: String,
    /// `AUTH_SECRET` (required, >= 32 bytes): HS256 key of bearer tokens.
    pub auth_secret: String,
    /// `NEXTAUTH_SECRET` (optional): the frontend's NextAuth secret; without it session cookies
    /// are not accepted.
    pub nextauth_secret: Option<String>,
    /// `BIND_ADDR` (default 127.0.0.1:8080).
    pub bind_addr: SocketAddr,
    /// `POST_CACHE_TTL_SECS` (default 60): how long a post body is kept in process; also how long
    /// an edit can take to show on the cached path when the change notification is missed.
    pub post_cache_ttl: Duration,
    /// `POST_CACHE_CAPACITY` (default 200000): post bodies kept in process at most.
    pub post_cache_capacity: usize,
    /// `PG_POOL_SIZE` (default 16).
    pub pg_pool_size: usize,
    /// `PG_POOL_TIMEOUT_MS` (default 2000): longest wait for a connection (or to open one)
    /// before answering 503.
    pub pg_pool_timeout: Duration,
    /// `REDIS_TIMEOUT_MS` (default 250): connect and response timeout of Redis commands.
    pub redis_timeout: Duration,
    /// `FALLBACK_POOL_SIZE` (default 10000): the random fallback shuffles this many recent posts.
    pub fallback_pool_size: usize,
    /// `FALLBACK_POOL_REFRESH_SECS` (default 300): how long one snapshot of that pool is used.
    /// Pages with the same seed are stable while the snapshot is.
    pub fallback_pool_refresh: Duration,
    /// `FEED_MAX_OFFSET` (default 10000): largest accepted `offset`.
    pub max_offset: u32,
    /// `AUTHOR_DIVERSITY_CAP` (default `feedrank_core::diversify::AUTHOR_CAP`, 3): most posts of
    /// one author in any page.
    pub author_diversity_cap: usize,
    /// `REQUEST_TIMEOUT_MS` (default 10000): a request running longer gets 503.
    pub request_timeout: Duration,
    /// `BODY_LIMIT_BYTES` (default 262144): largest accepted request body.
    pub body_limit: usize,
    /// `FEEDRANK_DEMO` (default off): serve `/demo/users` with development tokens.
    pub demo: bool,
    /// `FEEDRANK_ADMIN_TOKEN` (default unset): the operators' token of `GET /api/feeds/explain`
    /// (header `X-Admin-Token`); unset or empty, the route answers 404.
    pub admin_token: Option<String>,
    /// The served log's settings (`FEEDRANK_SERVED_LOG`, `SERVED_LOG_*`).
    pub served_log: ServedLogConfig,
}

/// The served log (served_log.rs): every feed page's posts, written in the background.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedLogConfig {
    /// `FEEDRANK_SERVED_LOG` (default 1): 0/false turns the log off (nothing queued or written).
    pub enabled: bool,
    /// `SERVED_LOG_QUEUE_PAGES` (default 8192): feed pages waiting to be written at most; a
    /// page served while the queue is full is dropped (and counted), never waited for.
    pub queue_pages: usize,
    /// `SERVED_LOG_BATCH_ROWS` (default 50000): a batch is written once it holds this many
    /// served posts...
    pub batch_rows: usize,
    /// `SERVED_LOG_FLUSH_MS` (default 1000): ...or once its oldest page waited this long.
    pub flush_interval: Duration,
    /// `SERVED_LOG_RETENTION_DAYS` (default 30): daily partitions older than this many days
    /// before today (UTC) are dropped.
    pub retention_days: u32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let auth_secret = get("AUTH_SECRET").ok_or_else(|| ConfigError {
            var: "AUTH_SECRET",
            message: "required (the HS256 key of bearer tokens, at least 32 bytes)".into(),
        })?;
        if auth_secret.len() < 32 {
            return Err(ConfigError {
                var: "AUTH_SECRET",
                message: format!("must be at least 32 bytes, got {}", auth_secret.len()),
            });
        }
        let nextauth_secret = get("NEXTAUTH_SECRET").filter(|s| !s.is_empty());
        let bind: String = get("BIND_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into());
        let bind_addr = bind.parse().map_err(|e| ConfigError {
            var: "BIND_ADDR",
            message: format!("{bind:?} is not host:port ({e})"),
        })?;
        let num = |var: &'static str, default: u64, min: u64| -> Result<u64, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(s) => match s.trim().parse::<u64>() {
                    Ok(v) if v >= min => Ok(v),
                    Ok(v) => Err(ConfigError {
                        var,
                        message: format!("must be >= {min}, got {v}"),
                    }),
                    Err(_) => Err(ConfigError {
                        var,
                        message: format!("{s:?} is not a non-negative integer"),
                    }),
                },
            }
        };
        let switch = |var: &'static str, default: bool| -> Result<bool, ConfigError> {
            match get(var).as_deref() {
                None | Some("") => Ok(default),
                Some("0") | Some("false") => Ok(false),
                Some("1") | Some("true") => Ok(true),
                Some(other) => Err(ConfigError {
                    var,
                    message: format!("{other:?} is not 0/1/true/false"),
                }),
            }
        };
        let demo = switch("FEEDRANK_DEMO", false)?;
        let served_log = ServedLogConfig {
            enabled: switch("FEEDRANK_SERVED_LOG", true)?,
            queue_pages: num("SERVED_LOG_QUEUE_PAGES", 8192, 1)? as usize,
            batch_rows: num("SERVED_LOG_BATCH_ROWS", 50_000, 1)? as usize,
            flush_interval: Duration::from_millis(num("SERVED_LOG_FLUSH_MS", 1000, 1)?),
            retention_days: num("SERVED_LOG_RETENTION_DAYS", 30, 1)?.min(u32::MAX as u64) as u32,
        };
        Ok(Config {
            database_url: get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            redis_url: get("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.into()),
            redis_key_prefix: get("REDIS_KEY_PREFIX").unwrap_or_default(),
            auth_secret,
            nextauth_secret,
            bind_addr,
            post_cache_ttl: Duration::from_secs(num("POST_CACHE_TTL_SECS", 60, 1)?),
            post_cache_capacity: num("POST_CACHE_CAPACITY", 200_000, 16)? as usize,
            pg_pool_size: num("PG_POOL_SIZE", 16, 1)? as usize,
            pg_pool_timeout: Duration::from_millis(num("PG_POOL_TIMEOUT_MS", 2000, 1)?),
            redis_timeout: Duration::from_millis(num("REDIS_TIMEOUT_MS", 250, 1)?),
            fallback_pool_size: num("FALLBACK_POOL_SIZE", 10_000, 1)? as usize,
            fallback_pool_refresh: Duration::from_secs(num("FALLBACK_POOL_REFRESH_SECS", 300, 1)?),
            max_offset: num("FEED_MAX_OFFSET", 10_000, 0)?.min(u32::MAX as u64) as u32,
            author_diversity_cap: num(
                "AUTHOR_DIVERSITY_CAP",
                feedrank_core::diversify::AUTHOR_CAP as u64,
                1,
            )? as usize,
            request_timeout: Duration::from_millis(num("REQUEST_TIMEOUT_MS", 10_000, 1)?),
            body_limit: num("BODY_LIMIT_BYTES", 256 * 1024, 1024)? as usize,
            demo,
            admin_token: get("FEEDRANK_ADMIN_TOKEN").filter(|t| !t.is_empty()),
            served_log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    const SECRET: (&str, &str) = ("AUTH_SECRET", "0123456789abcdef0123456789abcdef");

    #[test]
    fn defaults_apply_when_unset() {
        let c = cfg(&[SECRET]).unwrap();
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.max_offset, 10_000);
        assert_eq!(c.redis_key_prefix, "");
        assert!(c.nextauth_secret.is_none());
        assert!(
            c.admin_token.is_none(),
            "the operators' route is closed by default"
        );
        let c = cfg(&[SECRET, ("FEEDRANK_ADMIN_TOKEN", "")]).unwrap();
        assert!(c.admin_token.is_none(), "an empty token opens nothing");
        assert!(c.served_log.enabled, "the served log is on by default");
        assert_eq!(c.served_log.retention_days, 30);
        let c = cfg(&[SECRET, ("FEEDRANK_SERVED_LOG", "0")]).unwrap();
        assert!(!c.served_log.enabled);
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(cfg(&[]).unwrap_err().var, "AUTH_SECRET");
        assert_eq!(
            cfg(&[("AUTH_SECRET", "short")]).unwrap_err().var,
            "AUTH_SECRET"
        );
        assert_eq!(
            cfg(&[SECRET, ("PG_POOL_SIZE", "many")]).unwrap_err().var,
            "PG_POOL_SIZE"
        );
        assert_eq!(
            cfg(&[SECRET, ("PG_POOL_SIZE", "0")]).unwrap_err().var,
            "PG_POOL_SIZE"
        );
        assert_eq!(
            cfg(&[SECRET, ("BIND_ADDR", "nowhere")]).unwrap_err().var,
            "BIND_ADDR"
        );
        assert_eq!(
            cfg(&[SECRET, ("FEEDRANK_SERVED_LOG", "off")])
                .unwrap_err()
                .var,
            "FEEDRANK_SERVED_LOG"
        );
        assert_eq!(
            cfg(&[SECRET, ("SERVED_LOG_QUEUE_PAGES", "0")])
                .unwrap_err()
                .var,
            "SERVED_LOG_QUEUE_PAGES"
        );
    }
}
