//! Forgets cached post bodies when PostgreSQL says they changed (migration V3's triggers send
//! `NOTIFY feedrank_post_changed` with a post id, or `*` for everything). One dedicated
//! connection LISTENs; when it drops, the whole post cache is cleared (messages may have been
//! missed meanwhile) and it reconnects. The cache's TTL bounds staleness if this lags.

use std::time::Duration;

use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use crate::state::AppState;

pub const CHANNEL: &str = "feedrank_post_changed";

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
            state.posts.clear();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

fn apply(state: &AppState, payload: &str) {
    if payload == "*" {
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
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        while let Some(msg) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Anything cached before LISTEN took effect may be stale.
    state.posts.clear();
    while let Some(payload) = rx.recv().await {
        apply(state, &payload);
    }
    drop(client);
    match driver.await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}
