//! How database errors are answered: what ends one statement is retryable (503), not a bug (500).

use axum::http::StatusCode;
use axum::response::IntoResponse;
use feedrank_api::error::ApiError;

use crate::common::{admin_url, pg_connect};

#[tokio::test]
async fn a_lock_timeout_or_a_deadlock_is_retryable_not_an_internal_error() {
    let holder = pg_connect(&admin_url()).await;
    let waiter = pg_connect(&admin_url()).await;
    let key = i64::from(std::process::id()) << 20 | 0x5eed;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    waiter
        .batch_execute("SET lock_timeout = '50ms'")
        .await
        .unwrap();
    let err = waiter
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .expect_err("the lock is held: the wait times out");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
    );
    let answer = ApiError::from(err).into_response();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);

    // A deadlock: the server aborts one of the two transactions, which frees its locks.
    let (k1, k2) = (key + 1, key + 2);
    let a = std::sync::Arc::new(pg_connect(&admin_url()).await);
    let b = pg_connect(&admin_url()).await;
    a.batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({k1})"))
        .await
        .unwrap();
    b.batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({k2})"))
        .await
        .unwrap();
    let a2 = a.clone();
    let first =
        tokio::spawn(async move { a2.execute("SELECT pg_advisory_xact_lock($1)", &[&k2]).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let second = b.execute("SELECT pg_advisory_xact_lock($1)", &[&k1]).await;
    let first = first.await.unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    b.batch_execute("ROLLBACK").await.unwrap();
    let err = match (first, second) {
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
        other => panic!("expected one side aborted, got {other:?}"),
    };
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
    );
    assert_eq!(
        ApiError::from(err).into_response().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // An error the database answers for a bug of ours stays a 500.
    let err = waiter
        .execute("SELECT no_such_column FROM pg_class", &[])
        .await
        .expect_err("an unknown column");
    let answer = ApiError::from(err).into_response();
    assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .unwrap();
}
