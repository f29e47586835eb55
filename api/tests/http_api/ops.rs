//! /healthz, /readyz, /metrics, /openapi.json and unknown routes.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let env = TestEnv::new().await;
    let (s, b) = get(env.app(), "/healthz", None).await;
    assert_eq!((s, b), (StatusCode::OK, json!({"status": "ok"})));
    let (s, b) = get(env.app(), "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b,
        json!({"status": "ready", "postgres": "ok", "redis": "ok"})
    );
    let (s, b) = get(env.app(), "/no/such/route", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_sources_and_the_pool() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    env.posts(alice, 2).await;
    let t = env.token(alice);
    get(env.app(), "/api/feeds", Some(&t)).await;
    get(env.app(), "/api/feeds?limit=0", Some(&t)).await;
    let resp = env
        .app()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for line in [
        r#"feedrank_http_requests_total{method="GET",route="/api/feeds",status="200"} 1"#,
        r#"feedrank_http_requests_total{method="GET",route="/api/feeds",status="400"} 1"#,
        r#"feedrank_feed_responses_total{source="fallback"} 1"#,
        r#"feedrank_cache_misses_total 1"#,
        r#"feedrank_http_request_duration_seconds_count{method="GET",route="/api/feeds",status="200"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(text.contains("feedrank_db_pool_max_size 16"));
    assert!(text.contains("feedrank_cache_hit_ratio 0"));
}

/// docs/openapi.json is the generated document, committed; regenerate it with
/// `cargo run -p feedrank-api -- openapi > docs/openapi.json` (or UPDATE_OPENAPI=1 cargo test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_matches_the_committed_one() {
    let env = TestEnv::new().await;
    let resp = env
        .app()
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let served = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/feeds",
        "/api/track",
        "/api/track/batch",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    let params: Vec<&str> = doc["paths"]["/api/feeds"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["limit", "offset", "refresh", "seed", "source"]);
    // This test only compares; `make openapi` rewrites the file.
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == served,
        "docs/openapi.json is out of date: run `make openapi`"
    );
}
