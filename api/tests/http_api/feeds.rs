//! GET /api/feeds: validation, the order of sources, the serve-time filters and paging.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use feedrank_api::response::FeedResponse;
use feedrank_core::config::{Reason, ScoringConfig};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

/// `authors` users with `per_author` posts each; returns (author, post) pairs interleaved by
/// author (a1p1, a2p1, ..., a1p2, ...), so no author clusters.
async fn corpus(env: &TestEnv, authors: usize, per_author: usize) -> Vec<(Uuid, Uuid)> {
    let mut by_author = Vec::new();
    for a in 0..authors {
        let u = env.user(&format!("author{a}")).await;
        by_author.push((u, env.posts(u, per_author).await));
    }
    let mut out = Vec::new();
    for i in 0..per_author {
        for (u, ps) in &by_author {
            out.push((*u, ps[i]));
        }
    }
    out
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_out_of_range_parameters_are_400_naming_the_field() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let t = env.token(alice);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("limit=2.5", "limit"),
        ("offset=-1", "offset"),
        ("offset=10001", "offset"),
        ("refresh=yes", "refresh"),
        ("seed=-1", "seed"),
        ("seed=9007199254740992", "seed"),
        ("limit=5&limit=6", "limit"),
        ("source=elsewhere", "source"),
    ] {
        let (s, b) = get(env.app(), &format!("/api/feeds?{query}"), Some(&t)).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(b["field"], field, "{query}: {b}");
    }
    // The documented maximum offset is accepted (not clamped, not refused).
    let (s, b) = get(env.app(), "/api/feeds?offset=10000&limit=100", Some(&t)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["metadata"]["offset"], 10000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_source_serves_the_pipeline_entry_in_the_designed_shape() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let posts = corpus(&env, 5, 2).await;
    let reasons = [
        Reason::SimilarUsers,
        Reason::SimilarContent,
        Reason::Fresh,
        Reason::Popular,
    ];
    let items: Vec<(Uuid, f32, Reason)> = posts
        .iter()
        .enumerate()
        .map(|(i, (_, p))| (*p, 1.0 - i as f32 * 0.05, reasons[i % 4]))
        .collect();
    env.cache_feed(alice, &items, now_secs() - 3600).await;
    let t = env.token(alice);

    let (s, b) = get(env.app(), "/api/feeds?limit=4", Some(&t)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Exactly the designed shape (deny_unknown_fields), plus score and reason.
    let parsed: FeedResponse = serde_json::from_value(b.clone()).unwrap();
    assert_eq!(parsed.metadata.source, "cache");
    assert_eq!(
        (
            parsed.metadata.total,
            parsed.metadata.offset,
            parsed.metadata.limit
        ),
        (10, 0, 4)
    );
    assert!(
        b["metadata"].get("seed").is_none(),
        "a seed only belongs to the fallback"
    );
    let want: Vec<Uuid> = items.iter().take(4).map(|i| i.0).collect();
    assert_eq!(ids(&b), want);
    let p0 = &b["posts"][0];
    let keys: HashSet<&str> = p0.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        HashSet::from([
            "id",
            "userId",
            "content",
            "mediaUrls",
            "createdAt",
            "updatedAt",
            "user",
            "score",
            "reason",
            "source"
        ])
    );
    let ukeys: HashSet<&str> = p0["user"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        ukeys,
        HashSet::from(["id", "username", "displayName", "avatarUrl"])
    );
    assert_eq!(p0["user"]["id"], p0["userId"]);
    assert_eq!(p0["reason"], "similar_users");
    assert_eq!(p0["source"], "personalized");
    assert_eq!(b["metadata"]["sources"], json!(["personalized"]));
    assert!((p0["score"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert_eq!(b["posts"][1]["reason"], "similar_content");
    assert_eq!(p0["mediaUrls"], json!(["https://img.example/p.png"]));

    let (_, b2) = get(env.app(), "/api/feeds?limit=4&offset=4", Some(&t)).await;
    let want: Vec<Uuid> = items.iter().skip(4).take(4).map(|i| i.0).collect();
    assert_eq!(ids(&b2), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_db_source_is_written_back_to_the_cache_with_a_ttl() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let posts = corpus(&env, 4, 2).await;
    // Scores descending; components chosen so each row's reason differs.
    let comps = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let items: Vec<(Uuid, f64, [f64; 4])> = posts
        .iter()
        .enumerate()
        .map(|(i, (_, p))| (*p, 0.9 - i as f64 * 0.1, comps[i % 4]))
        .collect();
    env.recommend(alice, &items, 600.0).await;
    let t = env.token(alice);

    let (s, b) = get(env.app(), "/api/feeds?limit=5", Some(&t)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["metadata"]["source"], "db");
    assert_eq!(b["metadata"]["total"], 8);
    assert_eq!(
        ids(&b),
        items.iter().take(5).map(|i| i.0).collect::<Vec<_>>()
    );
    assert_eq!(b["posts"][0]["reason"], "similar_users");
    assert_eq!(b["posts"][2]["reason"], "fresh");

    let key = feedrank_core::cache::recommendations_key(&env.prefix, &alice.to_string());
    let mut r = env.redis().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    // The run has no configuration: the default configuration's TTL.
    let default_ttl = ScoringConfig::default().cache_ttl_seconds as i64;
    assert!(ttl > default_ttl - 60 && ttl <= default_ttl, "ttl {ttl}");
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    let entry = feedrank_core::cache::decode(&raw).unwrap();
    assert_eq!(entry.items.len(), 8);

    let (_, b2) = get(env.app(), "/api/feeds?limit=5", Some(&t)).await;
    assert_eq!(b2["metadata"]["source"], "cache");
    assert_eq!(ids(&b2), ids(&b));
    // refresh bypasses the cache.
    let (_, b3) = get(env.app(), "/api/feeds?limit=5&refresh=true", Some(&t)).await;
    assert_eq!(b3["metadata"]["source"], "db");
    assert_eq!(ids(&b3), ids(&b));
}

/// The TTL of a user's Redis entry is one setting: the pipeline's `cache_ttl_seconds`, stored
/// with its run. An entry the API writes back from that run lives as long, and never past the
/// rows' expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_back_entry_lives_as_long_as_its_runs_cache_ttl_setting() {
    let env = TestEnv::new().await;
    let posts = corpus(&env, 2, 2).await;
    let items: Vec<(Uuid, f64, [f64; 4])> = posts
        .iter()
        .map(|(_, p)| (*p, 0.5, [1.0, 0.0, 0.0, 0.0]))
        .collect();
    let mut r = env.redis().await;
    // (the run's configuration as the pipeline stores it, minutes until the rows expire,
    //  the TTL range wanted)
    for (name, config, expires_in_min, want) in [
        (
            "short",
            json!({"cache_ttl_seconds": 120, "top_k": 200, "snapshot_at": "2026-12-01T00:00:00Z"}),
            24 * 60,
            100..=120,
        ),
        ("expiring", json!({"cache_ttl_seconds": 7200}), 5, 240..=300),
    ] {
        let user = env.user(name).await;
        let run = env.recommend(user, &items, 60.0).await;
        env.db
            .execute(
                "UPDATE recommendation_runs SET config = $2 WHERE id = $1",
                &[&run, &config],
            )
            .await
            .unwrap();
        env.db
            .execute(
                "UPDATE user_recommendations SET expires_at = now() + make_interval(mins => $2)
                 WHERE run_id = $1",
                &[&run, &expires_in_min],
            )
            .await
            .unwrap();
        let (s, b) = get(env.app(), "/api/feeds", Some(&env.token(user))).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["metadata"]["source"], "db", "{name}");
        let key = feedrank_core::cache::recommendations_key(&env.prefix, &user.to_string());
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert!(want.contains(&ttl), "{name}: ttl {ttl}, want {want:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_recommendations_the_fallback_serves_recent_posts_including_the_users_own() {
    let env = TestEnv::new().await;
    let newbie = env.user("newbie").await;
    let own = env.posts(newbie, 1).await[0];
    let posts = corpus(&env, 6, 3).await;
    let t = env.token(newbie);
    let (s, b) = get(env.app(), "/api/feeds?limit=100", Some(&t)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let parsed: FeedResponse = serde_json::from_value(b.clone()).unwrap();
    assert_eq!(parsed.metadata.source, "fallback");
    assert!(parsed.metadata.seed.is_some());
    assert_eq!(parsed.metadata.total, posts.len() + 1);
    let got: HashSet<Uuid> = ids(&b).into_iter().collect();
    assert!(got.contains(&own), "the user's own post is in the fallback");
    assert_eq!(got.len(), posts.len() + 1);
    assert!(b["posts"][0].get("score").is_none() && b["posts"][0].get("reason").is_none());
    // The same user on the same day gets the same order (default seed), and `source=fallback`
    // gives the fallback even to a user with recommendations.
    let (_, again) = get(env.app(), "/api/feeds?limit=100", Some(&t)).await;
    assert_eq!(ids(&again), ids(&b));
    env.cache_feed(
        newbie,
        &[(posts[0].1, 0.9, Reason::Popular)],
        now_secs() - 60,
    )
    .await;
    let (_, forced) = get(env.app(), "/api/feeds?limit=100&source=fallback", Some(&t)).await;
    assert_eq!(forced["metadata"]["source"], "fallback");
    assert_eq!(ids(&forced), ids(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_pages_with_one_seed_never_repeat_or_skip() {
    let env = TestEnv::new().await;
    let reader = env.user("reader").await;
    corpus(&env, 10, 12).await;
    let t = env.token(reader);
    let (_, first) = get(env.app(), "/api/feeds?limit=25", Some(&t)).await;
    let seed = first["metadata"]["seed"].as_u64().unwrap();
    let total = first["metadata"]["total"].as_u64().unwrap() as usize;
    assert!(total >= 110, "diversity keeps most posts: {total}");

    let mut seen = Vec::new();
    let mut pages = Vec::new();
    for offset in (0..total).step_by(25) {
        let (s, b) = get(
            env.app(),
            &format!("/api/feeds?limit=25&offset={offset}&seed={seed}"),
            Some(&t),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["metadata"]["seed"].as_u64(), Some(seed));
        pages.push(ids(&b));
        seen.extend(ids(&b));
    }
    assert_eq!(
        pages[0],
        ids(&first),
        "the default seed is the one returned"
    );
    let unique: HashSet<&Uuid> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no post repeats across pages");
    assert_eq!(seen.len(), total, "no post is skipped");

    // Viewing page 1's posts while paging does not shift page 2 (the page sequence began before).
    let (_, p1) = get(
        env.app(),
        &format!("/api/feeds?limit=25&seed={seed}"),
        Some(&t),
    )
    .await;
    for id in ids(&p1) {
        let (s, _) = post(
            env.app(),
            "/api/track",
            &t,
            &json!({"postId": id, "interactionType": "view"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (_, p2) = get(
        env.app(),
        &format!("/api/feeds?limit=25&offset=25&seed={seed}"),
        Some(&t),
    )
    .await;
    assert_eq!(ids(&p2), pages[1]);
    // A new sequence (offset 0) leaves the viewed posts out.
    let (_, fresh) = get(
        env.app(),
        &format!("/api/feeds?limit=100&seed={seed}"),
        Some(&t),
    )
    .await;
    let viewed: HashSet<Uuid> = ids(&p1).into_iter().collect();
    assert!(ids(&fresh).iter().all(|id| !viewed.contains(id)));

    // Another seed, another order.
    let (_, other) = get(
        env.app(),
        &format!("/api/feeds?limit=25&seed={}", seed ^ 1),
        Some(&t),
    )
    .await;
    assert_ne!(ids(&other), pages[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_author_exceeds_the_diversity_cap_while_another_authors_post_is_left() {
    let env = TestEnv::with(|c| c.author_diversity_cap = 2).await;
    let alice = env.user("alice").await;
    let prolific = env.user("prolific").await;
    let many = env.posts(prolific, 8).await;
    let others = corpus(&env, 6, 1).await;
    // The prolific author holds the 8 best scores.
    let mut items: Vec<(Uuid, f32, Reason)> = many
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 1.0 - i as f32 * 0.01, Reason::SimilarUsers))
        .collect();
    items.extend(
        others
            .iter()
            .enumerate()
            .map(|(i, (_, p))| (*p, 0.5 - i as f32 * 0.01, Reason::Popular)),
    );
    env.cache_feed(alice, &items, now_secs() - 60).await;
    let t = env.token(alice);
    let (_, b) = get(env.app(), "/api/feeds?limit=5", Some(&t)).await;
    // While the pages lie in the blend `total` is an upper bound (the fallback after it is read
    // only when a page reaches it); paged to the end, it is exact.
    let bound = b["metadata"]["total"].as_u64().unwrap() as usize;
    let mut all = Vec::new();
    let mut by_prolific = Vec::new();
    for offset in (0..bound).step_by(5) {
        let (_, page) = get(
            env.app(),
            &format!("/api/feeds?limit=5&offset={offset}"),
            Some(&t),
        )
        .await;
        for p in page["posts"].as_array().unwrap() {
            by_prolific.push(p["userId"] == prolific.to_string());
        }
        all.extend(ids(&page));
    }
    // In any 5 consecutive posts at most 2 are the prolific author's, until only theirs are left:
    // then they follow (the cap spreads an author out, it does not end the feed).
    let last_other = by_prolific.iter().rposition(|&p| !p).unwrap();
    for j in 0..=last_other {
        let before = by_prolific[j.saturating_sub(4)..j]
            .iter()
            .filter(|&&p| p)
            .count();
        assert!(
            !by_prolific[j] || before < 2,
            "place {j}: a third post by one author in 5 while others were left"
        );
    }
    assert!(
        many.iter().all(|p| all.contains(p)),
        "every post of the prolific author is served"
    );
    assert_eq!(
        ids(&b)[..2],
        [many[0], many[1]],
        "the best posts stay first"
    );
    let unique: HashSet<&Uuid> = all.iter().collect();
    assert_eq!(unique.len(), all.len());
    let (_, end) = get(
        env.app(),
        &format!("/api/feeds?limit=5&offset={}", all.len()),
        Some(&t),
    )
    .await;
    assert!(ids(&end).is_empty(), "{end}");
    assert_eq!(
        end["metadata"]["total"].as_u64().unwrap() as usize,
        all.len()
    );
    assert!(all.len() <= bound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_seen_after_the_build_hidden_or_deleted_are_left_out() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let posts: Vec<Uuid> = corpus(&env, 5, 2).await.into_iter().map(|x| x.1).collect();
    let items: Vec<(Uuid, f64, [f64; 4])> = posts
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 1.0 - i as f64 * 0.05, [1.0, 0.0, 0.0, 0.0]))
        .collect();
    env.recommend(alice, &items, 3600.0).await;
    // An interaction from before the build does not hide a post.
    env.db
        .execute(
            "INSERT INTO user_interactions (user_id, post_id, interaction_type, created_at) VALUES ($1, $2, 'view', now() - interval '2 hours')",
            &[&alice, &posts[1]],
        )
        .await
        .unwrap();
    let t = env.token(alice);
    let (_, b) = get(env.app(), "/api/feeds", Some(&t)).await;
    assert_eq!(b["metadata"]["source"], "db");
    assert_eq!(
        ids(&b),
        posts,
        "everything at first (the old view predates the build)"
    );

    // Seen after the build (tracked through the API): gone, from the cache too.
    let (s, _) = post(
        env.app(),
        "/api/track",
        &t,
        &json!({"postId": posts[0], "interactionType": "view"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, b) = get(env.app(), "/api/feeds", Some(&t)).await;
    assert_eq!(b["metadata"]["source"], "cache");
    assert!(!ids(&b).contains(&posts[0]));
    assert_eq!(b["metadata"]["total"], 9);
    // The database path applies the same filter.
    let (_, b) = get(env.app(), "/api/feeds?refresh=true", Some(&t)).await;
    assert_eq!(b["metadata"]["source"], "db");
    assert!(!ids(&b).contains(&posts[0]));

    // Hidden: the cached entry is dropped and the post disappears at once.
    let (s, _) = post(
        env.app(),
        "/api/track",
        &t,
        &json!({"postId": posts[2], "interactionType": "hide"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, b) = get(env.app(), "/api/feeds", Some(&t)).await;
    assert_eq!(b["metadata"]["source"], "db");
    assert!(!ids(&b).contains(&posts[2]));
    let (_, b) = get(env.app(), "/api/feeds", Some(&t)).await;
    assert_eq!(b["metadata"]["source"], "cache");
    assert!(!ids(&b).contains(&posts[2]));
    assert_eq!(b["metadata"]["total"], 8);

    // Deleted: a post removed from the database is left out (a fresh process, no caches).
    env.db
        .execute("DELETE FROM posts WHERE id = $1", &[&posts[3]])
        .await
        .unwrap();
    let fresh = feedrank_api::router(env.other_state(|_| {}));
    let (_, b) = get(fresh, "/api/feeds?refresh=true", Some(&t)).await;
    assert!(!ids(&b).contains(&posts[3]));
    assert_eq!(b["metadata"]["total"], 7);

    // A user who has seen or hidden every recommendation gets the fallback, never an empty feed.
    for p in &posts {
        post(
            env.app(),
            "/api/track",
            &t,
            &json!({"postId": p, "interactionType": "hide"}),
        )
        .await;
    }
    let (_, b) = get(env.app(), "/api/feeds", Some(&t)).await;
    assert_eq!(b["metadata"]["source"], "fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_the_feed_is_served_from_postgres() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let bob = env.user("bob").await;
    let posts: Vec<Uuid> = corpus(&env, 3, 2).await.into_iter().map(|x| x.1).collect();
    let items: Vec<(Uuid, f64, [f64; 4])> = posts
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 1.0 - i as f64 * 0.1, [0.0, 1.0, 0.0, 0.0]))
        .collect();
    env.recommend(alice, &items, 60.0).await;
    // Nothing listens on port 1.
    let no_redis = feedrank_api::router(env.other_state(|c| {
        c.redis_url = "redis://127.0.0.1:1/0".into();
        c.redis_timeout = Duration::from_millis(200);
    }));
    let started = Instant::now();
    let (s, b) = get(no_redis.clone(), "/api/feeds", Some(&env.token(alice))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["metadata"]["source"], "db");
    assert_eq!(ids(&b), posts);
    // The sources that need Redis are skipped, and the page says so.
    assert_eq!(
        b["metadata"]["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == "trending")
            .map(|s| s["reason"].clone()),
        Some(json!("redis unavailable")),
        "{b}"
    );
    let (s, b) = get(no_redis.clone(), "/api/feeds", Some(&env.token(bob))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["metadata"]["source"], "fallback");
    let (s, _) = post(
        no_redis.clone(),
        "/api/track",
        &env.token(bob),
        &json!({"postId": posts[0], "interactionType": "like"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "tracking does not need Redis");
    // A test of the configured Redis timeout (200 ms per Redis call here): these three requests
    // must not wait for Redis beyond it; 10 s is a wide margin for a loaded machine that still
    // fails when a request waits on Redis with no bound.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (s, b) = get(no_redis, "/readyz", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b["postgres"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_falls_back_to_postgres_and_the_cache_returns_after() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let posts: Vec<Uuid> = corpus(&env, 3, 2).await.into_iter().map(|x| x.1).collect();
    let items: Vec<(Uuid, f64, [f64; 4])> = posts
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 1.0 - i as f64 * 0.1, [0.0, 0.0, 0.0, 1.0]))
        .collect();
    env.recommend(alice, &items, 60.0).await;
    let redis_port = redis_url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let proxy = Proxy::start(([127, 0, 0, 1], redis_port).into()).await;
    let app = feedrank_api::router(
        env.other_state(|c| c.redis_url = format!("redis://127.0.0.1:{}/0", proxy.port)),
    );
    let t = env.token(alice);
    let source = |b: &Value| b["metadata"]["source"].as_str().unwrap().to_string();

    let (_, b) = get(app.clone(), "/api/feeds", Some(&t)).await;
    assert_eq!(source(&b), "db");
    let (_, b) = get(app.clone(), "/api/feeds", Some(&t)).await;
    assert_eq!(source(&b), "cache");

    proxy.cut().await;
    let (s, b) = get(app.clone(), "/api/feeds", Some(&t)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(source(&b), "db");
    assert_eq!(ids(&b), posts);

    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, b) = get(app.clone(), "/api/feeds", Some(&t)).await;
        assert_eq!(s, StatusCode::OK);
        if source(&b) == "cache" {
            break;
        }
        assert!(Instant::now() < deadline, "the cache never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_requests_get_503_quickly_and_recover_by_themselves() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let posts: Vec<Uuid> = corpus(&env, 2, 2).await.into_iter().map(|x| x.1).collect();
    let proxy = Proxy::start(([127, 0, 0, 1], 5432).into()).await;
    let url = env
        .db_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(url, env.db_url);
    let app = feedrank_api::router(env.other_state(|c| {
        c.database_url = url;
        c.pg_pool_timeout = Duration::from_millis(500);
    }));
    let t = env.token(alice);
    let (s, _) = get(app.clone(), "/api/feeds", Some(&t)).await;
    assert_eq!(s, StatusCode::OK);

    proxy.cut().await;
    let started = Instant::now();
    let (s, b) = post(
        app.clone(),
        "/api/track",
        &t,
        &json!({"postId": posts[0], "interactionType": "like"}),
    )
    .await;
    assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let (s, b) = get(app.clone(), "/api/feeds?refresh=true", Some(&t)).await;
    assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    // A test of the configured pool timeout (500 ms per request here): 10 s is a wide margin
    // for a loaded machine that still fails when a request waits for PostgreSQL with no bound.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (s, _) = get(app.clone(), "/readyz", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);

    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = post(
            app.clone(),
            "/api/track",
            &t,
            &json!({"postId": posts[0], "interactionType": "like"}),
        )
        .await;
        if s == StatusCode::CREATED {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, _) = get(app, "/api/feeds?refresh=true", Some(&t)).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_and_deleted_posts_leave_the_in_process_cache_when_postgresql_notifies() {
    // A post-cache TTL far beyond the test: only a change notification (migration V3's triggers,
    // heard by the listener) can make the API drop its copies.
    let env = TestEnv::with(|c| c.post_cache_ttl = Duration::from_secs(3600)).await;
    let alice = env.user("alice").await;
    let posts: Vec<Uuid> = corpus(&env, 3, 1).await.into_iter().map(|x| x.1).collect();
    let items: Vec<(Uuid, f32, Reason)> =
        posts.iter().map(|p| (*p, 0.5, Reason::Popular)).collect();
    env.cache_feed(alice, &items, now_secs() - 60).await;
    let t = env.token(alice);
    // The listener forgets every cached post when it (re)connects: warm the cache only once it
    // is connected, and remember its generation (bumped by every reconnect) so that a reconnect
    // cannot pass for a notification.
    env.wait_for_the_listener().await;
    let generation = env.state.feeds.recommendations_generation();
    let (_, b) = get(env.app(), "/api/feeds", Some(&t)).await;
    assert_eq!(b["metadata"]["source"], "cache");
    assert_eq!(ids(&b), posts);
    assert_ne!(b["posts"][0]["content"], "edited");

    env.db
        .execute(
            "UPDATE posts SET content = 'edited' WHERE id = $1",
            &[&posts[0]],
        )
        .await
        .unwrap();
    env.db
        .execute("DELETE FROM posts WHERE id = $1", &[&posts[1]])
        .await
        .unwrap();
    // A notification takes milliseconds; the bound is a wide margin for a loaded machine, and
    // far below the TTL, so only a notification can end this loop.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, b) = get(env.app(), "/api/feeds", Some(&t)).await;
        if b["posts"][0]["content"] == "edited" && !ids(&b).contains(&posts[1]) {
            // (`total` may still count the deleted post while the fallback's pool snapshot
            // holds it: the page never serves it)
            assert_eq!(ids(&b).len(), 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no change notification dropped the cached copies: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(env.state.feeds.is_listening());
    assert_eq!(
        env.state.feeds.recommendations_generation(),
        generation,
        "the listener reconnected (which forgets everything) instead of being notified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_remembered_without_recommendations_gets_them_as_soon_as_a_run_lands() {
    let env = TestEnv::new().await;
    let reader = env.user("reader").await;
    let posts = corpus(&env, 3, 2).await;
    let t = env.token(reader);
    // Remembering is only safe while the change listener is connected.
    env.wait_for_the_listener().await;
    let (_, b) = get(env.app(), "/api/feeds?limit=5", Some(&t)).await;
    assert_eq!(b["metadata"]["source"], "fallback");
    assert!(
        env.state.feeds.known_without_recommendations(reader),
        "PostgreSQL's empty answer is remembered"
    );
    let (_, again) = get(env.app(), "/api/feeds?limit=5", Some(&t)).await;
    assert_eq!(again["metadata"]["source"], "fallback");

    // A run lands (rows and a complete run, as the pipeline commits them): the notification
    // voids what was remembered, and the next feed comes from the database.
    let items: Vec<(Uuid, f64, [f64; 4])> = posts
        .iter()
        .map(|(_, p)| (*p, 0.5, [1.0, 0.0, 0.0, 0.0]))
        .collect();
    env.recommend(reader, &items, 60.0).await;
    // A notification takes milliseconds; 30 s is a wide margin for a loaded machine and far
    // below what is remembered (10 minutes), so only the notification can end this loop.
    let start = Instant::now();
    loop {
        let (_, b) = get(env.app(), "/api/feeds?limit=5", Some(&t)).await;
        if b["metadata"]["source"] == "db" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still {} 30 seconds after the run landed",
            b["metadata"]["source"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seen_filter_holds_when_the_cached_entry_is_older_than_the_last_one_read() {
    // The cached path reads only the seen entries since the entry it read last was built; an
    // entry built earlier than that (written back from an older run, say) needs the ones in
    // between too, and gets them.
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let posts: Vec<Uuid> = corpus(&env, 4, 2).await.into_iter().map(|x| x.1).collect();
    let items: Vec<(Uuid, f32, Reason)> = posts
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 1.0 - i as f32 * 0.05, Reason::Popular))
        .collect();
    let t = env.token(alice);
    let now = now_secs();
    env.cache_feed(alice, &items, now - 60).await;
    let (_, b) = get(env.app(), "/api/feeds", Some(&t)).await;
    assert_eq!(b["metadata"]["source"], "cache");
    assert_eq!(ids(&b), posts);

    // Seen ten minutes ago: before that entry was built, after the older one below.
    let mut r = env.redis().await;
    let _: i64 = redis::cmd("ZADD")
        .arg(feedrank_core::cache::user_key(
            &env.prefix,
            "seen",
            &alice.to_string(),
        ))
        .arg((now - 600) * 1000)
        .arg(posts[0].to_string())
        .query_async(&mut r)
        .await
        .unwrap();
    let (_, b) = get(env.app(), "/api/feeds", Some(&t)).await;
    assert!(
        ids(&b).contains(&posts[0]),
        "seen before the entry was built: still shown"
    );
    env.cache_feed(alice, &items, now - 3600).await;
    let (_, b) = get(env.app(), "/api/feeds", Some(&t)).await;
    assert_eq!(b["metadata"]["source"], "cache");
    assert!(
        !ids(&b).contains(&posts[0]),
        "seen after the older entry was built: left out"
    );
    assert_eq!(ids(&b).len(), posts.len() - 1);
}
