//! The served log (GET /api/feeds → served_pages / served_impressions) and attributed events
//! (POST /api/track with requestId and position).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::NaiveDate;
use feedrank_api::config::ServedLogConfig;
use feedrank_api::metrics::ServedLogDrop;
use feedrank_api::served_log::{reason_code, source_code};
use feedrank_core::config::{Reason, ScoringConfig, Source};
use feedrank_core::tfidf::{TfidfModel, TfidfParams};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

use crate::common::*;

/// One served post as the log holds it: (post, position, source, reason, run).
type Impression = (Uuid, i32, String, Option<String>, Option<i64>);

async fn impressions(env: &TestEnv, request_id: Uuid) -> Vec<Impression> {
    env.db
        .query(
            "SELECT post_id, position, source, reason, run_id FROM served_impressions
             WHERE request_id = $1 ORDER BY position",
            &[&request_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// Waits (10 s at most) until the page of `request_id` is in the log.
async fn logged(env: &TestEnv, request_id: Uuid) -> Vec<Impression> {
    let start = Instant::now();
    loop {
        let rows = impressions(env, request_id).await;
        if !rows.is_empty() {
            return rows;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "page {request_id} never reached the served log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn request_id(page: &Value) -> Uuid {
    Uuid::parse_str(page["metadata"]["requestId"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("metadata.requestId is not a UUID ({e}): {page}"))
}

/// What the page itself says of its posts, as the log should hold them.
fn expected(page: &Value, offset: i32, run: Option<i64>) -> Vec<Impression> {
    ids(page)
        .into_iter()
        .zip(page["posts"].as_array().unwrap())
        .enumerate()
        .map(|(i, (id, p))| {
            (
                id,
                offset + i as i32,
                p["source"].as_str().unwrap().to_string(),
                p["reason"].as_str().map(str::to_string),
                run,
            )
        })
        .collect()
}

async fn metrics_text(state: &feedrank_api::AppState) -> String {
    let resp = feedrank_api::router(state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A test environment whose pages are not held back by the author cap (one author writes every
/// post here), with `tweak` applied to the served log's settings.
async fn env_with(tweak: impl FnOnce(&mut ServedLogConfig)) -> TestEnv {
    TestEnv::with(|c| {
        c.author_diversity_cap = 100;
        tweak(&mut c.served_log);
    })
    .await
}

/// Waits (10 s at most) until the /metrics text of `state` holds `line`.
async fn wait_for_metric(state: &feedrank_api::AppState, line: &str) {
    let start = Instant::now();
    loop {
        let text = metrics_text(state).await;
        if text.contains(line) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {line:?} in {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A user with 3 recommended posts (a complete run in PostgreSQL) among 12 posts; returns the
/// user and the run.
async fn recommended_user(env: &TestEnv) -> (Uuid, i64) {
    let author = env.user("author").await;
    let posts = env.posts(author, 12).await;
    let alice = env.user("alice").await;
    let items: Vec<(Uuid, f64, [f64; 4])> = posts[..3]
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 0.9 - i as f64 * 0.1, [0.9, 0.1, 0.2, 0.1]))
        .collect();
    let run = env.recommend(alice, &items, 60.0).await;
    (alice, run)
}

/// Gives `run` a serving model (a TF-IDF fitted on two documents, the default configuration);
/// returns the model's id.
async fn give_a_model(env: &TestEnv, run: i64) -> i64 {
    let (tfidf, _) =
        TfidfModel::fit_transform(&["one two", "two three"], TfidfParams::default()).unwrap();
    let config = ScoringConfig::default().to_json();
    let model: i64 = env
        .db
        .query_one(
            "WITH m AS (INSERT INTO recommendation_models (snapshot_at, config, tfidf)
                        VALUES (now() - interval '1 hour', $1::text::jsonb, $2) RETURNING id)
             UPDATE recommendation_runs SET model_id = (SELECT id FROM m) WHERE id = $3
             RETURNING model_id",
            &[&config, &tfidf.to_json(), &run],
        )
        .await
        .unwrap()
        .get(0);
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pages_posts_are_logged_with_positions_sources_reasons_run_and_its_request_id() {
    let env = env_with(|c| c.flush_interval = Duration::from_millis(50)).await;
    let (alice, run) = recommended_user(&env).await;
    let t = env.token(alice);

    // The first page: the run's 3 posts (from the database), then the fallback's.
    let (s, first) = get(env.app(), "/api/feeds?limit=5", Some(&t)).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["metadata"]["source"], "db", "{first}");
    let first_id = request_id(&first);
    let rows = logged(&env, first_id).await;
    assert_eq!(rows, expected(&first, 0, Some(run)));
    let sources: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(
        sources,
        [
            "personalized",
            "personalized",
            "personalized",
            "fallback",
            "fallback"
        ]
    );
    assert!(
        rows[..3].iter().all(|r| r.3.is_some()) && rows[3..].iter().all(|r| r.3.is_none()),
        "recommended posts have their reason, the fallback's none: {rows:?}"
    );

    // The next page (from the cache the first one wrote back) continues the positions.
    let (s, second) = get(env.app(), "/api/feeds?limit=5&offset=5", Some(&t)).await;
    assert_eq!(s, StatusCode::OK, "{second}");
    let second_id = request_id(&second);
    assert_ne!(second_id, first_id, "every response has its own id");
    let rows = logged(&env, second_id).await;
    assert_eq!(rows, expected(&second, 5, Some(run)));
    assert_eq!(
        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        [5, 6, 7, 8, 9]
    );
    let row = env
        .db
        .query_one(
            "SELECT DISTINCT user_id, model_id FROM served_impressions WHERE request_id = $1",
            &[&second_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), alice);
    assert_eq!(row.get::<_, Option<i64>>(1), None, "a run without a model");

    // A user without recommendations: fallback rows, no run.
    let bob = env.user("bob").await;
    let (_, page) = get(env.app(), "/api/feeds?limit=4", Some(&env.token(bob))).await;
    assert_eq!(page["metadata"]["source"], "fallback");
    let rows = logged(&env, request_id(&page)).await;
    assert_eq!(rows, expected(&page, 0, None));

    wait_for_metric(&env.state, "feedrank_served_log_written_total 14\n").await;
    let text = metrics_text(&env.state).await;
    assert!(text.contains("feedrank_served_log_dropped_total{reason=\"queue_full\"} 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_version_is_the_runs_serving_model() {
    let env = env_with(|c| c.flush_interval = Duration::from_millis(50)).await;
    let (alice, run) = recommended_user(&env).await;
    let model = give_a_model(&env, run).await;
    let (s, page) = get(env.app(), "/api/feeds?limit=5", Some(&env.token(alice))).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let id = request_id(&page);
    logged(&env, id).await;
    let versions: Vec<(Option<i64>, Option<i64>)> = env
        .db
        .query(
            "SELECT DISTINCT run_id, model_id FROM served_impressions WHERE request_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(versions, [(Some(run), Some(model))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_the_writer_down_writes_what_is_queued() {
    let mut env = env_with(|c| {
        // Nothing would be written for an hour but for the shutdown.
        c.flush_interval = Duration::from_secs(3600);
        c.batch_rows = 1_000_000;
    })
    .await;
    let (alice, run) = recommended_user(&env).await;
    let t = env.token(alice);
    let mut pages = Vec::new();
    for offset in [0, 5] {
        let (s, page) = get(
            env.app(),
            &format!("/api/feeds?limit=5&offset={offset}"),
            Some(&t),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        pages.push((page, offset));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.count("SELECT count(*) FROM served_pages").await, 0);

    let writer = env.served_log_writer.take().expect("the log is on");
    assert!(writer.shutdown(Duration::from_secs(10)).await);
    for (page, offset) in &pages {
        assert_eq!(
            impressions(&env, request_id(page)).await,
            expected(page, *offset, Some(run))
        );
    }
    // A page served after the writer stopped is counted, not queued.
    let (s, _) = get(env.app(), "/api/feeds?limit=5", Some(&t)).await;
    assert_eq!(s, StatusCode::OK);
    let dropped = env
        .state
        .metrics
        .served_log
        .dropped_total(ServedLogDrop::QueueFull);
    assert_eq!(dropped, 5);
}

/// GET `path` from the server on `port` with `token`, over a plain TCP connection (the tests have
/// no HTTP client); the body as JSON.
async fn get_over_tcp(port: u16, path: &str, token: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_writes_the_served_log_when_sigterm_stops_it() {
    let env = env_with(|_| {}).await;
    let (alice, run) = recommended_user(&env).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_feedrank-api"))
        .arg("serve")
        .env_clear()
        .env("AUTH_SECRET", SECRET)
        .env("DATABASE_URL", &env.db_url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_KEY_PREFIX", &env.prefix)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("AUTHOR_DIVERSITY_CAP", "100")
        // Nothing would be written for an hour but for the shutdown.
        .env("SERVED_LOG_FLUSH_MS", "3600000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = get_over_tcp(port, "/api/feeds?limit=5", &env.token(alice)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.count("SELECT count(*) FROM served_pages").await, 0);

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    assert_eq!(
        impressions(&env, request_id(&page)).await,
        expected(&page, 0, Some(run))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_pages_without_waiting_and_counts_their_posts() {
    let env = env_with(|_| {}).await;
    let (alice, _) = recommended_user(&env).await;
    let t = env.token(alice);
    // A state whose writer is not started yet, with room for one page.
    let state = env.other_state(|c| c.served_log.queue_pages = 1);
    let mut ids_served = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let (s, page) = get(
            feedrank_api::router(state.clone()),
            "/api/feeds?limit=4",
            Some(&t),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert!(started.elapsed() < Duration::from_secs(5));
        ids_served.push(request_id(&page));
    }
    let text = metrics_text(&state).await;
    assert!(
        text.contains("feedrank_served_log_dropped_total{reason=\"queue_full\"} 8\n"),
        "two pages of 4 posts dropped: {text}"
    );
    // The queued page is the first; the writer writes it and nothing else.
    let writer = state.served_log.start_writer(state.pg.clone()).unwrap();
    assert!(writer.shutdown(Duration::from_secs(10)).await);
    assert_eq!(impressions(&env, ids_served[0]).await.len(), 4);
    assert_eq!(
        env.count("SELECT count(*) FROM served_impressions").await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_log_off_nothing_is_queued_or_written() {
    let env = env_with(|c| {
        c.enabled = false;
        c.flush_interval = Duration::from_millis(20);
    })
    .await;
    assert!(env.served_log_writer.is_none() && !env.state.served_log.is_on());
    let (alice, _) = recommended_user(&env).await;
    let (s, page) = get(env.app(), "/api/feeds?limit=5", Some(&env.token(alice))).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    request_id(&page);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.count("SELECT count(*) FROM served_pages").await, 0);
    let text = metrics_text(&env.state).await;
    assert!(text.contains("feedrank_served_log_dropped_total{reason=\"queue_full\"} 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_daily_utc_and_dropped_past_the_retention() {
    let env = TestEnv::new().await;
    let partitions = || async {
        env.db
            .query(
                "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)
                 FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
                 WHERE h.inhparent = 'served_pages'::regclass ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 1, d).unwrap();
    env.db
        .execute("SELECT served_pages_maintain($1, 1, 3)", &[&day(10)])
        .await
        .unwrap();
    env.db.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    assert_eq!(
        partitions().await,
        [
            (
                "served_pages_20260110".to_string(),
                "FOR VALUES FROM ('2026-01-10 00:00:00+00') TO ('2026-01-11 00:00:00+00')"
                    .to_string()
            ),
            (
                "served_pages_20260111".to_string(),
                "FOR VALUES FROM ('2026-01-11 00:00:00+00') TO ('2026-01-12 00:00:00+00')"
                    .to_string()
            ),
        ]
    );
    // Again the same day: nothing changes. Four days later with 3 days' retention: the 10th is
    // dropped (before the 11th), the 11th kept.
    env.db
        .execute("SELECT served_pages_maintain($1, 1, 3)", &[&day(10)])
        .await
        .unwrap();
    assert_eq!(partitions().await.len(), 2);
    env.db
        .execute("SELECT served_pages_maintain($1, 0, 3)", &[&day(14)])
        .await
        .unwrap();
    let names: Vec<String> = partitions().await.into_iter().map(|p| p.0).collect();
    assert_eq!(names, ["served_pages_20260111", "served_pages_20260114"]);
    let refused = env
        .db
        .execute("SELECT served_pages_maintain($1, 0, 0)", &[&day(14)])
        .await
        .unwrap_err();
    let message = refused.as_db_error().map(|e| e.message()).unwrap_or("");
    assert!(message.contains("retention_days"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_source_and_reason_codes_are_the_migrations() {
    let env = TestEnv::new().await;
    let db = &env.db;
    let table = |sql: &'static str| async move {
        let mut rows: Vec<(i16, String)> = db
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        rows.sort();
        rows
    };
    // (code, name) by code, as the served log's writer has them.
    fn coded<T: Copy>(
        all: &[T],
        code: fn(T) -> u8,
        name: fn(T) -> &'static str,
    ) -> Vec<(i16, String)> {
        let mut rows: Vec<(i16, String)> = all
            .iter()
            .map(|&v| (i16::from(code(v)), name(v).to_string()))
            .collect();
        rows.sort();
        rows
    }
    assert_eq!(
        table("SELECT code, name FROM served_sources").await,
        coded(&Source::ALL, source_code, Source::as_str)
    );
    assert_eq!(
        table("SELECT code, name FROM served_reasons").await,
        coded(&Reason::ALL, reason_code, Reason::as_str)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_events_keep_their_request_id_and_position() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let posts = env.posts(alice, 2).await;
    let t = env.token(alice);
    // An id the served log has never seen is stored as given.
    let unknown = Uuid::new_v4();
    let body = json!({"postId": posts[0], "interactionType": "click", "eventId": "e-1",
                      "requestId": unknown, "position": 7});
    let (s, b) = post(env.app(), "/api/track", &t, &body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let attributed = |id: &str| {
        let id = Uuid::parse_str(id).unwrap();
        let db = &env.db;
        async move {
            let r = db
                .query_one(
                    "SELECT request_id, position FROM user_interactions WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (r.get::<_, Option<Uuid>>(0), r.get::<_, Option<i32>>(1))
        }
    };
    let first = b["interactionId"].as_str().unwrap().to_string();
    assert_eq!(attributed(&first).await, (Some(unknown), Some(7)));
    // A retry with the same event id stores nothing new, whatever it says now.
    let retry = json!({"postId": posts[0], "interactionType": "click", "eventId": "e-1",
                       "requestId": Uuid::new_v4(), "position": 1});
    let (s, b) = post(env.app(), "/api/track", &t, &retry).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(b["interactionId"], first.as_str());
    assert_eq!(attributed(&first).await, (Some(unknown), Some(7)));

    // The batch form; an event without them stores NULLs.
    let page = Uuid::new_v4();
    let (s, b) = post(
        env.app(),
        "/api/track/batch",
        &t,
        &json!({"events": [
            {"postId": posts[1], "interactionType": "like", "requestId": page, "position": 0},
            {"postId": posts[1], "interactionType": "view"},
        ]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["accepted"], 2, "{b}");
    let ids: Vec<String> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["interactionId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(attributed(&ids[0]).await, (Some(page), Some(0)));
    assert_eq!(attributed(&ids[1]).await, (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_id_or_position_is_400_naming_it_and_nothing_is_stored() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let p = env.posts(alice, 1).await[0];
    let t = env.token(alice);
    for (extra, field) in [
        (json!({"requestId": "not-a-uuid"}), "requestId"),
        (json!({"requestId": 12}), "requestId"),
        (json!({"position": -1}), "position"),
        (json!({"position": 2.5}), "position"),
        (json!({"position": "3"}), "position"),
        (json!({"position": 2147483648_i64}), "position"),
    ] {
        let mut body = json!({"postId": p, "interactionType": "click"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (s, b) = post(env.app(), "/api/track", &t, &body).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(b["field"], field, "{body}: {b}");
    }
    let (s, b) = post(
        env.app(),
        "/api/track/batch",
        &t,
        &json!({"events": [
            {"postId": p, "interactionType": "click", "position": -3},
            {"postId": p, "interactionType": "click", "requestId": "x"},
        ]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["accepted"], 0);
    assert_eq!(b["results"][0]["status"], 400);
    assert_eq!(b["results"][0]["error"]["field"], "events[0].position");
    assert_eq!(b["results"][1]["error"]["field"], "events[1].requestId");
    assert_eq!(env.count("SELECT count(*) FROM user_interactions").await, 0);
}
