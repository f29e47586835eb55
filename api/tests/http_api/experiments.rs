//! Experiments (migration V9) as GET /api/feeds serves them: `metadata.arms`, the arms' effects
//! (`random`: the random feed; `sources`: the arm's blend shares) and the served log's `arms`.

use std::time::{Duration, Instant};

use chrono::Utc;
use feedrank_core::experiment::Experiment;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

/// Stores `arms` as experiment `name` on `salt`, started a minute ago, the way `feedrank
/// experiments create` + `start` write it (the core's normalized definition); returns it.
async fn running(env: &TestEnv, name: &str, salt: &str, arms: Value) -> Experiment {
    let definition = json!({
        "name": name,
        "salt": salt,
        "starts_at": (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339(),
        "arms": arms,
    });
    let e = Experiment::from_json(&definition.to_string()).unwrap();
    let stored: Value = serde_json::from_str(&e.to_json()).unwrap();
    env.db
        .execute(
            "INSERT INTO experiments (name, salt, definition, starts_at, ends_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&e.name, &e.salt, &stored, &e.starts_at, &e.ends_at],
        )
        .await
        .unwrap();
    e
}

/// A new user whose arm in `e` is `arm` (users are made until one lands there; each call
/// makes new ones).
async fn user_in(env: &TestEnv, e: &Experiment, arm: &str) -> Uuid {
    let call = &Uuid::new_v4().simple().to_string()[..8];
    for i in 0..200 {
        let user = env.user(&format!("{arm}_{call}_{i}")).await;
        if e.arm_of(&user.to_string()).name == arm {
            return user;
        }
    }
    panic!("no user of 200 landed in arm {arm}");
}

/// `n` posts by a new author, each recommended to `user` (the run in PostgreSQL).
async fn recommended(env: &TestEnv, user: Uuid, n: usize) -> Vec<Uuid> {
    let author = env
        .user(&format!("author_of_{}", &user.simple().to_string()[..8]))
        .await;
    let posts = env.posts(author, n).await;
    let items: Vec<(Uuid, f64, [f64; 4])> = posts
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 1.0 - i as f64 / 100.0, [0.5; 4]))
        .collect();
    env.recommend(user, &items, 60.0).await;
    posts
}

fn arms(page: &Value) -> Vec<(String, String, bool)> {
    page["metadata"]["arms"]
        .as_array()
        .unwrap_or_else(|| panic!("no metadata.arms in {page}"))
        .iter()
        .map(|a| {
            (
                a["experiment"].as_str().unwrap().to_string(),
                a["arm"].as_str().unwrap().to_string(),
                a["applied"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn sources(page: &Value) -> Vec<String> {
    ids(page); // the documented shape
    page["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["source"].as_str().unwrap().to_string())
        .collect()
}

/// The served log's arms of the page `request_id` (waits 10 s at most for the writer).
async fn logged_arms(env: &TestEnv, page: &Value) -> Vec<String> {
    let request_id = Uuid::parse_str(page["metadata"]["requestId"].as_str().unwrap()).unwrap();
    let start = Instant::now();
    loop {
        if let Some(row) = env
            .db
            .query_opt(
                "SELECT arms FROM served_pages WHERE request_id = $1",
                &[&request_id],
            )
            .await
            .unwrap()
        {
            return row.get(0);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "page {request_id} never reached the served log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running experiment "baseline": arms `control` (config, no change) and `random`, half each.
async fn baseline(env: &TestEnv) -> Experiment {
    running(
        env,
        "baseline",
        "baseline-1",
        json!([
            {"name": "control", "share": 0.5, "kind": "config", "config": {}},
            {"name": "random", "share": 0.5, "kind": "random"},
        ]),
    )
    .await
}

/// A running experiment "fresh_mix": arms `control` (config, no change) and `fresh_only` (the
/// fresh source alone), half each.
async fn fresh_mix(env: &TestEnv) -> Experiment {
    running(
        env,
        "fresh_mix",
        "fresh-mix-1",
        json!([
            {"name": "control", "share": 0.5, "kind": "config", "config": {}},
            {"name": "fresh_only", "share": 0.5, "kind": "sources", "sources": {"fresh": 1}},
        ]),
    )
    .await
}

/// `user`'s first feed page of 10 posts.
async fn first_page(env: &TestEnv, user: Uuid) -> Value {
    let (status, page) = get(env.app(), "/api/feeds?limit=10", Some(&env.token(user))).await;
    assert_eq!(status, 200, "{page}");
    page
}

fn config_arms() -> Value {
    json!([
        {"name": "control", "share": 0.5, "kind": "config", "config": {}},
        {"name": "tuned", "share": 0.5, "kind": "config", "config": {"collaborative": "ridge"}},
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_running_experiment_labels_the_page_the_same_on_every_request() {
    let env = TestEnv::new().await;
    let first = running(&env, "ranker", "ranker-1", config_arms()).await;
    let second = running(&env, "weights", "weights-1", config_arms()).await;
    // not running: not started, stopped, ended
    for (name, start, stopped) in [
        ("draft", None, false),
        (
            "stopped",
            Some(Utc::now() - chrono::Duration::hours(1)),
            true,
        ),
    ] {
        let e = Experiment::from_json(
            &json!({"name": name, "salt": name, "starts_at": start.map(|s| s.to_rfc3339()),
                    "arms": config_arms()})
            .to_string(),
        )
        .unwrap();
        let stored: Value = serde_json::from_str(&e.to_json()).unwrap();
        env.db
            .execute(
                "INSERT INTO experiments (name, salt, definition, starts_at, stopped_at)
                 VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)",
                &[&e.name, &e.salt, &stored, &e.starts_at, &stopped],
            )
            .await
            .unwrap();
    }
    let user = env.user("reader").await;
    recommended(&env, user, 5).await;
    let t = env.token(user);
    let (status, page) = get(env.app(), "/api/feeds?limit=10", Some(&t)).await;
    assert_eq!(status, 200, "{page}");
    let want = vec![
        (
            "ranker".to_string(),
            first.arm_of(&user.to_string()).name.clone(),
            false,
        ),
        (
            "weights".to_string(),
            second.arm_of(&user.to_string()).name.clone(),
            false,
        ),
    ];
    assert_eq!(arms(&page), want);
    // a config arm is served the run's list, as everyone
    assert_eq!(page["metadata"]["source"], "db");
    for _ in 0..3 {
        let (_, again) = get(env.app(), "/api/feeds?limit=10", Some(&t)).await;
        assert_eq!(arms(&again), want);
    }
    let labels: Vec<String> = want.iter().map(|(e, a, _)| format!("{e}:{a}")).collect();
    assert_eq!(logged_arms(&env, &page).await, labels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_arm_serves_the_random_feed_and_the_control_its_list() {
    let env = TestEnv::new().await;
    let e = baseline(&env).await;
    let random_user = user_in(&env, &e, "random").await;
    let control_user = user_in(&env, &e, "control").await;
    recommended(&env, random_user, 5).await;
    recommended(&env, control_user, 5).await;

    let page = first_page(&env, random_user).await;
    assert_eq!(arms(&page), [("baseline".into(), "random".into(), true)]);
    assert_eq!(page["metadata"]["source"], "fallback");
    let got = sources(&page);
    assert!(
        !got.is_empty() && got.iter().all(|s| s == "fallback"),
        "{got:?}"
    );
    // the very page `source=fallback` gives (the same seeded order)
    let (_, forced) = get(
        env.app(),
        "/api/feeds?limit=10&source=fallback",
        Some(&env.token(random_user)),
    )
    .await;
    assert_eq!(ids(&forced), ids(&page));

    let page = first_page(&env, control_user).await;
    assert_eq!(arms(&page), [("baseline".into(), "control".into(), false)]);
    assert_eq!(page["metadata"]["source"], "db");
    assert!(sources(&page).iter().any(|s| s == "personalized"));
    assert_eq!(
        logged_arms(&env, &page).await,
        ["baseline:control".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sources_arm_blends_by_its_own_shares() {
    let env = TestEnv::new().await;
    let e = fresh_mix(&env).await;
    let fresh_user = user_in(&env, &e, "fresh_only").await;
    let control_user = user_in(&env, &e, "control").await;
    let fresh_users_list = recommended(&env, fresh_user, 5).await;
    recommended(&env, control_user, 5).await;

    // control: the run's shares, its list first
    let page = first_page(&env, control_user).await;
    assert_eq!(sources(&page)[0], "personalized");
    // fresh_only: personalized has no share, so none of the user's list is dealt by the blend
    let page = first_page(&env, fresh_user).await;
    assert_eq!(
        arms(&page),
        [("fresh_mix".into(), "fresh_only".into(), true)]
    );
    let got = sources(&page);
    assert!(
        !got.is_empty() && got.iter().all(|s| s != "personalized"),
        "{got:?}"
    );
    assert_eq!(page["metadata"]["source"], "fallback");
    // its posts may still come, but from the fallback's random order, not as recommendations
    assert!(page["posts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| fresh_users_list.contains(&Uuid::parse_str(p["id"].as_str().unwrap()).unwrap()))
        .all(|p| p["source"] == "fallback" && p.get("score").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_experiment_no_longer_labels_or_changes_the_page() {
    let env = TestEnv::new().await;
    env.wait_for_the_listener().await;
    let e = baseline(&env).await;
    let user = user_in(&env, &e, "random").await;
    recommended(&env, user, 5).await;
    let t = env.token(user);
    let (_, page) = get(env.app(), "/api/feeds?limit=10", Some(&t)).await;
    assert_eq!(arms(&page), [("baseline".into(), "random".into(), true)]);

    env.db
        .execute(
            "UPDATE experiments SET stopped_at = now() WHERE name = 'baseline'",
            &[],
        )
        .await
        .unwrap();
    // NOTIFY makes the next request read the experiments again (the 5 s reload bounds it)
    let start = Instant::now();
    let page = loop {
        let (_, page) = get(env.app(), "/api/feeds?limit=10", Some(&t)).await;
        if arms(&page).is_empty() {
            break page;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still labelled 10 s after the stop: {}",
            page["metadata"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(page["metadata"]["source"], "db");
    assert!(logged_arms(&env, &page).await.is_empty());
}

/// `run`'s record of the experiments it applied, as the pipeline writes it
/// (`recommendation_runs.config.experiments`): each definition, and the arms' resolved configs.
async fn record(env: &TestEnv, run: i64, experiments: &[&Experiment]) {
    let mut applied = serde_json::Map::new();
    for e in experiments {
        let definition: Value = serde_json::from_str(&e.to_json()).unwrap();
        applied.insert(
            e.name.clone(),
            json!({"definition": definition, "arms": {}}),
        );
    }
    env.db
        .execute(
            "UPDATE recommendation_runs SET config = $1 WHERE id = $2",
            &[&json!({"experiments": applied}), &run],
        )
        .await
        .unwrap();
}

/// A run for `user` of `n` posts; its id.
async fn run_for(env: &TestEnv, user: Uuid, n: usize) -> i64 {
    recommended(env, user, n).await;
    env.db
        .query_one(
            "SELECT max(run_id) FROM user_recommendations WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_arm_is_applied_when_the_pages_run_computed_the_users_list_with_it() {
    let env = TestEnv::new().await;
    let e = running(&env, "ranker", "ranker-1", config_arms()).await;
    // the same experiment as a run recorded it, but with another config in the arm
    let other = Experiment::from_json(&e.to_json().replace("\"ridge\"", "\"item_item\"")).unwrap();
    assert_ne!(other.arms[1], e.arms[1]);
    let computed = user_in(&env, &e, "tuned").await;
    let before_the_run = user_in(&env, &e, "tuned").await;
    let changed_since = user_in(&env, &e, "tuned").await;
    let control = user_in(&env, &e, "control").await;
    for (user, recorded) in [
        (computed, Some(&e)),
        (before_the_run, None),
        (changed_since, Some(&other)),
        (control, Some(&e)),
    ] {
        let run = run_for(&env, user, 5).await;
        if let Some(r) = recorded {
            record(&env, run, &[r]).await;
        }
    }
    let tuned = |applied: bool| vec![("ranker".to_string(), "tuned".to_string(), applied)];
    // the database's run, then the Redis entry written back from it (which carries the run id)
    for origin in ["db", "cache"] {
        let page = first_page(&env, computed).await;
        assert_eq!(page["metadata"]["source"], origin, "{}", page["metadata"]);
        assert_eq!(arms(&page), tuned(true), "{origin}");
        // the served log's labels are the arms, applied or not
        assert_eq!(logged_arms(&env, &page).await, ["ranker:tuned".to_string()]);
    }
    assert_eq!(arms(&first_page(&env, before_the_run).await), tuned(false));
    assert_eq!(arms(&first_page(&env, changed_since).await), tuned(false));
    let page = first_page(&env, control).await;
    assert_eq!(
        arms(&page),
        [("ranker".into(), "control".into(), false)],
        "a control changes nothing"
    );
    // without a list of the user's own (the random fallback), nothing computed it
    let newcomer = user_in(&env, &e, "tuned").await;
    let page = first_page(&env, newcomer).await;
    assert_eq!(page["metadata"]["source"], "fallback");
    assert_eq!(arms(&page), tuned(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_shares_and_arms_the_user_is_served() {
    let env = TestEnv::with(|c| c.admin_token = Some("op".into())).await;
    let e = fresh_mix(&env).await;
    let explain = |user: Uuid| {
        let env = &env;
        async move {
            let req = axum::http::Request::get(format!("/api/feeds/explain?userId={user}"))
                .header("x-admin-token", "op")
                .body(axum::body::Body::empty())
                .unwrap();
            let (status, body) = send(env.app(), req).await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    let fresh_user = user_in(&env, &e, "fresh_only").await;
    let body = explain(fresh_user).await;
    assert_eq!(
        body["shares"],
        json!({"personalized": 0.0, "fresh": 1.0, "because_you_liked": 0.0, "trending": 0.0}),
        "{body}"
    );
    assert_eq!(
        body["arms"],
        json!([{"experiment": "fresh_mix", "arm": "fresh_only", "applied": true}])
    );
    let control_user = user_in(&env, &e, "control").await;
    let body = explain(control_user).await;
    let run_shares = feedrank_core::config::ScoringConfig::default()
        .sources
        .blend;
    assert_eq!(body["shares"], serde_json::to_value(run_shares).unwrap());
    assert_eq!(body["arms"][0]["applied"], false);
}
