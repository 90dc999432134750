use anyhow::Context;
use topk_api::config::ApiConfig;
use topk_api::AppState;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    topk_core::telemetry::init();
    // Handlers first: a SIGTERM during startup still means "stop cleanly".
    let shutdown = topk_api::shutdown_signal();
    let config: ApiConfig = topk_core::config::load();
    let state = AppState::from_config(&config).context("invalid auth configuration")?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        clickhouse = %config.clickhouse.clickhouse_url,
        database = %config.clickhouse.clickhouse_database,
        auth_mode = ?config.auth_mode,
        max_concurrent_requests = config.max_concurrent_requests,
        query_timeout_ms = config.query_timeout_ms,
        "api listening"
    );
    topk_api::serve(listener, state, shutdown)
        .await
        .context("serving http")?;
    tracing::info!("api stopped");
    Ok(())
}
