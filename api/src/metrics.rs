//! A small Prometheus registry, written out by hand to keep the dependency tree lean: request
//! counts and latency histograms per route and status, the source of each feed, cache hits and
//! misses, Redis failures, tracked events, and (read at scrape time) the database pool's usage.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    feed_source: [AtomicU64; 3],
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    redis_errors: AtomicU64,
    events_stored: AtomicU64,
    events_duplicate: AtomicU64,
}

/// Where a feed page came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Db,
    Fallback,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Db => "db",
            Source::Fallback => "fallback",
        }
    }
}

/// The database pool's state at scrape time.
pub struct PoolGauge {
    pub max_size: usize,
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let h = m
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        h.count += 1;
        h.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
    }

    pub fn feed_served(&self, source: Source) {
        let i = match source {
            Source::Cache => 0,
            Source::Db => 1,
            Source::Fallback => 2,
        };
        self.feed_source[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn cache_lookup(&self, hit: bool) {
        if hit {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.cache_misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn redis_error(&self) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn event(&self, created: bool) {
        if created {
            self.events_stored.fetch_add(1, Ordering::Relaxed);
        } else {
            self.events_duplicate.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, pool: &PoolGauge) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP feedrank_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE feedrank_http_requests_total counter\n");
        let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((method, route, status), h) in m.iter() {
            let _ = writeln!(
                out,
                "feedrank_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                h.count
            );
        }
        out.push_str(
            "# HELP feedrank_http_request_duration_seconds Request latency by route and status.\n",
        );
        out.push_str("# TYPE feedrank_http_request_duration_seconds histogram\n");
        for ((method, route, status), h) in m.iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "feedrank_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "feedrank_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "feedrank_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "feedrank_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        drop(m);
        out.push_str("# HELP feedrank_feed_responses_total Feed pages by source.\n");
        out.push_str("# TYPE feedrank_feed_responses_total counter\n");
        for (i, s) in [Source::Cache, Source::Db, Source::Fallback]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "feedrank_feed_responses_total{{source=\"{}\"}} {}",
                s.as_str(),
                self.feed_source[i].load(Ordering::Relaxed)
            );
        }
        let hits = self.cache_hits.load(Ordering::Relaxed);
        let misses = self.cache_misses.load(Ordering::Relaxed);
        let counters = [
            (
                "feedrank_cache_hits_total",
                "Feed requests answered from the Redis recommendations entry.",
                hits,
            ),
            (
                "feedrank_cache_misses_total",
                "Feed requests that found no usable Redis entry.",
                misses,
            ),
            (
                "feedrank_redis_errors_total",
                "Failed Redis round trips.",
                self.redis_errors.load(Ordering::Relaxed),
            ),
            (
                "feedrank_events_stored_total",
                "Interactions stored.",
                self.events_stored.load(Ordering::Relaxed),
            ),
            (
                "feedrank_events_duplicate_total",
                "Interactions whose event id was already stored.",
                self.events_duplicate.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let gauges = [
            (
                "feedrank_cache_hit_ratio",
                "Cache hits / (hits + misses) since start.",
                ratio,
            ),
            (
                "feedrank_db_pool_max_size",
                "Largest size of the database pool.",
                pool.max_size as f64,
            ),
            (
                "feedrank_db_pool_size",
                "Open database connections.",
                pool.size as f64,
            ),
            (
                "feedrank_db_pool_available",
                "Idle database connections.",
                pool.available as f64,
            ),
            (
                "feedrank_db_pool_in_use",
                "Database connections in use.",
                pool.size.saturating_sub(pool.available) as f64,
            ),
            (
                "feedrank_db_pool_waiting",
                "Requests waiting for a database connection.",
                pool.waiting as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe("GET", "/api/feeds", 200, Duration::from_millis(3));
        m.observe("GET", "/api/feeds", 200, Duration::from_millis(30));
        let text = m.render(&PoolGauge {
            max_size: 4,
            size: 1,
            available: 1,
            waiting: 0,
        });
        let l = r#"method="GET",route="/api/feeds",status="200""#;
        assert!(text.contains(&format!("feedrank_http_requests_total{{{l}}} 2")));
        assert!(text.contains(&format!(
            "feedrank_http_request_duration_seconds_bucket{{{l},le=\"0.005\"}} 1"
        )));
        assert!(text.contains(&format!(
            "feedrank_http_request_duration_seconds_bucket{{{l},le=\"0.05\"}} 2"
        )));
        assert!(text.contains("feedrank_db_pool_in_use 0"));
    }
}
