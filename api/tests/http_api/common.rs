//! Test environment: a fresh PostgreSQL database (migrated by the project's migration runner) and
//! a fresh Redis key prefix per test, both removed when the test ends (even when it fails). A
//! missing service makes the test fail with a message saying which.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use feedrank_api::config::Config;
use feedrank_api::served_log::ServedLogWriter;
use feedrank_api::AppState;
use feedrank_core::cache::{CachedFeed, CachedRecommendation};
use feedrank_core::config::Reason;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use uuid::Uuid;

pub const SECRET: &str = "test-auth-secret-0123456789abcdef0123456789";
pub const NEXTAUTH_SECRET: &str = "test-nextauth-secret-with-enough-entropy";

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is required for these tests and is not reachable at {url}: {e} (start it: scripts/services.sh up)")
        });
    tokio::spawn(conn);
    client
}

pub struct TestEnv {
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
    pub cfg: Config,
    pub state: AppState,
    pub db: tokio_postgres::Client,
    /// The state's served-log writer (none when the log is off).
    pub served_log_writer: Option<ServedLogWriter>,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        TestEnv::with(|_| {}).await
    }

    /// A fresh database and prefix; `tweak` adjusts the configuration before the state is built.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> TestEnv {
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("feedrank_apitest_{}", &id[..12]);
        let admin = pg_connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await
            .expect("create the test database");
        let base = admin_url();
        let db_url = format!("{}/{db_name}", &base[..base.rfind('/').unwrap()]);
        feedrank_api::migrate::run(&db_url)
            .await
            .expect("the migrations apply to a fresh database");
        let redis = redis::Client::open(redis_url()).unwrap();
        let mut conn = redis
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Redis is required for these tests and is not reachable at {}: {e}",
                    redis_url()
                )
            });
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        let prefix = format!("apitest:{}:", &id[..12]);
        let mut cfg = Config::from_lookup(|k| match k {
            "AUTH_SECRET" => Some(SECRET.into()),
            "NEXTAUTH_SECRET" => Some(NEXTAUTH_SECRET.into()),
            _ => None,
        })
        .unwrap();
        cfg.database_url = db_url.clone();
        cfg.redis_url = redis_url();
        cfg.redis_key_prefix = prefix.clone();
        cfg.pg_pool_timeout = Duration::from_millis(1500);
        tweak(&mut cfg);
        let state = AppState::new(cfg.clone()).unwrap();
        feedrank_api::invalidation::spawn(&state);
        let served_log_writer = state.served_log.start_writer(state.pg.clone());
        let db = pg_connect(&db_url).await;
        TestEnv {
            db_name,
            db_url,
            prefix,
            cfg,
            state,
            db,
            served_log_writer,
        }
    }

    /// Another state over the same database and prefix, with a changed configuration.
    pub fn other_state(&self, tweak: impl FnOnce(&mut Config)) -> AppState {
        let mut cfg = self.cfg.clone();
        tweak(&mut cfg);
        AppState::new(cfg).unwrap()
    }

    /// Waits until the change listener has connected and LISTENs (it forgets every cached post
    /// and "no recommendations" answer when it does); 30 s is a wide margin for a connect.
    pub async fn wait_for_the_listener(&self) {
        let start = std::time::Instant::now();
        while !self.state.feeds.is_listening() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the change listener never connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn app(&self) -> Router {
        feedrank_api::router(self.state.clone())
    }

    pub fn token(&self, user: Uuid) -> String {
        self.state
            .auth
            .dev_token(&user.to_string(), Duration::from_secs(600))
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    // --- data -------------------------------------------------------------------------------

    pub async fn user(&self, name: &str) -> Uuid {
        self.db
            .query_one(
                "INSERT INTO users (username, display_name, avatar_url) VALUES ($1, $2, $3) RETURNING id",
                &[&name, &format!("{name} display"), &format!("https://img.example/{name}.png")],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `n` posts by `author`, created one second apart (the last is the newest).
    pub async fn posts(&self, author: Uuid, n: usize) -> Vec<Uuid> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id: Uuid = self
                .db
                .query_one(
                    "INSERT INTO posts (user_id, content, media_urls, created_at, updated_at)
                     VALUES ($1, $2, ARRAY['https://img.example/p.png'],
                             now() - make_interval(secs => $3::float8), now() - make_interval(secs => $3::float8))
                     RETURNING id",
                    &[&author, &format!("post {i}"), &((n - i) as f64)],
                )
                .await
                .unwrap()
                .get(0);
            ids.push(id);
        }
        ids
    }

    /// A complete recommendation run for `user` with `items` (post, score, components), generated
    /// `age_secs` ago; returns the run id.
    pub async fn recommend(
        &self,
        user: Uuid,
        items: &[(Uuid, f64, [f64; 4])],
        age_secs: f64,
    ) -> i64 {
        let run: i64 = self
            .db
            .query_one(
                "INSERT INTO recommendation_runs (status, completed_at) VALUES ('complete', now()) RETURNING id",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        for (post, score, c) in items {
            let reason = Reason::strongest(
                &Default::default(),
                [c[0] as f32, c[1] as f32, c[2] as f32, c[3] as f32],
            );
            self.db
                .execute(
                    "INSERT INTO user_recommendations
                       (run_id, user_id, post_id, score, collaborative_score, content_score,
                        recency_score, engagement_score, reason, generated_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                             now() - make_interval(secs => $10::float8), now() + interval '1 day')",
                    &[
                        &run,
                        &user,
                        post,
                        score,
                        &c[0],
                        &c[1],
                        &c[2],
                        &c[3],
                        &reason.as_str(),
                        &age_secs,
                    ],
                )
                .await
                .unwrap();
        }
        run
    }

    /// Writes a recommendations entry into Redis the way the pipeline does (the shared encoder).
    pub async fn cache_feed(&self, user: Uuid, items: &[(Uuid, f32, Reason)], generated_at: i64) {
        let feed = CachedFeed::new(
            1,
            generated_at,
            items
                .iter()
                .map(|(p, s, r)| CachedRecommendation {
                    post_id: p.to_string(),
                    score: *s,
                    reason: *r,
                    components: [0.5; 4],
                })
                .collect(),
        );
        let key = feedrank_core::cache::recommendations_key(&self.prefix, &user.to_string());
        let mut r = self.redis().await;
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(feedrank_core::cache::encode(&feed))
            .arg("EX")
            .arg(600)
            .query_async(&mut r)
            .await
            .unwrap();
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.db.query_one(sql, &[]).await.unwrap().get(0)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let db_name = self.db_name.clone();
        let prefix = self.prefix.clone();
        // Drop runs inside the test's runtime (or while unwinding): clean up on a fresh thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((admin, conn)) =
                    tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                        .await;
                }
                if let Ok(client) = redis::Client::open(redis_url()) {
                    if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                        let keys: Vec<String> = redis::cmd("KEYS")
                            .arg(format!("{prefix}*"))
                            .query_async(&mut c)
                            .await
                            .unwrap_or_default();
                        if !keys.is_empty() {
                            let _: Result<(), _> =
                                redis::cmd("DEL").arg(keys).query_async(&mut c).await;
                        }
                    }
                }
            })
        })
        .join();
    }
}

// --- requests -------------------------------------------------------------------------------

pub async fn send(app: Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, body)
}

pub async fn get(app: Router, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(app, b.body(Body::empty()).unwrap()).await
}

pub async fn post(app: Router, path: &str, token: &str, body: &Value) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    send(app, req).await
}

/// The page's post ids; also checks that the whole answer has exactly the documented shape.
pub fn ids(feed: &Value) -> Vec<Uuid> {
    let _: feedrank_api::response::FeedResponse = serde_json::from_value(feed.clone())
        .unwrap_or_else(|e| panic!("not the documented feed shape ({e}): {feed}"));
    feed["posts"]
        .as_array()
        .unwrap_or_else(|| panic!("no posts in {feed}"))
        .iter()
        .map(|p| Uuid::parse_str(p["id"].as_str().unwrap()).unwrap())
        .collect()
}

pub fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

// --- a TCP proxy that can be cut, to take a service away mid-test ---------------------------

/// Forwards 127.0.0.1:<port> to `target` until [`Proxy::cut`], and again after [`Proxy::restore`].
pub struct Proxy {
    pub port: u16,
    target: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Proxy {
            port,
            target,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let tasks = self.tasks.clone();
        let target = self.target;
        let inner = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                inner.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Closes the listener and every open connection: the service looks down.
    pub async fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Listens again on the same port: the service is back.
    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener);
    }
}
