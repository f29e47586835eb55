//! The demo page (GET /demo, always) and its user list with development tokens (GET /demo/users,
//! only when FEEDRANK_DEMO=1: it hands out tokens, so it must never be on in production).

use std::time::Duration;

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const DEMO_PAGE: &str = include_str!("../../static/demo.html");
const DEMO_USERS: i64 = 30;
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/demo", get(page))
        .route("/demo/users", get(users))
}

async fn page() -> Html<&'static str> {
    Html(DEMO_PAGE)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DemoUser {
    id: Uuid,
    username: String,
    display_name: Option<String>,
    recommendations: i64,
    token: String,
}

#[derive(Serialize)]
struct DemoUsers {
    users: Vec<DemoUser>,
}

/// Users with the most current recommendations first, then a few without any.
async fn users(State(state): State<AppState>) -> ApiResult<Json<DemoUsers>> {
    if !state.cfg.demo {
        return Err(ApiError::NotFound {
            what: "route",
            id: "/demo/users (start the API with FEEDRANK_DEMO=1)".into(),
        });
    }
    let client = state.pg.get().await?;
    let rows = client
        .query(
            "(SELECT u.id, u.username, u.display_name, count(*) AS n
              FROM users u JOIN user_recommendations r
                ON r.user_id = u.id AND r.run_id = current_recommendation_run(u.id)
              WHERE u.id IN (SELECT DISTINCT user_id FROM user_recommendations LIMIT 1000)
              GROUP BY u.id ORDER BY n DESC, u.username LIMIT $1)
             UNION ALL
             (SELECT u.id, u.username, u.display_name, 0 AS n FROM users u
              WHERE NOT EXISTS (SELECT 1 FROM user_recommendations r WHERE r.user_id = u.id)
              ORDER BY u.username LIMIT 5)",
            &[&DEMO_USERS],
        )
        .await?;
    Ok(Json(DemoUsers {
        users: rows
            .iter()
            .map(|r| {
                let id: Uuid = r.get(0);
                DemoUser {
                    id,
                    username: r.get(1),
                    display_name: r.get(2),
                    recommendations: r.get(3),
                    token: state.auth.dev_token(&id.to_string(), DEMO_TOKEN_TTL),
                }
            })
            .collect(),
    }))
}
