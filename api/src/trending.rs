//! The trending counters: every tracked interaction adds its type's weight
//! (`ScoringConfig::interaction_weights`) to its post in the Redis bucket of its time
//! (`sources.trending.bucket_minutes` wide; keys expire after the window), so that ranking needs
//! no scan of the interactions table. Redis keeps them across API restarts; when Redis loses them
//! the source starts counting again (they are not rebuilt from PostgreSQL).
//!
//! At time `t` the buckets read are the `window_hours x 60 / bucket_minutes` latest, the current
//! one included; a bucket `a` buckets old weighs `0.5^(a x bucket_minutes / 60 /
//! half_life_hours)` in the trending score, and 1 in the fresh source's live engagement. This is
//! what the offline replay assumes (`python/feedrank/timecut.py`, `Replay.engagement`).

use feedrank_core::config::{InteractionType, ScoringConfig, TrendingSettings};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::redis_store::RedisStore;

const HOUR_MS: i64 = 3_600_000;

fn width_ms(s: &TrendingSettings) -> i64 {
    s.bucket_minutes as i64 * 60_000
}

fn key(prefix: &str, s: &TrendingSettings, bucket: i64) -> String {
    // one hash tag for every bucket: their union runs on one node of a cluster
    format!(
        "{prefix}trending:{{feedrank_trending}}:{}:{bucket}",
        s.bucket_minutes
    )
}

/// The keys of the buckets read at `now_ms`, each with its weight: decayed by age (`decayed`),
/// or 1.
pub fn window_keys(
    prefix: &str,
    s: &TrendingSettings,
    now_ms: i64,
    decayed: bool,
) -> Vec<(String, f64)> {
    let width = width_ms(s);
    let current = now_ms.div_euclid(width);
    let n = (s.window_hours as i64 * HOUR_MS / width).max(1);
    (0..n)
        .map(|age| {
            let w = if decayed {
                0.5f64.powf(age as f64 * width as f64 / (s.half_life_hours as f64 * HOUR_MS as f64))
            } else {
                1.0
            };
            (key(prefix, s, current - age), w)
        })
        .collect()
}

/// Counts interactions `(post, type, at_ms)` in their buckets (types of weight 0 are not counted).
pub async fn record(
    redis: &RedisStore,
    metrics: &Metrics,
    config: &ScoringConfig,
    events: &[(Uuid, InteractionType, i64)],
) {
    let s = &config.sources.trending;
    // A bucket lives until it leaves the window.
    let ttl = s.window_hours as u64 * 3600 + s.bucket_minutes as u64 * 60;
    let weights = config.interaction_weights;
    let mut by_bucket: Vec<(i64, Vec<(String, f64)>)> = Vec::new();
    for (post, kind, at_ms) in events {
        let w = weights.weight_of(kind.as_str()).unwrap_or(0.0);
        if w <= 0.0 {
            continue;
        }
        let bucket = at_ms.div_euclid(width_ms(s));
        let entry = match by_bucket.iter_mut().find(|(b, _)| *b == bucket) {
            Some(e) => e,
            None => {
                by_bucket.push((bucket, Vec::new()));
                by_bucket.last_mut().expect("just pushed")
            }
        };
        entry.1.push((post.to_string(), w as f64));
    }
    for (bucket, posts) in by_bucket {
        redis
            .count_engagement(&key(redis.prefix(), s, bucket), ttl, &posts, metrics)
            .await;
    }
}

/// The `n` posts of largest decayed count at `now_ms`, largest first (`None`: Redis did not
/// answer).
pub async fn top(
    redis: &RedisStore,
    metrics: &Metrics,
    s: &TrendingSettings,
    now_ms: i64,
    n: usize,
) -> Option<Vec<(Uuid, f32)>> {
    let keys = window_keys(redis.prefix(), s, now_ms, true);
    let top = redis.top_of_union(&keys, n, metrics).await?;
    Some(
        top.into_iter()
            .filter(|(_, score)| *score > 0.0)
            .filter_map(|(p, score)| Some((Uuid::parse_str(&p).ok()?, score as f32)))
            .collect(),
    )
}

/// Each post's undecayed weighted count of the window at `now_ms` (the fresh source's live
/// engagement); zeros when Redis does not answer.
pub async fn engagement(
    redis: &RedisStore,
    metrics: &Metrics,
    s: &TrendingSettings,
    now_ms: i64,
    posts: &[Uuid],
) -> Vec<f32> {
    let keys = window_keys(redis.prefix(), s, now_ms, false);
    let members: Vec<String> = posts.iter().map(Uuid::to_string).collect();
    // (a few posts, as the fresh pool's newcomers are, are read key by key: no union)
    match redis.scores_in_union(&keys, &members, metrics).await {
        Some(scores) => scores.into_iter().map(|s| s as f32).collect(),
        None => vec![0.0; posts.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_latest_buckets_decayed_by_age_as_the_replay_reads_it() {
        let s = TrendingSettings {
            window_hours: 1,
            half_life_hours: 0.5,
            bucket_minutes: 10,
            candidates: 10,
        };
        let now = 7 * 600_000 + 123; // inside bucket 7
        let keys = window_keys("p:", &s, now, true);
        assert_eq!(keys.len(), 6);
        assert_eq!(keys[0].0, "p:trending:{feedrank_trending}:10:7");
        assert_eq!(keys[5].0, "p:trending:{feedrank_trending}:10:2");
        assert_eq!(keys[0].1, 1.0);
        // three buckets = 30 minutes = one half-life
        assert!((keys[3].1 - 0.5).abs() < 1e-12, "{}", keys[3].1);
        assert!(window_keys("p:", &s, now, false)
            .iter()
            .all(|(_, w)| *w == 1.0));
    }
}
