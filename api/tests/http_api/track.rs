//! POST /api/track and /api/track/batch: validation, idempotency, durability, concurrency.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_stored_before_201_and_a_retry_with_its_event_id_stores_nothing_new() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let p = env.posts(alice, 1).await[0];
    let t = env.token(alice);
    let body = json!({"postId": p, "interactionType": "like", "metadata": {"duration": 5000, "scrollDepth": 0.8}, "eventId": "evt-1"});
    let (s, b) = post(env.app(), "/api/track", &t, &body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["success"], true);
    let id = Uuid::parse_str(b["interactionId"].as_str().unwrap()).unwrap();
    let row = env
        .db
        .query_one("SELECT user_id, post_id, interaction_type, metadata, event_id FROM user_interactions WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), alice);
    assert_eq!(row.get::<_, Uuid>(1), p);
    assert_eq!(row.get::<_, String>(2), "like");
    assert_eq!(
        row.get::<_, Value>(3),
        json!({"duration": 5000, "scrollDepth": 0.8})
    );
    assert_eq!(row.get::<_, String>(4), "evt-1");

    for _ in 0..3 {
        let (s, b) = post(env.app(), "/api/track", &t, &body).await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(b["interactionId"], id.to_string(), "the original id");
    }
    assert_eq!(env.count("SELECT count(*) FROM user_interactions").await, 1);
    // Without an event id every request is a new event.
    let (_, b1) = post(
        env.app(),
        "/api/track",
        &t,
        &json!({"postId": p, "interactionType": "view"}),
    )
    .await;
    let (_, b2) = post(
        env.app(),
        "/api/track",
        &t,
        &json!({"postId": p, "interactionType": "view"}),
    )
    .await;
    assert_ne!(b1["interactionId"], b2["interactionId"]);
    assert_eq!(env.count("SELECT count(*) FROM user_interactions").await, 3);
    // Event ids are per user: another user may use the same id.
    let bob = env.user("bob").await;
    let (s, b) = post(env.app(), "/api/track", &env.token(bob), &body).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_ne!(b["interactionId"], id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_post_is_404_and_bad_bodies_are_400_naming_the_problem() {
    let env = TestEnv::with(|c| c.body_limit = 16 * 1024).await;
    let alice = env.user("alice").await;
    let p = env.posts(alice, 1).await[0];
    let t = env.token(alice);
    let (s, b) = post(
        env.app(),
        "/api/track",
        &t,
        &json!({"postId": Uuid::new_v4(), "interactionType": "like"}),
    )
    .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");

    let big_meta: serde_json::Map<String, Value> = (0..300)
        .map(|i| (format!("k{i}"), json!("xxxxxxxx")))
        .collect();
    for (body, field) in [
        (json!({"interactionType": "like"}), "postId"),
        (
            json!({"postId": "not-a-uuid", "interactionType": "like"}),
            "postId",
        ),
        (json!({"postId": 7, "interactionType": "like"}), "postId"),
        (json!({"postId": p}), "interactionType"),
        (
            json!({"postId": p, "interactionType": "love"}),
            "interactionType",
        ),
        (
            json!({"postId": p, "interactionType": "like", "metadata": [1, 2]}),
            "metadata",
        ),
        (
            json!({"postId": p, "interactionType": "like", "metadata": "text"}),
            "metadata",
        ),
        (
            json!({"postId": p, "interactionType": "like", "metadata": big_meta}),
            "metadata",
        ),
        (
            json!({"postId": p, "interactionType": "like", "eventId": ""}),
            "eventId",
        ),
        (
            json!({"postId": p, "interactionType": "like", "eventId": "x".repeat(129)}),
            "eventId",
        ),
        (
            json!({"postId": p, "interactionType": "like", "eventId": 12}),
            "eventId",
        ),
        (json!([1, 2]), "body"),
    ] {
        let (s, b) = post(env.app(), "/api/track", &t, &body).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(b["field"], field, "{body}: {b}");
    }
    // Not JSON at all, and a body over the size limit.
    for raw in [b"{not json".to_vec(), vec![b' '; 20 * 1024]] {
        let req = Request::post("/api/track")
            .header("authorization", format!("Bearer {t}"))
            .body(Body::from(raw))
            .unwrap();
        let (s, b) = send(env.app(), req).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(b["field"], "body", "{b}");
    }
    assert_eq!(env.count("SELECT count(*) FROM user_interactions").await, 0);
    // A metadata object of exactly the limit is fine; text/plain (sendBeacon) is accepted.
    let req = Request::post("/api/track")
        .header("authorization", format!("Bearer {t}"))
        .header("content-type", "text/plain")
        .body(Body::from(
            json!({"postId": p, "interactionType": "view"}).to_string(),
        ))
        .unwrap();
    let (s, b) = send(env.app(), req).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_per_event_and_is_bounded() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let p = env.posts(alice, 2).await;
    let t = env.token(alice);
    let body = json!({"events": [
        {"postId": p[0], "interactionType": "view", "eventId": "b-1"},
        {"postId": Uuid::new_v4(), "interactionType": "view"},
        {"postId": p[1], "interactionType": "nope"},
        {"postId": p[1], "interactionType": "click", "eventId": "b-2"},
    ]});
    let (s, b) = post(env.app(), "/api/track/batch", &t, &body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["accepted"], 2);
    let r = b["results"].as_array().unwrap();
    assert_eq!(
        r.iter()
            .map(|x| x["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [201, 404, 400, 201]
    );
    assert_eq!(r[2]["error"]["field"], "events[2].interactionType");
    assert_eq!(env.count("SELECT count(*) FROM user_interactions").await, 2);
    // Retrying the batch stores nothing new and returns the same ids.
    let (_, again) = post(env.app(), "/api/track/batch", &t, &body).await;
    assert_eq!(again["results"][0]["interactionId"], r[0]["interactionId"]);
    assert_eq!(again["results"][3]["interactionId"], r[3]["interactionId"]);
    assert_eq!(env.count("SELECT count(*) FROM user_interactions").await, 2);

    let too_many: Vec<Value> = (0..101)
        .map(|_| json!({"postId": p[0], "interactionType": "view"}))
        .collect();
    for bad in [
        json!({"events": too_many}),
        json!({"events": []}),
        json!({"evts": []}),
    ] {
        let (s, b) = post(env.app(), "/api/track/batch", &t, &bad).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(b["field"], "events");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_from_fifty_concurrent_tasks_store_exactly_ten_thousand_rows() {
    let env = TestEnv::with(|c| c.pg_pool_size = 16).await;
    let users: Vec<Uuid> = futures_users(&env, 5).await;
    let author = users[0];
    let posts = Arc::new(env.posts(author, 20).await);
    let app = env.app();
    let mut tasks = Vec::new();
    for task in 0..50usize {
        let app = app.clone();
        let posts = posts.clone();
        let user = users[task % users.len()];
        let token = env.token(user);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..200usize {
                let kind = ["view", "click", "like", "share"][i % 4];
                let body = json!({
                    "postId": posts[(task + i) % posts.len()],
                    "interactionType": kind,
                    "eventId": format!("t{task}-e{i}"),
                });
                let (s, b) = post(app.clone(), "/api/track", &token, &body).await;
                assert_eq!(s, StatusCode::CREATED, "{b}");
                ok += 1;
                // Every tenth event is retried at once, as a client whose answer was lost would.
                if i % 10 == 0 {
                    let (s2, b2) = post(app.clone(), "/api/track", &token, &body).await;
                    assert_eq!(s2, StatusCode::CREATED);
                    assert_eq!(b2["interactionId"], b["interactionId"]);
                }
            }
            ok
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    assert_eq!(accepted, 10_000);
    assert_eq!(
        env.count("SELECT count(*) FROM user_interactions").await,
        10_000
    );
    assert_eq!(
        env.count("SELECT count(DISTINCT (user_id, event_id)) FROM user_interactions")
            .await,
        10_000
    );
}

async fn futures_users(env: &TestEnv, n: usize) -> Vec<Uuid> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(env.user(&format!("user{i}")).await);
    }
    v
}
