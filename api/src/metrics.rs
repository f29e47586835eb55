//! The API's Prometheus metrics, kept by `prometheus-client` (one registry per [`Metrics`], so
//! that several states in one process, as in the tests, count apart): request counts and
//! latency histograms per route and status, the source of each feed page, cache hits and misses,
//! Redis failures, tracked events, and (read at scrape time) the database pool's usage.
//!
//! The names, labels and buckets are those of the hand-written registry this replaced, so
//! dashboards keep working.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: Cow<'static, str>,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    reason: &'static str,
}

/// Why served-log rows were dropped (the `reason` label of `feedrank_served_log_dropped_total`).
#[derive(Clone, Copy, Debug)]
pub enum ServedLogDrop {
    /// The queue was full (or the writer had stopped): the page was not queued.
    QueueFull,
    /// The batch could not be written after its retries (PostgreSQL down or refusing).
    WriteFailed,
}

impl ServedLogDrop {
    /// In declaration order: `why as usize` indexes arrays of them.
    const ALL: [ServedLogDrop; 2] = [ServedLogDrop::QueueFull, ServedLogDrop::WriteFailed];

    fn label(self) -> &'static str {
        match self {
            ServedLogDrop::QueueFull => "queue_full",
            ServedLogDrop::WriteFailed => "write_failed",
        }
    }
}

/// The served log's counters, shared (cheap clones of the same counters) by the request path
/// and the writer task.
#[derive(Clone)]
pub struct ServedLogMetrics {
    dropped: Family<DropLabel, Counter>,
    /// The family's series, held so that a drop on the request path is one atomic add.
    dropped_by_reason: [Counter; ServedLogDrop::ALL.len()],
    written: Counter,
    write_failures: Counter,
    flush_duration: Histogram,
}

impl ServedLogMetrics {
    fn new() -> ServedLogMetrics {
        let dropped = Family::<DropLabel, Counter>::default();
        let dropped_by_reason = ServedLogDrop::ALL.map(|why| {
            dropped
                .get_or_create(&DropLabel {
                    reason: why.label(),
                })
                .clone()
        });
        ServedLogMetrics {
            dropped,
            dropped_by_reason,
            written: Counter::default(),
            write_failures: Counter::default(),
            flush_duration: latency_histogram(),
        }
    }

    /// `posts` served posts left out of the log.
    pub fn dropped(&self, why: ServedLogDrop, posts: u64) {
        self.dropped_by_reason[why as usize].inc_by(posts);
    }

    /// A batch of `posts` written in `elapsed` (retries included).
    pub fn written(&self, posts: u64, elapsed: Duration) {
        self.written.inc_by(posts);
        self.flush_duration.observe(elapsed.as_secs_f64());
    }

    pub fn write_failed(&self) {
        self.write_failures.inc();
    }

    /// Served posts dropped so far, for `why`.
    pub fn dropped_total(&self, why: ServedLogDrop) -> u64 {
        self.dropped_by_reason[why as usize].get()
    }
}

/// A metric without labels, as registered.
enum Plain<'a> {
    Counter(&'a Counter),
    Gauge(&'a Gauge),
    Ratio(&'a Gauge<f64, AtomicU64>),
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Upper bounds of the post-age buckets (first served), seconds: a minute to a week.
const AGE_BUCKETS: [f64; 10] = [
    60.0, 300.0, 900.0, 3600.0, 10_800.0, 21_600.0, 43_200.0, 86_400.0, 172_800.0, 604_800.0,
];
/// Upper bounds of the eligibility-delay buckets, seconds.
const DELAY_BUCKETS: [f64; 9] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 300.0];

fn age_histogram() -> Histogram {
    Histogram::new(AGE_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    feed_responses: Family<SourceLabel, Counter>,
    posts_served: Family<SourceLabel, Counter>,
    first_served_age: Family<SourceLabel, Histogram, fn() -> Histogram>,
    fresh_eligibility_delay: Histogram,
    cache_hits: Counter,
    cache_misses: Counter,
    redis_errors: Counter,
    events_stored: Counter,
    events_duplicate: Counter,
    neighbor_lists: Counter,
    cache_hit_ratio: Gauge<f64, AtomicU64>,
    pool_max_size: Gauge,
    pool_size: Gauge,
    pool_available: Gauge,
    pool_in_use: Gauge,
    pool_waiting: Gauge,
    pub served_log: ServedLogMetrics,
}

/// The database pool's state at scrape time.
pub struct PoolGauge {
    pub max_size: usize,
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
}

impl Metrics {
    /// A registry with every metric at zero; `feed_sources` are the values of the `source` label
    /// of `feedrank_feed_responses_total`, shown (at 0) before any page is served.
    pub fn new(feed_sources: impl IntoIterator<Item = &'static str>) -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
            feed_responses: Family::default(),
            posts_served: Family::default(),
            first_served_age: Family::new_with_constructor(age_histogram),
            fresh_eligibility_delay: Histogram::new(DELAY_BUCKETS),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            redis_errors: Counter::default(),
            events_stored: Counter::default(),
            events_duplicate: Counter::default(),
            neighbor_lists: Counter::default(),
            cache_hit_ratio: Gauge::default(),
            pool_max_size: Gauge::default(),
            pool_size: Gauge::default(),
            pool_available: Gauge::default(),
            pool_in_use: Gauge::default(),
            pool_waiting: Gauge::default(),
            served_log: ServedLogMetrics::new(),
        };
        for source in feed_sources {
            drop(m.feed_responses.get_or_create(&SourceLabel { source }));
        }
        let mut registry = Registry::default();
        // Registered without the `_total` of counters (the library appends it) and with help
        // texts without their final period (the library appends one too).
        let r = &mut registry;
        r.register(
            "feedrank_http_requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        r.register(
            "feedrank_http_request_duration_seconds",
            "Request latency by route and status",
            m.durations.clone(),
        );
        r.register(
            "feedrank_feed_responses",
            "Feed pages by source",
            m.feed_responses.clone(),
        );
        r.register(
            "feedrank_feed_posts_served",
            "Posts served in feed pages by candidate source",
            m.posts_served.clone(),
        );
        r.register(
            "feedrank_feed_first_served_age_seconds",
            "Age of a post when this process first served it, by candidate source",
            m.first_served_age.clone(),
        );
        r.register(
            "feedrank_fresh_eligibility_delay_seconds",
            "Delay from a post's creation to its entry into the fresh pool",
            m.fresh_eligibility_delay.clone(),
        );
        let plain = [
            (
                "feedrank_neighbor_lists_loaded",
                "Neighbour lists read from PostgreSQL (because_you_liked)",
                Plain::Counter(&m.neighbor_lists),
            ),
            (
                "feedrank_cache_hits",
                "Feed requests answered from the Redis recommendations entry",
                Plain::Counter(&m.cache_hits),
            ),
            (
                "feedrank_cache_misses",
                "Feed requests that found no usable Redis entry",
                Plain::Counter(&m.cache_misses),
            ),
            (
                "feedrank_redis_errors",
                "Failed Redis round trips",
                Plain::Counter(&m.redis_errors),
            ),
            (
                "feedrank_events_stored",
                "Interactions stored",
                Plain::Counter(&m.events_stored),
            ),
            (
                "feedrank_events_duplicate",
                "Interactions whose event id was already stored",
                Plain::Counter(&m.events_duplicate),
            ),
            (
                "feedrank_served_log_written",
                "Served posts written to the served log",
                Plain::Counter(&m.served_log.written),
            ),
            (
                "feedrank_served_log_write_failures",
                "Failed attempts to write a served-log batch",
                Plain::Counter(&m.served_log.write_failures),
            ),
            (
                "feedrank_cache_hit_ratio",
                "Cache hits / (hits + misses) since start",
                Plain::Ratio(&m.cache_hit_ratio),
            ),
            (
                "feedrank_db_pool_max_size",
                "Largest size of the database pool",
                Plain::Gauge(&m.pool_max_size),
            ),
            (
                "feedrank_db_pool_size",
                "Open database connections",
                Plain::Gauge(&m.pool_size),
            ),
            (
                "feedrank_db_pool_available",
                "Idle database connections",
                Plain::Gauge(&m.pool_available),
            ),
            (
                "feedrank_db_pool_in_use",
                "Database connections in use",
                Plain::Gauge(&m.pool_in_use),
            ),
            (
                "feedrank_db_pool_waiting",
                "Requests waiting for a database connection",
                Plain::Gauge(&m.pool_waiting),
            ),
        ];
        r.register(
            "feedrank_served_log_dropped",
            "Served posts left out of the served log, by reason",
            m.served_log.dropped.clone(),
        );
        r.register(
            "feedrank_served_log_flush_duration_seconds",
            "Time to write one served-log batch, retries included",
            m.served_log.flush_duration.clone(),
        );
        for (name, help, metric) in plain {
            match metric {
                Plain::Counter(c) => r.register(name, help, c.clone()),
                Plain::Gauge(g) => r.register(name, help, g.clone()),
                Plain::Ratio(g) => r.register(name, help, g.clone()),
            }
        }
        Metrics { registry, ..m }
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels {
            method: method_label(method),
            route: route.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// `n` posts of `source` on a served page.
    pub fn posts_served(&self, source: &'static str, n: u64) {
        self.posts_served
            .get_or_create(&SourceLabel { source })
            .inc_by(n);
    }

    /// A post served for the first time (by this process), `age_ms` after its creation.
    pub fn first_served(&self, source: &'static str, age_ms: i64) {
        self.first_served_age
            .get_or_create(&SourceLabel { source })
            .observe(age_ms.max(0) as f64 / 1000.0);
    }

    /// A post entered the fresh pool `delay_ms` after its creation.
    pub fn fresh_eligible(&self, delay_ms: i64) {
        self.fresh_eligibility_delay
            .observe(delay_ms.max(0) as f64 / 1000.0);
    }

    pub fn feed_served(&self, source: &'static str) {
        self.feed_responses
            .get_or_create(&SourceLabel { source })
            .inc();
    }

    pub fn cache_lookup(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    pub fn neighbor_lists_loaded(&self, n: u64) {
        self.neighbor_lists.inc_by(n);
    }

    pub fn neighbor_lists_loaded_total(&self) -> u64 {
        self.neighbor_lists.get()
    }

    pub fn redis_error(&self) {
        self.redis_errors.inc();
    }

    pub fn event(&self, created: bool) {
        if created {
            self.events_stored.inc();
        } else {
            self.events_duplicate.inc();
        }
    }

    /// The Prometheus text exposition (format 0.0.4), with the gauges read now.
    pub fn render(&self, pool: &PoolGauge) -> String {
        let (hits, misses) = (self.cache_hits.get(), self.cache_misses.get());
        self.cache_hit_ratio.set(if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        });
        let count = |n: usize| n.min(i64::MAX as usize) as i64;
        self.pool_max_size.set(count(pool.max_size));
        self.pool_size.set(count(pool.size));
        self.pool_available.set(count(pool.available));
        self.pool_in_use
            .set(count(pool.size.saturating_sub(pool.available)));
        self.pool_waiting.set(count(pool.waiting));
        let mut out = String::with_capacity(4096);
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// The method as a label value, without an allocation for the usual ones.
fn method_label(method: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
    match KNOWN.iter().find(|m| **m == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(method.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolGauge {
        PoolGauge {
            max_size: 4,
            size: 1,
            available: 1,
            waiting: 0,
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new(["cache"]);
        m.observe("GET", "/api/feeds", 200, Duration::from_millis(3));
        m.observe("GET", "/api/feeds", 200, Duration::from_millis(30));
        let text = m.render(&pool());
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

    #[test]
    fn every_metric_has_its_type_and_help_and_the_counters_start_at_zero() {
        let m = Metrics::new(["cache", "db"]);
        m.observe("GET", "/healthz", 200, Duration::from_millis(1));
        let text = m.render(&pool());
        for (name, kind) in [
            ("feedrank_http_requests_total", "counter"),
            ("feedrank_http_request_duration_seconds", "histogram"),
            ("feedrank_feed_responses_total", "counter"),
            ("feedrank_cache_hits_total", "counter"),
            ("feedrank_cache_misses_total", "counter"),
            ("feedrank_redis_errors_total", "counter"),
            ("feedrank_events_stored_total", "counter"),
            ("feedrank_events_duplicate_total", "counter"),
            ("feedrank_cache_hit_ratio", "gauge"),
            ("feedrank_db_pool_max_size", "gauge"),
            ("feedrank_db_pool_size", "gauge"),
            ("feedrank_db_pool_available", "gauge"),
            ("feedrank_db_pool_in_use", "gauge"),
            ("feedrank_db_pool_waiting", "gauge"),
            ("feedrank_served_log_dropped_total", "counter"),
            ("feedrank_served_log_written_total", "counter"),
            ("feedrank_served_log_write_failures_total", "counter"),
            ("feedrank_served_log_flush_duration_seconds", "histogram"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}:\n{text}"
            );
            let help = format!("# HELP {name} ");
            let line = text.lines().find(|l| l.starts_with(&help)).unwrap();
            assert!(
                line.ends_with('.') && !line.ends_with(".."),
                "one final period: {line}"
            );
        }
        assert!(text.contains("feedrank_feed_responses_total{source=\"db\"} 0\n"));
        assert!(text.contains("feedrank_cache_hit_ratio 0"));
        assert!(text.contains("feedrank_db_pool_max_size 4\n"));
        assert!(text.contains("feedrank_served_log_dropped_total{reason=\"queue_full\"} 0\n"));
    }
}
