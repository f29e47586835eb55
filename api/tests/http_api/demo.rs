//! /demo (the static page) and /demo/users (development tokens, only with FEEDRANK_DEMO=1).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_as_html_without_a_token() {
    let env = TestEnv::new().await;
    let resp = env
        .app()
        .oneshot(Request::get("/demo").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = resp.into_body().collect().await.unwrap().to_bytes();
    let html = String::from_utf8_lossy(&html);
    assert!(html.contains("<title>feedrank demo</title>"));
    // The page calls the endpoints this API serves.
    for path in ["/demo/users", "/api/feeds", "source=fallback", "/api/track"] {
        assert!(html.contains(path), "the page does not call {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_list_with_tokens_is_off_unless_demo_mode_is_on() {
    // Default configuration (FEEDRANK_DEMO unset): no tokens handed out.
    let env = TestEnv::new().await;
    assert!(!env.cfg.demo, "demo mode must be off by default");
    let alice = env.user("alice").await;
    env.posts(alice, 3).await;
    let (s, b) = get(env.app(), "/demo/users", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    assert!(!b.to_string().contains("eyJ"), "a token leaked: {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_lists_users_with_recommendations_first_and_their_tokens_work() {
    let env = TestEnv::with(|c| c.demo = true).await;
    let author = env.user("author").await;
    let posts = env.posts(author, 4).await;
    let reader = env.user("reader").await;
    let newcomer = env.user("newcomer").await;
    let items: Vec<_> = posts
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 1.0 - i as f64 / 10.0, [0.9, 0.1, 0.1, 0.1]))
        .collect();
    env.recommend(reader, &items, 60.0).await;

    let (s, b) = get(env.app(), "/demo/users", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let users = b["users"].as_array().expect("users[]");
    assert_eq!(users[0]["id"], reader.to_string(), "{b}");
    assert_eq!(users[0]["recommendations"], 4, "{b}");
    assert!(
        users
            .iter()
            .any(|u| u["id"] == newcomer.to_string() && u["recommendations"] == 0),
        "a user without recommendations is listed too: {b}"
    );

    // The handed-out token is a working bearer token for that user.
    let token = users[0]["token"].as_str().unwrap();
    let (s, feed) = get(env.app(), "/api/feeds?limit=10", Some(token)).await;
    assert_eq!(s, StatusCode::OK, "{feed}");
    // Best first (at most AUTHOR_DIVERSITY_CAP = 3 posts of one author on a page).
    assert_eq!(ids(&feed)[..3], posts[..3]);
    assert_eq!(feed["posts"][0]["reason"], "similar_users", "{feed}");
    // And the page's comparison column: the same user's random fallback.
    let (s, fb) = get(
        env.app(),
        "/api/feeds?limit=10&source=fallback",
        Some(token),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{fb}");
    assert_eq!(fb["metadata"]["source"], "fallback", "{fb}");
}
