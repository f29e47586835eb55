//! The feed's candidate sources (issue 13): the blend, the fresh pool, trending counters,
//! because_you_liked, paging to the end of the catalogue, and what is said when a source is
//! skipped.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use feedrank_core::config::ScoringConfig;
use feedrank_core::tfidf::{TfidfModel, TfidfParams};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

/// A post by `author` with `content`, created `age_secs` ago.
async fn post_at(env: &TestEnv, author: Uuid, content: &str, age_secs: f64) -> Uuid {
    env.db
        .query_one(
            "INSERT INTO posts (user_id, content, created_at, updated_at)
             VALUES ($1, $2, now() - make_interval(secs => $3), now() - make_interval(secs => $3))
             RETURNING id",
            &[&author, &content, &age_secs],
        )
        .await
        .unwrap()
        .get(0)
}

/// A serving model fitted on `docs`, its snapshot taken `age_secs` ago.
async fn serving_model(env: &TestEnv, docs: &[&str], age_secs: f64) -> (i64, TfidfModel) {
    serving_model_with(env, docs, age_secs, &ScoringConfig::default()).await
}

async fn serving_model_with(
    env: &TestEnv,
    docs: &[&str],
    age_secs: f64,
    config: &ScoringConfig,
) -> (i64, TfidfModel) {
    let (model, _) = TfidfModel::fit_transform(docs, TfidfParams::default()).unwrap();
    let id: i64 = env
        .db
        .query_one(
            "INSERT INTO recommendation_models (snapshot_at, config, tfidf)
             VALUES (now() - make_interval(secs => $1), $2::text::jsonb, $3) RETURNING id",
            &[&age_secs, &config.to_json(), &model.to_json()],
        )
        .await
        .unwrap()
        .get(0);
    (id, model)
}

/// A run for `user` recommending `posts` (best first) built an hour ago, naming `model`.
async fn run_with_model(env: &TestEnv, user: Uuid, posts: &[Uuid], model: Option<i64>) -> i64 {
    let items: Vec<(Uuid, f64, [f64; 4])> = posts
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 1.0 - i as f64 * 0.001, [0.9, 0.1, 0.1, 0.1]))
        .collect();
    let run = env.recommend(user, &items, 3600.0).await;
    env.db
        .execute(
            "UPDATE recommendation_runs SET model_id = $2 WHERE id = $1",
            &[&run, &model],
        )
        .await
        .unwrap();
    run
}

/// `per_author` posts by each of `authors` new users, interleaved by author.
async fn spread_posts(env: &TestEnv, name: &str, authors: usize, per_author: usize) -> Vec<Uuid> {
    let mut by_author = Vec::new();
    for a in 0..authors {
        let u = env.user(&format!("{name}{a}")).await;
        by_author.push(env.posts(u, per_author).await);
    }
    (0..per_author)
        .flat_map(|i| by_author.iter().map(move |ps| ps[i]))
        .collect()
}

/// Stores `neighbours` (scored 0.9, 0.8, 0.7) as `post`'s neighbour list in `model`.
async fn store_neighbors(env: &TestEnv, model: i64, post: Uuid, neighbours: &[Uuid]) {
    let scores: Vec<f32> = [0.9f32, 0.8, 0.7][..neighbours.len()].to_vec();
    env.db
        .execute(
            "INSERT INTO post_neighbors (model_id, post_id, neighbors, scores)
             VALUES ($1, $2, $3, $4)",
            &[&model, &post, &neighbours, &scores],
        )
        .await
        .unwrap();
}

/// The token's user likes each of `posts` through `/api/track`.
async fn like_each(env: &TestEnv, token: &str, posts: &[Uuid]) {
    for p in posts {
        let (s, b) = post(
            env.app(),
            "/api/track",
            token,
            &json!({"postId": p, "interactionType": "like"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
}

/// The user's first page (limit 20) once it holds `post`, asked every 200 ms for at most 60 s.
async fn first_page_with(env: &TestEnv, token: &str, post: Uuid) -> Value {
    let start = Instant::now();
    loop {
        let (s, page) = get(env.app(), "/api/feeds?limit=20", Some(token)).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        if ids(&page).contains(&post) {
            return page;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{post} never reached the first page: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sources_of(page: &Value) -> Vec<String> {
    page["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["source"].as_str().unwrap_or("").to_string())
        .collect()
}

fn skipped(page: &Value, source: &str) -> Option<String> {
    page["metadata"]["skipped"]
        .as_array()?
        .iter()
        .find(|s| s["source"] == source)
        .map(|s| s["reason"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_post_on_a_topic_the_user_engages_with_reaches_their_first_page() {
    let env = TestEnv::new().await;
    env.wait_for_the_listener().await;
    let (alice, chef, pundit) = (
        env.user("alice").await,
        env.user("chef").await,
        env.user("pundit").await,
    );
    let mut old = Vec::new();
    let mut docs = Vec::new();
    for i in 0..15 {
        let cooking = format!("pasta recipe with garlic number {i}");
        let football = format!("football match goal replay number {i}");
        old.push(post_at(&env, pundit, &football, 7200.0 + i as f64).await);
        docs.push(cooking);
        docs.push(football);
    }
    let doc_refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let (model_id, tfidf) = serving_model(&env, &doc_refs, 3600.0).await;
    run_with_model(&env, alice, &old, Some(model_id)).await;
    // Alice's profile: cooking terms.
    let terms: Vec<i32> = ["garlic", "pasta", "recipe"]
        .iter()
        .map(|t| tfidf.column_of(t).unwrap() as i32)
        .collect();
    let mut sorted = terms.clone();
    sorted.sort();
    env.db
        .execute(
            "INSERT INTO user_profiles (model_id, user_id, terms, weights, authors, author_weights)
             VALUES ($1, $2, $3, $4, '{}', '{}')",
            &[&model_id, &alice, &sorted, &vec![0.57f32, 0.57, 0.57]],
        )
        .await
        .unwrap();
    let t = env.token(alice);
    let (s, before) = get(env.app(), "/api/feeds?limit=20", Some(&t)).await;
    assert_eq!(s, StatusCode::OK, "{before}");
    assert!(
        skipped(&before, "fresh").is_none(),
        "the user's run has a model and a profile: {before}"
    );
    // New posts after the run: football noise, and one on cooking.
    for i in 0..10 {
        post_at(&env, pundit, &format!("football goal news {i}"), 1.0).await;
    }
    let new_post = post_at(&env, chef, "a quick garlic pasta recipe for tonight", 0.0).await;
    let page = first_page_with(&env, &t, new_post).await;
    let served = page["posts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == new_post.to_string())
        .unwrap();
    assert_eq!(served["source"], "fresh", "{page}");
    assert_eq!(served["reason"], "similar_content", "{page}");
    // The best fresh post for this profile is the cooking one: the first fresh slot.
    let first_fresh = sources_of(&page).iter().position(|s| s == "fresh").unwrap();
    assert_eq!(page["posts"][first_fresh]["id"], new_post.to_string());
    let meta: Vec<&str> = page["metadata"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        meta.contains(&"personalized") && meta.contains(&"fresh"),
        "{page}"
    );
    assert_eq!(
        page["metadata"]["source"], "cache",
        "written back by the first request"
    );
    // Observable: per-source serve counts, first-served age, the delay to eligibility.
    let text = env.state.metrics.render(&env.state.pool_gauge());
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
    };
    assert!(value("feedrank_feed_posts_served_total{source=\"fresh\"}") >= 1.0);
    assert!(value("feedrank_feed_first_served_age_seconds_count{source=\"fresh\"}") >= 1.0);
    assert!(value("feedrank_fresh_eligibility_delay_seconds_count") >= 11.0);

    // A later post on the topic, once the user's fresh ranking is memoized with the first one in
    // it: ranked on its own and merged in, it reaches the page and leads the fresh slots.
    let later = post_at(
        &env,
        chef,
        "garlic pasta recipe with more garlic and pasta",
        0.0,
    )
    .await;
    let page = first_page_with(&env, &t, later).await;
    let fresh: Vec<String> = page["posts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"] == "fresh")
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        fresh[..2].contains(&later.to_string()) && fresh[..2].contains(&new_post.to_string()),
        "the two cooking posts lead the fresh slots: {page}"
    );

    // Deleted: never served stale from the pool.
    env.db
        .execute("DELETE FROM posts WHERE id = $1", &[&new_post])
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let (_, page) = get(env.app(), "/api/feeds?limit=20", Some(&t)).await;
        if !ids(&page).contains(&new_post) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still served: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_with_limit_100_yields_1000_distinct_posts_with_no_empty_page() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let authors: Vec<Uuid> = env
        .db
        .query(
            "INSERT INTO users (username) SELECT 'author' || g FROM generate_series(1, 50) g
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let posts: Vec<Uuid> = env
        .db
        .query(
            "INSERT INTO posts (user_id, content, created_at, updated_at)
             SELECT ($1::uuid[])[1 + g % 50], 'post ' || g,
                    now() - make_interval(secs => g), now() - make_interval(secs => g)
             FROM generate_series(1, 1300) g RETURNING id",
            &[&authors],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let items: Vec<_> = posts[..200]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                *p,
                1.0 - i as f32 * 0.001,
                feedrank_core::config::Reason::SimilarUsers,
            )
        })
        .collect();
    env.cache_feed(alice, &items, chrono::Utc::now().timestamp() - 3600)
        .await;
    let t = env.token(alice);
    let mut seen = HashSet::new();
    let mut sources = HashSet::new();
    for page in 0..10 {
        let (s, b) = get(
            env.app(),
            &format!("/api/feeds?limit=100&offset={}", page * 100),
            Some(&t),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let got = ids(&b);
        assert_eq!(got.len(), 100, "page {page} is short: {}", b["metadata"]);
        for id in got {
            assert!(seen.insert(id), "page {page} repeats {id}");
        }
        sources.extend(sources_of(&b));
    }
    assert_eq!(seen.len(), 1000);
    assert!(
        sources.contains("personalized") && sources.contains("fallback"),
        "{sources:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trending_counters_move_with_track_and_rank_the_feed() {
    let env = TestEnv::new().await;
    let (bob, carol, author) = (
        env.user("bob").await,
        env.user("carol").await,
        env.user("author").await,
    );
    let posts = env.posts(author, 30).await;
    let (hot, warm) = (posts[3], posts[7]);
    let tb = env.token(bob);
    let (_, before) = get(env.app(), "/api/feeds?limit=10", Some(&tb)).await;
    assert!(
        !sources_of(&before).contains(&"trending".to_string()),
        "{before}"
    );
    let tc = env.token(carol);
    for (target, kind) in [(hot, "like"), (hot, "share"), (warm, "view")] {
        let (s, b) = post(
            env.app(),
            "/api/track",
            &tc,
            &json!({"postId": target, "interactionType": kind}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    // The counters: weighted by type (like 4 + share 6, view 1) in the current bucket.
    let mut r = env.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}trending:*", env.prefix))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let mut score = 0.0;
    for k in &keys {
        let s: Option<f64> = redis::cmd("ZSCORE")
            .arg(k)
            .arg(hot.to_string())
            .query_async(&mut r)
            .await
            .unwrap();
        score += s.unwrap_or(0.0);
        let ttl: i64 = redis::cmd("TTL").arg(k).query_async(&mut r).await.unwrap();
        assert!(ttl > 0, "the buckets expire");
    }
    assert_eq!(score, 10.0);
    // A retried event (same eventId) is not counted twice.
    for _ in 0..2 {
        let (s, b) = post(
            env.app(),
            "/api/track",
            &tc,
            &json!({"postId": warm, "interactionType": "click", "eventId": "once"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    // Bob's feed (no recommendations): the trending posts first, hottest first, then the rest.
    let start = Instant::now();
    let page = loop {
        let (_, page) = get(env.app(), "/api/feeds?limit=10", Some(&tb)).await;
        if sources_of(&page).contains(&"trending".to_string()) {
            break page;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = ids(&page);
    assert_eq!(got[..2], [hot, warm], "{page}");
    assert_eq!(
        page["posts"][1]["score"].as_f64().unwrap().round(),
        3.0,
        "view 1 + click 2"
    );
    assert_eq!(page["posts"][0]["reason"], "trending");
    assert_eq!(sources_of(&page)[2], "fallback");
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_three_likes_the_liked_posts_neighbours_reach_the_next_first_page() {
    let env = TestEnv::new().await;
    let (alice, liked_author) = (env.user("alice").await, env.user("liked").await);
    let old = spread_posts(&env, "author", 20, 3).await;
    let liked = env.posts(liked_author, 3).await;
    let mut neighbours = Vec::new();
    for i in 0..3 {
        let baker = env.user(&format!("baker{i}")).await;
        neighbours.push(env.posts(baker, 3).await);
    }
    let (model_id, _) = serving_model(&env, &["bread", "cake"], 3600.0).await;
    run_with_model(&env, alice, &old, Some(model_id)).await;
    for (l, ns) in liked.iter().zip(&neighbours) {
        store_neighbors(&env, model_id, *l, ns).await;
    }
    let t = env.token(alice);
    let (_, before) = get(env.app(), "/api/feeds?limit=50", Some(&t)).await;
    let all_neighbours: HashSet<Uuid> = neighbours.iter().flatten().copied().collect();
    assert!(
        ids(&before).iter().all(|p| !all_neighbours.contains(p)),
        "{before}"
    );
    like_each(&env, &t, &liked).await;
    let (s, page) = get(env.app(), "/api/feeds?limit=50", Some(&t)).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let posts = page["posts"].as_array().unwrap();
    let because: Vec<&Value> = posts
        .iter()
        .filter(|p| p["source"] == "because_you_liked")
        .collect();
    assert!(because.len() >= 3, "{page}");
    // Most recent like first: the neighbours of the third like lead, each naming it.
    assert_eq!(because[0]["id"], neighbours[2][0].to_string(), "{page}");
    assert_eq!(because[0]["becauseOf"], liked[2].to_string());
    for p in &because {
        assert_eq!(p["reason"], "because_you_liked");
        assert!(all_neighbours.contains(&Uuid::parse_str(p["id"].as_str().unwrap()).unwrap()));
    }
    // The liked posts themselves are seen now: not served again.
    assert!(ids(&page).iter().all(|p| !liked.contains(p)));

    // The neighbour lists are memoized with their authors: a neighbour deleted since is not
    // served, and the next one of its list takes its place.
    env.wait_for_the_listener().await;
    let gone = neighbours[2][0];
    env.db
        .execute("DELETE FROM posts WHERE id = $1", &[&gone])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, page) = get(env.app(), "/api/feeds?limit=50", Some(&t)).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let because: Vec<&Value> = page["posts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["source"] == "because_you_liked")
            .collect();
        if !ids(&page).contains(&gone) {
            assert_eq!(because[0]["id"], neighbours[2][1].to_string(), "{page}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted neighbour is still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_or_with_an_older_one_the_feed_is_served_without_those_sources() {
    let env = TestEnv::new().await;
    env.wait_for_the_listener().await;
    let (alice, bob) = (env.user("alice").await, env.user("bob").await);
    let posts = spread_posts(&env, "author", 10, 2).await;
    // Alice's run has no model (written before migration V7).
    run_with_model(&env, alice, &posts[..10], None).await;
    let (s, page) = get(env.app(), "/api/feeds?limit=10", Some(&env.token(alice))).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(ids(&page).len(), 10);
    assert!(skipped(&page, "fresh").is_some(), "{page}");
    assert_eq!(
        skipped(&page, "because_you_liked").as_deref(),
        Some("no model for the user's run")
    );
    // Bob's run names a model that is no longer the newest: his profile is of an older model.
    let (old_model, _) = serving_model(&env, &["apple banana", "cherry date"], 7200.0).await;
    run_with_model(&env, bob, &posts[..10], Some(old_model)).await;
    let (newer, _) = serving_model(&env, &["apple banana", "cherry date"], 60.0).await;
    run_with_model(&env, alice, &posts[..5], Some(newer)).await;
    // (the API learns of the new runs by notification: polled, with a wide bound)
    let start = Instant::now();
    let page = loop {
        let (s, page) = get(env.app(), "/api/feeds?limit=10", Some(&env.token(bob))).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        if skipped(&page, "fresh").as_deref() == Some("profile from an older model") {
            break page;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ids(&page).len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_is_refused_without_the_operator_token_and_closed_by_default() {
    let env = TestEnv::with(|c| c.admin_token = Some("operator-secret".into())).await;
    let alice = env.user("alice").await;
    let posts = spread_posts(&env, "author", 5, 2).await;
    run_with_model(&env, alice, &posts, None).await;
    let path = format!("/api/feeds/explain?userId={alice}");
    let with = |token: Option<&str>, bearer: Option<String>| {
        let mut b = axum::http::Request::get(&path);
        if let Some(t) = token {
            b = b.header("x-admin-token", t);
        }
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(axum::body::Body::empty()).unwrap()
    };
    // No token, a wrong one, or a user's own token: refused.
    for req in [
        with(None, None),
        with(Some("operator-secre"), None),
        with(None, Some(env.token(alice))),
    ] {
        let (s, b) = send(env.app(), req).await;
        assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (s, b) = send(env.app(), with(Some("operator-secret"), None)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["userId"], alice.to_string());
    assert_eq!(b["sources"]["personalized"].as_array().unwrap().len(), 10);
    let first = &b["sources"]["personalized"][0];
    assert_eq!(
        first["components"]["collaborative"].as_f64().unwrap(),
        0.9f32 as f64
    );
    assert_eq!(b["blend"][0]["source"], "personalized");
    // Missing user id: 400 naming it.
    let mut req = axum::http::Request::get("/api/feeds/explain");
    req = req.header("x-admin-token", "operator-secret");
    let (s, b) = send(env.app(), req.body(axum::body::Body::empty()).unwrap()).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(b["field"], "userId");
    // Without FEEDRANK_ADMIN_TOKEN the route does not exist, whatever the header says.
    let closed = feedrank_api::router(env.other_state(|c| c.admin_token = None));
    let (s, b) = send(closed, with(Some("operator-secret"), None)).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_posts_keeps_the_fresh_pool_bounded_to_the_newest() {
    let env = TestEnv::with(|c| c.admin_token = Some("op".into())).await;
    env.wait_for_the_listener().await;
    let (alice, bob) = (env.user("alice").await, env.user("bob").await);
    let mut config = ScoringConfig::default();
    config.sources.fresh.pool_size = 5;
    let (model, _) =
        serving_model_with(&env, &["apple banana", "cherry date"], 3600.0, &config).await;
    run_with_model(&env, bob, &[], Some(model)).await;
    let newest: Vec<Uuid> = env
        .db
        .query(
            "INSERT INTO posts (user_id, content, created_at, updated_at)
             SELECT $1, 'apple ' || g, now() - make_interval(secs => g), now() - make_interval(secs => g)
             FROM generate_series(1, 50) g ORDER BY g RETURNING id",
            &[&bob],
        )
        .await
        .unwrap()
        .iter()
        .take(5)
        .map(|r| r.get(0))
        .collect();
    let explain = || async {
        let req = axum::http::Request::get(format!("/api/feeds/explain?userId={alice}"))
            .header("x-admin-token", "op")
            .body(axum::body::Body::empty())
            .unwrap();
        send(env.app(), req).await
    };
    let start = Instant::now();
    loop {
        let (s, b) = explain().await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let fresh: Vec<Uuid> = b["sources"]["fresh"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| Uuid::parse_str(p["postId"].as_str().unwrap()).unwrap())
            .collect();
        assert!(
            fresh.len() <= 5,
            "the pool holds at most pool_size posts: {b}"
        );
        if fresh.len() == 5 {
            // the newest five, newest first (no profile: recency decides)
            assert_eq!(fresh, newest, "{b}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The fresh pool reads its newcomers' live engagement bucket by bucket, so that a reload does not
/// hold Redis for a union of the whole trending window: the same sums as the union.
#[tokio::test]
async fn a_few_posts_engagement_read_bucket_by_bucket_equals_the_union_of_the_window() {
    use feedrank_api::redis_store::FEW_MEMBERS;
    use feedrank_api::trending;
    use feedrank_core::config::InteractionType;
    let env = TestEnv::new().await;
    let config = ScoringConfig::default();
    let s = &config.sources.trending;
    let (redis, metrics) = (&env.state.redis, &env.state.metrics);
    let now = feedrank_api::clock::now_ms();
    let width = s.bucket_minutes as i64 * 60_000;
    let posts: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    // post i: a like in each of the i + 1 latest buckets; post 0 also a share two buckets back
    let mut events = vec![(posts[0], InteractionType::Share, now - 2 * width)];
    for (i, p) in posts.iter().enumerate() {
        for age in 0..=i as i64 {
            events.push((*p, InteractionType::Like, now - age * width));
        }
    }
    trending::record(redis, metrics, &config, &events).await;
    let asked: Vec<Uuid> = posts.iter().copied().chain([Uuid::new_v4()]).collect();
    let by_bucket = trending::engagement(redis, metrics, s, now, &asked).await;
    // the same posts among more than FEW_MEMBERS: read from the union
    let many: Vec<Uuid> = asked
        .iter()
        .copied()
        .chain((0..FEW_MEMBERS).map(|_| Uuid::new_v4()))
        .collect();
    let by_union = trending::engagement(redis, metrics, s, now, &many).await;
    assert_eq!(by_bucket[..], by_union[..asked.len()]);
    let like = config.interaction_weights.weight_of("like").unwrap();
    assert_eq!(by_bucket[4], 5.0 * like, "five buckets, undecayed");
    assert!(
        by_bucket[1..5].windows(2).all(|w| w[0] < w[1]),
        "{by_bucket:?}"
    );
    assert_eq!(by_bucket[5], 0.0, "a post never counted");
}

/// A cold start: the concurrent first pages of a user who liked posts since the list was built
/// load each liked post's neighbour list from PostgreSQL once, not once per page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_pages_load_each_neighbour_list_once() {
    let env = TestEnv::new().await;
    let (alice, liked_author) = (env.user("alice").await, env.user("liked").await);
    let old = spread_posts(&env, "author", 20, 3).await;
    let liked = env.posts(liked_author, 3).await;
    let baker = env.user("baker").await;
    let neighbours = env.posts(baker, 3).await;
    let (model_id, _) = serving_model(&env, &["bread", "cake"], 3600.0).await;
    run_with_model(&env, alice, &old, Some(model_id)).await;
    for l in &liked {
        store_neighbors(&env, model_id, *l, &neighbours).await;
    }
    let t = env.token(alice);
    like_each(&env, &t, &liked).await;
    let before = env.state.metrics.neighbor_lists_loaded_total();
    let mut pages = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (app, t) = (env.app(), t.clone());
        pages.spawn(async move { get(app, "/api/feeds?limit=50", Some(&t)).await });
    }
    while let Some(page) = pages.join_next().await {
        let (s, page) = page.unwrap();
        assert_eq!(s, StatusCode::OK, "{page}");
        assert!(
            page["posts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["source"] == "because_you_liked"),
            "{page}"
        );
    }
    assert_eq!(
        env.state.metrics.neighbor_lists_loaded_total() - before,
        3,
        "one load per liked post"
    );
}
