//! The project's one migration runner: the SQL files in `migrations/`, embedded at build time and
//! applied in order by refinery, which records what it applied (`refinery_schema_history`) and so
//! is safe to run twice. Everything else (pipeline, tests, scripts) calls `feedrank-api migrate`.

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Applies every migration not applied yet; returns the names of those it applied.
pub async fn run(
    database_url: &str,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let (mut client, connection) =
        tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}
