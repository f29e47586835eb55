//! Forgets what the API remembers when PostgreSQL says it changed: cached post bodies (migration
//! V3's triggers send `NOTIFY feedrank_post_changed` with a post id, or `*` for everything) and
//! which users have no recommendations (V5: `feedrank_recommendations_changed` after any new run
//! or recommendation rows), and the experiments (V9: `feedrank_experiments_changed`). One
//! dedicated connection LISTENs; when it drops, everything is
//! forgotten (messages may have been missed meanwhile), nothing is remembered about
//! recommendations until it is back, and it reconnects. TTLs bound staleness if this lags.

use std::time::Duration;

use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use crate::experiments;
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
            state.feeds.listening(false);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

fn apply(state: &AppState, channel: &str, payload: &str) {
    if channel == experiments::CHANNEL {
        state.experiments.changed();
    } else if channel == RECOMMENDATIONS_CHANNEL {
        state.feeds.recommendations_changed();
    } else if payload == "*" {
        state.feeds.all_posts_changed();
    } else if let Ok(id) = Uuid::parse_str(payload) {
        state.feeds.post_changed(id);
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
            "LISTEN {CHANNEL}; LISTEN {RECOMMENDATIONS_CHANNEL}; LISTEN {}",
            experiments::CHANNEL
        ))
        .await?;
    // Anything cached before LISTEN took effect may be stale: forgotten by `listening`.
    state.feeds.listening(true);
    state.experiments.changed();
    while let Some((channel, payload)) = rx.recv().await {
        apply(state, &channel, &payload);
    }
    drop(client);
    match driver.await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}
