//! `feedrank-api [serve]`   runs the API (configuration from the environment, see config.rs)
//! `feedrank-api migrate`   applies the schema migrations to DATABASE_URL
//! `feedrank-api token --user ID [--user ID2 ...] [--ttl SECONDS]`   prints development bearer tokens
//! `feedrank-api openapi`   prints the OpenAPI document

use std::process::ExitCode;
use std::time::Duration;

use feedrank_api::config::{Config, DEFAULT_DATABASE_URL};

// Many small short-lived allocations on every request, from two threads: glibc malloc's arena
// locks and consolidation were about a fifth of the cached feed's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Longest wait at shutdown for the served log's queue to be written (a batch's retries take
/// about 1.2 s plus the pool's timeouts).
const SERVED_LOG_SHUTDOWN: Duration = Duration::from_secs(15);

const USAGE: &str = "usage:
  feedrank-api [serve]                          run the API (env: DATABASE_URL, REDIS_URL, AUTH_SECRET, NEXTAUTH_SECRET, BIND_ADDR, ...)
  feedrank-api migrate                          apply the schema migrations to DATABASE_URL
  feedrank-api token --user ID [--user ID2 ...] [--ttl SECONDS]
                                                print development bearer tokens (one a line) signed with AUTH_SECRET (default ttl 86400)
  feedrank-api openapi                          print the OpenAPI document";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match args.first().map(String::as_str) {
        None | Some("serve") if args.len() <= 1 => rt.block_on(serve()),
        Some("migrate") if args.len() == 1 => rt.block_on(migrate()),
        Some("token") => token(&args[1..]),
        Some("openapi") if args.len() == 1 => {
            print!("{}", feedrank_api::http::ops::openapi_document());
            ExitCode::SUCCESS
        }
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("feedrank-api: unknown arguments {args:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn migrate() -> ExitCode {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string());
    match feedrank_api::migrate::run(&url).await {
        Ok(applied) if applied.is_empty() => println!("migrations: schema is up to date"),
        Ok(applied) => {
            for m in applied {
                println!("migrations: applied {m}");
            }
        }
        Err(e) => {
            eprintln!("migrations failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn token(args: &[String]) -> ExitCode {
    let mut users: Vec<String> = Vec::new();
    let mut ttl = 86_400u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--user", Some(v)) if !v.is_empty() => users.push(v.clone()),
            ("--ttl", Some(v)) => {
                match v.parse::<u64>() {
                    Ok(t) if t > 0 => ttl = t,
                    _ => {
                        eprintln!("feedrank-api token: --ttl must be a positive number of seconds, got {v:?}");
                        return ExitCode::from(2);
                    }
                }
            }
            (flag, _) => {
                eprintln!("feedrank-api token: bad argument {flag:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if users.is_empty() {
        eprintln!("feedrank-api token: --user ID is required\n{USAGE}");
        return ExitCode::from(2);
    }
    let Ok(secret) = std::env::var("AUTH_SECRET") else {
        eprintln!("feedrank-api token: AUTH_SECRET is not set");
        return ExitCode::from(2);
    };
    let auth = feedrank_api::auth::Authenticator::new(&secret, None);
    for user in users {
        println!("{}", auth.dev_token(&user, Duration::from_secs(ttl)));
    }
    ExitCode::SUCCESS
}

async fn serve() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("feedrank-api: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let bind = cfg.bind_addr;
    let header_timeout = cfg.request_timeout;
    let state = match feedrank_api::AppState::new(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("feedrank-api: {e}");
            return ExitCode::from(2);
        }
    };
    feedrank_api::invalidation::spawn(&state);
    let served_log_writer = state.served_log.start_writer(state.pg.clone());
    let listener = match tokio::net::TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("feedrank-api: cannot listen on {bind}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%bind, "feedrank-api listening");
    let app = feedrank_api::router(state);
    feedrank_api::server::serve(
        listener,
        app,
        header_timeout,
        Duration::from_secs(30),
        shutdown_signal(),
    )
    .await;
    // The in-flight requests are done: what they queued for the served log is written now.
    if let Some(writer) = served_log_writer {
        if !writer.shutdown(SERVED_LOG_SHUTDOWN).await {
            tracing::warn!(
                "the served log was not written within {SERVED_LOG_SHUTDOWN:?}; its queue is lost"
            );
        }
    }
    tracing::info!("feedrank-api stopped");
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM; in-flight requests then finish before the process exits.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received, finishing in-flight requests");
}
