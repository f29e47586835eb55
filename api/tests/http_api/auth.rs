//! Authentication: bearer JWTs and NextAuth v4 session cookies minted by the real `next-auth`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use crate::common::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A session token made by next-auth's own `encode` (tests/nextauth/mint.mjs).
fn nextauth_token(secret: &str, sub: &str, extra: &[&str]) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/nextauth");
    assert!(
        dir.join("node_modules/next-auth").is_dir(),
        "the next-auth package is not installed: run `npm ci --prefix tests/nextauth` (make test does)"
    );
    let out = Command::new("node")
        .current_dir(&dir)
        .arg("mint.mjs")
        .args(["--secret", secret, "--sub", sub])
        .args(extra)
        .output()
        .expect("node is required for the NextAuth tests");
    assert!(
        out.status.success(),
        "mint.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn with_cookie(env: &TestEnv, cookie: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::get("/api/feeds?limit=5")
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap();
    send(env.app(), req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_missing_malformed_forged_or_expired_are_401_json() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    env.posts(alice, 3).await;
    let sub = alice.to_string();

    let (s, b) = get(env.app(), "/api/feeds", None).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = get(env.app(), "/api/feeds", Some("not-a-jwt")).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let forged = hs256(
        "another-secret-of-the-same-length-000000",
        json!({"sub": sub, "exp": now() + 600}),
    );
    let (s, b) = get(env.app(), "/api/feeds", Some(&forged)).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    // Expired beyond the 30 s leeway.
    let expired = hs256(SECRET, json!({"sub": sub, "exp": now() - 120}));
    let (s, b) = get(env.app(), "/api/feeds", Some(&expired)).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(b["message"].as_str().unwrap().contains("expired"), "{b}");
    // Within the leeway: accepted.
    let just_expired = hs256(SECRET, json!({"sub": sub, "exp": now() - 5}));
    let (s, _) = get(env.app(), "/api/feeds", Some(&just_expired)).await;
    assert_eq!(s, StatusCode::OK);
    // `exp` is required.
    let no_exp = hs256(SECRET, json!({"sub": sub}));
    let (s, b) = get(env.app(), "/api/feeds", Some(&no_exp)).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    // Another algorithm is refused.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": sub, "exp": now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (s, b) = get(env.app(), "/api/feeds", Some(&hs512)).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    // A non-Bearer scheme.
    let req = Request::get("/api/feeds")
        .header("authorization", format!("Basic {}", env.token(alice)))
        .body(Body::empty())
        .unwrap();
    let (s, b) = send(env.app(), req).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    // The valid token works.
    let (s, _) = get(env.app(), "/api/feeds", Some(&env.token(alice))).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_for_an_unknown_user_is_403_not_a_crash() {
    let env = TestEnv::new().await;
    let stranger = uuid::Uuid::new_v4();
    let (s, b) = get(env.app(), "/api/feeds", Some(&env.token(stranger))).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "unknown_user");
    let not_uuid = hs256(SECRET, json!({"sub": "cuid-like-id", "exp": now() + 600}));
    let (s, b) = get(env.app(), "/api/feeds", Some(&not_uuid)).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "unknown_user");
    let (s, b) = post(
        env.app(),
        "/api/track",
        &env.token(stranger),
        &json!({"postId": uuid::Uuid::new_v4(), "interactionType": "view"}),
    )
    .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "unknown_user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextauth_session_cookies_from_the_real_encoder_are_accepted() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    env.posts(alice, 3).await;
    let token = nextauth_token(NEXTAUTH_SECRET, &alice.to_string(), &[]);

    let (s, b) = with_cookie(&env, &format!("next-auth.session-token={token}")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["metadata"]["source"], "fallback");
    let (s, _) = with_cookie(
        &env,
        &format!("other=1; __Secure-next-auth.session-token={token}; x=y"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    // A token too large for one cookie, split the way NextAuth splits it (NAME.0, NAME.1, ...).
    let big = nextauth_token(NEXTAUTH_SECRET, &alice.to_string(), &["--pad", "6000"]);
    assert!(big.len() > 4096);
    let (a, rest) = big.split_at(3000);
    let (b1, c) = rest.split_at(3000);
    let cookie = format!(
        "next-auth.session-token.2={c}; next-auth.session-token.0={a}; next-auth.session-token.1={b1}"
    );
    let (s, b) = with_cookie(&env, &cookie).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // A missing chunk is a 401.
    let (s, b) = with_cookie(
        &env,
        &format!("next-auth.session-token.0={a}; next-auth.session-token.2={c}"),
    )
    .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextauth_cookies_with_a_wrong_secret_expired_or_tampered_are_401() {
    let env = TestEnv::new().await;
    let alice = env.user("alice").await;
    let sub = alice.to_string();

    let wrong = nextauth_token("some-other-nextauth-secret", &sub, &[]);
    let (s, b) = with_cookie(&env, &format!("next-auth.session-token={wrong}")).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");

    let expired = nextauth_token(NEXTAUTH_SECRET, &sub, &["--max-age", "-60"]);
    let (s, b) = with_cookie(&env, &format!("next-auth.session-token={expired}")).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(b["message"].as_str().unwrap().contains("expired"), "{b}");

    let good = nextauth_token(NEXTAUTH_SECRET, &sub, &[]);
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    let mut ct = parts[3].clone().into_bytes();
    ct[5] = if ct[5] == b'A' { b'B' } else { b'A' };
    parts[3] = String::from_utf8(ct).unwrap();
    let tampered = parts.join(".");
    let (s, b) = with_cookie(&env, &format!("next-auth.session-token={tampered}")).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");

    let (s, b) = with_cookie(&env, "next-auth.session-token=garbage").await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");

    // Without NEXTAUTH_SECRET the API does not accept session cookies at all.
    let no_nextauth = env.other_state(|c| c.nextauth_secret = None);
    let req = Request::get("/api/feeds")
        .header("cookie", format!("next-auth.session-token={good}"))
        .body(Body::empty())
        .unwrap();
    let (s, b) = send(feedrank_api::router(no_nextauth), req).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
}
