//! The authentication attacks of docs/reliability.md, against the real router in process (the
//! HTTP-over-TCP versions, with real PostgreSQL and Redis, are in tests/reliability/):
//! every forged, expired, not-yet-valid or malformed credential is a 401 JSON answer, never a
//! 5xx, and never authenticates as anyone.
//!
//! No database is needed: the user under test is put in the router's in-process "known users"
//! cache, and DATABASE_URL points at a closed port, so an authenticated request that reaches the
//! database answers 503 — the proof that authentication let it through — while a refused one
//! answers 401 before any database work.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use feedrank_api::auth::nextauth_key;
use feedrank_api::config::Config;
use feedrank_api::AppState;
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &str = "security-test-auth-secret-0123456789abcdef";
const NEXTAUTH: &str = "security-test-nextauth-secret-0123456789";
/// The key next-auth v4 itself derives from NEXTAUTH (its `getDerivedEncryptionKey`: HKDF-SHA256,
/// empty salt, info "NextAuth.js Generated Encryption Key", 32 bytes), computed outside this
/// crate with next-auth's own HKDF package, so that the well-made cookies below are sealed as
/// the real app seals them and not with the API's `nextauth_key`:
/// `cd tests/nextauth && node --input-type=module -e 'import hkdf from "@panva/hkdf";
/// console.log(Buffer.from(await hkdf("sha256", process.argv[1], "",
/// "NextAuth.js Generated Encryption Key", 32)).toString("hex"))' SECRET`
const NEXTAUTH_KEY_HEX: &str = "29cbca52b3fd7b9e709dc72b7d92fa1d78cf9aea6f177bbd8ce23901127ebc94";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn state(nextauth: Option<&str>) -> (AppState, Uuid) {
    let mut cfg = Config::from_lookup(|k| match k {
        "AUTH_SECRET" => Some(SECRET.to_string()),
        "NEXTAUTH_SECRET" => nextauth.map(str::to_string),
        _ => None,
    })
    .unwrap();
    cfg.database_url = "postgres://postgres@127.0.0.1:9/none".into();
    cfg.redis_url = "redis://127.0.0.1:9/0".into();
    cfg.pg_pool_timeout = Duration::from_millis(300);
    cfg.redis_timeout = Duration::from_millis(50);
    cfg.body_limit = 16 * 1024;
    let state = AppState::new(cfg).unwrap();
    let user = Uuid::new_v4();
    state.users.insert(user, ());
    (state, user)
}

async fn call(state: &AppState, req: Request<Body>) -> (StatusCode, Value) {
    let res = feedrank_api::router(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status}: the answer is not JSON ({e}): {bytes:?}"));
    (status, v)
}

fn feed(auth: Option<&str>, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get("/api/feeds");
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).unwrap()
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn hs(alg: Algorithm, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token with a hand-written header, signed HS256 with `secret` (or unsigned).
fn raw_token(header: &Value, claims: &Value, secret: Option<&str>) -> String {
    use hmac_sha256::sign;
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    match secret {
        Some(s) => format!("{input}.{}", b64(&sign(s.as_bytes(), input.as_bytes()))),
        None => format!("{input}."),
    }
}

/// HMAC-SHA256 from the `sha2` the crate already depends on (RFC 2104), to forge tokens whose
/// header jsonwebtoken would refuse to write.
mod hmac_sha256 {
    use sha2::{Digest, Sha256};
    pub fn sign(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(msg)
            .finalize();
        Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize()
            .to_vec()
    }
}

async fn assert_refused(state: &AppState, auth: Option<&str>, cookie: Option<&str>, what: &str) {
    let (status, v) = call(state, feed(auth, cookie)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {v}");
    assert_eq!(v["error"], "unauthorized", "{what}: {v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn the_control_token_passes_authentication() {
    let (st, user) = state(None);
    let t = hs(
        Algorithm::HS256,
        &json!({"sub": user.to_string(), "exp": now() + 600}),
        SECRET,
    );
    let (status, v) = call(&st, feed(Some(&format!("Bearer {t}")), None)).await;
    // Authenticated; the (absent) database is the next step.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    // The HMAC helper agrees with jsonwebtoken, so the forged tokens below are well signed.
    let mine = raw_token(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"sub": user.to_string(), "exp": now() + 600}),
        Some(SECRET),
    );
    let (status, _) = call(&st, feed(Some(&format!("Bearer {mine}")), None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn forged_and_invalid_bearer_tokens_are_401() {
    let (st, user) = state(None);
    let sub = user.to_string();
    let ok = json!({"sub": sub, "exp": now() + 600});
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            raw_token(&json!({"alg": "none", "typ": "JWT"}), &ok, None),
        ),
        (
            "alg none with a valid signature appended",
            raw_token(&json!({"alg": "none"}), &ok, Some(SECRET)),
        ),
        (
            "alg NONE",
            raw_token(&json!({"alg": "NONE"}), &ok, Some(SECRET)),
        ),
        (
            "RS256 label, HMAC signature (key confusion)",
            raw_token(&json!({"alg": "RS256"}), &ok, Some(SECRET)),
        ),
        (
            "HS384 with the right key",
            hs(Algorithm::HS384, &ok, SECRET),
        ),
        (
            "HS512 with the right key",
            hs(Algorithm::HS512, &ok, SECRET),
        ),
        (
            "wrong key",
            hs(Algorithm::HS256, &ok, "another-secret-another-secret-0123"),
        ),
        (
            "the NextAuth secret as the key",
            hs(Algorithm::HS256, &ok, NEXTAUTH),
        ),
        (
            "expired beyond the 30 s leeway",
            hs(
                Algorithm::HS256,
                &json!({"sub": sub, "exp": now() - 120}),
                SECRET,
            ),
        ),
        (
            "not valid for another hour (nbf)",
            hs(
                Algorithm::HS256,
                &json!({"sub": sub, "exp": now() + 7200, "nbf": now() + 3600}),
                SECRET,
            ),
        ),
        ("no exp", hs(Algorithm::HS256, &json!({"sub": sub}), SECRET)),
        (
            "exp as a string",
            raw_token(
                &json!({"alg": "HS256"}),
                &json!({"sub": sub, "exp": "tomorrow"}),
                Some(SECRET),
            ),
        ),
        (
            "no sub",
            hs(Algorithm::HS256, &json!({"exp": now() + 600}), SECRET),
        ),
        (
            "empty sub",
            hs(
                Algorithm::HS256,
                &json!({"sub": "", "exp": now() + 600}),
                SECRET,
            ),
        ),
        (
            "sub as a number",
            raw_token(
                &json!({"alg": "HS256"}),
                &json!({"sub": 42, "exp": now() + 600}),
                Some(SECRET),
            ),
        ),
        (
            "header is not JSON",
            format!("{}.{}.x", b64(b"{not json"), b64(ok.to_string().as_bytes())),
        ),
        ("two parts", "a.b".to_string()),
        ("four parts", "a.b.c.d".to_string()),
    ];
    for (what, t) in &cases {
        assert_refused(&st, Some(&format!("Bearer {t}")), None, what).await;
    }
    // Malformed Authorization headers.
    let good = hs(Algorithm::HS256, &ok, SECRET);
    for (what, h) in [
        ("Basic scheme", format!("Basic {good}")),
        ("no scheme", good.clone()),
        ("Bearer without a token", "Bearer ".to_string()),
        ("Token scheme", format!("Token {good}")),
    ] {
        assert_refused(&st, Some(&h), None, what).await;
    }
}

#[tokio::test]
async fn a_token_within_the_leeway_and_an_nbf_in_the_past_are_accepted() {
    let (st, user) = state(None);
    let t = hs(
        Algorithm::HS256,
        &json!({"sub": user.to_string(), "exp": now() - 5, "nbf": now() - 60}),
        SECRET,
    );
    let (status, v) = call(&st, feed(Some(&format!("Bearer {t}")), None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
}

fn nextauth_reference_key() -> Vec<u8> {
    (0..32)
        .map(|i| u8::from_str_radix(&NEXTAUTH_KEY_HEX[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// A NextAuth v4 JWE with a chosen protected header and claims, sealed with `key`.
fn jwe(key: &[u8], header: &Value, claims: &Value) -> String {
    let h = b64(header.to_string().as_bytes());
    let cipher = Aes256Gcm::new_from_slice(key).unwrap();
    let iv = [9u8; 12];
    let sealed = cipher
        .encrypt(
            &Nonce::try_from(&iv[..]).unwrap(),
            Payload {
                msg: claims.to_string().as_bytes(),
                aad: h.as_bytes(),
            },
        )
        .unwrap();
    let (ct, tag) = sealed.split_at(sealed.len() - 16);
    format!("{h}..{}.{}.{}", b64(&iv), b64(ct), b64(tag))
}

#[tokio::test]
async fn forged_nextauth_cookies_are_401() {
    let (st, user) = state(Some(NEXTAUTH));
    let sub = user.to_string();
    let std_header = json!({"alg": "dir", "enc": "A256GCM"});
    let ok = json!({"sub": sub, "exp": now() + 600});
    let key = nextauth_reference_key();
    let good = jwe(&key, &std_header, &ok);
    let (status, v) = call(
        &st,
        feed(None, Some(&format!("next-auth.session-token={good}"))),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "control: {v}");
    let parts: Vec<&str> = good.split('.').collect();
    let cases: Vec<(&str, String)> = vec![
        (
            "another secret",
            jwe(
                &nextauth_key("someone-else's-secret-entirely"),
                &std_header,
                &ok,
            ),
        ),
        (
            "the bearer secret",
            jwe(&nextauth_key(SECRET), &std_header, &ok),
        ),
        (
            "expired",
            jwe(&key, &std_header, &json!({"sub": sub, "exp": now() - 60})),
        ),
        (
            "not valid yet",
            jwe(
                &key,
                &std_header,
                &json!({"sub": sub, "exp": now() + 7200, "nbf": now() + 3600}),
            ),
        ),
        ("no exp", jwe(&key, &std_header, &json!({"sub": sub}))),
        (
            "no sub",
            jwe(&key, &std_header, &json!({"exp": now() + 600})),
        ),
        (
            "compressed (zip)",
            jwe(
                &key,
                &json!({"alg": "dir", "enc": "A256GCM", "zip": "DEF"}),
                &ok,
            ),
        ),
        (
            "another enc",
            jwe(&key, &json!({"alg": "dir", "enc": "A128GCM"}), &ok),
        ),
        (
            "a wrapped key",
            jwe(&key, &json!({"alg": "A256KW", "enc": "A256GCM"}), &ok),
        ),
        (
            "an encrypted key part",
            format!("{}.AAAA.{}.{}.{}", parts[0], parts[2], parts[3], parts[4]),
        ),
        (
            "header changed after sealing (not the AAD)",
            format!(
                "{}.{}",
                b64(json!({"alg": "dir", "enc": "A256GCM", "kid": "x"})
                    .to_string()
                    .as_bytes()),
                parts[1..].join(".")
            ),
        ),
        (
            "tag cut",
            format!("{}.{}.{}.{}.", parts[0], parts[1], parts[2], parts[3]),
        ),
        ("a signed JWT instead", hs(Algorithm::HS256, &ok, NEXTAUTH)),
    ];
    for (what, t) in &cases {
        for name in [
            "next-auth.session-token",
            "__Secure-next-auth.session-token",
        ] {
            assert_refused(&st, None, Some(&format!("{name}={t}")), what).await;
        }
    }
    // Chunks with a gap are no token.
    let half = good.len() / 2;
    let gap = format!(
        "next-auth.session-token.0={}; next-auth.session-token.2={}",
        &good[..half],
        &good[half..]
    );
    assert_refused(&st, None, Some(&gap), "chunks 0 and 2").await;
    // Without NEXTAUTH_SECRET no cookie is accepted, not even a well-made one.
    let (plain, _) = state(None);
    assert_refused(
        &plain,
        None,
        Some(&format!("next-auth.session-token={good}")),
        "cookie while NEXTAUTH_SECRET is unset",
    )
    .await;
}

#[tokio::test]
async fn oversized_and_deeply_nested_bodies_are_400_not_5xx() {
    let (st, user) = state(None);
    let t = hs(
        Algorithm::HS256,
        &json!({"sub": user.to_string(), "exp": now() + 600}),
        SECRET,
    );
    let post = |body: Vec<u8>| {
        Request::post("/api/track")
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .body(Body::from(body))
            .unwrap()
    };
    let big = format!(
        r#"{{"postId":"{}","interactionType":"view","metadata":{{"p":"{}"}}}}"#,
        Uuid::new_v4(),
        "x".repeat(20_000)
    );
    let (status, v) = call(&st, post(big.into_bytes())).await;
    assert_eq!(
        (status, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("body")),
        "{v}"
    );
    for depth in [200usize, 5_000] {
        let nested = format!(
            r#"{{"postId":"{}","interactionType":"view","metadata":{}1{}}}"#,
            Uuid::new_v4(),
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        );
        let (status, v) = call(&st, post(nested.into_bytes())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "depth {depth}: {v}");
        assert_eq!(v["field"], "body");
    }
    let nul = format!(
        r#"{{"postId":"{}","interactionType":"view","eventId":"a\u0000b"}}"#,
        Uuid::new_v4()
    );
    let (status, v) = call(&st, post(nul.into_bytes())).await;
    assert_eq!(
        (status, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("eventId")),
        "{v}"
    );
    let nul = format!(
        r#"{{"postId":"{}","interactionType":"view","metadata":{{"k":["\u0000"]}}}}"#,
        Uuid::new_v4()
    );
    let (status, v) = call(&st, post(nul.into_bytes())).await;
    assert_eq!(
        (status, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("metadata")),
        "{v}"
    );
}
