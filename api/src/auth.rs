//! Who is calling: a bearer JWT (HS256, `AUTH_SECRET`) or the frontend's NextAuth v4 session
//! cookie (an encrypted JWT, decrypted with a key derived from `NEXTAUTH_SECRET`).
//!
//! NextAuth v4 (`next-auth/jwt`, `encode`) writes a compact JWE with the protected header
//! `{"alg":"dir","enc":"A256GCM"}`: no wrapped key, the content key is
//! `HKDF-SHA256(ikm = secret, salt = "", info = "NextAuth.js Generated Encryption Key", 32 bytes)`,
//! the AAD is the encoded protected header, and the plaintext is the JSON claims (`sub`, `exp`,
//! ...). Its `decode` allows 15 s of clock skew; so does this one. Cookies larger than 4 KB are
//! split by NextAuth into `NAME.0`, `NAME.1`, ...; they are joined back in index order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ApiError;

/// Clock skew allowed on `exp` of bearer tokens, seconds.
pub const BEARER_LEEWAY_SECS: u64 = 30;
/// Clock skew allowed on `exp` of NextAuth tokens, seconds (NextAuth's own `decode` uses 15).
pub const NEXTAUTH_LEEWAY_SECS: i64 = 15;
/// The session cookie names of NextAuth v4 (the `__Secure-` one is used over HTTPS).
pub const SESSION_COOKIES: [&str; 2] = [
    "__Secure-next-auth.session-token",
    "next-auth.session-token",
];
const NEXTAUTH_INFO: &[u8] = b"NextAuth.js Generated Encryption Key";

#[derive(Debug, Serialize, Deserialize)]
struct BearerClaims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

#[derive(Deserialize)]
struct SessionClaims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
}

pub struct Authenticator {
    bearer_decoding: DecodingKey,
    bearer_encoding: EncodingKey,
    validation: Validation,
    nextauth_key: Option<[u8; 32]>,
}

/// The NextAuth v4 content encryption key of a secret.
pub fn nextauth_key(secret: &str) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b""), secret.as_bytes());
    let mut key = [0u8; 32];
    hk.expand(NEXTAUTH_INFO, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

fn unauthorized(m: impl Into<String>) -> ApiError {
    ApiError::Unauthorized(m.into())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Authenticator {
    pub fn new(auth_secret: &str, nextauth_secret: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = BEARER_LEEWAY_SECS;
        validation.validate_exp = true;
        // jsonwebtoken ignores `nbf` unless asked: a token that is not valid yet must be refused.
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        Authenticator {
            bearer_decoding: DecodingKey::from_secret(auth_secret.as_bytes()),
            bearer_encoding: EncodingKey::from_secret(auth_secret.as_bytes()),
            validation,
            nextauth_key: nextauth_secret.map(nextauth_key),
        }
    }

    /// A development bearer token for `user_id`, valid for `ttl`.
    pub fn dev_token(&self, user_id: &str, ttl: Duration) -> String {
        let now = now_secs();
        let claims = BearerClaims {
            sub: user_id.to_string(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.bearer_encoding,
        )
        .expect("HS256 encoding of plain claims cannot fail")
    }

    /// The subject (user id) the request authenticates as. A bearer header, when present, is the
    /// credential (a bad one is not rescued by a cookie); otherwise the NextAuth session cookie.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| unauthorized("the Authorization header is not ASCII"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
            return self.verify_bearer(token.trim());
        }
        match session_cookie(headers) {
            Some(token) => match &self.nextauth_key {
                Some(key) => decrypt_session(key, &token, now_secs() as i64),
                None => Err(unauthorized(
                    "session cookies are not accepted: NEXTAUTH_SECRET is not configured",
                )),
            },
            None => Err(unauthorized(
                "missing credentials: send `Authorization: Bearer <token>` or a NextAuth session cookie",
            )),
        }
    }

    pub fn verify_bearer(&self, token: &str) -> Result<String, ApiError> {
        let data =
            jsonwebtoken::decode::<BearerClaims>(token, &self.bearer_decoding, &self.validation)
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind;
                    match e.kind() {
                        ErrorKind::ExpiredSignature => unauthorized("the bearer token has expired"),
                        ErrorKind::ImmatureSignature => {
                            unauthorized("the bearer token is not valid yet (`nbf`)")
                        }
                        ErrorKind::InvalidSignature => {
                            unauthorized("the bearer token's signature is invalid")
                        }
                        ErrorKind::MissingRequiredClaim(c) => {
                            unauthorized(format!("the bearer token has no `{c}` claim"))
                        }
                        _ => unauthorized(format!("the bearer token is invalid ({e})")),
                    }
                })?;
        if data.claims.sub.is_empty() {
            return Err(unauthorized("the bearer token's `sub` is empty"));
        }
        Ok(data.claims.sub)
    }
}

/// The session token from the Cookie header(s): the whole cookie, or its chunks joined.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    let pairs: Vec<(&str, &str)> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .collect();
    for name in SESSION_COOKIES {
        if let Some((_, v)) = pairs.iter().find(|(k, _)| *k == name) {
            return Some(v.to_string());
        }
        let mut chunks: Vec<(usize, &str)> = pairs
            .iter()
            .filter_map(|(k, v)| {
                let idx = k.strip_prefix(name)?.strip_prefix('.')?;
                Some((idx.parse::<usize>().ok()?, *v))
            })
            .collect();
        if !chunks.is_empty() {
            chunks.sort_by_key(|(i, _)| *i);
            // Chunks must be 0..n without gaps, or the token is incomplete.
            if chunks.iter().enumerate().all(|(want, (i, _))| *i == want) {
                return Some(chunks.iter().map(|(_, v)| *v).collect());
            }
            return Some(String::new());
        }
    }
    None
}

/// Decrypts and checks a NextAuth v4 session token; returns its `sub`.
pub fn decrypt_session(key: &[u8; 32], token: &str, now: i64) -> Result<String, ApiError> {
    let bad = |why: &str| unauthorized(format!("the session cookie is invalid ({why})"));
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 5 {
        return Err(bad("not a compact JWE"));
    }
    let header_bytes = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| bad("header is not base64url"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header_bytes).map_err(|_| bad("header is not JSON"))?;
    if header.get("alg").and_then(|v| v.as_str()) != Some("dir")
        || header.get("enc").and_then(|v| v.as_str()) != Some("A256GCM")
        || header.get("zip").is_some()
        || !parts[1].is_empty()
    {
        return Err(bad("not a NextAuth v4 token (alg dir, enc A256GCM)"));
    }
    let iv = URL_SAFE_NO_PAD
        .decode(parts[2])
        .map_err(|_| bad("iv is not base64url"))?;
    let mut sealed = URL_SAFE_NO_PAD
        .decode(parts[3])
        .map_err(|_| bad("ciphertext is not base64url"))?;
    let tag = URL_SAFE_NO_PAD
        .decode(parts[4])
        .map_err(|_| bad("tag is not base64url"))?;
    if iv.len() != 12 || tag.len() != 16 {
        return Err(bad("wrong iv or tag length"));
    }
    sealed.extend_from_slice(&tag);
    let cipher = Aes256Gcm::new_from_slice(key).expect("a 32-byte key");
    let nonce = Nonce::try_from(iv.as_slice()).map_err(|_| bad("wrong iv length"))?;
    let plain = cipher
        .decrypt(
            &nonce,
            Payload {
                msg: &sealed,
                aad: parts[0].as_bytes(),
            },
        )
        .map_err(|_| bad("decryption failed: wrong secret or tampered token"))?;
    let claims: SessionClaims =
        serde_json::from_slice(&plain).map_err(|_| bad("claims are not JSON"))?;
    let exp = claims.exp.ok_or_else(|| bad("no `exp` claim"))?;
    if (exp as i64) + NEXTAUTH_LEEWAY_SECS <= now {
        return Err(unauthorized("the session has expired"));
    }
    if let Some(nbf) = claims.nbf {
        if (nbf as i64) - NEXTAUTH_LEEWAY_SECS > now {
            return Err(bad("not valid yet"));
        }
    }
    match claims.sub {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(bad("no `sub` claim")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn bearer_round_trip_and_failures() {
        let a = Authenticator::new(SECRET, None);
        let t = a.dev_token("u1", Duration::from_secs(60));
        assert_eq!(a.verify_bearer(&t).unwrap(), "u1");
        let other = Authenticator::new("another-secret-another-secret-xx", None);
        assert!(matches!(
            other.verify_bearer(&t),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            a.verify_bearer("garbage"),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn chunked_cookies_are_joined_in_order() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static(
                "a=1; next-auth.session-token.1=DEF; next-auth.session-token.0=ABC",
            ),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("ABCDEF"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("next-auth.session-token.1=DEF"),
        );
        assert_eq!(
            session_cookie(&h).as_deref(),
            Some(""),
            "a missing chunk 0 is no token"
        );
    }

    #[test]
    fn the_derived_key_is_the_one_next_auth_derives() {
        // next-auth v4's key for SECRET (HKDF-SHA256, empty salt, info "NextAuth.js Generated
        // Encryption Key", 32 bytes), computed outside this crate with next-auth's own HKDF
        // package (Node's crypto.hkdfSync gives the same):
        // cd tests/nextauth && node --input-type=module -e 'import hkdf from "@panva/hkdf";
        //   console.log(Buffer.from(await hkdf("sha256", process.argv[1], "",
        //   "NextAuth.js Generated Encryption Key", 32)).toString("hex"))' SECRET
        let hex: String = nextauth_key(SECRET)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "0b77c2310f642c7ec884b0b52096ae1555583d199b320d2b12573b153dccfd64"
        );
        assert_ne!(nextauth_key(SECRET), nextauth_key("another secret"));
    }
}
