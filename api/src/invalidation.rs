//! Forgets what the API remembers when PostgreSQL says it changed: cached post bodies (migration
//! V3's triggers send `NOTIFY feedrank_post_changed` with a post id, or `*` for everything) and
//! which users have no recommendations (V5: `feedrank_recommendations_changed` after any new run
//! or recommendation rows). One dedicated connection LISTENs; when it drops, everything is
//! forgotten (messages may have been missed meanwhile), nothing is remembered about
//! recommendations until it is back, and it reconnects. TTLs bound staleness if this lags.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use crate::state::AppState;

pub const CHANNEL: &str = "feedrank_post_changed";
pub const RECOMMENDATIONS_CHANNEL: &str = "feedrank_recommendations_changed";

/// Starts the listener task (it runs until the runtime stops).
pub fn spawn(state: &AppState) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            match listen(&state).await {
                Ok(()) => warned = false,
                Err(e) if !warned => {
                    tracing::warn!(error = %e, "post change listener disconnected; retrying");
                    warned = true;
                }
                Err(_) => {}
            }
            state
                .recommendations_listening
                .store(false, Ordering::SeqCst);
            recommendations_changed(&state);
            state.posts.clear();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Every remembered "no recommendations" answer is void from now on.
fn recommendations_changed(state: &AppState) {
    state
        .recommendations_generation
        .fetch_add(1, Ordering::SeqCst);
    state.no_recommendations.clear();
}

fn apply(state: &AppState, channel: &str, payload: &str) {
    if channel == RECOMMENDATIONS_CHANNEL {
        recommendations_changed(state);
    } else if payload == "*" {
        state.posts.clear();
    } else if let Ok(id) = Uuid::parse_str(payload) {
        state.posts.remove(&id);
    }
}

async fn listen(state: &AppState) -> Result<(), tokio_postgres::Error> {
    let mut pg: tokio_postgres::Config = state
        .cfg
        .database_url
        .parse()
        .expect("DATABASE_URL was parsed when the pool was built");
    pg.connect_timeout(state.cfg.pg_pool_timeout);
    pg.application_name("feedrank-api-listener");
    let (client, mut connection) = pg.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let driver = tokio::spawn(async move {
        while let Some(msg) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!(
            "LISTEN {CHANNEL}; LISTEN {RECOMMENDATIONS_CHANNEL}"
        ))
        .await?;
    // Anything cached before LISTEN took effect may be stale.
    state.posts.clear();
    recommendations_changed(state);
    state
        .recommendations_listening
        .store(true, Ordering::SeqCst);
    while let Some((channel, payload)) = rx.recv().await {
        apply(state, &channel, &payload);
    }
    drop(client);
    match driver.await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}
