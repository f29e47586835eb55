//! Property-based fuzzing (proptest) of every parser that takes outside input: the feed's query
//! string, tracking bodies, bearer JWTs, NextAuth session cookies (and the Cookie header), and
//! TF-IDF tokenization of arbitrary bytes turned into text.
//!
//! proptest rather than `cargo fuzz`: cargo-fuzz needs a nightly toolchain, and this project builds
//! with the one stable toolchain of the machine. `make fuzz` runs these with many more cases
//! (`PROPTEST_CASES`); `cargo test` runs the default 256 per property. A failure proptest finds is
//! shrunk, printed, and kept in `proptest-regressions/` next to this file, then replayed first.
//!
//! The tracking-body properties drive the real router with no database: the user is put in the
//! in-process "known users" cache, and DATABASE_URL points at a closed port, so a body that passes
//! validation reaches the database step and gets 503, while a rejected one gets 400. Nothing in
//! between (a panic, a 500) is allowed.

use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use feedrank_api::auth::{decrypt_session, nextauth_key, session_cookie, Authenticator};
use feedrank_api::config::Config;
use feedrank_api::feed::MAX_SEED;
use feedrank_api::http::feeds::{FeedParams, MAX_LIMIT};
use feedrank_api::AppState;
use feedrank_core::tfidf::{tokenize, TfidfModel, TfidfParams};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &str = "parsers-props-auth-secret-0123456789abcdef";
const MAX_OFFSET: u32 = 10_000;

// --- query strings ---------------------------------------------------------------------------

fn field_of(raw: &str) -> Option<String> {
    match FeedParams::parse(Some(raw)).and_then(|p| p.validate(MAX_OFFSET)) {
        Ok(_) => None,
        Err(feedrank_api::error::ApiError::BadRequest { field, .. }) => Some(field),
        Err(other) => panic!("{raw:?}: a query string error must be a 400, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Any string at all: parsed or a 400 naming a field; never a panic; accepted values in range.
    #[test]
    fn any_query_string_is_parsed_or_refused(raw in "\\PC{0,200}") {
        if let Ok(req) = FeedParams::parse(Some(&raw)).and_then(|p| p.validate(MAX_OFFSET)) {
            prop_assert!((1..=MAX_LIMIT).contains(&req.limit));
            prop_assert!(req.offset <= MAX_OFFSET as usize);
            prop_assert!(req.seed.is_none_or(|s| s <= MAX_SEED));
        } else {
            field_of(&raw);
        }
    }

    /// Query-like strings built from the real parameter names and hostile values.
    #[test]
    fn query_strings_of_known_parameters(
        pairs in prop::collection::vec(
            (prop_oneof![Just("limit".to_string()), Just("offset".to_string()), Just("seed".to_string()), Just("refresh".to_string()),
                         Just("source".to_string()), Just("other".to_string()), "[a-z%=&+]{0,6}"],
             prop_oneof![Just("1".to_string()), Just("-1".to_string()),
                         Just("18446744073709551616".to_string()), Just("1e3".to_string()),
                         Just("%00".to_string()), Just("' OR 1=1 --".to_string()),
                         "[0-9]{0,25}", "\\PC{0,12}"]),
            0..6)
    ) {
        let raw = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let _ = field_of(&raw);
    }

    /// Valid values are read back exactly (nothing clamped, nothing lost).
    #[test]
    fn valid_queries_round_trip(
        limit in 1usize..=MAX_LIMIT, offset in 0u32..=MAX_OFFSET, seed in 0u64..=MAX_SEED,
        refresh in any::<bool>(), junk in "[a-z]{1,8}"
    ) {
        let raw = format!("{junk}_x=1&limit={limit}&offset={offset}&seed={seed}&refresh={refresh}");
        let req = FeedParams::parse(Some(&raw)).unwrap().validate(MAX_OFFSET).unwrap();
        prop_assert_eq!((req.limit, req.offset, req.seed, req.refresh),
                        (limit, offset as usize, Some(seed), refresh));
    }

    /// Out-of-range numbers are refused naming their parameter, never clamped.
    #[test]
    fn out_of_range_numbers_name_their_parameter(
        limit in (MAX_LIMIT as u64 + 1)..u64::MAX, offset in (MAX_OFFSET as u64 + 1)..u64::MAX,
        seed in (MAX_SEED + 1)..u64::MAX
    ) {
        prop_assert_eq!(field_of(&format!("limit={limit}")), Some("limit".to_string()));
        prop_assert_eq!(field_of("limit=0"), Some("limit".to_string()));
        prop_assert_eq!(field_of(&format!("offset={offset}")), Some("offset".to_string()));
        prop_assert_eq!(field_of(&format!("seed={seed}")), Some("seed".to_string()));
    }
}

/// More cases under `make fuzz` (PROPTEST_CASES), the default under `cargo test`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// --- tracking bodies through the router --------------------------------------------------------

struct Harness {
    rt: tokio::runtime::Runtime,
    state: AppState,
    user: Uuid,
    token: String,
}

fn harness() -> Harness {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg =
        Config::from_lookup(|k| (k == "AUTH_SECRET").then(|| SECRET.to_string())).unwrap();
    // Closed ports: validation is all that can succeed; the database step answers 503.
    cfg.database_url = "postgres://postgres@127.0.0.1:9/none".into();
    cfg.redis_url = "redis://127.0.0.1:9/0".into();
    cfg.pg_pool_timeout = Duration::from_millis(300);
    cfg.redis_timeout = Duration::from_millis(50);
    cfg.body_limit = 64 * 1024;
    let state = rt.block_on(async { AppState::new(cfg).unwrap() });
    let user = Uuid::new_v4();
    state.users.insert(user, ());
    let token = state
        .auth
        .dev_token(&user.to_string(), Duration::from_secs(600));
    Harness {
        rt,
        state,
        user,
        token,
    }
}

impl Harness {
    fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let app = feedrank_api::router(self.state.clone());
        let req = Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        self.rt.block_on(async {
            let res = app.oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            let v = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {bytes:?}"));
            (status, v)
        })
    }
}

/// JSON values of bounded depth with hostile leaves.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        Just(Value::from("\u{0}")),
        Just(Value::from("'; DROP TABLE user_interactions; --")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::hash_map("\\PC{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn event() -> impl Strategy<Value = Value> {
    let post = prop_oneof![
        Just(json!(Uuid::new_v4().to_string())),
        Just(json!(Uuid::nil().to_string())),
        "\\PC{0,40}".prop_map(Value::from),
        json_value(),
    ];
    let kind = prop_oneof![
        Just(json!("view")),
        Just(json!("like")),
        Just(json!("hide")),
        Just(json!("VIEW")),
        "\\PC{0,10}".prop_map(Value::from),
        json_value(),
    ];
    let event_id = prop_oneof![
        Just(Value::Null),
        "\\PC{1,130}".prop_map(Value::from),
        json_value()
    ];
    (post, kind, json_value(), event_id, any::<u8>()).prop_map(|(p, k, m, e, drop)| {
        let mut o = serde_json::Map::new();
        for (i, (name, v)) in [
            ("postId", p),
            ("interactionType", k),
            ("metadata", m),
            ("eventId", e),
        ]
        .into_iter()
        .enumerate()
        {
            if drop & (1 << i) == 0 {
                o.insert(name.to_string(), v);
            }
        }
        if drop & 0x80 != 0 {
            o.insert("userId".into(), json!(Uuid::new_v4().to_string()));
        }
        Value::Object(o)
    })
}

/// Whether U+0000 is in any string or key of `v` (PostgreSQL cannot store it).
fn has_nul(v: &Value) -> bool {
    let mut pending = vec![v];
    while let Some(v) = pending.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(items) => pending.extend(items),
            Value::Object(m) if m.keys().any(|k| k.contains('\0')) => return true,
            Value::Object(m) => pending.extend(m.values()),
            _ => {}
        }
    }
    false
}

/// Whether `v` is an event the API must accept (then it answers 503 here: no database).
fn valid(v: &Value) -> bool {
    let Some(o) = v.as_object() else { return false };
    let post_ok = o
        .get("postId")
        .and_then(Value::as_str)
        .is_some_and(|s| Uuid::parse_str(s).is_ok());
    let kind_ok = o
        .get("interactionType")
        .and_then(Value::as_str)
        .is_some_and(|s| ["view", "click", "like", "share", "hide"].contains(&s));
    let meta_ok = match o.get("metadata") {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => {
            serde_json::to_vec(m).unwrap().len() <= 4096 && !has_nul(&Value::Object(m.clone()))
        }
        Some(_) => false,
    };
    let ev_ok = match o.get("eventId") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => (1..=128).contains(&s.chars().count()) && !s.contains('\0'),
        Some(_) => false,
    };
    post_ok && kind_ok && meta_ok && ev_ok
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    /// Arbitrary bytes as a tracking body: a 400 naming the problem; never a 5xx other than the
    /// database being down, never a panic.
    #[test]
    fn arbitrary_bytes_are_a_400(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let h = HARNESS.with(|h| h.clone());
        let (status, v) = h.post("/api/track", body);
        prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", v);
        prop_assert!(v["field"].is_string());
    }

    /// Structured events: exactly the valid ones pass validation (and reach the database: 503);
    /// every other one is a 400 naming the field at fault.
    #[test]
    fn events_are_validated_exactly(ev in event()) {
        let h = HARNESS.with(|h| h.clone());
        let (status, v) = h.post("/api/track", serde_json::to_vec(&ev).unwrap());
        if valid(&ev) {
            prop_assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{} -> {}", ev, v);
        } else {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{} -> {}", ev, v);
            let field = v["field"].as_str().unwrap_or_default().to_string();
            prop_assert!(["body", "postId", "interactionType", "metadata", "eventId"].contains(&field.as_str()),
                         "{} -> {}", ev, v);
        }
    }

    /// Batches: per-event results in order; the envelope itself refused with a 400 when wrong.
    #[test]
    fn batches_are_validated(events in prop::collection::vec(event(), 0..8), wrap in any::<bool>()) {
        let h = HARNESS.with(|h| h.clone());
        let body = if wrap { json!({"events": events}) } else { Value::from(events.clone()) };
        let (status, v) = h.post("/api/track/batch", serde_json::to_vec(&body).unwrap());
        if !wrap || events.is_empty() {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST);
            prop_assert_eq!(v["field"].as_str(), Some("events"));
        } else {
            // A well-formed envelope takes a database connection before its events are stored
            // one by one: here, with none, a 503 (never a 500, never a panic).
            prop_assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", v);
        }
    }
}

thread_local! {
    static HARNESS: std::rc::Rc<Harness> = std::rc::Rc::new(harness());
}

#[test]
fn the_harness_user_is_the_one_authenticated() {
    let h = harness();
    let (status, _) = h.post(
        "/api/track",
        serde_json::to_vec(
            &json!({"postId": Uuid::new_v4().to_string(), "interactionType": "view"}),
        )
        .unwrap(),
    );
    // Authenticated (not 401/403), validated, then the database is unreachable.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.state.users.get(&h.user).is_some());
}

// --- credentials -------------------------------------------------------------------------------

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A NextAuth v4 JWE made the way `next-auth/jwt`'s `encode` makes it (checked against the real
/// encoder in tests/http_api/auth.rs and tests/reliability).
fn jwe(secret: &str, claims: &Value, iv: [u8; 12]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"dir","enc":"A256GCM"}"#);
    let cipher = Aes256Gcm::new_from_slice(&nextauth_key(secret)).unwrap();
    let sealed = cipher
        .encrypt(
            &Nonce::try_from(&iv[..]).unwrap(),
            Payload {
                msg: &serde_json::to_vec(claims).unwrap(),
                aad: header.as_bytes(),
            },
        )
        .unwrap();
    let (ct, tag) = sealed.split_at(sealed.len() - 16);
    format!(
        "{header}..{}.{}.{}",
        URL_SAFE_NO_PAD.encode(iv),
        URL_SAFE_NO_PAD.encode(ct),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bearer_tokens_are_refused(t in "\\PC{0,300}") {
        let a = Authenticator::new(SECRET, None);
        prop_assert!(a.verify_bearer(&t).is_err());
    }

    /// Changing any one character of a valid token: refused, or (base64 padding bits aside)
    /// still naming the same user; never another user.
    #[test]
    fn mutated_bearer_tokens_never_name_another_user(pos in any::<prop::sample::Index>(),
                                                    c in prop::char::range('!', '~')) {
        let a = Authenticator::new(SECRET, None);
        let t = a.dev_token("user-1", Duration::from_secs(600));
        let i = pos.index(t.len());
        let mut m: Vec<char> = t.chars().collect();
        m[i] = c;
        let m: String = m.into_iter().collect();
        match a.verify_bearer(&m) {
            Ok(sub) => prop_assert_eq!(sub, "user-1"),
            Err(e) => prop_assert!(matches!(e, feedrank_api::error::ApiError::Unauthorized(_))),
        }
    }

    #[test]
    fn arbitrary_session_tokens_are_refused(t in "\\PC{0,400}", dots in 0usize..6) {
        let key = nextauth_key("nextauth-secret");
        prop_assert!(decrypt_session(&key, &t, now()).is_err());
        let t5 = vec![t.as_str(); dots].join(".");
        prop_assert!(decrypt_session(&key, &t5, now()).is_err());
    }

    /// A session token sealed with one secret never opens with another; with its own, it opens
    /// to its subject; any one-byte change of the sealed parts is refused.
    #[test]
    fn session_tokens_open_only_with_their_secret(
        sub in "[a-z0-9-]{1,40}", s1 in "[ -~]{8,40}", s2 in "[ -~]{8,40}",
        iv in any::<[u8; 12]>(), flip in any::<prop::sample::Index>()
    ) {
        prop_assume!(s1 != s2);
        let t = jwe(&s1, &json!({"sub": sub, "exp": now() + 600}), iv);
        prop_assert_eq!(decrypt_session(&nextauth_key(&s1), &t, now()).ok(), Some(sub.clone()));
        prop_assert!(decrypt_session(&nextauth_key(&s2), &t, now()).is_err());
        let mut bytes = t.clone().into_bytes();
        let i = flip.index(bytes.len());
        if bytes[i] != b'.' {
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let m = String::from_utf8(bytes).unwrap();
            if m != t {
                // Ok only when the change hit a base64 padding bit: the same bytes, the same user.
                if let Ok(s) = decrypt_session(&nextauth_key(&s1), &m, now()) {
                    prop_assert_eq!(s, sub);
                }
            }
        }
    }

    /// Session claims from the edges of time: expired and not-yet-valid are refused.
    #[test]
    fn session_time_claims_are_enforced(exp_off in -10_000i64..10_000, nbf_off in -10_000i64..10_000) {
        let n = now();
        let t = jwe("s3cret-s3cret", &json!({"sub": "u", "exp": n + exp_off, "nbf": n + nbf_off}), [7; 12]);
        let ok = decrypt_session(&nextauth_key("s3cret-s3cret"), &t, n).is_ok();
        prop_assert_eq!(ok, exp_off + 15 > 0 && nbf_off - 15 <= 0, "exp {} nbf {}", exp_off, nbf_off);
    }

    /// Any Cookie header: a token or nothing, never a panic; a chunked token is joined in order.
    #[test]
    fn cookie_headers_are_parsed(raw in "[ -~]{0,300}", chunks in prop::collection::vec("[A-Za-z0-9_-]{1,20}", 1..5)) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&raw) {
            h.insert(header::COOKIE, v);
            let _ = session_cookie(&h);
        }
        let mut parts: Vec<String> = chunks.iter().enumerate()
            .map(|(i, c)| format!("next-auth.session-token.{i}={c}")).collect();
        parts.reverse();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&parts.join("; ")).unwrap());
        prop_assert_eq!(session_cookie(&h), Some(chunks.concat()));
    }
}

// --- TF-IDF tokenization -----------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Arbitrary bytes as text (lossy UTF-8, as the pipeline reads post content): tokens are runs
    /// of at least 2 word characters, found in the (lowercased) text, never a panic.
    #[test]
    fn tokenization_of_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400),
                                       lowercase in any::<bool>()) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut lowered = String::new();
        feedrank_core::tfidf::lowercase_into(&text, &mut lowered);
        let hay = if lowercase { &lowered } else { &text };
        for t in tokenize(&text, lowercase) {
            prop_assert!(t.chars().count() >= 2, "{:?}", t);
            prop_assert!(t.chars().all(feedrank_core::tfidf::is_word_char), "{:?}", t);
            prop_assert!(hay.contains(&t), "{:?} not in {:?}", t, hay);
        }
    }

    /// A vectorizer fitted on arbitrary documents transforms arbitrary new ones into unit (or
    /// empty) rows, and survives its JSON round trip unchanged.
    #[test]
    fn tfidf_on_arbitrary_text(docs in prop::collection::vec("\\PC{0,60}", 1..8),
                               new in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..4)) {
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let (model, _) = match TfidfModel::fit_transform(&refs, TfidfParams::default()) {
            Ok(m) => m,
            Err(_) => return Ok(()), // e.g. an empty vocabulary: refused with an error, as sklearn
        };
        let texts: Vec<String> = new.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        let trefs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let m = model.transform(&trefs);
        prop_assert_eq!(m.nrows, texts.len());
        for i in 0..m.nrows {
            let row = &m.data[m.indptr[i]..m.indptr[i + 1]];
            let norm: f64 = row.iter().map(|x| x * x).sum::<f64>().sqrt();
            prop_assert!(row.is_empty() || (norm - 1.0).abs() < 1e-9, "row {} norm {}", i, norm);
        }
        let back = TfidfModel::from_json(&model.to_json()).unwrap();
        prop_assert_eq!(back.transform(&trefs), m);
    }
}
